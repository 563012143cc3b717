"""Our lockstep MCTS against a plain-Python transcription of the released rStar-Math search.

What is compared. For each mode (`terminal_guided`, `ppm_augmented`, `inference`; preset `official`), 24 problems are
searched twice: by `run_search` (jitted tree kernels + host driver) and by `OfficialSolver` below, a transcription
of the released code (rStar-Math `rstar_deepthink/`: `nodes/mcts_node.py` for the node statistics and `puct`,
`agents/mcts.py` for `selection` / `select_child` / `create_child` / `eval_final_answer` / `select_next_step` /
`generate_next_step`, `agents/tree.py` for `code_execution` / `collect_action_inputs` / `extract_program`,
`agents/utils.py` for the step parser and answer extraction, `llms/llms.py` for the candidate filter of
`llm_generate` and the value scale of `rm_generate`, `solver.py` for the rollout / step loop over many trees, and the
`config/*.yaml` settings of each mode). Every node of every tree is matched by its rStar tag (`0.2.1`) and compared:
the set of tags, parent, depth, text (with its output block), program, observation, final answer, terminal reason,
correctness, visits, value sum, Q and PPM value. The order in which each tree asked the policy for expansions is
compared too. `test_random_worlds_match_the_official_search` then does the same over seeded random worlds: random step
mixes (duplicates, truncated, unparsable and `<end_of_answer>` variants), random code errors, PPMs with exact ties and
values at +-1, and random rollouts, depth, errors threshold, candidates, c, rewards, stop strings, mode and (every
other world) the smallest node budget the official tree fits in.

Why it is independent. The transcription imports nothing of the search but the shared world both sides are driven
by: the same prompt-keyed scripted policy (`ScriptedPolicy(script)`), the same fake sandbox, the same PPM function
and the same answer grader (all in `official_rstar.py`, with the released code's parts both searches use). It
follows the official control flow (one level of descent per solver step, `node.update` / `update_recursive`, float64
`puct` with the first-maximum tie rule, candidates and terminal rewards handled as each child is created, PPM values
applied before the next selection) rather than our kernels' decomposition (full descent per `select`, backup by path
scatter-add, packed float32 arrays), so a disagreement points at one of the two.

Documented deviations of ours, and how each is handled here:
- First-rollout depth cap (driver.py): the official step loop gives a rollout `max_depth` steps, which stops the
  first rollout (it starts at the root, later ones one level below) just before it expands a node at depth
  `max_depth`; ours only ends a rollout at a terminal node. Modelled: the transcription gives the first rollout one
  more step, and only that one (a later rollout needing more steps would show up as a divergence).
- Double `<output>` wrap (step.py): a step that closes the code block and reaches the error threshold gets its output
  block once here, twice in the official `create_child`. Modelled: the transcription wraps once.
- Unparsable steps (step.py): a blank step, or one that ended without a stop string (eos / length) and has no box, is
  a terminal `unparsable` node of ours; the official parser never fails and would run it as code. Modelled: the
  transcription's parser returns None for those, which sends them down the official `NO_VALID_CHILD` branch.
- Answer extraction (step.py): the official cut at the first `.\\n`, the trailing-period strip and `\\text{}` removal
  never apply: no scripted answer step has them. Empty boxes (a non-terminal node there) are never scripted.
- Box contents (grading.py): ours strips the answer read from a box (`\\boxed{ 3 }` -> `3`), the official
  `extract_boxed_answer` keeps ` 3 ` (both graders strip it). Modelled: the random worlds compare answers stripped.
- float32 UCT (kernels.py): a near-tie that float32 could resolve differently from the official float64 makes the
  transcription's `select_child` raise `NearTie` (failing the test); none occurs in these trees, nor in the random
  worlds' seeded draw, so every selection compared here is one both precisions agree on.
"""

import math

import numpy as np
import pytest

from rstar_jax.search import Problem, SearchConfig, run_search
from rstar_jax.search.scripted import FunctionScorer, ScriptedPolicy

