"""README.md's code as a user runs it: the search snippet of "Interfaces the search drives"."""

import pathlib
import re

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
