"""Reading Q-annotated search trees (schema `rstar_jax.tree/1`, defined in `rstar_jax/search/records.py`).

One tree per JSONL line. Nodes are kept in a list indexed by node id (ids are 0..N-1, root 0) so
that extraction can walk parent/children links without dictionaries.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Sequence

from rstar_jax.search import records

SCHEMA = records.SCHEMA
ROOT_INDEX = 0
NO_PARENT = -1
# Terminals that end a trajectory without a graded answer (DESIGN §1.1: value -1; the official preset updates only
# the node itself, the paper preset backs it up to the root).
INVALID_TERMINAL_REASONS = ("too_many_errors", "max_depth", "unparsable")

# The schema has one owner, its writer (`rstar_jax.search.records`); this module is its typed, read-only view.
TreeFormatError = records.TreeRecordError


@dataclasses.dataclass(frozen=True)
class Node:
  """One search node. `text` is the step text exactly as appended to the path."""
  id: int
  tag: str
  parent: int
  children: tuple[int, ...]
  depth: int
  text: str
  code: str
  observation: str
  final_answer: str | None
  terminal: bool
  terminal_reason: str | None
  correct: bool | None
  visits: int
  value_sum: float
  q: float
  ppm_value: float | None


@dataclasses.dataclass(frozen=True)
class Tree:
  """One problem's Q-annotated tree; `nodes[i].id == i` and `nodes[0]` is the root.

  `out_of_nodes`: the search stopped this tree early because its node budget filled (false for shards written
  before the record field existed).
  """
  problem_id: str
  question: str
  ground_truth: str | None
  prompt: str
  seed: int | None
  mode: str | None
  preset: str | None
  nodes: tuple[Node, ...]
  out_of_nodes: bool = False

  @property
  def root(self) -> Node:
    return self.nodes[ROOT_INDEX]

  def path(self, node_id: int) -> list[Node]:
    """Nodes from the root to `node_id`, both included."""
    out = []
    while node_id != NO_PARENT:
      out.append(self.nodes[node_id])
      node_id = self.nodes[node_id].parent
    return out[::-1]

  def prefix_text(self, node_id: int) -> str:
    """Concatenated step texts of the path root..node_id (the root text is "")."""
    return "".join(n.text for n in self.path(node_id))


def tree_from_dict(record: dict[str, Any], where: str = "<tree>") -> Tree:
  """Validates one decoded JSONL record (`records.validate_tree`) and builds a `Tree`.

  Raises:
    TreeFormatError: naming `where` (e.g. "trees.jsonl:12") and the offending field.
  """
  return _tree(records.validate_tree(record, where))


def _tree(record: dict[str, Any]) -> Tree:
  nodes = tuple(Node(
      id=raw["id"], tag=raw["tag"], parent=raw["parent"], children=tuple(raw["children"]), depth=raw["depth"],
      text=raw["text"], code=raw["code"], observation=raw["observation"], final_answer=raw["final_answer"],
      terminal=raw["terminal"], terminal_reason=raw["terminal_reason"], correct=raw["correct"],
      visits=raw["visits"], value_sum=float(raw["value_sum"]), q=float(raw["q"]),
      ppm_value=None if raw["ppm_value"] is None else float(raw["ppm_value"])) for raw in record["nodes"])
  return Tree(problem_id=record["problem_id"], question=record["question"], ground_truth=record["ground_truth"],
              prompt=record["prompt"], seed=record["seed"], mode=record["mode"], preset=record["preset"],
              nodes=nodes, out_of_nodes=record.get("out_of_nodes", False))


def iter_trees(path: str | os.PathLike[str]) -> Iterator[Tree]:
  """Yields the trees of one JSONL file (blank lines skipped), each validated."""
  for record in records.iter_trees(path):
    yield _tree(record)


def read_trees(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Tree]:
  """Reads every tree of one JSONL file or of several shards, in order."""
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  return [tree for path in paths for tree in iter_trees(path)]
