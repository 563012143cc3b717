"""Training configuration: one frozen dataclass per concern, defaults from the rStar paper/code (DESIGN §1.4).

`ml_collections` config files (configs/) build these with `TrainConfig.from_dict(config)`; unknown
keys are an error, so a typo in a config file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from rstar_jax.data.pipeline import PipelineConfig
from rstar_jax.models.config import dtype_name
from rstar_jax.train.losses import PPM_HEADS
from rstar_jax.train.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything one SFT or PPM run needs besides its inputs.

  Attributes:
    optimizer: AdamW, schedule, clipping.
    data: sequence length, global batch, epochs, shuffling, bucketing.
    mesh: `(data, fsdp, tensor)` sizes; one may be -1 (= the remaining devices).
    accum_steps: micro-batches per update (the global batch is split, the update is the full-batch one).
    compute_dtype: "float32", or "bfloat16" for bf16 matmuls on float32 master weights (aliases such as "bf16"
      are normalised to these names).
    remat: recompute decoder-layer activations in the backward pass (less memory, ~1/3 more compute).
    checkpoint_every: save every this many steps (the last step is always saved).
    keep_checkpoints: how many recent checkpoints to keep.
    async_checkpoint: write checkpoints in the background.
    log_every: fetch and log metrics every this many steps (a non-finite loss is caught at these steps).
    seed: initialisation seed of the PPM value head, and of its dropout masks (`value_head_dropout`); in
      [0, 2**32).
    ppm_head: "raw" (official: Bradley-Terry on the linear output) or "tanh" (the paper's head). Score the trained
      PPM to match: `PPMScorer(transform="tanh")` after "tanh"; the default "tanh5" follows the official "raw".
    value_head_dropout: PPM only: dropout on the hidden state the value head reads, in training (evaluation and
      search never drop). 0 (default) keeps the head deterministic; the official trainer's head drops with 0.1
      (`summary_dropout_prob`'s default, in train mode), so 0.1 trains as the released PPMs were. Masks come from
      `seed`, the step and the row (`train.steps`).
    export_dtype: dtype of the exported HF weights; None = that of the input checkpoint.
    max_steps: stop after this many updates (None = all epochs); the schedule spans the steps run.
    progress: show a tqdm progress bar.
    tensorboard: also write TensorBoard events when a writer is installed.
  """
  optimizer: OptimizerConfig = OptimizerConfig()
  data: PipelineConfig = PipelineConfig()
  mesh: tuple[int, int, int] = (1, -1, 1)
  accum_steps: int = 1
  compute_dtype: str = "float32"
  remat: bool = False
  checkpoint_every: int = 500
  keep_checkpoints: int = 2
  async_checkpoint: bool = True
  log_every: int = 1
  seed: int = 0
  ppm_head: str = "raw"
  value_head_dropout: float = 0.0
  export_dtype: str | None = None
  max_steps: int | None = None
  progress: bool = True
  tensorboard: bool = True

  def __post_init__(self):
    # Checked here, before any model is loaded: a zero would otherwise divide by zero after the first step, a
    # zero `keep_checkpoints` deletes every checkpoint, and a bad export dtype fails only after the whole run.
    # A mapping in place of a nested config was kept: it failed as "'dict' object has no attribute ..." (the
    # optimizer's only after the data was tokenized and the model loaded).
    for name, kind, article in (("optimizer", OptimizerConfig, "an"), ("data", PipelineConfig, "a")):
      value = getattr(self, name)
      if not isinstance(value, kind):
        raise TypeError(f"TrainConfig.{name} must be {article} {kind.__name__} (TrainConfig.from_dict builds one "
                        f"from a mapping), got {type(value).__name__}")
    for name in ("accum_steps", "checkpoint_every", "keep_checkpoints", "log_every", "max_steps"):
      value = getattr(self, name)
      if not (value is None and name == "max_steps") and (isinstance(value, bool) or not isinstance(value, int)
                                                           or value < 1):
        raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {value!r}")
    for name in ("remat", "async_checkpoint", "progress", "tensorboard"):
      if not isinstance(getattr(self, name), bool):  # a config file's "false" is a non-empty str: it ran as True
        raise ValueError(f"TrainConfig.{name} must be a bool (true or false), got {getattr(self, name)!r}")
    if isinstance(self.seed, bool) or not isinstance(self.seed, int):  # 1.5 failed in the value head's init, late
      raise ValueError(f"TrainConfig.seed must be an integer, got {self.seed!r}")
    if not 0 <= self.seed < 2**32:
      # `jax.random.key` keeps 32 bits: 2**32 + 5 initialised the head and drew its dropout masks as seed 5 did (-1 as
      # 2**32 - 1), and 2**63 overflowed in the head's init, after the data was tokenized and the model loaded.
      raise ValueError(f"TrainConfig.seed must be in [0, 2**32) (jax keys take 32 bits of it), got {self.seed}")
    # Not iterated unchecked: an int or None failed as "'int' object is not iterable", naming nothing.
    mesh = tuple(self.mesh) if isinstance(self.mesh, (tuple, list)) else ()
    if len(mesh) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or (s < 1 and s != -1) for s in mesh):
      raise ValueError(f"TrainConfig.mesh must be three sizes (data, fsdp, tensor), each >= 1 or -1, got {self.mesh!r}")
    rate = self.value_head_dropout
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
      raise ValueError(f"TrainConfig.value_head_dropout must be a number in [0, 1), got {rate!r}")
    object.__setattr__(self, "value_head_dropout", float(rate))
    if self.ppm_head not in PPM_HEADS:
      raise ValueError(f"TrainConfig.ppm_head must be one of {PPM_HEADS}, got {self.ppm_head!r}")
    object.__setattr__(self, "mesh", mesh)
    object.__setattr__(self, "compute_dtype", dtype_name(self.compute_dtype, "TrainConfig.compute_dtype"))
    if self.compute_dtype not in ("float32", "bfloat16"):
      # No loss scaling here: float16 gradients below 6e-8 flush to 0 (at the official PPM head init every backbone
      # gradient did), while bfloat16 has float32's range.
      raise ValueError(f"TrainConfig.compute_dtype must be 'float32' or 'bfloat16' (float16 training needs loss "
                       f"scaling, which this trainer does not do), got {self.compute_dtype!r}")
    if self.export_dtype is not None:
      object.__setattr__(self, "export_dtype", dtype_name(self.export_dtype, "TrainConfig.export_dtype"))

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
    """Builds a config from nested mappings or an `ml_collections.ConfigDict`; unknown keys raise."""
    # A ConfigDict is no Mapping: its nested ConfigDicts were kept as they were, unbuilt and unchecked.
    if not isinstance(values, Mapping) and not hasattr(values, "to_dict"):
      # dict() read None (an empty YAML file) as "'NoneType' object is not iterable", and a list of pairs as a mapping.
      raise TypeError(f"TrainConfig.from_dict takes a mapping or a ConfigDict, got {type(values).__name__} "
                      f"{values!r:.60}")
    values = dict(values.to_dict() if hasattr(values, "to_dict") else values)
    nested = {"optimizer": OptimizerConfig, "data": PipelineConfig}
    for key, kind in nested.items():
      value = values.get(key)
      if hasattr(value, "to_dict"):
        value = value.to_dict()
      if isinstance(value, Mapping):
        values[key] = _build(kind, value, key)
    return _build(cls, values, "config")

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)


