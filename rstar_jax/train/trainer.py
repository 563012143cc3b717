"""The two training entry points of a round: policy SFT and PPM, one flat loop (big_vision style).

    train_policy(base_checkpoint, sft_file, workdir)   -> TrainResult; .export_dir: the policy HF dir  (DESIGN §1.4)
    train_ppm(init_checkpoint, pairs_file, workdir)    -> TrainResult; .export_dir: PPM HF dir + value_head.bin

The loop reads: data -> shapes -> shardings -> state (fresh or restored) -> jit -> for each step: batch,
update, log, checkpoint -> export. Re-running the same call on the same `workdir` resumes from its last
checkpoint (weights, optimizer and data position), so a killed run continues with the same loss curve. A re-run
with other training settings, data or initial weights than the run started with (`<workdir>/run.json`) is refused
instead, and so is a second trainer on a workdir one is running in (`<workdir>/train.lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
import tqdm
from flax import nnx
from jax.experimental import multihost_utils

from rstar_jax import files
from rstar_jax import sharding as sharding_lib
from rstar_jax import tokenizer as tokenizer_lib
from rstar_jax.data import formats, pipeline as pipeline_lib
from rstar_jax.models import PPM, ModelConfig, Qwen2, ValueHead
from rstar_jax.models import convert
from rstar_jax.models.ppm import OFFICIAL_VALUE_HEAD_INIT
from rstar_jax.train import optimizer as optimizer_lib
from rstar_jax.train import state as state_lib
from rstar_jax.train import steps as steps_lib
from rstar_jax.train.checkpoint import Checkpointer, latest_step
from rstar_jax.train.config import TrainConfig, ppm_config, sft_config
from rstar_jax.train.losses import PPM_HEADS
from rstar_jax.train import metrics_log
from rstar_jax.train.metrics_log import MetricsLog

StepCallback = Callable[[int, dict[str, float]], None]
PathLike = str | os.PathLike[str]
# The side files that belong to the tokenizer (`generation_config.json` belongs to the model): all are copied from
# the tokenizer's folder for a tokenizer object that cannot save itself; one that saves itself (rStar tags included)
# writes all but the chat templates.
_GENERATION_CONFIG = "generation_config.json"
_TOKENIZER_SIDE_FILES = tuple(name for name in convert.SIDE_FILES if name != _GENERATION_CONFIG)
# `<workdir>/run.json`: the settings and data a run started with; a resumed run must match them (`_check_resume`).
RUN_FILE = "run.json"
# run.json's key for the sha256 of the initial weights: a re-run from another base model must not resume this run.
_WEIGHTS_KEY = "model.weights_sha256"
# Settings a resumed run may change: they alter neither the updates nor the batches (a mesh or micro-batch split
# only reorders the same sums), so e.g. a run can continue on another slice or with less memory per step.
_RESUMABLE_CHANGES = ("mesh", "accum_steps", "remat", "checkpoint_every", "keep_checkpoints", "async_checkpoint",
                      "log_every", "export_dtype", "progress", "tensorboard")


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the run stops (checkpoints before it stay usable)."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What a finished run produced."""
  export_dir: str           # HF dir of the trained model (PPM: + value_head.bin)
  workdir: str              # checkpoints/ and metrics.jsonl
  steps: int                # optimizer updates in total (resumed runs included)
  metrics: dict[str, float]  # the last logged scalars
  num_examples: int         # training examples (SFT rows / PPM pairs) after tokenization
  num_dropped: int          # examples dropped by the length policy


def _as_paths(files: PathLike | Sequence[PathLike]) -> list[PathLike]:
  return [files] if isinstance(files, (str, os.PathLike)) else list(files)


def _training_pipeline(files: PathLike | Sequence[PathLike], read, build, tokenizer: Any,
                       data: pipeline_lib.PipelineConfig) -> pipeline_lib.Pipeline:
  """Reads every file's examples and builds the pipeline; a set with nothing to train on names the files."""
  paths = _as_paths(files)
  examples = [e for path in paths for e in read(path)]
  if not examples:
    names = ", ".join(map(os.fspath, paths)) or "no files given"
    raise pipeline_lib.NoExamplesError(f"{names}: no training examples")
  try:
    return build(examples, tokenizer, data)
  except pipeline_lib.NoExamplesError as e:
    raise pipeline_lib.NoExamplesError(f"{', '.join(map(os.fspath, paths))}: {e}") from None


