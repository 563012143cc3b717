"""Jitted tree kernels: `select`, `expand_and_backup` and their fusion `expand_and_select` (pure).

Letters: `B` trees, `N` nodes, `A` children per node, `L` path length (max_depth + 1). The kernels
donate the incoming `Tree`, keep fixed shapes and compile once per (B, N, A, L, rule).

Per-tree logic (`uct_scores`, `_pick`, `_add_children`) is written for one tree and vmapped;
loops run over the whole batch and write only through per-tree scatters (`_batch_set`), so a loop
step costs O(B * A), never O(B * N). Per-node fields are packed rows (`Tree.node_info`,
`Tree.node_stats`): an expansion writes its children's rows with one scatter per array, and a
selection step reads a child's visits and value sum with one gather. Backup needs no loop at all:
the running rollout's descent is kept in `Tree.path`, so the ancestors of an expanded node are
`path[0..depth]`, updated with one scatter-add of (visits, value) rows.

Two implementations give identical trees and selections (`impl`, static): the XLA operations of this module (every
platform) and, on the CPU, one XLA FFI custom call in C++ (`rstar_jax.search.native`; both presets, the `paper`
tie-breaks drawn with the same threefry bits as `jax.random`), which does the same per-tree work without XLA:CPU's
fixed cost per operation (~96 operations per simulation here). "auto" picks the native call where it can run.

Selection (DESIGN §1.2). A rollout starts at the root and descends: at a node with children it moves
to the best non-terminal child by UCT `Q(s) + c * sqrt(ln N(parent) / N(s))`; a node whose children
are all terminal becomes terminal (`ALL_CHILDREN_TERMINAL`) and the rollout ends; a terminal node
ends it too; an unexpanded node is returned for expansion. After the host expands it, the next
`select` continues the same rollout from that node (the tree's `cursor`), as the official code does
by descending into the fresh children. When a rollout ends, the next one starts from the root in the
same call, until the tree's `rollout_budget` rollouts have begun or the root is terminal.

The two presets differ only in how a child is scored and how ties break:

| rule                     | `official` (released code)             | `paper` (our reading of the paper)          |
| ------------------------ | -------------------------------------- | ------------------------------------------- |
| child with N(s) = 0      | exploration term 0, so UCT = Q = 0     | UCT = +inf: unvisited children go first     |
| parent with N(parent)=0  | exploration term 0                     | exploration term 0 (ln taken of max(N, 1))  |
| ties                     | the first child (child order)          | uniformly random among the tied children,   |
|                          |                                        | seeded by (tree seed, rollout, node)        |
| terminal children        | skipped                                | skipped                                     |

Scores are float32 (the official `puct` computes in float64): two children whose scores differ only past float32's
precision tie here and the preset's tie rule picks one: `official` the first child, `paper` a random one (rare: e.g.
N(parent) = 59 with children at (N, value sum) = (5, -3) and (47, 29), 3.5e-8 apart in float64).

Backup (`expand_and_backup`): every new child may carry a value with one of two scopes, decided on
the host by `rules.leaf_update` from the search mode and preset: `self` (visits +1 and value_sum +v
on the child only) or `path` (the same on the child and on every ancestor up to the root).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rstar_jax.search import native
from rstar_jax.search.tree import NO_CHILD, NO_NODE, ROOT_INDEX, Info, Reason, Stats, Tree

PRESETS = ("official", "paper")
IMPLS = ("auto", "xla", "native")  # `expand_and_select`'s implementations
# |c| bound: c * sqrt(ln N / n) <= 1e30 * sqrt(ln 2**24) stays far inside float32 for every visit count float32
# holds exactly.
MAX_ABS_C = 1e30


@dataclasses.dataclass(frozen=True)
class SelectionRule:
  """Static selection settings (hashable: a jit static argument).

  Attributes:
    preset: "official" or "paper" (see the module docstring).
    c: exploration constant (rStar: 2).
  """
  preset: str = "official"
  c: float = 2.0

  def __post_init__(self):
    if self.preset not in PRESETS:
      raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
    if isinstance(self.c, bool) or not isinstance(self.c, numbers.Real):
      # Before math.isfinite, whose "must be real number, not str" named nothing; True ran as c = 1.
      raise TypeError(f"SelectionRule.c must be a number, got {self.c!r}")
    if not math.isfinite(self.c):  # a NaN score ties with nothing; `paper` would then pick slot 0, even a terminal
      raise ValueError(f"c must be finite, got {self.c}")
    if abs(self.c) > MAX_ABS_C:
      # Scores are float32: a larger c overflows there (1e39 is inf in float32), and inf * sqrt(ln 1) is NaN.
      raise ValueError(f"c must be at most {MAX_ABS_C:g} in magnitude (UCT scores are float32, and c * sqrt(ln N / n) "
                       f"must stay finite), got {self.c}")


class SelectOutput(NamedTuple):
  """What the host reads after `select` (the only per-step device -> host transfer)."""
  node: jax.Array     # [B] int32, node to expand, NO_NODE when the tree has finished
  rollout: jax.Array  # [B] int32, index of the rollout that expands it (for seeding)
  steps: jax.Array    # [] int32, descent loop steps this call ran (the longest descent of the batch)


def uct_scores(n_child: jax.Array, w_child: jax.Array, selectable: jax.Array, n_parent: jax.Array,
               rule: SelectionRule) -> jax.Array:
  """UCT scores of one node's children (unbatched).

  Args:
    n_child: `[A]` visits of the children.
    w_child: `[A]` value sums of the children.
    selectable: `[A]` True for an existing, non-terminal child.
    n_parent: scalar visits of the node.
    rule: selection settings.

  Returns:
    `[A]` float32 scores, -inf where not selectable.
  """
  q = jnp.where(n_child > 0, w_child / jnp.maximum(n_child, 1), 0.0)
  ln_parent = jnp.log(jnp.maximum(n_parent, 1).astype(jnp.float32))
  explore = rule.c * jnp.sqrt(ln_parent / jnp.maximum(n_child, 1).astype(jnp.float32))
  if rule.preset == "official":
    explore = jnp.where((n_parent > 0) & (n_child > 0), explore, 0.0)
  else:
    explore = jnp.where(n_child == 0, jnp.inf, explore)
  return jnp.where(selectable, q + explore, -jnp.inf)


def tie_break_key(seed: jax.Array, rollout: jax.Array, node: jax.Array) -> jax.Array:
  """The `paper` preset's tie-break key at `node` during `rollout` of a tree with `seed`."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), rollout), node)


