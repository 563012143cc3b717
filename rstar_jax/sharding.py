"""Meshes, the one logical-axis rules table, and parameter/activation shardings.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters sharded over it, ZeRO-3 style) and
`tensor` (Megatron-style: heads and MLP width split). Models only name logical axes (`rstar_jax.models.axes`); this
module is the one place that maps them onto the mesh, so single-device CPU is the same code with a 1x1x1 mesh.

Illegal splits: a dim is split only when its size divides by the product of its mesh axes. Qwen2.5-Math-1.5B has
2 kv heads, so `tensor` = 4 cannot split `kv_heads`; by default that dim is replicated with a logged warning
(`strict=True` raises instead). A mesh axis is used at most once per array: the first dim that claims it wins
(so activations `[batch, length, embed]` put `fsdp` on batch, not on embed).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rstar_jax.models import axes as logical_axes

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (in order of preference). The one table; a caller overrides it with the `rules` argument
# (load_qwen2 / load_ppm / load_model, Engine, state_shardings, make_train_step); the trainers always use this one.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", ()),
    ("kv_length", ()),
    ("layers", ()),
    ("vocab", ("tensor",)),
    ("embed", ("fsdp",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", ()),
    ("mlp", ("tensor",)),
)

Rules = Sequence[tuple[str, Sequence[str]]]
T = TypeVar("T")


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A `(data, fsdp, tensor)` mesh; one of the sizes may be -1 to take the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  for axis, size in zip(MESH_AXES, sizes):
    # numpy's reshape would take 0 (an empty mesh) or another negative size (it fills -2 in like -1) without a word.
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
      raise ValueError(f"mesh axis {axis} must be an integer >= 1 or -1 (the remaining devices), got {size!r}")
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into data={data} fsdp={fsdp} tensor={tensor}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) > len(devices):
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs {math.prod(sizes)} devices; "
                     f"{len(devices)} available")
  if jax.process_count() > 1 and math.prod(sizes) != len(devices):
    # A smaller mesh would hold only the first processes' devices, and the others could place nothing on it.
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} must use all {len(devices)} devices "
                     f"of the {jax.process_count()} processes")
  grid = np.asarray(devices[:math.prod(sizes)], dtype=object).reshape(sizes)
  return Mesh(grid, MESH_AXES)


def _check_rules(table: Mapping[str, Sequence[str]], mesh: Mesh) -> None:
  """Raises for a rule that names no mesh axis this module or `mesh` knows, or names one twice.

  Without the check such a rule (a typo, or a bare string such as `("vocab", "tensor")`, whose letters would be read
  as axis names) silently replicates every dim it maps, as if the axis had size 1.
  """
  if not isinstance(mesh, Mesh):  # sizes as TrainConfig.mesh takes them failed as "no attribute 'axis_names'"
    raise TypeError(f"mesh must be a jax.sharding.Mesh (make_mesh(data, fsdp, tensor) builds one), got "
                    f"{type(mesh).__name__} {mesh!r:.60}")
  known = tuple(dict.fromkeys(MESH_AXES + tuple(mesh.axis_names)))
  for name, mesh_axes in table.items():
    if isinstance(mesh_axes, str):
      raise ValueError(f"rule for logical axis {name!r}: expected a sequence of mesh axis names, got the string "
                       f"{mesh_axes!r} (write ({mesh_axes!r},))")
    unknown = [a for a in mesh_axes if a not in known]
    if unknown:
      raise ValueError(f"rule for logical axis {name!r} names unknown mesh axes {unknown}; known: {list(known)}")
    if len(set(mesh_axes)) != len(tuple(mesh_axes)):
      raise ValueError(f"rule for logical axis {name!r} names a mesh axis twice: {tuple(mesh_axes)}")


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES,
                    strict: bool = False, what: str = "array") -> PartitionSpec:
  """Maps logical `names` of an array of `shape` to a `PartitionSpec` on `mesh` (see the module docstring)."""
  if len(names) != len(shape):
    raise ValueError(f"{what}: logical axes {tuple(names)} do not match shape {tuple(shape)}")
  table: Mapping[str, Sequence[str]] = dict(rules)
  _check_rules(table, mesh)
  used: set[str] = set()
  spec: list[str | tuple[str, ...] | None] = []
  for name, size in zip(names, shape):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise KeyError(f"{what}: logical axis {name!r} has no rule; known: {sorted(table)}")
    mesh_axes = tuple(a for a in table[name] if a not in used and mesh.shape.get(a, 1) > 1)
    split = math.prod(mesh.shape[a] for a in mesh_axes)
    if mesh_axes and size % split:
      message = (f"{what}: cannot split logical axis {name!r} of size {size} over mesh axes {mesh_axes} "
                 f"(size {split}); replicating it")
      if strict:
        raise ValueError(message.replace("; replicating it", ""))
      log.warning(message)
      mesh_axes = ()
    used.update(mesh_axes)
    spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return PartitionSpec(*spec)


def named_sharding(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES,
                   strict: bool = False, what: str = "array") -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules, strict, what))


def _path_name(path: Iterable) -> str:
  return ".".join(str(getattr(p, "key", p)) for p in path)


def param_shardings(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES, strict: bool = False) -> nnx.State:
  """The `NamedSharding` of every parameter, from its `logical_axes` metadata; same tree as `nnx.state(model)`.

  Works on an abstract model from `nnx.eval_shape` (nothing is allocated).
  """
  state = nnx.state(model)

  def sharding_of(path, var):
    names = var.get_metadata().get("logical_axes")
    shape = var.get_value().shape
    if names is None:  # e.g. scalar bookkeeping variables: replicate
      return NamedSharding(mesh, PartitionSpec())
    return named_sharding(names, shape, mesh, rules, strict, what=_path_name(path))

  return jax.tree.map_with_path(sharding_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES, strict: bool = False) -> nnx.Module:
  """Places every parameter of `model` with its sharding (in place) and returns the model."""
  shardings = param_shardings(model, mesh, rules, strict)
  state = nnx.state(model)
  placed = jax.tree.map(lambda v, s: jax.device_put(v, s), nnx.to_pure_dict(state), nnx.to_pure_dict(shardings))
  nnx.replace_by_pure_dict(state, placed)
  nnx.update(model, state)
  return model


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Within the block (at trace time), model activations tagged with logical names get sharding constraints."""
  def resolve(names, shape):
    return named_sharding(names, shape, mesh, rules, what="activation")
  with logical_axes.logical_resolver(resolve):
    yield


