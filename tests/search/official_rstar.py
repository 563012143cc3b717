"""What the two official-transcription tests share (`official_transcription_test.py`: MCTS,
`official_beam_transcription_test.py`: step beam search).

- The shared world both sides are driven by: a prompt-keyed step script, a fake sandbox, a fake PPM and an exact
  answer check, all deterministic.
- The parts of the released rStar-Math code (`rstar_deepthink/`) both searches use, transcribed as plain Python:
  constants, `extract_program`, `extract_math_answer`, the step parser, the `BaseTree` methods and the candidate
  filter of `llm_generate` / the value scale of `rm_generate`. Our documented deviations these model are named where
  they apply.
"""

from __future__ import annotations

import zlib
from typing import Callable, Mapping

import numpy as np
import pytest

from rstar_jax.search.interfaces import STOP_LENGTH, StepCandidate
from rstar_jax.search.scripted import FakeResult, ScriptedPolicy

PROMPT = "Question: {}\n"

# ---------------------------------------------------------------------------------------------------------------------
# The shared world.
# ---------------------------------------------------------------------------------------------------------------------


def _step_texts(k: int) -> dict[str, str]:
  """Every kind of scripted step, for the digit `k`."""
  return {
      "open": f"<code>\nx = {k}\n<end_of_step>",                              # opens a code block
      "continue": f"y = x + {k}\n<end_of_step>",                              # continues it
      "close": f"print(y * {k})\n<end_of_code>",                              # closes it: output block appended
      "error": f"z = {k} / 0\n<end_of_step>",                                 # a code error
      "error_close": f"print({k} / 0)\n<end_of_code>",                        # an error that closes the block
      "answer_tag": f"<answer>The answer is \\boxed{{{k}}}<end_of_answer>",  # the first-answer rule
      "answer_box": f"# so it is \\boxed{{{k}}}\n<end_of_step>",              # an answer by its box, not its stop
      "two_boxes": f"\\boxed{{{k + 1}}} or \\boxed{{{k}}}<end_of_answer>",    # two boxes: the last one counts
      "no_box": f"The answer is {k}<end_of_answer>",                          # stopped at <end_of_answer>, no box
      "output_stop": f"<output>{k}<end_of_output>",                           # bootstrap stop string
      "eos_boxed": f"Thus \\boxed{{{k}}}",                                    # eos, but boxed: an answer
      "junk": f"junk {k}",                                                    # eos: unparsable (ours)
      "blank": "  \n<end_of_step>",                                           # blank: unparsable (ours)
  }


def make_script(weights: Mapping[str, float | None], answer_base: float,
                answer_slope: float, digits: int = 4, salt: int | None = None) -> Callable[[str, int, int], list[str]]:
  """A `ScriptedPolicy` script: `n` steps drawn from the prompt alone (the seed is ignored, so neither side needs
  our seeding).

  Args:
    weights: kind (see `_step_texts`) -> sampling weight, in drawing order; `answer_tag` / `answer_box` take None:
      their weights are a half and the whole of `answer_base + answer_slope * steps so far` (answers get likelier
      deeper down).
    digits: steps use the digits 0..digits-1 (fewer digits: more duplicate candidates and equal answers).
    salt: another script over the same prompts (None: the prompt alone keys the draws).
  """
  def script(prompt: str, n: int, seed: int) -> list[str]:
    del seed
    key = zlib.crc32(prompt.encode())
    rng = np.random.default_rng(key if salt is None else [salt, key])
    steps_so_far = prompt.count("<end_of_step>") + prompt.count("<end_of_code>")
    answer_weight = answer_base + answer_slope * steps_so_far
    special = {"answer_tag": answer_weight / 2, "answer_box": answer_weight}
    probs = np.asarray([special.get(kind, w) for kind, w in weights.items()])
    out = []
    for _ in range(n):
      texts = _step_texts(int(rng.integers(0, digits)))
      out.append(texts[list(weights)[int(rng.choice(len(weights), p=probs / probs.sum()))]])
    return out

  return script


