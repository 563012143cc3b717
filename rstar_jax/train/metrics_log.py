"""Scalar logs: one JSON object per line (always), TensorBoard event files when a writer is installed."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from typing import Any, Mapping

from rstar_jax import files


def _tensorboard_writer(logdir: str) -> Any | None:
  """A `SummaryWriter` from tensorboardX or torch (needs the tensorboard package), else None."""
  for module in ("tensorboardX", "torch.utils.tensorboard"):
    # torch's writer needs the tensorboard package: without it, importing torch (seconds, and its CUDA libraries
    # beside jax's) only to fail would break "rstar_jax never imports torch" for every trainer of a test install.
    if module.startswith("torch") and not _installed("tensorboard"):
      continue
    try:
      return __import__(module, fromlist=["SummaryWriter"]).SummaryWriter(logdir)
    except Exception:  # not installed, or torch without tensorboard: logging must not fail the run
      continue
  return None


def _installed(module: str) -> bool:
  """Whether `module` can be imported, found without importing it."""
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # a broken install, or a module in sys.modules without a spec
    return False


class MetricsLog:
  """Appends `{"step": k, name: value, ...}` lines to `<workdir>/metrics.jsonl` (only on process 0).

  A resumed run appends after the lines of the interrupted one, so a step may appear twice; readers
  take the last line of each step (see `read_metrics`). A run that died mid-line (a full disk, a crash) leaves a torn
  last line: it is cut off before the first new line is appended, so it never fuses with a new record.

  `fresh=True` (a run that starts at step 0, resuming nothing) first removes the records of an earlier run in
  `workdir` that left no checkpoint, metrics.jsonl and TensorBoard events alike: the new run replaces it (its
  settings may differ), and its steps that the new run does not reach or log would read as the new run's.
  """

  def __init__(self, workdir: str | os.PathLike[str], *, tensorboard: bool = True, enabled: bool = True,
               fresh: bool = False):
    self.enabled = enabled
    self.path = os.path.join(os.fspath(workdir), "metrics.jsonl")
    self._tb = None
    if enabled:
      os.makedirs(os.fspath(workdir), exist_ok=True)
      logdir = os.path.join(os.fspath(workdir), "tensorboard")
      if fresh:
        _remove_earlier_run(self.path, logdir)
      _drop_torn_tail(self.path)
      if tensorboard:
        self._tb = _tensorboard_writer(logdir)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in scalars.items()})
    try:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    except OSError as e:
      if e.filename is None:  # a failed write (a full disk) names no file, unlike a failed open: the trainer
        e.filename = self.path  # stopped with a bare "[Errno 28] No space left on device"
      raise
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _remove_earlier_run(path: str, logdir: str) -> None:
  """Deletes `path` and the TensorBoard event files in `logdir` (only those: the folder may hold other files)."""
  if os.path.exists(path):
    os.remove(path)
  if os.path.isdir(logdir):
    for name in os.listdir(logdir):
      if name.startswith("events.out.tfevents."):
        os.remove(os.path.join(logdir, name))


def _drop_torn_tail(path: str) -> None:
  """Truncates `path` after its last newline: a write cut short leaves an unterminated, partial last record."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)


def read_metrics(path: str | os.PathLike[str]) -> dict[int, dict[str, float]]:
  """`step -> scalars` from a metrics.jsonl (the last line of a step wins).

  A torn last line without its newline (a run that died mid-write) is skipped.

  Raises:
    ValueError: naming the file and line of a record that is not a JSON object with an integer `step`.
  """
  path = os.fspath(path)
  out: dict[int, dict[str, float]] = {}
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  for lineno, raw in enumerate(lines, start=1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # its message names neither the file nor the line
      if lineno == len(lines):  # no newline after it: a write cut short (inside a character)
        continue
      raise ValueError(f"{path}:{lineno}: not a metrics record (not valid UTF-8: {e.reason} at byte {e.start} of the "
                       "line)") from None
    if not line.strip():
      continue
    try:
      record = files.json_loads(line)  # also a line nested too deeply, an integer of over 4300 digits
      step = record.pop("step")
      if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"'step' must be an integer, got {step!r}")
    except json.JSONDecodeError as e:
      if lineno == len(lines):  # no newline after it: a write cut short
        continue
      raise ValueError(f"{path}:{lineno}: not a metrics record (invalid JSON: {e.msg} at column {e.colno})") from None
    except (AttributeError, KeyError, TypeError) as e:
      raise ValueError(f"{path}:{lineno}: not a metrics record (a JSON object with an integer 'step'): {e}") from None
    out[step] = record
  return out
