"""AdamW with the learning-rate schedules and gradient clipping of the `transformers` Trainer.

The schedule formulas follow `transformers.get_{linear,cosine,constant}_schedule_with_warmup` (the step
counter is the number of optimizer updates already applied), and weight decay skips biases and norm
weights as the Trainer's `get_decay_parameter_names` does, so a run here can be compared step for step
with one there. (The transformers 4.45.2 the official rStar code pins skipped only `nn.LayerNorm` modules and
names with "bias", so it decayed Qwen2's RMSNorm weights; at lr 7e-6 and decay 0.1 that shrinks them by 7e-7 a
step.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("linear", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW hyper-parameters (defaults: rStar policy SFT, DESIGN §1.4)."""
  learning_rate: float = 7e-6
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  schedule: str = "linear"
  warmup_steps: int = 0
  max_grad_norm: float | None = 1.0  # None or <= 0: no clipping
  decay_norms_and_biases: bool = False  # current Trainers decay neither (4.45.2 did decay norms: see above)

  def __post_init__(self):
    # Checked here, before the trainer tokenizes the data and loads the model: the optimizer is built only after
    # both, and a NaN or negative setting trains on (NaN weights from the first update, a negative warm-up counted as
    # none) until the loss check stops the run.
    if self.schedule not in SCHEDULES:
      raise ValueError(f"OptimizerConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
    for name, low, high, what in (("learning_rate", 0, math.inf, "a finite number >= 0"),
                                  ("weight_decay", 0, math.inf, "a finite number >= 0"),
                                  ("eps", 0, math.inf, "a finite number > 0"),
                                  ("b1", 0, 1, "a number in [0, 1)"), ("b2", 0, 1, "a number in [0, 1)"),
                                  ("max_grad_norm", -math.inf, math.inf, "None or a finite number")):
      value = getattr(self, name)
      if value is None and name == "max_grad_norm":
        continue
      # Adam divides by sqrt(v) + eps: eps 0 turns an element whose gradient has been 0 so far (the PPM head's bias,
      # an embedding row no batch used yet) into 0 / 0 = NaN.
      if (isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high
          or (name == "eps" and value == 0)):
        raise ValueError(f"OptimizerConfig.{name} must be {what}, got {value!r}")
    if not isinstance(self.decay_norms_and_biases, bool):  # a config file's "false" is a non-empty str: True
      raise ValueError(f"OptimizerConfig.decay_norms_and_biases must be a bool (true or false), got "
                       f"{self.decay_norms_and_biases!r}")
    warmup = self.warmup_steps
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
      raise ValueError(f"OptimizerConfig.warmup_steps must be an integer >= 0, got {warmup!r}")


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """`step -> learning rate` (`step` = updates applied so far), warm-up then the chosen decay to 0."""
  if total_steps < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}")
  lr, warmup = config.learning_rate, config.warmup_steps

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = step / max(1, warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    if config.schedule == "linear":
      decay = jnp.maximum(0.0, (total_steps - step) / max(1, total_steps - warmup))
    elif config.schedule == "cosine":
      decay = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(math.pi * progress)))
    else:
      decay = jnp.ones_like(step)
    return lr * jnp.where(step < warmup, warm, decay)

  return schedule


def _path_names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay: everything but biases and norm weights."""
  def decays(path, _):
    names = [n.lower() for n in _path_names(path)]
    return not any(n == "bias" or n.endswith("bias") or "norm" in n for n in names)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """Global-norm clipping (when set) then AdamW with decoupled weight decay and the schedule."""
  parts = []
  if config.max_grad_norm is not None and config.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(config.max_grad_norm))
  parts.append(optax.adamw(
      learning_rate=learning_rate_schedule(config, total_steps), b1=config.b1, b2=config.b2, eps=config.eps,
      weight_decay=config.weight_decay, mask=None if config.decay_norms_and_biases else decay_mask))
  return optax.chain(*parts)
