"""The objects the search drives: a step `Policy`, a step `Scorer` and a `CodeExecutor` (the sandbox).

Any object with these methods works (structural typing, `typing.Protocol`): our generation engine
(`rstar_jax.generate.EnginePolicy`, `PPMScorer`), scripted test policies, or a bootstrap teacher.

Policy:
  `generate(prompts, *, n, seeds, stop)` returns, for every prompt, `n` candidate next steps
  (`[len(prompts)][n]` `StepCandidate`s). `seeds[i]` seeds prompt `i`'s samples; the same prompt, seed
  and `n` must give the same candidates whatever else is in the batch (that is what makes a tree
  replayable; an LLM policy keeps it up to floating-point rounding of the logits, see `EnginePolicy`).
  Sampling settings (temperature, top_p, top_k, max_new_tokens) are fixed when the policy object is
  built.

Scorer:
  `score(texts)` returns one float32 value per text (`[len(texts)]`). The search passes exactly the
  text the policy would be prompted with at the scored node: prompt + the path's step texts up to
  and including the scored step. Value transforms (e.g. the official `tanh(r / 5)`) belong to the
  scorer.

CodeExecutor:
  `run(programs)` returns one result per program, in input order, each with a str `observation`
  (`sandbox.SandboxPool` is one).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from rstar_jax import files

STOP_EOS = "eos"
STOP_LENGTH = "length"


@dataclasses.dataclass(frozen=True)
class StepCandidate:
  """One sampled step.

  Attributes:
    text: generated text up to, not including, the stop string.
    stop_reason: the matched stop string itself, or "eos", or "length" (vLLM style).
  """
  text: str
  stop_reason: str

  @property
  def stopped_at_string(self) -> bool:
    """True when generation ended on one of the stop strings (not eos / length)."""
    return self.stop_reason not in (STOP_EOS, STOP_LENGTH)

  @property
  def step_text(self) -> str:
    """The text appended to the path: `text + stop_reason` for a stop string, else `text`."""
    return self.text + self.stop_reason if self.stopped_at_string else self.text


@runtime_checkable
class Policy(Protocol):
  """Samples candidate next steps."""

  def generate(self, prompts: Sequence[str], *, n: int, seeds: Sequence[int],
               stop: Sequence[str]) -> list[list[StepCandidate]]:
    """Returns `[len(prompts)][n]` candidates; `seeds[i]` seeds prompt `i`."""
    ...


@runtime_checkable
class Scorer(Protocol):
  """Scores partial solutions (the PPM)."""

  def score(self, texts: Sequence[str]) -> np.ndarray:
    """Returns `[len(texts)]` float32 values, one per text (finite)."""
    ...


def _as_list(value, what: str, expected: str) -> list:
  """`list(value)`; a ValueError naming `what` when it is no sequence (e.g. None from a forgotten `return`, or a
  flat list of candidates where a list per prompt was due), not Python's bare "object is not iterable"."""
  try:
    items = iter(value) if not isinstance(value, (str, bytes)) else None
  except TypeError:
    items = None
  if items is None:
    raise ValueError(f"{what} is a {type(value).__name__}, not {expected}")
  return list(items)  # outside the `try`: a TypeError raised while a lazy output runs is the caller's own


def checked_scores(values, texts: Sequence[str]) -> np.ndarray:
  """A scorer's output for `texts` as `[len(texts)]` float32, checked as the search reads it.

  Raises:
    ValueError: no numbers (None reads as one NaN, strings fail the float conversion), a wrong number of values, or
      a NaN / infinite one (it would win or lose every comparison of the search's selection and ranking
      arbitrarily), naming the text.
  """
  raw = np.asarray(values)
  numbers = raw.dtype.kind not in "USO"  # bfloat16 (kind "V") converts
  if raw.dtype.kind == "O" and not any(v is None for v in raw.reshape(-1)):
    try:
      raw, numbers = raw.astype(np.float32), True
    except (TypeError, ValueError):
      pass
  if not numbers:
    raise ValueError(f"scorer returned a {type(values).__name__} for {len(texts)} texts, not numbers: {values!r:.80}")
  values = raw.astype(np.float32).reshape(-1)
  if values.shape != (len(texts),):
    raise ValueError(f"scorer returned {values.shape[0]} values for {len(texts)} texts")
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"scorer returned {values[i]} for text {i} (of {len(texts)}; ...{texts[i][-80:]!r}): values must "
                     "be finite")
  return values


