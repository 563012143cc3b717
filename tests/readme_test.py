"""README.md's code as a user runs it: the checkpoint, search and training snippets."""

import os
import pathlib
import re

import numpy as np
import pytest

from rstar_jax.search import read_trees

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _python_block(containing: str) -> str:
  blocks = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if containing in b]
  assert len(blocks) == 1, f"{len(blocks)} README python blocks contain {containing!r}"
  return blocks[0]


def _shrunk(code: str, changes: dict[str, str]) -> str:
  """`code` with its budgets cut to a CPU test's size (each literal must be there once: a README edit shows up)."""
  for old, new in changes.items():
    assert code.count(old) == 1, f"README snippet: {old!r} found {code.count(old)} times"
    code = code.replace(old, new)
  return code


def _tiny_checkpoints(tmp_path: pathlib.Path) -> tuple[str, str]:
  """A random tiny policy and PPM with a byte-level BPE tokenizer carrying the rStar tags -> (policy dir, PPM dir)."""
  from flax import nnx

  from rstar_jax.demo import build_tokenizer
  from rstar_jax.models import PPM, ModelConfig, Qwen2, convert
  tok_dir = tmp_path / "tokenizer"
  corpus = [(REPO / "rstar_jax" / "assets" / "gsm8k_demo.json").read_text(encoding="utf-8")]
  tok = build_tokenizer(str(tok_dir), corpus, vocab_size=400)
  config = ModelConfig.tiny(vocab_size=-(-len(tok) // 64) * 64, max_position_embeddings=512)
  policy_dir, ppm_dir = tmp_path / "policy", tmp_path / "ppm"
  convert.save_qwen2(Qwen2(config, rngs=nnx.Rngs(0)), policy_dir)
  convert.save_ppm(PPM(config, rngs=nnx.Rngs(1)), ppm_dir)
  for d in (policy_dir, ppm_dir):
    tok.save(d)
  return str(policy_dir), str(ppm_dir)


def test_the_search_snippet_runs_with_only_its_model_and_problem_placeholders_bound(tmp_path, monkeypatch,
                                                                                     shared_data):
  # The snippet called `prompt_fn=template.format` with `template` defined nowhere; rStar's own template string has an
  # `{input}` field, so its `str.format(question)` raised KeyError: 'input' (and `.format(input=question)` misses
  # the "\n" the official wrap puts after the question).
  from rstar_jax.models import convert
  from rstar_jax.search import Problem
  from rstar_jax.tokenizer import load_tokenizer
  snippet = _python_block("run_search(")
  code = _shrunk(snippet, {
      '"../shared/data/prompts"': repr(str(shared_data / "prompts")), "num_workers=8": "num_workers=1",
      "max_new_tokens=2048": "max_new_tokens=8", "num_rollouts=16": "num_rollouts=1",
      "num_candidates=8": "num_candidates=2", 'output_dir="trees/"': 'output_dir="trees/", progress=False'})
  policy_dir, ppm_dir = _tiny_checkpoints(tmp_path)
  question = "What is 6 * 7?"
  # The placeholders the README leaves to the reader (the text after the snippet says how to load the models).
  namespace = {"policy_dir": policy_dir, "tok": load_tokenizer(policy_dir),
               "policy_model": convert.load_qwen2(policy_dir, scan_layers=False),
               "ppm_model": convert.load_ppm(ppm_dir, scan_layers=False),
               "problems": [Problem("p0", question, "42")]}
  monkeypatch.chdir(tmp_path)
  exec(compile(code, "README.md (search snippet)", "exec"), namespace)  # pylint: disable=exec-used
  trees = namespace["trees"]
  # The official SFT-round prompt (DESIGN §1.1; sft_prompt.json filled by rstar_prompt_wrap: question + "\n").
  official = "<|user|>:\nWhat is 6 * 7?\n\n<|assistant|>: Let's think step by step and solve the problem with code."
  assert [t["prompt"] for t in trees] == [official]
  assert read_trees(str(tmp_path / "trees" / "trees-00000.jsonl")) == trees


def test_the_checkpoint_snippet_loads_a_policy_sharded_over_its_mesh(tmp_path, monkeypatch):
  # The "Checkpoints" snippet as written: a (1, -1, 2) mesh over the 8 test devices, and a policy dir loaded onto it.
  import jax
  from flax import nnx

  from rstar_jax.models import ModelConfig, Qwen2, convert
  code = _python_block("make_mesh(")
  saved = Qwen2(ModelConfig.tiny(), rngs=nnx.Rngs(0))
  convert.save_qwen2(saved, tmp_path / "Qwen2.5-Math-7B")
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(code, "README.md (checkpoint snippet)", "exec"), namespace)  # pylint: disable=exec-used
  assert dict(namespace["mesh"].shape) == {"data": 1, "fsdp": jax.device_count() // 2, "tensor": 2}
  expected = jax.tree.leaves(nnx.state(saved))
  loaded = jax.tree.leaves(nnx.state(namespace["policy"]))
  assert len(loaded) == len(expected)
  for want, got in zip(expected, loaded):
    assert np.array_equal(np.asarray(got), np.asarray(want))  # the tiny model's weights, bit for bit
  # "params placed by the logical rules": every device holds a part, and some weights are split over `tensor`.
  assert all(len(leaf.sharding.device_set) == jax.device_count() for leaf in loaded)
  assert any("tensor" in str(leaf.sharding.spec) for leaf in loaded)


@pytest.mark.slow
def test_the_training_snippet_runs_on_a_search_output_dir_and_resumes(tmp_path, monkeypatch):
  # The "Training entry points" snippet as written, on the trees of a real search (the demo's scripted teacher, so
  # some answers are right and some wrong), with the configs cut to a CPU test's size.
  from rstar_jax import grading
  from rstar_jax.data import PipelineConfig, formats
  from rstar_jax.demo import TeacherPolicy
  from rstar_jax.models import convert
  from rstar_jax.search import Problem, SearchConfig, run_search
  from sandbox import SandboxPool
  policy_dir, _ = _tiny_checkpoints(tmp_path)
  problems = [Problem("p0", "What is 6 * 7?", "42"), Problem("p1", "What is 10 - 3?", "7")]
  monkeypatch.chdir(tmp_path)
  with SandboxPool(num_workers=1, timeout_s=5) as pool:
    run_search(problems, TeacherPolicy({p.question: p.ground_truth for p in problems}), pool,
               SearchConfig(mode="terminal_guided", num_rollouts=4, num_candidates=3, max_depth=4, seed=0),
               prompt_fn=lambda q: q, output_dir="trees/", grader=grading.default_grader(), progress=False)
  small = "data=PipelineConfig(max_len=128, batch_size=2, num_epochs=1), max_steps=1, mesh=(1, 1, 1), progress=False"
  code = _shrunk(_python_block("train_policy("), {"sft_config()": f"sft_config({small})",
                                                   "ppm_config()": f"ppm_config({small})"})
  logs = []
  for run in range(2):  # the second run resumes both trainers from their last checkpoints: no step is trained again
    namespace = {"base_hf_dir": policy_dir, "PipelineConfig": PipelineConfig}
    exec(compile(code, "README.md (training snippet)", "exec"), namespace)  # pylint: disable=exec-used
    sft, ppm = namespace["sft"], namespace["ppm"]
    assert (sft.steps, ppm.steps) == (1, 1), run
    logs.append([(tmp_path / "work" / name / "metrics.jsonl").read_text() for name in ("sft", "ppm")])
  assert logs[1] == logs[0] and all(log.count("\n") == 1 for log in logs[0])
  assert formats.read_sft_records("sft.jsonl") and formats.read_ppm_pairs("pairs.jsonl")
  assert {"config.json", "model.safetensors", "value_head.bin", "tokenizer.json"} <= set(os.listdir(ppm.export_dir))
  convert.load_ppm(ppm.export_dir)  # "HF dir + value_head.bin", loadable as the search's PPM
  convert.load_qwen2(sft.export_dir)