from official_rstar import (ANSWER_END, CODE_END, INVALID_ANSWERS, NO_VALID_CHILD, OUTPUT, OUTPUT_END, PROMPT,
                            STEP_DELIM, STEP_END, TOO_MANY_CODE_ERRORS, TOO_MANY_STEPS, ExactGrader, FakeExecutor,
                            NearTie, OfficialTree, assert_same_mcts_nodes, is_equiv, llm_generate,
                            fuzz_step_texts, make_script, our_nodes, ppm, random_executor, random_ppm, random_script,
                            rm_generate, step_unwrap)

# ---------------------------------------------------------------------------------------------------------------------
# The shared world (`official_rstar.py`: sandbox, PPM and grader, called by both sides), sized for this test.
# ---------------------------------------------------------------------------------------------------------------------

NUM_PROBLEMS = 24
NUM_ROLLOUTS = 8
NUM_CANDIDATES = 4
MAX_DEPTH = 4

# The step script (`official_rstar.make_script`): every kind, the bootstrap `<output>` stop included.
script = make_script({"open": 0.16, "continue": 0.16, "close": 0.14, "error": 0.06, "error_close": 0.03,
                      "answer_tag": None, "answer_box": None, "two_boxes": 0.01, "no_box": 0.01, "output_stop": 0.03,
                      "eos_boxed": 0.02, "junk": 0.03, "blank": 0.02}, answer_base=0.02, answer_slope=0.03)


# ---------------------------------------------------------------------------------------------------------------------
# The official search, transcribed (plain objects; names follow the released code).
# ---------------------------------------------------------------------------------------------------------------------

# The stop strings of config/sample_mcts.yaml (bootstrap) and config/sft_*_mcts.yaml.
BOOTSTRAP_STOP = (STEP_END, CODE_END, OUTPUT_END, ANSWER_END)
SFT_STOP = (STEP_END, CODE_END, ANSWER_END)

# The official configs per mode: config/sample_mcts.yaml (rounds 1-2), sft_sample_mcts.yaml (rounds 3-4) and
# sft_eval_mcts.yaml (inference); budgets shrunk to test size, c_puct 2 and rewards +-1 everywhere.
OFFICIAL_CONFIGS = {
    "terminal_guided": dict(errors_threshold=2, stop=BOOTSTRAP_STOP, is_sampling=True,
                            need_value_func=False, update_leaf_value=False, terminal_sample=True),
    "ppm_augmented": dict(errors_threshold=1, stop=SFT_STOP, is_sampling=True, need_value_func=True,
                          update_leaf_value=True, terminal_sample=False),
    "inference": dict(errors_threshold=1, stop=SFT_STOP, is_sampling=False, need_value_func=True,
                      update_leaf_value=True, terminal_sample=False),
}



class OfficialNode:
  """`MCTSNode`: state dict, tag, depth, terminal flag, consecutive errors, visit count and value sum."""

  def __init__(self, parent: "OfficialNode | None" = None, c_puct: float = 2.0):
    self.parent = parent
    self.children: list[OfficialNode] = []
    self.c_puct = c_puct
    self.tag = "0"
    self.depth = 0
    self.is_terminal = False
    self.consecutive_errors = 0
    self.state = {"text": "", "action": "", "action_input": "", "final_answer": ""}
    self.visit_count = 0
    self.value_sum = 0.0
    # Not official fields; kept for the comparison: the program `code_execution` ran, the PPM value applied, the
    # `is_equiv` verdict of `eval_final_answer`.
    self.program = ""
    self.ppm = None
    self.correct = None

  def q_value(self) -> float:
    return self.value_sum / self.visit_count if self.visit_count else 0.0

  def update(self, value: float) -> None:
    self.visit_count += 1
    self.value_sum += value

  def update_recursive(self, value: float, start_node: "OfficialNode") -> None:
    self.update(value)
    if self.tag != start_node.tag:
      self.parent.update_recursive(value, start_node)

  def puct(self) -> float:
    if self.parent is None:
      return 0.0
    q = self.q_value()
    if self.parent.visit_count == 0 or self.visit_count == 0:
      return q
    return q + self.c_puct * float(np.sqrt(np.log(self.parent.visit_count) / self.visit_count))


