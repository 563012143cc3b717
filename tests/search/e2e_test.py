"""End to end: 16 GSM8K trees searched by a random tiny Qwen2 through our generation engine, the
real sandbox pool and a random tiny PPM. The text is garbage; the machinery must work: the run
completes, every component is exercised, and the JSONL it writes is valid for both readers. And
the replay guarantees of such a search: the same records in another order, on resume and in a fresh
process."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest
from flax import nnx

from rstar_jax import prompts
from rstar_jax.generate import Buckets, Engine, EnginePolicy, PPMScorer
from rstar_jax.grading import Grader
from rstar_jax.models import PPM, ModelConfig, Qwen2
from rstar_jax.search import MCTS, Problem, SearchConfig, read_trees
from rstar_jax.tokenizer import load_tokenizer

VOCAB = 512
SPECIAL = ("<|endoftext|>", "<end_of_step>", "<end_of_code>", "<end_of_answer>", "<code>", "<output>",
           "<end_of_output>", "<answer>", "<|user|>", "<|assistant|>")


@functools.cache
def _tiny_tokenizer_dir(root: pathlib.Path, shared_data: pathlib.Path) -> pathlib.Path:
  """The real Qwen2.5 byte-level BPE cut to 512 ids: its first 502 tokens + 10 special tokens."""
  data = json.loads((shared_data / "qwen2.5-tokenizer" / "tokenizer.json").read_text())
  base = VOCAB - len(SPECIAL)
  vocab = {t: i for t, i in data["model"]["vocab"].items() if i < base}
  data["model"]["vocab"] = vocab
  data["model"]["merges"] = [m for m in data["model"]["merges"]
                             if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
  data["added_tokens"] = [dict(id=base + k, content=t, single_word=False, lstrip=False, rstrip=False,
                               normalized=False, special=True) for k, t in enumerate(SPECIAL)]
  path = root / "tiny_tokenizer"
  path.mkdir(exist_ok=True)
  (path / "tokenizer.json").write_text(json.dumps(data))
  (path / "tokenizer_config.json").write_text(json.dumps(dict(
      eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token=None, add_bos_token=False,
      clean_up_tokenization_spaces=False, model_max_length=4096, tokenizer_class="Qwen2Tokenizer")))
  return path


def test_sixteen_gsm8k_trees_through_engine_sandbox_and_ppm(tmp_path, shared_data):
  import sandbox  # pylint: disable=import-outside-toplevel

  tok = load_tokenizer(_tiny_tokenizer_dir(tmp_path, shared_data))
  cfg = ModelConfig.tiny(vocab_size=VOCAB)
  buckets = Buckets(min_length=64, min_rows=8)
  policy = EnginePolicy(Engine(Qwen2(cfg, rngs=nnx.Rngs(0)), tokenizer=tok, buckets=buckets),
                        temperature=1.0, max_new_tokens=24)
  scorer = PPMScorer(Engine(PPM(cfg, rngs=nnx.Rngs(1)), tokenizer=tok, buckets=buckets),
                     transform="tanh5")
  items = json.loads((shared_data / "benchmarks" / "GSM8K_test.json").read_text())[:16]
  problems = [Problem(f"GSM8K_test/{x['index']}", x["question"], str(x["answer"])) for x in items]
  template = prompts.load_sft_template(shared_data / "prompts")
  config = SearchConfig(mode="ppm_augmented", num_rollouts=2, num_candidates=4, max_depth=3,
                        errors_threshold=2, seed=0)
  executed = []

  class CountingPool:
    def __init__(self, pool):
      self.pool = pool

    def run(self, programs):
      executed.extend(programs)
      return self.pool.run(programs)

  with sandbox.SandboxPool(num_workers=2, timeout_s=2.0, memory_mb=512) as pool, Grader() as grader:
    search = MCTS(policy, CountingPool(pool), config, prompt_fn=template.format, scorer=scorer,
                  grader=grader, progress=False)
    records = search.run(problems, output_dir=tmp_path / "trees")

  (shard,) = sorted((tmp_path / "trees").glob("*.jsonl"))
  assert (tmp_path / "trees" / "trees.config.json").exists()  # what a resumed run is checked against
  assert read_trees(shard) == records  # the schema validator accepts every record
  from rstar_jax.data import trees as data_trees  # pylint: disable=import-outside-toplevel
  assert [t.problem_id for t in data_trees.read_trees(shard)] == [p.problem_id for p in problems]
  assert len(records) == 16
  assert all(r["prompt"] == template.format(p.question) for r, p in zip(records, problems))
  nodes = [n for r in records for n in r["nodes"]]
  children = [n for n in nodes if n["id"] != 0]
  assert search.stats.expansions >= 16 and len(children) == search.stats.children
  assert all(0 < len(r["nodes"][0]["children"]) <= 4 for r in records)
  # Every non-terminal child was scored by the PPM and initialised with one visit.
  for n in children:
    if not n["terminal"]:
      assert n["ppm_value"] is not None and -1 <= n["ppm_value"] <= 1
      assert n["visits"] >= 1
  # Code steps went through the sandbox; everything else became a terminal with a reason.
  code_nodes = [n for n in children if n["code"]]
  assert len(executed) == len(code_nodes) > 0
  assert {n["terminal_reason"] for n in children} <= {None, "answer", "too_many_errors", "max_depth",
                                                      "unparsable", "all_children_terminal"}




def _replay_search(tok_dir: pathlib.Path, shared_data: pathlib.Path):
  """A `paper`-preset (seeded random ties) PPM-augmented search by random tiny models, top-p sampled, in batches of
  2, of 4 GSM8K problems: `(problems, search(problem_list, output_dir) -> (records, stats))`, inside a sandbox pool
  and a grader (a context manager)."""
  import contextlib  # pylint: disable=import-outside-toplevel
  import sandbox  # pylint: disable=import-outside-toplevel

  tok = load_tokenizer(tok_dir)
  cfg = ModelConfig.tiny(vocab_size=VOCAB)
  buckets = Buckets(min_length=64, min_rows=8)
  policy = EnginePolicy(Engine(Qwen2(cfg, rngs=nnx.Rngs(0)), tokenizer=tok, buckets=buckets),
                        temperature=1.0, top_p=0.95, max_new_tokens=16)
  scorer = PPMScorer(Engine(PPM(cfg, rngs=nnx.Rngs(1)), tokenizer=tok, buckets=buckets))
  config = SearchConfig(mode="ppm_augmented", preset="paper", num_rollouts=2, num_candidates=3, max_depth=2,
                        errors_threshold=2, seed=3, batch_size=2)
  template = prompts.load_sft_template(shared_data / "prompts")
  items = json.loads((shared_data / "benchmarks" / "GSM8K_test.json").read_text())[20:24]
  problems = [Problem(f"GSM8K_test/{x['index']}", x["question"], str(x["answer"])) for x in items]

  @contextlib.contextmanager
  def searcher():
    with sandbox.SandboxPool(num_workers=2, timeout_s=2.0, memory_mb=512) as pool, Grader() as grader:

      def search(problem_list, output_dir):
        mcts = MCTS(policy, pool, config, prompt_fn=template.format, scorer=scorer, grader=grader, progress=False)
        return mcts.run(problem_list, output_dir=output_dir), mcts.stats

      yield search

  return problems, searcher()


@pytest.mark.slow  # ~25 s on 2 cores, and a second process
def test_engine_trees_replay_bit_for_bit_in_their_batch_in_any_order_on_resume_and_in_a_fresh_process(
    tmp_path, shared_data):
  """What README "Interfaces the search drives" guarantees with `EnginePolicy` + `PPMScorer` + the sandbox: a tree's
  record is the same, bit for bit (texts, PPM values, Q values), when its batch holds the same problems in another
  order, when a search resumes after being killed with some shards written (the batch it had not written is searched
  again, the others read back), and when a fresh process runs the same search."""
  tok_dir = _tiny_tokenizer_dir(tmp_path, shared_data)
  problems, searcher = _replay_search(tok_dir, shared_data)
  with searcher as search:
    records, stats = search(problems, tmp_path / "a")
    assert stats.expansions > 4 and any(n["ppm_value"] is not None for r in records for n in r["nodes"])
    # The reversed list keeps each batch's problems ({0, 1}, {2, 3}) in the other order.
    reversed_records, _ = search(problems[::-1], None)
    assert reversed_records[::-1] == records
    # Killed after its first shard: the second batch is searched again and comes out the same.
    (tmp_path / "b").mkdir()
    for name in ("trees-00000.jsonl", "trees.config.json"):
      (tmp_path / "b" / name).write_bytes((tmp_path / "a" / name).read_bytes())
    resumed, resumed_stats = search(problems, tmp_path / "b")
  assert resumed == records
  assert 0 < resumed_stats.expansions < stats.expansions  # only the second batch was searched
  shards = ("trees-00000.jsonl", "trees-00001.jsonl")
  assert (tmp_path / "b" / shards[1]).read_bytes() == (tmp_path / "a" / shards[1]).read_bytes()
  code = ("import pathlib, sys\n"
          "from e2e_test import _replay_search\n"
          "problems, searcher = _replay_search(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))\n"
          "with searcher as search:\n"
          "  search(problems, sys.argv[3])\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).parent)] + sys.path))
  subprocess.run([sys.executable, "-c", code, str(tok_dir), str(shared_data), str(tmp_path / "c")], env=env,
                 check=True, capture_output=True, timeout=300)
  for shard in shards:
    assert (tmp_path / "c" / shard).read_bytes() == (tmp_path / "a" / shard).read_bytes()
