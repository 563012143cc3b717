"""The code-augmented step protocol (DESIGN §1.1): from sampled candidates to child nodes.

For one expansion: `dedupe_candidates` drops repeated candidates and, with `first_answer_only`, keeps
only the first candidate that stopped at `<end_of_answer>` when there is one (the others go too), as the
official `llm_generate`; `plan_child` classifies each one and builds the
program to run; the caller runs the programs in the sandbox (one batch for all trees); `finish_child`
turns the sandbox result into the child's text, observation and terminal state.

Classification of a candidate's step text (candidate text + its stop string):
- contains `boxed`: a terminal *answer*; the answer is the last `\\boxed{...}` of the text before the stop
  string. If no box can be read (braces never close), the step is *unparsable* instead.
- empty (only whitespace besides the stop string), or generation ended without a stop string
  ("length": truncated, "eos": the model ended the solution without an answer): *unparsable*,
  terminal, reward -1. (The official code would run such text as code; a truncated or answerless
  ending is not a step a later expansion can continue.)
- otherwise *code*: the program is `extract_program(code since the last finished block + this step)`,
  run at every step. "Finished block": walking up from the parent, the first node whose text has
  `<end_of_code>` or `<end_of_output>` ends the history (itself excluded).
  * The observation is the sandbox's (rstar mode), stripped, as the official `code_execution` does.
  * If the step text contains `<end_of_code>`, the node text gets `"\\n<output>{observation}<end_of_output>"`.
  * An observation containing "error" (any case) makes `consecutive_errors = parent's + 1`, else 0;
    reaching `errors_threshold` makes the node terminal (`too_many_errors`), and its text is closed
    (`<end_of_code>` added if missing) and gets the output block, as in the official code.
- Then: a non-terminal child deeper than `max_depth` becomes terminal (`max_depth`); answers stay
  answers at any depth.

Where the official code (agents/mcts.py, agents/utils.py) does otherwise, on purpose:
- A step that closes the code block *and* reaches the error threshold gets its output block once; the official
  `create_child` wraps the already wrapped observation again (`<output><output>...<end_of_output><end_of_output>`).
- The answer is the last `\\boxed{...}` of the whole step; the official `extract_math_answer` first cuts the
  step at its first `".\\n"`, so `The total is 12.\\nSo the answer is \\boxed{12}` yields `<answer>The total is 12`
  there (graded wrong). An empty box is an (empty, wrong) answer here; the official node stays non-terminal.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from rstar_jax import grading
from rstar_jax.search.interfaces import STOP_EOS, STOP_LENGTH, ExecutionResult, StepCandidate
from rstar_jax.search.tree import Reason

CODE_START = "<code>"
CODE_END = "<end_of_code>"
STEP_END = "<end_of_step>"
OUTPUT_START = "<output>"
OUTPUT_END = "<end_of_output>"
ANSWER_START = "<answer>"
ANSWER_END = "<end_of_answer>"
# One step ends at any of these (DESIGN §1.1); the bootstrap round also stops at `<end_of_output>`.
STOP_STRINGS = (STEP_END, CODE_END, ANSWER_END)
BOOTSTRAP_STOP_STRINGS = STOP_STRINGS + (OUTPUT_END,)
STEP_DELIM = "\n"


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Step protocol settings.

  Attributes:
    errors_threshold: consecutive code errors that end a path (official: 2 bootstrap, 1 later).
    max_depth: a non-answer child deeper than this is terminal (rStar: 16).
    first_answer_only: when a candidate of an expansion stopped at `<end_of_answer>`, keep only the first such
      candidate and drop all others (the official `llm_generate` filter).
  """
  errors_threshold: int = 1
  max_depth: int = 16
  first_answer_only: bool = True

  def __post_init__(self):
    for field in ("errors_threshold", "max_depth"):
      # A fraction would compare as a looser bound (1.5 errors end a path at 2) or reach the tree kernels as a shape.
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
    if not isinstance(self.first_answer_only, bool):  # a config file's "false" is a non-empty str: it ran as True
      raise ValueError(f"first_answer_only must be a bool, got {self.first_answer_only!r}")


def checked_stop(stop: Sequence[str]) -> tuple[str, ...]:
  """A search config's stop strings as a tuple, refusing a single string (it would be iterated character by
  character: the policy would end a step at every `<`, `e`, ...) and anything but non-empty strings.

  Raises:
    TypeError: `stop` is a string or not a sequence.
    ValueError: an entry is not a non-empty string.
  """
  if isinstance(stop, str) or not isinstance(stop, Sequence):
    raise TypeError(f"stop must be a sequence of stop strings (e.g. a tuple), got {type(stop).__name__} {stop!r}")
  for s in stop:
    if not isinstance(s, str) or not s:
      raise ValueError(f"stop strings must be non-empty strings, got {s!r} in {list(stop)!r}")
  return tuple(stop)


def _is_answer_candidate(c: StepCandidate) -> bool:
  # The official filter reads vLLM's `stop_reason` only: a text that merely ends with the tag (eos or length, when
  # the stop strings lack it) is no answer candidate there, and must not drop the expansion's other candidates here.
  return c.stop_reason == ANSWER_END


