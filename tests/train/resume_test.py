"""Kill-and-resume: a run SIGKILLed mid-way and restarted reproduces the uninterrupted loss curve."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rstar_train_testlib as testlib
from rstar_jax.data import formats, pipeline
from rstar_jax.models import convert
from rstar_jax.train import config as config_lib
from rstar_jax.train import metrics_log, trainer

# Runs train_policy; with a kill step, the process SIGKILLs itself right after that step's update (a checkpoint
# every 3 steps is saved asynchronously, so the kill can also land while a save is in flight).
DRIVER = textwrap.dedent("""
    import os, signal, sys
    from rstar_jax.data import pipeline
    from rstar_jax.train import config as config_lib, trainer

    base, sft_file, workdir, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    def callback(step, scalars):
      if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

    config = config_lib.sft_config(
        data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=2, seed=3),
        optimizer=config_lib.OptimizerConfig(learning_rate=2e-3, warmup_steps=2, schedule="cosine"),
        mesh=(1, 2, 2), accum_steps=2, checkpoint_every=3, keep_checkpoints=2, progress=False)
    trainer.train_policy(base, sft_file, workdir, config=config, step_callback=callback)
""")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  path = tmp_path_factory.mktemp("resume")
  records = testlib.arithmetic_sft_records(20, seed=5)
  testlib.tiny_hf_model(path / "base", seed=1)
  testlib.tiny_tokenizer(path / "base", [formats.sft_prompt(r["query"]) + r["response"] for r in records])
  sft_file = testlib.write_json(path / "sft.json", records)
  (path / "driver.py").write_text(DRIVER)
  return path, sft_file


def _train(path, sft_file, workdir, kill_at=-1):
  return subprocess.run([sys.executable, str(path / "driver.py"), str(path / "base"), str(sft_file), str(workdir),
                         str(kill_at)], capture_output=True, text=True, timeout=600, env=dict(os.environ))


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_loss_curve(inputs):
  path, sft_file = inputs
  reference = _train(path, sft_file, path / "reference")
  assert reference.returncode == 0, reference.stderr[-3000:]
  killed = _train(path, sft_file, path / "killed", kill_at=8)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert not os.path.exists(path / "killed" / "export")
  resumed = _train(path, sft_file, path / "killed")
  assert resumed.returncode == 0, resumed.stderr[-3000:]

  want = metrics_log.read_metrics(path / "reference" / "metrics.jsonl")
  got = metrics_log.read_metrics(path / "killed" / "metrics.jsonl")
  assert sorted(got) == sorted(want) == list(range(1, 11))  # 20 rows x 2 epochs / 4
  lines = (path / "killed" / "metrics.jsonl").read_text().splitlines()
  # The killed run logged steps 1..8; the resumed one restarted after checkpoint 6 (or 3, had the async save of
  # step 6 not finished when the kill landed) and logged the rest again.
  assert len(lines) in (8 + 4, 8 + 7), len(lines)
  for step in want:
    for key in ("loss", "accuracy", "grad_norm", "learning_rate", "num_tokens"):
      np.testing.assert_allclose(got[step][key], want[step][key], rtol=1e-6, err_msg=f"step {step} {key}")
  assert os.path.exists(path / "killed" / "export" / "model.safetensors")


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_error(inputs, tmp_path):
  path, sft_file = inputs
  config = config_lib.sft_config(
      data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1),
      optimizer=config_lib.OptimizerConfig(learning_rate=1e30, max_grad_norm=None),
      mesh=(1, 1, 1), checkpoint_every=1, progress=False)
  with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite training loss .* at step \d+ \(workdir"):
    trainer.train_policy(path / "base", sft_file, tmp_path / "work", config=config)


class _Stop(Exception):
  pass


def _stop_at(stop_step):
  def callback(step, _):
    if step == stop_step:
      raise _Stop()
  return callback


def test_resume_with_other_settings_or_data_is_refused(inputs, tmp_path):
  path, sft_file = inputs
  config = config_lib.sft_config(
      data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1, seed=3), mesh=(1, 1, 1),
      checkpoint_every=1, progress=False, tensorboard=False)
  with pytest.raises(_Stop):  # stopped in step 3, before its checkpoint: steps 1 and 2 are saved
    trainer.train_policy(path / "base", sft_file, tmp_path / "work", config=config, step_callback=_stop_at(3))
  other_data = testlib.write_json(tmp_path / "other.json", testlib.arithmetic_sft_records(20, seed=6))
  # Another base model of the same shape, at another path (its own random weights, the same tokenizer files).
  testlib.tiny_hf_model(tmp_path / "other_base", seed=2)
  testlib.tiny_tokenizer(tmp_path / "other_base", [formats.sft_prompt(r["query"]) + r["response"]
                                                   for r in testlib.arithmetic_sft_records(20, seed=5)])
  base = path / "base"
  refused = [
      (config.replace(optimizer=config_lib.OptimizerConfig(learning_rate=1e-3)), base, sft_file,
       r"optimizer.learning_rate: 7e-06 in the checkpointed run, 0.001 now"),
      (config.replace(data=pipeline.PipelineConfig(max_len=96, batch_size=2, num_epochs=1, seed=3)), base, sft_file,
       r"data.batch_size: 4 in the checkpointed run, 2 now"),
      (config.replace(max_steps=3), base, sft_file, r"max_steps: None in the checkpointed run, 3 now"),
      (config, base, other_data, r"data.fingerprint covers the data files"),
      # It used to resume silently and export a model trained from the first base.
      (config, tmp_path / "other_base", sft_file,
       r"model.weights_sha256 covers the weight files(.|\n)*model.weights_sha256: '[0-9a-f]{64}' in the checkpointed "
       r"run, '[0-9a-f]{64}' now"),
  ]
  for changed, base_dir, data_file, message in refused:
    with pytest.raises(ValueError, match=r"cannot resume the checkpoint at step 2 with other settings(.|\n)*" +
                       message):
      trainer.train_policy(base_dir, data_file, tmp_path / "work", config=changed)
  # The same weights at another path are the same run (a base copied to local disk, say).
  shutil.copytree(base, tmp_path / "base_copy")
  run_file = tmp_path / "work" / trainer.RUN_FILE
  started = json.loads(run_file.read_text())
  assert started["model.weights_sha256"] == convert.weights_fingerprint(tmp_path / "base_copy")
  # A run.json written before the weights were fingerprinted resumes as before.
  del started["model.weights_sha256"]
  run_file.write_text(json.dumps(started))
  # Settings that leave the updates and the batches as they were may change: here the micro-batch split and logging.
  result = trainer.train_policy(tmp_path / "base_copy", sft_file, tmp_path / "work",
                                config=config.replace(accum_steps=2, log_every=5))
  assert result.steps == 5


def test_checkpoints_are_saved_every_n_steps_and_at_the_last_only(tmp_path):
  # TrainConfig.checkpoint_every: "save every this many steps (the last step is always saved)". orbax's default
  # policy also saved step 1 of a fresh run: a whole extra checkpoint (optimizer state included) that the trainer's
  # non-finite loss check, made before each due save, did not cover.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rstar_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  checkpointer = Checkpointer(tmp_path / "checkpoints", every=3, keep=10, async_save=False)
  saved = [step for step in range(1, 8)
           if checkpointer.save(step, {"w": jnp.full(2, float(step))}, {"next_index": step}, force=step == 7)]
  checkpointer.close()
  assert saved == [3, 6, 7]
  assert sorted(int(name) for name in os.listdir(tmp_path / "checkpoints") if name.isdigit()) == [3, 6, 7]


def test_looking_up_the_latest_checkpoint_logs_no_warnings(tmp_path, caplog):
  # A resumed run printed orbax's "Given directory is read only=..." (and more) at WARNING level, from the read-only
  # look-up of the step to resume, as if something were wrong with its workdir.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rstar_jax.train.checkpoint import Checkpointer, latest_step  # pylint: disable=g-import-not-at-top
  checkpointer = Checkpointer(tmp_path / "checkpoints", every=2, keep=10, async_save=False)
  for step in (2, 4):
    checkpointer.save(step, {"w": jnp.full(2, float(step))}, {"next_index": step})
  checkpointer.close()
  caplog.clear()
  with caplog.at_level("INFO"):
    assert latest_step(tmp_path / "checkpoints") == 4
  assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == []


def test_a_fresh_run_does_not_inherit_the_metrics_of_a_run_that_left_no_checkpoint(inputs, tmp_path):
  # A run that stopped before its first checkpoint (here: stopped at step 4, saving every 100) is not resumed: the
  # re-run starts at step 1, here with other settings (a lower rate, as the non-finite loss error advises, and 2
  # steps). Its metrics.jsonl kept the first run's records, so steps 3 and 4 (and the demo's "last" metrics, read at
  # the highest step) came from a run whose weights were thrown away.
  path, sft_file = inputs
  config = config_lib.sft_config(
      data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1, seed=3), mesh=(1, 1, 1),
      checkpoint_every=100, progress=False, tensorboard=False)
  with pytest.raises(_Stop):
    trainer.train_policy(path / "base", sft_file, tmp_path / "work", config=config, step_callback=_stop_at(4))
  assert sorted(metrics_log.read_metrics(tmp_path / "work" / "metrics.jsonl")) == [1, 2, 3, 4]
  rerun = config.replace(optimizer=config_lib.OptimizerConfig(learning_rate=1e-6), max_steps=2)
  result = trainer.train_policy(path / "base", sft_file, tmp_path / "work", config=rerun)
  reference = trainer.train_policy(path / "base", sft_file, tmp_path / "clean", config=rerun)
  got = metrics_log.read_metrics(tmp_path / "work" / "metrics.jsonl")
  want = metrics_log.read_metrics(tmp_path / "clean" / "metrics.jsonl")
  assert sorted(got) == sorted(want) == [1, 2]
  for step in want:
    for key in ("loss", "learning_rate", "num_tokens"):
      np.testing.assert_allclose(got[step][key], want[step][key], rtol=1e-6, err_msg=f"step {step} {key}")
  assert result.metrics["loss"] == reference.metrics["loss"]


def test_a_preemption_save_is_checked_for_a_non_finite_loss_first(inputs, tmp_path, monkeypatch):
  # orbax also saves at a preemption notice, at any step; with log_every > 1 the loss of such a step was not checked,
  # so a non-finite state became the checkpoint to resume (here step 2: rate 1e30 blows the weights up at step 1),
  # and `keep_checkpoints` could then delete the last good one.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path, sft_file = inputs
  monkeypatch.setattr(ocp.CheckpointManager, "reached_preemption", lambda self, step: step == 2)
  config = config_lib.sft_config(
      data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1),
      optimizer=config_lib.OptimizerConfig(learning_rate=1e30, max_grad_norm=None),
      mesh=(1, 1, 1), checkpoint_every=100, log_every=100, progress=False, tensorboard=False)
  with pytest.raises(trainer.NonFiniteLossError, match=r"at step 2 \(workdir .*\); the last checkpoint is step None"):
    trainer.train_policy(path / "base", sft_file, tmp_path / "work", config=config)
  assert not [name for name in os.listdir(tmp_path / "work" / "checkpoints") if name.isdigit()]


@pytest.mark.parametrize("content, message", [("{\"data.batch_size\": 4", "not valid JSON"), ("[1, 2]", "a JSON list"),
                                              (b'{"seed": "caf\xe9"}', "not valid UTF-8")])
def test_a_damaged_run_json_is_named_when_resuming(tmp_path, content, message):
  # A bare JSONDecodeError, AttributeError ('list' object has no attribute 'get') or UnicodeDecodeError named
  # neither run.json nor what to do.
  run_file = tmp_path / trainer.RUN_FILE
  run_file.write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(ValueError, match=re.escape(str(run_file)) + f": .*{message}.*delete it"):
    trainer._check_resume(str(tmp_path), 2, {"data.batch_size": 4})  # pylint: disable=protected-access


# Saves step 3, then step 5 (as a preemption notice saves, off the interval) and SIGKILLs itself in that save, after
# its data is written, just before orbax renames its temporary folder into place.
KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from rstar_jax.train.checkpoint import Checkpointer

    async def finalize(self):
      os.kill(os.getpid(), signal.SIGKILL)

    checkpointer = Checkpointer(sys.argv[1], every=3, keep=10, async_save=False)
    checkpointer.save(3, {"w": jnp.full(2, 3.0)}, {"next_index": 3})
    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    checkpointer.save(5, {"w": jnp.full(2, 5.0)}, {"next_index": 5}, force=True)
""")