class OfficialAgent(OfficialTree):
  """One tree: `MCTS` (agents/mcts.py) with its `BS` / `BaseTree` parts."""

  def __init__(self, cfg: dict, question: str, ground_truth: str | None, executor: FakeExecutor):
    self.cfg = cfg
    self.question = question
    self.ground_truth = ground_truth
    self.executor = executor
    self.root = OfficialNode(c_puct=cfg["c_puct"])
    self.current_nodes: list[OfficialNode] = []
    self.candidate_nodes: list[OfficialNode] = [self.root]
    self.search_node: OfficialNode | None = None
    self.expanded_prompts: list[str] = []  # for the comparison: the policy prompts in the order they were asked

  # -- BaseTree / BS (the rest in official_rstar.OfficialTree) ---------------------------------------------------
  def create_prompt(self, is_value_only: bool = False) -> list[str]:
    prompts = super().create_prompt(is_value_only)
    if not is_value_only:
      self.expanded_prompts.extend(prompts)
    return prompts

  # -- agents/mcts.py ----------------------------------------------------------------------------------------------
  def select_child(self, node: OfficialNode) -> OfficialNode | None:
    best_value, best = -math.inf, []
    for child in node.children:
      if child.is_terminal:
        continue
      value = child.puct()
      if value == best_value:
        best.append(child)
      elif value > best_value:
        best_value, best = value, [child]
    # Ours scores in float32 (documented): make sure no choice here hinges on a difference float32 cannot see.
    for child in node.children if best else []:
      if not child.is_terminal and child is not best[0] and 0 < abs(child.puct() - best_value) < 1e-5:
        raise NearTie(f"{child.tag}: {child.puct()!r} vs {best[0].tag}: {best_value!r}")
    return best[0] if best else None

  def selection(self, from_root: bool = False) -> OfficialNode | None:
    node = self.root if from_root else self.search_node
    if node is None:
      return None
    if node.children or node.is_terminal:
      next_node = self.select_child(node)
      if next_node is None:  # every child is terminal
        node.is_terminal = True
      node = next_node
    return None if node is None or node.is_terminal else node

  def create_child(self, step_result: str, parser_result: dict | None, node: OfficialNode) -> None:
    cfg = self.cfg
    new = OfficialNode(parent=node, c_puct=cfg["c_puct"])
    new.tag = f"{node.tag}.{len(node.children) + 1}"
    new.depth = node.depth + 1
    if parser_result is None:
      new.is_terminal = True
      new.state["text"] = step_result
      new.state["final_answer"] = NO_VALID_CHILD
      self.eval_final_answer(new)
    elif parser_result["final_answer"]:
      new.is_terminal = True
      new.state["text"] = step_result
      new.state["final_answer"] = parser_result["final_answer"]
      self.eval_final_answer(new)
    elif parser_result["action"]:
      new.program, observation = self.code_execution(node, parser_result["action_input"])
      new.state["action"] = parser_result["action"]
      new.state["action_input"] = parser_result["action_input"]
      new.state["observation"] = observation
      wrapped = f"{OUTPUT}{observation}{OUTPUT_END}"
      closes = CODE_END in parser_result["action_input"]
      new.state["text"] = f"{step_result}{STEP_DELIM}{wrapped}" if closes else step_result
      if "error" in observation.lower():
        new.consecutive_errors = node.consecutive_errors + 1
        if new.consecutive_errors >= cfg["errors_threshold"]:
          # Official: wraps `observation` again, which is already wrapped when the step closed the block; ours wraps
          # it once (documented deviation), modelled here.
          closed = step_result if CODE_END in step_result else step_result + CODE_END
          new.state["text"] = f"{closed}{STEP_DELIM}{wrapped}"
          new.is_terminal = True
          new.state["final_answer"] = TOO_MANY_CODE_ERRORS
          self.eval_final_answer(new)
    else:  # a box with nothing in it (never scripted)
      new.state["text"] = step_result
    if not new.is_terminal and new.depth > cfg["max_depth"]:
      new.is_terminal = True
      new.state["final_answer"] = TOO_MANY_STEPS
      self.eval_final_answer(new)
    node.children.append(new)

  def eval_final_answer(self, node: OfficialNode) -> None:
    cfg = self.cfg
    if node.state["final_answer"] in INVALID_ANSWERS:
      node.update(cfg["negative_reward"])  # the invalid terminal itself only
    elif cfg["is_sampling"]:
      node.correct = is_equiv(self.ground_truth, node.state["final_answer"])
      node.update_recursive(cfg["positive_reward"] if node.correct else cfg["negative_reward"], self.root)
    else:
      self.candidate_nodes.append(node)  # valued by the PPM in select_next_step

  def expand_node(self, outputs: list[tuple[str, str | None]], node: OfficialNode) -> None:
    for text, stop_reason in outputs:
      step_result = text + (stop_reason or "")
      self.create_child(step_result, step_unwrap(step_result, stop_reason), node)

  def generate_next_step(self, outputs: list[tuple[str, str | None]]) -> None:
    self.candidate_nodes = []
    for node in self.current_nodes:  # one current node per tree in MCTS (step_beam_width 1)
      self.expand_node(outputs, node)
      if self.cfg["update_leaf_value"]:
        for child in node.children:
          if child not in self.candidate_nodes and child.visit_count < 1:
            self.candidate_nodes.append(child)

  def select_next_step(self, values: list[float] | None = None, from_root: bool = False) -> None:
    cfg = self.cfg
    self.search_node = self.current_nodes[0] if self.current_nodes else None
    self.current_nodes = []
    for node, value in zip(self.candidate_nodes, values or []):
      if node.is_terminal and cfg["is_sampling"]:
        continue
      node.ppm = value
      if node.is_terminal and node.state["final_answer"]:
        if node.state["final_answer"] in INVALID_ANSWERS:
          node.update(cfg["negative_reward"])
        else:
          node.update_recursive(value, self.root)
      elif not cfg["terminal_sample"]:
        node.update(value)
    selected = self.selection(from_root=from_root)
    if selected is not None:
      self.current_nodes.append(selected)


