"""`python -m rstar_jax.convert` verify / import / export, run as a user would (subprocesses)."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "rstar_jax.convert", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_verify_import_export(hf_qwen2_factory, tmp_path, shared_data):
  path, _ = hf_qwen2_factory(tie_word_embeddings=False)
  # A real checkpoint dir also holds its tokenizer and generation_config.json (the EOS ids generation stops at).
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copyfile(shared_data / "qwen2.5-tokenizer" / name, path / name)
  (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643], "top_p": 0.8}))
  last = _run("verify", "--hf-dir", str(path)).strip().splitlines()[-1]
  match = re.fullmatch(r"max_abs_logit_diff=([0-9.e+-]+)", last)
  assert match and float(match.group(1)) <= 1e-4, last
  _run("import", "--hf-dir", str(path), "--out", str(tmp_path / "ckpt"))
  _run("export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf_again"))
  original, again = load_file(path / "model.safetensors"), load_file(tmp_path / "hf_again" / "model.safetensors")
  assert sorted(original) == sorted(again)
  for name in original:
    np.testing.assert_array_equal(original[name], again[name], err_msg=name)
  # The export is a checkpoint transformers generates with as with the original: import then export kept the
  # tokenizer and the generation settings (the exported config.json names no EOS: without them HF's generate never
  # stopped at one).
  import transformers  # pylint: disable=import-outside-toplevel
  generation = transformers.GenerationConfig.from_pretrained(tmp_path / "hf_again")
  assert (generation.eos_token_id, generation.top_p) == ([151645, 151643], 0.8)
  text = "Solve x^2 = 4.<end_of_step>"
  assert (transformers.AutoTokenizer.from_pretrained(tmp_path / "hf_again")(text)["input_ids"]
          == transformers.AutoTokenizer.from_pretrained(shared_data / "qwen2.5-tokenizer")(text)["input_ids"])


def test_import_export_carry_a_chat_template_file(hf_qwen2_factory, tmp_path, shared_data):
  # transformers (4.47 on, 5.x) saves a tokenizer's chat template as chat_template.jinja, not in tokenizer_config.json;
  # import and export carried the other tokenizer files only, so the exported instruct model had no chat template.
  import transformers  # pylint: disable=import-outside-toplevel
  path, _ = hf_qwen2_factory()
  template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
  tok = transformers.AutoTokenizer.from_pretrained(shared_data / "qwen2.5-tokenizer")
  tok.chat_template = template
  tok.save_pretrained(path)
  assert (path / "chat_template.jinja").exists()
  _run("import", "--hf-dir", str(path), "--out", str(tmp_path / "ckpt"))
  _run("export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf_again"))
  assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf_again").chat_template == template


def test_input_mistakes_end_with_a_usage_error_naming_the_path(hf_qwen2_factory, tmp_path, capsys):
  from flax import nnx

  from rstar_jax import convert
  from rstar_jax.models import PPM, ModelConfig, checkpoint
  checkpoint.save_model(PPM(ModelConfig.tiny(num_layers=1), rngs=nnx.Rngs(0)), tmp_path / "ppm ckpt")
  (tmp_path / "empty").mkdir()
  (tmp_path / "a_file").write_text("")
  (tmp_path / "bad config").mkdir()
  (tmp_path / "bad config" / "config.json").write_text("[]")
  hf_dir, _ = hf_qwen2_factory()
  # A checkpoint saved by transformers 4 with `safe_serialization=False`: pytorch_model.bin, which is not read.
  bin_dir, _ = hf_qwen2_factory("bin_dir")
  torch.save(load_file(bin_dir / "model.safetensors"), bin_dir / "pytorch_model.bin")
  os.remove(bin_dir / "model.safetensors")
  ppm_dir, _ = hf_qwen2_factory("ppm_dir")  # the official layout: a backbone dir + value_head.bin
  torch.save({"v_head.summary.weight": torch.zeros(1, 64), "v_head.summary.bias": torch.zeros(1)},
             ppm_dir / "value_head.bin")
  for args, message in [
      (["verify", "--hf-dir", str(tmp_path / "missing")], f"--hf-dir {tmp_path / 'missing'}: no such directory"),
      (["import", "--hf-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], "no config.json in it"),
      (["export", "--ckpt", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "no such directory"),
      (["export", "--ckpt", str(tmp_path / "ppm ckpt"), "--out", str(tmp_path / "o")],
       "holds a ppm checkpoint: add --ppm"),
      (["export", "--ckpt", str(tmp_path / "ppm ckpt"), "--out", str(tmp_path / "o"), "--ppm", "--dtype", "fp99"],
       "--dtype 'fp99': unknown dtype 'fp99'; expected one of"),
      # These were tracebacks (verify's from numpy or transformers, export's FileExistsError after loading).
      (["verify", "--hf-dir", str(hf_dir), "--length", "1"], "--length >= 1 (>= 2 when --batch > 1"),
      (["verify", "--hf-dir", str(hf_dir), "--batch", "0"], "got --batch 0 --length 32"),
      (["export", "--ckpt", str(tmp_path / "ppm ckpt"), "--out", str(tmp_path / "a_file"), "--ppm"],
       f"--out {tmp_path / 'a_file'}: is a file, not a folder"),
      (["import", "--hf-dir", str(hf_dir), "--out", str(tmp_path / "a_file" / "ckpt")],
       f"--out {tmp_path / 'a_file' / 'ckpt'}: {tmp_path / 'a_file'} is a file, not a folder"),
      # Each overwrote the input's config.json with its own (the HF dir lost eos_token_id; the checkpoint its layout).
      (["import", "--hf-dir", str(hf_dir), "--out", str(hf_dir) + "/"],
       f"--out {hf_dir}/ is the input folder (--hf-dir {hf_dir}): write to another folder"),
      (["export", "--ckpt", str(tmp_path / "ppm ckpt"), "--out", str(tmp_path / "ppm ckpt"), "--ppm"],
       "is the input folder (--ckpt"),
      (["verify", "--hf-dir", str(tmp_path / "bad config")], "config.json: expected a JSON object, got list"),
      # These were tracebacks once the model was built: a folder with no weights this loader reads.
      (["import", "--hf-dir", str(bin_dir), "--out", str(tmp_path / "o")],
       f"--hf-dir {bin_dir}: no model.safetensors or model.safetensors.index.json (PyTorch .bin"),
      (["verify", "--hf-dir", str(bin_dir)], f"--hf-dir {bin_dir}: no model.safetensors"),
      (["import", "--hf-dir", str(tmp_path / "ppm ckpt"), "--out", str(tmp_path / "o"), "--ppm"],
       f"--hf-dir {tmp_path / 'ppm ckpt'}: no model.safetensors"),
      # A PPM dir imported without --ppm became a policy checkpoint: its value head was dropped without a word.
      (["import", "--hf-dir", str(ppm_dir), "--out", str(tmp_path / "o")],
       f"--hf-dir {ppm_dir} holds a PPM (value_head.bin): add --ppm"),
      # load_qwen2 refuses a PPM dir: verify said so by a traceback.
      (["verify", "--hf-dir", str(ppm_dir)], f"--hf-dir {ppm_dir} holds a PPM (value_head.bin): verify compares a "
                                             "policy's logits"),
  ]:
    with pytest.raises(SystemExit) as exit_info:
      convert.main(args)
    assert exit_info.value.code == 2, args
    assert message in capsys.readouterr().err, args
  assert not (tmp_path / "o").exists()


def test_a_read_only_out_is_a_usage_error_before_the_model_loads(hf_qwen2_factory):
  # Import into a read-only folder failed once the model had loaded, by a traceback from inside orbax ("Permission
  # denied: '.../params.orbax-checkpoint-tmp'"). Root writes anywhere: the command then runs as uid 65534, in a folder
  # of /tmp that uid can reach (pytest's tmp_path is root's alone), its modules imported before it drops root.
  hf_dir, _ = hf_qwen2_factory()
  folder = tempfile.mkdtemp()
  try:
    shutil.copytree(hf_dir, os.path.join(folder, "hf"))
    for name in os.listdir(os.path.join(folder, "hf")):
      os.chmod(os.path.join(folder, "hf", name), 0o644)
    os.chmod(os.path.join(folder, "hf"), 0o755)
    os.chmod(folder, 0o755)
    read_only = os.path.join(folder, "read_only")
    os.mkdir(read_only, 0o555)
    os.chmod(read_only, 0o555)
    code = ("import os, sys\n"
            "from rstar_jax import convert\n"
            "from rstar_jax.models import config, convert as models_convert\n"
            "if os.geteuid() == 0:\n"
            "  os.setgid(65534); os.setuid(65534)\n"
            "convert.main(sys.argv[1:])\n")
    for out, message in [(read_only, f"--out {read_only}: not writable"),
                         (os.path.join(read_only, "ckpt"), f"--out {read_only}/ckpt: {read_only} not writable")]:
      proc = subprocess.run([sys.executable, "-c", code, "import", "--hf-dir", os.path.join(folder, "hf"), "--out",
                             out], cwd=REPO, env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"),
                            capture_output=True, text=True, timeout=300)
      assert proc.returncode == 2 and proc.stderr.strip().endswith(message), proc.stderr[-3000:]
    assert os.listdir(read_only) == []
  finally:
    shutil.rmtree(folder)


@pytest.mark.parametrize("damage", ["arrays cut", "metadata cut"])
def test_export_of_a_damaged_checkpoint_names_its_folder_and_cause_without_a_traceback(tmp_path, damage):
  # A checkpoint whose array files were cut short ended the command in ~20 tracebacks from orbax's reader threads
  # ("Event loop is closed"); one whose _METADATA was cut, in a traceback saying every parameter "is not saved".
  from flax import nnx

  from rstar_jax.models import ModelConfig, Qwen2, checkpoint
  checkpoint.save_model(Qwen2(ModelConfig.tiny(num_layers=1), rngs=nnx.Rngs(0)), tmp_path / "ckpt")
  params = tmp_path / "ckpt" / "params"
  if damage == "arrays cut":
    blobs = [p for p in params.glob("ocdbt.process_*/d/*") if p.stat().st_size > 1024]
    assert blobs
    for blob in blobs:
      blob.write_bytes(blob.read_bytes()[:10])
    message = (f"python -m rstar_jax.convert export: error: {params}: cannot restore the orbax checkpoint (ValueError: "
               "OUT_OF_RANGE: Error reading \"model.")
  else:
    (params / "_METADATA").write_bytes((params / "_METADATA").read_bytes()[:20])
    message = (f"python -m rstar_jax.convert export: error: {params}: the orbax checkpoint lists no parameters (its "
               "_METADATA file is missing or damaged): write it again")
  # Orbax's other reads, still in flight when one failed, reported themselves (up to hundreds of lines, from
  # TensorStore's threads and at collection) in about 1 run in 4 (CI failure): three runs catch that most times.
  for _ in range(3 if damage == "arrays cut" else 1):
    proc = subprocess.run([sys.executable, "-m", "rstar_jax.convert", "export", "--ckpt", str(tmp_path / "ckpt"),
                           "--out", str(tmp_path / "hf")], cwd=REPO,
                          env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [proc.stderr.splitlines()[0]], proc.stderr[-3000:]
    assert proc.stderr.startswith(message), proc.stderr[-3000:]
    assert not (tmp_path / "hf").exists()


def test_export_with_stderr_closed_exports_and_a_damaged_checkpoint_still_fails(tmp_path):
  # Started with file descriptor 2 closed (`2>&-`), export held fd 2 during the load with os.dup(2): EBADF, a
  # traceback nobody could see, exit status 1 and no export.
  from flax import nnx

  from rstar_jax.models import ModelConfig, Qwen2, checkpoint
  checkpoint.save_model(Qwen2(ModelConfig.tiny(num_layers=1), rngs=nnx.Rngs(0)), tmp_path / "ckpt")

  def export(out):
    # The shell closes fd 2 and execs Python (a preexec_fn would fork this multithreaded process).
    return subprocess.run(["sh", "-c", 'exec "$0" "$@" 2>&-', sys.executable, "-m", "rstar_jax.convert", "export",
                           "--ckpt", str(tmp_path / "ckpt"), "--out", str(out)], cwd=REPO,
                          env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE, text=True,
                          timeout=300, check=False)

  proc = export(tmp_path / "hf")
  assert (proc.returncode, proc.stdout) == (0, f"exported {tmp_path / 'ckpt'} -> {tmp_path / 'hf'}\n")
  assert (tmp_path / "hf" / "model.safetensors").is_file()
  params = tmp_path / "ckpt" / "params"
  (params / "_METADATA").write_bytes((params / "_METADATA").read_bytes()[:20])
  proc = export(tmp_path / "hf_damaged")
  assert (proc.returncode, proc.stdout) == (1, "")
  assert not (tmp_path / "hf_damaged").exists()


def test_eos_ids_only_in_config_json_survive_import_and_export(hf_qwen2_factory, tmp_path):
  # A checkpoint without generation_config.json ends generation at its config.json's eos_token_id (vLLM and
  # transformers build the generation config from it). Import and export wrote config.json from ModelConfig, which
  # holds no token ids: the exported model generated past the end of every answer.
  import transformers  # pylint: disable=g-import-not-at-top
  from rstar_jax.generate.adapters import checkpoint_eos_ids  # pylint: disable=g-import-not-at-top
  path, _ = hf_qwen2_factory()
  config = json.loads((path / "config.json").read_text())
  (path / "config.json").write_text(json.dumps(dict(config, bos_token_id=3, eos_token_id=[5, 7])))
  if (path / "generation_config.json").exists():
    (path / "generation_config.json").unlink()
  _run("import", "--hf-dir", str(path), "--out", str(tmp_path / "ckpt"))
  _run("export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf_again"))
  for folder in (tmp_path / "ckpt", tmp_path / "hf_again"):
    assert checkpoint_eos_ids(folder) == checkpoint_eos_ids(path) == [5, 7], folder
  generation = transformers.GenerationConfig.from_model_config(transformers.AutoConfig.from_pretrained(
      tmp_path / "hf_again"))
  assert (generation.bos_token_id, generation.eos_token_id) == (3, [5, 7])


def test_verify_refuses_a_negative_seed_before_loading(hf_qwen2_factory, capsys):
  from rstar_jax import convert
  hf_dir, _ = hf_qwen2_factory()
  with pytest.raises(ValueError, match="expected non-negative integer"):
    np.random.default_rng(-1)  # what verify seeds its random tokens with
  # It failed so, as numpy's traceback naming no flag, only after both models (ours and transformers') had loaded.
  with pytest.raises(SystemExit) as exit_info:
    convert.main(["verify", "--hf-dir", str(hf_dir), "--seed", "-1"])
  assert exit_info.value.code == 2
  assert "--seed must be >= 0, got -1" in capsys.readouterr().err


def test_a_command_whose_stdout_reader_left_ends_quietly(hf_qwen2_factory, tmp_path):
  # `convert import ... | head -0` (or any reader gone before the last line): the line met the closed pipe, a
  # BrokenPipeError traceback and exit 1 after the work was done. A Unix tool ends as SIGPIPE ends it: no word, the
  # status 141 (128 + 13) a shell reports for it.
  path, _ = hf_qwen2_factory()
  read_end, write_end = os.pipe()
  os.close(read_end)  # the reader left before the first line (`| true`)
  try:
    proc = subprocess.run([sys.executable, "-m", "rstar_jax.convert", "import", "--hf-dir", str(path), "--out",
                           str(tmp_path / "ckpt")], cwd=REPO, env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"),
                          stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300, check=False)
  finally:
    os.close(write_end)
  assert proc.returncode == 141, proc.stderr[-3000:]
  assert not re.search(r"Traceback|BrokenPipe|Exception ignored", proc.stderr), proc.stderr[-3000:]
  assert (tmp_path / "ckpt" / "config.json").is_file()  # the checkpoint was written before the line
