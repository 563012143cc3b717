"""Our lockstep MCTS with preset `paper` against a plain-Python search written from the paper preset's description.

What is compared. For each mode (`terminal_guided`, `ppm_augmented`, `inference`), problems are searched by
`run_search` (jitted tree kernels + host driver, preset `paper`) and by `PaperTree` below, a one-tree-at-a-time
search written from DESIGN §1.2 and the `paper` column of the tables in README / `kernels.py` / `rules.py`:

- Selection: from the root, at a node with children move to the non-terminal child with the highest
  `Q + c * sqrt(ln max(N(parent), 1) / N(child))`, where a child with N = 0 scores +inf (unvisited children first);
  ties are broken uniformly at random with the documented key: `A` uniform draws from
  `fold_in(fold_in(key(tree seed), rollout), node)`, the tied child whose slot has the largest draw wins. A node
  whose children are all terminal becomes terminal (`all_children_terminal`) and the rollout ends; a terminal node
  ends it too; an unexpanded node is expanded and the descent continues from it.
- Values: a valid answer backs up +1 / -1 (ground truth) or, at inference, its PPM score, to the root; an invalid
  terminal (too many code errors, too deep, unparsable) backs up -1 to the root (paper preset); a new non-terminal
  child gets one visit with its PPM score in the PPM-augmented and inference modes, nothing when terminal-guided.
- Budget: a tree stops (out_of_nodes) when its next expansion would not fit `A` more nodes into `max_nodes`.

The step protocol (candidate filter, program, observation, text, terminal reasons) reuses the released code's parts
transcribed in `official_rstar.py` (already compared with ours by `official_transcription_test.py`): what is tested
here is the search itself. Every node is matched by its rStar tag and compared field by field, and the order in which
each tree asked for expansions is compared too. Scores are float64 here; a selection that float32 could resolve
otherwise (`NearTie`) fails the test rather than pass by luck. `test_random_worlds_match_the_paper_reference` repeats
the comparison on seeded random worlds (script, PPM and config), where such a near tie only skips its tree.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable

import jax
import numpy as np
import pytest

from rstar_jax.search import Problem, SearchConfig, run_search
from rstar_jax.search.host import tree_seed
from rstar_jax.search.scripted import FunctionScorer, ScriptedPolicy

from official_rstar import (CODE_END, OUTPUT, OUTPUT_END, PROMPT, STEP_DELIM, ExactGrader, FakeExecutor, NearTie,
                            OfficialTree, assert_same_mcts_nodes, is_equiv, llm_generate, make_script, our_nodes, ppm,
                            step_unwrap)

NUM_PROBLEMS = 16
NUM_ROLLOUTS = 6
MAX_DEPTH = 3

script = make_script({"open": 0.16, "continue": 0.16, "close": 0.14, "error": 0.06, "error_close": 0.03,
                      "answer_tag": None, "answer_box": None, "two_boxes": 0.01, "no_box": 0.01, "junk": 0.03,
                      "blank": 0.02}, answer_base=0.02, answer_slope=0.03)
# Answers likelier and steps more alike: ties at equal finite scores and all-terminal subtrees (dead roots) happen.
dense_script = make_script({"open": 0.2, "close": 0.1, "error": 0.1, "answer_tag": None, "answer_box": None,
                            "blank": 0.05}, answer_base=0.1, answer_slope=0.1)



class PaperNode:
  """A node with what `OfficialTree.code_execution` reads (`state`, `parent`) and what the comparison reads."""

  def __init__(self, node_id: int, parent: "PaperNode | None", tag: str):
    self.id = node_id
    self.parent = parent
    self.tag = tag
    self.depth = 0 if parent is None else parent.depth + 1
    self.children: list[PaperNode] = []
    self.state = {"text": "", "action": "", "action_input": "", "final_answer": ""}
    self.program = ""
    self.observation = ""
    self.reason: str | None = None
    self.errors = 0
    self.correct = None
    self.ppm = None
    self.visits = 0
    self.value_sum = 0.0

  def q(self) -> float:
    return self.value_sum / self.visits if self.visits else 0.0


class PaperTree(OfficialTree):
  """One tree searched with the paper preset's rules (module docstring), one expansion at a time."""

  def __init__(self, cfg: dict, problem: Problem, seed: int, policy: ScriptedPolicy,
               ppm_fn: Callable[[str], float] = ppm):
    self.cfg = cfg
    self.ppm_fn = ppm_fn
    self.question = problem.question
    self.ground_truth = problem.ground_truth
    self.executor = FakeExecutor()
    self.seed = seed
    self.policy = policy
    self.root = PaperNode(0, None, "0")
    self.nodes = [self.root]
    self.out_of_nodes = False
    self.expanded_prompts: list[str] = []
    self.ties = {"unvisited": 0, "equal_scores": 0}  # random tie-breaks, by what tied

  # -- selection ---------------------------------------------------------------------------------------------------
  def score(self, child: PaperNode, parent: PaperNode) -> float:
    if child.visits == 0:
      return math.inf
    return child.q() + self.cfg["c"] * math.sqrt(math.log(max(parent.visits, 1)) / child.visits)

  def pick(self, node: PaperNode, rollout: int) -> PaperNode | None:
    live = [c for c in node.children if c.reason is None]
    if not live:
      return None
    scores = {c.id: self.score(c, node) for c in live}
    best = max(scores.values())
    tied = [c for c in live if scores[c.id] == best]
    for c in live:
      if c not in tied and abs(scores[c.id] - best) < 1e-5 * max(1.0, abs(best)):
        raise NearTie(f"{c.tag}: {scores[c.id]!r} vs {best!r}")
    if len(tied) == 1:
      return tied[0]
    self.ties["unvisited" if best == math.inf else "equal_scores"] += 1
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(np.uint32(self.seed)), rollout), node.id)
    draws = np.asarray(jax.random.uniform(key, [self.cfg["num_candidates"]]))
    return max(tied, key=lambda c: draws[node.children.index(c)])

  # -- values ------------------------------------------------------------------------------------------------------
  @staticmethod
  def backup(node: PaperNode, value: float) -> None:
    while node is not None:
      node.visits += 1
      node.value_sum += value
      node = node.parent

  # -- expansion ---------------------------------------------------------------------------------------------------
  def expand(self, node: PaperNode) -> bool:
    """Adds the node's children and their values; False when they would not fit the node budget."""
    cfg = self.cfg
    if len(self.nodes) + cfg["num_candidates"] > cfg["max_nodes"]:
      self.out_of_nodes = True
      return False
    prompt = self.prompt_wrap(node)
    self.expanded_prompts.append(prompt)
    (outputs,) = llm_generate(self.policy, {"n_generate_sample": cfg["num_candidates"], "stop": cfg["stop"]},
                              [prompt])
    for text, stop_reason in outputs:
      step = text + (stop_reason or "")
      child = PaperNode(len(self.nodes), node, f"{node.tag}.{len(node.children) + 1}")
      self.nodes.append(child)
      node.children.append(child)
      child.state["text"] = step
      parsed = step_unwrap(step, stop_reason)
      if parsed is None:
        child.reason = "unparsable"
      elif parsed["final_answer"]:
        child.reason = "answer"
        child.state["final_answer"] = parsed["final_answer"]
      else:
        child.program, child.observation = self.code_execution(node, parsed["action_input"])
        child.state["action"], child.state["action_input"] = parsed["action"], parsed["action_input"]
        wrapped = f"{OUTPUT}{child.observation}{OUTPUT_END}"
        if CODE_END in step:
          child.state["text"] = f"{step}{STEP_DELIM}{wrapped}"
        if "error" in child.observation.lower():
          child.errors = node.errors + 1
          if child.errors >= cfg["errors_threshold"]:
            closed = step if CODE_END in step else step + CODE_END
            child.state["text"] = f"{closed}{STEP_DELIM}{wrapped}"
            child.reason = "too_many_errors"
        if child.reason is None and child.depth > cfg["max_depth"]:
          child.reason = "max_depth"
      # The value of the new child (module docstring).
      scored = child.reason is None and cfg["mode"] != "terminal_guided" or (
          child.reason == "answer" and cfg["mode"] == "inference")
      if scored:
        child.ppm = float(np.float32(self.ppm_fn(prompt + child.state["text"])))
      if child.reason == "answer":
        if cfg["mode"] == "inference":
          self.backup(child, child.ppm)
        else:
          child.correct = is_equiv(self.ground_truth, child.state["final_answer"])
          self.backup(child, 1.0 if child.correct else -1.0)
      elif child.reason is not None:
        self.backup(child, -1.0)
      elif scored:
        child.visits, child.value_sum = 1, child.ppm
    return True

  # -- the search --------------------------------------------------------------------------------------------------
  def search(self) -> None:
    for rollout in range(self.cfg["num_rollouts"]):
      if self.root.reason is not None:
        return
      node = self.root
      while node.reason is None:
        if not node.children:
          if not self.expand(node):
            return
          continue
        child = self.pick(node, rollout)
        if child is None:
          node.reason = "all_children_terminal"
          break
        node = child