class OfficialSolver:
  """`solver.py Solver.solve` with `llm_generate` / `rm_generate` (llms/llms.py), over a batch of agents."""

  def __init__(self, cfg: dict, policy: ScriptedPolicy, scorer):
    self.cfg = cfg
    self.policy = policy
    self.scorer = scorer

  def solve(self, agents: list[OfficialAgent]) -> None:
    cfg = self.cfg
    for rollout in range(cfg["iterations"]):
      for agent in agents:
        agent.select_next_step(from_root=True)
      # Official: range(max_depth). Ours does not cap a rollout (documented in driver.py): the first rollout, which
      # starts at the root rather than one level below, gets the one step more it needs to reach depth max_depth.
      for _ in range(cfg["max_depth"] + (1 if rollout == 0 else 0)):
        valid = [a for a in agents if a.should_generate_next() and not a.has_expanded()]
        expanded = [a for a in agents if a.should_generate_next() and a.has_expanded()]
        if not valid and not expanded:
          break
        prompts = [a.create_prompt() for a in valid]
        outputs = llm_generate(self.policy, cfg, [p for ps in prompts for p in ps])
        for agent, output in zip(valid, outputs):
          agent.generate_next_step(output)
        for agent in valid:
          values = rm_generate(self.scorer, agent.create_prompt(is_value_only=True)) if cfg["need_value_func"] else None
          agent.select_next_step(values)
        for agent in expanded:
          agent.select_next_step(None)


# ---------------------------------------------------------------------------------------------------------------------
# The comparison.
# ---------------------------------------------------------------------------------------------------------------------

def _official_reason(node: OfficialNode) -> str | None:
  if not node.is_terminal:
    return None
  answer = node.state["final_answer"]
  return {NO_VALID_CHILD: "unparsable", TOO_MANY_CODE_ERRORS: "too_many_errors",
          TOO_MANY_STEPS: "max_depth"}.get(answer, "answer" if answer else "all_children_terminal")


def _official_nodes(agent: OfficialAgent) -> dict[str, dict]:
  out, queue = {}, [agent.root]
  while queue:  # breadth first, as `return_states`
    node = queue.pop(0)
    reason = _official_reason(node)
    out[node.tag] = {
        "parent": None if node.parent is None else node.parent.tag, "depth": node.depth,
        "text": node.state["text"], "code": node.program, "observation": node.state.get("observation", ""),
        "final_answer": node.state["final_answer"] if reason == "answer" else None,
        "terminal_reason": reason, "correct": node.correct, "visits": node.visit_count,
        "value_sum": node.value_sum, "q": node.q_value(), "ppm_value": node.ppm}
    queue.extend(node.children)
  return out


