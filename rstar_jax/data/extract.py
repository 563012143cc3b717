"""From Q-annotated trees to training data (DESIGN §1.3): policy SFT records and PPM pairs.

Terms used below:
- A *trajectory* is the path from the root to a terminal node; its *steps* are the path's nodes without the
  root, and its *mean Q* / *min Q* are over those steps' `q`.
- An *outcome leaf* is a terminal with a graded answer: *correct* (`terminal_reason == "answer"` and
  `correct is True`) or *wrong* (`correct is False`; with `invalid_as_wrong`, also the invalid terminals
  "too_many_errors", "max_depth", "unparsable"). Ungraded answers (`correct is None`) are neither.
- A node's subtree is *mixed* when it holds both a correct and a wrong outcome leaf.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterable, Sequence

from rstar_jax import files
from rstar_jax.data.formats import PpmPair, SftRecord, write_ppm_pairs, write_sft_records
from rstar_jax.data.trees import INVALID_TERMINAL_REASONS, ROOT_INDEX, Node, Tree, read_trees

CORRECT, WRONG = "correct", "wrong"


@dataclasses.dataclass(frozen=True)
class SftConfig:
  """Policy SFT selection (paper: the 2 best correct trajectories per problem)."""
  per_problem: int = 2
  # A trajectory is dropped when its response text contains this (case-insensitive), as DESIGN §1.3 and the
  # official sampler: the text holds every code block's `<output>`, where the interpreter reports "{Type}Error: ...".
  error_marker: str = "error"

  def __post_init__(self):
    _check_counts(self, ("per_problem",))
    if not isinstance(self.error_marker, str) or not self.error_marker:
      # Every text contains "": an empty marker (meant as "no filter") dropped every trajectory, writing no records.
      raise ValueError(f"SftConfig.error_marker must be a non-empty string, got {self.error_marker!r}")


@dataclasses.dataclass(frozen=True)
class PairConfig:
  """PPM pair selection and filters (DESIGN §1.3)."""
  per_side: int = 2              # up to 2 positive and 2 negative steps per node ...
  per_side_vs_single: int = 4    # ... or up to 4 of one side when the other side has only 1
  min_q_margin: float = 0.5      # keep a pair only when Q(pos) - Q(neg) >= this
  min_edit_distance: int = 20    # and the character edit distance of the two steps >= this
  invalid_as_wrong: bool = False  # count code-error / too-deep / unparsable terminals as wrong outcomes
  final_answer_pairs: bool = False  # also emit whole-trajectory pairs with the bare prompt

  def __post_init__(self):
    # A negative count sliced from the end (per_side=-1, read as "no limit", kept all candidates but the last) and a
    # NaN margin compared false (no pair at all), both without an error.
    _check_counts(self, ("per_side", "per_side_vs_single", "min_edit_distance"))
    margin = self.min_q_margin
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
      raise ValueError(f"PairConfig.min_q_margin must be a finite number, got {margin!r}")
    for name in ("invalid_as_wrong", "final_answer_pairs"):
      if not isinstance(getattr(self, name), bool):  # a config file's "false" is a non-empty str: it ran as True
        raise ValueError(f"PairConfig.{name} must be a bool (true or false), got {getattr(self, name)!r}")


def _check_counts(config, names: Sequence[str]) -> None:
  """Refuses a field of `config` that is not an integer >= 0 (0 selects nothing), naming it."""
  for name in names:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{type(config).__name__}.{name} must be an integer >= 0, got {value!r}")


def edit_distance(a: str, b: str, limit: int | None = None) -> int:
  """Levenshtein distance between two strings (unit insert/delete/substitute costs).

  Args:
    a: first string.
    b: second string.
    limit: when given, the result is exact if below `limit` and otherwise some value >= `limit`; only a
      band of width `2 * limit + 1` around the diagonal is computed (Ukkonen), so checking a threshold on
      long steps stays cheap.
  """
  if len(a) < len(b):
    a, b = b, a
  if limit is not None and len(a) - len(b) >= limit:
    return len(a) - len(b)
  if not b:
    return len(a)
  n = len(b)
  big = len(a) + n + 1
  band = len(a) if limit is None else limit
  prev = list(range(n + 1))
  for i in range(1, len(a) + 1):
    lo, hi = max(1, i - band), min(n, i + band)
    cur = [big] * (n + 1)
    cur[0] = i if i <= band else big
    ai = a[i - 1]
    row_min = cur[0]
    for j in range(lo, hi + 1):
      cost = prev[j - 1] + (ai != b[j - 1])
      cur[j] = min(cost, prev[j] + 1, cur[j - 1] + 1)
      row_min = min(row_min, cur[j])
    if limit is not None and row_min >= limit:
      return row_min
    prev = cur
  return prev[n]


def _outcome(node: Node, invalid_as_wrong: bool) -> str | None:
  if node.terminal_reason == "answer":
    return {True: CORRECT, False: WRONG}.get(node.correct)
  if invalid_as_wrong and node.terminal_reason in INVALID_TERMINAL_REASONS:
    return WRONG
  return None


def _outcome_leaves(tree: Tree, invalid_as_wrong: bool) -> dict[int, dict[str, list[int]]]:
  """For every node, the ids of the correct and wrong outcome leaves in its subtree."""
  leaves: dict[int, dict[str, list[int]]] = {n.id: {CORRECT: [], WRONG: []} for n in tree.nodes}
  for node in tree.nodes:
    outcome = _outcome(node, invalid_as_wrong)
    if outcome is None:
      continue
    for ancestor in tree.path(node.id):
      leaves[ancestor.id][outcome].append(node.id)
  return leaves


# Q values are float ratios (value_sum / visits): two that are equal as fractions (a margin of exactly 0.5, two equal
# mean Qs) may differ in their last bits, so comparisons allow this much and rankings round to it.
_Q_TOLERANCE = 1e-9
_Q_DECIMALS = 9


def _mean_min_q(steps: Sequence[Node]) -> tuple[float, float]:
  """Mean and min Q of `steps`, rounded to `_Q_DECIMALS` so that equal values rank as ties."""
  qs = [s.q for s in steps]
  return round(math.fsum(qs) / len(qs), _Q_DECIMALS), round(min(qs), _Q_DECIMALS)


def _trajectories(tree: Tree, leaf_ids: Iterable[int]) -> list[tuple[int, list[Node]]]:
  """(leaf id, steps without the root) for each leaf."""
  return [(leaf, tree.path(leaf)[1:]) for leaf in leaf_ids if leaf != ROOT_INDEX]


def sft_records(trees: Sequence[Tree], config: SftConfig = SftConfig()) -> list[SftRecord]:
  """Policy SFT records: per problem, the best correct error-free trajectories.

  Trees sharing a `problem_id` are pooled. Trajectories are ranked by mean Q over their steps (higher
  first), ties by min Q (higher first), then by tree order and depth-first leaf order (children in creation
  order: the order the official sampler lists trajectories in, which its stable sort keeps); duplicate response
  texts are kept once.

  Trajectories whose response text contains the error marker (`SftConfig.error_marker`, case-insensitive) are
  dropped, as DESIGN §1.3 and the official sampler (`sample_sft_data.py`) do. Deviations from that sampler: the
  drop comes before the top `per_problem` are taken (DESIGN §1.3; the official one takes the top 2, then drops,
  so it may keep fewer); duplicates are dropped; problems are keyed by
  `problem_id`, not the question text; responses are kept as searched (the official one strips surrounding
  whitespace) and records are not shuffled.

  Returns:
    Records in order of first appearance of each problem; `query` is the question, `response` the
    concatenated step texts.
  """
  by_problem: dict[str, list[Tree]] = {}
  for tree in trees:
    by_problem.setdefault(tree.problem_id, []).append(tree)
  marker = config.error_marker.lower()
  out = []
  for problem_trees in by_problem.values():
    candidates = []
    for t_index, tree in enumerate(problem_trees):
      correct = [n.id for n in tree.nodes if _outcome(n, False) == CORRECT]
      for _, steps in _trajectories(tree, correct):
        response = "".join(s.text for s in steps)
        if marker in response.lower():
          continue
        mean_q, min_q = _mean_min_q(steps)
        dfs_position = tuple(tree.nodes[s.parent].children.index(s.id) for s in steps)
        candidates.append((-mean_q, -min_q, t_index, dfs_position, tree.question, response))
    candidates.sort(key=lambda c: c[:4])
    seen: set[str] = set()
    for *_, question, response in candidates:
      if len(seen) >= config.per_problem:
        break
      if response in seen:
        continue
      seen.add(response)
      out.append(SftRecord(query=question, response=response))
  return out


def _greedy_continuation_mean_q(tree: Tree, child: Node, below: dict[int, list[int]], best: bool) -> float:
  """Mean Q of the greedy continuation from `child` down to an outcome leaf (the official rule).

  From `child`, step into the child that has an outcome leaf of the wanted side below it (`below[id]` non-empty)
  with the highest Q (`best`, the positive side) or the lowest Q (the negative side), the first in child order
  on ties, until no child qualifies; the result is the mean Q of the nodes visited, `child` included.
  """
  steps = [child]
  while True:
    options = [tree.nodes[c] for c in steps[-1].children if below[c]]
    if not options:
      return _mean_min_q(steps)[0]
    steps.append(max(options, key=lambda c: c.q) if best else min(options, key=lambda c: c.q))


def _select(pos: list, neg: list, config: PairConfig) -> tuple[list, list]:
  """The 2-vs-2 rule, or up to 4 of one side when the other has a single candidate."""
  if len(pos) == 1:
    return pos[:1], neg[:config.per_side_vs_single]
  if len(neg) == 1:
    return pos[:config.per_side_vs_single], neg[:1]
  return pos[:config.per_side], neg[:config.per_side]


def _keep(pos_text: str, neg_text: str, q_pos: float, q_neg: float, config: PairConfig) -> bool:
  return (q_pos - q_neg > _Q_TOLERANCE and q_pos - q_neg >= config.min_q_margin - _Q_TOLERANCE
          and edit_distance(pos_text, neg_text, config.min_edit_distance) >= config.min_edit_distance)


def step_pairs(tree: Tree, config: PairConfig = PairConfig()) -> list[PpmPair]:
  """Per-step PPM pairs of one tree (DESIGN §1.3), in depth-first walk order (the official sampler walks
  breadth-first: the same pairs, node by node in another order).

  At each node whose subtree is mixed: positives are the children with a correct leaf below them, highest Q
  first; negatives the children with a wrong leaf below them, lowest Q first (ties by child order; a mixed
  child may be a candidate on both sides but is never paired with itself). A selected (pos, neg) becomes a
  pair when Q(pos) > Q(neg), the continuation of pos beats that of neg (as the official sampler: the mean Q of
  the path that follows, from pos, the highest-Q child with a correct leaf below, and from neg the lowest-Q
  child with a wrong leaf below, down to a leaf), Q(pos) - Q(neg) >= `min_q_margin` and the step texts are at
  least `min_edit_distance` edits apart. `pos_count`/`neg_count` are the numbers selected at the node
  (before the pair filters), so each node's pairs weigh at most 1 in total. The walk continues into every
  mixed child.
  """
  leaves = _outcome_leaves(tree, config.invalid_as_wrong)
  mixed = lambda node_id: bool(leaves[node_id][CORRECT]) and bool(leaves[node_id][WRONG])
  correct_below = {i: v[CORRECT] for i, v in leaves.items()}
  wrong_below = {i: v[WRONG] for i, v in leaves.items()}
  pairs = []
  stack = [ROOT_INDEX] if mixed(ROOT_INDEX) else []
  while stack:
    node = tree.nodes[stack.pop()]
    children = [tree.nodes[c] for c in node.children]
    pos = sorted((c for c in children if leaves[c.id][CORRECT]), key=lambda c: -c.q)
    neg = sorted((c for c in children if leaves[c.id][WRONG]), key=lambda c: c.q)
    pos, neg = _select(pos, neg, config)
    if pos and neg:
      prompt = tree.prompt + tree.prefix_text(node.id)
      cont_pos = {c.id: _greedy_continuation_mean_q(tree, c, correct_below, best=True) for c in pos}
      cont_neg = {c.id: _greedy_continuation_mean_q(tree, c, wrong_below, best=False) for c in neg}
      for p in pos:
        for n in neg:
          if p.id == n.id or not cont_pos[p.id] - cont_neg[n.id] > _Q_TOLERANCE:
            continue
          if _keep(p.text, n.text, p.q, n.q, config):
            pairs.append(PpmPair(prompt=prompt, pos=p.text, neg=n.text,
                                 pos_count=len(pos), neg_count=len(neg)))
    # Reverse so the stack pops children in their natural order (depth-first, first child first).
    stack.extend(c.id for c in reversed(children) if mixed(c.id))
  return pairs


def final_answer_pairs(tree: Tree, config: PairConfig = PairConfig()) -> list[PpmPair]:
  """Whole-trajectory pairs: `prompt` is the tree prompt, `pos`/`neg` full solution texts.

  The paper relaxes the shared-prefix restriction for the final answer step: the trajectories ending in a
  correct answer with the highest mean Q are positives, those ending in a wrong outcome with the lowest mean
  Q negatives (same 2-vs-2 / 1-vs-4 selection, margin on mean Q, edit-distance filter).
  """
  leaves = _outcome_leaves(tree, config.invalid_as_wrong)[ROOT_INDEX]
  scored = {}
  for side in (CORRECT, WRONG):
    scored[side] = [(_mean_min_q(steps)[0], leaf, "".join(s.text for s in steps))
                    for leaf, steps in _trajectories(tree, leaves[side])]
  pos = sorted(scored[CORRECT], key=lambda t: (-t[0], t[1]))
  neg = sorted(scored[WRONG], key=lambda t: (t[0], t[1]))
  pos, neg = _select(pos, neg, config)
  pairs = []
  for q_pos, _, pos_text in pos:
    for q_neg, _, neg_text in neg:
      if _keep(pos_text, neg_text, q_pos, q_neg, config):
        pairs.append(PpmPair(prompt=tree.prompt, pos=pos_text, neg=neg_text,
                             pos_count=len(pos), neg_count=len(neg)))
  return pairs


def ppm_pairs(trees: Sequence[Tree], config: PairConfig = PairConfig()) -> list[PpmPair]:
  """PPM pairs of all trees: each tree's step pairs, then (optionally) its final-answer pairs."""
  out = []
  for tree in trees:
    out.extend(step_pairs(tree, config))
    if config.final_answer_pairs:
      out.extend(final_answer_pairs(tree, config))
  return out


