"""Scripted stand-ins for the policy, the scorer and the sandbox (tests, demos, benchmarks).

`ScriptedPolicy` wraps a function `(prompt, n, seed) -> n step strings`; a string ending with one of
the stop strings becomes `StepCandidate(text before it, that stop string)`, any other string a
candidate that ended with "eos". `FunctionScorer` wraps `text -> value`. `InProcessExecutor` runs
*trusted* test snippets with `exec` in this process (no isolation at all: never give it model output);
`ConstantExecutor` returns a fixed observation (benchmarks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
from typing import Callable, Sequence

import numpy as np

from rstar_jax.search.interfaces import STOP_EOS, StepCandidate
from rstar_jax.search.step import BOOTSTRAP_STOP_STRINGS


def to_candidate(step: str | StepCandidate, stop: Sequence[str] = BOOTSTRAP_STOP_STRINGS
                 ) -> StepCandidate:
  """`"x = 1\\n<end_of_step>"` -> `StepCandidate("x = 1\\n", "<end_of_step>")`."""
  if isinstance(step, StepCandidate):
    return step
  for s in stop:
    if step.endswith(s):
      return StepCandidate(step[:-len(s)], s)
  return StepCandidate(step, STOP_EOS)


class ScriptedPolicy:
  """A policy whose candidates come from a function of (prompt, n, seed)."""

  def __init__(self, script: Callable[[str, int, int], Sequence[str | StepCandidate]]):
    self.script = script
    self.calls: list[tuple[list[str], list[int]]] = []

  def generate(self, prompts: Sequence[str], *, n: int, seeds: Sequence[int],
               stop: Sequence[str]) -> list[list[StepCandidate]]:
    self.calls.append((list(prompts), list(seeds)))
    out = []
    for prompt, seed in zip(prompts, seeds):
      steps = list(self.script(prompt, n, seed))
      if len(steps) != n:
        raise ValueError(f"script returned {len(steps)} steps, expected {n}")
      out.append([to_candidate(s, stop) for s in steps])
    return out


class FunctionScorer:
  """A scorer computing each value with `fn(text)`."""

  def __init__(self, fn: Callable[[str], float]):
    self.fn = fn
    self.calls: list[list[str]] = []

  def score(self, texts: Sequence[str]) -> np.ndarray:
    self.calls.append(list(texts))
    return np.asarray([self.fn(t) for t in texts], np.float32)


@dataclasses.dataclass(frozen=True)
class FakeResult:
  """The part of `sandbox.SandboxResult` the search reads."""
  observation: str


# `sys.stdout` is one for the whole process: executors capturing prints in several threads at once took each other's
# output, and restored stdout out of order (one thread's exit put back the other thread's buffer), which swallowed
# every later print of the process. Snippets run one at a time.
_STDOUT_LOCK = threading.Lock()


class InProcessExecutor:
  """Runs trusted snippets with `exec`: observation = printed text, or "{Type}: {message}".

  Threads may share one (snippets of all executors run one at a time, as they capture the process's stdout).
  """

  def __init__(self):
    self.programs: list[str] = []

  def run(self, programs: Sequence[str]) -> list[FakeResult]:
    out = []
    for program in programs:
      self.programs.append(program)
      buf = io.StringIO()
      try:
        with _STDOUT_LOCK, contextlib.redirect_stdout(buf):
          exec(compile(program, "<snippet>", "exec"), {"__name__": "__snippet__"})  # pylint: disable=exec-used
        out.append(FakeResult(buf.getvalue()))
      except Exception as e:  # pylint: disable=broad-except
        out.append(FakeResult(f"{type(e).__name__}: {e}"))
    return out


class ConstantExecutor:
  """Returns the same observation for every program."""

  def __init__(self, observation: str = "1"):
    self.result = FakeResult(observation)
    self.num_programs = 0

  def run(self, programs: Sequence[str]) -> list[FakeResult]:
    self.num_programs += len(programs)
    return [self.result] * len(programs)
