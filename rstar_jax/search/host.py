"""Host-side node data (text, code, observation, answer) indexed by the device tree's node ids,
plus seeding and the conversion of a finished tree to its JSONL record."""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np

from rstar_jax.search import records
from rstar_jax.search.step import ChildStep, ParentState, code_history
from rstar_jax.search.tree import NO_PARENT, Reason


@dataclasses.dataclass
class HostNode:
  """Host fields of one node (the device arrays hold its statistics)."""
  parent: int
  depth: int
  text: str = ""
  code: str = ""
  observation: str = ""
  final_answer: str | None = None
  reason: Reason = Reason.NONE
  consecutive_errors: int = 0
  correct: bool | None = None
  ppm_value: float | None = None
  children: list[int] = dataclasses.field(default_factory=list)


class HostTree:
  """The host half of one tree: node 0 is the root (empty text)."""

  def __init__(self, prompt: str):
    if not isinstance(prompt, str):  # a prompt_fn's result: it failed at the first expansion, naming nothing
      raise TypeError(f"prompt_fn must return the prompt as a str, got {type(prompt).__name__} {prompt!r:.60}")
    self.prompt = prompt
    self.nodes: list[HostNode] = [HostNode(parent=NO_PARENT, depth=0)]

  def __len__(self) -> int:
    return len(self.nodes)

  def path(self, node: int) -> list[int]:
    """Node ids from the root to `node`, both included."""
    out = []
    while node != NO_PARENT:
      out.append(node)
      node = self.nodes[node].parent
    return out[::-1]

  def path_text(self, node: int) -> str:
    """The solution so far at `node`: the step texts of the path root..node."""
    return "".join(self.nodes[i].text for i in self.path(node))

  def policy_prompt(self, node: int) -> str:
    """What the policy is prompted with to expand `node`."""
    return self.prompt + self.path_text(node)

  def parent_state(self, node: int) -> ParentState:
    """What the step protocol needs to expand `node`."""
    texts = [self.nodes[i].text for i in self.path(node)]
    n = self.nodes[node]
    return ParentState(depth=n.depth, consecutive_errors=n.consecutive_errors,
                       code_history=code_history(texts))

  def add_child(self, parent: int, child: ChildStep) -> int:
    """Appends a child node; returns its id (ids are allocation order, as on the device)."""
    node_id = len(self.nodes)
    self.nodes.append(HostNode(
        parent=parent, depth=child.depth, text=child.text, code=child.code,
        observation=child.observation, final_answer=child.final_answer, reason=child.reason,
        consecutive_errors=child.consecutive_errors))
    self.nodes[parent].children.append(node_id)
    return node_id


def stable_seed(*parts: int | str) -> int:
  """A 31-bit seed mixed from ints and strings, identical across processes and machines."""
  words = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF for p in parts]
  return int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0]) & 0x7FFFFFFF


def check_run_seed(seed: object, where: str) -> None:
  """Refuses a run seed that is no integer in [0, 2**32): `stable_seed` reads an int as 32 bits, so seed 2**32 searched
  the same trees as seed 0 (and -1 as 2**32 - 1), and a fraction (1.5) would seed as its integer part."""
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"{where} must be an integer, got {seed!r}")
  if not 0 <= seed < 2**32:
    raise ValueError(f"{where} must be in [0, 2**32) (seeds are 32-bit: {seed} would search the trees of seed "
                     f"{seed & 0xFFFFFFFF}), got {seed}")


def tree_seed(base_seed: int, problem_id: str) -> int:
  """The seed of one problem's tree: a function of the run seed and the problem id only."""
  return stable_seed(base_seed, problem_id)


def expansion_seed(seed_of_tree: int, rollout: int, node: int) -> int:
  """The policy seed of expanding `node` during `rollout` of a tree."""
  return stable_seed(seed_of_tree, rollout, node)


def to_record(*, problem_id: str, question: str, ground_truth: str | None, prompt: str, seed: int,
              mode: str, preset: str, host: HostTree, visits: np.ndarray, value_sum: np.ndarray,
              terminal_reason: np.ndarray, out_of_nodes: bool = False) -> dict:
  """The JSONL record of one finished tree.

  Args:
    problem_id, question, ground_truth, prompt, seed, mode, preset: the record's top-level fields of the same names
      (`ground_truth` None at inference; `prompt` the template applied to the question; `seed` the tree's).
    host: the tree's host-side nodes (text, code, observation, answer, correctness, PPM value), indexed by node id.
    visits, value_sum, terminal_reason: this tree's `[N]` device arrays (only the first
      `len(host)` entries are used); the device's terminal reasons include the
      `all_children_terminal` marks made during selection.
    out_of_nodes: the search stopped this tree early because its node budget filled (the record says so).

  Returns:
    The `rstar_jax.tree/1` record (`rstar_jax.search.records`): the top-level fields and `nodes`, node `i` with
    id `i`, its rStar tag and `q` = value_sum / visits (0 when unvisited).
  """
  nodes = []
  tags = ["0"] * len(host)
  for i, n in enumerate(host.nodes):
    for k, c in enumerate(n.children, start=1):
      tags[c] = f"{tags[i]}.{k}"
    reason = Reason(int(terminal_reason[i]))
    v = int(visits[i])
    w = float(value_sum[i])
    nodes.append({
        "id": i, "tag": tags[i], "parent": n.parent, "children": list(n.children), "depth": n.depth,
        "text": n.text, "code": n.code, "observation": n.observation,
        "final_answer": n.final_answer, "terminal": reason != Reason.NONE,
        "terminal_reason": reason.label, "correct": n.correct, "visits": v, "value_sum": w,
        "q": w / v if v else 0.0,
        "ppm_value": None if n.ppm_value is None or math.isnan(n.ppm_value) else float(n.ppm_value),
    })
  return {
      "schema": records.SCHEMA, "problem_id": problem_id, "question": question,
      "ground_truth": ground_truth, "prompt": prompt, "seed": int(seed), "mode": mode,
      "preset": preset, "out_of_nodes": bool(out_of_nodes), "nodes": nodes,
  }