def _pick(scores: jax.Array, selectable: jax.Array, seed: jax.Array, rollout: jax.Array,
          node: jax.Array, rule: SelectionRule) -> jax.Array:
  """Index (in `[A]`) of the best child of one node under the preset's tie rule (unbatched)."""
  if rule.preset == "official":
    return jnp.argmax(scores)  # the first maximum: ties go to the first child
  tied = selectable & (scores == jnp.max(scores))
  draws = jax.random.uniform(tie_break_key(seed, rollout, node), scores.shape)
  return jnp.argmax(jnp.where(tied, draws, -1.0))


def _take(x: jax.Array, index: jax.Array) -> jax.Array:
  """`x[b, index[b, ...]]` for every tree: `[B, N]` and `[B]` or `[B, K]` int -> `[B]` / `[B, K]`."""
  if index.ndim == 1:
    return jnp.take_along_axis(x, index[:, None], axis=1)[:, 0]
  return jnp.take_along_axis(x, index, axis=1)


def _flat_index(index: jax.Array, num_slots: int) -> jax.Array:
  """Row `index[b, ...]` of tree b as a row of the flattened `[B * N, ...]` array; out of `[0, N)` -> `B * N`."""
  batch = index.shape[0]
  tree_start = (jnp.arange(batch, dtype=jnp.int32) * num_slots).reshape((batch,) + (1,) * (index.ndim - 1))
  return jnp.where((index >= 0) & (index < num_slots), tree_start + index, batch * num_slots)