def checked_candidates(candidates, num_prompts: int, n: int, stop: Sequence[str]) -> list[list[StepCandidate]]:
  """A policy's output for `num_prompts` prompts, checked as the search reads it.

  Raises:
    ValueError: naming the prompt (and candidate) when the output is not `[num_prompts][n]` `StepCandidate`s, a
      text is not a str (or holds a lone surrogate), or a `stop_reason` is none of `stop`, "eos" and "length" (any
      other value would be appended to the step's text as if it were the matched stop string).
  """
  candidates = _as_list(candidates, "policy output", f"a list of {num_prompts} candidate lists")
  if len(candidates) != num_prompts:
    raise ValueError(f"policy returned {len(candidates)} candidate lists for {num_prompts} prompts")
  allowed = (*stop, STOP_EOS, STOP_LENGTH)
  out = []
  for i, cands in enumerate(candidates):
    cands = _as_list(cands, f"policy output for prompt {i}", f"a list of {n} candidates")
    if len(cands) != n:
      raise ValueError(f"policy returned {len(cands)} candidates for prompt {i}, expected n={n}")
    for j, c in enumerate(cands):
      where = f"policy candidate {j} of prompt {i}"
      if not isinstance(c, StepCandidate):
        raise ValueError(f"{where} is a {type(c).__name__}, not a StepCandidate")
      if not isinstance(c.text, str):
        raise ValueError(f"{where}: text is a {type(c.text).__name__}, not a str")
      problem = files.lone_surrogate(c.text)  # the tree record (or the program sent to the sandbox) failed unnamed
      if problem:
        raise ValueError(f"{where}: text {problem} (a policy that decodes through a tokenizer never makes one)")
      if c.stop_reason not in allowed:
        raise ValueError(f"{where}: stop_reason {c.stop_reason!r} is none of the stop strings {list(stop)}, "
                         f"{STOP_EOS!r} or {STOP_LENGTH!r}")
    out.append(cands)
  return out


def checked_results(results, num_programs: int) -> list:
  """An executor's output for `num_programs` programs, checked as the search reads it.

  Raises:
    ValueError: no sequence of results at all, a wrong number of them, or one without a str `observation` (or with
      a lone surrogate in it), naming the program.
  """
  results = _as_list(results, "executor output", f"a list of {num_programs} results")
  if len(results) != num_programs:
    raise ValueError(f"executor returned {len(results)} results for {num_programs} programs")
  for i, r in enumerate(results):
    observation = getattr(r, "observation", None)
    if not isinstance(observation, str):
      raise ValueError(f"executor result {i} (of {num_programs}) has no str observation: got {type(r).__name__} "
                       f"with observation {observation!r}")
    problem = files.lone_surrogate(observation)  # the tree record failed only when its shard was written
    if problem:
      raise ValueError(f"executor result {i} (of {num_programs}): observation {problem} (sandbox.SandboxPool "
                       "replaces them by U+FFFD)")
  return results


class ExecutionResult(Protocol):
  """What the search reads from one program run (`sandbox.SandboxResult` has it)."""
  observation: str


@runtime_checkable
class CodeExecutor(Protocol):
  """Runs programs; `sandbox.SandboxPool` implements it (so do in-process fakes in tests)."""

  def run(self, programs: Sequence[str]) -> Sequence[ExecutionResult]:
    """Returns one result per program, in input order."""
    ...