def _train_config(config: Any, default: Callable[[], TrainConfig]) -> TrainConfig:
  """`config`, or `default()` for None; a mapping (a config file's dict) is refused by name: it failed as an
  AttributeError on its first field once the tokenizer had loaded."""
  if config is None:
    return default()
  if not isinstance(config, TrainConfig):
    raise TypeError(f"config must be a TrainConfig (TrainConfig.from_dict builds one from a mapping), got "
                    f"{type(config).__name__}")
  return config


def _checked_checkpoint(checkpoint: Any, name: str) -> None:
  """Refuses a checkpoint that is no path, naming the argument: another trainer's `TrainResult` (whose `export_dir`
  is the HF dir to chain) failed as "expected str, bytes or os.PathLike object, not TrainResult"."""
  if not isinstance(checkpoint, (str, os.PathLike)):
    hint = ": pass its .export_dir" if isinstance(checkpoint, TrainResult) else ""
    raise TypeError(f"{name} must be a path (an HF dir), got {type(checkpoint).__name__}{hint}")


def _export_dir(export_dir: PathLike | None, workdir: str, initial_checkpoint: PathLike) -> str:
  """Where the trained model goes (default `<workdir>/export`); never the folder training starts from: the export
  removes that folder's weight files and writes its own, so the base model every round starts from (or the SFT policy
  a PPM starts from) was replaced, found only after the whole run. Nor a folder that cannot be written (a file, or
  under one; read-only): that too failed only once the whole run had trained."""
  out = os.fspath(export_dir or os.path.join(workdir, "export"))
  if os.path.realpath(out) == os.path.realpath(initial_checkpoint):
    raise ValueError(f"export_dir {out} is the checkpoint training starts from: export to another folder")
  existing = os.path.abspath(out)
  while not os.path.exists(existing):  # the folder the export would create its folders in
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"export_dir {out}: {existing} is a file, not a folder")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"export_dir {out}: {existing} is not writable")
  return out


def _load_tokenizer(tokenizer: Any, default_dir: PathLike, which: str):
  """(tokenizer with the rStar tags of `which`, the directory it was loaded from or None)."""
  if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
    path = default_dir if tokenizer is None else tokenizer
    tokenizer = tokenizer_lib.load_tokenizer(path)
    tokenizer_lib.add_rstar_tokens(tokenizer, which)
    return tokenizer, os.fspath(path)
  if isinstance(tokenizer, tokenizer_lib.Tokenizer):
    tokenizer_lib.add_rstar_tokens(tokenizer, which)
  return tokenizer, None


def _check_vocab(tokenizer: Any, config: ModelConfig, where: PathLike) -> None:
  if len(tokenizer) > config.vocab_size:
    raise ValueError(
        f"{where}: the tokenizer has {len(tokenizer)} ids (rStar tags included) but the model only "
        f"{config.vocab_size} embedding rows; resize the embedding first (rstar_jax.tokenizer.resize_embedding)")


def _model_config(checkpoint: PathLike, config: TrainConfig) -> tuple[ModelConfig, str]:
  """The training config of a checkpoint (fp32 master weights) and the checkpoint's own weight dtype."""
  original = ModelConfig.from_hf_config(checkpoint)
  return original.replace(param_dtype="float32", dtype=config.compute_dtype), original.param_dtype


def _export_tokenizer(tokenizer: Any, tokenizer_dir: str | None, export_dir: str, checkpoint_dir: PathLike) -> None:
  """Process 0 writes the tokenizer beside the exported weights; in a multi-host run no process returns before that
  is done, and its failure is raised on every process (as the weights' export).

  The tokenizer saved is the one trained with, rStar tags included (as the official trainer saves it), so the next
  phase and `transformers` read the tags' ids from the export without adding them again. A tokenizer object without
  `save` is exported by copying its source directory's files. `generation_config.json` (the EOS ids generation stops
  at) belongs to the model: it comes from `checkpoint_dir`, the checkpoint training started from (with a loaded
  tokenizer, or one from another folder, it was taken from the tokenizer's folder: none, or another model's).
  """
  def write():
    copy = _TOKENIZER_SIDE_FILES
    if isinstance(tokenizer, tokenizer_lib.Tokenizer):
      tokenizer.save(export_dir)
      copy = convert.CHAT_TEMPLATE_FILES
    if tokenizer_dir is not None and os.path.isdir(tokenizer_dir):
      convert.copy_side_files(tokenizer_dir, export_dir, copy)
    convert.copy_side_files(checkpoint_dir, export_dir, (_GENERATION_CONFIG,))
    convert.copy_token_ids(checkpoint_dir, export_dir)  # its config.json's EOS ids, for a model without the file
  sharding_lib.on_process_zero(export_dir, "write the tokenizer", write)