def test_a_save_killed_half_way_leaves_no_temporary_folder_behind(tmp_path):
  # A kill while a checkpoint was being written (a preemption lands there most often: saves are the long part) left
  # its temporary folder, a whole train state, for good unless a later run saved that very step again; a preemption
  # save's step (any step) or one of another `checkpoint_every` (a resume may change it) never is.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rstar_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  (tmp_path / "killed_save.py").write_text(KILLED_SAVE)
  directory = tmp_path / "checkpoints"
  killed = subprocess.run([sys.executable, str(tmp_path / "killed_save.py"), str(directory)], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert sorted(os.listdir(directory)) == ["3", "5.orbax-checkpoint-tmp"]
  checkpointer = Checkpointer(directory, every=4, keep=10, async_save=False)  # the resumed run
  assert checkpointer.latest_step() == 3
  checkpointer.save(4, {"w": jnp.full(2, 4.0)}, {"next_index": 4})
  checkpointer.close()
  assert sorted(os.listdir(directory)) == ["3", "4"]


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [5, 7])
def test_a_stopped_ppm_run_resumes_to_the_uninterrupted_export_bit_for_bit(inputs, tmp_path, stop_at):
  # Value-head dropout, gradient accumulation and a cosine schedule: the resumed run must restore the optimizer
  # moments, the schedule position, the dropout keys (a function of the step) and the data position. Stopped in step
  # 5 it resumes from step 4 (the checkpoint just before); in step 7, from step 6, `keep_checkpoints=1` having removed
  # step 4 and 2. The reference is the same run uninterrupted: its export's files must be equal byte for byte.
  path, _ = inputs
  pairs_file = tmp_path / "pairs.jsonl"
  formats.write_ppm_pairs(pairs_file, testlib.ppm_pairs(16, 1))
  config = config_lib.ppm_config(
      data=pipeline.PipelineConfig(max_len=64, batch_size=4, num_epochs=2, seed=3),
      optimizer=config_lib.OptimizerConfig(learning_rate=3e-3, warmup_steps=2, schedule="cosine"),
      mesh=(1, 1, 1), accum_steps=2, value_head_dropout=0.1, checkpoint_every=2, keep_checkpoints=1,
      progress=False, tensorboard=False)
  reference = trainer.train_ppm(path / "base", pairs_file, tmp_path / "reference", config=config)
  with pytest.raises(_Stop):
    trainer.train_ppm(path / "base", pairs_file, tmp_path / "work", config=config, step_callback=_stop_at(stop_at))
  saved = sorted(int(name) for name in os.listdir(tmp_path / "work" / "checkpoints") if name.isdigit())
  assert saved == [stop_at - 1]
  resumed = trainer.train_ppm(path / "base", pairs_file, tmp_path / "work", config=config)
  assert resumed.steps == reference.steps == 8
  assert resumed.metrics == {**reference.metrics, "step_time_s": resumed.metrics["step_time_s"]}
  for name in ("model.safetensors", "value_head.bin"):
    assert (tmp_path / "work" / "export" / name).read_bytes() == (tmp_path / "reference" / "export" / name).read_bytes()
  got = metrics_log.read_metrics(tmp_path / "work" / "metrics.jsonl")
  want = metrics_log.read_metrics(tmp_path / "reference" / "metrics.jsonl")
  assert sorted(got) == sorted(want) == list(range(1, 9))
  for step in want:
    for key in ("loss", "accuracy", "grad_norm", "learning_rate", "num_pairs"):
      assert got[step][key] == want[step][key], (step, key)