def dedupe_candidates(candidates: Sequence[StepCandidate], first_answer_only: bool = True
                      ) -> list[StepCandidate]:
  """The candidates an expansion keeps, as the official `llm_generate` filters vLLM's outputs.

  A candidate whose text (without its stop string, as vLLM's `out.text`) repeats an earlier one is dropped. Then,
  with `first_answer_only`, if any candidate stopped at `<end_of_answer>` (its `stop_reason`, as the official
  filter reads it), only the first of those is kept: the expansion adds that one answer and nothing else
  (DESIGN §1.1).
  """
  seen: set[str] = set()
  kept: list[StepCandidate] = []
  for c in candidates:
    if c.text not in seen:
      seen.add(c.text)
      kept.append(c)
  if first_answer_only:
    answers = [c for c in kept if _is_answer_candidate(c)]
    if answers:
      return answers[:1]
  return kept


def extract_program(text: str) -> str:
  """The program of a code text, as the official `extract_program` builds it.

  `<end_of_step>` is removed; the lines strictly between a `<code>` line and an `<end_of_code>` line
  are kept, every `<code>` line starting a block with a `# ========` separator line; text without any
  `<code>` line is a program as a whole.
  """
  text = text.replace(STEP_END, "")
  program = ""
  inside = False
  for line in text.split("\n"):
    if CODE_START in line:
      program += "\n# ========\n"
      inside = True
    elif CODE_END in line:
      inside = False
    elif inside:
      program += line + "\n"
  if not program:
    program = text
  return program.strip()


def closes_code_block(text: str) -> bool:
  """Whether a node text finished a code block (the code history stops above it)."""
  return CODE_END in text or OUTPUT_END in text


def code_history(path_texts: Sequence[str]) -> str:
  """Step texts of a path (root first, ending at the parent) since the last finished code block."""
  pieces: list[str] = []
  for text in reversed(path_texts):
    if closes_code_block(text):
      break
    pieces.append(text)
  return "".join(reversed(pieces))


@dataclasses.dataclass(frozen=True)
class ParentState:
  """What the protocol needs of the node being expanded."""
  depth: int
  consecutive_errors: int
  code_history: str  # `code_history(path texts)`


@dataclasses.dataclass(frozen=True)
class PlannedChild:
  """A classified candidate; `program` is set (to run in the sandbox) for code steps only."""
  step_text: str
  kind: str  # "answer" | "code" | "unparsable"
  final_answer: str | None
  program: str | None
  depth: int


@dataclasses.dataclass(frozen=True)
class ChildStep:
  """A finished child node (host-side fields)."""
  text: str
  code: str
  observation: str
  final_answer: str | None
  reason: Reason
  consecutive_errors: int
  depth: int

  @property
  def terminal(self) -> bool:
    return self.reason != Reason.NONE


def plan_child(candidate: StepCandidate, parent: ParentState) -> PlannedChild:
  """Classifies one candidate and builds its program (see the module docstring)."""
  step_text = candidate.step_text
  depth = parent.depth + 1
  if "boxed" in step_text:
    # Read without the stop string: a box without braces (`\\boxed 3<end_of_answer>`) would take the tag along.
    answer = grading.extract_boxed(candidate.text)
    if answer is not None:
      return PlannedChild(step_text, "answer", answer, None, depth)
    return PlannedChild(step_text, "unparsable", None, None, depth)
  if not candidate.text.strip() or candidate.stop_reason in (STOP_EOS, STOP_LENGTH):
    return PlannedChild(step_text, "unparsable", None, None, depth)
  program = extract_program(parent.code_history + step_text)
  return PlannedChild(step_text, "code", None, program, depth)


def finish_child(planned: PlannedChild, result: ExecutionResult | None, parent: ParentState,
                 config: StepConfig) -> ChildStep:
  """Builds the child from its plan and, for code steps, the sandbox result."""
  if planned.kind == "answer":
    return ChildStep(planned.step_text, "", "", planned.final_answer, Reason.ANSWER, 0, planned.depth)
  if planned.kind == "unparsable":
    return ChildStep(planned.step_text, "", "", None, Reason.UNPARSABLE, 0, planned.depth)
  if result is None:
    raise ValueError("a code step needs its sandbox result")
  observation = str(result.observation).strip()
  text = planned.step_text
  if CODE_END in text:
    text = f"{text}{STEP_DELIM}{OUTPUT_START}{observation}{OUTPUT_END}"
  reason = Reason.NONE
  errors = 0
  if "error" in observation.lower():
    errors = parent.consecutive_errors + 1
    if errors >= config.errors_threshold:
      closed = planned.step_text if CODE_END in planned.step_text else planned.step_text + CODE_END
      text = f"{closed}{STEP_DELIM}{OUTPUT_START}{observation}{OUTPUT_END}"
      reason = Reason.TOO_MANY_ERRORS
  if reason == Reason.NONE and planned.depth > config.max_depth:
    reason = Reason.MAX_DEPTH
  return ChildStep(text, planned.program, observation, None, reason, errors, planned.depth)

