"""Golden trees: a scripted policy with known outcomes; visits and Q after every rollout are the values
computed by hand from DESIGN §1.2 (worked out in the comments below), for both presets and the
terminal-guided, PPM-augmented and inference modes.

The script (ground truth "2", 3 candidates per expansion, max_depth 2, errors_threshold 1):

  root  -> C1 "x = 1" (code)        C2 "y = 1" (code)           W  \\boxed{3} (wrong)
  C1    -> K  "print(x + 1)" closes  E  "z = 1/0" (error:        R  \\boxed{2} (correct)
             the block, output "2"       too_many_errors)
  K     -> A2 \\boxed{2} (correct)    A4 \\boxed{4} (wrong)        U  "" (unparsable)
  C2    -> D  "y = y + 1" (code)     A2' \\boxed{2} (correct)     W4 \\boxed{4} (wrong)
  D     -> M1 "t = 0" (depth 3 > 2:  M2 "t = 1" (max_depth)     A5 \\boxed{5} (wrong)
             max_depth)

Node ids in every configuration below: 0 root, 1 C1, 2 C2, 3 W, 4 K, 5 E, 6 R, 7 A2, 8 A4, 9 U,
10 D, 11 A2', 12 W4, 13 M1, 14 M2, 15 A5 (C1's subtree is always expanded before C2's).

PPM scores (ppm_augmented: non-terminal children; inference: also answers): C1 .5, C2 .2, K .3,
D -.4; W -.6, R .9, A2 .8, A4 -.5, A2' .7, W4 -.3, A5 -.2.
"""

import jax
import numpy as np
import pytest

from rstar_jax.grading import Grader
from rstar_jax.search import Problem, SearchConfig, run_search
from rstar_jax.search.host import tree_seed
from rstar_jax.search.kernels import tie_break_key
from rstar_jax.search.scripted import FunctionScorer, InProcessExecutor, ScriptedPolicy

PROMPT = "Question: what is 1 + 1?\n"
C1, C2, W = "<code>\nx = 1\n<end_of_step>", "<code>\ny = 1\n<end_of_step>", "\\boxed{3}<end_of_answer>"
K, E, R = "print(x + 1)\n<end_of_code>", "z = 1/0\n<end_of_step>", "The answer is \\boxed{2}<end_of_answer>"
A2, A4, U = "<answer>\\boxed{2}<end_of_answer>", "\\boxed{4}<end_of_answer>", "<end_of_step>"
D, A2B, W4 = "y = y + 1\n<end_of_step>", "So \\boxed{2}<end_of_answer>", "Thus \\boxed{4}<end_of_answer>"
M1, M2, A5 = "t = 0\n<end_of_step>", "t = 1\n<end_of_step>", "\\boxed{5}<end_of_answer>"
K_TEXT = K + "\n<output>2<end_of_output>"

SCRIPT = [("", [C1, C2, W]), (K_TEXT, [A2, A4, U]), (C1, [K, E, R]), (D, [M1, M2, A5]),
          (C2, [D, A2B, W4])]
PPM = {C1: .5, C2: .2, K_TEXT: .3, D: -.4, W: -.6, R: .9, A2: .8, A4: -.5, A2B: .7, W4: -.3, A5: -.2}


def script(prompt, n, seed):
  del seed
  solution = prompt[len(PROMPT):]
  for suffix, steps in SCRIPT:
    if solution.endswith(suffix) and (suffix or not solution):
      assert len(steps) == n
      return steps
  raise AssertionError(f"unexpected expansion after {solution!r}")


def ppm(text):
  matches = [suffix for suffix in PPM if text.endswith(suffix)]
  if not matches:
    raise AssertionError(f"unexpected PPM request {text!r}")
  return PPM[max(matches, key=len)]  # "Thus \boxed{4}..." also ends like "\boxed{4}..."