def _reference_nodes(tree: PaperTree) -> dict[str, dict]:
  return {n.tag: {"parent": None if n.parent is None else n.parent.tag, "depth": n.depth, "text": n.state["text"],
                  "code": n.program, "observation": n.observation,
                  "final_answer": n.state["final_answer"] if n.reason == "answer" else None,
                  "terminal_reason": n.reason, "correct": n.correct, "visits": n.visits, "value_sum": n.value_sum,
                  "q": n.q(), "ppm_value": n.ppm} for n in tree.nodes}


def _compare(mode: str, step_script, num_candidates: int, max_nodes: int | None, errors_threshold: int,
             seed: int = 0, kernel_impl: str = "auto") -> dict:
  """Runs both searches; returns counts of what the trees exercised."""
  problems = [Problem(f"p{i:02d}", f"problem {i:02d}", None if mode == "inference" else str(i % 4))
              for i in range(NUM_PROBLEMS)]
  config = SearchConfig(mode=mode, preset="paper", num_rollouts=NUM_ROLLOUTS, num_candidates=num_candidates,
                        max_depth=MAX_DEPTH, c=2.0, errors_threshold=errors_threshold, first_answer_only=True,
                        max_nodes=max_nodes, seed=seed, kernel_impl=kernel_impl)
  policy = ScriptedPolicy(step_script)
  records = run_search(problems, policy, FakeExecutor(), config, prompt_fn=PROMPT.format,
                       scorer=None if mode == "terminal_guided" else FunctionScorer(ppm), grader=ExactGrader(),
                       progress=False)
  cfg = dict(mode=mode, num_rollouts=NUM_ROLLOUTS, num_candidates=num_candidates, max_depth=MAX_DEPTH, c=2.0,
             errors_threshold=errors_threshold, stop=config.stop, max_nodes=config.num_slots)
  seen = {"nodes": 0, "out_of_nodes": 0, "dead_roots": 0, "ties_unvisited": 0, "ties_equal_scores": 0}
  for problem, record in zip(problems, records):
    tree = PaperTree(cfg, problem, tree_seed(seed, problem.problem_id), ScriptedPolicy(step_script))
    tree.search()
    for reason in assert_same_mcts_nodes(our_nodes(record), _reference_nodes(tree), f"{mode} {problem.problem_id}"):
      seen[reason] = seen.get(reason, 0) + 1
    prompt = PROMPT.format(problem.question)
    asked = [p for prompts, _ in policy.calls for p in prompts if p.startswith(prompt)]
    assert asked == tree.expanded_prompts, f"{mode} {problem.problem_id}: expansions in another order"
    assert record["out_of_nodes"] == tree.out_of_nodes, problem.problem_id
    seen["nodes"] += len(tree.nodes)
    seen["out_of_nodes"] += tree.out_of_nodes
    seen["dead_roots"] += tree.root.reason is not None
    for what, count in tree.ties.items():
      seen[f"ties_{what}"] = seen.get(f"ties_{what}", 0) + count
  return seen