def _read_everywhere(workdir: str, tokenizer: Any, checkpoint: PathLike, which: str, data_files, read_records,
                     build_pipeline, config: TrainConfig):
  """The tokenizer (and its dir), model config, original dtype and training pipeline, read on every process.

  Each process reads its own copies of the files: one whose copy was bad (cut short, unreadable) raised alone while
  the others waited for it in the next collective, so a failure on any process raises on all (see
  `sharding.on_every_process`).
  """
  def read():
    loaded, loaded_dir = _load_tokenizer(tokenizer, checkpoint, which)
    model_config, original_dtype = _model_config(checkpoint, config)
    _check_vocab(loaded, model_config, checkpoint)
    return loaded, loaded_dir, model_config, original_dtype, _training_pipeline(
        data_files, read_records, build_pipeline, loaded, config.data)
  return sharding_lib.on_every_process(workdir, "read the tokenizer, model config and training data", read)


def _check_rows_split(mesh_shape: tuple[int, int, int], shards: int) -> None:
  """Each process feeds its own contiguous rows of a batch (`put_batch`), so the batch axis (data x fsdp = `shards`
  devices) must be split across the processes; over a tensor-only mesh every process would take its rows for the
  whole batch."""
  if shards % jax.process_count():
    raise ValueError(f"mesh {mesh_shape}: data x fsdp = {shards} must be a multiple of the {jax.process_count()} "
                     "processes (each process feeds its own rows of a batch)")


def _checked_mesh(config: TrainConfig) -> jax.sharding.Mesh:
  """The training mesh, once the devices can hold it and the global batch splits over it.

  The trainers call it before reading the data (it was first checked after tokenizing it and loading the model).
  """
  mesh = sharding_lib.make_mesh(*config.mesh)
  rows_per_micro, remainder = divmod(config.data.batch_size, config.accum_steps)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if remainder or rows_per_micro % shards:
    raise ValueError(f"global batch {config.data.batch_size} must split into accum_steps={config.accum_steps} "
                     f"micro-batches whose rows divide over data x fsdp = {shards} devices")
  _check_rows_split(config.mesh, shards)
  return mesh


def _run_identity(config: TrainConfig, pipe: pipeline_lib.Pipeline, initial_checkpoint: PathLike) -> dict[str, Any]:
  """`{"optimizer.learning_rate": ..., "data.batch_size": ..., ...}`: what a checkpoint may only be resumed with
  (the config less `_RESUMABLE_CHANGES`, the fingerprint of the tokenized data and its batch plan, and that of the
  weights the run started from)."""
  identity: dict[str, Any] = {_WEIGHTS_KEY: convert.weights_fingerprint(initial_checkpoint)}
  for key, value in json.loads(json.dumps(dataclasses.asdict(config))).items():
    if key in _RESUMABLE_CHANGES or (key == "value_head_dropout" and value == 0.0):
      continue  # (a run without dropout has the run.json written before the option existed)
    if isinstance(value, dict):
      identity.update({f"{key}.{name}": v for name, v in value.items()})
    else:
      identity[key] = value
  identity["data.num_batches"] = pipe.num_batches
  identity["data.fingerprint"] = pipe.fingerprint
  return identity


