"""Two cooperating processes (`jax.distributed` on localhost, 2 CPU devices each) against one process with the same
4 devices: the global batch, the tensor-only mesh check, and a sharded SFT run whose export is gathered by process 0.
"""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

import rstar_train_testlib as testlib
from rstar_jax.data import formats

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def _run(nproc, ndev, base, out):
  port = str(20000 + random.randrange(20000))
  procs = [subprocess.Popen([sys.executable, WORKER, str(i), str(nproc), port, str(ndev), str(base), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(nproc)]
  outputs = []
  for p in procs:
    try:
      text = p.communicate(timeout=600)[0]
    except subprocess.TimeoutExpired:  # a missing peer hangs the others: never let it hang the suite
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, text[-4000:]
    outputs.append([line[len("RESULT "):] for line in text.splitlines() if line.startswith("RESULT ")])
  return outputs


@pytest.mark.multiprocess
def test_two_processes_train_and_export_like_one(tmp_path):
  base = tmp_path / "base"
  records = testlib.arithmetic_sft_records(24)
  testlib.tiny_hf_model(base, seed=0)
  testlib.tiny_tokenizer(base, [formats.sft_prompt(r["query"]) + r["response"] for r in records])
  testlib.write_json(base / "sft.json", records)

  two = _run(2, 2, base, tmp_path / "two")
  (one,) = _run(1, 4, base, tmp_path / "one")
  for lines in two + [one]:
    assert lines[0] == "batch (8, 3) 28"  # rows 0..7 once each, whoever fed them
  for lines in two:
    assert lines[1].startswith("tensor_only refused: mesh (1, 1, -1): data x fsdp = 1 must be a multiple of the 2 "
                               "processes")
    assert lines[2] == one[1]  # steps and exported files (weights, config, tokenizer) on every process's return
  assert "model.safetensors" in one[1] and "tokenizer.json" in one[1]
  ours = load_file(tmp_path / "two" / "work" / "export" / "model.safetensors")
  ref = load_file(tmp_path / "one" / "work" / "export" / "model.safetensors")
  assert sorted(ours) == sorted(ref)
  for name in ref:
    np.testing.assert_allclose(ours[name], ref[name], atol=1e-5, rtol=0, err_msg=name)