@pytest.mark.parametrize("damage", ["data item removed", "state metadata emptied", "state item removed",
                                    "state array data cut"])
def test_a_damaged_checkpoint_step_is_named_and_nothing_is_removed(tmp_path, damage):
  # orbax's errors named no folder: a step missing its `data` item was a KeyError, a state file cut short a bare
  # JSONDecodeError ("Expecting value: line 1 column 1 (char 0)"), and the trainer resuming it printed only that.
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rstar_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  directory = tmp_path / "checkpoints"
  checkpointer = Checkpointer(directory, every=1, keep=10, async_save=False)
  # Random values: an array that compresses to a few bytes is stored inside the index, with no data file to cut.
  saved = {step: np.random.default_rng(step).random(1024, np.float32) for step in (1, 2)}
  for step in (1, 2):
    checkpointer.save(step, {"w": jnp.asarray(saved[step])}, {"next_index": 4 * step})
  checkpointer.close()
  step_dir = directory / "2"
  if damage == "data item removed":
    shutil.rmtree(step_dir / "data")
  elif damage == "state item removed":
    shutil.rmtree(step_dir / "state")
  elif damage == "state array data cut":
    for blob in (step_dir / "state").glob("ocdbt.process_*/d/*"):  # the array's bytes (its spec reads fine)
      if blob.stat().st_size > 1024:
        blob.write_bytes(blob.read_bytes()[:4])
  else:
    (step_dir / "state" / "_METADATA").write_bytes(b"")
  before = sorted(p.relative_to(directory) for p in directory.rglob("*"))
  abstract = {"w": jax.ShapeDtypeStruct((1024,), jnp.float32)}
  shardings = {"w": jax.sharding.SingleDeviceSharding(jax.devices()[0])}
  checkpointer = Checkpointer(directory, every=1, keep=10, async_save=False)
  assert checkpointer.latest_step() == 2
  with pytest.raises(ValueError, match=re.escape(f"{step_dir}: cannot restore checkpoint step 2 (") +
                     r".*delete that folder and the step before it \(1\) is resumed"):
    checkpointer.restore(2, abstract, shardings)
  if damage == "state array data cut":
    # The cause in one line, naming the array, not orbax's wrapper that prints the array's whole TensorStore spec.
    with pytest.raises(ValueError, match=r"\(ValueError: [A-Z_]+: .*Error reading \"w/") as error:
      checkpointer.restore(2, abstract, shardings)
    assert "\n" not in str(error.value) and "TensorStore" not in str(error.value)
  # Nothing was removed or rewritten in the step folders, and the step before restores as saved.
  assert sorted(p.relative_to(directory) for p in directory.rglob("*")) == before
  state, data = checkpointer.restore(1, abstract, shardings)
  checkpointer.close()
  np.testing.assert_array_equal(state["w"], saved[1])
  assert data == {"next_index": 4}


@pytest.mark.slow
def test_a_run_killed_in_its_export_re_exports_the_same_model_and_metrics(inputs, tmp_path):
  # Every step done and the last one checkpointed, but the export gone (a kill while it was written): the re-run
  # trains nothing, restores the last step and must write the export and report the metrics the finished run did.
  path, sft_file = inputs
  config = config_lib.sft_config(
      data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1, seed=3), mesh=(1, 1, 1), max_steps=2,
      checkpoint_every=100, progress=False, tensorboard=False)
  first = trainer.train_policy(path / "base", sft_file, tmp_path / "work", config=config)
  weights = (tmp_path / "work" / "export" / "model.safetensors").read_bytes()
  shutil.rmtree(tmp_path / "work" / "export")
  calls = []
  again = trainer.train_policy(path / "base", sft_file, tmp_path / "work", config=config,
                               step_callback=lambda step, scalars: calls.append(step))
  assert calls == [] and again.steps == first.steps == 2
  assert again.metrics == first.metrics
  assert (tmp_path / "work" / "export" / "model.safetensors").read_bytes() == weights
