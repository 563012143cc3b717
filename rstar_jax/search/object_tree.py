"""A plain-Python object tree doing §1.2's selection and backup, one node object per node.

This mirrors the official code's structure (node objects with `update` / `update_recursive`, a
`select_child` loop over children) and serves two purposes: the independent reference the array
kernels are tested against, and the baseline of `benchmarks/search.py`. It is deliberately written
without the kernels' vectorisation.

`float32=True` does the UCT arithmetic in float32 like the kernels, so near-ties resolve the same way
in randomised comparisons; the `paper` preset's random tie-breaks use the kernels' documented key
(`kernels.tie_break_key`), so the two agree exactly.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rstar_jax.search.tree import Reason


class Node:
  """One node: statistics, terminal state and links."""
  __slots__ = ("id", "parent", "children", "depth", "visits", "value_sum", "terminal", "reason")

  def __init__(self, node_id: int, parent: "Node | None", depth: int):
    self.id = node_id
    self.parent = parent
    self.children: list[Node] = []
    self.depth = depth
    self.visits = 0
    self.value_sum = 0.0
    self.terminal = False
    self.reason = Reason.NONE

  def update(self, value: float) -> None:
    self.visits += 1
    self.value_sum += value

  def update_recursive(self, value: float) -> None:
    node = self
    while node is not None:
      node.update(value)
      node = node.parent

  def q(self) -> float:
    return self.value_sum / self.visits if self.visits else 0.0


class ObjectTree:
  """One tree; `select` returns the node to expand (or None when the tree has finished)."""

  def __init__(self, preset: str = "official", c: float = 2.0, max_rollouts: int = 16,
               seed: int = 0, float32: bool = False, num_actions: int = 8):
    self.preset = preset
    self.num_actions = num_actions
    self.c = c
    self.max_rollouts = max_rollouts
    self.seed = seed
    self.float32 = float32
    self.nodes: list[Node] = [Node(0, None, 0)]
    self.cursor: Node | None = None
    self.rollouts = 0

  @property
  def root(self) -> Node:
    return self.nodes[0]

  def _score(self, child: Node, parent: Node) -> float:
    n, np_ = child.visits, parent.visits
    if self.float32:
      f = np.float32
      q = f(child.value_sum) / f(n) if n else f(0.0)
      explore = f(self.c) * np.sqrt(np.log(f(max(np_, 1))) / f(max(n, 1)))
    else:
      q = child.value_sum / n if n else 0.0
      explore = self.c * math.sqrt(math.log(max(np_, 1)) / max(n, 1))
    if self.preset == "official":
      return float(q + explore) if (np_ > 0 and n > 0) else float(q)
    return math.inf if n == 0 else float(q + explore)

  def select_child(self, node: Node) -> Node | None:
    best_value = -math.inf
    best: list[Node] = []
    for child in node.children:
      if child.terminal:
        continue
      value = self._score(child, node)
      if value == best_value:
        best.append(child)
      elif value > best_value:
        best_value, best = value, [child]
    if not best:
      return None
    if self.preset == "official" or len(best) == 1:
      return best[0]
    return self._random_tie(node, best)

  def _random_tie(self, node: Node, tied: Sequence[Node]) -> Node:
    import jax  # pylint: disable=import-outside-toplevel
    from rstar_jax.search.kernels import tie_break_key  # pylint: disable=import-outside-toplevel
    draws = np.asarray(jax.random.uniform(
        tie_break_key(np.uint32(self.seed), self.rollouts - 1, node.id), [self.num_actions]))
    return max(tied, key=lambda c: draws[node.children.index(c)])

  def select(self) -> Node | None:
    """Continues the running rollout (or starts the next) down to a node to expand."""
    node = self.cursor
    while True:
      if node is None:
        if self.rollouts >= self.max_rollouts or self.root.terminal:
          self.cursor = None
          return None
        self.rollouts += 1
        node = self.root
        continue
      if node.terminal:
        node = None
        continue
      if not node.children:
        self.cursor = node
        return node
      child = self.select_child(node)
      if child is None:
        node.terminal = True
        node.reason = Reason.ALL_CHILDREN_TERMINAL
        node = None
        continue
      node = child

  def expand(self, node: Node, specs: Sequence[tuple[int, float, str | None]]) -> list[Node]:
    """Adds children; `specs[j] = (Reason, value, scope)` with scope None, "self" or "path"."""
    new = []
    for reason, value, scope in specs:
      child = Node(len(self.nodes), node, node.depth + 1)
      child.reason = Reason(reason)
      child.terminal = child.reason != Reason.NONE
      self.nodes.append(child)
      node.children.append(child)
      new.append(child)
      if scope == "self":
        child.update(value)
      elif scope == "path":
        child.update_recursive(value)
    return new
