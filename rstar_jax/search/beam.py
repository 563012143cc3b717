"""Step-level beam search: the fast inference alternative to MCTS (DESIGN §1.2).

For every problem, keep up to `beam_width` partial solutions. Each step samples `samples_per_step`
candidates per beam node (one policy call for all beams of all problems), runs the step protocol
(one sandbox batch), scores every new non-terminal child and every new answer with the PPM (one
scorer call), and keeps the `width` best non-terminal children by PPM score as the next beams. As in
the official step beam search, each answer found shrinks that problem's width by one; the search of a
problem ends when its width or its beams run out, or after `max_depth` steps. The answer is the one with the
highest PPM score.

Versus the official `BS` (agents/beam_search.py): there the next beam is the top `width` of *all* new children by
PPM score, finished ones included, and the samples generated for the unfinished ones are then zipped onto that
list, so a finished node can take another node's children. Here the beam holds unfinished children only and each
keeps its own samples. The official `BS.create_child` also ends a path at its first code error whatever
`errors_threshold` says; here `errors_threshold` applies (the same at its default, 1). The official width count goes
on below 0 when one step finds more answers than the width left, and `candidate_nodes[:-k]` then keeps all but the
last k new children; here the width stops at 0. The official code also scores the invalid terminals (their value
decides whether they take a beam slot); here nothing ranks them, so they keep no PPM value.

The output uses the tree JSONL schema (mode "inference"): every generated node, with its PPM value where it was
scored; visits and values stay 0 (beam search backs nothing up).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rstar_jax import grading
from rstar_jax.search.driver import Problem, PromptFn, check_config, check_inputs
from rstar_jax.search.host import HostTree, check_run_seed, expansion_seed, to_record, tree_seed
from rstar_jax.search.interfaces import (CodeExecutor, Policy, Scorer, checked_candidates, checked_results,
                                         checked_scores)
from rstar_jax.search.step import (STOP_STRINGS, StepConfig, checked_stop, dedupe_candidates, finish_child,
                                   plan_child)
from rstar_jax.search.tree import ROOT_INDEX, Reason


@dataclasses.dataclass(frozen=True)
class BeamConfig:
  """Beam search settings (DESIGN §1.2 inference: beam 8, 8 samples per step).

  Attributes:
    beam_width: partial solutions kept per problem.
    samples_per_step: candidates sampled per beam node.
    max_depth, errors_threshold, first_answer_only, stop: the step protocol's settings.
    seed: run seed.
  """
  beam_width: int = 8
  samples_per_step: int = 8
  max_depth: int = 16
  errors_threshold: int = 1
  first_answer_only: bool = True
  stop: tuple[str, ...] = STOP_STRINGS
  seed: int = 0

  def __post_init__(self):
    for field in ("beam_width", "samples_per_step"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"BeamConfig.{field} must be an integer >= 1, got {value!r}")
    StepConfig(self.errors_threshold, self.max_depth, self.first_answer_only)  # checks those two now, not mid-run
    object.__setattr__(self, "stop", checked_stop(self.stop))
    check_run_seed(self.seed, "BeamConfig.seed")


def best_answer(record: dict) -> str | None:
  """The final answer with the highest PPM value in a tree record (the first of equals).

  A record whose answers carry no PPM value (a terminal-guided tree) gives its first answer node's; one without
  answer nodes gives None.
  """
  answers = [n for n in record["nodes"] if n["terminal_reason"] == "answer"]
  scored = [n for n in answers if n["ppm_value"] is not None]
  if not scored:
    return answers[0]["final_answer"] if answers else None
  return max(scored, key=lambda n: n["ppm_value"])["final_answer"]


def beam_search(problems: Sequence[Problem], policy: Policy, executor: CodeExecutor,
                scorer: Scorer, config: BeamConfig, *, prompt_fn: PromptFn,
                grader: grading.Grader | None = None) -> list[dict]:
  """Runs step-level beam search on every problem (all in lockstep); returns tree records."""
  check_config(config, BeamConfig)
  step_cfg = StepConfig(config.errors_threshold, config.max_depth, config.first_answer_only)
  check_inputs(problems, prompt_fn)  # as `MCTS.run`
  seeds = [tree_seed(config.seed, p.problem_id) for p in problems]
  hosts = [HostTree(prompt_fn(p.question)) for p in problems]
  beams = [[ROOT_INDEX] for _ in problems]
  width = [config.beam_width] * len(problems)
  step = 0
  while any(beams) and step < config.max_depth:  # the official `for step in range(max_depth)`
    rows = [(b, v) for b, nodes in enumerate(beams) for v in nodes]
    prompts = [hosts[b].policy_prompt(v) for b, v in rows]
    policy_seeds = [expansion_seed(seeds[b], step, v) for b, v in rows]
    candidates = checked_candidates(policy.generate(prompts, n=config.samples_per_step, seeds=policy_seeds,
                                                    stop=list(config.stop)),
                                    len(prompts), config.samples_per_step, config.stop)
    parents = [hosts[b].parent_state(v) for b, v in rows]
    planned = [[plan_child(c, parent) for c in dedupe_candidates(cands, config.first_answer_only)]
               for cands, parent in zip(candidates, parents)]
    jobs = [(r, j) for r, plans in enumerate(planned) for j, p in enumerate(plans)
            if p.program is not None]
    programs = [planned[r][j].program for r, j in jobs]
    results = dict(zip(jobs, checked_results(executor.run(programs), len(jobs)))) if jobs else {}
    # Each problem's new children, in creation order: grouped as they are made, so ranking them below costs one pass
    # over the step's children, not one per problem.
    fresh: list[list[int]] = [[] for _ in problems]
    for r, ((b, v), plans) in enumerate(zip(rows, planned)):
      for j, p in enumerate(plans):
        child = finish_child(p, results.get((r, j)), parents[r], step_cfg)
        fresh[b].append(hosts[b].add_child(v, child))
    to_score = [(b, c) for b, children in enumerate(fresh) for c in children
                if hosts[b].nodes[c].reason in (Reason.NONE, Reason.ANSWER)]
    if to_score:
      texts = [hosts[b].policy_prompt(c) for b, c in to_score]
      values = checked_scores(scorer.score(texts), texts)
      for (b, c), value in zip(to_score, values.tolist()):
        hosts[b].nodes[c].ppm_value = value
    next_beams: list[list[int]] = [[] for _ in problems]
    for b, children in enumerate(fresh):
      width[b] = max(0, width[b] - sum(hosts[b].nodes[c].reason == Reason.ANSWER for c in children))
      alive = [c for c in children if hosts[b].nodes[c].reason == Reason.NONE]
      alive.sort(key=lambda c: -hosts[b].nodes[c].ppm_value)  # stable: ties keep creation order
      next_beams[b] = alive[:width[b]]
    beams = next_beams
    step += 1

  graded = [(b, i) for b, h in enumerate(hosts) for i, n in enumerate(h.nodes)
            if n.reason == Reason.ANSWER and problems[b].ground_truth is not None]
  if graded:
    grader = grader or grading.default_grader()
    verdicts = grader.equivalent_batch(
        [(hosts[b].nodes[i].final_answer, problems[b].ground_truth) for b, i in graded])
    for (b, i), ok in zip(graded, verdicts):
      hosts[b].nodes[i].correct = ok
  out = []
  for b, p in enumerate(problems):
    n = len(hosts[b])
    reasons = np.array([int(node.reason) for node in hosts[b].nodes], np.int32)
    out.append(to_record(
        problem_id=p.problem_id, question=p.question, ground_truth=p.ground_truth,
        prompt=hosts[b].prompt, seed=seeds[b], mode="inference", preset="official", host=hosts[b],
        visits=np.zeros([n], np.int32), value_sum=np.zeros([n], np.float32),
        terminal_reason=reasons))
  return out
