"""rStar training-data formats: SFT records (`query`, `response`) and PPM pairs.

The published rStar-Math files are JSON lists of objects (see `shared/data/formats/`); we read those and
JSONL (one object per line) and write either, chosen by the file suffix (`.jsonl` -> JSONL, else a JSON list).
Extra keys in a record are ignored on read, so richer files (e.g. with `problem_id`) still load.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from typing import Any, Iterable, Sequence

from rstar_jax import files, prompts

# The `pot_suffix` of rStar's `sft_prompt.json`: the policy prompt after the bootstrap round.
SFT_PROMPT_TEMPLATE = (
    "<|user|>:\n{input}\n<|assistant|>: Let's think step by step and solve the problem with code.")


class DataFormatError(ValueError):
  """A data file does not follow the rStar format; the message names file, record and field."""


@dataclasses.dataclass(frozen=True)
class SftRecord:
  """One policy SFT example: the question and the solution text that follows the prompt."""
  query: str
  response: str


@dataclasses.dataclass(frozen=True)
class PpmPair:
  """One PPM preference pair: `prompt + pos` is preferred over `prompt + neg`.

  `pos_count`/`neg_count` are the numbers of positive/negative steps chosen at the node the pair comes
  from; the pair's loss weight is `1 / (pos_count * neg_count)`.
  """
  prompt: str
  pos: str
  neg: str
  pos_count: int
  neg_count: int

  def __post_init__(self):
    # The weight divides by both counts: a pair built in code (extraction, evaluate_ppm's caller) with a count of 0
    # failed inside the pipeline as a bare ZeroDivisionError, and 1.5 or True weighted it as no pair file can.
    for name in ("pos_count", "neg_count"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"PpmPair.{name} must be a positive integer, got {value!r}")

  @property
  def weight(self) -> float:
    # int / int: Python divides exactly and rounds once, where `1.0 / product` first converted the product to a float
    # and overflowed for counts that are each finite floats (what read_ppm_pairs checks); int() also keeps numpy
    # counts from wrapping around in the product.
    return 1 / (int(self.pos_count) * int(self.neg_count))


def sft_prompt(query: str, template: str | None = None) -> str:
  """The policy prompt an SFT example is trained behind.

  Args:
    query: the question.
    template: None (default) -> exactly the prompt the search gives the policy from round 2 on
      (`rstar_jax.prompts`: the `sft_prompt.json` suffix with `{input}` = question + step delimiter), so
      training and search see the same text; a string -> that template with `{input}` replaced by the query.

  Raises:
    ValueError: `template` has no `{input}` (e.g. the official trainer's `{instruction}`): every example would be
      trained behind the same prompt, without its question.
  """
  if template is None:
    return prompts.PromptTemplate(instructions="", suffix=SFT_PROMPT_TEMPLATE).format(query)
  if "{input}" not in template:
    raise ValueError(f"the SFT prompt template has no '{{input}}' for the question: {template!r}")
  # str.replace, not str.format: questions contain braces (LaTeX) and so may templates.
  return template.replace("{input}", query)


def _load_objects(path: str | os.PathLike[str]) -> list[tuple[str, Any]]:
  """Returns (location, decoded object) for each record of a JSON-list or JSONL file."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    data = f.read()
  try:
    content = data.decode("utf-8")
  except UnicodeDecodeError as e:  # its message names neither the file nor the line
    line = data.count(b"\n", 0, e.start) + 1
    raise DataFormatError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
  stripped = content.lstrip()
  if stripped.startswith("["):
    try:
      items = files.json_loads(content)
    except json.JSONDecodeError as e:
      raise DataFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    return [(f"{path}: record {i}", item) for i, item in enumerate(items)]
  out = []
  # Split at "\n" only: `str.splitlines` also breaks at U+2028/U+2029/U+0085, which JSON (and our writer, with
  # ensure_ascii=False) leaves raw inside strings.
  for lineno, line in enumerate(content.split("\n"), start=1):
    if not line.strip():
      continue
    try:
      out.append((f"{path}:{lineno}", files.json_loads(line)))
    except json.JSONDecodeError as e:
      raise DataFormatError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
  return out


def _field(obj: Any, name: str, types: tuple[type, ...], where: str) -> Any:
  if not isinstance(obj, dict):
    raise DataFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  if name not in obj:
    raise DataFormatError(f"{where}: missing field {name!r}")
  value = obj[name]
  if isinstance(value, bool) or not isinstance(value, types):
    raise DataFormatError(
        f"{where}: field {name!r} must be {'/'.join(t.__name__ for t in types)}, "
        f"got {type(value).__name__}")
  problem = files.lone_surrogate(value) if isinstance(value, str) else None  # no tokenizer can take it
  if problem:
    raise DataFormatError(f"{where}: field {name!r} {problem}: replace it (e.g. by U+FFFD)")
  return value


def read_sft_records(path: str | os.PathLike[str]) -> list[SftRecord]:
  """Reads an rStar SFT file (JSON list or JSONL of `{"query", "response"}`)."""
  return [SftRecord(query=_field(o, "query", (str,), w), response=_field(o, "response", (str,), w))
          for w, o in _load_objects(path)]


def read_ppm_pairs(path: str | os.PathLike[str]) -> list[PpmPair]:
  """Reads an rStar PPM file (JSON list or JSONL of `{"prompt","pos","neg","pos_count","neg_count"}`)."""
  pairs = []
  for w, o in _load_objects(path):
    counts = []
    for name in ("pos_count", "neg_count"):
      value = _field(o, name, (int, float), w)
      # json reads NaN and Infinity, which int() cannot convert: check finiteness before comparing. An integer beyond
      # the float range is no finite float either (math.isfinite raised OverflowError, and so would the pair weight).
      if not files.is_finite_number(value) or value != int(value) or value < 1:
        raise DataFormatError(f"{w}: field {name!r} must be a positive integer, got {value!r}")
      counts.append(int(value))
    pairs.append(PpmPair(prompt=_field(o, "prompt", (str,), w), pos=_field(o, "pos", (str,), w),
                         neg=_field(o, "neg", (str,), w), pos_count=counts[0], neg_count=counts[1]))
  return pairs


def _write_objects(path: str | os.PathLike[str], objects: Iterable[dict[str, Any]]) -> None:
  if os.fspath(path).endswith(".jsonl"):
    text = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects)
  else:
    text = json.dumps(list(objects), ensure_ascii=False, indent=1) + "\n"
  files.atomic_write(path, text)


def write_sft_records(path: str | os.PathLike[str], records: Sequence[SftRecord]) -> None:
  """Writes SFT records atomically (`.jsonl` -> one object per line, else one JSON list)."""
  _write_objects(path, (dataclasses.asdict(r) for r in records))


def write_ppm_pairs(path: str | os.PathLike[str], pairs: Sequence[PpmPair]) -> None:
  """Writes PPM pairs atomically, with rStar's keys (`.jsonl` -> JSONL, else a JSON list)."""
  _write_objects(path, (dataclasses.asdict(p) for p in pairs))
