"""A batch of search trees as one frozen dataclass of fixed-shape arrays (mctx style).

Letters: `B` trees, `N` nodes per tree (the node budget), `A` children per node (the number of
candidates sampled per expansion). Node 0 is the root; new nodes take the next free ids, so node ids
are allocation order and children of one expansion are contiguous. Node text, code and observations
live host-side in lists indexed by the same ids (see `driver.py`).

Q(s) = value_sum / visits (0 when unvisited). Visits and value sums only change through the backups
of `kernels.expand_and_backup`; selection itself never adds visits (DESIGN §1.2: both the official
code and the paper count a visit when a value is backed up).
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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Tree:
  """State of `B` trees. Shapes: `B` = batch, `N` = node budget, `A` = branching."""
  parent: jax.Array              # [B, N] int32, NO_PARENT for the root and unused slots
  children: jax.Array            # [B, N, A] int32, NO_CHILD where absent
  visits: jax.Array              # [B, N] int32
  value_sum: jax.Array           # [B, N] float32
  ppm_value: jax.Array           # [B, N] float32, NaN when the node was not scored
  terminal: jax.Array            # [B, N] bool
  terminal_reason: jax.Array     # [B, N] int32 (`Reason`)
  depth: jax.Array               # [B, N] int32
  consecutive_errors: jax.Array  # [B, N] int32
  num_nodes: jax.Array           # [B] int32, allocated nodes (root included)
  cursor: jax.Array              # [B] int32, node the running rollout continues from; NO_NODE: none
  rollouts: jax.Array            # [B] int32, rollouts begun
  rollout_budget: jax.Array      # [B] int32, rollouts this tree may run
  path: jax.Array                # [B, L] int32, the running rollout's descent: path[d] = its node at depth d
  out_of_nodes: jax.Array        # [B] bool, an expansion did not fit the node budget (tree stopped)
  seed: jax.Array                # [B] uint32, per-tree seed (the `paper` preset's random tie-breaks)

  @property
  def batch_size(self) -> int:
    return self.parent.shape[0]

  @property
  def num_slots(self) -> int:
    """The node budget `N`."""
    return self.parent.shape[1]

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
    return jnp.where(self.visits > 0, self.value_sum / jnp.maximum(self.visits, 1), 0.0)


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
  """
  if max_depth < 0:
    raise ValueError(f"max_depth must be >= 0, got {max_depth}")
  if num_slots < 1 + num_actions:
    raise ValueError(f"num_slots={num_slots} cannot hold the root and one expansion of {num_actions}")
  b, n, a = batch_size, num_slots, num_actions
  seeds = np.zeros([b], np.uint32) if seeds is None else np.asarray(seeds, np.uint32)
  if seeds.shape != (b,):
    raise ValueError(f"seeds must have shape [{b}], got {seeds.shape}")
  return Tree(
      parent=jnp.full([b, n], NO_PARENT, jnp.int32),
      children=jnp.full([b, n, a], NO_CHILD, jnp.int32),
      visits=jnp.zeros([b, n], jnp.int32),
      value_sum=jnp.zeros([b, n], jnp.float32),
      ppm_value=jnp.full([b, n], jnp.nan, jnp.float32),
      terminal=jnp.zeros([b, n], jnp.bool_),
      terminal_reason=jnp.zeros([b, n], jnp.int32),
      depth=jnp.zeros([b, n], jnp.int32),
      consecutive_errors=jnp.zeros([b, n], jnp.int32),
      num_nodes=jnp.ones([b], jnp.int32),
      cursor=jnp.full([b], NO_NODE, jnp.int32),
      rollouts=jnp.zeros([b], jnp.int32),
      rollout_budget=jnp.broadcast_to(jnp.asarray(rollout_budget, jnp.int32), [b]),
      path=jnp.zeros([b, max_depth + 1], jnp.int32),
      out_of_nodes=jnp.zeros([b], jnp.bool_),
      seed=jnp.asarray(seeds, jnp.uint32),
  )