def _flat(x: jax.Array) -> jax.Array:
  """`[B, N, ...]` -> `[B * N, ...]` (a free reshape)."""
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _take_window(x: jax.Array, start: jax.Array, size: int) -> jax.Array:
  """`x[b, start[b]:start[b] + size]` for every tree: `[B, N, ...]`, `[B]` -> `[B, size, ...]`.

  One contiguous window per tree (a gather of B slices, not of B * size elements); the caller keeps windows in
  range (dynamic slicing would shift one that is not).
  """
  return jax.vmap(lambda row, i: jax.lax.dynamic_slice_in_dim(row, i, size))(x, start)


def _node_rows(x: jax.Array, node: jax.Array) -> jax.Array:
  """Row `x[b, node[b]]` of every tree: `[B, N, ...]`, `[B]` -> `[B, ...]`."""
  return _take_window(x, node, 1)[:, 0]


def _batch_set(x: jax.Array, value: jax.Array, index: jax.Array) -> jax.Array:
  """`x[b, index[b]] = value[b]`; an out-of-range index (N) leaves row b unchanged."""
  return jax.vmap(lambda row, v, i: row.at[i].set(v, mode="drop"))(x, value, index)


def _batch_set_column(x: jax.Array, column: int, value: jax.Array, index: jax.Array) -> jax.Array:
  """`x[b, index[b], column] = value[b]` for packed rows `x [B, N, k]`; an index of N leaves row b unchanged."""
  return jax.vmap(lambda row, v, i: row.at[i, column].set(v, mode="drop"))(x, value, index)


def _batch_add(x: jax.Array, value: jax.Array, index: jax.Array) -> jax.Array:
  """`x[b, index[b]] += value[b]` (index `[B]` or `[B, K]`, value shaped as `x[b, index[b]]`); an index out of
  `[0, N)` is dropped.

  One scatter-add into the flattened `[B * N, ...]` array with one row index per update. The vmapped form (a
  scatter per tree) makes XLA:CPU build (tree, node) index pairs, which took longer than the path backup's update
  itself (benchmarks/RESULTS.md, search).
  """
  return _flat(x).at[_flat_index(index, x.shape[1])].add(value, mode="drop").reshape(x.shape)


def _fields(tree: Tree) -> dict[str, jax.Array]:
  # A shallow field dict (dataclasses.asdict would deep-copy the arrays).
  return {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}


class _Descent(NamedTuple):
  """Loop state of `select`, batched over trees (the big arrays only change through scatters)."""
  steps: jax.Array         # [] int32, loop steps so far
  node: jax.Array          # [B] int32, current node; NO_NODE: the next rollout must start
  depth: jax.Array         # [B] int32, depth of `node`
  rollouts: jax.Array      # [B] int32
  info: jax.Array          # [B, N, 4] int32, `Tree.node_info` (selection writes terminal reasons)
  dead_end: jax.Array      # [B] int32, node found with all children terminal, still to be marked (N: none)
  root_terminal: jax.Array  # [B] bool, the root is terminal (no rollout can start)
  path: jax.Array          # [B, L] int32
  selected: jax.Array      # [B] int32
  out_of_nodes: jax.Array  # [B] bool
  done: jax.Array          # [B] bool


@functools.partial(jax.jit, static_argnames=("rule", "host_output", "impl"), donate_argnums=(0,))
def select(tree: Tree, rule: SelectionRule, host_output: bool = False, impl: str = "auto"
           ) -> tuple[Tree, SelectOutput]:
  """Runs every tree's descent to its next node to expand.

  One loop step moves every still-descending tree down one level and already looks at the child it
  moved to, so a rollout that continues from its cursor takes one step. Trees that are done wait
  while the others go on. The host must only create non-terminal nodes of depth < L (the step
  protocol's max_depth rule); the path buffer has no room below that.

  Args:
    tree: the batch of trees (donated).
    rule: selection settings (static).
    host_output: place `SelectOutput.node` and `.rollout` in host memory (static; see `_select_output`).
    impl: "auto", "xla" or "native" (static; see `expand_and_select`).

  Returns:
    The updated trees (terminal marks, cursors, paths, rollout counts) and `SelectOutput`.
  """
  return _expand_and_select(tree, None, rule, host_output, impl)


