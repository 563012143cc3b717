"""The embedded CPU demo: every stage of one rStar round, end to end, on tiny random models and bundled data.

  python -m rstar_jax.demo [--workdir runs/demo] [--problems 16] [--fresh]

What it runs (all on the CPU, 1-2 minutes on 2 cores), writing every artifact under `--workdir`:
  1. a byte-level BPE tokenizer trained on the bundled rStar prompts and problems, with the rStar step tags added;
  2. a random-weight tiny Qwen2 policy and PPM, exported as Hugging Face checkpoints (PPM: backbone +
     `value_head.bin`), reloaded bit-exactly, and checked against `transformers` when torch is installed;
  3. PPM-augmented MCTS with that random policy (on the first 8 bundled problems, whatever `--problems` is) through
     the generation engine, the sandbox pool and the PPM scorer (the text is garbage: this exercises the machinery);
  4. terminal-guided MCTS with a scripted bootstrap teacher (a stand-in for the paper's strong round-1 policy; it
     writes code that sometimes computes the right number and sometimes a wrong one, and boxes what the sandbox
     printed) on the first `--problems` (16) bundled GSM8K problems, graded against their answers, giving
     Q-annotated trees;
  5. extraction of rStar-format SFT records and PPM pairs from those trees;
  6. a few steps of policy SFT from the base model and of PPM training from the SFT policy, then exports.

The self-evolution demo proper (several rounds, configs, CLI phases) is a later issue; this is the most complete
real pipeline available now.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import time
from importlib import resources

import numpy as np

from rstar_jax import cli, files  # no jax: the workdir is checked before jax is imported

STOP_TAG = "<|endoftext|>"


def _assets() -> str:
  return str(resources.files("rstar_jax") / "assets")


def _log(message: str) -> None:
  print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


# Qwen2's pre-tokenizer regex (its tokenizer.json, and transformers' `Qwen2Tokenizer`): digits one by one, a
# punctuation character joined to the word after it.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def build_tokenizer(out_dir: str, corpus: list[str], vocab_size: int):
  """Trains a byte-level BPE on `corpus`, adds the rStar tags, saves to `out_dir` and returns our Tokenizer.

  It normalizes and pre-tokenizes as the Qwen2 tokenizer (NFC, Qwen2's split regex, then byte-level): the exports are
  Qwen2 dirs, which transformers reads with its `Qwen2Tokenizer`, and that applies Qwen2's rules whatever the file
  says (with GPT-2's byte-level split instead, transformers gave other ids than the models were trained on).
  """
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

  from rstar_jax.tokenizer import add_rstar_tokens, load_tokenizer
  bpe = Tokenizer(models.BPE())
  bpe.normalizer = normalizers.NFC()
  bpe.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  bpe.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[STOP_TAG], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  bpe.train_from_iterator(corpus, trainer)
  # Through atomic_write, not `bpe.save`: on a full disk that raised "No space left on device (os error 28)",
  # naming no file.
  files.atomic_write(os.path.join(out_dir, "tokenizer.json"), bpe.to_str())
  files.atomic_write(os.path.join(out_dir, "tokenizer_config.json"),
                     json.dumps({"eos_token": STOP_TAG, "pad_token": STOP_TAG, "model_max_length": 4096,
                                 "tokenizer_class": "PreTrainedTokenizerFast"}))
  tokenizer = load_tokenizer(out_dir)
  add_rstar_tokens(tokenizer, "policy")
  tokenizer.save(out_dir)
  return load_tokenizer(out_dir)


class TeacherPolicy:
  """Scripted bootstrap teacher: per step, candidates drawn (seeded) from right, wrong and broken code.

  Depth 0 defines `answer` (the true number, or an off-by-some number, or a NameError; each expansion offers at least
  one right and one wrong); depth 1 prints it and closes the code block; depth 2 boxes whatever the sandbox printed.
  So correct and wrong answers both occur, Q values spread, and the answer is always what the executed code produced.
  """

  # Different reasoning comments per kind, so sibling steps differ by more than the pair filter's edit distance.
  REASONING = {
      "right": "work through each quantity in the question and combine them",
      "wrong": "estimate quickly from the first numbers mentioned",
      "broken": "use the total given in the question",
  }

  def __init__(self, answers: dict[str, str]):
    self.answers = answers

  def _answer_for(self, prompt: str) -> str:
    for question, answer in self.answers.items():
      if question in prompt:
        return answer
    raise KeyError("teacher: prompt matches no known question")

  def generate(self, prompts, *, n, seeds, stop):
    from rstar_jax.search.interfaces import StepCandidate
    out = []
    for prompt, seed in zip(prompts, seeds):
      rng = np.random.default_rng(seed)
      truth = self._answer_for(prompt)
      solution = prompt.split("<|assistant|>")[-1]
      outputs = re.findall(r"<output>(.*?)<end_of_output>", solution, flags=re.S)
      if outputs:  # the code block is closed: box what it printed
        candidates = [StepCandidate(f"<answer>The answer is \\boxed{{{outputs[-1].strip()}}}", "<end_of_answer>")] * n
      elif "<code>" in solution:  # `answer` is defined: print it and close the block
        candidates = [StepCandidate("\n# Step 2: report the result\nprint(answer)\n", "<end_of_code>")] * n
      else:
        kinds = [str(rng.choice(["right", "wrong", "broken"], p=[0.45, 0.45, 0.10])) for _ in range(n)]
        # Every problem gets a right and a wrong first step: without both, a problem gave no SFT record or no
        # preference pair, and `--problems 1` stopped in SFT with "no training examples".
        if n >= 2 and "right" not in kinds:
          kinds[0] = "right"
        if n >= 2 and "wrong" not in kinds:
          kinds[-1] = "wrong"
        candidates = [StepCandidate(self._first_step(kind, truth, rng), "<end_of_step>") for kind in kinds]
      out.append(candidates)
    return out

  def _first_step(self, kind: str, truth: str, rng: np.random.Generator) -> str:
    """The step that defines `answer`: the true number, an off-by-some number, or an undefined name."""
    try:
      value = float(truth)
    except ValueError:
      value = None
    if kind == "right" or value is None:
      expr = truth
    elif kind == "wrong":
      expr = repr(int(value) + int(rng.integers(1, 9)) if value.is_integer() else value + 1.5)
    else:
      expr = "total_from_the_question"
    return f"<code>\n# Step 1: {self.REASONING[kind]}\nanswer = {expr}\n"


def _first_and_last_metrics(train_workdir: str) -> tuple[dict, dict]:
  from rstar_jax.train.metrics_log import read_metrics
  by_step = read_metrics(os.path.join(train_workdir, "metrics.jsonl"))  # a resumed run logs some steps twice
  return by_step[min(by_step)], by_step[max(by_step)]


# What the demo writes in its workdir: `--fresh` deletes a workdir holding nothing else.
_DEMO_ENTRIES = frozenset({"demo.json", "tokenizer", "policy_r0", "ppm_r0", "policy_r0_reexport", "trees_random_policy",
                           "trees_round1", "sft_r1.jsonl", "pairs_r1.jsonl", "train_policy_r1", "train_ppm_r1"})


# Everything a run's files depend on besides --problems. Kept in demo.json with the problem count: a workdir written
# with other settings (by another version of the demo) is refused before anything is rebuilt over it, instead of
# rebuilding the tokenizer and models and then failing in a stage that checks its own files.
_SETTINGS = {
    "tokenizer_vocab_size": 1024,
    "tokenizer_split": "qwen2",  # (a workdir of a demo with GPT-2's byte-level split is refused, not mixed in)
    "random_policy": {"temperature": 1.0, "max_new_tokens": 128},
    # Whatever --problems is: a random step the PPM scores is rare (see stage 3), so fewer problems could score none.
    "random_search_problems": 8,
    "random_search": {"mode": "ppm_augmented", "num_rollouts": 2, "num_candidates": 4, "max_depth": 4,
                      "errors_threshold": 2, "seed": 0},
    "teacher_search": {"mode": "terminal_guided", "num_rollouts": 8, "num_candidates": 4, "max_depth": 6,
                       "errors_threshold": 2, "seed": 0},
    "train_data": {"max_len": 256, "batch_size": 8, "num_epochs": 4},
    "learning_rate": 3e-3,
}


def _written_by_demo(name: str) -> bool:
  # An interrupted atomic write leaves `NAME.<host>.<pid>.<random>.tmp` (or `NAME.tmp<pid>`) behind.
  return name in _DEMO_ENTRIES or (".tmp" in name and any(name.startswith(e + ".") for e in _DEMO_ENTRIES))


def _empty(folder: str) -> None:
  """Deletes what `folder` holds (checked to be the demo's files), keeping the folder: it may be a symbolic link to
  where the user wants runs to live, which `shutil.rmtree` refuses."""
  for name in os.listdir(folder):
    path = os.path.join(folder, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.unlink(path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rstar_jax.demo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/demo", metavar="D",
                      help="where every artifact goes; a second run resumes from it (default: %(default)s)")
  parser.add_argument("--problems", type=int, default=16, metavar="K",
                      help="take the first K bundled problems (default: %(default)s)")
  parser.add_argument("--fresh", action="store_true", help="delete the workdir first (only one the demo wrote)")
  args = parser.parse_args(argv)
  started = time.time()
  workdir = os.path.abspath(args.workdir)
  assets = _assets()
  with open(os.path.join(assets, "gsm8k_demo.json"), encoding="utf-8") as f:
    available = json.load(f)
  if not 1 <= args.problems <= len(available):
    parser.error(f"--problems must be in [1, {len(available)}], got {args.problems}")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    parser.error(f"--workdir {workdir} is a file")
  if args.fresh and os.path.isdir(workdir):
    foreign = sorted(name for name in os.listdir(workdir) if not _written_by_demo(name))
    if foreign:
      parser.error(f"--fresh: {workdir} holds files the demo does not write ({', '.join(foreign[:3])}"
                   f"{', ...' if len(foreign) > 3 else ''}); refusing to delete it")
  # The run's settings, kept in the workdir: every stage resumes from its files, so another problem count must not
  # rebuild the tokenizer and models under trees and checkpoints made from the old ones.
  settings_file, settings = os.path.join(workdir, "demo.json"), {"problems": args.problems, **_SETTINGS}
  if not args.fresh and os.path.isfile(settings_file):
    try:
      with open(settings_file, encoding="utf-8") as f:
        stored = files.json_loads(f.read())  # also a damaged file nested too deeply (a RecursionError)
    except (OSError, ValueError) as e:
      parser.error(f"{settings_file}: unreadable ({e}); delete it, or start over with --fresh")
    if not isinstance(stored, dict):
      parser.error(f"{settings_file}: expected a JSON object, got {type(stored).__name__}; delete it, or start over "
                   "with --fresh")
    if stored.get("problems") != args.problems:
      parser.error(f"--problems {args.problems}, but {workdir} holds a run with --problems {stored.get('problems')}: "
                   "run with that to resume it, add --fresh to start over, or pick another --workdir")
    differ = sorted(key for key in set(stored) | set(settings) if stored.get(key) != settings.get(key))
    if differ:
      parser.error(f"{settings_file}: written by a demo with other settings ({', '.join(differ)} differ): add --fresh "
                   "to start over, or pick another --workdir")
  elif not args.fresh and os.path.isdir(workdir):
    stages = sorted(name for name in os.listdir(workdir) if name in _DEMO_ENTRIES)
    if stages:  # demo.json is written before any stage's file
      parser.error(f"--workdir {workdir} holds a run of a demo that kept no demo.json ({', '.join(stages[:3])}"
                   f"{', ...' if len(stages) > 3 else ''}): add --fresh to start over, or pick another --workdir")
  try:  # now, not by a traceback once jax is imported
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    parser.error(f"--workdir {workdir}: cannot create it ({e.strerror})")
  try:  # an existing workdir can refuse files too (read-only, full): also a usage error, not a later traceback
    if args.fresh:
      _empty(workdir)
    files.atomic_write(settings_file, json.dumps(settings) + "\n")
  except OSError as e:
    parser.error(f"--workdir {workdir}: cannot write in it ({e.strerror})")

  import jax
  from flax import nnx

  from rstar_jax import grading, prompts
  from rstar_jax.data import extract_files
  from rstar_jax.data.pipeline import PipelineConfig
  from rstar_jax.generate import Engine, EnginePolicy, PPMScorer
  from rstar_jax.models import PPM, ModelConfig, Qwen2, convert
  from rstar_jax.search import Problem, SearchConfig, read_trees, run_search
  from rstar_jax.train import OptimizerConfig, ppm_config, sft_config, train_policy, train_ppm
  from sandbox import SandboxPool

  records = available[:args.problems]
  problems = [Problem(f"GSM8K_test/{r['index']}", r["question"], str(r["answer"])) for r in records]
  prompt_template = prompts.load_sft_template(os.path.join(assets, "prompts"))
  _log(f"{len(problems)} GSM8K problems; jax {jax.__version__} on {jax.devices()[0].platform}; workdir {workdir}")

  # 1. Tokenizer.
  corpus = [r["question"] for r in records]
  for name in ("few_shots.json", "mcts_prompt.json", "sft_prompt.json"):
    with open(os.path.join(assets, "prompts", name), encoding="utf-8") as f:
      corpus.append(f.read())
  tok_dir = os.path.join(workdir, "tokenizer")
  tokenizer = build_tokenizer(tok_dir, corpus, vocab_size=_SETTINGS["tokenizer_vocab_size"])
  _log(f"tokenizer: {len(tokenizer)} tokens (byte-level BPE + rStar tags); "
       f"'<end_of_step>' -> {tokenizer.encode('<end_of_step>')}")

  # 2. Random tiny policy and PPM, exported as HF checkpoints and reloaded.
  # Embedding rows rounded up past the tokenizer, as real checkpoints do (Qwen2.5: 152064 rows, 151665 tokens).
  config = ModelConfig.tiny(vocab_size=-(-len(tokenizer) // 64) * 64)
  policy_dir, ppm_dir = os.path.join(workdir, "policy_r0"), os.path.join(workdir, "ppm_r0")
  convert.save_qwen2(Qwen2(config, rngs=nnx.Rngs(0)), policy_dir)
  tokenizer.save(policy_dir)
  convert.save_ppm(PPM(config, rngs=nnx.Rngs(1)), ppm_dir)
  tokenizer.save(ppm_dir)
  policy = convert.load_qwen2(policy_dir)
  check_dir = os.path.join(workdir, "policy_r0_reexport")
  convert.save_qwen2(policy, check_dir)
  from rstar_jax.models.tensor_files import SafetensorsFile
  with SafetensorsFile(os.path.join(policy_dir, "model.safetensors")) as a, \
      SafetensorsFile(os.path.join(check_dir, "model.safetensors")) as b:
    identical = sorted(a.keys()) == sorted(b.keys()) and all(np.array_equal(a.get(k), b.get(k)) for k in a.keys())
  shutil.rmtree(check_dir)
  _log(f"policy {config.num_params():,} params: HF export -> reload -> export is bit-identical: {identical}")
  if importlib.util.find_spec("torch") is not None:  # the transformers reference needs torch (the test extra)
    from rstar_jax.convert import main as convert_main
    convert_main(["verify", "--hf-dir", policy_dir, "--length", "16"])
  else:
    _log("torch not installed: skipping the transformers logit check (pip install -e '.[test]')")

  with SandboxPool(num_workers=2, timeout_s=5.0, memory_mb=1024) as pool:
    _log(f"sandbox pool: isolation level {pool.isolation_level!r}")

    # 3. PPM-augmented MCTS with the random policy (machinery check; the text is noise).
    engine_policy = EnginePolicy(Engine(policy, tokenizer=tokenizer), **_SETTINGS["random_policy"])
    scorer = PPMScorer(Engine(convert.load_ppm(ppm_dir, scan_layers=False), tokenizer=tokenizer))
    # Random text run as code always errors: with the default errors_threshold of 1 every step that ends at a stop
    # string is terminal, and the rest are truncated (unparsable), so the PPM never scored a node. A second error in
    # a row ends a path here (_SETTINGS), so a step whose code failed once stays open and is scored. A random policy
    # samples a stop tag about once in 350 tokens: 128 new tokens (not 24) make a few scored steps near certain on
    # any machine (with 24, none at all in about one run of ten, had the samples come out otherwise).
    random_cfg = SearchConfig(**_SETTINGS["random_search"])
    random_problems = [Problem(f"GSM8K_test/{r['index']}", r["question"], str(r["answer"]))
                       for r in available[:_SETTINGS["random_search_problems"]]]
    trees = run_search(random_problems, engine_policy, pool, random_cfg, prompt_fn=prompt_template.format,
                       scorer=scorer, output_dir=os.path.join(workdir, "trees_random_policy"))
    nodes = sum(len(t["nodes"]) for t in trees)
    scored = sum(n["ppm_value"] is not None for t in trees for n in t["nodes"])
    _log(f"random-policy MCTS: {len(trees)} trees, {nodes} nodes written, {scored} scored by the PPM")

    # 4. Terminal-guided MCTS with the scripted teacher, graded against the real answers.
    teacher = TeacherPolicy({p.question: p.ground_truth for p in problems})
    teacher_cfg = SearchConfig(**_SETTINGS["teacher_search"])
    tree_dir = os.path.join(workdir, "trees_round1")
    trees = run_search(problems, teacher, pool, teacher_cfg, prompt_fn=prompt_template.format,
                       output_dir=tree_dir, grader=grading.default_grader())
  solved = sum(any(n["correct"] for n in t["nodes"]) for t in trees)
  root_q = np.mean([t["nodes"][0]["q"] for t in trees])
  _log(f"teacher MCTS: {solved}/{len(trees)} problems have a verified correct answer; mean root Q {root_q:+.3f}")

  # 5. SFT records and PPM pairs.
  tree_files = sorted(os.path.join(tree_dir, f) for f in os.listdir(tree_dir) if f.endswith(".jsonl"))
  assert read_trees(tree_files[0])
  sft_file, pairs_file = os.path.join(workdir, "sft_r1.jsonl"), os.path.join(workdir, "pairs_r1.jsonl")
  stats = extract_files(tree_files, sft_file, pairs_file)
  _log(f"extraction: {stats}")

  # 6. Policy SFT from the base model, then the PPM from the SFT policy.
  data = PipelineConfig(**_SETTINGS["train_data"])
  optimizer = OptimizerConfig(learning_rate=_SETTINGS["learning_rate"])
  sft = train_policy(policy_dir, sft_file, os.path.join(workdir, "train_policy_r1"),
                     config=sft_config(data=data, optimizer=optimizer, mesh=(1, 1, 1), progress=False,
                                       tensorboard=False, async_checkpoint=False),
                     tokenizer=tok_dir)
  first, last = _first_and_last_metrics(sft.workdir)
  _log(f"policy SFT: {sft.steps} steps, loss {first['loss']:.3f} -> {last['loss']:.3f}; export {sft.export_dir}")
  ppm = train_ppm(sft.export_dir, pairs_file, os.path.join(workdir, "train_ppm_r1"),
                  config=ppm_config(data=data, optimizer=optimizer, mesh=(1, 1, 1), progress=False,
                                    tensorboard=False, async_checkpoint=False),
                  tokenizer=tok_dir)
  first, last = _first_and_last_metrics(ppm.workdir)
  _log(f"PPM: {ppm.steps} steps, loss {first['loss']:.3f} -> {last['loss']:.3f}, "
       f"pair accuracy {last['accuracy']:.2f}; export {ppm.export_dir}")
  _log(f"done in {time.time() - started:.0f} s; artifacts under {workdir}")
  return 0


if __name__ == "__main__":
  raise SystemExit(cli.run(main))