# Hand-computed (visits, value_sum) after each rollout, and the terminal reasons.
# official, terminal_guided:
#  r0: expand root: W -1 to root (root 1,-1). C1, C2 unvisited: exploration 0, tie -> C1 (first).
#      expand C1: E too_many_errors -1 on itself only; R +1 to root (R 1,1; C1 1,1; root 2,0).
#      expand K: A2 +1, A4 -1 to root (K 2,0; C1 3,1; root 4,0); U unparsable -1 on itself.
#      K's children all terminal -> K all_children_terminal; rollout ends.
#  r1: root: C1 1/3 + 2*sqrt(ln4/3) = 1.69 > C2 (unvisited: 0) -> C1; C1's children all terminal
#      -> C1 all_children_terminal; rollout ends (nothing expanded).
#  r2: root: only C2 left. expand C2: A2' +1, W4 -1 (C2 2,0; root 6,0). expand D: M1, M2 max_depth
#      -1 each on themselves; A5 -1 to root (D 1,-1; C2 3,-1; root 7,-1). D all terminal.
_TG_OFFICIAL = [
    {0: (4, 0), 1: (3, 1), 2: (0, 0), 3: (1, -1), 4: (2, 0), 5: (1, -1), 6: (1, 1), 7: (1, 1),
     8: (1, -1), 9: (1, -1)},
    {},
    {0: (7, -1), 2: (3, -1), 10: (1, -1), 11: (1, 1), 12: (1, -1), 13: (1, -1), 14: (1, -1),
     15: (1, -1)},
]
# paper, terminal_guided (invalid terminals back up -1 to the root; unvisited children first):
#  r0: W (root 1,-1). C1, C2 unvisited: +inf tie -> random (seed chosen so it picks C1).
#      expand C1: E -1 to root, R +1 to root (C1 2,0; root 3,-1). expand K: A2 +1, A4 -1, U -1 to
#      the root (K 3,-1; C1 5,-1; root 6,-2). K all terminal.
#  r1: root: C1 -0.2 + 2*sqrt(ln6/5) = 1.0 < C2 unvisited (+inf) -> C2. expand C2: A2' +1, W4 -1
#      (C2 2,0; root 8,-2). expand D: M1, M2, A5 -1 each to the root (D 3,-3; C2 5,-3; root 11,-5).
#  r2: root: C1 -0.2 + 2*sqrt(ln11/5) = 1.19 > C2 -0.6 + 1.39 -> C1, all terminal -> marked.
_TG_PAPER = [
    {0: (6, -2), 1: (5, -1), 2: (0, 0), 3: (1, -1), 4: (3, -1), 5: (1, -1), 6: (1, 1), 7: (1, 1),
     8: (1, -1), 9: (1, -1)},
    {0: (11, -5), 2: (5, -3), 10: (3, -3), 11: (1, 1), 12: (1, -1), 13: (1, -1), 14: (1, -1),
     15: (1, -1)},
    {},
]
# official, ppm_augmented (new non-terminal children: one visit with their PPM score):
#  r0: C1 (1,.5), C2 (1,.2), W -1 (root 1,-1). root N=1: ln 1 = 0, so C1 .5 > C2 .2 -> C1.
#      expand C1: K (1,.3); E -1 itself; R +1 (C1 2,1.5; root 2,0). expand K: A2 +1, A4 -1, U -1
#      itself (K 3,.3; C1 4,1.5; root 4,0). K all terminal.
#  r1: root N=4: C1 .375 + 2*sqrt(ln4/4) = 1.55 < C2 .2 + 2*sqrt(ln4/1) = 2.55 -> C2. expand C2:
#      D (1,-.4), A2' +1, W4 -1 (C2 3,.2; root 6,0). expand D: M1, M2 -1 themselves, A5 -1
#      (D 2,-1.4; C2 4,-.8; root 7,-1). D all terminal.
#  r2: root N=7: C1 .375 + 1.39 > C2 -.2 + 1.39 -> C1, all terminal -> marked.
_PPM_OFFICIAL = [
    {0: (4, 0), 1: (4, 1.5), 2: (1, .2), 3: (1, -1), 4: (3, .3), 5: (1, -1), 6: (1, 1),
     7: (1, 1), 8: (1, -1), 9: (1, -1)},
    {0: (7, -1), 2: (4, -.8), 10: (2, -1.4), 11: (1, 1), 12: (1, -1), 13: (1, -1), 14: (1, -1),
     15: (1, -1)},
    {},
]
# paper, ppm_augmented:
#  r0: C1 (1,.5), C2 (1,.2), W -1 (root 1,-1); C1 .5 > C2 .2. expand C1: K (1,.3); E -1 and R +1 to
#      the root (C1 3,.5; root 3,-1). expand K: A2 +1, A4 -1, U -1 to the root (K 4,-.7;
#      C1 6,-.5; root 6,-2).
#  r1: root N=6: C1 -.083 + 2*sqrt(ln6/6) = 1.01 < C2 .2 + 2*sqrt(ln6) = 2.88 -> C2. expand C2:
#      D (1,-.4), A2' +1, W4 -1 (C2 3,.2; root 8,-2). expand D: M1, M2, A5 -1 to the root
#      (D 4,-3.4; C2 6,-2.8; root 11,-5).
#  r2: root N=11: C1 -.083 + 1.26 > C2 -.467 + 1.26 -> C1, all terminal -> marked.
_PPM_PAPER = [
    {0: (6, -2), 1: (6, -.5), 2: (1, .2), 3: (1, -1), 4: (4, -.7), 5: (1, -1), 6: (1, 1),
     7: (1, 1), 8: (1, -1), 9: (1, -1)},
    {0: (11, -5), 2: (6, -2.8), 10: (4, -3.4), 11: (1, 1), 12: (1, -1), 13: (1, -1),
     14: (1, -1), 15: (1, -1)},
    {},
]
# official, inference (valid answers back up their PPM score instead of +-1):
#  r0: C1 (1,.5), C2 (1,.2), W -.6 (root 1,-.6). C1 > C2. expand C1: K (1,.3), E -1 itself,
#      R .9 (C1 2,1.4; root 2,.3). expand K: A2 .8, A4 -.5, U -1 itself (K 3,.6; C1 4,1.7; root 4,.6).
#  r1: root N=4: C1 .425 + 1.18 < C2 .2 + 2.35 -> C2. expand C2: D (1,-.4), A2' .7, W4 -.3
#      (C2 3,.6; root 6,1.0). expand D: M1, M2 -1 themselves, A5 -.2 (D 2,-.6; C2 4,.4; root 7,.8).
#  r2: root N=7: C1 .425 + 1.39 > C2 .1 + 1.39 -> C1, all terminal -> marked.
_INF_OFFICIAL = [
    {0: (4, .6), 1: (4, 1.7), 2: (1, .2), 3: (1, -.6), 4: (3, .6), 5: (1, -1), 6: (1, .9),
     7: (1, .8), 8: (1, -.5), 9: (1, -1)},
    {0: (7, .8), 2: (4, .4), 10: (2, -.6), 11: (1, .7), 12: (1, -.3), 13: (1, -1), 14: (1, -1),
     15: (1, -.2)},
    {},
]
_REASONS = {3: "answer", 4: "all_children_terminal", 5: "too_many_errors", 6: "answer", 7: "answer",
            8: "answer", 9: "unparsable", 10: "all_children_terminal", 11: "answer", 12: "answer",
            13: "max_depth", 14: "max_depth", 15: "answer"}
