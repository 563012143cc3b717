"""Our step-level beam search against a plain-Python transcription of the released rStar-Math step beam search.

What is compared. 24 problems are searched twice, with the official inference settings of `config/sft_eval_bs.yaml`
(errors_threshold 1, stop strings `<end_of_step> <end_of_code> <end_of_answer>`) at test size (beam width 3, 4
samples per step, max depth 6): by `beam_search` (beam.py) and by `OfficialSolver` below, a transcription of the
released code (rStar-Math `rstar_deepthink/`: `agents/beam_search.py` for `BS` (`create_prompt`, `select_next_step`,
`generate_next_step`, `create_child`, `get_steps`), `nodes/base_node.py` for the node, `agents/tree.py` for
`code_execution` / `collect_action_inputs` / `extract_program`, `agents/utils.py` for the step parser and answer
extraction, `llms/llms.py` for the candidate filter of `llm_generate` and the value scale of `rm_generate`, and
`solver.py` for the step loop over many agents). Compared:
- every node of every tree, matched by its rStar tag (`0.2.1`): the set of tags, parent, depth, text (with its output
  block), program, observation, final answer, terminal reason, correctness (what the official `math_equiv` would say
  of the answer), and PPM value (`value`); visits and value sums stay 0 on our side (beam search backs nothing up);
- the beams, step by step: every policy call's prompts, in order (so which nodes each step expanded, their order by
  PPM value, the lockstep batching over problems, and the step at which each problem stopped);
- the answers: the official `get_steps` solution list (answer nodes by PPM value, best first: tag, value, answer,
  solution text) against ours, and its first answer against `best_answer` of our record.
The same comparison then runs on random worlds (`test_random_worlds_match_the_official_beam_search`): random step
mixes, sandboxes, PPMs (exact and float32 ties, values at +-1), stop string sets and settings.

Why it is independent. The transcription imports nothing of the search but the shared world both sides are driven
by: the same prompt-keyed scripted policy (`ScriptedPolicy(script)`), the same fake sandbox, the same PPM function
and the same answer check (all in `official_rstar.py`). It follows the official control flow (the agent's
`candidate_nodes` / `current_nodes` / `final_answer_nodes` lists, `current_top_num` counting down, one sort of all
new children per step, children created and classified one by one, `BaseNode` objects) rather than ours (node ids in
a `HostTree`, planned children run as one sandbox batch, a per-problem width list).

Documented deviations of ours, and how each is handled here:
- The beam (beam.py): the official next beam is the top `current_top_num` of *all* new children by value, finished ones
  included, and the samples generated for the unfinished ones are zipped onto that list, so a finished node can take
  another node's children; ours keeps the top `width` unfinished children, each with its own samples. Modelled:
  `select_next_step` below fills the beam from the unfinished nodes only.
- The width running out (beam.py): every answer among a step's new children lowers `current_top_num` by one there and
  here; the official count can pass 0, and `candidate_nodes[:-k]` then takes all nodes but the last k, so a problem
  with more answers in one step than it had width left goes on with almost every child; ours stops at 0. Modelled:
  the count stops at 0 below (the scripted trees do pass 0, see the coverage checks).
- Code errors (beam.py): the official `BS.create_child` ends a path at any observation containing "error" and never
  reads `errors_threshold`; ours applies `errors_threshold`, the same at the official 1 used here. Modelled for the
  random worlds' thresholds 2 and 3: the transcription's error checks also need `errors_threshold` consecutive
  errors, counted as the official `MCTS.create_child` counts them (at 1 they are the official checks).
- `first_answer_only=False` (ours only; the official `llm_generate` always keeps only the first `<end_of_answer>`
  candidate): modelled in `official_rstar.llm_generate`.
- Double `<output>` wrap (step.py): a step that closes the code block and errs gets its output block once here, twice
  in the official `create_child`. Modelled: the transcription wraps once.
- Unparsable steps (step.py): a blank step, or one that ended without a stop string and has no box, is a terminal
  `unparsable` node of ours; the official parser would run it as code. Modelled: the transcription's parser returns
  None for those, which sends them down the official `NO_VALID_CHILD` branch.
- PPM values of invalid terminals: the official scores every new child (the value decides whether a finished node takes
  a beam slot); ours scores the unfinished children and the answers only, the only ones it ranks (beam.py), and
  leaves `ppm_value` null on the others. Kept out: those values are not compared; their absence on our side is.
- Answer extraction (step.py): the official cut at the first `.\\n`, the trailing-period strip and `\\text{}` removal
  never apply: no scripted answer step has them. Empty boxes (a non-terminal node there) are never scripted.
"""


