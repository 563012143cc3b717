"""Train state: step, parameters and optimizer state as one pytree, placed by the logical sharding rules.

Parameters stay an `nnx.State` of `nnx.Param` variables, so the optimizer moments built from them carry the
same `logical_axes` metadata and shard exactly like the parameters (ZeRO-style under `fsdp`). The module
structure (`graphdef`) is static and lives outside the state.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rstar_jax import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # [] int32, optimizer updates applied so far
  params: nnx.State      # nnx.Param variables (fp32 master weights)
  opt_state: optax.OptState


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
  """`(graphdef, params)`; the models keep no state besides parameters, which is checked here."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError(f"model holds non-parameter state {list(nnx.to_flat_state(rest))[:5]}; the trainer "
                     "only checkpoints parameters and optimizer state")
  return graphdef, params


def tree_shardings(tree: Any, mesh: Mesh, rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES) -> Any:
  """A sharding for every leaf: variables with `logical_axes` per the rules, anything else replicated.

  The result has exactly the structure of `tree` (variables keep their type, holding a sharding), so it
  zips with the state in `jax.tree.map`, `jax.device_put` and jit's `out_shardings`.
  """
  replicated = NamedSharding(mesh, PartitionSpec())

  def leaf_sharding(path, x):
    if isinstance(x, nnx.Variable):
      names = x.get_metadata().get("logical_axes")
      shape = x.get_value().shape
      # The path (e.g. `opt_state.0.1.mu.model.layers.self_attn.k_proj.kernel`) names the array in a warning.
      what = jax.tree_util.keystr(path, simple=True, separator=".")
      return x.replace(replicated if names is None else
                       sharding_lib.named_sharding(names, shape, mesh, rules, what=what))
    return replicated

  return jax.tree.map_with_path(leaf_sharding, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_state(params: nnx.State, tx: optax.GradientTransformation) -> TrainState:
  """Shapes and dtypes of the train state for `params` (nothing allocated)."""
  return jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), params)


def state_shardings(params: nnx.State, tx: optax.GradientTransformation, mesh: Mesh,
                    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES) -> TrainState:
  return tree_shardings(abstract_state(params, tx), mesh, rules)


def create_state(params: nnx.State, tx: optax.GradientTransformation, mesh: Mesh,
                 rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES) -> TrainState:
  """Step 0 with freshly initialised optimizer state, every leaf placed by `state_shardings`.

  `params` is donated: its arrays become the state's parameters (they are deleted, and so is the model they came
  from). The jit otherwise copied them, and the model the trainer loaded kept the originals alive for the whole run:
  a fourth weight-sized array beside the weight and the two Adam moments.
  """
  shardings = state_shardings(params, tx, mesh, rules)
  params = jax.device_put(params, shardings.params)
  init = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), out_shardings=shardings,
                 donate_argnums=0)
  return init(params)