def fuzz_step_texts(k: int) -> dict[str, str | StepCandidate]:
  """`_step_texts` plus shapes the fixed script never draws (the `ws_box` answer ` k ` is read as `k` here and as
  ` k ` by the official `extract_boxed_answer`: compared stripped, graded alike by both)."""
  return {**_step_texts(k),
          "answer_plain": f"\\boxed{{{k}}}{ANSWER_END}",
          "answer_eos_tag": f"<answer>\\boxed{{{k}}}",                  # eos, but boxed: an answer
          "answer_at_step": f"\\boxed{{{k}}}{STEP_END}",
          "answer_at_code": f"print({k})\n\\boxed{{{k}}}{CODE_END}",   # a box wins over the code
          "nested_box": f"\\boxed{{\\frac{{{k}}}{{2}}}}{ANSWER_END}",
          "ws_box": f"so  \\boxed{{ {k} }}\n{STEP_END}",
          "length": StepCandidate(f"x = {k}\n", STOP_LENGTH),             # truncated: unparsable (ours)
          "length_boxed": StepCandidate(f"so \\boxed{{{k}}}", STOP_LENGTH),
          "open_close": f"<code>\nprint({k} + 1)\n{CODE_END}",
          "open_error": f"<code>\nq = {k} / 0\n{STEP_END}",
          "printed_error": f"print('Error {k}')\n{CODE_END}",           # an output that reads as an error
          "continue_close": f"y = x + {k}\n{CODE_END}",                  # `continue`'s text, another stop string
          "no_box_eos": f"The answer is {k}",                              # `no_box`'s text, eos
          "only_stop": CODE_END,                                           # blank: unparsable (ours)
          "inner_stop": f"a = {k}\n{STEP_END}\nb = 2"}                    # eos after a stop string

def observe(program: str) -> str:
  """The fake sandbox: an error for a division by zero or a stray sentence, a number when something prints."""
  if "/ 0" in program:
    return "ZeroDivisionError: division by zero\n"
  if "answer is" in program:
    return "SyntaxError: invalid syntax"
  if "print" not in program:
    return ""
  return f" {zlib.crc32(program.encode()) % 7}\n"


class FakeExecutor:
  def run(self, programs):
    return [FakeResult(observe(p)) for p in programs]


def random_script(rng: np.random.Generator, step_texts: Callable[[int], dict], going_on: tuple[str, ...],
                  max_answer_rate: float) -> tuple[Callable, int, int]:
  """A random world's prompt-keyed step script, shared by the random-world tests of the MCTS and the beam search.

  Draws (in this order, so seeded tests keep their worlds) which `step_texts` kinds occur, their weights, the answer
  rate's base and slope in [0, max_answer_rate), the digit range and the world seed. Returns (script, digits,
  world_seed); the script's draws are keyed by the prompt and the world seed, so both sides get the same candidates.
  """
  kinds = list(dict.fromkeys([k for k in step_texts(0) if rng.random() < 0.6] + ["open"]))
  # Steps a path goes on from get the larger weights: a terminal, above all an `<end_of_answer>` one (it ends the
  # whole expansion), drawn as often would leave trees of a few nodes.
  weights = {k: None if k in ("answer_tag", "answer_box") else float(rng.random() * (1.0 if k in going_on else 0.1))
             + 1e-3 for k in kinds}
  answer_base, answer_slope = rng.uniform(0, max_answer_rate, size=2)
  digits, world_seed = int(rng.integers(1, 6)), int(rng.integers(0, 2**31))  # few digits: many duplicates

  def script(prompt: str, n: int, seed: int) -> list:
    del seed
    draw = np.random.default_rng([zlib.crc32(prompt.encode()), world_seed])
    steps_so_far = prompt.count(STEP_END) + prompt.count(CODE_END)
    special = {"answer_tag": (answer_base + answer_slope * steps_so_far) / 2,
               "answer_box": answer_base + answer_slope * steps_so_far}
    probs = np.asarray([special.get(k, w) for k, w in weights.items()])
    return [step_texts(int(draw.integers(0, digits)))[kinds[int(draw.choice(len(kinds), p=probs / probs.sum()))]]
            for _ in range(n)]

  return script, digits, world_seed


def random_ppm(rng: np.random.Generator, world_seed: int, value_sets: list[list[float]]) -> Callable[[str], float]:
  """A random world's fake PPM, keyed by the scored text and the world seed: one kind drawn from tanh of a uniform
  draw, a choice from one of `value_sets` (exact ties, clip edges, float32-only ties), or 0.0 for every text."""
  kind = int(rng.integers(0, len(value_sets) + 2))

  def world_ppm(text: str) -> float:
    draw = np.random.default_rng([zlib.crc32(text.encode()), world_seed])
    if kind == 0:
      return float(np.tanh(draw.uniform(-5, 5) / 5))
    return float(draw.choice(value_sets[kind - 1])) if kind <= len(value_sets) else 0.0

  return world_ppm


