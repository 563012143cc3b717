"""Logical axis names: how models name the dimensions of their weights and activations.

Models never see the mesh. They tag each parameter with `logical_axes` metadata and call `constrain(x, names)` on key
activations. `rstar_jax.sharding` installs a (mesh, rules) pair with `activation_sharding(...)`; outside that context
`constrain` is the identity, so the same model runs unsharded on one device.

Names used by the Qwen2 model:
  batch, length, kv_length        activations
  embed (D), mlp (F), vocab (V)   widths
  heads (N), kv_heads (K), head_dim (H)
  layers (L)                      the leading axis of stacked (scanned) decoder-layer weights
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Sequence

import jax

LogicalAxes = tuple[str | None, ...]

# A function mapping (logical names, shape) to a `jax.sharding.Sharding`, installed by the sharding module.
Resolver = Callable[[LogicalAxes, tuple[int, ...]], jax.sharding.Sharding]
_RESOLVER: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar("rstar_jax_logical_resolver",
                                                                            default=None)


@contextlib.contextmanager
def logical_resolver(resolver: Resolver):
  """Within the block, `constrain` applies `resolver(names, shape)` as a sharding constraint."""
  token = _RESOLVER.set(resolver)
  try:
    yield
  finally:
    _RESOLVER.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Annotates activation `x` with logical axis `names` (identity when no mesh rules are installed)."""
  resolver = _RESOLVER.get()
  if resolver is None:
    return x
  if len(names) != x.ndim:
    raise ValueError(f"logical axes {tuple(names)} do not match an activation of shape {x.shape}")
  return jax.lax.with_sharding_constraint(x, resolver(tuple(names), tuple(x.shape)))