import numpy as np

from rstar_jax.search import BeamConfig, Problem, beam_search, best_answer
from rstar_jax.search.interfaces import STOP_EOS, StepCandidate
from rstar_jax.search.scripted import FunctionScorer, ScriptedPolicy

from official_rstar import (ANSWER_END, CODE_END, INVALID_ANSWERS, NO_VALID_CHILD, OUTPUT, OUTPUT_END, PROMPT,
                            STEP_DELIM, STEP_END, TOO_MANY_CODE_ERRORS, TOO_MANY_STEPS, ExactGrader, FakeExecutor,
                            OfficialTree, fuzz_step_texts, is_equiv, llm_generate, make_script, our_nodes,
                            ppm, random_executor, random_ppm, random_script, rm_generate, step_unwrap)

# ---------------------------------------------------------------------------------------------------------------------
# The shared world (`official_rstar.py`: sandbox, PPM and answer check, called by both sides), sized for this test.
# ---------------------------------------------------------------------------------------------------------------------

NUM_PROBLEMS = 24
BEAM_WIDTH = 3
SAMPLES_PER_STEP = 4
MAX_DEPTH = 6

# The step script (`official_rstar.make_script`): the SFT stop strings, so no `<output>` stop.
script = make_script({"open": 0.18, "continue": 0.18, "close": 0.14, "error": 0.03, "error_close": 0.02,
                      "answer_tag": None, "answer_box": None, "two_boxes": 0.01, "no_box": 0.01, "eos_boxed": 0.02,
                      "junk": 0.02, "blank": 0.01}, answer_base=0.005, answer_slope=0.015)


# ---------------------------------------------------------------------------------------------------------------------
# The official step beam search, transcribed (plain objects; names follow the released code).
# ---------------------------------------------------------------------------------------------------------------------

# config/sft_eval_bs.yaml, with the budget shrunk to test size (official: width 8, 8 samples, depth 16).
OFFICIAL_CONFIG = dict(step_beam_width=BEAM_WIDTH, n_generate_sample=SAMPLES_PER_STEP, max_depth=MAX_DEPTH,
                       errors_threshold=1, stop=(STEP_END, CODE_END, ANSWER_END), need_value_func=True)


class OfficialNode:
  """`BaseNode` as `BS.create_node` makes it: state (text + action keys), tag, depth, terminal flag, value."""

  def __init__(self, parent: "OfficialNode | None" = None):
    self.parent = parent
    self.children: list[OfficialNode] = []
    self.tag = "0"
    self.depth = 0
    self.is_terminal = False
    self.value = 0.0
    self.state = {"text": "", "action": "", "action_input": "", "final_answer": ""}
    # Not official fields: the program `code_execution` ran, kept for the comparison, and the consecutive code errors
    # of the path (`MCTSNode`'s count; `errors_threshold` above 1 is modelled with it, see the module docstring).
    self.program = ""
    self.consecutive_errors = 0