def _problems(mode: str) -> list[Problem]:
  truth = (lambda i: None) if mode == "inference" else (lambda i: str(i % 4))
  return [Problem(f"p{i:02d}", f"problem {i:02d}", truth(i)) for i in range(NUM_PROBLEMS)]


@pytest.mark.parametrize("kernel_impl", ["xla", "native"])
@pytest.mark.parametrize("mode", ["terminal_guided", "ppm_augmented", "inference"])
def test_trees_match_the_official_search(mode, kernel_impl):
  official_cfg = dict(OFFICIAL_CONFIGS[mode], max_depth=MAX_DEPTH, iterations=NUM_ROLLOUTS,
                      n_generate_sample=NUM_CANDIDATES, c_puct=2.0, positive_reward=1.0, negative_reward=-1.0)
  problems = _problems(mode)

  ours_policy = ScriptedPolicy(script)
  config = SearchConfig(mode=mode, preset="official", num_rollouts=NUM_ROLLOUTS, num_candidates=NUM_CANDIDATES,
                        max_depth=MAX_DEPTH, c=2.0, errors_threshold=official_cfg["errors_threshold"],
                        stop=official_cfg["stop"], first_answer_only=True, kernel_impl=kernel_impl)
  records = run_search(problems, ours_policy, FakeExecutor(), config, prompt_fn=PROMPT.format,
                       scorer=None if mode == "terminal_guided" else FunctionScorer(ppm), grader=ExactGrader(),
                       progress=False)

  agents = [OfficialAgent(official_cfg, p.question, p.ground_truth, FakeExecutor()) for p in problems]
  OfficialSolver(official_cfg, ScriptedPolicy(script), lambda texts: [ppm(t) for t in texts]).solve(agents)

  reasons: dict[str | None, int] = {}
  for problem, record, agent in zip(problems, records, agents):
    for reason in assert_same_mcts_nodes(our_nodes(record), _official_nodes(agent), f"{mode} {problem.problem_id}"):
      reasons[reason] = reasons.get(reason, 0) + 1
    prompt = PROMPT.format(problem.question)
    asked = [p for prompts, _ in ours_policy.calls for p in prompts if p.startswith(prompt)]
    assert asked == agent.expanded_prompts, f"{problem.problem_id}: expansions in another order"

  # The trees exercise every rule compared above.
  assert sum(reasons.values()) > 30 * NUM_PROBLEMS
  for reason in ("answer", "too_many_errors", "max_depth", "unparsable", "all_children_terminal", None):
    assert reasons.get(reason, 0) >= 5, (reason, reasons)


# ---------------------------------------------------------------------------------------------------------------------
# Random worlds: random scripts, sandboxes, PPMs and settings, compared the same way.
# ---------------------------------------------------------------------------------------------------------------------

def _random_world(rng: np.random.Generator) -> dict:
  """One random world and search setting for both sides (see `test_random_worlds_match_the_official_search`)."""
  going_on = ("open", "continue", "close", "error", "open_close", "continue_close", "open_error", "printed_error")
  script, digits, world_seed = random_script(rng, fuzz_step_texts, going_on, max_answer_rate=0.1)

  # Exact ties and values at the clip edges; +-1 only.
  world_ppm = random_ppm(rng, world_seed, [[-1.0, -0.5, 0.0, 0.5, 1.0], [-1.0, 1.0]])

  Executor = random_executor(rng, world_seed)

  mode = ["terminal_guided", "ppm_augmented", "inference"][int(rng.integers(0, 3))]
  rewards = (1.0, -1.0) if rng.random() < 0.75 else (float(rng.choice([0.5, 2.0])), float(rng.choice([-0.5, 0.0])))
  cfg = dict(OFFICIAL_CONFIGS[mode], stop=(BOOTSTRAP_STOP, SFT_STOP)[int(rng.integers(0, 2))],
             max_depth=int(rng.integers(1, 9)), iterations=int(rng.integers(2, 9)),
             n_generate_sample=int(rng.integers(1, 9)), errors_threshold=int(rng.integers(1, 4)),
             c_puct=float(rng.choice([2.0, 0.0, 1.0, rng.uniform(0, 3)])),
             positive_reward=rewards[0], negative_reward=rewards[1])
  problems = [Problem(f"p{i}", f"problem {world_seed} {i}", None if mode == "inference" else str(rng.integers(digits)))
              for i in range(int(rng.integers(2, 5)))]
  return dict(mode=mode, cfg=cfg, script=script, ppm=world_ppm, executor=Executor, problems=problems)


