"""`python -m rstar_jax.convert` verify / import / export, run as a user would (subprocesses)."""

import os
import re
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "rstar_jax.convert", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_verify_import_export(hf_qwen2_factory, tmp_path):
  path, _ = hf_qwen2_factory(tie_word_embeddings=False)
  last = _run("verify", "--hf-dir", str(path)).strip().splitlines()[-1]
  match = re.fullmatch(r"max_abs_logit_diff=([0-9.e+-]+)", last)
  assert match and float(match.group(1)) <= 1e-4, last
  _run("import", "--hf-dir", str(path), "--out", str(tmp_path / "ckpt"))
  _run("export", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf_again"))
  original, again = load_file(path / "model.safetensors"), load_file(tmp_path / "hf_again" / "model.safetensors")
  assert sorted(original) == sorted(again)
  for name in original:
    np.testing.assert_array_equal(original[name], again[name], err_msg=name)
