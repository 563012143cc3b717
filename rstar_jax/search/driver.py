"""The host loop of lockstep batched MCTS (DESIGN §1.2, §2.2): the one impure part of the search.

Each iteration, for a batch of `B` trees:

  select (jitted, all trees)  ->  one `policy.generate` over every tree that needs an expansion
  (`A` candidates each)  ->  step protocol + one sandbox batch  ->  grade new answers  ->  one
  `scorer.score` over the new children that need a PPM value  ->  expand + backup (jitted, donated)

until every tree has run its rollouts (expand + backup and the next select run as one device call,
`kernels.expand_and_select`). Only `[B]` selected nodes and rollout indices cross from device to
host per iteration, written to host memory by the call itself (`host_output`); the full tree is read
once at the end to write the records.

Versus the official loop: the official code advances every tree by one level per lockstep step, so a
tree that is descending through already-expanded nodes sits out that step's generation; `select`
here descends all the way to the next node to expand, so every iteration generates for every tree
that still has work. The sequence of selections and expansions within a tree is the same, with one
exception: the official loop also caps a rollout at `max_depth` steps, which ends its *first*
rollout (the one that expands the root) just before expanding a node at depth `max_depth`; here a
rollout only ends at a terminal node or a node whose children are all terminal.

Seeding: the tree of problem `p` has seed `tree_seed(config.seed, p.problem_id)`; expanding node `v`
in rollout `r` prompts the policy with seed `expansion_seed(tree seed, r, v)`. A tree therefore
depends only on (config, problem, policy, scorer, sandbox), not on the batch it ran in, and the same
seed replays it exactly, as far as the policy's and scorer's answers do not depend on their batch:
`EnginePolicy` and `PPMScorer` keep that up to floating-point rounding of another batch shape, so
with them a tree is replayed bit for bit in a batch of the same problems (README "Interfaces the
search drives").

Budget: `max_nodes` (N) defaults to `1 + num_rollouts * (max_depth + 1) * num_candidates`, the most a
tree can ever allocate, so no expansion is ever refused; with a smaller N a tree whose next expansion
does not fit stops early (logged).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from typing import Callable, Sequence

import jax
import numpy as np

from rstar_jax import files, grading
from rstar_jax.search import kernels, records, rules
from rstar_jax.search.host import HostTree, check_run_seed, expansion_seed, to_record, tree_seed
from rstar_jax.search.interfaces import (CodeExecutor, Policy, Scorer, checked_candidates, checked_results,
                                         checked_scores)
from rstar_jax.search.step import (STOP_STRINGS, StepConfig, checked_stop, dedupe_candidates, finish_child,
                                   plan_child)
from rstar_jax.search.tree import NO_NODE, Reason, init_tree

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Problem:
  """One search problem; `ground_truth` may be None only in inference mode.

  Raises:
    TypeError: a field of another type (the tree record stores them as strings; an int answer read from JSON
      would otherwise only fail when the batch's shard is written, after its whole search).
    ValueError: a field holds a lone surrogate (it has no UTF-8, so the same would happen).
  """
  problem_id: str
  question: str
  ground_truth: str | None = None

  def __post_init__(self):
    for field, value in (("problem_id", self.problem_id), ("question", self.question)):
      if not isinstance(value, str):
        raise TypeError(f"Problem.{field} must be a str, got {type(value).__name__} {_clip(value)}")
    if self.ground_truth is not None and not isinstance(self.ground_truth, str):
      raise TypeError(f"Problem {self.problem_id!r}: ground_truth must be a str or None, got "
                      f"{type(self.ground_truth).__name__} {_clip(self.ground_truth)}")
    for field in ("problem_id", "question", "ground_truth"):
      # json.loads gives a lone surrogate for a "\ud83d" escape (a truncated emoji). UTF-8 has none, so the tree
      # record could not be written: the batch's whole search ran, then failed naming neither problem nor field.
      value = getattr(self, field)
      problem = None if value is None else files.lone_surrogate(value)
      if problem:
        who = "Problem" if field == "problem_id" else f"Problem {self.problem_id!r}:"
        raise ValueError(f"{who} {field} {problem} (no UTF-8 for it): replace it (e.g. by U+FFFD)")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """MCTS settings (defaults: the paper's rounds 2-3 budget; see DESIGN §1.2 for the presets).

  Attributes:
    mode: "terminal_guided", "ppm_augmented" or "inference" (`rules.py`).
    preset: "official" or "paper" (`kernels.py`, `rules.py`).
    num_rollouts: rollouts per tree.
    num_candidates: `A`, candidates sampled per expansion.
    max_depth: deeper non-answer steps are terminal.
    c: UCT exploration constant (finite, |c| <= 1e30: the UCT scores are float32).
    errors_threshold: consecutive code errors that end a path.
    first_answer_only: when a candidate stopped at `<end_of_answer>`, the expansion keeps only the first such one
      (and no other candidate), as the official code.
    stop: the policy's stop strings.
    positive_reward: backed-up value of a correct answer.
    negative_reward: value of a wrong answer / invalid terminal.
    max_nodes: `N`, node budget per tree (None: the never-binding bound, see module docstring).
    batch_size: trees per lockstep batch (None: all problems in one batch, padded to a power of two so that calls
      with different problem counts share compiled tree kernels).
    seed: run seed.
    kernel_impl: the tree kernels' implementation, "auto", "xla" or "native" (`kernels.expand_and_select`): "auto"
      runs the native CPU custom call where it can (CPU backend, library built) and the XLA
      kernels elsewhere; the two give identical trees.
  """
  mode: str = "terminal_guided"
  preset: str = "official"
  num_rollouts: int = 16
  num_candidates: int = 8
  max_depth: int = 16
  c: float = 2.0
  errors_threshold: int = 1
  first_answer_only: bool = True
  stop: tuple[str, ...] = STOP_STRINGS
  positive_reward: float = 1.0
  negative_reward: float = -1.0
  max_nodes: int | None = None
  batch_size: int | None = None
  seed: int = 0
  kernel_impl: str = "auto"

  def __post_init__(self):
    rules.check_mode(self.mode)
    # Counts and seeds must be ints: a fraction reached the tree kernels as a shape (a jax error once the search
    # started) or ran silently as another count (seed 1.5 was seed 1).
    for field in ("num_rollouts", "num_candidates", "max_nodes", "batch_size"):
      value = getattr(self, field)
      if (value is not None or field not in ("max_nodes", "batch_size")) and (
          isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"SearchConfig.{field} must be an integer, got {value!r}")
    check_run_seed(self.seed, "SearchConfig.seed")
    for field in ("c", "positive_reward", "negative_reward"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"SearchConfig.{field} must be a number, got {value!r}")
    kernels.SelectionRule(self.preset, self.c)  # validates
    if self.kernel_impl not in kernels.IMPLS:
      raise ValueError(f"SearchConfig.kernel_impl must be one of {kernels.IMPLS}, got {self.kernel_impl!r}")
    if self.num_rollouts < 1:
      raise ValueError(f"num_rollouts must be >= 1, got {self.num_rollouts}")
    StepConfig(self.errors_threshold, self.max_depth, self.first_answer_only)
    object.__setattr__(self, "stop", checked_stop(self.stop))
    if self.num_candidates < 1:
      raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")
    if self.batch_size is not None and self.batch_size < 1:
      raise ValueError(f"batch_size must be None (all problems in one batch) or >= 1, got {self.batch_size}")
    if self.max_nodes is not None and self.max_nodes < 1 + self.num_candidates:
      raise ValueError(f"max_nodes must be None or >= 1 + num_candidates = {1 + self.num_candidates} (the root and "
                       f"one expansion), got {self.max_nodes}")
    for field in ("c", "positive_reward", "negative_reward"):
      if not math.isfinite(getattr(self, field)):
        raise ValueError(f"{field} must be finite, got {getattr(self, field)}")
    # The tree holds budgets, node indices and depths as int32: a larger count wrapped (2**32 + 3 rollouts ran 3, 2**31
    # ran none), silently.
    for field, value in (("num_rollouts", self.num_rollouts), ("max_depth", self.max_depth + 1),
                         ("max_nodes", self.num_slots)):
      if value >= 2**31:
        raise ValueError(f"SearchConfig.{field} must keep the tree within int32 (rollouts, nodes and depth + 1 "
                         f"< 2**31), got {getattr(self, field)}" + (" (max_nodes None: 1 + num_rollouts * "
                         f"(max_depth + 1) * num_candidates = {value})" if self.max_nodes is None and
                         field == "max_nodes" else ""))

  @property
  def rule(self) -> kernels.SelectionRule:
    return kernels.SelectionRule(self.preset, float(self.c))

  @property
  def step(self) -> StepConfig:
    return StepConfig(self.errors_threshold, self.max_depth, self.first_answer_only)

  @property
  def num_slots(self) -> int:
    if self.max_nodes is not None:
      return self.max_nodes
    return 1 + self.num_rollouts * (self.max_depth + 1) * self.num_candidates


@dataclasses.dataclass
class SearchStats:
  """Wall time per phase (seconds) and counters, summed over iterations.

  `kernel_s` is the tree kernels' time as the host sees it: dispatch, device work and the `[B]` read
  of the selection (expand + backup + select run as one call per iteration).
  """
  iterations: int = 0
  expansions: int = 0
  children: int = 0
  kernel_s: float = 0.0
  generate_s: float = 0.0
  sandbox_s: float = 0.0
  grade_s: float = 0.0
  score_s: float = 0.0
  host_s: float = 0.0
  out_of_nodes: int = 0

  @property
  def total_s(self) -> float:
    return (self.kernel_s + self.generate_s + self.sandbox_s + self.grade_s + self.score_s
            + self.host_s)


PromptFn = Callable[[str], str]


def check_config(config: object, kind: type) -> None:
  """Refuses a config that is not a `kind` (a mapping read from a file failed as "'dict' object has no attribute
  'mode'", naming no argument)."""
  if not isinstance(config, kind):
    raise TypeError(f"config must be a {kind.__name__} ({kind.__name__}(**mapping) builds one), got "
                    f"{type(config).__name__}")


def check_inputs(problems: Sequence[Problem], prompt_fn: PromptFn) -> None:
  """Refuses, before any search work, what a search run would otherwise trip over later.

  Raises:
    TypeError: `problems` is one `Problem`, no sequence (a generator), or holds something else (records read from
      JSON fail as "'dict' object has no attribute ..."; build them with `Problem(**record)`), or `prompt_fn` is not
      callable (an rStar prompts folder: `prompts.load_sft_template(dir).format`; a `{}` template string: its
      `.format`).
    ValueError: two problems share an id (they seed the trees).
  """
  if isinstance(problems, (Problem, str, dict)):
    raise TypeError(f"problems must be a sequence of Problem, got one {type(problems).__name__}")
  if not isinstance(problems, Sequence):  # a generator: this check would consume it, then `len` failed naming nothing
    raise TypeError(f"problems must be a sequence of Problem (a list), got {type(problems).__name__}: pass "
                    "list(problems)")
  for i, p in enumerate(problems):
    if not isinstance(p, Problem):
      raise TypeError(f"problems[{i}] must be a Problem (Problem(**record) for a JSON record), got "
                      f"{type(p).__name__}")
  if not callable(prompt_fn):
    # rStar's template strings fill an `{input}` field (their own `.format(question)` raises KeyError: 'input') and
    # the official wrap adds a newline after the question: the loader's template does both.
    raise TypeError(f"prompt_fn must be a callable question -> prompt (an rStar prompts folder: "
                    f"rstar_jax.prompts.load_sft_template(dir).format; a template string with a {{}} field: its "
                    f".format), got {type(prompt_fn).__name__} {_clip(prompt_fn)}")
  ids = [p.problem_id for p in problems]
  if len(set(ids)) != len(ids):
    raise ValueError("problem ids must be unique (they seed the trees)")


class _NoBar:
  def update(self, n: int) -> None:
    del n

  def close(self) -> None:
    pass


def _check_output_dir(path: str) -> None:
  """Creates the shard folder, or says why it cannot hold shards, before any search: a batch's shard is written only
  once its whole search has run (with `batch_size=None`, every problem's), and that work was lost to the error."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ValueError(f"output_dir {path}: cannot create it ({e.strerror})") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise ValueError(f"output_dir {path}: not writable")


def _check_no_shards_beyond(output_dir: str, shard_prefix: str, num_problems: int, batch: int) -> None:
  """Refuses a folder holding shards past this run's last batch (`{shard_prefix}-{k:05d}.jsonl`, k >= the batch
  count): those trees are of a longer problem list, and a later `extract_files(output_dir)` would read them too."""
  num_batches = -(-num_problems // batch)
  pattern = re.compile(re.escape(shard_prefix) + r"-(\d{5,})\.jsonl")
  beyond = sorted((int(m.group(1)), name) for name in os.listdir(output_dir)
                  if (m := pattern.fullmatch(name)) and int(m.group(1)) >= num_batches)
  if beyond:
    k, name = beyond[0]
    raise ValueError(f"{os.path.join(output_dir, name)}: the problem list changed since it was written: this run's "
                     f"{num_problems} problems make {num_batches} batches of {batch}, and this shard holds batch "
                     f"{k + 1}; resume with the same problems in the same order, or write to another folder")


def _batch_bucket(num_problems: int) -> int:
  """Trees per batch when `batch_size` is None: the problem count rounded up to a power of two.

  The tree kernels compile once per batch shape, so one batch of exactly `num_problems` trees compiled them anew for
  every problem count a caller passes. Padding rows run no rollouts and change no tree; they only widen the tree
  arrays (under 2x the rows; set `batch_size` to bound them).
  """
  return 1 << max(num_problems - 1, 0).bit_length()


def _clip(text, width: int = 60) -> str:
  return repr(text) if not isinstance(text, str) or len(text) <= width else repr(text[:width]) + "..."


def _progress_bar(total: int, enabled: bool, desc: str):
  if not enabled:
    return _NoBar()
  from tqdm import auto as tqdm_auto  # pylint: disable=import-outside-toplevel
  return tqdm_auto.tqdm(total=total, desc=desc, unit="rollout", dynamic_ncols=True)


class MCTS:
  """Lockstep batched MCTS over a policy, a code executor and (optionally) a scorer.

  Args:
    policy: implements `interfaces.Policy`.
    executor: implements `interfaces.CodeExecutor` (e.g. `sandbox.SandboxPool`).
    config: search settings.
    prompt_fn: question -> policy prompt (e.g. `prompts.load_sft_template(dir).format`).
    scorer: implements `interfaces.Scorer`; required in ppm_augmented / inference modes.
    grader: answer equivalence (default: `grading.default_grader()`).
    progress: show a tqdm bar of finished rollouts.
  """

  def __init__(self, policy: Policy, executor: CodeExecutor, config: SearchConfig, *,
               prompt_fn: PromptFn, scorer: Scorer | None = None,
               grader: grading.Grader | None = None, progress: bool = True):
    check_config(config, SearchConfig)
    if config.mode != "terminal_guided" and scorer is None:
      raise ValueError(f"mode {config.mode!r} needs a scorer (the PPM)")
    self.policy = policy
    self.executor = executor
    self.config = config
    self.prompt_fn = prompt_fn
    self.scorer = scorer
    self.grader = grader
    self.progress = progress
    self.stats = SearchStats()

  def _grader(self) -> grading.Grader:
    if self.grader is None:
      self.grader = grading.default_grader()
    return self.grader

  def run(self, problems: Sequence[Problem], output_dir: str | os.PathLike[str] | None = None,
          shard_prefix: str = "trees") -> list[dict]:
    """Searches every problem; returns the tree records in problem order.

    With `output_dir`, each batch is written as its own shard `{shard_prefix}-{k:05d}.jsonl`
    (atomically); a shard already present is read back instead of searched again (resume). The config
    is kept in `{shard_prefix}.config.json` beside the shards: resuming with another config, or with
    another problem list whose batch no longer matches a shard (or that has fewer batches than there are
    shards), raises `ValueError` (nothing is overwritten). Resuming assumes the same policy, scorer and
    executor (they cannot be checked). While it runs it holds `{shard_prefix}.lock` there: a second search on the
    same folder and prefix raises `files.FolderInUseError`.
    """
    cfg = self.config
    check_inputs(problems, self.prompt_fn)
    if cfg.mode != "inference":
      missing = [p.problem_id for p in problems if p.ground_truth is None]
      if missing:
        raise ValueError(f"mode {cfg.mode!r} needs ground truths; missing for {missing[:5]}")
    batch = cfg.batch_size or _batch_bucket(len(problems))
    if output_dir is None:
      return self._run(problems, None, shard_prefix, batch)
    _check_output_dir(os.fspath(output_dir))
    with files.FolderLock(output_dir, f"{shard_prefix}.lock", "search"):  # a second search would redo our shards
      return self._run(problems, os.fspath(output_dir), shard_prefix, batch)

  def _run(self, problems: Sequence[Problem], output_dir: str | None, shard_prefix: str, batch: int) -> list[dict]:
    """`run` once its inputs are checked (and `output_dir`, when given, is locked)."""
    cfg = self.config
    config_record = dataclasses.asdict(cfg)
    config_path = None if output_dir is None else os.path.join(os.fspath(output_dir), f"{shard_prefix}.config.json")
    config_written = config_path is not None and records.check_run_config(config_path, config_record)
    if output_dir is not None:
      _check_no_shards_beyond(os.fspath(output_dir), shard_prefix, len(problems), batch)
    out: list[dict] = []
    bar = _progress_bar(len(problems) * cfg.num_rollouts, self.progress, f"mcts[{cfg.mode}]")
    try:
      for k, start in enumerate(range(0, len(problems), batch)):
        chunk = problems[start:start + batch]
        shard = None
        if output_dir is not None:
          shard = os.path.join(os.fspath(output_dir), f"{shard_prefix}-{k:05d}.jsonl")
          if os.path.exists(shard):
            out.extend(self._resumed(shard, chunk))
            bar.update(len(chunk) * cfg.num_rollouts)
            continue
        batch_records = self._search_batch(chunk, batch, bar)
        if shard is not None:
          if not config_written:  # written with the first new shard, once the existing ones passed their checks
            records.write_run_config(config_path, config_record)
            config_written = True
          records.write_trees(shard, batch_records)
        out.extend(batch_records)
    finally:
      bar.close()
    return out

  def _resumed(self, shard: str, problems: Sequence[Problem]) -> list[dict]:
    """The records of an existing shard, checked to be this search's trees of `problems`."""
    cfg = self.config
    done = records.read_trees(shard)
    have, want = [r["problem_id"] for r in done], [p.problem_id for p in problems]
    if not have:  # a search never writes an empty shard (they are written whole): this one was emptied since
      raise ValueError(f"{shard}: holds no trees; it was emptied after it was written (shards are written whole): "
                       "delete it to search this batch again")
    if len(have) < len(want) and have == want[:len(have)]:
      raise ValueError(f"{shard}: holds the first {len(have)} of this batch's {len(want)} trees: the problem list grew "
                       "since it was written, or the shard was cut; resume with the same problems in the same order, "
                       "or delete the shard to search this batch again")
    if have != want:
      i = next((i for i, (a, b) in enumerate(zip(have, want)) if a != b), min(len(have), len(want)))
      found = repr(have[i]) if i < len(have) else "no more trees"
      wanted = repr(want[i]) if i < len(want) else "no more problems"
      raise ValueError(f"{shard}: the problem list changed since it was written: its tree {i} is {found}, this run's "
                       f"batch has {wanted} there ({len(have)} trees, {len(want)} problems); resume with the same "
                       "problems in the same order, or write to another folder")
    for r, p in zip(done, problems):  # a tree answers its problem as this run states it, under this run's settings
      seed = tree_seed(cfg.seed, r["problem_id"])
      if (r["mode"], r["preset"], r["seed"]) != (cfg.mode, cfg.preset, seed):
        raise ValueError(f"{shard}: tree {r['problem_id']!r} was searched with mode {r['mode']!r}, preset "
                         f"{r['preset']!r}, seed {r['seed']}; this run has {cfg.mode!r}, {cfg.preset!r}, {seed}")
      for field, value in (("question", p.question), ("ground_truth", p.ground_truth),
                           ("prompt", self.prompt_fn(p.question))):
        if r[field] != value:
          raise ValueError(f"{shard}: tree {r['problem_id']!r} has another {field} than this run's "
                           f"({_clip(r[field])} there, {_clip(value)} now); write to another folder")
    return done

  def _search_batch(self, problems: Sequence[Problem], batch_size: int, bar) -> list[dict]:
    """One lockstep loop over up to `batch_size` trees (padded to `batch_size` rows)."""
    cfg = self.config
    a = cfg.num_candidates
    n_real = len(problems)
    seeds = np.zeros([batch_size], np.uint32)
    seeds[:n_real] = [tree_seed(cfg.seed, p.problem_id) for p in problems]
    hosts = [HostTree(self.prompt_fn(p.question)) for p in problems]
    # Padding rows get no rollouts, so they never select anything.
    budget = np.where(np.arange(batch_size) < n_real, cfg.num_rollouts, 0)
    tree = init_tree(batch_size, cfg.num_slots, a, budget, cfg.max_depth, seeds)
    reported = 0
    t0 = time.perf_counter()
    # The selection is read below: written to host memory by the call.
    tree, sel = kernels.select(tree, cfg.rule, host_output=True, impl=cfg.kernel_impl)
    while True:
      nodes, rollouts = jax.device_get((sel.node, sel.rollout))
      self.stats.kernel_s += time.perf_counter() - t0
      finished = int(np.sum(np.where(nodes[:n_real] >= 0, rollouts[:n_real], cfg.num_rollouts)))
      bar.update(finished - reported)
      reported = finished
      rows = [b for b in range(n_real) if nodes[b] != NO_NODE]
      if not rows:
        break
      expansion = self._expand_rows(problems, hosts, seeds, rows, nodes, rollouts, batch_size)
      t0 = time.perf_counter()
      tree, sel = kernels.expand_and_select(tree, kernels.transfer_form(expansion), cfg.rule, host_output=True,
                                            impl=cfg.kernel_impl)
      self.stats.iterations += 1
    final = jax.device_get(tree)
    lost = int(np.sum(final.out_of_nodes[:n_real]))
    if lost:
      self.stats.out_of_nodes += lost
      _LOG.warning("%d trees stopped early: max_nodes=%d is too small", lost, cfg.num_slots)
    # The node fields are views of packed rows: take each `[B, N]` array once, not once per tree.
    visits, value_sum, reason = final.visits, final.value_sum, final.terminal_reason
    return [
        to_record(problem_id=p.problem_id, question=p.question, ground_truth=p.ground_truth,
                  prompt=hosts[b].prompt, seed=int(seeds[b]), mode=cfg.mode, preset=cfg.preset,
                  host=hosts[b], visits=visits[b], value_sum=value_sum[b], terminal_reason=reason[b],
                  out_of_nodes=bool(final.out_of_nodes[b]))
        for b, p in enumerate(problems)]

  def _expand_rows(self, problems, hosts, seeds, rows, nodes, rollouts, batch_size
                   ) -> kernels.Expansion:
    """Generation, sandbox, grading and PPM for the selected rows; returns the device update."""
    cfg = self.config
    a = cfg.num_candidates
    step_cfg = cfg.step
    t0 = time.perf_counter()
    prompts = [hosts[b].policy_prompt(int(nodes[b])) for b in rows]
    policy_seeds = [expansion_seed(int(seeds[b]), int(rollouts[b]), int(nodes[b])) for b in rows]
    t1 = time.perf_counter()
    candidates = self.policy.generate(prompts, n=a, seeds=policy_seeds, stop=list(cfg.stop))
    t2 = time.perf_counter()
    self.stats.generate_s += t2 - t1
    candidates = checked_candidates(candidates, len(rows), a, cfg.stop)

    parents = {b: hosts[b].parent_state(int(nodes[b])) for b in rows}
    planned = {}
    for b, cands in zip(rows, candidates):
      kept = dedupe_candidates(cands, cfg.first_answer_only)
      planned[b] = [plan_child(c, parents[b]) for c in kept]
    jobs = [(b, j) for b in rows for j, p in enumerate(planned[b]) if p.program is not None]
    t3 = time.perf_counter()
    # Checked inside the sandbox's time: the check reads a lazy result iterator to its end.
    results = checked_results(self.executor.run([planned[b][j].program for b, j in jobs]) if jobs else [], len(jobs))
    t4 = time.perf_counter()
    self.stats.sandbox_s += t4 - t3
    result_of = dict(zip(jobs, results))
    children = {b: [finish_child(p, result_of.get((b, j)), parents[b], step_cfg)
                    for j, p in enumerate(planned[b])] for b in rows}

    # Grade every new answer that has a ground truth.
    to_grade = [(b, j) for b in rows for j, c in enumerate(children[b])
                if c.reason == Reason.ANSWER and problems[b].ground_truth is not None]
    t5 = time.perf_counter()
    verdicts = self._grader().equivalent_batch(
        [(children[b][j].final_answer, problems[b].ground_truth) for b, j in to_grade]
    ) if to_grade else []
    t6 = time.perf_counter()
    self.stats.grade_s += t6 - t5
    correct = dict(zip(to_grade, verdicts))

    # One PPM call over every new child that needs a value.
    to_score = [(b, j) for b in rows for j, c in enumerate(children[b])
                if rules.needs_ppm(cfg.mode, c.reason)]
    t7 = time.perf_counter()
    if to_score:
      texts = [hosts[b].policy_prompt(int(nodes[b])) + children[b][j].text for b, j in to_score]
      values = checked_scores(self.scorer.score(texts), texts)
    else:
      values = np.zeros([0], np.float32)
    t8 = time.perf_counter()
    self.stats.score_s += t8 - t7
    ppm = dict(zip(to_score, values.tolist()))

    parent = np.full([batch_size], NO_NODE, np.int32)
    count = np.zeros([batch_size], np.int32)
    reason = np.zeros([batch_size, a], np.int32)
    errors = np.zeros([batch_size, a], np.int32)
    ppm_value = np.full([batch_size, a], np.nan, np.float32)
    value = np.zeros([batch_size, a], np.float32)
    update_self = np.zeros([batch_size, a], bool)
    update_path = np.zeros([batch_size, a], bool)
    for b in rows:
      node = int(nodes[b])
      parent[b] = node
      count[b] = len(children[b])
      for j, child in enumerate(children[b]):
        cid = hosts[b].add_child(node, child)
        host_node = hosts[b].nodes[cid]
        host_node.correct = correct.get((b, j))
        host_node.ppm_value = ppm.get((b, j))
        v, scope = rules.leaf_update(cfg.mode, cfg.preset, child.reason, host_node.correct,
                                     host_node.ppm_value, cfg.positive_reward, cfg.negative_reward)
        reason[b, j] = int(child.reason)
        errors[b, j] = child.consecutive_errors
        if host_node.ppm_value is not None:
          ppm_value[b, j] = host_node.ppm_value
        value[b, j] = v
        update_self[b, j] = scope == rules.SCOPE_SELF
        update_path[b, j] = scope == rules.SCOPE_PATH
    self.stats.expansions += len(rows)
    self.stats.children += int(count.sum())
    self.stats.host_s += (time.perf_counter() - t0) - (t2 - t1) - (t4 - t3) - (t6 - t5) - (t8 - t7)
    # numpy arrays: they reach the device inside the kernel call (one transfer, not one dispatch per field).
    return kernels.Expansion(
        parent=parent, count=count, terminal_reason=reason,
        consecutive_errors=errors, ppm_value=ppm_value, value=value, update_self=update_self,
        update_path=update_path)


def run_search(problems: Sequence[Problem], policy: Policy, executor: CodeExecutor,
               config: SearchConfig, *, prompt_fn: PromptFn, scorer: Scorer | None = None,
               grader: grading.Grader | None = None, output_dir: str | os.PathLike[str] | None = None,
               progress: bool = True) -> list[dict]:
  """`MCTS(...).run(problems, output_dir)`: Q-annotated tree records, one per problem."""
  search = MCTS(policy, executor, config, prompt_fn=prompt_fn, scorer=scorer, grader=grader,
                progress=progress)
  return search.run(problems, output_dir=output_dir)