def _select_xla(tree: Tree, rule: SelectionRule) -> tuple[Tree, jax.Array, jax.Array, jax.Array]:
  """`select` as XLA operations: `(tree, selected node [B], its rollout index [B], loop steps [])`."""
  num_slots, num_actions, path_length = tree.num_slots, tree.num_actions, tree.path_length
  scores_fn = jax.vmap(functools.partial(uct_scores, rule=rule))
  pick_fn = jax.vmap(functools.partial(_pick, rule=rule))
  fits = tree.num_nodes + num_actions <= num_slots  # [B], fixed during a descent

  def mark_dead_ends(info, nodes):
    return _batch_set_column(info, Info.REASON, jnp.full_like(nodes, int(Reason.ALL_CHILDREN_TERMINAL)), nodes)

  def body(s: _Descent) -> _Descent:
    # The previous step's dead end is marked before this step reads the node rows: written after the reads, the
    # array would have to be copied (XLA re-reads it in fusions it may schedule after the write).
    info = mark_dead_ends(s.info, s.dead_end)
    live = ~s.done
    is_new = live & (s.node == NO_NODE)
    # Carried, not read from `info`: that read is a strided [B] slice, and XLA repeats it in every fusion that uses
    # `start` (the root only becomes terminal through a dead-end mark).
    root_terminal = s.root_terminal | (s.dead_end == ROOT_INDEX)
    start = is_new & (s.rollouts < tree.rollout_budget) & ~root_terminal
    rollouts = s.rollouts + start.astype(jnp.int32)
    node = jnp.where(start, ROOT_INDEX, s.node)
    depth = jnp.where(start, 0, s.depth)
    active = live & (node != NO_NODE)
    safe = jnp.maximum(node, 0)
    at_terminal = active & (_node_rows(info, safe)[:, Info.REASON] != Reason.NONE)
    children = _node_rows(tree.children, safe)  # [B, A]
    unexpanded = active & ~at_terminal & (children[:, 0] == NO_CHILD)
    descend = active & ~at_terminal & (children[:, 0] != NO_CHILD)
    kids = jnp.maximum(children, 0)
    # A node's children are the ids [first, first + count), so their rows are the window [first, first + A)
    # (the rows past `count` belong to other nodes and are masked); expansions only happen with A free slots.
    first = kids[:, 0]
    kid_reason = _take_window(info, first, num_actions)[..., Info.REASON]  # [B, A]
    selectable = (children != NO_CHILD) & (kid_reason == Reason.NONE)
    kid_stats = _take_window(tree.node_stats, first, num_actions)  # [B, A, 2]
    scores = scores_fn(kid_stats[..., Stats.VISITS], kid_stats[..., Stats.VALUE_SUM], selectable,
                       _node_rows(tree.node_stats, safe)[:, Stats.VISITS])
    best = _take(children, pick_fn(scores, selectable, tree.seed, rollouts - 1, safe))
    any_selectable = jnp.any(selectable, axis=1)
    dead_end = descend & ~any_selectable
    moved = descend & any_selectable
    # Look at the chosen child in the same step: unexpanded (it is never terminal) -> pick it.
    first_grandchild = _node_rows(tree.children, jnp.maximum(best, 0))[:, 0]
    child_unexpanded = moved & (first_grandchild == NO_CHILD)
    wants = unexpanded | child_unexpanded
    return _Descent(
        steps=s.steps + 1,
        node=jnp.where(live, jnp.where(moved, best, NO_NODE), s.node).astype(jnp.int32),
        depth=depth + moved.astype(jnp.int32),
        rollouts=rollouts,
        info=info,
        dead_end=jnp.where(dead_end, safe, num_slots),
        root_terminal=root_terminal,
        path=_batch_set(s.path, best, jnp.where(moved, depth + 1, path_length)),
        selected=jnp.where(wants & fits, jnp.where(unexpanded, safe, best), s.selected
                           ).astype(jnp.int32),
        out_of_nodes=s.out_of_nodes | (wants & ~fits),
        done=s.done | (is_new & ~start) | wants,
    )

  init = _Descent(
      steps=jnp.int32(0), node=tree.cursor,
      depth=_node_rows(tree.node_info, jnp.maximum(tree.cursor, 0))[:, Info.DEPTH],
      rollouts=tree.rollouts, info=tree.node_info, dead_end=jnp.full_like(tree.cursor, num_slots),
      root_terminal=tree.node_info[:, ROOT_INDEX, Info.REASON] != Reason.NONE,
      path=tree.path,
      selected=jnp.full_like(tree.cursor, NO_NODE), out_of_nodes=tree.out_of_nodes,
      done=tree.out_of_nodes)
  out = jax.lax.while_loop(lambda s: jnp.any(~s.done), body, init)
  # No mark is pending here: a tree that found a dead end is not done, so the loop marks it in one more step.
  new = dataclasses.replace(tree, node_info=out.info, path=out.path,
                            cursor=out.selected, rollouts=out.rollouts,
                            out_of_nodes=out.out_of_nodes)
  return new, out.selected, out.rollouts - 1, out.steps