class OfficialBS(OfficialTree):
  """One problem's `BS` agent (agents/beam_search.py) with the `BaseTree` parts it uses."""

  def __init__(self, cfg: dict, question: str, executor: FakeExecutor):
    self.cfg = cfg
    self.question = question
    self.executor = executor
    self.root = OfficialNode()
    self.current_nodes: list[OfficialNode] = []
    self.candidate_nodes: list[OfficialNode] = [self.root]
    self.final_answer_nodes: list[OfficialNode] = []
    self.current_top_num = cfg["step_beam_width"]
    self.passed_zero = False  # not official: whether the count of answers ever passed the width (coverage check)

  @staticmethod
  def is_valid_final_answer_node(node: OfficialNode) -> bool:
    return node.is_terminal and bool(node.state["final_answer"]) and node.state["final_answer"] not in INVALID_ANSWERS

  def select_next_step(self, values: list[float] | None = None) -> None:
    if values is not None:
      for node, value in zip(self.candidate_nodes, values):
        node.value = value
    self.candidate_nodes = sorted(self.candidate_nodes, key=lambda n: n.value, reverse=True)  # stable
    for node in self.candidate_nodes:
      if self.is_valid_final_answer_node(node):
        self.final_answer_nodes.append(node)
        self.current_top_num -= 1
    # Official: `current_nodes = candidate_nodes[:current_top_num]`, finished nodes included, and a count below 0
    # slices from the end. Ours (beam.py, documented): the beam holds unfinished nodes only, and the width stops at 0.
    self.passed_zero |= self.current_top_num < 0
    self.current_top_num = max(0, self.current_top_num)
    unfinished = [n for n in self.candidate_nodes if not self.is_ignored_node(n)]
    self.current_nodes = unfinished[:self.current_top_num]

  def generate_next_step(self, outputs: list[list[tuple[str, str | None]]]) -> None:
    # Official: zips `current_nodes` (finished ones included) with the outputs of the unfinished ones; with the beam
    # modelled above both lists hold the same nodes, so every node gets its own samples.
    self.candidate_nodes = []
    for node, output in zip(self.current_nodes, outputs):
      for text, stop_reason in output:
        step_result = text + (stop_reason or "")
        self.create_child(step_result, step_unwrap(step_result, stop_reason), node)
      self.candidate_nodes.extend(node.children)

  def create_child(self, step_result: str, parser_result: dict | None, node: OfficialNode) -> None:
    new = OfficialNode(parent=node)
    new.tag = f"{node.tag}.{len(node.children) + 1}"
    new.depth = node.depth + 1
    if parser_result is None:
      new.is_terminal = True
      new.state["text"] = step_result
      new.state["final_answer"] = NO_VALID_CHILD
    elif parser_result["final_answer"]:
      new.is_terminal = True
      new.state["text"] = step_result
      new.state["final_answer"] = parser_result["final_answer"]
    elif parser_result["action"]:
      new.program, observation = self.code_execution(node, parser_result["action_input"])
      new.state["action"] = parser_result["action"]
      new.state["action_input"] = parser_result["action_input"]
      new.state["observation"] = observation
      # Official: any error ends the path (`errors_threshold` is never read); ours ends it at `errors_threshold`
      # consecutive errors (beam.py, documented), counted as `MCTS.create_child` counts them. Modelled: each official
      # error check below also needs the threshold reached, which at the official 1 every error does.
      new.consecutive_errors = node.consecutive_errors + 1 if "error" in observation.lower() else 0
      ends = new.consecutive_errors >= self.cfg["errors_threshold"]
      wrapped = False
      if CODE_END in parser_result["action_input"]:
        observation, wrapped = f"{OUTPUT}{observation}{OUTPUT_END}", True
        new.state["text"] = f"{step_result}{STEP_DELIM}{observation}"
        if "Error" in observation and ends:
          new.is_terminal = True
          new.state["final_answer"] = TOO_MANY_CODE_ERRORS
      else:
        new.state["text"] = step_result
      if "error" in observation.lower() and ends:
        # Official: wraps `observation` again, which is already wrapped when the step closed the block; ours wraps
        # it once (step.py, documented), modelled here.
        observation = observation if wrapped else f"{OUTPUT}{observation}{OUTPUT_END}"
        closed = step_result if CODE_END in step_result else step_result + CODE_END
        new.state["text"] = f"{closed}{STEP_DELIM}{observation}"
        new.is_terminal = True
        new.state["final_answer"] = TOO_MANY_CODE_ERRORS
    else:  # a box with nothing in it (never scripted)
      new.state["text"] = step_result
    if not new.is_terminal and new.depth > self.cfg["max_depth"]:
      new.is_terminal = True
      new.state["final_answer"] = TOO_MANY_STEPS
    node.children.append(new)

  def get_steps(self) -> list[dict]:
    """The answers, best value first (a stable sort: ties keep the order they were found in)."""
    states = [{"value": n.value, "final_answer": n.state["final_answer"], "tag": n.tag,
               "solution": self.collect_partial_solution(n)} for n in self.final_answer_nodes]
    return sorted(states, key=lambda s: s["value"], reverse=True)


