"""orbax checkpoints of the train state together with the data iterator position.

Each checkpoint step holds two items: `state` (the sharded `TrainState`, written asynchronously) and
`data` (the grain iterator state as JSON). The iterator state is captured as a plain dict at the moment
of the save rather than handing the live iterator to orbax: with asynchronous saving the iterator moves on
while the background write runs, and the saved position must be the one that matches the saved weights.
An interrupted save leaves only a temporary folder, which orbax ignores, so resuming always starts from the
last complete step; the resumed run's `Checkpointer` removes it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from rstar_jax.models.checkpoint import orbax_error_summary
from rstar_jax.train.state import TrainState


class Checkpointer:
  """`save` every `every` steps (async), keep the last `keep`; `restore(latest_step(), ...)` resumes exactly."""

  def __init__(self, directory: str | os.PathLike[str], *, every: int, keep: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(os.fspath(directory))
    # orbax's default policy less its `InitialSavePolicy`, which also saved step 1 of every fresh run: a whole extra
    # checkpoint (optimizer state included) that the trainer's non-finite loss check before each due save missed.
    policies = ocp.checkpoint_managers
    policy = policies.AnySavePolicy([policies.FixedIntervalPolicy(max(1, every)),
                                     policies.PreemptionCheckpointingPolicy()])
    # `cleanup_tmp_directories`: the temporary folder of a save cut short by a kill (a whole train state) went only
    # when a later run saved that very step again, which a preemption save's step or one of another
    # `checkpoint_every` never is.
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(save_decision_policy=policy, max_to_keep=keep,
                                             enable_async_checkpointing=async_save, create=True,
                                             cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def due(self, step: int) -> bool:
    """Whether the policy saves at `step`: every `every` steps, or at a preemption notice (at any step).

    Asked once per step before `save(..., force=True)`, so the caller can check the state it is about to save.
    """
    return self._manager.should_save(step)

  def save(self, step: int, state: TrainState, data_state: dict[str, Any], *, force: bool = False) -> bool:
    """Starts saving `state` and the iterator position at `step` when due (or `force`); True if started."""
    return self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            data=ocp.args.JsonSave(dict(data_state))),
                              force=force)

  def restore(self, step: int, abstract: TrainState, shardings: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """The train state (placed with `shardings`) and iterator state saved at `step`."""
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                     data=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (re-raised, with the folder named)
      # orbax's errors name no folder: a damaged step (a file cut short, an item gone) was a bare JSONDecodeError
      # ("Expecting value: line 1 column 1") or KeyError, and another model's state a shape error naming no array.
      before = [s for s in self._manager.all_steps() if s < step]
      earlier = f"the step before it ({max(before)}) is resumed" if before else "training starts over"
      raise ValueError(f"{os.path.join(self.directory, str(step))}: cannot restore checkpoint step {step} "
                       f"({orbax_error_summary(e)}); if it is damaged, delete that folder and {earlier}, or train in "
                       "a new workdir") from e
    return restored.state, restored.data

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def latest_step(directory: str | os.PathLike[str]) -> int | None:
  """The last complete checkpoint step in `directory`, or None (also when the folder does not exist)."""
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    return None
  # A read-only manager logs "Given directory is read only=..." and more at WARNING level: a resumed run printed them
  # as if something were wrong with its workdir. Only this look-up's records are dropped.
  absl_logger, quiet = logging.getLogger("absl"), _BelowErrors()
  absl_logger.addFilter(quiet)
  try:
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
      return manager.latest_step()
    finally:
      manager.close()
  finally:
    absl_logger.removeFilter(quiet)


class _BelowErrors(logging.Filter):
  """Drops records below ERROR."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR
