"""The outcome of one program run in the sandbox."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  """What one program did.

  Attributes:
    observation: what the policy reads back (in "rstar" mode: rStar's rules, see `sandbox.observation`): the
      printed text or the echo of the last expression, or `"{ExceptionType}: {message}"`, post-processed (4-decimal
      float rounding of printed text, head + '...' + tail truncation).
    stdout: everything the program printed (truncated the same way); empty when the executor was killed.
    error: `"{ExceptionType}: {message}"` when the program failed, timed out, ran out of memory or died, else None
      (cut as `stdout` is; the observation holds the official whole text, see `sandbox.observation`, rule 6).
    timed_out: killed at the wall-clock deadline.
    memory_exceeded: hit the memory limit (`MemoryError` or `ENOMEM`).
    killed_by_signal: the signal that killed the executor (e.g. 11 for a segfault), else None.
    duration_s: wall time from dispatch to the executor until its reply (or kill).
  """
  observation: str
  stdout: str
  error: str | None
  timed_out: bool
  memory_exceeded: bool
  killed_by_signal: int | None
  duration_s: float

  @property
  def ok(self) -> bool:
    return self.error is None and not self.timed_out and not self.memory_exceeded and self.killed_by_signal is None