def _select_output(node: jax.Array, rollout: jax.Array, steps: jax.Array, host_output: bool) -> SelectOutput:
  """`SelectOutput`, with `node` and `rollout` in host memory when `host_output`.

  The host reads those two `[B]` arrays after every call. Written to host memory (pinned) by the call itself, they
  are read with a host copy; left on an accelerator, `np.asarray` pays a separate transfer: 0.16-0.55 ms on one
  H200 against 0.006-0.013 ms (benchmarks/RESULTS.md, search). On the CPU both memories are the host's. Computing
  on such an array outside the kernels works but runs on the host (XLA warns); read it with `np.asarray`.
  """
  if host_output:
    node, rollout = jax.device_put((node, rollout), jax.memory.Space.Host)
  return SelectOutput(node=node, rollout=rollout, steps=steps)


class Expansion(NamedTuple):
  """New children of one expansion per tree; rows with `parent == NO_NODE` are left unchanged.

  Children of a row are its first `count` entries; they take node ids `num_nodes + j`.
  """
  parent: jax.Array              # [B] int32, expanded node or NO_NODE
  count: jax.Array               # [B] int32, new children (1..A)
  terminal_reason: jax.Array     # [B, A] int32 (`Reason`; NONE: not terminal)
  consecutive_errors: jax.Array  # [B, A] int32
  ppm_value: jax.Array           # [B, A] float32, NaN when not scored
  value: jax.Array               # [B, A] float32, the value each child backs up
  update_self: jax.Array         # [B, A] bool, visit+value on the child only
  update_path: jax.Array         # [B, A] bool, visit+value on the child and all its ancestors


def pack_expansion(expansion: Expansion) -> np.ndarray:
  """`expansion` (numpy or array fields) as one `[B, 2 + 6A]` int32 numpy array, for `expand_and_select`.

  Columns: parent, count, then `A` each of terminal_reason, consecutive_errors, update_self, update_path (0/1), and
  the float32 bits of ppm_value and value. One array reaches the device in one transfer where the eight fields take
  eight: on one H200 that is most of what the expansion costs a call (benchmarks/RESULTS.md, search).
  """
  ints = [np.asarray(expansion.parent, np.int32)[:, None], np.asarray(expansion.count, np.int32)[:, None]]
  ints += [np.asarray(getattr(expansion, name), np.int32)
           for name in ("terminal_reason", "consecutive_errors", "update_self", "update_path")]
  bits = [np.asarray(getattr(expansion, name), np.float32).view(np.int32) for name in ("ppm_value", "value")]
  return np.concatenate(ints + bits, axis=1)


