"""Process preference model: the Qwen2 backbone plus a value head read at the last real token.

The official rStar reward model (`RewardModelWithValueHead`) runs the causal LM, takes the last hidden state (after
the final norm) and applies `v_head.summary`, a `Linear(D, 1)`; the score of a sequence is that value at its last
non-padding token. The raw linear output is what the official code trains; it squashes with `tanh(r / 5)` at search
time, while the paper puts a tanh in the head: `value_transform` below offers both.

The official head also applies `nn.Dropout(0.1)` to the hidden states before the linear layer (`summary_dropout_prob`,
unset in Qwen2 configs, defaults to 0.1); the Trainer runs it in train mode, so the released PPMs were trained with
it, and search (`rm_engine`, `v_head.eval()`) scores without it. `PPM.__call__` takes the same dropout as an option
(`dropout_rate` with one PRNG key per row); training turns it on with `TrainConfig.value_head_dropout`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rstar_jax.models.config import ModelConfig
from rstar_jax.models.qwen2 import Qwen2Model


def last_token_index(input_mask: jax.Array) -> jax.Array:
  """`input_mask [B, T] bool` -> `[B]` index of each row's last real token (left or right padding)."""
  t = input_mask.shape[-1]
  return t - 1 - jnp.argmax(input_mask[:, ::-1], axis=-1)


def dropout_keep_mask(keys: jax.Array, rate: float, size: int) -> jax.Array:
  """`keys [B]` (one PRNG key per row) -> `[B, size]` bool, each element kept with probability `1 - rate`."""
  return jax.vmap(lambda key: jax.random.bernoulli(key, 1.0 - rate, (size,)))(keys)


def value_transform(raw: jax.Array, kind: str = "raw") -> jax.Array:
  """`raw`: the linear head output; "raw" (official training), "tanh" (paper head), "tanh5" (official search)."""
  if kind == "raw":
    return raw
  if kind == "tanh":
    return jnp.tanh(raw)
  if kind == "tanh5":
    return jnp.tanh(raw / 5.0)
  raise ValueError(f"unknown value transform {kind!r}; expected 'raw', 'tanh' or 'tanh5'")


# The official ValueHead's initialisation (rStar-Math train/rm.py: normal(mean=5e-7, std=1e-6), bias 1e-6), which
# a trained PPM starts from (`train.train_ppm`). The default below is larger so a random PPM's scores tell texts apart.
OFFICIAL_VALUE_HEAD_INIT = {"init_mean": 5e-7, "init_std": 1e-6, "init_bias": 1e-6}


class ValueHead(nnx.Module):
  """`v_head.summary`: Linear(D -> 1) in float32, initialised near zero."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, init_std: float = 1e-3, init_mean: float = 0.0,
               init_bias: float = 0.0):
    # float32 whatever `param_dtype` (as the official ValueHead): D + 1 numbers, and every PPM value goes through them.
    kernel = init_mean + init_std * jax.random.normal(rngs.params(), (config.hidden_size, 1), jnp.float32)
    self.kernel = nnx.Param(kernel, logical_axes=("embed", None))
    self.bias = nnx.Param(jnp.full((1,), init_bias, jnp.float32), logical_axes=(None,))

  def __call__(self, hidden: jax.Array) -> jax.Array:
    """`hidden [..., D]` -> `[...]` float32."""
    out = jnp.einsum("...D,DO->...O", hidden.astype(jnp.float32), self.kernel[...].astype(jnp.float32))
    return (out + self.bias[...].astype(jnp.float32))[..., 0]


class PPM(nnx.Module):
  """`PPM(config)(tokens, positions, input_mask) -> [B]` raw value at each row's last real token."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, remat: bool = False, scan_layers: bool = True):
    self.config = config
    self.model = Qwen2Model(config, rngs=rngs, remat=remat, scan_layers=scan_layers)
    self.value_head = ValueHead(config, rngs=rngs)

  def __call__(self, tokens: jax.Array, positions: jax.Array, input_mask: jax.Array, *, dropout_rate: float = 0.0,
               dropout_keys: jax.Array | None = None) -> jax.Array:
    """`tokens, positions [B, T]`, `input_mask [B, T]` -> `[B]` float32.

    `dropout_rate > 0` drops elements of the hidden state read by the head (the official training-time
    `v_head.dropout`, kept ones scaled by `1 / (1 - rate)`), with the mask drawn from `dropout_keys [B]`, one key per
    row; the official head drops at every position, but only the last real token's value is read.
    """
    hidden, _ = self.model(tokens, positions, input_mask)  # [B, T, D]
    last = jnp.take_along_axis(hidden, last_token_index(input_mask)[:, None, None], axis=1)[:, 0]  # [B, D]
    if not 0.0 <= dropout_rate < 1.0:  # kept units are scaled by 1 / (1 - rate)
      raise ValueError(f"PPM dropout_rate must be in [0, 1), got {dropout_rate}")
    if dropout_rate > 0.0:
      if dropout_keys is None:
        raise ValueError("PPM dropout_rate > 0 needs dropout_keys, one PRNG key per row")
      rows = tokens.shape[0]
      # Typed keys are [B], raw uint32 keys [B, 2]; fewer keys broadcast one mask to every row, unlike nn.Dropout.
      typed = jnp.issubdtype(jnp.asarray(dropout_keys).dtype, jax.dtypes.prng_key)
      if jnp.ndim(dropout_keys) != (1 if typed else 2) or jnp.shape(dropout_keys)[0] != rows:
        raise ValueError(f"PPM dropout_keys must hold one PRNG key per row ({rows}), got shape "
                         f"{jnp.shape(dropout_keys)}")
      keep = dropout_keep_mask(dropout_keys, dropout_rate, last.shape[-1])
      last = jnp.where(keep, last.astype(jnp.float32) / (1.0 - dropout_rate), 0.0)
    return self.value_head(last)

  def token_values(self, tokens: jax.Array, positions: jax.Array, input_mask: jax.Array) -> jax.Array:
    """Value at every position `[B, T]` (the head applied to each hidden state)."""
    hidden, _ = self.model(tokens, positions, input_mask)
    return self.value_head(hidden)