def random_executor(rng: np.random.Generator, world_seed: int) -> type:
  """A random world's fake sandbox: `observe`, plus a NameError on a random share (< 1/2) of the error-free programs,
  keyed by the program and the world seed."""
  error_rate = rng.uniform(0, 0.5)

  class Executor:
    def run(self, programs):
      out = []
      for program in programs:
        seen = "Error happened\n" if "'Error" in program else observe(program)
        if "error" not in seen.lower() and zlib.crc32(f"{program}{world_seed}".encode()) % 1000 < 1000 * error_rate:
          seen = "NameError: name 'q' is not defined"
        out.append(FakeResult(seen))
      return out

  return Executor


def ppm(text: str) -> float:
  """The fake PPM: a value in (-1, 1) keyed by the scored text (the scorer hands it on as float32)."""
  return float(np.tanh(np.random.default_rng(zlib.crc32(text.encode())).uniform(-5, 5) / 5))


def is_equiv(ground_truth: str, answer: str) -> bool:
  return str(ground_truth).strip() == str(answer).strip()


class ExactGrader:
  """Our side's grader, on the same `is_equiv`."""

  def equivalent_batch(self, pairs):
    return [is_equiv(gold, pred) for pred, gold in pairs]


# ---------------------------------------------------------------------------------------------------------------------
# Transcribed parts of the released code that both searches use.
# ---------------------------------------------------------------------------------------------------------------------

# Sentinel final answers of invalid terminals (official constants.py; only their identity matters here).
TOO_MANY_CODE_ERRORS, TOO_MANY_STEPS, NO_VALID_CHILD = "<too many code errors>", "<too many steps>", "<no valid child>"
INVALID_ANSWERS = (TOO_MANY_CODE_ERRORS, TOO_MANY_STEPS, NO_VALID_CHILD)
CODE, CODE_END, STEP_END = "<code>", "<end_of_code>", "<end_of_step>"
OUTPUT, OUTPUT_END, ANSWER_END = "<output>", "<end_of_output>", "<end_of_answer>"
STEP_DELIM = "\n"


def extract_program(text: str) -> str:
  """`agents/tree.py extract_program`: lines inside `<code>` ... `<end_of_code>`, blocks separated by a marker."""
  text = text.replace(STEP_END, "")
  program, inside = "", False
  for line in text.split("\n"):
    if CODE in line:
      program, inside = program + "\n# ========\n", True
    elif CODE_END in line:
      inside = False
    elif inside:
      program += line + "\n"
  return (program or text).strip()


def extract_math_answer(text: str) -> str:
  """`agents/utils.py extract_math_answer`: cut at the first '.\\n', drop a final '.', take the last box."""
  head = text.split(".\n")[0].strip()
  head = head[:-1].strip() if head.endswith(".") else head
  start = head.rfind("\\boxed{")
  if start < 0:
    return head
  depth, open_at = 0, None
  for i in range(start, len(head)):
    if head[i] == "{":
      depth += 1
      open_at = i if open_at is None else open_at
    elif head[i] == "}":
      depth -= 1
      if depth == 0:
        return head[open_at + 1:i]
  return head[open_at + 1:]  # unclosed (never scripted)


def step_unwrap(text: str, stop_reason: str | None) -> dict | None:
  """`rstar_step_result_unwrap`: a boxed step is an answer, anything else a python action.

  Our documented deviation: a blank step, or one that ended without a stop string, is unparsable (None here, the
  official `NO_VALID_CHILD` branch of `create_child`), where the official parser would run it as code.
  """
  if "boxed" in text:
    return {"action": "", "action_input": "", "final_answer": extract_math_answer(text)}
  if stop_reason is None or not text[:len(text) - len(stop_reason)].strip():
    return None
  return {"action": "python_interpreter", "action_input": text, "final_answer": ""}