class OfficialSolver:
  """`solver.py Solver.solve` with `llm_generate` / `rm_generate` (llms/llms.py), over a batch of agents."""

  def __init__(self, cfg: dict, policy: ScriptedPolicy, scorer):
    self.cfg = cfg
    self.policy = policy
    self.scorer = scorer
    self.generate_calls: list[list[str]] = []  # for the comparison: every `llm_generate` call's prompts

  def llm_generate(self, prompts: list[str]) -> list[list[tuple[str, str | None]]]:
    """`official_rstar.llm_generate`, recording every call's prompts."""
    self.generate_calls.append(list(prompts))
    return llm_generate(self.policy, self.cfg, prompts)

  def solve(self, agents: list[OfficialBS]) -> None:
    # Mode "bs" is neither "sbs" nor "mcts" in `Solver.__init__`, so `max_agent_steps` keeps its default 1: one pass
    # of the step loop, after `select_next_step(from_root=True)` has put the root in every beam.
    for agent in agents:
      agent.select_next_step()
    for _ in range(self.cfg["max_depth"]):
      valid = [a for a in agents if a.should_generate_next() and not a.has_expanded()]
      expanded = [a for a in agents if a.should_generate_next() and a.has_expanded()]
      invalid = [a for a in agents if not a.should_generate_next()]
      if not valid and not expanded:
        break
      prompts = [a.create_prompt() for a in valid]
      outputs = self.llm_generate([p for ps in prompts for p in ps])
      start = 0
      for agent, ps in zip(valid, prompts):
        agent.generate_next_step(outputs[start:start + len(ps)])
        start += len(ps)
      for agent in valid:
        values = None
        if self.cfg["need_value_func"]:
          values = rm_generate(self.scorer, agent.create_prompt(is_value_only=True))
        agent.select_next_step(values)
      for agent in expanded:
        agent.select_next_step(None)
      agents = valid + invalid + expanded


# ---------------------------------------------------------------------------------------------------------------------
# The comparison.
# ---------------------------------------------------------------------------------------------------------------------

def _official_reason(node: OfficialNode) -> str | None:
  if not node.is_terminal:
    return None
  return {NO_VALID_CHILD: "unparsable", TOO_MANY_CODE_ERRORS: "too_many_errors",
          TOO_MANY_STEPS: "max_depth"}.get(node.state["final_answer"], "answer")


def _official_nodes(agent: OfficialBS, ground_truth: str) -> dict[str, dict]:
  out, queue = {}, [agent.root]
  while queue:  # breadth first, as `return_states`
    node = queue.pop(0)
    reason = _official_reason(node)
    answer = node.state["final_answer"] if reason == "answer" else None
    out[node.tag] = {
        "parent": None if node.parent is None else node.parent.tag, "depth": node.depth,
        "text": node.state["text"], "code": node.program, "observation": node.state.get("observation", ""),
        "final_answer": answer, "terminal_reason": reason,
        "correct": None if answer is None else is_equiv(ground_truth, answer),
        "ppm_value": None if node.parent is None else node.value}
    queue.extend(node.children)
  return out