@pytest.mark.parametrize("kernel_impl", ["xla", "native"])
@pytest.mark.parametrize("mode", ["terminal_guided", "ppm_augmented", "inference"])
def test_trees_match_the_paper_reference(mode, kernel_impl):
  seen = _compare(mode, script, num_candidates=4, max_nodes=None, errors_threshold=2, kernel_impl=kernel_impl)
  assert seen["nodes"] > 25 * NUM_PROBLEMS, seen
  for reason in ("answer", "too_many_errors", "max_depth", "unparsable", "all_children_terminal", None):
    assert seen.get(reason, 0) >= 5, (reason, seen)
  if mode == "terminal_guided":  # unvisited children tie at +inf; equal (visits, value sum) pairs tie too
    assert seen["ties_unvisited"] >= 20 and seen["ties_equal_scores"] >= 2, seen


@pytest.mark.parametrize("mode", ["terminal_guided", "ppm_augmented", "inference"])
def test_dense_trees_with_a_small_node_budget_match_the_paper_reference(mode):
  """Answer-heavy trees: roots whose children all end (the tree stops), and a node budget that fills."""
  seen = _compare(mode, dense_script, num_candidates=3, max_nodes=1 + 3 * 5, errors_threshold=1, seed=3)
  assert seen["out_of_nodes"] >= 2 and seen["dead_roots"] >= 2, seen


