"""Q-annotated trees as JSONL (schema `rstar_jax.tree/1`, one problem per line).

Record:
  schema        "rstar_jax.tree/1"
  problem_id    str, e.g. "GSM8K_test/17"
  question      str
  ground_truth  str | null
  prompt        str, the policy prompt before the solution (template applied to the question)
  seed          int, the tree's seed (a search with the same seed replays the tree exactly)
  mode          "terminal_guided" | "ppm_augmented" | "inference"
  preset        "official" | "paper"
  out_of_nodes  bool, optional: true when the tree's node budget (`max_nodes`) filled and its search stopped
                early; shards written before the field existed lack it (read as false)
  nodes         list, node i has "id": i; node 0 is the root:
    id, parent (-1 for the root), children (ids, in creation order), depth (root 0)
    tag             rStar style: root "0", its children "0.1", "0.2", ..., then "0.1.1", ... (1-based)
    text            the step text as appended to the path (candidate text + stop string, plus
                    "\\n<output>{observation}<end_of_output>" when the step closed a code block);
                    the policy prompt at node v is prompt + the texts of the path root..v
    code            the program run for this step ("" if none)
    observation     the sandbox observation of that program, stripped of surrounding whitespace as the official
                    `code_execution` strips it ("" if none)
    final_answer    str for answer nodes, else null
    terminal        bool
    terminal_reason null | "answer" | "too_many_errors" | "max_depth" | "unparsable" |
                    "all_children_terminal"
    correct         for answer nodes: whether final_answer matches ground_truth; else null
    visits          int
    value_sum       float
    q               value_sum / visits (0.0 when visits == 0)
    ppm_value       the node's PPM score when it was scored, else null

Shards are written atomically (a temporary file in the same folder, then `os.replace`). A search that writes
shards keeps its config next to them (`write_run_config`, `check_run_config`), so a resumed run cannot mix trees
of two searches.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Iterator, Sequence

from rstar_jax import files

SCHEMA = "rstar_jax.tree/1"
TERMINAL_REASONS = (None, "answer", "too_many_errors", "max_depth", "unparsable",
                    "all_children_terminal")
MODES = ("terminal_guided", "ppm_augmented", "inference")
PRESETS = ("official", "paper")

_NODE_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (int,), "tag": (str,), "parent": (int,), "children": (list,), "depth": (int,),
    "text": (str,), "code": (str,), "observation": (str,), "final_answer": (str, type(None)),
    "terminal": (bool,), "terminal_reason": (str, type(None)), "correct": (bool, type(None)),
    "visits": (int,), "value_sum": (int, float), "q": (int, float),
    "ppm_value": (int, float, type(None)),
}
_TREE_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (str,), "problem_id": (str,), "question": (str,), "ground_truth": (str, type(None)),
    "prompt": (str,), "seed": (int,), "mode": (str,), "preset": (str,), "nodes": (list,),
}


class TreeRecordError(ValueError):
  """A tree record breaks the schema; the message names the file, line and field."""


def _check(value: Any, types: tuple[type, ...], where: str) -> None:
  # bool is a subclass of int: accept it only where bool is expected.
  if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
    names = "/".join("null" if t is type(None) else t.__name__ for t in types)
    raise TreeRecordError(f"{where}: expected {names}, got {type(value).__name__}")
  if isinstance(value, str):
    # A shard holding one failed to write with a bare UnicodeEncodeError, or was read and failed later.
    problem = files.lone_surrogate(value)
    if problem:
      raise TreeRecordError(f"{where}: {problem} (no UTF-8 for it)")


def validate_tree(record: Any, where: str = "<tree>") -> dict[str, Any]:
  """Checks one decoded record against the schema; returns it unchanged.

  Raises:
    TreeRecordError: naming `where` (e.g. "trees.jsonl:3") and the offending field.
  """
  if not isinstance(record, dict):
    raise TreeRecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
  for field, types in _TREE_FIELDS.items():
    if field not in record:
      raise TreeRecordError(f"{where}: missing field {field!r}")
    _check(record[field], types, f"{where}: field {field!r}")
  if "out_of_nodes" in record:  # optional: shards written before it existed lack it (read as false)
    _check(record["out_of_nodes"], (bool,), f"{where}: field 'out_of_nodes'")
  if record["schema"] != SCHEMA:
    raise TreeRecordError(f"{where}: field 'schema' must be {SCHEMA!r}, got {record['schema']!r}")
  if record["mode"] not in MODES:
    raise TreeRecordError(f"{where}: field 'mode' must be one of {MODES}, got {record['mode']!r}")
  if record["preset"] not in PRESETS:
    raise TreeRecordError(f"{where}: field 'preset' must be one of {PRESETS}, got {record['preset']!r}")
  nodes = record["nodes"]
  if not nodes:
    raise TreeRecordError(f"{where}: field 'nodes' is empty (a tree has at least its root)")
  for i, node in enumerate(nodes):  # every node's own fields first: the link checks below read other nodes
    nwhere = f"{where}: nodes[{i}]"
    if not isinstance(node, dict):
      raise TreeRecordError(f"{nwhere}: expected a JSON object")
    for field, types in _NODE_FIELDS.items():
      if field not in node:
        raise TreeRecordError(f"{nwhere}: missing field {field!r}")
      _check(node[field], types, f"{nwhere}.{field}")
    for field in ("value_sum", "q", "ppm_value"):  # Python's json reads NaN and Infinity; the writer refuses them
      value = node[field]
      if isinstance(value, int) and not files.is_finite_number(value):
        raise TreeRecordError(f"{nwhere}.{field}: must be finite, got an integer of {len(str(abs(value)))} digits "
                              "(beyond the float range)")
      if value is not None and not math.isfinite(value):
        raise TreeRecordError(f"{nwhere}.{field}: must be finite, got {value}")
    if node["visits"] < 0:
      raise TreeRecordError(f"{nwhere}.visits: must be >= 0, got {node['visits']}")
  for i, node in enumerate(nodes):
    nwhere = f"{where}: nodes[{i}]"
    if node["id"] != i:
      raise TreeRecordError(f"{nwhere}.id: must equal its position {i}, got {node['id']}")
    if node["terminal_reason"] not in TERMINAL_REASONS:
      raise TreeRecordError(f"{nwhere}.terminal_reason: unknown value {node['terminal_reason']!r}")
    if node["terminal"] != (node["terminal_reason"] is not None):
      raise TreeRecordError(f"{nwhere}.terminal: must be true exactly when terminal_reason is set")
    expected_q = node["value_sum"] / node["visits"] if node["visits"] else 0.0
    if not math.isclose(node["q"], expected_q, rel_tol=1e-6, abs_tol=1e-6):
      raise TreeRecordError(f"{nwhere}.q: {node['q']} != value_sum / visits = {expected_q}")
    for c in node["children"]:
      if isinstance(c, bool) or not isinstance(c, int) or not 0 < c < len(nodes):
        raise TreeRecordError(f"{nwhere}.children: invalid child id {c!r}")
      if nodes[c].get("parent") != i:
        raise TreeRecordError(f"{where}: nodes[{c}].parent is {nodes[c].get('parent')!r} but nodes[{i}] lists it "
                              "as a child")
    if len(set(node["children"])) != len(node["children"]):
      raise TreeRecordError(f"{nwhere}.children: a child is listed twice: {node['children']}")
  for i, node in enumerate(nodes):
    parent = node["parent"]
    if i == 0:
      if parent != -1 or node["tag"] != "0" or node["depth"] != 0:
        raise TreeRecordError(f"{where}: nodes[0]: the root needs parent -1, tag '0', depth 0")
      continue
    if not 0 <= parent < len(nodes) or i not in nodes[parent]["children"]:
      raise TreeRecordError(f"{where}: nodes[{i}].parent: node {parent} does not list it as a child")
    position = nodes[parent]["children"].index(i) + 1
    if node["tag"] != f"{nodes[parent]['tag']}.{position}":
      raise TreeRecordError(f"{where}: nodes[{i}].tag: expected {nodes[parent]['tag']}.{position}")
    if node["depth"] != nodes[parent]["depth"] + 1:
      raise TreeRecordError(f"{where}: nodes[{i}].depth: expected parent depth + 1")
  return record


def dumps_tree(record: dict[str, Any]) -> str:
  """One JSONL line (no trailing newline) for a validated record."""
  return json.dumps(record, ensure_ascii=False, allow_nan=False)


def write_trees(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> int:
  """Writes a shard atomically; returns the number of trees written.

  Every record is validated first; an invalid one raises `TreeRecordError` and leaves no file.
  """
  path = os.fspath(path)
  count = 0

  def lines():
    nonlocal count
    for i, record in enumerate(records):
      validate_tree(record, f"{path}: record {i}")
      yield dumps_tree(record) + "\n"
      count += 1

  with files.atomic_open(path) as f:
    f.writelines(lines())
  return count


def write_run_config(path: str | os.PathLike[str], config: dict[str, Any]) -> None:
  """Writes a search's config (JSON) beside its shards, atomically."""
  files.atomic_write(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_run_config(path: str | os.PathLike[str], config: dict[str, Any]) -> bool:
  """Guards a resumable output folder: whether `path` holds a run config, which must equal `config`.

  Raises:
    ValueError: naming `path` and every differing field when the stored config differs (the folder's shards hold
      trees of another search), or when `path` is unreadable or not a JSON object.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    return False
  try:
    with open(path, encoding="utf-8") as f:
      stored = files.json_loads(f.read())
  except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, and UnicodeDecodeError for bytes that are no UTF-8
    raise ValueError(f"{path}: unreadable run config ({e})") from None
  if not isinstance(stored, dict):
    raise ValueError(f"{path}: a run config must be a JSON object, got {type(stored).__name__}")
  wanted = json.loads(json.dumps(config))  # tuples -> lists, as stored
  differ = [f"{key}: {stored.get(key)!r} there, {wanted.get(key)!r} now"
            for key in sorted(set(stored) | set(wanted)) if stored.get(key) != wanted.get(key)]
  if differ:
    raise ValueError(f"{path}: the trees in this folder come from a search with another config ({'; '.join(differ)}"
                     "); resume with the same config, or write to another folder")
  return True


def iter_trees(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
  """Yields the validated records of one shard (blank lines skipped)."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      where = f"{path}:{lineno}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:  # its message names neither the file nor the line
        raise TreeRecordError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
      if not line.strip():
        continue
      try:
        record = files.json_loads(line)  # also a corrupted line of brackets, an integer of over 4300 digits
      except json.JSONDecodeError as e:
        raise TreeRecordError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
      yield validate_tree(record, where)


def read_trees(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
  """All records of one shard or of several, in order."""
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  return [record for path in paths for record in iter_trees(path)]
