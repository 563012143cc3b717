"""Reading Q-annotated search trees (schema `rstar_jax.tree/1`, see notes/CONTRACT.md).

One tree per JSONL line. Nodes are kept in a list indexed by node id (ids are 0..N-1, root 0) so
that extraction can walk parent/children links without dictionaries.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator, Sequence

SCHEMA = "rstar_jax.tree/1"
ROOT_INDEX = 0
NO_PARENT = -1
TERMINAL_REASONS = (None, "answer", "too_many_errors", "max_depth", "unparsable", "all_children_terminal")
# Terminals that end a trajectory without a graded answer (DESIGN §1.1: reward -1, no backup).
INVALID_TERMINAL_REASONS = ("too_many_errors", "max_depth", "unparsable")


class TreeFormatError(ValueError):
  """A tree record does not follow the schema; the message names file, line and field."""


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
  """One problem's Q-annotated tree; `nodes[i].id == i` and `nodes[0]` is the root."""
  problem_id: str
  question: str
  ground_truth: str | None
  prompt: str
  seed: int | None
  mode: str | None
  preset: str | None
  nodes: tuple[Node, ...]

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


_NODE_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (int,), "tag": (str,), "parent": (int,), "children": (list,), "depth": (int,),
    "text": (str,), "code": (str,), "observation": (str,), "final_answer": (str, type(None)),
    "terminal": (bool,), "terminal_reason": (str, type(None)), "correct": (bool, type(None)),
    "visits": (int,), "value_sum": (int, float), "q": (int, float), "ppm_value": (int, float, type(None)),
}


def _check_type(value: Any, types: tuple[type, ...], where: str) -> None:
  # bool is an int subclass: reject it where a number is expected, and ints where a bool is.
  if isinstance(value, bool) and bool not in types:
    raise TreeFormatError(f"{where}: expected {'/'.join(t.__name__ for t in types)}, got bool")
  if not isinstance(value, types):
    raise TreeFormatError(
        f"{where}: expected {'/'.join(t.__name__ for t in types)}, got {type(value).__name__}")


def tree_from_dict(record: dict[str, Any], where: str = "<tree>") -> Tree:
  """Validates one decoded JSONL record and builds a `Tree`.

  Args:
    record: the decoded JSON object of one line.
    where: location prefix for error messages, e.g. "trees.jsonl:12".

  Raises:
    TreeFormatError: naming `where` and the offending field.
  """
  if not isinstance(record, dict):
    raise TreeFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
  if record.get("schema") != SCHEMA:
    raise TreeFormatError(f"{where}: field 'schema' must be {SCHEMA!r}, got {record.get('schema')!r}")
  for field, types in (("problem_id", (str,)), ("question", (str,)), ("prompt", (str,)),
                       ("nodes", (list,))):
    if field not in record:
      raise TreeFormatError(f"{where}: missing field {field!r}")
    _check_type(record[field], types, f"{where}: field {field!r}")
  raw_nodes = record["nodes"]
  if not raw_nodes:
    raise TreeFormatError(f"{where}: field 'nodes' is empty (a tree has at least its root)")
  nodes = []
  for i, raw in enumerate(raw_nodes):
    nwhere = f"{where}: nodes[{i}]"
    if not isinstance(raw, dict):
      raise TreeFormatError(f"{nwhere}: expected a JSON object")
    for field, types in _NODE_FIELDS.items():
      if field not in raw:
        raise TreeFormatError(f"{nwhere}: missing field {field!r}")
      _check_type(raw[field], types, f"{nwhere}.{field}")
    if raw["id"] != i:
      raise TreeFormatError(f"{nwhere}.id: node ids must be 0..N-1 in order, got {raw['id']}")
    if raw["terminal_reason"] not in TERMINAL_REASONS:
      raise TreeFormatError(f"{nwhere}.terminal_reason: unknown value {raw['terminal_reason']!r}")
    children = raw["children"]
    for c in children:
      if isinstance(c, bool) or not isinstance(c, int) or not 0 < c < len(raw_nodes):
        raise TreeFormatError(f"{nwhere}.children: invalid child id {c!r}")
    nodes.append(Node(
        id=raw["id"], tag=raw["tag"], parent=raw["parent"], children=tuple(children),
        depth=raw["depth"], text=raw["text"], code=raw["code"], observation=raw["observation"],
        final_answer=raw["final_answer"], terminal=raw["terminal"],
        terminal_reason=raw["terminal_reason"], correct=raw["correct"], visits=raw["visits"],
        value_sum=float(raw["value_sum"]), q=float(raw["q"]),
        ppm_value=None if raw["ppm_value"] is None else float(raw["ppm_value"])))
  if nodes[ROOT_INDEX].parent != NO_PARENT:
    raise TreeFormatError(f"{where}: nodes[0].parent: the root must have parent -1")
  for node in nodes:
    for c in node.children:
      if nodes[c].parent != node.id:
        raise TreeFormatError(
            f"{where}: nodes[{c}].parent is {nodes[c].parent} but nodes[{node.id}] lists it as a child")
    if node.id != ROOT_INDEX and node.id not in nodes[node.parent].children:
      raise TreeFormatError(
          f"{where}: nodes[{node.id}].parent: node {node.parent} does not list it as a child")
  return Tree(
      problem_id=record["problem_id"], question=record["question"],
      ground_truth=record.get("ground_truth"), prompt=record["prompt"], seed=record.get("seed"),
      mode=record.get("mode"), preset=record.get("preset"), nodes=tuple(nodes))


def iter_trees(path: str | os.PathLike[str]) -> Iterator[Tree]:
  """Yields the trees of one JSONL file (blank lines skipped)."""
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{os.fspath(path)}:{lineno}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise TreeFormatError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
      yield tree_from_dict(record, where)


def read_trees(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Tree]:
  """Reads every tree of one JSONL file or of several shards, in order."""
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  return [tree for path in paths for tree in iter_trees(path)]