def cache_sharding(mesh: Mesh, cache_shape: Sequence[int], rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """Sharding of one layer's `KVCache.k` / `.v` buffer `[B, K, S, H]`."""
  return named_sharding(("batch", "kv_heads", "kv_length", "head_dim"), cache_shape, mesh, rules, what="kv cache")


def host_value(tree):
  """`tree`'s arrays as numpy, whole, on this host (`jax.device_get` where a mesh spans several processes).

  An array split over other processes' devices is gathered (`process_allgather`): a collective, so in a multi-process
  run every process must make the same calls in the same order, as it does for the jitted programs themselves.
  """
  def whole(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return multihost_utils.process_allgather(x, tiled=True)
    return x
  return jax.device_get(jax.tree.map(whole, tree))


def on_process_zero(where: str, what: str, work: Callable[[], None]) -> None:
  """Runs `work` (writing files) on process 0 only; in a multi-process run no process returns before it is done, and
  its failure is raised on every process (the others raise an OSError naming `where` and `what`).

  Collective: every process calls it at the same point. A plain barrier after the write hung: a process 0 that failed
  raised while the others waited for it in the barrier (or the next collective), and it waited for them in the
  distributed shutdown.
  """
  error = None
  if jax.process_index() == 0:
    try:
      work()
    except Exception as e:  # pylint: disable=broad-except  (raised below, once every process knows)
      error = e
  if jax.process_count() > 1:
    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      raise OSError(f"{where}: process 0 could not {what} (its error names the cause)")
  if error is not None:
    raise error


def on_every_process(where: str, what: str, work: Callable[[], T]) -> T:
  """Runs `work` (reading files) on every process and returns its value; in a multi-process run a failure on any
  process is raised on every process (the failed ones raise their own error, the others a RuntimeError naming `where`,
  `what` and the failed processes).

  Collective: every process calls it at the same point, and `work` itself makes no collective call. A process whose
  own copy of a file was bad raised on its own while the others waited for it in their next collective (forever, on
  CPU); then it waited for them in the distributed shutdown.
  """
  error, value = None, None
  try:
    value = work()
  except Exception as e:  # pylint: disable=broad-except  (raised below, once every process knows)
    error = e
  if jax.process_count() > 1:
    failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None))).reshape(-1)
    if failed.any() and error is None:
      raise RuntimeError(f"{where}: processes {np.flatnonzero(failed).tolist()} could not {what} (their errors name "
                         "the cause)")
  if error is not None:
    raise error
  return value


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Multi-host start-up: `jax.distributed.initialize` (arguments auto-detected on Cloud TPU when omitted)."""
  if num_processes == 1:
    return
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