def _our_solutions(record: dict) -> list[dict]:
  """Our answers as the official `get_steps` lists them: by PPM value, best first, ties in the order found."""
  nodes = record["nodes"]

  def solution(n):
    path = []
    while n["parent"] != -1:
      path.append(n["text"])
      n = nodes[n["parent"]]
    return "".join(reversed(path))

  answers = sorted((n for n in nodes if n["terminal_reason"] == "answer"), key=lambda n: -n["ppm_value"])
  return [{"value": n["ppm_value"], "final_answer": n["final_answer"], "tag": n["tag"], "solution": solution(n)}
          for n in answers]


def _assert_same_searches(problems, records, agents, ours_calls, theirs_calls, where) -> dict[str | None, int]:
  """Asserts that our records and policy calls match the transcription's agents and `llm_generate` calls (see the
  module docstring); returns how many nodes of each terminal reason were compared.

  Answers are compared stripped: the official `extract_boxed_answer` keeps the spaces of `\\boxed{ 3 }`, ours does
  not; `is_equiv` grades both alike.
  """
  # The beams: the same number of lockstep policy calls, each with the same prompts in the same order.
  assert len(ours_calls) == len(theirs_calls), f"{where}: a different number of steps"
  for step, (got, want) in enumerate(zip(ours_calls, theirs_calls)):
    assert got == want, f"{where} step {step}: other beams ({len(got)} prompts here, {len(want)} there)"

  reasons: dict[str | None, int] = {}
  for problem, record, agent in zip(problems, records, agents):
    ours, theirs = our_nodes(record), _official_nodes(agent, problem.ground_truth)
    assert sorted(ours) == sorted(theirs), f"{where} {problem.problem_id}: the trees have different nodes"
    for tag, want in theirs.items():
      got = ours[tag]
      at = f"{where} {problem.problem_id} node {tag}"
      if want["final_answer"] is not None:
        want["final_answer"] = want["final_answer"].strip()
      for field in ("parent", "depth", "text", "code", "observation", "final_answer", "terminal_reason", "correct"):
        assert got[field] == want[field], f"{at}: {field}"
      assert (got["visits"], got["value_sum"]) == (0, 0.0), at
      if want["terminal_reason"] in ("too_many_errors", "unparsable", "max_depth") or tag == "0":
        assert got["ppm_value"] is None, f"{at}: ppm_value"  # not scored by ours (see the module docstring)
      else:
        assert got["ppm_value"] == want["ppm_value"], f"{at}: ppm_value"  # the same float32 value
      reasons[want["terminal_reason"]] = reasons.get(want["terminal_reason"], 0) + 1
    solutions = agent.get_steps()
    for solution in solutions:
      solution["final_answer"] = solution["final_answer"].strip()
    ours_solutions = _our_solutions(record)
    at = f"{where} {problem.problem_id}: answers"
    assert [s["tag"] for s in ours_solutions] == [s["tag"] for s in solutions], at
    assert ours_solutions == solutions, at
    assert best_answer(record) == (solutions[0]["final_answer"] if solutions else None), at
  return reasons