@dataclasses.dataclass(frozen=True)
class ExtractionStats:
  """Counts of one extraction run."""
  num_trees: int
  num_problems: int
  num_sft_records: int
  num_pairs: int


def _shards(path: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
  """`[path]`, or for a directory (`run_search`'s output_dir) its `*.jsonl` shards in name order: beside them it holds
  `trees.config.json`, which is no tree file.

  Raises:
    files.FolderInUseError: a search still holds its lock (`{shard_prefix}.lock`) in the directory: its shards so far
      are only the batches done, and would be extracted as if they were all.
  """
  if not os.path.isdir(path):
    return [path]
  names = os.listdir(path)
  for name in sorted(n for n in names if n.endswith(".lock")):
    holder = files.lock_holder(os.path.join(path, name))
    if holder is not None:
      raise files.FolderInUseError(f"{os.fspath(path)}: a search is still writing tree shards here ({holder}; lock "
                                   f"file {name}); extract once it has finished")
  shards = sorted(name for name in names if name.endswith(".jsonl"))
  if not shards:
    raise ValueError(f"extract_files: {os.fspath(path)} holds no .jsonl tree shards; nothing written")
  return [os.path.join(path, name) for name in shards]


def extract_files(tree_files: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], sft_file: str | None,
                  pairs_file: str | None, *, sft_config: SftConfig = SftConfig(),
                  pair_config: PairConfig = PairConfig()) -> ExtractionStats:
  """Reads Q-annotated tree shards and writes rStar-format SFT records and/or PPM pairs (atomically).

  Args:
    tree_files: one JSONL tree file or several shards (schema `rstar_jax.tree/1`), e.g. a list or what `glob.glob` /
      `Path.glob` return (a pattern string is no file name: it is not expanded); a directory (a search's
      `output_dir`) stands for its `*.jsonl` shards in name order.
    sft_file: where the SFT records go (`.jsonl` -> JSONL, else a JSON list); None to skip.
    pairs_file: where the PPM pairs go; None to skip.
    sft_config: SFT selection.
    pair_config: pair selection and filters.

  Returns:
    Counts of trees, distinct problems, records and pairs.

  Raises:
    ValueError: no tree files are given (the outputs would be replaced by empty files), a directory given holds no
      `.jsonl` shards, a tree file is given twice (its pairs would be written twice), an output file is one of the
      tree files (it would be replaced: the search's trees lost) or the two outputs are one file (the pairs would
      replace the SFT records); `rstar_jax.search.records.TreeRecordError` (a ValueError) names the file and line
      of an invalid record.
    files.FolderInUseError: a directory given is the output_dir of a search still running (it holds its lock there).
  """
  # One list for the checks and the reading: an iterator (e.g. `Path.glob`) is consumed by the first pass.
  inputs = [tree_files] if isinstance(tree_files, (str, os.PathLike)) else list(tree_files)
  inputs = [shard for path in inputs for shard in _shards(path)]
  if not inputs:  # the outputs would be replaced by empty files, e.g. a good earlier extraction's
    raise ValueError("extract_files: no tree files given (an empty list, or a glob that matched nothing); nothing "
                     "written")
  seen: dict[str, str] = {}
  for path in inputs:  # a shard read twice (overlapping globs) would write each of its pairs twice
    real = os.path.realpath(path)
    if real in seen:
      raise ValueError(f"extract_files: tree file {os.fspath(path)} is also given as {seen[real]}: give it once")
    seen[real] = f"tree file {os.fspath(path)}"
  for name, out in (("sft_file", sft_file), ("pairs_file", pairs_file)):
    if out is not None:
      real = os.path.realpath(out)
      if real in seen:
        raise ValueError(f"extract_files: {name} {os.fspath(out)} is the {seen[real]}: write to another file")
      seen[real] = f"{name} {os.fspath(out)}"
  all_trees = read_trees(inputs)
  records = sft_records(all_trees, sft_config) if sft_file is not None else []
  pairs = ppm_pairs(all_trees, pair_config) if pairs_file is not None else []
  if sft_file is not None:
    write_sft_records(sft_file, records)
  if pairs_file is not None:
    write_ppm_pairs(pairs_file, pairs)
  return ExtractionStats(len(all_trees), len({t.problem_id for t in all_trees}), len(records), len(pairs))