class _BudgetAgent(OfficialAgent):
  """`OfficialAgent` that also counts the node slots ours needs: before each expansion, the nodes so far plus
  `n_generate_sample` (ours reserves a full expansion's slots)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.num_nodes, self.slots_needed = 1, 0

  def expand_node(self, outputs, node):
    self.slots_needed = max(self.slots_needed, self.num_nodes + self.cfg["n_generate_sample"])
    super().expand_node(outputs, node)
    self.num_nodes += len(outputs)


NUM_RANDOM_WORLDS = 12


@pytest.mark.parametrize("kernel_impl", ["xla", "native"])
def test_random_worlds_match_the_official_search(kernel_impl):
  """Random worlds (step mixes with duplicates, unparsable, truncated and `<end_of_answer>` variants; random code
  errors; PPMs with exact ties and values at +-1; random rollouts, depth 1..8, errors threshold 1..3, 1..8
  candidates, c, rewards, stop strings and mode), each searched by both sides and compared node by node. Every
  other world gives ours the smallest node budget the official tree fits in: the same tree, and no tree stops early.
  """
  rng = np.random.default_rng(20261203)
  compared, reasons = 0, set()
  for world_index in range(NUM_RANDOM_WORLDS):
    world = _random_world(rng)
    cfg, mode, problems = world["cfg"], world["mode"], world["problems"]
    agents = [_BudgetAgent(cfg, p.question, p.ground_truth, world["executor"]()) for p in problems]
    # The official side first: it counts the budget ours needs (a `NearTie` fails the test, as above).
    OfficialSolver(cfg, ScriptedPolicy(world["script"]), lambda texts: [world["ppm"](t) for t in texts]).solve(agents)
    budget = max(1 + cfg["n_generate_sample"], *(a.slots_needed for a in agents)) if world_index % 2 else None
    policy = ScriptedPolicy(world["script"])
    config = SearchConfig(mode=mode, preset="official", num_rollouts=cfg["iterations"],
                          num_candidates=cfg["n_generate_sample"], max_depth=cfg["max_depth"], c=cfg["c_puct"],
                          errors_threshold=cfg["errors_threshold"], stop=cfg["stop"], first_answer_only=True,
                          positive_reward=cfg["positive_reward"], negative_reward=cfg["negative_reward"],
                          max_nodes=budget, kernel_impl=kernel_impl)
    records = run_search(problems, policy, world["executor"](), config, prompt_fn=PROMPT.format,
                         scorer=None if mode == "terminal_guided" else FunctionScorer(world["ppm"]),
                         grader=ExactGrader(), progress=False)
    for problem, record, agent in zip(problems, records, agents):
      where = f"world {world_index} ({mode}, {cfg}) {problem.problem_id}"
      theirs = _official_nodes(agent)
      for node in theirs.values():
        if node["final_answer"] is not None:
          node["final_answer"] = node["final_answer"].strip()
      assert not record["out_of_nodes"], f"{where}: stopped early with max_nodes={budget}"
      reasons.update(assert_same_mcts_nodes(our_nodes(record), theirs, where))
      prompt = PROMPT.format(problem.question)
      assert [p for prompts, _ in policy.calls for p in prompts if p.startswith(prompt)] == agent.expanded_prompts, \
          f"{where}: expansions in another order"
      compared += len(theirs)
  # The worlds drawn reach every terminal reason compared, in enough nodes.
  assert compared > 40 * NUM_RANDOM_WORLDS, compared
  assert reasons >= {"answer", "too_many_errors", "max_depth", "unparsable", "all_children_terminal", None}, reasons