def _build(kind, values: Mapping[str, Any], where: str):
  known = {f.name for f in dataclasses.fields(kind)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise KeyError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
  # Config files give lists; the frozen (hashable) configs hold tuples.
  return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def sft_config(**changes) -> TrainConfig:
  """Policy SFT as in the paper: AdamW lr 7e-6, weight decay 0.1, linear decay, no warm-up, 2 epochs,
  global batch 128, length 2048 (the official code; the paper says 4096).

  The loss is the token mean over the whole global batch. The official run (transformers 4.45.2, 8 GPUs x 4 rows x
  4 accumulation steps) averaged the 32 micro-batches' own token means instead, which weighs a token by its
  micro-batch's size; later transformers versions normalise by the batch's token count, as here.
  """
  return TrainConfig(**changes)


def ppm_config(**changes) -> TrainConfig:
  """PPM training: the SFT optimizer settings, 2 epochs of pairs, 128 pairs per batch, raw-linear head.

  The official RM script (README, `train_RM.py`) differs: 512 pairs per update (8 GPUs x 16 x 4 accumulation
  steps), no weight decay (it leaves the Trainer's default 0), value-head dropout 0.1, and a loss that *sums* the
  weighted pair losses of each 16-pair micro-batch (averaged over GPUs and accumulation steps), so its gradient is
  16 times the per-pair mean used here. `official_ppm_config()` follows that script.

  Longer pairs are cut to `data.max_len` (2048) tokens; the search's `PPMScorer` cuts a text to its `max_tokens`
  (by default `max_position_embeddings - 1`). Set the two equal for training to score exactly what search scores.
  """
  return TrainConfig(**changes)


# The official RM run (rStar-Math README): `per_device_train_batch_size=16` pairs, summed by `RMTrainer.compute_loss`.
OFFICIAL_RM_PAIRS_PER_DEVICE = 16


def official_ppm_config(pairs_per_device: int = OFFICIAL_RM_PAIRS_PER_DEVICE, **changes) -> TrainConfig:
  """The PPM run of the official `train_RM.py` (README command, transformers 4.45.2), on the per-pair mean loss.

  512 pairs per update, no weight decay, value-head dropout 0.1, lr 7e-6 linear to 0, 2 epochs, AdamW (0.9, 0.999),
  clipping at norm 1 of the official loss. That loss sums the weighted pair losses of each `pairs_per_device`-pair
  micro-batch, so its gradient is `pairs_per_device` times ours: its clipping at 1 is ours at `1 / pairs_per_device`,
  and its Adam eps 1e-8 is ours at `1e-8 / pairs_per_device`. Adam's step `m / (sqrt(v) + eps)` ignores the gradient's
  scale only while the gradient is far above eps, and at the official value-head init (weights ~1e-6) the backbone's
  gradients are ~1e-8: with eps 1e-8 on the 16 times smaller gradient the backbone moved up to 16 times less than in
  the official run over the first steps. Its logged loss is `pairs_per_device` times ours.

  Not followed here: the official run trains in bf16 autocast (`compute_dtype="bfloat16"` does that), tokenizes the
  prompt and the step apart (`pipeline.tokenize_ppm` says why not), and without a test file holds out 5% of the pairs
  (`train_test_split`, seed 42), evaluates them every 750 steps and exports the checkpoint of lowest eval loss
  (`load_best_model_at_end`); `train_ppm` trains on every pair it is given and exports the last step (hold pairs out
  yourself and score checkpoints with `evaluate_ppm`).

  Args:
    pairs_per_device: the official run's `per_device_train_batch_size` (16), the scale between the two losses.
    **changes: other `TrainConfig` fields (e.g. `data`, `accum_steps`); an `optimizer` given here replaces the
      scaled one whole.

  Returns:
    The `TrainConfig`.
  """
  if isinstance(pairs_per_device, bool) or not isinstance(pairs_per_device, int) or pairs_per_device < 1:
    raise ValueError(f"pairs_per_device must be an integer >= 1, got {pairs_per_device!r}")
  scale = pairs_per_device
  changes.setdefault("data", PipelineConfig(batch_size=512))
  changes.setdefault("value_head_dropout", 0.1)
  changes.setdefault("optimizer", OptimizerConfig(weight_decay=0.0, max_grad_norm=1.0 / scale, eps=1e-8 / scale))
  return TrainConfig(**changes)