def test_beams_match_the_official_step_beam_search():
  problems = [Problem(f"p{i:02d}", f"problem {i:02d}", str(i % 4)) for i in range(NUM_PROBLEMS)]

  ours_policy = ScriptedPolicy(script)
  config = BeamConfig(beam_width=BEAM_WIDTH, samples_per_step=SAMPLES_PER_STEP, max_depth=MAX_DEPTH,
                      errors_threshold=OFFICIAL_CONFIG["errors_threshold"], first_answer_only=True,
                      stop=OFFICIAL_CONFIG["stop"])
  records = beam_search(problems, ours_policy, FakeExecutor(), FunctionScorer(ppm), config, prompt_fn=PROMPT.format,
                        grader=ExactGrader())

  agents = [OfficialBS(OFFICIAL_CONFIG, p.question, FakeExecutor()) for p in problems]
  solver = OfficialSolver(OFFICIAL_CONFIG, ScriptedPolicy(script), lambda texts: [ppm(t) for t in texts])
  solver.solve(agents)

  reasons = _assert_same_searches(problems, records, agents, [prompts for prompts, _ in ours_policy.calls],
                                  solver.generate_calls, "fixed world")

  # The trees exercise every rule compared above.
  assert sum(reasons.values()) > 15 * NUM_PROBLEMS, reasons
  for reason in ("answer", "too_many_errors", "unparsable", None):
    assert reasons.get(reason, 0) >= 10, (reason, reasons)
  assert len(solver.generate_calls) == MAX_DEPTH  # some problem ran every step ...
  depths = [max(n["depth"] for n in record["nodes"]) for record in records]
  assert sum(d < MAX_DEPTH for d in depths) >= 5, depths  # ... and others stopped early,
  assert sum(a.current_top_num == 0 for a in agents) >= 5  # most of them when answers used up their width.
  # More unfinished children in a step than beam slots (the PPM ranking decides), and more answers in one step than
  # the width left (the official count would pass 0).
  crowded = sum(sum(not n["terminal"] for n in record["nodes"] if n["depth"] == d) > BEAM_WIDTH
                for record in records for d in range(1, MAX_DEPTH + 1))
  assert crowded >= 20, crowded
  assert sum(a.passed_zero for a in agents) >= 2


# ---------------------------------------------------------------------------------------------------------------------
# Random worlds: random scripts, sandboxes, PPMs, stop strings and settings, compared the same way.
# ---------------------------------------------------------------------------------------------------------------------

def _beam_step_texts(k: int) -> dict[str, str | StepCandidate]:
  """`fuzz_step_texts` plus `<end_of_answer>` and code shapes that matter to the beam's first-answer rule."""
  return {**fuzz_step_texts(k),
          "tag_mid": f"\\boxed{{{k}}}{ANSWER_END}\nx = 1\n{STEP_END}",   # the tag inside, stopped at another
          "no_box_tag": f"<answer>{k}{ANSWER_END}",                       # stopped at the tag, no box: code
          "code_tag": f"print({k})\n{ANSWER_END}",                         # the same, as runnable code
          "tag_eos": StepCandidate(f"\\boxed{{{k}}}{ANSWER_END}", STOP_EOS),  # ends with the tag, not stopped there
          "both_tags": f"<code>\nprint({k})\n{CODE_END}\nmore\n{STEP_END}",
          "unicode": f"<code>\ns = '\u00e9{k}'\n{STEP_END}"}


def _random_beam_world(rng: np.random.Generator) -> dict:
  """One random world and beam setting for both sides (see `test_random_worlds_match_the_official_beam_search`)."""
  going_on = ("open", "continue", "close", "error", "open_close", "continue_close", "open_error", "printed_error",
              "both_tags", "unicode")
  script, digits, world_seed = random_script(rng, _beam_step_texts, going_on, max_answer_rate=0.15)

  # Exact ties and values at the clip edges; ties in float32 only, and -0.0 against 0.0; +-1 only.
  world_ppm = random_ppm(rng, world_seed, [[-1.0, -0.5, 0.0, 0.5, 1.0], [-1.0, -0.0, 0.0, 0.1, 0.1 + 1e-9, 1.0],
                                           [-1.0, 1.0]])

  Executor = random_executor(rng, world_seed)

  # The official stop strings half the time; else some of the tags in any order (`<end_of_answer>` often missing),
  # now and then with a stop string that matches inside a tag.
  stop = (STEP_END, CODE_END, ANSWER_END)
  if rng.random() < 0.5:
    stop = tuple(rng.permutation([s for s in (STEP_END, CODE_END, ANSWER_END, OUTPUT_END) if rng.random() < 0.7]
                                 or [STEP_END]).tolist())
    if rng.random() < 0.3:
      stop = tuple(rng.permutation([*stop, str(rng.choice(["p>", "code>", "\n<end"]))]).tolist())
  cfg = dict(step_beam_width=int(rng.integers(1, 6)), n_generate_sample=int(rng.integers(1, 7)),
             max_depth=int(rng.integers(1, 9)), errors_threshold=int(rng.integers(1, 4)), stop=stop,
             need_value_func=True, first_answer_only=bool(rng.random() < 0.75))
  problems = [Problem(f"p{i}", f"problem {world_seed} {i}", str(rng.integers(digits)))
              for i in range(int(rng.integers(1, 6)))]
  return dict(cfg=cfg, script=script, ppm=world_ppm, executor=Executor, problems=problems)