# Which nodes exist / are marked all_children_terminal after rollouts 0, 1, 2 of each run.
_TG_OFFICIAL_SHAPE = [(10, {4}), (10, {1, 4}), (16, {1, 4, 10})]
_OTHER_SHAPE = [(10, {4}), (16, {4, 10}), (16, {1, 4, 10})]


def _cumulative(deltas):
  states, state = [], {}
  for d in deltas:
    state = {**state, **d}
    states.append(dict(state))
  return states


def _paper_seed_picking_c1():
  """A run seed whose tree breaks the rollout-0 tie at the root (C1 vs C2) towards C1.

  Computed from the documented rule (uniform draws over the A child slots from
  `tie_break_key(tree seed, rollout, node)`; the largest draw among the tied children wins).
  """
  for seed in range(100):
    draws = np.asarray(jax.random.uniform(
        tie_break_key(np.uint32(tree_seed(seed, "p")), 0, 0), [3]))
    if draws[0] > draws[1]:
      return seed
  raise AssertionError("no seed found")


@pytest.fixture(scope="module")
def grader():
  with Grader() as g:
    yield g


CASES = {
    ("terminal_guided", "official"): (_TG_OFFICIAL, _TG_OFFICIAL_SHAPE),
    ("terminal_guided", "paper"): (_TG_PAPER, _OTHER_SHAPE),
    ("ppm_augmented", "official"): (_PPM_OFFICIAL, _OTHER_SHAPE),
    ("ppm_augmented", "paper"): (_PPM_PAPER, _OTHER_SHAPE),
    ("inference", "official"): (_INF_OFFICIAL, _OTHER_SHAPE),
}


# Every case runs on both implementations of the tree kernels.
@pytest.mark.parametrize("mode,preset,kernel_impl", [
    (mode, preset, impl) for mode, preset in sorted(CASES) for impl in ("xla", "native")])
