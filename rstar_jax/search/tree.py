"""A batch of search trees as one frozen dataclass of fixed-shape arrays (mctx style).

Letters: `B` trees, `N` nodes per tree (the node budget), `A` children per node (the number of
candidates sampled per expansion). Node 0 is the root; new nodes take the next free ids, so node ids
are allocation order and children of one expansion are contiguous. Node text, code and observations
live host-side in lists indexed by the same ids (`host.HostTree`).

Per-node fields are stored as rows of two arrays, `node_info [B, N, 4]` int32 (parent, depth, terminal
reason, consecutive errors) and `node_stats [B, N, 2]` float32 (visits, value sum), plus `ppm_value
[B, N]`, and read through properties named as the fields (`tree.visits`, ...). Q(s) = value_sum /
visits (0 when unvisited). Visits and value sums only change through the backups of
`kernels.expand_and_backup`; selection itself never adds visits (DESIGN §1.2: both the official code
and the paper count a visit when a value is backed up).
"""

from __future__ import annotations

import dataclasses
import enum

import jax
import jax.numpy as jnp
import numpy as np

ROOT_INDEX = 0
NO_PARENT = -1
NO_CHILD = -1
NO_NODE = -1


class Reason(enum.IntEnum):
  """Why a node is terminal (`Tree.terminal_reason`); names as in the tree JSONL schema."""
  NONE = 0
  ANSWER = 1                 # a final answer (valid terminal)
  TOO_MANY_ERRORS = 2        # `errors_threshold` consecutive code errors
  MAX_DEPTH = 3              # deeper than `max_depth`
  UNPARSABLE = 4             # no usable step
  ALL_CHILDREN_TERMINAL = 5  # set by selection when every child is terminal

  @property
  def label(self) -> str | None:
    return None if self is Reason.NONE else self.name.lower()

  @classmethod
  def from_label(cls, label: str | None) -> "Reason":
    return cls.NONE if label is None else cls[label.upper()]


INVALID_TERMINALS = (Reason.TOO_MANY_ERRORS, Reason.MAX_DEPTH, Reason.UNPARSABLE)


class Info(enum.IntEnum):
  """Columns of `Tree.node_info` (`[B, N, 4]` int32)."""
  PARENT = 0   # NO_PARENT for the root and unused slots
  DEPTH = 1
  REASON = 2   # `Reason`; a node is terminal exactly when its reason is not NONE
  ERRORS = 3   # consecutive code errors on the path ending at the node


class Stats(enum.IntEnum):
  """Columns of `Tree.node_stats` (`[B, N, 2]` float32)."""
  VISITS = 0     # a count, exact in float32 below 2**24
  VALUE_SUM = 1


EMPTY_INFO = (NO_PARENT, 0, int(Reason.NONE), 0)  # an unused slot's (and the fresh root's) `node_info` row
EMPTY_STATS = (0.0, 0.0)  # its `node_stats` row


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Tree:
  """State of `B` trees. Shapes: `B` = batch, `N` = node budget, `A` = branching.

  Per-node fields are packed as rows of `node_info` and `node_stats` (columns: `Info`, `Stats`) and read through
  the properties below (`tree.visits`, `tree.terminal_reason`, ...; they work on a device tree and on one fetched
  with `jax.device_get`). Packing is for speed (benchmarks/RESULTS.md, search): an expansion writes the fields of
  its A new nodes with one scatter of contiguous rows per array instead of one scatter per field, a backup adds a
  visit and a value with one scatter-add, and a selection step reads its A children's rows as one window.
  `ppm_value` stays a plain array: the kernels only write it, and a wider stats row would make every backup and
  selection step move a column they never use.
  """
  node_info: jax.Array           # [B, N, 4] int32, columns `Info`
  node_stats: jax.Array          # [B, N, 2] float32, columns `Stats`
  ppm_value: jax.Array           # [B, N] float32, NaN when the node was not scored
  children: jax.Array            # [B, N, A] int32, NO_CHILD where absent
  num_nodes: jax.Array           # [B] int32, allocated nodes (root included)
  cursor: jax.Array              # [B] int32, node the running rollout continues from; NO_NODE: none
  rollouts: jax.Array            # [B] int32, rollouts begun
  rollout_budget: jax.Array      # [B] int32, rollouts this tree may run
  path: jax.Array                # [B, L] int32, the running rollout's descent: path[d] = its node at depth d
  out_of_nodes: jax.Array        # [B] bool, an expansion did not fit the node budget (tree stopped)
  seed: jax.Array                # [B] uint32, per-tree seed (the `paper` preset's random tie-breaks)

  @property
  def parent(self) -> jax.Array:
    """`[B, N]` int32, NO_PARENT for the root and unused slots."""
    return self.node_info[..., Info.PARENT]

  @property
  def depth(self) -> jax.Array:
    """`[B, N]` int32."""
    return self.node_info[..., Info.DEPTH]

  @property
  def terminal_reason(self) -> jax.Array:
    """`[B, N]` int32 (`Reason`)."""
    return self.node_info[..., Info.REASON]

  @property
  def terminal(self) -> jax.Array:
    """`[B, N]` bool."""
    return self.terminal_reason != Reason.NONE

  @property
  def consecutive_errors(self) -> jax.Array:
    """`[B, N]` int32."""
    return self.node_info[..., Info.ERRORS]

  @property
  def visits(self) -> jax.Array:
    """`[B, N]` int32."""
    return self.node_stats[..., Stats.VISITS].astype(np.int32)

  @property
  def value_sum(self) -> jax.Array:
    """`[B, N]` float32."""
    return self.node_stats[..., Stats.VALUE_SUM]

  @property
  def batch_size(self) -> int:
    return self.node_info.shape[0]

  @property
  def num_slots(self) -> int:
    """The node budget `N`."""
    return self.node_info.shape[1]

  @property
  def num_actions(self) -> int:
    """The branching `A`."""
    return self.children.shape[2]

  @property
  def path_length(self) -> int:
    """`L`: only nodes of depth < L can be expanded (the search's max_depth + 1)."""
    return self.path.shape[1]

  def q(self) -> jax.Array:
    """`[B, N]` float32 Q values (0 for unvisited nodes)."""
    visits = self.node_stats[..., Stats.VISITS]
    return jnp.where(visits > 0, self.value_sum / jnp.maximum(visits, 1), 0.0)