def transfer_form(expansion: Expansion) -> Expansion | np.ndarray:
  """A host-built `expansion` in the form `expand_and_select` takes fastest on the default backend.

  On an accelerator, packed (`pack_expansion`): one host-to-device transfer instead of eight. On the CPU, where the
  fields need no transfer, as it is: for the XLA kernels unpacking costs XLA:CPU more operations than it saves (4-6%
  slower per call), and for the native call building the packed array on the host costs more than taking eight
  arrays (0.57 against 0.33 ms per simulation). Measured in benchmarks/RESULTS.md, search.
  """
  return expansion if jax.default_backend() == "cpu" else pack_expansion(expansion)


def _unpack_expansion(packed: jax.Array, num_actions: int) -> Expansion:
  """The `Expansion` that `pack_expansion` packed (inside the jitted call)."""
  if packed.ndim != 2 or packed.shape[1] != 2 + 6 * num_actions or packed.dtype != jnp.int32:
    raise ValueError(f"a packed expansion is int32 [B, 2 + 6A] = [B, {2 + 6 * num_actions}] for these trees (A = "
                     f"{num_actions}), got {packed.dtype} {list(packed.shape)}: build it with pack_expansion")

  def block(k):
    return packed[:, 2 + k * num_actions:2 + (k + 1) * num_actions]

  as_float = functools.partial(jax.lax.bitcast_convert_type, new_dtype=jnp.float32)
  return Expansion(parent=packed[:, 0], count=packed[:, 1], terminal_reason=block(0), consecutive_errors=block(1),
                   ppm_value=as_float(block(4)), value=as_float(block(5)), update_self=block(2) != 0,
                   update_path=block(3) != 0)


def _add_children(tree1: dict, e: dict) -> dict:
  """Writes one tree's new children and their own updates (unbatched; no loops).

  The A new nodes take the contiguous ids `num_nodes + j`, so each packed array gets one scatter of A rows. An
  expansion is only written when all A ids are below N (selection reads a node's children as the window
  `[first child, first child + A)`); `select` never returns a node without that room, and a row that asks for it
  anyway is left unchanged and flagged `out_of_nodes`.
  """
  num_slots, num_actions = tree1["children"].shape
  parent = e["parent"]
  fits = tree1["num_nodes"] + num_actions <= num_slots
  has = (parent != NO_NODE) & fits
  j = jnp.arange(num_actions, dtype=jnp.int32)
  valid = has & (j < e["count"])
  ids = tree1["num_nodes"] + j
  slot = jnp.where(valid, ids, num_slots)  # out of range: dropped by the scatters below
  depth = tree1["node_info"][jnp.maximum(parent, 0), Info.DEPTH] + 1
  info = jnp.stack([jnp.broadcast_to(parent, [num_actions]), jnp.broadcast_to(depth, [num_actions]),
                    e["terminal_reason"], e["consecutive_errors"]], axis=-1)  # [A, 4], columns `Info`
  updated = valid & (e["update_self"] | e["update_path"])
  # [A, 2], columns `Stats`; the slots are unused, so setting = adding to zero
  stats = jnp.stack([updated.astype(jnp.float32), jnp.where(updated, e["value"], 0.0)], axis=-1)
  out = dict(tree1)
  out["node_info"] = tree1["node_info"].at[slot].set(info, mode="drop")
  out["node_stats"] = tree1["node_stats"].at[slot].set(stats, mode="drop")
  out["ppm_value"] = tree1["ppm_value"].at[slot].set(e["ppm_value"], mode="drop")
  out["children"] = tree1["children"].at[jnp.where(has, parent, num_slots)].set(
      jnp.where(valid, ids, NO_CHILD), mode="drop")
  out["num_nodes"] = tree1["num_nodes"] + jnp.where(has, e["count"], 0)
  out["out_of_nodes"] = tree1["out_of_nodes"] | ((parent != NO_NODE) & ~fits)
  return out


