"""rStar prompt templates: the bootstrap (few-shot) prompt and the SFT prompt (DESIGN §1.1).

A prompts folder (e.g. `../shared/data/prompts`) holds the release's files:
- `few_shots.json`: a JSON list of worked solutions (`Question: ...\\n<code>...<end_of_answer>`).
- `mcts_prompt.json`: `{"pot_format_instructions": ..., "pot_suffix": "... Question: {input}"}`, the
  bootstrap round's instructions.
- `sft_prompt.json`: the same keys; empty instructions and the `<|user|>:` / `<|assistant|>:` suffix
  used from round 2 on.

`PromptTemplate.format(question)` reproduces the official `rstar_prompt_wrap` with an empty partial
solution, with step delimiter "\\n":

    "\\n".join([instructions, example_prefix, *examples, "", suffix.format(input=question + "\\n")])

where `example_prefix` is "The following are {k} demonstration examples." ("...is a demonstration
example." for one), and with no examples and no instructions the prompt is just
`suffix.format(input=question + "\\n")`. Note the question is followed by the step delimiter, so the SFT
prompt reads `<|user|>:\\n{question}\\n\\n<|assistant|>: ...`, exactly as the official search builds it.
The official code draws the few-shot examples in random order (unseeded); we keep file order, so a
prompt is a pure function of the question.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string

from rstar_jax import files

STEP_DELIM = "\n"
BOOTSTRAP_FILE = "mcts_prompt.json"
SFT_FILE = "sft_prompt.json"
FEW_SHOTS_FILE = "few_shots.json"


class PromptFileError(ValueError):
  """A prompt file is missing a field or has the wrong type (the message names file and field)."""


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """One rStar prompt: instructions, few-shot examples and the question suffix.

  Attributes:
    instructions: `pot_format_instructions` ("" for the SFT prompt).
    suffix: `pot_suffix`, a Python format string with the one field `{input}` (as the official wrap fills it with
      `str.format`, "{{" and "}}" are literal braces).
    examples: few-shot solutions (empty for the SFT prompt).
  """
  instructions: str
  suffix: str
  examples: tuple[str, ...] = ()

  def __post_init__(self):
    problem = suffix_problem(self.suffix)
    if problem is not None:
      raise ValueError(f"PromptTemplate suffix {self.suffix!r}: {problem}")

  def format(self, question: str) -> str:
    """The policy prompt for `question` (the partial solution is appended to it by the search)."""
    suffix = self.suffix.format(input=question + STEP_DELIM)
    if len(self.examples) > 1:
      example_prefix = [f"The following are {len(self.examples)} demonstration examples."]
    elif len(self.examples) == 1:
      example_prefix = ["The following is a demonstration example."]
    else:
      example_prefix = []
    head = STEP_DELIM.join([self.instructions, *example_prefix, *self.examples, ""])
    if not head.strip():
      return suffix
    return STEP_DELIM.join([head, suffix])


def suffix_problem(suffix: str) -> str | None:
  """Why `suffix` cannot be filled as the official `rstar_prompt_wrap` fills it (`suffix.format(input=...)`), or
  None. The official code raises on these (KeyError, IndexError, ValueError) when it builds the first prompt."""
  try:
    fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(suffix) if name is not None]
  except ValueError as e:  # a lone "{" or "}"
    return f"{e} (a literal brace is written '{{{{' or '}}}}')"
  for name, spec in fields:
    if name != "input" or "{" in spec:
      return (f"field {{{name}{':' + spec if spec else ''}}}: the only field is '{{input}}' (a literal brace is "
              f"written '{{{{' or '}}}}')")
  if not fields:
    return "no '{input}' placeholder"
  return None


def _load_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return files.json_loads(f.read())
  except FileNotFoundError:
    raise PromptFileError(f"{path}: file not found") from None
  except json.JSONDecodeError as e:
    raise PromptFileError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
  except UnicodeDecodeError as e:  # its own message names no file
    raise PromptFileError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _load_template_file(path: str) -> tuple[str, str]:
  record = _load_json(path)
  if not isinstance(record, dict):
    raise PromptFileError(f"{path}: expected a JSON object")
  for field in ("pot_format_instructions", "pot_suffix"):
    if not isinstance(record.get(field), str):
      raise PromptFileError(f"{path}: field {field!r} must be a string")
    problem = files.lone_surrogate(record[field])  # a "\\ud83d" escape: the tokenizer then failed naming no file
    if problem:
      raise PromptFileError(f"{path}: field {field!r} {problem}: replace it (e.g. by U+FFFD)")
  problem = suffix_problem(record["pot_suffix"])
  if problem is not None:
    raise PromptFileError(f"{path}: field 'pot_suffix': {problem}")
  return record["pot_format_instructions"], record["pot_suffix"]


def load_few_shots(prompts_dir: str | os.PathLike[str]) -> tuple[str, ...]:
  """The few-shot solutions of `few_shots.json`, in file order."""
  path = os.path.join(os.fspath(prompts_dir), FEW_SHOTS_FILE)
  examples = _load_json(path)
  if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
    raise PromptFileError(f"{path}: expected a JSON list of strings")
  for i, example in enumerate(examples):
    problem = files.lone_surrogate(example)
    if problem:
      raise PromptFileError(f"{path}: example {i} {problem}: replace it (e.g. by U+FFFD)")
  return tuple(examples)


def load_bootstrap_template(prompts_dir: str | os.PathLike[str], num_few_shots: int | None = None
                            ) -> PromptTemplate:
  """The round-1 template: `mcts_prompt.json` + `num_few_shots` examples (all when None).

  As the official `PROMPT_RSTAR.random_examples`, one example means the file's *second* one (its only one if it has
  one); more are taken in file order (the official code samples them in random order: for the two published
  examples, one of two orders).
  """
  instructions, suffix = _load_template_file(os.path.join(os.fspath(prompts_dir), BOOTSTRAP_FILE))
  examples = load_few_shots(prompts_dir)
  if num_few_shots is not None:
    if isinstance(num_few_shots, bool) or not isinstance(num_few_shots, int):  # 1.5 failed as a slice, "1" in `<=`
      raise ValueError(f"num_few_shots must be an integer, got {num_few_shots!r}")
    if not 0 <= num_few_shots <= len(examples):
      raise ValueError(f"num_few_shots must be in [0, {len(examples)}], got {num_few_shots}")
    examples = examples[1:2] if num_few_shots == 1 and len(examples) > 1 else examples[:num_few_shots]
  return PromptTemplate(instructions, suffix, examples)


def load_sft_template(prompts_dir: str | os.PathLike[str]) -> PromptTemplate:
  """The template of rounds 2+: `sft_prompt.json` (no examples)."""
  instructions, suffix = _load_template_file(os.path.join(os.fspath(prompts_dir), SFT_FILE))
  return PromptTemplate(instructions, suffix, ())


def bootstrap_prompt(question: str, prompts_dir: str | os.PathLike[str]) -> str:
  """The bootstrap-round policy prompt for `question`."""
  return load_bootstrap_template(prompts_dir).format(question)


def sft_prompt(question: str, prompts_dir: str | os.PathLike[str]) -> str:
  """The SFT-format policy prompt for `question`."""
  return load_sft_template(prompts_dir).format(question)