def init_tree(batch_size: int, num_slots: int, num_actions: int, rollout_budget: int | np.ndarray,
              max_depth: int, seeds: np.ndarray | None = None) -> Tree:
  """B trees holding only their root.

  Args:
    batch_size: `B`.
    num_slots: `N`, the node budget of each tree (root included).
    num_actions: `A`, the most children one expansion adds.
    rollout_budget: rollouts per tree, a scalar or `[B]` (0 leaves a row idle, e.g. padding).
    max_depth: the deepest node that may be expanded (the step protocol's max_depth: deeper nodes
      are terminal); sets `L = max_depth + 1`. Selection never enters a node deeper than that.
    seeds: `[B]` per-tree seeds (uint32); zeros when None.

  Raises:
    ValueError: a negative max_depth, num_actions < 1, a node budget without room for one expansion, a rollout
      budget below 0 or of another shape than `[B]`, or seeds not shaped `[B]`.
  """
  if max_depth < 0:
    raise ValueError(f"max_depth must be >= 0, got {max_depth}")
  if num_actions < 1:  # `select` reads every node's first child slot
    raise ValueError(f"num_actions must be >= 1, got {num_actions}")
  budget = np.asarray(rollout_budget)
  if budget.ndim != 0 and budget.shape != (batch_size,):
    raise ValueError(f"rollout_budget must be a scalar or have shape [{batch_size}], got shape {budget.shape}")
  if np.any(budget < 0) or np.any(budget >= 2**31):  # stored as int32: 2**32 + 3 wrapped to 3, 2**31 to < 0
    raise ValueError(f"rollout_budget must be >= 0 (0 leaves a tree idle) and < 2**31 (int32), got {budget}")
  if num_slots < 1 + num_actions:
    raise ValueError(f"num_slots={num_slots} cannot hold the root and one expansion of {num_actions}")
  b, n, a = batch_size, num_slots, num_actions
  seeds = np.zeros([b], np.uint32) if seeds is None else np.asarray(seeds, np.uint32)
  if seeds.shape != (b,):
    raise ValueError(f"seeds must have shape [{b}], got {seeds.shape}")
  return Tree(
      node_info=jnp.tile(jnp.asarray(EMPTY_INFO, jnp.int32), [b, n, 1]),
      node_stats=jnp.tile(jnp.asarray(EMPTY_STATS, jnp.float32), [b, n, 1]),
      ppm_value=jnp.full([b, n], jnp.nan, jnp.float32),
      children=jnp.full([b, n, a], NO_CHILD, jnp.int32),
      num_nodes=jnp.ones([b], jnp.int32),
      cursor=jnp.full([b], NO_NODE, jnp.int32),
      rollouts=jnp.zeros([b], jnp.int32),
      rollout_budget=jnp.broadcast_to(jnp.asarray(budget, jnp.int32), [b]),
      path=jnp.zeros([b, max_depth + 1], jnp.int32),
      out_of_nodes=jnp.zeros([b], jnp.bool_),
      seed=jnp.asarray(seeds, jnp.uint32),
  )
