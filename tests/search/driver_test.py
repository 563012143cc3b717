"""The host driver: replay determinism, batch independence, shards, the progress bar's bookkeeping,
interface checks and step-level beam search (scripted, seed-driven policies; in-process executor)."""

import concurrent.futures
import json
import os
import sys

import numpy as np
import pytest

from rstar_jax.grading import Grader
from rstar_jax.search import (MCTS, BeamConfig, Problem, SearchConfig, beam_search, best_answer,
                              read_trees, run_search, validate_tree)
from rstar_jax.search.host import tree_seed
from rstar_jax.search.interfaces import StepCandidate
from rstar_jax.search.scripted import FakeResult, FunctionScorer, InProcessExecutor, ScriptedPolicy

PROMPT = "Q: {}\n"


def random_script(prompt, n, seed):
  """Candidates drawn from the seed: code steps, block closers, errors, answers, junk."""
  rng = np.random.default_rng(seed)
  steps = []
  for _ in range(n):
    k = int(rng.integers(0, 5))
    kind = rng.choice(6, p=[0.3, 0.2, 0.1, 0.25, 0.1, 0.05])
    steps.append([f"<code>\na = {k}\n<end_of_step>", f"print(a + {k})\n<end_of_code>",
                  f"b = {k} / 0\n<end_of_step>", f"So \\boxed{{{k}}}.<end_of_answer>",
                  f"c = {k}\n<end_of_step>", f"junk {k}"][kind])
  return steps


def random_ppm(text):
  return float(np.random.default_rng(len(text) * 7919 + text.count("a")).uniform(-1, 1))


PROBLEMS = [Problem(f"p{i}", f"question {i}", str(i % 4)) for i in range(6)]


@pytest.fixture(scope="module")
def grader():
  with Grader() as g:
    yield g


def _search(problems, grader, mode="terminal_guided", seed=0, batch_size=None, preset="official",
            **kw):
  config = SearchConfig(mode=mode, preset=preset, num_rollouts=4, num_candidates=4, max_depth=4,
                        errors_threshold=2, seed=seed, batch_size=batch_size, max_nodes=96)
  scorer = FunctionScorer(random_ppm) if mode != "terminal_guided" else None
  return run_search(problems, ScriptedPolicy(random_script), InProcessExecutor(), config,
                    prompt_fn=PROMPT.format, scorer=scorer, grader=grader, progress=False, **kw)


@pytest.mark.parametrize("mode,preset", [("terminal_guided", "official"), ("ppm_augmented", "paper")])
def test_replay_same_seed_same_trees(grader, mode, preset):
  first = _search(PROBLEMS, grader, mode=mode, preset=preset)
  again = _search(PROBLEMS, grader, mode=mode, preset=preset)
  assert json.dumps(first) == json.dumps(again)
  other = _search(PROBLEMS, grader, mode=mode, preset=preset, seed=1)
  assert json.dumps(first) != json.dumps(other)
  assert max(len(r["nodes"]) for r in first) > 10  # the random trees are not trivial
  for record in first:
    validate_tree(record)


def test_tree_does_not_depend_on_its_batch(grader):
  together = _search(PROBLEMS, grader, mode="ppm_augmented")
  in_twos = _search(PROBLEMS, grader, mode="ppm_augmented", batch_size=4)  # 4 + 2 (padded)
  alone = [_search([p], grader, mode="ppm_augmented")[0] for p in PROBLEMS[:3]]
  reordered = _search(PROBLEMS[::-1], grader, mode="ppm_augmented")[::-1]
  assert json.dumps(together) == json.dumps(in_twos) == json.dumps(reordered)
  assert json.dumps(together[:3]) == json.dumps(alone)