@pytest.mark.parametrize("mode", ["terminal_guided", "inference"])
def test_one_candidate_per_step_matches_the_paper_reference(mode):
  """A = 1: every selection has one candidate child (no ties, no choice)."""
  _compare(mode, script, num_candidates=1, max_nodes=None, errors_threshold=2)


# Every scripted step kind (`official_rstar._step_texts`): code steps, failing code, answers, unparsable steps.
STEP_KINDS = ("open", "continue", "close", "error", "error_close", "answer_tag", "answer_box", "two_boxes", "no_box",
              "output_stop", "eos_boxed", "junk", "blank")
# Clip-edge PPM values: +-1, the float32 values next to them, 0.
EDGE_VALUES = (-1.0, float(np.nextafter(np.float32(-1), np.float32(0))), 0.0,
               float(np.nextafter(np.float32(1), np.float32(0))), 1.0)


def _random_ppm(rng: np.random.Generator, salt: int) -> tuple[str, Callable[[str], float]]:
  """A fake PPM keyed by the scored text: smooth values, quarters or +-1 (exact ties of sums and means), one constant
  (every PPM-initialised child ties), or clip-edge values."""
  style = str(rng.choice(["tanh", "quarters", "constant", "plus_minus_one", "edges"]))
  constant = float(rng.choice([-1.0, 0.0, 0.5, 1.0]))

  def fn(text: str) -> float:
    draw = np.random.default_rng([salt, zlib.crc32(text.encode())])
    if style == "tanh":
      return float(np.tanh(draw.uniform(-5, 5) / 5))
    if style == "quarters":
      return float(draw.integers(-4, 5) / 4)
    if style == "constant":
      return constant
    if style == "plus_minus_one":
      return float(draw.choice([-1.0, 1.0]))
    return float(draw.choice(EDGE_VALUES))

  return style, fn