def test_golden_tree_after_each_rollout(mode, preset, kernel_impl, grader):
  deltas, shapes = CASES[(mode, preset)]
  seed = _paper_seed_picking_c1() if preset == "paper" else 0
  for rollouts, (expected, (num_nodes, act)) in enumerate(zip(_cumulative(deltas), shapes), start=1):
    config = SearchConfig(mode=mode, preset=preset, num_rollouts=rollouts, num_candidates=3,
                          max_depth=2, errors_threshold=1, first_answer_only=False, seed=seed,
                          max_nodes=32, kernel_impl=kernel_impl)
    scorer = FunctionScorer(ppm) if mode != "terminal_guided" else None
    (record,) = run_search([Problem("p", "what is 1 + 1?", "2")], ScriptedPolicy(script),
                           InProcessExecutor(), config, prompt_fn=lambda q: PROMPT, scorer=scorer,
                           grader=grader, progress=False)
    nodes = record["nodes"]
    assert len(nodes) == num_nodes, f"after rollout {rollouts}"
    for node in nodes:
      visits, value_sum = expected.get(node["id"], (0, 0.0))
      where = f"{mode}/{preset} rollout {rollouts} node {node['id']} ({node['tag']})"
      assert node["visits"] == visits, where
      assert node["value_sum"] == pytest.approx(value_sum, abs=1e-5), where
      assert node["q"] == pytest.approx(value_sum / visits if visits else 0.0, abs=1e-5), where
      reason = _REASONS.get(node["id"])
      if reason == "all_children_terminal" or node["id"] in act:
        reason = "all_children_terminal" if node["id"] in act else None
      assert node["terminal_reason"] == reason, where
    # PPM values are recorded exactly where §1.2 scores nodes.
    scored = {n["id"]: n["ppm_value"] for n in nodes if n["ppm_value"] is not None}
    if mode == "terminal_guided":
      assert not scored
    else:
      want = {1: .5, 2: .2, 4: .3, 10: -.4}
      if mode == "inference":
        want.update({3: -.6, 6: .9, 7: .8, 8: -.5, 11: .7, 12: -.3, 15: -.2})
      want = {k: v for k, v in want.items() if k < num_nodes}
      assert scored.keys() == want.keys()
      for k, v in want.items():
        assert scored[k] == pytest.approx(v, abs=1e-6)


def test_golden_tree_node_texts(grader):
  """Step protocol fields of the golden tree (official, terminal-guided, 3 rollouts)."""
  config = SearchConfig(num_rollouts=3, num_candidates=3, max_depth=2, first_answer_only=False,
                          max_nodes=32)
  (record,) = run_search([Problem("p", "what is 1 + 1?", "2")], ScriptedPolicy(script),
                         InProcessExecutor(), config, prompt_fn=lambda q: PROMPT, grader=grader,
                         progress=False)
  nodes = record["nodes"]
  tags = [n["tag"] for n in nodes]
  assert tags == ["0", "0.1", "0.2", "0.3", "0.1.1", "0.1.2", "0.1.3", "0.1.1.1", "0.1.1.2",
                  "0.1.1.3", "0.2.1", "0.2.2", "0.2.3", "0.2.1.1", "0.2.1.2", "0.2.1.3"]
  assert nodes[4]["text"] == K_TEXT
  assert nodes[4]["code"] == "# ========\nx = 1\nprint(x + 1)"
  assert nodes[4]["observation"] == "2"
  # The error terminal gets its block closed and the error as output (official create_child).
  assert nodes[5]["text"] == ("z = 1/0\n<end_of_step><end_of_code>\n"
                              "<output>ZeroDivisionError: division by zero<end_of_output>")
  assert nodes[13]["code"] == "# ========\ny = 1\ny = y + 1\nt = 0"
  assert [nodes[i]["final_answer"] for i in (3, 6, 7, 8, 11, 12, 15)] == ["3", "2", "2", "4", "2",
                                                                         "4", "5"]
  assert [nodes[i]["correct"] for i in (3, 6, 7, 8, 11, 12, 15)] == [False, True, True, False,
                                                                    True, False, False]
  assert all(n["correct"] is None for n in nodes if n["terminal_reason"] != "answer")
  assert record["prompt"] == PROMPT and record["mode"] == "terminal_guided"