class OfficialTree:
  """The `BaseTree` / `BS` methods both agents use. Subclasses set `cfg`, `question`, `executor`, `root`,
  `current_nodes` and `candidate_nodes`; nodes have `parent`, `children`, `depth`, `is_terminal` and `state`."""

  def collect_partial_solution(self, node) -> str:
    texts = []
    while node is not None:
      texts.append(node.state["text"])
      node = node.parent
    return "".join(reversed(texts))

  def prompt_wrap(self, node) -> str:
    return PROMPT.format(self.question) + self.collect_partial_solution(node)

  def is_ignored_node(self, node) -> bool:
    return node.is_terminal or node.depth > self.cfg["max_depth"]

  def should_generate_next(self) -> bool:
    return any(not self.is_ignored_node(n) for n in self.current_nodes)

  def has_expanded(self) -> bool:
    return bool(self.current_nodes) and bool(self.current_nodes[0].children)

  def create_prompt(self, is_value_only: bool = False) -> list[str]:
    nodes = self.candidate_nodes if is_value_only else self.current_nodes
    return [self.prompt_wrap(n) for n in nodes if is_value_only or not self.is_ignored_node(n)]

  def code_execution(self, node, action_input: str) -> tuple[str, str]:
    """`agents/tree.py`: runs the code since the last finished block (`collect_action_inputs`) plus this step;
    returns (program, output)."""
    history = []  # (the official also skips an input whose output timed out; the fake sandbox never times out)
    while node is not None and OUTPUT_END not in node.state["text"] and CODE_END not in node.state["text"]:
      if node.state["action"] == "python_interpreter" and node.state["action_input"]:
        history.append(node.state["action_input"])
      node = node.parent
    program = extract_program("".join(reversed(history)) + action_input)
    return program, str(self.executor.run([program])[0].observation).strip()


def llm_generate(policy: ScriptedPolicy, cfg: dict, prompts: list[str]) -> list[list[tuple[str, str | None]]]:
  """`llms/llms.py llm_generate`: samples, then drops repeated texts; if one stopped at `<end_of_answer>`, keeps
  only the first such one.

  Ours can switch that last filter off (`first_answer_only=False`; the official always applies it): modelled by
  `cfg["first_answer_only"]` (default True, the official code).
  """
  out = []
  cands = policy.generate(prompts, n=cfg["n_generate_sample"], seeds=[0] * len(prompts),
                          stop=list(cfg["stop"])) if prompts else []
  for per_prompt in cands:
    # vLLM reports the matched stop string, or None when generation ended otherwise.
    outs = [(c.text, c.stop_reason if c.stop_reason in cfg["stop"] else None) for c in per_prompt]
    seen, kept = set(), []
    for text, stop in outs:
      if text not in seen:
        seen.add(text)
        kept.append((text, stop))
    answers = [o for o in kept if o[1] == ANSWER_END] if cfg.get("first_answer_only", True) else []
    out.append(answers[:1] if answers else kept)
  return out


def rm_generate(scorer: Callable[[list[str]], list[float]], texts: list[str]) -> list[float]:
  """`llms/llms.py rm_generate`: the official value comes out of a float32 torch tensor (tanh(r / 5) belongs to
  the fake `ppm`)."""
  return [float(np.float32(v)) for v in scorer(texts)] if texts else []


# ---------------------------------------------------------------------------------------------------------------------
# Comparing our tree records with a reference search's nodes.
# ---------------------------------------------------------------------------------------------------------------------

NODE_FIELDS = ("parent", "depth", "text", "code", "observation", "final_answer", "terminal_reason", "correct",
               "visits", "value_sum", "q", "ppm_value")


class NearTie(Exception):
  """Two children's (float64) scores differ by less than float32, the kernels' precision, can tell apart."""


def our_nodes(record: dict) -> dict[str, dict]:
  """tag -> the `NODE_FIELDS` of one node of our tree record (`parent` as the parent's tag)."""
  tags = {n["id"]: n["tag"] for n in record["nodes"]}
  return {n["tag"]: {"parent": tags.get(n["parent"]), **{f: n[f] for f in NODE_FIELDS[1:]}} for n in record["nodes"]}


def assert_same_mcts_nodes(ours: Mapping[str, dict], theirs: Mapping[str, dict], where: str) -> list[str | None]:
  """Asserts the two trees hold the same nodes, field by field (values to 1e-5); returns the terminal reasons."""
  assert sorted(ours) == sorted(theirs), f"{where}: the trees have different nodes"
  for tag, want in theirs.items():
    got = ours[tag]
    for field in NODE_FIELDS:
      if field in ("value_sum", "q", "ppm_value"):
        assert got[field] == pytest.approx(want[field], abs=1e-5), f"{where} node {tag}: {field}"
      else:
        assert got[field] == want[field], f"{where} node {tag}: {field}"
  return [want["terminal_reason"] for want in theirs.values()]