def _check_same_everywhere(where: str, identity: dict[str, Any]) -> None:
  """Raises on every process when the processes of a multi-process run do not hold the same `identity`.

  Each process reads its own data files, tokenizer and initial weights; a stale copy on one host gave it another
  step count, and the process that ran out first went on to its checkpoint and export while the others waited in the
  next step's collectives (a hang). Collective: every process calls it once, at the same point.
  """
  if jax.process_count() == 1:
    return
  keys = sorted(identity)

  def digest(value: Any) -> np.ndarray:  # [2] int32: 8 bytes of sha256 (no 64-bit ints without jax's x64 mode)
    text = json.dumps(value, sort_keys=True, default=str).encode()
    return np.frombuffer(hashlib.sha256(text).digest()[:8], np.int32)

  # The key lists are compared first: a gather of per-key digests needs the same shape on every process.
  local = np.stack([digest(keys)] + [digest(identity[k]) for k in keys])
  sizes = multihost_utils.process_allgather(np.int32(len(local)))
  everyone = multihost_utils.process_allgather(local) if len(set(sizes.tolist())) == 1 else None  # [P, 1 + keys, 2]
  if everyone is None or (everyone[0, 0] != everyone[:, 0]).any():
    raise ValueError(f"{where}: the {jax.process_count()} processes differ in which settings they hold (a config "
                     "option only some of them set); run every process with the same TrainConfig")
  differ = [k for i, k in enumerate(keys, 1) if (everyone[:, i] != everyone[0, i]).any()]
  if differ:
    others = [p for p in range(len(everyone)) if (everyone[p] != everyone[0]).any()]
    raise ValueError(f"{where}: the {jax.process_count()} processes differ in {', '.join(differ)} (processes "
                     f"{others} from process 0; this is process {jax.process_index()}, with "
                     + ", ".join(f"{k}={identity[k]!r:.80}" for k in differ)
                     + "); every process must read the same data, tokenizer and initial weights with the same "
                     "settings")


def _check_resume(workdir: str, step: int, identity: dict[str, Any]) -> None:
  """Refuses to resume the checkpoint at `step` with other settings or data than its run started with: the
  restored optimizer state, schedule position and data position would silently continue a different run."""
  path = os.path.join(workdir, RUN_FILE)
  if not os.path.exists(path):  # a workdir written before run.json existed: nothing to compare with
    logging.getLogger(__name__).warning("%s: no %s; resuming step %d without checking its settings", workdir,
                                        RUN_FILE, step)
    return
  remedy = "restore it, or delete it to resume without checking the settings"
  try:
    with open(path, encoding="utf-8") as f:
      started = files.json_loads(f.read())
  except json.JSONDecodeError as e:  # its message names no file
    raise ValueError(f"{path}: not valid JSON ({e.msg}: line {e.lineno} column {e.colno}); {remedy}") from None
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}); {remedy}") from None
  if not isinstance(started, dict):  # `.get` below was a bare AttributeError
    raise ValueError(f"{path}: expected a JSON object, got a JSON {type(started).__name__}; {remedy}")
  changed = sorted(k for k in set(started) | set(identity) if started.get(k) != identity.get(k)
                   and not (k == _WEIGHTS_KEY and k not in started))  # (a run.json written before the key existed)
  if changed:
    lines = "".join(f"\n  {k}: {started.get(k)!r} in the checkpointed run, {identity.get(k)!r} now" for k in changed)
    hint = "".join(f" ({key} covers {what})" for key, what in (
        ("data.fingerprint", "the data files, the tokenizer, the prompt template and the batching"),
        (_WEIGHTS_KEY, "the weight files of the checkpoint the run started from")) if key in changed)
    raise ValueError(f"{workdir}: cannot resume the checkpoint at step {step} with other settings or data than its "
                     f"run started with{hint}:{lines}\nRestore those settings, or train in a new workdir.")


