"""The README's main command, `python -m rstar_jax.demo`, runs end to end and leaves every artifact behind."""

import json
import os
import subprocess
import sys

import pytest

from rstar_jax.search import read_trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "rstar_jax.demo", "--workdir", str(tmp_path)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "bit-identical: True" in proc.stdout
  last_diff = [l for l in proc.stdout.splitlines() if l.startswith("max_abs_logit_diff=")]
  assert last_diff and float(last_diff[0].split("=")[1]) <= 1e-4
  trees = {}
  for shard_dir in ("trees_random_policy", "trees_round1"):
    shards = [f for f in os.listdir(tmp_path / shard_dir) if f.endswith(".jsonl")]
    assert shards
    trees[shard_dir] = [t for f in shards for t in read_trees(str(tmp_path / shard_dir / f))]
  # Stage 3 claims to run the PPM scorer: with errors_threshold 1 every random step was terminal (truncated, or code
  # that errors), so no node was ever scored and the PPM path went unexercised.
  scored = sum(n["ppm_value"] is not None for t in trees["trees_random_policy"] for n in t["nodes"])
  assert scored > 0
  sft = [json.loads(l) for l in open(tmp_path / "sft_r1.jsonl", encoding="utf-8")]
  pairs = [json.loads(l) for l in open(tmp_path / "pairs_r1.jsonl", encoding="utf-8")]
  assert sft and {"query", "response"} <= set(sft[0])
  assert pairs and {"prompt", "pos", "neg", "pos_count", "neg_count"} <= set(pairs[0])
  assert (tmp_path / "train_policy_r1" / "export" / "model.safetensors").exists()
  assert (tmp_path / "train_ppm_r1" / "export" / "value_head.bin").exists()
  # The smallest run (`--problems 1`) runs every stage too. It stopped in SFT with "no training examples" (problem 0
  # had no right first step), and its random-policy search of problems[:1] never called the PPM scorer (only
  # problems 6 and 7 of the first 8 get a scored node).
  one = tmp_path / "one"
  proc = subprocess.run([sys.executable, "-m", "rstar_jax.demo", "--workdir", str(one), "--problems", "1"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  random_trees = read_trees(str(one / "trees_random_policy" / "trees-00000.jsonl"))
  assert sum(n["ppm_value"] is not None for t in random_trees for n in t["nodes"]) > 0
  assert [t["problem_id"] for t in read_trees(str(one / "trees_round1" / "trees-00000.jsonl"))] == ["GSM8K_test/0"]
  assert (one / "train_ppm_r1" / "export" / "value_head.bin").exists()


def test_bad_arguments_stop_before_any_work(tmp_path):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  (tmp_path / "precious").mkdir()
  (tmp_path / "precious" / "notes.txt").write_text("keep me")
  (tmp_path / "a_file").write_text("")
  for args, message in [
      (["--problems", "0"], "--problems must be in [1, "),
      (["--problems", "-1"], "--problems must be in [1, "),
      (["--workdir", str(tmp_path / "a_file")], "is a file"),
      (["--workdir", str(tmp_path / "a_file" / "run")], "/a_file/run: cannot create it (Not a directory)"),
      # --fresh deletes only a workdir the demo wrote: never someone's folder given by mistake.
      (["--workdir", str(tmp_path), "--fresh"], "holds files the demo does not write (a_file, precious)"),
  ]:
    proc = subprocess.run([sys.executable, "-m", "rstar_jax.demo", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-2000:])
  assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_another_problem_count_in_a_used_workdir_stops_before_rebuilding_anything(tmp_path, capsys):
  from rstar_jax import demo
  (tmp_path / "demo.json").write_text('{"problems": 16}\n')
  (tmp_path / "tokenizer").mkdir()  # stands for the first run's files: the trees and checkpoints were made from them
  with pytest.raises(SystemExit) as exit_info:
    demo.main(["--workdir", str(tmp_path), "--problems", "4"])
  assert exit_info.value.code == 2
  assert "--problems 4, but" in capsys.readouterr().err
  assert not list((tmp_path / "tokenizer").iterdir()) and sorted(os.listdir(tmp_path)) == ["demo.json", "tokenizer"]
  # A demo.json that is not an object (hand-edited, say) slipped past this check.
  (tmp_path / "demo.json").write_text('[16]\n')
  with pytest.raises(SystemExit) as exit_info:
    demo.main(["--workdir", str(tmp_path), "--problems", "4"])
  assert exit_info.value.code == 2
  assert "demo.json: expected a JSON object, got list" in capsys.readouterr().err
  assert not list((tmp_path / "tokenizer").iterdir())
  # Brackets nested too deeply (a damaged file): a bare RecursionError traceback instead of the usage error.
  (tmp_path / "demo.json").write_text('{"problems": ' + "[" * 100_000)
  with pytest.raises(SystemExit) as exit_info:
    demo.main(["--workdir", str(tmp_path), "--problems", "4"])
  assert exit_info.value.code == 2
  assert "demo.json: unreadable (nested too deeply" in capsys.readouterr().err


def test_fresh_empties_a_workdir_given_as_a_symbolic_link(tmp_path):
  from rstar_jax import demo
  target = tmp_path / "runs"
  (target / "policy_r0").mkdir(parents=True)
  (target / "policy_r0" / "config.json").write_text("{}")
  (target / "demo.json").write_text("{}")
  (tmp_path / "elsewhere").mkdir()
  (target / "trees_r1").symlink_to(tmp_path / "elsewhere")
  (tmp_path / "link").symlink_to(target)
  demo._empty(str(tmp_path / "link"))  # shutil.rmtree raised on the link: "Cannot call rmtree on a symbolic link"
  assert (tmp_path / "link").is_symlink() and os.listdir(target) == [] and (tmp_path / "elsewhere").is_dir()


def test_a_full_disk_while_writing_the_tokenizer_names_the_file(tmp_path):
  # A real failed write, no root needed: past RLIMIT_FSIZE (SIGXFSZ ignored) write(2) fails as on a full disk.
  # `tokenizers`' own save raised "Exception: File too large (os error 27)", naming no file.
  code = ("import resource, signal, sys\n"
          "from rstar_jax import demo\n"
          "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
          "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
          "try:\n"
          "  demo.build_tokenizer(sys.argv[1], ['the bpe learns these words and numbers 1 2 3'] * 10, 400)\n"
          "except OSError as e:\n"
          "  print(e)\n")
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tokenizer")], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "File too large" in proc.stdout and str(tmp_path / "tokenizer" / "tokenizer.json") in proc.stdout, proc.stdout


def test_a_workdir_from_a_demo_with_other_settings_stops_before_rebuilding_anything(tmp_path, capsys):
  from rstar_jax import demo
  # A workdir written by an earlier demo (its demo.json held only the problem count; its random-policy search ran with
  # errors_threshold 1). It rebuilt the tokenizer and models over it, then died with a traceback in the search:
  # "trees.config.json: ... (errors_threshold: 1 there, 2 now); resume with the same config", advice a demo user
  # cannot follow.
  (tmp_path / "demo.json").write_text('{"problems": 16}\n')
  (tmp_path / "tokenizer").mkdir()
  with pytest.raises(SystemExit) as exit_info:
    demo.main(["--workdir", str(tmp_path)])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert f"{tmp_path / 'demo.json'}: written by a demo with other settings (" in err and "--fresh" in err, err
  assert not list((tmp_path / "tokenizer").iterdir()) and sorted(os.listdir(tmp_path)) == ["demo.json", "tokenizer"]
  # Stage files without any demo.json: a demo from before demo.json existed.
  (tmp_path / "demo.json").unlink()
  with pytest.raises(SystemExit) as exit_info:
    demo.main(["--workdir", str(tmp_path)])
  assert exit_info.value.code == 2
  assert "holds a run of a demo that kept no demo.json" in capsys.readouterr().err
  assert os.listdir(tmp_path) == ["tokenizer"]


def test_a_workdir_the_demo_cannot_write_in_is_a_usage_error_before_jax_is_imported(tmp_path):
  # A real failed write, no root needed (root writes in a chmod 555 folder): past RLIMIT_FSIZE, write(2) fails as in
  # a read-only or full workdir. An existing workdir that took no files raised a PermissionError / OSError traceback
  # after the imports, naming only a temporary file.
  code = ("import resource, signal, sys\n"
          "from rstar_jax import demo\n"
          "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
          "resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
          "try:\n"
          "  demo.main(['--workdir', sys.argv[1]])\n"
          "except SystemExit as e:\n"
          "  print('exit', e.code, 'jax imported:', 'jax' in sys.modules)\n")
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert "exit 2 jax imported: False" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert f"--workdir {tmp_path}: cannot write in it (File too large)" in proc.stderr, proc.stderr[-2000:]
  assert os.listdir(tmp_path) == []


def test_the_teacher_offers_a_right_and_a_wrong_first_step_for_every_problem():
  # Without both a problem gives no SFT record or no preference pair: `--problems 1` (GSM8K problem 0, whose four
  # first steps were all wrong or broken) stopped in SFT with "sft_r1.jsonl: no training examples".
  from rstar_jax import demo
  with open(os.path.join(REPO, "rstar_jax", "assets", "gsm8k_demo.json"), encoding="utf-8") as f:
    records = json.load(f)
  teacher = demo.TeacherPolicy({r["question"]: str(r["answer"]) for r in records})
  for record in records:
    prompt = f"<|user|>:\n{record['question']}\n<|assistant|>: Let's think step by step."
    for seed in range(50):
      steps = [c.text for c in teacher.generate([prompt], n=4, seeds=[seed], stop=[])[0]]
      defined = [s.split("answer = ")[1].strip() for s in steps]
      assert str(record["answer"]) in defined, (record["index"], seed, defined)
      assert any(d != str(record["answer"]) and d != "total_from_the_question" for d in defined), (seed, defined)


def test_the_demo_tokenizer_reads_back_the_same_in_transformers(tmp_path):
  # The demo's exports are Qwen2 dirs, and transformers loads a Qwen2 dir's tokenizer as `Qwen2Tokenizer`, which
  # pre-tokenizes with Qwen2's own regex and NFC: the demo's plain byte-level BPE split "answer = 18" or "(x" otherwise,
  # so transformers (and vLLM) fed the exported models ids they were never trained on.
  import transformers  # pylint: disable=import-outside-toplevel
  from rstar_jax import demo  # pylint: disable=import-outside-toplevel
  from rstar_jax.models import ModelConfig  # pylint: disable=import-outside-toplevel
  with open(os.path.join(REPO, "rstar_jax", "assets", "gsm8k_demo.json"), encoding="utf-8") as f:
    corpus = [r["question"] for r in json.load(f)]
  texts = corpus[:20] + ["<code>\n# Step 1: add\nanswer = 18 + (x*3)\n<end_of_step>", "print(round(8.94427, 2))\n",
                         "<|user|>:\nWhat's 12+7?\n\n<|assistant|>: Let's think.\n<output>19<end_of_output>",
                         "caf\u0065\u0301 costs $1,234.50\t\n\n  done"]
  tokenizer = demo.build_tokenizer(str(tmp_path), corpus, vocab_size=1024)
  (tmp_path / "config.json").write_text(json.dumps(ModelConfig.tiny(vocab_size=1088).to_hf_config()))
  reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
  for text in texts:
    assert tokenizer.encode(text) == reference(text, add_special_tokens=False)["input_ids"], text