@functools.partial(jax.jit, donate_argnums=(0,))
def expand_and_backup(tree: Tree, expansion: Expansion) -> Tree:
  """Adds each tree's new children (`expansion`) and backs up their values.

  `expansion.parent` must be the node `select` returned for that tree (or NO_NODE): its ancestors
  are then `tree.path[0..depth(parent)]`. The path-scoped values of one expansion share those
  ancestors, so their count and sum are added to all of them with one scatter-add. Pass numpy
  arrays: they reach the device as part of this call (cheaper than one transfer per field).

  Args:
    tree: the batch of trees (donated).
    expansion: `[B]` / `[B, A]` arrays (see `Expansion`).

  Returns:
    The updated trees.
  """
  return _expand_and_backup(tree, expansion)


def _expand_and_backup(tree: Tree, expansion: Expansion) -> Tree:
  num_slots, path_length = tree.num_slots, tree.path_length
  fields = jax.vmap(_add_children)(_fields(tree), expansion._asdict())
  along = (jnp.arange(tree.num_actions) < expansion.count[:, None]) & expansion.update_path
  path_count = jnp.sum(along.astype(jnp.int32), axis=1)  # [B]
  path_value = jnp.sum(jnp.where(along, expansion.value, 0.0), axis=1)  # [B]
  has = (expansion.parent != NO_NODE) & (tree.num_nodes + tree.num_actions <= num_slots)  # as `_add_children`
  # Read from the updated field (the parent's depth is unchanged): reading the donated input after its scatter
  # would make XLA copy the whole array first.
  parent_depth = _node_rows(fields["node_info"], jnp.maximum(expansion.parent, 0))[:, Info.DEPTH]
  on_path = has[:, None] & (jnp.arange(path_length)[None, :] <= parent_depth[:, None])  # [B, L]
  index = jnp.where(on_path, tree.path, num_slots)  # [B, L]
  added = jnp.stack([path_count.astype(jnp.float32), path_value], axis=-1)  # [B, 2], columns `Stats`
  fields["node_stats"] = _batch_add(fields["node_stats"], jnp.broadcast_to(added[:, None, :], index.shape + (2,)),
                                    index)
  return Tree(**fields)


@functools.partial(jax.jit, static_argnames=("rule", "host_output", "impl"), donate_argnums=(0,))
def expand_and_select(tree: Tree, expansion: Expansion | jax.Array, rule: SelectionRule, host_output: bool = False,
                      impl: str = "auto") -> tuple[Tree, SelectOutput]:
  """`expand_and_backup` followed by the next `select`, in one device call.

  The host loop's steady state: one dispatch and one small read per iteration instead of two. `expansion` is an
  `Expansion` or its `pack_expansion` array (one transfer instead of eight); `host_output` as in `select`.

  `impl` (static) picks the implementation: "xla" the XLA operations of this module; "native" the C++ custom call
  of `rstar_jax.search.native` when the call runs on the CPU (same trees and selections; raises if the library
  cannot be built, or for the `paper` preset under another PRNG than jax's default threefry2x32); "auto" (default)
  "native" where it can run (the default backend is the CPU, the library built), else "xla". On other platforms
  both lower to the XLA kernels.
  """
  return _expand_and_select(tree, expansion, rule, host_output, impl)


def resolved_impl(rule: SelectionRule, impl: str = "auto", num_actions: int = 1) -> str:
  """"native" or "xla": what `expand_and_select(..., rule, impl=impl)` runs on the default backend for trees of
  `num_actions` children per node."""
  return "native" if _use_native(rule, impl, num_actions) and jax.default_backend() == "cpu" else "xla"