@contextlib.contextmanager
def _locked(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock while a trainer runs there: a second trainer on it (another process, or a call in this
  one) would write over this one's checkpoints, `run.json` and metrics. Process 0 holds it; if it cannot, every
  process raises."""
  lock = files.FolderLock(workdir, "train.lock", "trainer")
  sharding_lib.on_process_zero(workdir, "lock the workdir", lock.acquire)
  try:
    yield
  finally:
    lock.release()


def _run(*, model: nnx.Module | None, abstract_model: nnx.Module, loss_fn_of: Callable, count_key: str,
         pipe: pipeline_lib.Pipeline, workdir: str, config: TrainConfig, mesh: jax.sharding.Mesh,
         initial_checkpoint: PathLike, step_callback: StepCallback | None,
         dropout_seed: int | None = None) -> tuple[nnx.Module, int, dict[str, float]]:
  """The loop shared by both trainers; returns the trained model, the step count and the last metrics.

  `model` may be None when `workdir` holds a checkpoint (everything is restored from it); otherwise it is
  the placed initial model, read from `initial_checkpoint` (whose weights a resumed run must still start from).
  `abstract_model` gives shapes and the module structure. `mesh`: `_checked_mesh(config)`. `dropout_seed`: the train
  step hands each micro-batch its dropout key and row ids (`steps.make_train_step`).
  """
  total_steps = pipe.num_batches if config.max_steps is None else min(pipe.num_batches, config.max_steps)
  tx = optimizer_lib.make_optimizer(config.optimizer, total_steps)
  schedule = optimizer_lib.learning_rate_schedule(config.optimizer, total_steps)

  graphdef, abstract_params = state_lib.split_params(abstract_model)
  shardings = state_lib.state_shardings(abstract_params, tx, mesh)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), every=config.checkpoint_every,
                              keep=config.keep_checkpoints, async_save=config.async_checkpoint)
  data_iter = pipe.iterator()
  latest = checkpointer.latest_step()
  identity = _run_identity(config, pipe, initial_checkpoint)
  # Before any collective: the step counts must agree, and so must the settings a resume may change (the mesh, the
  # micro-batches, when to save) that shape every process's collectives.
  _check_same_everywhere(workdir, dict(identity, **{k: getattr(config, k) for k in _RESUMABLE_CHANGES}))
  if latest is None:
    if model is None:
      raise ValueError(f"{workdir}: no checkpoint to resume from and no initial model")
    def write_run_file():
      os.makedirs(workdir, exist_ok=True)
      files.atomic_write(os.path.join(workdir, RUN_FILE), json.dumps(identity, indent=1) + "\n")
    sharding_lib.on_process_zero(workdir, f"write {RUN_FILE}", write_run_file)
    state = state_lib.create_state(state_lib.split_params(model)[1], tx, mesh)
  else:
    _check_resume(workdir, latest, identity)
    state, data_state = checkpointer.restore(latest, state_lib.abstract_state(abstract_params, tx), shardings)
    data_iter.set_state(data_state)
  del model

  train_step = steps_lib.jit_train_step(
      steps_lib.make_train_step(loss_fn_of(graphdef), tx, mesh, accum_steps=config.accum_steps,
                                count_key=count_key, schedule=schedule, dropout_seed=dropout_seed), shardings, mesh)
  is_main = jax.process_index() == 0
  # Process 0 alone writes the metrics; a failure there (a full disk) must stop every process at the same point: it
  # raised alone, and the others went on into the next step's collectives (waiting for it until the shutdown's
  # deadline).
  log = sharding_lib.on_every_process(workdir, "open metrics.jsonl", lambda: MetricsLog(
      workdir, tensorboard=config.tensorboard, enabled=is_main, fresh=latest is None))
  start = int(jax.device_get(state.step))
  last: dict[str, float] = {}
  progress = tqdm.tqdm(total=total_steps, initial=start, disable=not (config.progress and is_main),
                       desc=os.path.basename(workdir.rstrip("/")) or "train", unit="step")
  tick, last_logged = time.perf_counter(), start
  try:
    for step in range(start + 1, total_steps + 1):
      batch = steps_lib.put_batch(next(data_iter), mesh)
      state, metrics = train_step(state, batch)
      log_now = step % config.log_every == 0 or step == total_steps
      # Check the loss before every save too, so a non-finite state never becomes the checkpoint to resume; orbax
      # also saves at a preemption notice, at any step, so ask its policy rather than test `checkpoint_every` here.
      save_now = step == total_steps or checkpointer.due(step)
      if log_now or save_now:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        # The loss is computed before this step's update and the gradient norm drives it: both must be finite.
        if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
          raise NonFiniteLossError(
              f"non-finite training loss {metrics['loss']} (gradient norm {metrics['grad_norm']}) at step {step} "
              f"(workdir {workdir}); the last checkpoint is step {checkpointer.latest_step()}. Lower the learning "
              "rate or check the data.")
      if log_now:
        now = time.perf_counter()
        metrics["step_time_s"] = (now - tick) / (step - last_logged)  # the first interval includes compiling
        tick, last_logged = now, step
        last = {k: metrics[k] for k in ("loss", "accuracy", "grad_norm", "learning_rate", "step_time_s", count_key)}
        sharding_lib.on_process_zero(log.path, f"write step {step}'s metrics", lambda: log.write(step, last))
        progress.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['accuracy']:.3f}")
        if step_callback is not None:
          step_callback(step, last)
      if save_now:
        checkpointer.save(step, state, data_iter.get_state(), force=True)
      progress.update(1)
  finally:
    progress.close()
    log.close()
    checkpointer.close()
  if not last and os.path.exists(log.path):  # nothing left to run: report the finished run's last step
    last = metrics_log.read_metrics(log.path).get(total_steps, {})
  return nnx.merge(graphdef, state.params), total_steps, last


def train_policy(base_checkpoint: PathLike, sft_file: PathLike | Sequence[PathLike], workdir: PathLike, *,
                 config: TrainConfig | None = None, export_dir: PathLike | None = None,
                 tokenizer: Any = None, step_callback: StepCallback | None = None) -> TrainResult:
  """Fine-tunes the policy from the base model on one round's SFT data.

  Args:
    base_checkpoint: HF Qwen2 dir (each round starts from the *base* model, DESIGN §1.4).
    sft_file: rStar SFT file(s) (`query`/`response`, JSON list or JSONL).
    workdir: checkpoints and `metrics.jsonl`; re-running on the same workdir resumes.
    config: see `TrainConfig` (default: `sft_config()`).
    export_dir: where the trained HF dir goes (default `<workdir>/export`).
    tokenizer: a tokenizer dir (default: `base_checkpoint`) or a loaded tokenizer; the rStar tags are added, and
      the export holds this tokenizer, tags included.
    step_callback: called as `callback(step, scalars)` after each logged step.

  Returns:
    `TrainResult` with the exported HF dir (weights, config.json, tokenizer files).
  """
  config = _train_config(config, sft_config)
  _checked_checkpoint(base_checkpoint, "base_checkpoint")
  workdir = os.path.abspath(os.fspath(workdir))
  export_dir = _export_dir(export_dir, workdir, base_checkpoint)
  mesh = _checked_mesh(config)  # a mesh or batch split that cannot work fails now, not after tokenizing the data
  with _locked(workdir):
    tokenizer, tokenizer_dir, model_config, original_dtype, pipe = _read_everywhere(
        workdir, tokenizer, base_checkpoint, "policy", sft_file,
        formats.read_sft_records, pipeline_lib.sft_pipeline, config)

    resuming = latest_step(os.path.join(workdir, "checkpoints")) is not None
    abstract = nnx.eval_shape(lambda: Qwen2(model_config, rngs=nnx.Rngs(0), remat=config.remat))
    model = None
    if not resuming:
      model = sharding_lib.on_every_process(workdir, f"load {base_checkpoint}", lambda: convert.load_qwen2(
          base_checkpoint, model_config, mesh=mesh))
      model.model.remat = config.remat
    trained, steps, metrics = _run(model=model, abstract_model=abstract, loss_fn_of=steps_lib.sft_loss_fn,
                                   count_key="num_tokens", pipe=pipe, workdir=workdir, config=config, mesh=mesh,
                                   initial_checkpoint=base_checkpoint,
                                   step_callback=step_callback)
    convert.save_qwen2(trained, export_dir, dtype=config.export_dtype or original_dtype)
    _export_tokenizer(tokenizer, tokenizer_dir, export_dir, base_checkpoint)
    return TrainResult(export_dir, workdir, steps, metrics, pipe.num_examples, pipe.num_dropped)


def _initial_ppm(init_checkpoint: PathLike, model_config: ModelConfig, config: TrainConfig,
                 mesh: jax.sharding.Mesh) -> PPM:
  """A PPM from a PPM dir (continue training) or from a policy dir (backbone + fresh near-zero value head)."""
  if convert.value_head_files(init_checkpoint):
    ppm = convert.load_ppm(init_checkpoint, model_config, mesh=mesh)
  else:
    policy = convert.load_qwen2(init_checkpoint, model_config, mesh=mesh)
    ppm = nnx.eval_shape(lambda: PPM(model_config, rngs=nnx.Rngs(0)))
    ppm.model = policy.model  # the LM head (if untied) is dropped: the PPM reads the value head only
    ppm.value_head = ValueHead(model_config, rngs=nnx.Rngs(config.seed), **OFFICIAL_VALUE_HEAD_INIT)
    sharding_lib.shard_model(ppm, mesh)
  ppm.model.remat = config.remat
  return ppm


def train_ppm(init_checkpoint: PathLike, pairs_file: PathLike | Sequence[PathLike], workdir: PathLike, *,
              config: TrainConfig | None = None, export_dir: PathLike | None = None,
              tokenizer: Any = None, step_callback: StepCallback | None = None) -> TrainResult:
  """Trains the process preference model on one round's pairs.

  Args:
    init_checkpoint: the round's SFT policy HF dir (a fresh value head is added), or a PPM dir with
      `value_head.bin` to continue from.
    pairs_file: rStar PPM pair file(s) (`prompt`/`pos`/`neg`/`pos_count`/`neg_count`).
    workdir: checkpoints and `metrics.jsonl`; re-running on the same workdir resumes.
    config: see `TrainConfig` (default: `ppm_config()`); `config.ppm_head` picks raw or tanh scores,
      `config.value_head_dropout` the official head's training-time dropout (0.1 there; off by default).
    export_dir: where the PPM goes (default `<workdir>/export`): HF backbone dir + `value_head.bin`.
    tokenizer: a tokenizer dir (default: `init_checkpoint`) or a loaded tokenizer; the rStar PPM tags are
      added, and the export holds this tokenizer, tags included.
    step_callback: called as `callback(step, scalars)` after each logged step.

  Returns:
    `TrainResult`; its `metrics["accuracy"]` is the pair accuracy of the last logged batch.
  """
  config = _train_config(config, ppm_config)
  _checked_checkpoint(init_checkpoint, "init_checkpoint")
  workdir = os.path.abspath(os.fspath(workdir))
  export_dir = _export_dir(export_dir, workdir, init_checkpoint)
  mesh = _checked_mesh(config)  # a mesh or batch split that cannot work fails now, not after tokenizing the data
  with _locked(workdir):
    tokenizer, tokenizer_dir, model_config, original_dtype, pipe = _read_everywhere(
        workdir, tokenizer, init_checkpoint, "ppm", pairs_file,
        formats.read_ppm_pairs, pipeline_lib.ppm_pipeline, config)

    resuming = latest_step(os.path.join(workdir, "checkpoints")) is not None
    abstract = nnx.eval_shape(lambda: PPM(model_config, rngs=nnx.Rngs(0), remat=config.remat))
    model = None if resuming else sharding_lib.on_every_process(
        workdir, f"load {init_checkpoint}", lambda: _initial_ppm(init_checkpoint, model_config, config, mesh))
    trained, steps, metrics = _run(model=model, abstract_model=abstract,
                                   loss_fn_of=lambda g: steps_lib.ppm_loss_fn(g, config.ppm_head,
                                                                              config.value_head_dropout),
                                   count_key="num_pairs", pipe=pipe, workdir=workdir, config=config, mesh=mesh,
                                   initial_checkpoint=init_checkpoint,
                                   step_callback=step_callback,
                                   dropout_seed=config.seed if config.value_head_dropout > 0 else None)
    convert.save_ppm(trained, export_dir, dtype=config.export_dtype or original_dtype)
    _export_tokenizer(tokenizer, tokenizer_dir, export_dir, init_checkpoint)
    return TrainResult(export_dir, workdir, steps, metrics, pipe.num_examples, pipe.num_dropped)


def evaluate_ppm(ppm: PPM, pairs: Iterable[formats.PpmPair], tokenizer: Any, *,
                 data: pipeline_lib.PipelineConfig | None = None, head: str = "raw",
                 mesh_shape: tuple[int, int, int] = (1, -1, 1)) -> dict[str, float]:
  """Pair accuracy and mean weighted loss of `ppm` on `pairs` (one pass, no shuffling).

  `tokenizer` (an object, or a directory to load) gets the PPM trainer's rStar tags added, as `train_ppm` does (a
  no-op for the tokenizer a PPM export holds).

  The PPM's parameters are placed on the `mesh_shape` mesh by the logical rules, wherever they were (e.g. a model
  loaded or trained on another mesh), and each batch gets masked padding pairs up to a multiple of data x fsdp, so
  any `data.batch_size` runs on any mesh. In a multi-process run every process passes all the pairs (the same ones:
  other pairs raise on every process) and gets the result over all of them; each feeds its share of every batch (the
  batch size is rounded up to a multiple of the process count), so data x fsdp must be a multiple of the process
  count, as in training.
  """
  # Checked before the parameters are placed and the pairs tokenized: a pairs file's path (what train_ppm takes) was
  # read character by character ("'str' object has no attribute 'prompt'"), and the scorer's "tanh5" failed inside
  # the first jitted step.
  kind = type(pairs).__name__
  if not isinstance(pairs, (str, os.PathLike)):
    pairs = list(pairs)  # read by the check and by the pipeline: an iterator reached the pipeline empty
  if isinstance(pairs, (str, os.PathLike)) or not all(isinstance(p, formats.PpmPair) for p in pairs):
    raise TypeError("evaluate_ppm: pairs must be a sequence of PpmPair (formats.read_ppm_pairs(path) reads a file), "
                    f"got {kind}")
  if head not in PPM_HEADS:
    raise ValueError(f"evaluate_ppm: head must be one of {PPM_HEADS} (how the PPM was trained), got {head!r}")
  if not pairs:
    raise ValueError("evaluate_ppm: no pairs to evaluate")
  if tokenizer is None:
    raise TypeError("evaluate_ppm: a tokenizer (or its directory) is needed, e.g. the PPM export's")
  # With the PPM trainer's rStar tags, as train_ppm tokenizes: the base model's tokenizer split `<end_of_step>` into
  # pieces the PPM was never trained on, and the scores quietly changed.
  tokenizer, _ = _load_tokenizer(tokenizer, tokenizer, "ppm")
  processes = jax.process_count()
  data = data or pipeline_lib.PipelineConfig(batch_size=32)
  # Padding pairs are masked, so a bigger batch only regroups the same sums.
  data = dataclasses.replace(data, num_epochs=1, shuffle=False,
                             batch_size=-(-data.batch_size // processes) * processes)
  mesh = sharding_lib.make_mesh(*mesh_shape)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  _check_rows_split(mesh_shape, shards)
  graphdef, params = state_lib.split_params(ppm)
  params = jax.device_put(params, state_lib.tree_shardings(params, mesh))
  # This process's rows, times the process count, must divide over data x fsdp.
  multiple = shards // processes
  eval_step = jax.jit(steps_lib.make_eval_step(steps_lib.ppm_loss_fn(graphdef, head), mesh))
  sums = None
  try:
    pipe = pipeline_lib.ppm_pipeline(pairs, tokenizer, data)
  except pipeline_lib.NoExamplesError as e:  # every pair dropped by the max_len cut
    raise pipeline_lib.NoExamplesError(f"evaluate_ppm: no pairs left to evaluate ({e})") from None
  # Every process runs one collective step per batch: other pairs on one process (another batch count) hung the rest.
  _check_same_everywhere("evaluate_ppm", {"data.num_batches": pipe.num_batches, "data.fingerprint": pipe.fingerprint,
                                          "head": head, "mesh_shape": list(mesh_shape)})
  for batch in pipe.iterator():
    pad = -len(batch["pair_mask"]) % multiple  # all-zero rows: pair_mask 0, so they never count
    batch = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}
    out = jax.device_get(eval_step(params, steps_lib.put_batch(batch, mesh)))
    sums = out if sums is None else {k: sums[k] + out[k] for k in out}
  count = max(float(sums["num_pairs"]), 1.0)
  return {"loss": float(sums["loss_sum"]) / count, "pair_accuracy": float(sums["num_correct"]) / count,
          "num_pairs": float(sums["num_pairs"])}


__all__ = ["NonFiniteLossError", "TrainResult", "evaluate_ppm", "train_policy", "train_ppm"]