def _random_world(world: int) -> dict:
  """A random script, PPM and search config (the budget: never binding, a fraction of it, or a few expansions)."""
  rng = np.random.default_rng([world, 2026])
  weights = rng.dirichlet(np.full(len(STEP_KINDS), rng.choice([0.3, 1.0, 3.0])))
  weights[:3] += rng.uniform(0, 3) * rng.dirichlet(np.ones(3))  # the live steps: trees that grow
  step_script = make_script({k: None if k in ("answer_tag", "answer_box") else float(w)
                             for k, w in zip(STEP_KINDS, weights)}, answer_base=float(rng.uniform(0, 0.3)),
                            answer_slope=float(rng.uniform(0, 0.1)), digits=int(rng.choice([1, 2, 4])), salt=world)
  ppm_style, ppm_fn = _random_ppm(rng, world)
  a, rollouts, depth = int(rng.integers(1, 9)), int(rng.integers(1, 13)), int(rng.integers(1, 9))
  budget = str(rng.choice(["never_binding", "fraction", "few_expansions"]))
  if budget == "fraction":
    max_nodes = int(rng.integers(1 + a, max(2 + a, rollouts * (depth + 1) * a // 3)))
  elif budget == "few_expansions":  # just enough for k expansions of A children, or one node short of it
    max_nodes = max(1 + a, int(1 + a * rng.integers(1, 5) - rng.integers(0, 2)))
  else:
    max_nodes = None
  config = dict(mode=str(rng.choice(["terminal_guided", "ppm_augmented", "inference"])), preset="paper",
                num_rollouts=rollouts, num_candidates=a, max_depth=depth, c=float(rng.choice([0.0, 0.5, 2.0, 3.7])),
                errors_threshold=int(rng.integers(1, 4)), max_nodes=max_nodes, seed=int(rng.integers(0, 2**32)),
                batch_size=None if rng.random() < 0.5 else int(rng.integers(1, 4)))
  return dict(script=step_script, ppm_style=ppm_style, ppm=ppm_fn, budget=budget, config=config,
              num_problems=int(rng.integers(2, 6)))


def test_random_worlds_match_the_paper_reference():
  """Seeded fuzz: random scripts (branching 1..8, duplicates, every step kind), PPMs (ties, clip edges) and configs
  (modes, rollouts, depth 1..8, error thresholds 1..3, c = 0, node budgets) against `PaperTree`."""
  seen = {"trees": 0, "nodes": 0, "near_ties": 0, "out_of_nodes": 0, "ties_unvisited": 0, "ties_equal_scores": 0}
  for world in range(10, 16):  # all modes and budgets, c = 0 .. 3.7, 1..3 errors, tanh / quarter / +-1 PPMs
    w = _random_world(world)
    config = SearchConfig(**w["config"])
    mode = config.mode
    problems = [Problem(f"p{i}", f"problem {world}.{i}", None if mode == "inference" else str(i % 2))
                for i in range(w["num_problems"])]
    policy = ScriptedPolicy(w["script"])
    records = run_search(problems, policy, FakeExecutor(), config, prompt_fn=PROMPT.format,
                         scorer=None if mode == "terminal_guided" else FunctionScorer(w["ppm"]),
                         grader=ExactGrader(), progress=False)
    cfg = dict(mode=mode, num_rollouts=config.num_rollouts, num_candidates=config.num_candidates,
               max_depth=config.max_depth, c=config.c, errors_threshold=config.errors_threshold, stop=config.stop,
               max_nodes=config.num_slots)
    for problem, record in zip(problems, records):
      where = f"world {world} ({w['config']}, ppm {w['ppm_style']}) {problem.problem_id}"
      tree = PaperTree(cfg, problem, tree_seed(config.seed, problem.problem_id), ScriptedPolicy(w["script"]),
                       ppm_fn=w["ppm"])
      try:
        tree.search()
      except NearTie:  # float64 scores float32 cannot tell apart: the two searches may rightly differ
        seen["near_ties"] += 1
        continue
      assert_same_mcts_nodes(our_nodes(record), _reference_nodes(tree), where)
      prompt = PROMPT.format(problem.question)
      asked = [p for prompts, _ in policy.calls for p in prompts if p.startswith(prompt)]
      assert asked == tree.expanded_prompts, f"{where}: expansions in another order"
      assert record["out_of_nodes"] == tree.out_of_nodes, where
      seen["trees"] += 1
      seen["nodes"] += len(tree.nodes)
      seen["out_of_nodes"] += tree.out_of_nodes
      for what, count in tree.ties.items():
        seen[f"ties_{what}"] += count
  assert seen["trees"] >= 15 and seen["nodes"] >= 250 and seen["near_ties"] == 0, seen
  assert seen["out_of_nodes"] >= 1 and seen["ties_unvisited"] >= 10 and seen["ties_equal_scores"] >= 10, seen