def _use_native(rule: SelectionRule, impl: str, num_actions: int) -> bool:
  """Whether `impl` resolves to the native custom call (at trace time)."""
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl == "xla":
    return False
  prng = jax.config.jax_default_prng_impl
  # The `paper` tie-breaks are `jax.random` draws: the native call computes threefry2x32's, jax's default.
  draws_match = rule.preset == "official" or prng == "threefry2x32"
  fits = num_actions <= native.MAX_ACTIONS  # the call's per-node buffers
  if impl == "auto":
    return draws_match and fits and jax.default_backend() == "cpu" and native.available()
  if not fits:
    raise ValueError(f"impl='native' takes at most {native.MAX_ACTIONS} children per node, got A = {num_actions} "
                     f"(use impl='xla' or 'auto')")
  if not draws_match:
    raise ValueError(f"impl='native' draws the paper preset's tie-breaks with threefry2x32, jax's default PRNG; "
                     f"jax_default_prng_impl is {prng!r} (use impl='xla' or 'auto')")
  if not native.available():
    raise RuntimeError(f"impl='native': the native tree kernels are unavailable ({native.unavailable_reason()})")
  return True


def _expand_and_select(tree: Tree, expansion: Expansion | jax.Array | None, rule: SelectionRule, host_output: bool,
                       impl: str) -> tuple[Tree, SelectOutput]:
  """The body of `select` (`expansion` None) and `expand_and_select`."""
  if expansion is not None and not isinstance(expansion, Expansion):
    expansion = _unpack_expansion(expansion, tree.num_actions)

  def with_xla(tree, expansion):
    return _select_xla(tree if expansion is None else _expand_and_backup(tree, expansion), rule)

  def with_native(tree, expansion):
    return _native_expand_and_select(tree, _no_expansion(tree) if expansion is None else expansion, rule)

  if _use_native(rule, impl, tree.num_actions):
    # Lowered for the CPU, only the native branch reaches the compiler; anywhere else, only the XLA one.
    out = jax.lax.platform_dependent(tree, expansion, cpu=with_native, default=with_xla)
  else:
    out = with_xla(tree, expansion)
  new, node, rollout, steps = out
  return new, _select_output(node, rollout, steps, host_output)


def _no_expansion(tree: Tree) -> Expansion:
  """An expansion that changes no tree (every parent NO_NODE): what `select` alone passes the native call."""
  rows = jnp.zeros(tree.children.shape[::2], jnp.int32)  # [B, A]
  return Expansion(parent=jnp.full_like(tree.cursor, NO_NODE), count=jnp.zeros_like(tree.cursor),
                   terminal_reason=rows, consecutive_errors=rows, ppm_value=rows.astype(jnp.float32),
                   value=rows.astype(jnp.float32), update_self=rows != 0, update_path=rows != 0)


_EXPANSION_DTYPES = (("parent", jnp.int32), ("count", jnp.int32), ("terminal_reason", jnp.int32),
                     ("consecutive_errors", jnp.int32), ("ppm_value", jnp.float32), ("value", jnp.float32),
                     ("update_self", bool), ("update_path", bool))  # the custom call's expansion operands
_ALIASED = ("node_info", "node_stats", "ppm_value", "children", "num_nodes", "cursor", "rollouts", "path",
            "out_of_nodes")  # the tree fields the custom call updates in place, in its operand order


def _native_expand_and_select(tree: Tree, expansion: Expansion, rule: SelectionRule
                              ) -> tuple[Tree, jax.Array, jax.Array, jax.Array]:
  """`_expand_and_backup` + `_select_xla` as the native custom call (CPU only; see `rstar_jax.search.native`)."""
  operands = [getattr(tree, name) for name in _ALIASED] + [tree.rollout_budget, tree.seed] + [
      jnp.asarray(getattr(expansion, name), dtype) for name, dtype in _EXPANSION_DTYPES]
  results = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in operands[:len(_ALIASED)]]
  results += [jax.ShapeDtypeStruct(tree.cursor.shape, jnp.int32), jax.ShapeDtypeStruct((), jnp.int32)]
  call = jax.ffi.ffi_call(native.TARGET, results, input_output_aliases={i: i for i in range(len(_ALIASED))})
  *fields, rollout, steps = call(*operands, c=np.float32(rule.c), paper=rule.preset == "paper",
                                 partitionable=bool(jax.config.jax_threefry_partitionable))
  new = dataclasses.replace(tree, **dict(zip(_ALIASED, fields)))
  return new, new.cursor, rollout, steps
