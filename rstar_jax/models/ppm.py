"""Process preference model: the Qwen2 backbone plus a value head read at the last real token.

The official rStar reward model (`RewardModelWithValueHead`) runs the causal LM, takes the last hidden state (after
the final norm) and applies `v_head.summary`, a `Linear(D, 1)`; the score of a sequence is that value at its last
non-padding token. The raw linear output is what the official code trains; it squashes with `tanh(r / 5)` at search
time, while the paper puts a tanh in the head: `value_transform` below offers both.
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


def value_transform(raw: jax.Array, kind: str = "raw") -> jax.Array:
  """`raw`: the linear head output; "raw" (official training), "tanh" (paper head), "tanh5" (official search)."""
  if kind == "raw":
    return raw
  if kind == "tanh":
    return jnp.tanh(raw)
  if kind == "tanh5":
    return jnp.tanh(raw / 5.0)
  raise ValueError(f"unknown value transform {kind!r}; expected 'raw', 'tanh' or 'tanh5'")


class ValueHead(nnx.Module):
  """`v_head.summary`: Linear(D -> 1) in float32, initialised near zero."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, init_std: float = 1e-3):
    # float32 whatever `param_dtype` (as the official ValueHead): D + 1 numbers, and every PPM value goes through them.
    kernel = init_std * jax.random.normal(rngs.params(), (config.hidden_size, 1), jnp.float32)
    self.kernel = nnx.Param(kernel, logical_axes=("embed", None))
    self.bias = nnx.Param(jnp.zeros((1,), jnp.float32), logical_axes=(None,))

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

  def __call__(self, tokens: jax.Array, positions: jax.Array, input_mask: jax.Array) -> jax.Array:
    hidden, _ = self.model(tokens, positions, input_mask)  # [B, T, D]
    last = jnp.take_along_axis(hidden, last_token_index(input_mask)[:, None, None], axis=1)[:, 0]  # [B, D]
    return self.value_head(last)

  def token_values(self, tokens: jax.Array, positions: jax.Array, input_mask: jax.Array) -> jax.Array:
    """Value at every position `[B, T]` (the head applied to each hidden state)."""
    hidden, _ = self.model(tokens, positions, input_mask)
    return self.value_head(hidden)
