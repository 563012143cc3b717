"""Jitted tree kernels: `select`, `expand_and_backup` and their fusion `expand_and_select` (pure).

Letters: `B` trees, `N` nodes, `A` children per node, `L` path length (max_depth + 1). The kernels
donate the incoming `Tree`, keep fixed shapes and compile once per (B, N, A, L, rule).

Per-tree logic (`uct_scores`, `_pick`, `_add_children`) is written for one tree and vmapped;
loops run over the whole batch and write only through per-tree scatters (`_batch_set`), so a loop
step costs O(B * A), never O(B * N). Backup needs no loop at all: the running rollout's descent is
kept in `Tree.path`, so the ancestors of an expanded node are `path[0..depth]`, updated with one
scatter-add.

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

Backup (`expand_and_backup`): every new child may carry a value with one of two scopes, decided on
the host by `rules.leaf_update` from the search mode and preset: `self` (visits +1 and value_sum +v
on the child only) or `path` (the same on the child and on every ancestor up to the root).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rstar_jax.search.tree import NO_CHILD, NO_NODE, ROOT_INDEX, Reason, Tree

PRESETS = ("official", "paper")


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


def _take_row(x: jax.Array, index: jax.Array) -> jax.Array:
  """`x[b, index[b], :]`: `[B, N, A]`, `[B]` -> `[B, A]`."""
  b, n, a = x.shape
  flat = x.reshape(b, n * a)
  return jnp.take_along_axis(flat, index[:, None] * a + jnp.arange(a)[None, :], axis=1)


def _batch_set(x: jax.Array, value: jax.Array, index: jax.Array) -> jax.Array:
  """`x[b, index[b]] = value[b]`; an out-of-range index (N) leaves row b unchanged."""
  return jax.vmap(lambda row, v, i: row.at[i].set(v, mode="drop"))(x, value, index)


def _batch_add(x: jax.Array, value: jax.Array, index: jax.Array) -> jax.Array:
  """`x[b, index[b]] += value[b]` (index and value `[B]` or `[B, K]`); index N is dropped."""
  return jax.vmap(lambda row, v, i: row.at[i].add(v, mode="drop"))(x, value, index)


def _fields(tree: Tree) -> dict[str, jax.Array]:
  # A shallow field dict (dataclasses.asdict would deep-copy the arrays).
  return {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}


class _Descent(NamedTuple):
  """Loop state of `select`, batched over trees (the big arrays only change through scatters)."""
  steps: jax.Array         # [] int32, loop steps so far
  node: jax.Array          # [B] int32, current node; NO_NODE: the next rollout must start
  depth: jax.Array         # [B] int32, depth of `node`
  rollouts: jax.Array      # [B] int32
  terminal: jax.Array      # [B, N] bool
  reason: jax.Array        # [B, N] int32
  path: jax.Array          # [B, L] int32
  selected: jax.Array      # [B] int32
  out_of_nodes: jax.Array  # [B] bool
  done: jax.Array          # [B] bool


@functools.partial(jax.jit, static_argnames=("rule",), donate_argnums=(0,))
def select(tree: Tree, rule: SelectionRule) -> tuple[Tree, SelectOutput]:
  """Runs every tree's descent to its next node to expand.

  One loop step moves every still-descending tree down one level and already looks at the child it
  moved to, so a rollout that continues from its cursor takes one step. Trees that are done wait
  while the others go on. The host must only create non-terminal nodes of depth < L (the step
  protocol's max_depth rule); the path buffer has no room below that.

  Args:
    tree: the batch of trees (donated).
    rule: selection settings (static).

  Returns:
    The updated trees (terminal marks, cursors, paths, rollout counts) and `SelectOutput`.
  """
  num_slots, num_actions, path_length = tree.num_slots, tree.num_actions, tree.path_length
  scores_fn = jax.vmap(functools.partial(uct_scores, rule=rule))
  pick_fn = jax.vmap(functools.partial(_pick, rule=rule))
  fits = tree.num_nodes + num_actions <= num_slots  # [B], fixed during a descent
  flat_children = tree.children.reshape(tree.batch_size, num_slots * num_actions)

  def body(s: _Descent) -> _Descent:
    live = ~s.done
    is_new = live & (s.node == NO_NODE)
    start = is_new & (s.rollouts < tree.rollout_budget) & ~s.terminal[:, ROOT_INDEX]
    rollouts = s.rollouts + start.astype(jnp.int32)
    node = jnp.where(start, ROOT_INDEX, s.node)
    depth = jnp.where(start, 0, s.depth)
    active = live & (node != NO_NODE)
    safe = jnp.maximum(node, 0)
    at_terminal = active & _take(s.terminal, safe)
    children = _take_row(tree.children, safe)  # [B, A]
    unexpanded = active & ~at_terminal & (children[:, 0] == NO_CHILD)
    descend = active & ~at_terminal & (children[:, 0] != NO_CHILD)
    kids = jnp.maximum(children, 0)
    selectable = (children != NO_CHILD) & ~_take(s.terminal, kids)
    scores = scores_fn(_take(tree.visits, kids), _take(tree.value_sum, kids), selectable,
                       _take(tree.visits, safe))
    best = _take(children, pick_fn(scores, selectable, tree.seed, rollouts - 1, safe))
    any_selectable = jnp.any(selectable, axis=1)
    dead_end = descend & ~any_selectable
    moved = descend & any_selectable
    # Look at the chosen child in the same step: unexpanded (it is never terminal) -> pick it.
    first_grandchild = _take(flat_children, jnp.maximum(best, 0) * num_actions)
    child_unexpanded = moved & (first_grandchild == NO_CHILD)
    wants = unexpanded | child_unexpanded
    marked = jnp.where(dead_end, safe, num_slots)
    return _Descent(
        steps=s.steps + 1,
        node=jnp.where(live, jnp.where(moved, best, NO_NODE), s.node).astype(jnp.int32),
        depth=depth + moved.astype(jnp.int32),
        rollouts=rollouts,
        terminal=_batch_set(s.terminal, jnp.ones_like(dead_end), marked),
        reason=_batch_set(s.reason, jnp.full_like(marked, int(Reason.ALL_CHILDREN_TERMINAL)), marked),
        path=_batch_set(s.path, best, jnp.where(moved, depth + 1, path_length)),
        selected=jnp.where(wants & fits, jnp.where(unexpanded, safe, best), s.selected
                           ).astype(jnp.int32),
        out_of_nodes=s.out_of_nodes | (wants & ~fits),
        done=s.done | (is_new & ~start) | wants,
    )

  init = _Descent(
      steps=jnp.int32(0), node=tree.cursor, depth=_take(tree.depth, jnp.maximum(tree.cursor, 0)),
      rollouts=tree.rollouts, terminal=tree.terminal, reason=tree.terminal_reason, path=tree.path,
      selected=jnp.full_like(tree.cursor, NO_NODE), out_of_nodes=tree.out_of_nodes,
      done=tree.out_of_nodes)
  out = jax.lax.while_loop(lambda s: jnp.any(~s.done), body, init)
  new = dataclasses.replace(tree, terminal=out.terminal, terminal_reason=out.reason, path=out.path,
                            cursor=out.selected, rollouts=out.rollouts,
                            out_of_nodes=out.out_of_nodes)
  return new, SelectOutput(node=out.selected, rollout=out.rollouts - 1, steps=out.steps)


class Expansion(NamedTuple):
  """New children of one expansion per tree; rows with `parent == NO_NODE` are left unchanged.

  Children of a row are its first `count` entries; they take node ids `num_nodes + j`.
  """
  parent: jax.Array              # [B] int32, expanded node or NO_NODE
  count: jax.Array               # [B] int32, new children (1..A)
  terminal: jax.Array            # [B, A] bool
  terminal_reason: jax.Array     # [B, A] int32 (`Reason`)
  consecutive_errors: jax.Array  # [B, A] int32
  ppm_value: jax.Array           # [B, A] float32, NaN when not scored
  value: jax.Array               # [B, A] float32, the value each child backs up
  update_self: jax.Array         # [B, A] bool, visit+value on the child only
  update_path: jax.Array         # [B, A] bool, visit+value on the child and all its ancestors


def _add_children(tree1: dict, e: dict) -> dict:
  """Writes one tree's new children and their own updates (unbatched; no loops)."""
  num_slots, num_actions = tree1["children"].shape
  parent = e["parent"]
  has = parent != NO_NODE
  safe_parent = jnp.maximum(parent, 0)
  j = jnp.arange(num_actions, dtype=jnp.int32)
  valid = has & (j < e["count"])
  ids = tree1["num_nodes"] + j
  slot = jnp.where(valid, ids, num_slots)  # out of range: dropped by the scatters below

  def put(x, v):
    return x.at[slot].set(v, mode="drop")

  out = dict(tree1)
  out["parent"] = put(tree1["parent"], jnp.broadcast_to(parent, [num_actions]))
  out["depth"] = put(tree1["depth"], jnp.broadcast_to(tree1["depth"][safe_parent] + 1, [num_actions]))
  out["terminal"] = put(tree1["terminal"], e["terminal"])
  out["terminal_reason"] = put(tree1["terminal_reason"], e["terminal_reason"])
  out["consecutive_errors"] = put(tree1["consecutive_errors"], e["consecutive_errors"])
  out["ppm_value"] = put(tree1["ppm_value"], e["ppm_value"])
  out["children"] = tree1["children"].at[jnp.where(has, parent, num_slots)].set(
      jnp.where(valid, ids, NO_CHILD), mode="drop")
  out["num_nodes"] = tree1["num_nodes"] + jnp.where(has, e["count"], 0)
  updated = valid & (e["update_self"] | e["update_path"])
  out["visits"] = tree1["visits"].at[slot].add(updated.astype(jnp.int32), mode="drop")
  out["value_sum"] = tree1["value_sum"].at[slot].add(jnp.where(updated, e["value"], 0.0), mode="drop")
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
  num_slots, path_length = tree.num_slots, tree.path_length
  fields = jax.vmap(_add_children)(_fields(tree), expansion._asdict())
  along = (jnp.arange(tree.num_actions) < expansion.count[:, None]) & expansion.update_path
  path_count = jnp.sum(along.astype(jnp.int32), axis=1)  # [B]
  path_value = jnp.sum(jnp.where(along, expansion.value, 0.0), axis=1)  # [B]
  has = expansion.parent != NO_NODE
  # Read from the updated field (the parent's depth is unchanged): reading the donated input after its scatter
  # would make XLA copy the whole [B, N] array first.
  parent_depth = _take(fields["depth"], jnp.maximum(expansion.parent, 0))
  on_path = has[:, None] & (jnp.arange(path_length)[None, :] <= parent_depth[:, None])  # [B, L]
  index = jnp.where(on_path, tree.path, num_slots)  # [B, L]
  fields["visits"] = _batch_add(fields["visits"], jnp.broadcast_to(path_count[:, None], index.shape),
                                index)
  fields["value_sum"] = _batch_add(fields["value_sum"],
                                   jnp.broadcast_to(path_value[:, None], index.shape), index)
  return Tree(**fields)


@functools.partial(jax.jit, static_argnames=("rule",), donate_argnums=(0,))
def expand_and_select(tree: Tree, expansion: Expansion, rule: SelectionRule
                      ) -> tuple[Tree, SelectOutput]:
  """`expand_and_backup` followed by the next `select`, in one device call.

  The host loop's steady state: one dispatch and one small read per iteration instead of two.
  """
  return select(expand_and_backup(tree, expansion), rule)