def test_shards_are_written_and_resumed(grader, tmp_path):
  records = _search(PROBLEMS, grader, batch_size=4, output_dir=tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["trees-00000.jsonl", "trees-00001.jsonl",
                                                         "trees.config.json", "trees.lock"]
  shards = ["trees-00000.jsonl", "trees-00001.jsonl"]
  assert read_trees([tmp_path / s for s in shards]) == json.loads(json.dumps(records))

  class Boom:
    def generate(self, *a, **k):
      raise AssertionError("a finished shard must not be searched again")

  config = SearchConfig(num_rollouts=4, num_candidates=4, max_depth=4, errors_threshold=2,
                        batch_size=4, max_nodes=96)
  resumed = MCTS(Boom(), InProcessExecutor(), config, prompt_fn=PROMPT.format, grader=grader,
                 progress=False).run(PROBLEMS, output_dir=tmp_path)
  assert resumed == read_trees([tmp_path / s for s in shards])


def test_resume_names_a_cut_shard(grader, tmp_path):
  """A shard emptied or cut after it was written was reported as "the problem list changed"; it is now named as
  cut (or, for the first k trees in order, as a grown problem list or a cut shard), and nothing is overwritten."""
  _search(PROBLEMS, grader, batch_size=4, output_dir=tmp_path)
  shard = tmp_path / "trees-00000.jsonl"
  lines = shard.read_bytes().splitlines(keepends=True)
  assert len(lines) == 4
  for kept, message in [(0, r"trees-00000\.jsonl: holds no trees; it was emptied after it was written"),
                        (2, r"trees-00000\.jsonl: holds the first 2 of this batch's 4 trees: the problem list grew "
                            r"since it was written, or the shard was cut")]:
    shard.write_bytes(b"".join(lines[:kept]))
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=message):
      _search(PROBLEMS, grader, batch_size=4, output_dir=tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == written


def test_resume_refuses_trees_of_another_search(grader, tmp_path):
  _search(PROBLEMS, grader, batch_size=4, output_dir=tmp_path)
  written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  with pytest.raises(ValueError, match=r"trees\.config\.json: .*mode: 'terminal_guided' there, 'ppm_augmented' now.*"
                                       r"seed: 0 there, 1 now"):
    _search(PROBLEMS, grader, mode="ppm_augmented", seed=1, batch_size=4, output_dir=tmp_path)
  # The same config over another problem list: the first shard's batch no longer matches.
  others = [Problem(f"q{i}", f"question {i}", "1") for i in range(6)]
  with pytest.raises(ValueError, match=r"trees-00000\.jsonl: the problem list changed since it was written: its tree 0 "
                                       r"is 'p0', this run's batch has 'q0' there \(4 trees, 4 problems\)"):
    _search(others, grader, batch_size=4, output_dir=tmp_path)
  with pytest.raises(ValueError, match=r"trees-00000\.jsonl: .*its tree 3 is 'p3', this run's batch has 'p4' there"):
    _search(PROBLEMS[:3] + PROBLEMS[4:], grader, batch_size=4, output_dir=tmp_path)
  # The same ids with a corrected ground truth (or question, or prompt template): the old grades would come back.
  fixed = [Problem(p.problem_id, p.question, "42") for p in PROBLEMS]
  with pytest.raises(ValueError, match=r"trees-00000\.jsonl: tree 'p0' has another ground_truth than this run's "
                                       r"\('0' there, '42' now\)"):
    _search(fixed, grader, batch_size=4, output_dir=tmp_path)
  with pytest.raises(ValueError, match=r"tree 'p0' has another prompt than this run's"):
    run_search(PROBLEMS, ScriptedPolicy(random_script), InProcessExecutor(),
               SearchConfig(num_rollouts=4, num_candidates=4, max_depth=4, errors_threshold=2, batch_size=4,
                            max_nodes=96), prompt_fn="Question: {}\n".format, grader=grader, progress=False,
               output_dir=tmp_path)
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == written  # nothing overwritten
  # A shard from before the config file (or edited by hand) is checked tree by tree.
  (tmp_path / "trees.config.json").unlink()
  del written["trees.config.json"]
  with pytest.raises(ValueError, match=r"trees-00000\.jsonl: tree 'p0' was searched with mode 'terminal_guided'"):
    _search(PROBLEMS, grader, mode="ppm_augmented", batch_size=4, output_dir=tmp_path)
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == written


def test_policy_prompts_seeds_and_stats(grader):
  policy = ScriptedPolicy(random_script)
  config = SearchConfig(num_rollouts=3, num_candidates=4, max_depth=4, errors_threshold=2,
                        max_nodes=96)
  search = MCTS(policy, InProcessExecutor(), config, prompt_fn=PROMPT.format, grader=grader,
                progress=False)
  (record,) = search.run(PROBLEMS[:1])
  nodes = record["nodes"]
  expanded = [n for n in nodes if n["children"]]
  assert search.stats.expansions == len(expanded) == sum(len(p) for p, _ in policy.calls)
  assert search.stats.children == len(nodes) - 1
  # Every prompt is the template + the path's texts; every seed is distinct.
  prompts = {p for batch, _ in policy.calls for p in batch}
  for n in expanded:
    path, v = [], n["id"]
    while v != -1:
      path.append(nodes[v]["text"])
      v = nodes[v]["parent"]
    assert PROMPT.format("question 0") + "".join(reversed(path)) in prompts
  seeds = [s for _, batch in policy.calls for s in batch]
  assert len(set(seeds)) == len(seeds)
  assert search.stats.total_s > 0 and search.stats.kernel_s > 0


def test_bad_inputs_are_rejected(grader):
  with pytest.raises(ValueError, match="scorer"):
    MCTS(ScriptedPolicy(random_script), InProcessExecutor(), SearchConfig(mode="inference"),
         prompt_fn=PROMPT.format)
  with pytest.raises(ValueError, match="ground truth"):
    _search([Problem("x", "q")], grader)
  with pytest.raises(ValueError, match="unique"):
    _search([PROBLEMS[0], PROBLEMS[0]], grader)
  with pytest.raises(ValueError, match="mode"):
    SearchConfig(mode="bogus")
  with pytest.raises(ValueError, match="preset"):
    SearchConfig(preset="bogus")
  # A negative batch size used to search nothing and return no trees; 0 silently meant "all in one batch".
  for batch_size in (-1, 0):
    with pytest.raises(ValueError, match=rf"batch_size must be None \(all problems in one batch\) or >= 1, got "
                                         rf"{batch_size}"):
      SearchConfig(batch_size=batch_size)
  with pytest.raises(ValueError, match=r"max_nodes must be None or >= 1 \+ num_candidates = 5 .*got 4"):
    SearchConfig(num_candidates=4, max_nodes=4)
  with pytest.raises(ValueError, match="c must be finite, got nan"):
    SearchConfig(c=float("nan"))
  short = ScriptedPolicy(lambda prompt, n, seed: random_script(prompt, n, seed)[:1] * n)
  config = SearchConfig(num_rollouts=1, num_candidates=2, max_nodes=16)

  class WrongCount:
    def generate(self, prompts, *, n, seeds, stop):
      return short.generate(prompts, n=n, seeds=seeds, stop=stop)[:0]

  with pytest.raises(ValueError, match="candidate lists"):
    run_search(PROBLEMS[:1], WrongCount(), InProcessExecutor(), config, prompt_fn=PROMPT.format,
               grader=grader, progress=False)


def test_beam_search_runs_max_depth_steps(grader):
  # The official `for step in range(max_depth)`: max_depth generation rounds, so no node deeper than max_depth.
  policy = ScriptedPolicy(lambda prompt, n, seed: [f"x = {seed % 97}\n<end_of_step>"] * n)
  config = BeamConfig(beam_width=2, samples_per_step=2, max_depth=3)
  (record,) = beam_search(PROBLEMS[:1], policy, InProcessExecutor(), FunctionScorer(random_ppm), config,
                          prompt_fn=PROMPT.format, grader=grader)
  assert len(policy.calls) == 3
  assert max(n["depth"] for n in record["nodes"]) == 3


@pytest.mark.parametrize("settings,message", [
    (dict(beam_width=2.5), r"BeamConfig.beam_width must be an integer >= 1, got 2.5"),  # was a slice error mid-run
    (dict(samples_per_step=0), r"BeamConfig.samples_per_step must be an integer >= 1, got 0"),
    (dict(max_depth=0), r"max_depth must be an integer >= 1, got 0"),  # these two were found only once the search
    (dict(errors_threshold=0), r"errors_threshold must be an integer >= 1, got 0"),  # started
    (dict(max_depth=2.5), r"max_depth must be an integer >= 1, got 2.5"),  # ran 3 steps
    (dict(seed=1.5), r"BeamConfig.seed must be an integer, got 1.5"),  # seeded as seed 1
    (dict(first_answer_only="false"), r"first_answer_only must be a bool, got 'false'"),  # a non-empty str is true
])
def test_a_bad_beam_config_is_refused_on_construction(settings, message):
  with pytest.raises(ValueError, match=message):
    BeamConfig(**settings)


@pytest.mark.parametrize("make", [SearchConfig, BeamConfig])
@pytest.mark.parametrize("seed", [2**32, 2**32 + 7, -1])
def test_a_run_seed_outside_32_bits_is_refused(make, seed):
  # Tree seeds read the run seed as 32 bits: seed 2**32 searched exactly the trees of seed 0 (and -1 those of
  # 2**32 - 1), two runs a user meant to differ.
  assert tree_seed(seed, "p0") == tree_seed(seed % 2**32, "p0")
  with pytest.raises(ValueError, match=rf"{make.__name__}.seed must be in \[0, 2\*\*32\).*got {seed}"):
    make(seed=seed)
  make(seed=2**32 - 1)  # the top of the range is a seed


@pytest.mark.parametrize("make", [SearchConfig, BeamConfig])
def test_a_single_stop_string_is_refused_not_split_into_characters(make):
  # `stop="<end_of_step>"` was passed on as list("<end_of_step>"): the policy ended a step at its first "<", "e", "n",
  # ... and the search ran on as if nothing were wrong (the candidates' stop reasons were all among those characters).
  with pytest.raises(TypeError, match=r"stop must be a sequence of stop strings .*got str '<end_of_step>'"):
    make(stop="<end_of_step>")
  with pytest.raises(ValueError, match=r"stop strings must be non-empty strings, got ''"):
    make(stop=("<end_of_step>", ""))  # a policy would stop at once on the empty string
  assert make(stop=["<end_of_step>", "<end_of_answer>"]).stop == ("<end_of_step>", "<end_of_answer>")


@pytest.mark.parametrize("settings,message", [
    # Each failed only after the search started (a jax shape error in init_tree, range() of a float) or ran as
    # another setting: errors_threshold 1.5 ended a path at 2 errors, seed 1.5 was seed 1.
    (dict(num_rollouts=2.5), r"SearchConfig.num_rollouts must be an integer, got 2.5"),
    (dict(num_candidates=2.5), r"SearchConfig.num_candidates must be an integer, got 2.5"),
    (dict(num_candidates=True), r"SearchConfig.num_candidates must be an integer, got True"),
    (dict(max_nodes=40.5), r"SearchConfig.max_nodes must be an integer, got 40.5"),
    (dict(batch_size=2.5), r"SearchConfig.batch_size must be an integer, got 2.5"),
    (dict(seed=None), r"SearchConfig.seed must be an integer, got None"),
    (dict(num_rollouts="16"), r"SearchConfig.num_rollouts must be an integer, got '16'"),  # was '<' not supported
    (dict(max_depth=2.5), r"max_depth must be an integer >= 1, got 2.5"),
    (dict(errors_threshold=1.5), r"errors_threshold must be an integer >= 1, got 1.5"),
    (dict(c="2"), r"SearchConfig.c must be a number, got '2'"),  # was math.isfinite's 'must be real number'
    (dict(positive_reward=None), r"SearchConfig.positive_reward must be a number, got None"),
    (dict(first_answer_only="false"), r"first_answer_only must be a bool, got 'false'"),  # ran as True
    (dict(first_answer_only=0), r"first_answer_only must be a bool, got 0"),
])
def test_a_bad_search_config_is_refused_on_construction(settings, message):
  with pytest.raises(ValueError, match=message):
    SearchConfig(**settings)


@pytest.mark.parametrize("problems,prompt_fn,message", [
    # Problems read from JSON: "'dict' object has no attribute 'ground_truth'" (MCTS) / "... 'problem_id'" (beam).
    ([{"problem_id": "p0", "question": "q", "ground_truth": "1"}], PROMPT.format,
     r"problems\[0\] must be a Problem \(Problem\(\*\*record\) for a JSON record\), got dict"),
    (PROBLEMS[0], PROMPT.format, r"problems must be a sequence of Problem, got one Problem"),  # 'not iterable'
    # The template itself instead of its .format: "'str' object is not callable".
    (PROBLEMS[:1], PROMPT,
     r"prompt_fn must be a callable question -> prompt \(.*; a template string with a \{\} field: its .format\)"),
])
def test_problems_and_prompt_fn_of_the_wrong_kind_are_named(grader, problems, prompt_fn, message):
  policy = ScriptedPolicy(random_script)
  with pytest.raises(TypeError, match=message):
    run_search(problems, policy, InProcessExecutor(), SearchConfig(num_rollouts=1, num_candidates=2),
               prompt_fn=prompt_fn, grader=grader, progress=False)
  with pytest.raises(TypeError, match=message):
    beam_search(problems, policy, InProcessExecutor(), FunctionScorer(random_ppm),
                BeamConfig(beam_width=1, samples_per_step=1, max_depth=1), prompt_fn=prompt_fn, grader=grader)
  assert not policy.calls


def test_rstar_s_template_string_as_prompt_fn_is_pointed_at_the_template_loader(grader, shared_data):
  # The hint said "for a template string, its .format": rStar's templates fill an `{input}` field, so that ran into
  # KeyError: 'input' (and `.format(input=question)` lacks the newline the official wrap puts after the question).
  suffix = json.loads((shared_data / "prompts" / "sft_prompt.json").read_text(encoding="utf-8"))["pot_suffix"]
  assert "{input}" in suffix
  policy = ScriptedPolicy(random_script)
  with pytest.raises(TypeError, match=r"rstar_jax\.prompts\.load_sft_template\(dir\)\.format"):
    run_search(PROBLEMS[:1], policy, InProcessExecutor(), SearchConfig(num_rollouts=1, num_candidates=2),
               prompt_fn=suffix, grader=grader, progress=False)
  assert not policy.calls


def test_a_search_config_of_the_wrong_kind_is_named(grader):
  # A config read from a file (e.g. trees.config.json) passed as the dict failed as "'dict' object has no attribute
  # 'mode'" (MCTS) / "... 'errors_threshold'" (beam), naming no argument; TrainConfig's trainers name theirs.
  policy = ScriptedPolicy(random_script)
  with pytest.raises(TypeError, match=r"config must be a SearchConfig \(SearchConfig\(\*\*mapping\) builds one\), "
                                      r"got dict"):
    run_search(PROBLEMS[:1], policy, InProcessExecutor(), {"num_rollouts": 1}, prompt_fn=PROMPT.format,
               grader=grader, progress=False)
  with pytest.raises(TypeError, match=r"config must be a BeamConfig \(BeamConfig\(\*\*mapping\) builds one\), got "
                                      r"SearchConfig"):
    beam_search(PROBLEMS[:1], policy, InProcessExecutor(), FunctionScorer(random_ppm), SearchConfig(),
                prompt_fn=PROMPT.format, grader=grader)
  assert not policy.calls


def test_problems_as_a_generator_are_named(grader):
  # The input check consumed the generator, then `len(problems)` failed as "object of type 'generator' has no len()".
  policy = ScriptedPolicy(random_script)
  message = r"problems must be a sequence of Problem \(a list\), got generator: pass list\(problems\)"
  with pytest.raises(TypeError, match=message):
    run_search((p for p in PROBLEMS[:2]), policy, InProcessExecutor(), SearchConfig(num_rollouts=1, num_candidates=2),
               prompt_fn=PROMPT.format, grader=grader, progress=False)
  with pytest.raises(TypeError, match=message):
    beam_search((p for p in PROBLEMS[:2]), policy, InProcessExecutor(), FunctionScorer(random_ppm),
                BeamConfig(beam_width=1, samples_per_step=1, max_depth=1), prompt_fn=PROMPT.format, grader=grader)
  assert not policy.calls


def test_an_output_dir_that_cannot_hold_shards_is_refused_before_searching(grader, tmp_path):
  # The folder was first created when the first shard was written, after that batch's whole search (here: every
  # problem's), so a path under a file ended in FileExistsError with all the trees lost.
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  policy = ScriptedPolicy(random_script)
  for out in (blocker, blocker / "trees"):
    with pytest.raises(ValueError, match=rf"output_dir {out}: cannot create it"):
      run_search(PROBLEMS, policy, InProcessExecutor(), SearchConfig(num_rollouts=2, num_candidates=2),
                 prompt_fn=PROMPT.format, grader=grader, progress=False, output_dir=out)
  assert not policy.calls


def test_a_prompt_fn_that_returns_no_string_is_named(grader):
  # It failed at the first expansion as a bare TypeError from string concatenation.
  as_list = lambda question: [PROMPT.format(question)]
  with pytest.raises(TypeError, match=r"prompt_fn must return the prompt as a str, got list \['Q: "):
    run_search(PROBLEMS[:1], ScriptedPolicy(random_script), InProcessExecutor(),
               SearchConfig(num_rollouts=1, num_candidates=2, max_depth=2, max_nodes=16), prompt_fn=as_list,
               grader=grader, progress=False)
  with pytest.raises(TypeError, match="prompt_fn must return the prompt as a str, got list"):
    beam_search(PROBLEMS[:1], ScriptedPolicy(random_script), InProcessExecutor(), FunctionScorer(random_ppm),
                BeamConfig(beam_width=2, samples_per_step=2, max_depth=2), prompt_fn=as_list, grader=grader)


def test_beam_search_refuses_duplicate_problem_ids(grader):
  # As MCTS.run: the two trees would share a seed and their records a problem_id.
  with pytest.raises(ValueError, match="problem ids must be unique"):
    beam_search([PROBLEMS[0], PROBLEMS[0]], ScriptedPolicy(random_script), InProcessExecutor(),
                FunctionScorer(random_ppm), BeamConfig(beam_width=2, samples_per_step=2, max_depth=2),
                prompt_fn=PROMPT.format, grader=grader)


@pytest.mark.parametrize("scores,message", [
    (lambda texts: [float("nan")] * len(texts), r"scorer returned nan for text 0 .*values must be finite"),
    (lambda texts: [0.5] * (len(texts) + 1), r"scorer returned \d+ values for \d+ texts"),
    # No numbers: None read as one NaN ("1 values for N texts"), a None among floats as NaN, text failed in numpy.
    (lambda texts: None, r"scorer returned a NoneType for \d+ texts, not numbers"),
    (lambda texts: [None] + [0.5] * (len(texts) - 1), r"scorer returned a list for \d+ texts, not numbers: \[None"),
    (lambda texts: ["high"] * len(texts), r"scorer returned a list for \d+ texts, not numbers"),
])
def test_bad_scorer_output_is_rejected_where_it_arrives(grader, scores, message):
  # A NaN value would win (MCTS selection) or land anywhere (beam ranking) without a word; a wrong count would
  # shift every value onto the wrong text.
  class Scorer:
    def score(self, texts):
      return scores(texts)

  with pytest.raises(ValueError, match=message):
    run_search(PROBLEMS[:2], ScriptedPolicy(random_script), InProcessExecutor(),
               SearchConfig(mode="ppm_augmented", num_rollouts=2, num_candidates=4, max_depth=4, max_nodes=64),
               prompt_fn=PROMPT.format, scorer=Scorer(), grader=grader, progress=False)
  with pytest.raises(ValueError, match=message):
    beam_search(PROBLEMS[:2], ScriptedPolicy(random_script), InProcessExecutor(), Scorer(),
                BeamConfig(beam_width=2, samples_per_step=4, max_depth=4), prompt_fn=PROMPT.format, grader=grader)


def test_inference_without_ground_truth(grader):
  records = _search([Problem("u", "question u")], grader, mode="inference")
  nodes = records[0]["nodes"]
  assert all(n["correct"] is None for n in nodes)
  answers = [n for n in nodes if n["terminal_reason"] == "answer"]
  assert answers and all(n["ppm_value"] is not None for n in answers)


def test_beam_search(grader):
  scorer = FunctionScorer(random_ppm)
  config = BeamConfig(beam_width=3, samples_per_step=4, max_depth=4, errors_threshold=2)
  records = beam_search(PROBLEMS[:3], ScriptedPolicy(random_script), InProcessExecutor(), scorer,
                        config, prompt_fn=PROMPT.format, grader=grader)
  again = beam_search(PROBLEMS[:3], ScriptedPolicy(random_script), InProcessExecutor(), scorer,
                      config, prompt_fn=PROMPT.format, grader=grader)
  assert json.dumps(records) == json.dumps(again)
  assert max(n["depth"] for r in records for n in r["nodes"]) >= 2
  for record in records:
    validate_tree(record)
    nodes = record["nodes"]
    by_depth = {}
    for n in nodes:
      by_depth.setdefault(n["depth"], []).append(n)
    # Only the best non-terminal children (by PPM) of a step are expanded, at most beam_width.
    for depth, level in by_depth.items():
      expanded = [n for n in level if n["children"]]
      assert len(expanded) <= config.beam_width
      alive = [n for n in level if not n["terminal"]]
      if expanded:
        cutoff = min(n["ppm_value"] for n in expanded)
        assert all(n["ppm_value"] <= cutoff for n in alive if not n["children"])
    scored = [n for n in nodes if n["terminal_reason"] in (None, "answer") and n["id"] != 0]
    assert all(n["ppm_value"] is not None for n in scored)
    answers = [n for n in nodes if n["terminal_reason"] == "answer"]
    if answers:
      best = max(answers, key=lambda n: n["ppm_value"])
      assert best_answer(record) == best["final_answer"]
      assert all(n["correct"] is not None for n in answers)



def test_best_answer_of_scored_unscored_and_answerless_records():
  # Its docstring against a hand-made record: the highest PPM value wins (the first of equals); answers without PPM
  # values (a terminal-guided tree) give the first answer node's; no answer node gives None.
  def node(answer, value, reason="answer"):
    return {"terminal_reason": reason, "final_answer": answer, "ppm_value": value}
  scored = {"nodes": [node(None, None, None), node("1", 0.2), node("2", 0.7), node("3", 0.7), node("4", None)]}
  assert best_answer(scored) == "2"
  assert best_answer({"nodes": [node(None, None, None), node("5", None), node("6", None)]}) == "5"
  assert best_answer({"nodes": [node(None, 0.9, None), node(None, 0.1, "too_many_errors")]}) is None

class _FixedPolicy:
  """Returns `make(prompt index, candidate index)` for every candidate; `lists` overrides the output's shape."""

  def __init__(self, make, lists=None):
    self.make, self.lists = make, lists

  def generate(self, prompts, *, n, seeds, stop):
    del seeds, stop
    out = [[self.make(i, j) for j in range(n)] for i in range(len(prompts))]
    return out if self.lists is None else self.lists(out)


class _FixedExecutor:
  def __init__(self, results):
    self.results = results

  def run(self, programs):
    return self.results(programs)


_CODE = lambda i, j: StepCandidate(f"x = {j}\n", "<end_of_step>")


@pytest.mark.parametrize("policy,executor,message", [
    # A stop_reason that is no stop string would be appended to the step text as if it were one.
    (_FixedPolicy(lambda i, j: StepCandidate(f"x = {j}\n", "stop")), None,
     r"policy candidate 0 of prompt 0: stop_reason 'stop' is none of the stop strings"),
    (_FixedPolicy(lambda i, j: StepCandidate(f"x = {j}\n", None)), None, r"stop_reason None is none of"),
    (_FixedPolicy(lambda i, j: StepCandidate(7, "<end_of_step>")), None,
     r"policy candidate 0 of prompt 0: text is a int, not a str"),
    # Half an emoji (a lone surrogate) has no UTF-8: writing the tree's shard failed after the whole search, naming
    # neither the policy nor the candidate.
    (_FixedPolicy(lambda i, j: StepCandidate(f"x = {j}  # \ud83d\n", "<end_of_step>")), None,
     r"policy candidate 0 of prompt 0: text holds a lone surrogate '\\ud83d' at position 9"),
    (_FixedPolicy(lambda i, j: f"x = {j}\n<end_of_step>"), None, r"policy candidate 0 of prompt 0 is a str, not a "
                                                                  r"StepCandidate"),
    (_FixedPolicy(_CODE, lists=lambda out: out[:-1]), None, r"policy returned 1 candidate lists for 2 prompts"),
    (_FixedPolicy(_CODE, lists=lambda out: [c[:1] for c in out]), None,
     r"policy returned 1 candidates for prompt 0, expected n=2"),
    (_FixedPolicy(_CODE, lists=lambda out: [c * 2 for c in out]), None,
     r"policy returned 4 candidates for prompt 0, expected n=2"),
    # A forgotten `return`, or one flat list of candidates instead of one list per prompt: Python's bare "'NoneType'
    # object is not iterable" / "'StepCandidate' object is not iterable" named neither the policy nor the shape.
    (_FixedPolicy(_CODE, lists=lambda out: None), None,
     r"policy output is a NoneType, not a list of 2 candidate lists"),
    (_FixedPolicy(_CODE, lists=lambda out: out[0]), None,
     r"policy output for prompt 0 is a StepCandidate, not a list of 2 candidates"),
    (None, _FixedExecutor(lambda programs: None), r"executor output is a NoneType, not a list of 4 results"),
    (None, _FixedExecutor(lambda programs: [FakeResult("1")] * (len(programs) + 1)),
     r"executor returned 5 results for 4 programs"),
    (None, _FixedExecutor(lambda programs: [FakeResult(None)] * len(programs)),
     r"executor result 0 \(of 4\) has no str observation"),
    (None, _FixedExecutor(lambda programs: ["1"] * len(programs)),
     r"executor result 0 \(of 4\) has no str observation"),
    # An executor that decodes its output with "surrogateescape" (sandbox.SandboxPool replaces them by U+FFFD): the
    # observation has no UTF-8, so the tree failed only when its shard was written, naming neither executor nor result.
    (None, _FixedExecutor(lambda programs: [FakeResult("caf\udce9")] * len(programs)),
     r"executor result 0 \(of 4\): observation holds a lone surrogate '\\udce9' at position 3"),
])
def test_misbehaving_policy_or_executor_is_named(grader, policy, executor, message):
  # MCTS and beam search check what comes back the same way: beam search used to drop a problem whose candidate
  # list was missing, take any number of candidates, ignore extra sandbox results and write an unknown
  # stop_reason into the step text.
  policy = policy or _FixedPolicy(_CODE)
  executor = executor or InProcessExecutor()
  with pytest.raises(ValueError, match=message):
    run_search(PROBLEMS[:2], policy, executor, SearchConfig(num_rollouts=1, num_candidates=2, max_depth=2),
               prompt_fn=PROMPT.format, grader=grader, progress=False)
  with pytest.raises(ValueError, match=message):
    beam_search(PROBLEMS[:2], policy, executor, FunctionScorer(random_ppm),
                BeamConfig(beam_width=2, samples_per_step=2, max_depth=2), prompt_fn=PROMPT.format, grader=grader)


@pytest.mark.parametrize("fields,message", [
    (("p", "q", 42), r"Problem 'p': ground_truth must be a str or None, got int 42"),
    ((7, "q", "1"), r"Problem.problem_id must be a str, got int 7"),
    (("p", None, "1"), r"Problem.question must be a str, got NoneType None"),
])
def test_problem_fields_are_checked_before_any_search(fields, message):
  # They used to be searched and fail only when the shard was written (losing the batch's search), or come back
  # in records that read_trees refuses.
  with pytest.raises(TypeError, match=message):
    Problem(*fields)


def test_a_tree_whose_node_budget_fills_says_so_in_its_record(grader, tmp_path):
  # Code steps only, so no tree ends early: 9 slots hold the root and two expansions of 4, not a third.
  policy = ScriptedPolicy(lambda prompt, n, seed: [f"x = {seed % 97 + i}\n<end_of_step>" for i in range(n)])
  small = SearchConfig(num_rollouts=4, num_candidates=4, max_depth=4, max_nodes=9)
  records = run_search(PROBLEMS[:2], policy, InProcessExecutor(), small, prompt_fn=PROMPT.format, grader=grader,
                       progress=False, output_dir=str(tmp_path))
  assert [r["out_of_nodes"] for r in records] == [True, True] and all(len(r["nodes"]) == 9 for r in records)
  assert [r["out_of_nodes"] for r in read_trees(str(tmp_path / "trees-00000.jsonl"))] == [True, True]
  roomy = run_search(PROBLEMS[:1], policy, InProcessExecutor(), SearchConfig(num_rollouts=1, num_candidates=2,
                     max_depth=2), prompt_fn=PROMPT.format, grader=grader, progress=False)
  assert roomy[0]["out_of_nodes"] is False
  with pytest.raises(ValueError, match="field 'out_of_nodes': expected bool"):
    validate_tree(dict(roomy[0], out_of_nodes=1))
  legacy = dict(roomy[0])
  del legacy["out_of_nodes"]  # shards written before the field existed still read
  assert validate_tree(legacy) is legacy


@pytest.mark.parametrize("fields,field", [
    (("p\ud83d", "q", "1"), "problem_id"),
    (("p", "half an emoji \ud83d", "1"), "question"),
    (("p", "q", "1\udc80"), "ground_truth"),
])
def test_a_problem_text_with_a_lone_surrogate_is_refused_before_any_search(grader, tmp_path, fields, field):
  # json.loads gives a lone surrogate for a "\ud83d" escape (a truncated emoji); UTF-8 has no encoding for it, so the
  # batch's shard could not be written: the search ran to its end and failed with a UnicodeEncodeError naming
  # neither the problem nor the field, its trees lost.
  with pytest.raises(UnicodeEncodeError):
    fields[["problem_id", "question", "ground_truth"].index(field)].encode("utf-8")
  calls = []
  policy = ScriptedPolicy(lambda prompt, n, seed: calls.append(prompt) or ["\\boxed{1}<end_of_answer>"] * n)
  with pytest.raises(ValueError, match=rf"Problem (.p.*: )?{field} holds a lone surrogate '\\ud[0-9a-f]{{3}}' at "
                                       r"position \d+"):
    run_search([Problem(*fields)], policy, InProcessExecutor(), SearchConfig(num_rollouts=1, num_candidates=1),
               prompt_fn=PROMPT.format, grader=grader, progress=False, output_dir=str(tmp_path))
  assert not calls


def test_tree_kernels_compile_per_batch_bucket_not_per_problem_count(grader):
  # DESIGN §2.2: tree kernels have fixed shapes. With batch_size=None the batch is all problems; a call per problem
  # count (1, 3, 4, 5, 7, 8, 9 problems) compiled select and expand_and_select once each (seven compiles per kernel).
  # Trees are padded to the next power of two, so these counts share the batch shapes 1, 4, 8 and 16: four compiles.
  from rstar_jax.search import kernels  # pylint: disable=import-outside-toplevel
  kernels.select._clear_cache()  # pylint: disable=protected-access
  kernels.expand_and_select._clear_cache()  # pylint: disable=protected-access
  problems = [Problem(f"b{i}", f"bucket question {i}", str(i % 4)) for i in range(9)]
  alone = _search(problems[:1], grader)
  for count in (3, 4, 5, 7, 8, 9):
    records = _search(problems[:count], grader)
    assert [r["problem_id"] for r in records] == [p.problem_id for p in problems[:count]]
    assert json.dumps(records[0]) == json.dumps(alone[0])  # padding rows change no tree
  assert kernels.select._cache_size() == 4  # pylint: disable=protected-access
  assert kernels.expand_and_select._cache_size() == 4  # pylint: disable=protected-access


def test_resume_with_a_shorter_problem_list_is_refused_not_left_beside_shards_it_does_not_cover(grader, tmp_path):
  # The first four problems of a run over six fill its first two shards exactly: the shorter run went through
  # without a word and the folder kept the third shard, so `extract_files(folder)` trained on problems the run no
  # longer had (README: "a run with ... another problem list stops with an error naming the file").
  _search(PROBLEMS, grader, batch_size=2, output_dir=tmp_path)
  written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  with pytest.raises(ValueError, match=r"trees-00002\.jsonl: the problem list changed since it was written: this run's "
                                       r"4 problems make 2 batches of 2, and this shard holds batch 3"):
    _search(PROBLEMS[:4], grader, batch_size=2, output_dir=tmp_path)
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == written
  # Another prefix's shards in the same folder are another search's.
  config = SearchConfig(num_rollouts=4, num_candidates=4, max_depth=4, errors_threshold=2, batch_size=2, max_nodes=96)
  short = MCTS(ScriptedPolicy(random_script), InProcessExecutor(), config, prompt_fn=PROMPT.format, grader=grader,
               progress=False).run(PROBLEMS[:4], output_dir=tmp_path, shard_prefix="short")
  assert [r["problem_id"] for r in short] == ["p0", "p1", "p2", "p3"]


def test_a_second_search_on_a_running_search_s_folder_is_refused(grader, tmp_path):
  # Nothing kept a second search out of an output_dir another was writing: both searched the same shards. Here the
  # second starts while the first is between two expansions.
  from rstar_jax import files  # pylint: disable=g-import-not-at-top
  refusals = []

  def script_starting_a_second_search(prompt, n, seed):
    if not refusals:
      with pytest.raises(files.FolderInUseError, match=rf"{tmp_path}: another search is writing here"):
        _search(PROBLEMS, grader, batch_size=4, output_dir=tmp_path)
      refusals.append(seed)
    return random_script(prompt, n, seed)

  config = SearchConfig(num_rollouts=4, num_candidates=4, max_depth=4, errors_threshold=2, batch_size=4, max_nodes=96)
  first = run_search(PROBLEMS, ScriptedPolicy(script_starting_a_second_search), InProcessExecutor(), config,
                     prompt_fn=PROMPT.format, grader=grader, progress=False, output_dir=tmp_path)
  assert refusals and sorted(os.listdir(tmp_path)) == ["trees-00000.jsonl", "trees-00001.jsonl",
                                                       "trees.config.json", "trees.lock"]
  assert _search(PROBLEMS, grader, batch_size=4, output_dir=tmp_path) == first  # once it ended: a resume


@pytest.mark.parametrize("changes, field", [
    (dict(num_rollouts=2**32 + 3, max_nodes=100), "num_rollouts"), (dict(num_rollouts=2**31, max_nodes=100),
                                                                    "num_rollouts"),
    (dict(max_nodes=2**31), "max_nodes"), (dict(max_depth=2**31), "max_depth"),
])
def test_counts_beyond_the_int32_tree_are_refused(changes, field):
  # The tree holds rollout budgets, node indices and depths as int32, and the cast wraps: 2**32 + 3 rollouts searched
  # 3, and 2**31 came out as -2**31, so no tree ran a rollout; the run wrote its trees without a word.
  assert np.asarray(2**32 + 3).astype(np.int32) == 3 and np.asarray(2**31).astype(np.int32) < 0
  with pytest.raises(ValueError, match=rf"SearchConfig.{field}.* int32"):
    SearchConfig(**changes)
  assert SearchConfig(num_rollouts=2**31 - 1, max_nodes=2**31 - 1).num_slots == 2**31 - 1


# Set-ordered outputs would change with Python's per-process str hash seed; a search must replay in a fresh process.
_REPLAY_IN_A_FRESH_PROCESS = r"""
import json, sys
import numpy as np
from rstar_jax.data import PairConfig, SftConfig, ppm_pairs, sft_records, tree_from_dict
from rstar_jax.grading import Grader
from rstar_jax.search import BeamConfig, Problem, SearchConfig, beam_search, run_search
from rstar_jax.search.scripted import FunctionScorer, InProcessExecutor, ScriptedPolicy

STEPS = ["<code>\na = 1\n<end_of_step>", "<code>\na = 2\n<end_of_step>", "print(a)\n<end_of_code>",
         "So \\boxed{1}.<end_of_answer>", "So \\boxed{2}.<end_of_answer>", "b = 1 / 0\n<end_of_step>"]


def script(prompt, n, seed):  # few distinct steps: expansions repeat candidates (dedup) and siblings tie
  rng = np.random.default_rng(seed)
  return [STEPS[int(rng.integers(0, len(STEPS)))] for _ in range(n)]


problems = [Problem(f"p{i}", f"question {i}", str(1 + i % 2)) for i in range(4)]
out = {}
with Grader() as grader:
  for mode, preset in (("terminal_guided", "paper"), ("ppm_augmented", "official")):
    config = SearchConfig(mode=mode, preset=preset, num_rollouts=6, num_candidates=4, max_depth=4,
                          errors_threshold=2, seed=7, max_nodes=96)
    out[mode] = run_search(problems, ScriptedPolicy(script), InProcessExecutor(), config, prompt_fn="Q: {}\n".format,
                           scorer=FunctionScorer(lambda text: 0.5), grader=grader, progress=False)
  out["beam"] = beam_search(problems, ScriptedPolicy(script), InProcessExecutor(), FunctionScorer(lambda text: 0.5),
                            BeamConfig(beam_width=2, samples_per_step=4, max_depth=4, errors_threshold=2),
                            prompt_fn="Q: {}\n".format, grader=grader)
trees = [tree_from_dict(r) for mode in ("terminal_guided", "ppm_augmented") for r in out[mode]]
out["sft"] = [[r.query, r.response] for r in sft_records(trees, SftConfig())]
out["pairs"] = [[p.prompt, p.pos, p.neg, p.pos_count, p.neg_count] for p in ppm_pairs(trees, PairConfig())]
sys.stdout.write(json.dumps(out))
"""


@pytest.mark.slow  # two fresh processes import jax and compile the search kernels (about 30 s on 2 cores)
def test_search_and_extraction_replay_under_other_hash_seeds():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  procs = []
  for hash_seed in ("1", "2"):  # both at once: each is mostly jax's import and the kernels' compilation
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    env.pop("XLA_FLAGS", None)  # one device is enough (conftest asks for 8)
    procs.append(subprocess.Popen([sys.executable, "-c", _REPLAY_IN_A_FRESH_PROCESS], cwd=root, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = []
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    outputs.append(stdout)
  assert outputs[0] == outputs[1]
  out = json.loads(outputs[0])
  # Not vacuous: expansions kept fewer children than candidates (dedup), the trees hold both verdicts, and extraction
  # found records and pairs.
  nodes = [n for mode in ("terminal_guided", "ppm_augmented") for r in out[mode] for n in r["nodes"]]
  assert any(0 < len(n["children"]) < 4 for n in nodes)
  assert {n["correct"] for n in nodes if n["terminal_reason"] == "answer"} == {True, False}
  assert out["sft"] and out["pairs"] and out["beam"]


def test_an_in_process_executor_shared_by_threads_gives_each_program_its_own_prints():
  # Searches run in threads over one executor: each `redirect_stdout` swapped the process's one `sys.stdout`, so a
  # snippet's prints landed in another thread's result, and the swaps undone out of order left `sys.stdout` on a
  # dead buffer (every later print of the process lost).
  executor = InProcessExecutor()
  stdout = sys.stdout

  def run(t):
    programs = [f"import time\nfor k in range(3):\n    print({t}, {j}, k)\n    time.sleep(0.001)" for j in range(4)]
    return [r.observation for r in executor.run(programs)]

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    got = [f.result(timeout=60) for f in [pool.submit(run, t) for t in range(16)]]
  assert got == [["".join(f"{t} {j} {k}\n" for k in range(3)) for j in range(4)] for t in range(16)]
  assert sys.stdout is stdout