NUM_RANDOM_WORLDS = 200


def test_random_worlds_match_the_official_beam_search():
  """Random worlds (step mixes with duplicates, unparsable, truncated, failing code and `<end_of_answer>` variants;
  random code errors; PPMs with exact and float32 ties and values at +-1; beam width 1..5, 1..6 samples per step,
  depth 1..8, errors threshold 1..3, first-answer rule on or off, random stop string sets; 1..5 problems in
  lockstep), each searched by both sides and compared node by node, beam by beam and answer by answer."""
  rng = np.random.default_rng(20261204)
  reasons: dict[str | None, int] = {}
  stats = dict.fromkeys(("tie_cut", "passed_zero", "uneven_finish", "errors_go_on", "tag_eos_kept_others",
                         "first_answer_off"), 0)
  for world_index in range(NUM_RANDOM_WORLDS):
    world = _random_beam_world(rng)
    cfg, problems = world["cfg"], world["problems"]
    ours_policy = ScriptedPolicy(world["script"])
    config = BeamConfig(beam_width=cfg["step_beam_width"], samples_per_step=cfg["n_generate_sample"],
                        max_depth=cfg["max_depth"], errors_threshold=cfg["errors_threshold"],
                        first_answer_only=cfg["first_answer_only"], stop=cfg["stop"], seed=world_index)
    records = beam_search(problems, ours_policy, world["executor"](), FunctionScorer(world["ppm"]), config,
                          prompt_fn=PROMPT.format, grader=ExactGrader())
    agents = [OfficialBS(cfg, p.question, world["executor"]()) for p in problems]
    solver = OfficialSolver(cfg, ScriptedPolicy(world["script"]), lambda texts: [world["ppm"](t) for t in texts])
    solver.solve(agents)
    where = f"world {world_index} ({cfg})"
    for reason, count in _assert_same_searches(problems, records, agents, [p for p, _ in ours_policy.calls],
                                               solver.generate_calls, where).items():
      reasons[reason] = reasons.get(reason, 0) + count

    # What the world exercised (for the coverage checks below).
    stats["passed_zero"] += sum(a.passed_zero for a in agents)
    last_steps = {max(n["depth"] for n in r["nodes"]) for r in records}
    stats["uneven_finish"] += len(last_steps) > 1
    for record in records:
      nodes = record["nodes"]
      for n in nodes:
        kids = [nodes[c] for c in n["children"]]
        # A tie at the beam's cut: an expanded and an unexpanded unfinished child, both with the same value.
        going = [c for c in kids if c["terminal_reason"] is None]
        if n["depth"] + 2 <= cfg["max_depth"]:
          stats["tie_cut"] += any(a["children"] and not b["children"] and a["ppm_value"] == b["ppm_value"]
                                  for a in going for b in going)
        stats["errors_go_on"] += any(c["terminal_reason"] is None and "error" in c["observation"].lower()
                                     for c in kids)
        stats["tag_eos_kept_others"] += len(kids) > 1 and any(c["text"].endswith(ANSWER_END) for c in kids) and \
            ANSWER_END not in cfg["stop"]
        stats["first_answer_off"] += not cfg["first_answer_only"] and ANSWER_END in cfg["stop"] and len(kids) > 1 and \
            any(c["text"].endswith(ANSWER_END) for c in kids)
  # The worlds drawn reach every terminal reason compared, in enough nodes, and every rule above.
  assert sum(reasons.values()) > 20 * NUM_RANDOM_WORLDS, reasons
  assert set(reasons) >= {"answer", "too_many_errors", "unparsable", None}, reasons
  assert all(count >= 10 for count in stats.values()), str(stats)
