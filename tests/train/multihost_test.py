"""Two cooperating processes (`jax.distributed` on localhost, 2 CPU devices each) against one process with the same
4 devices: the global batch, the tensor-only mesh check, and a sharded SFT run whose export is gathered by process 0;
and cases (`multihost_cases_worker.py`) that compare a two-process call with a plain forward on one device.
"""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

import rstar_train_testlib as testlib
from rstar_jax.data import formats
from rstar_jax.models.tensor_files import read_torch_bin

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multihost_worker.py")
CASES_WORKER = os.path.join(HERE, "multihost_cases_worker.py")
FILES = "config.json,generation_config.json,model.safetensors,tokenizer.json,tokenizer_config.json"


def _run(nproc, ndev, base, out, worker=WORKER, timeout=600, extra=()):
  port = str(20000 + random.randrange(20000))
  procs = [subprocess.Popen([sys.executable, worker, str(i), str(nproc), port, str(ndev), str(base), str(out),
                             *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(nproc)]
  outputs = []
  for p in procs:
    try:
      text = p.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:  # a missing peer hangs the others: never let it hang the suite
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, text[-4000:]
    outputs.append([line[len("RESULT "):] for line in text.splitlines() if line.startswith("RESULT ")])
  return outputs


def _sft_base(tmp_path, sft_name):
  """A tiny HF policy, its tokenizer and 24 SFT records (also written as `sft_name`) under tmp_path/base."""
  base = tmp_path / "base"
  records = testlib.arithmetic_sft_records(24)
  testlib.tiny_hf_model(base, seed=0)
  testlib.tiny_tokenizer(base, [formats.sft_prompt(r["query"]) + r["response"] for r in records])
  testlib.write_json(base / sft_name, records)
  return base, records


@pytest.mark.multiprocess
def test_two_processes_train_and_export_like_one(tmp_path):
  base, _ = _sft_base(tmp_path, "sft.json")

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


def _case(name, out):
  """Runs a case of `multihost_cases_worker.py` on two processes of 2 devices; each process's RESULT lines."""
  return _run(2, 2, name, out, worker=CASES_WORKER, timeout=240)


@pytest.mark.multiprocess
def test_two_process_engine_equals_a_plain_forward(tmp_path):
  # Every read of the engine's device results (the decode loop's done flags, tokens, values, log-probs) raised
  # "Fetching value for `jax.Array` that spans non-addressable devices" once the mesh spanned two processes.
  for lines in _case("engine", tmp_path):
    assert [line.split()[:2] for line in lines] == [["generate", "True"], ["loglikelihood", "True"],
                                                    ["values", "True"]], lines


@pytest.mark.multiprocess
def test_two_process_evaluate_ppm_equals_hand_computed_loss(tmp_path):
  # A batch size the process count does not divide (3 over 2 processes) raised "global batch 3 does not divide over
  # 2 processes", though any batch size runs on any mesh; a tensor-only mesh raised jax's "Invalid host data".
  for lines in _case("evaluate_ppm", tmp_path):
    assert lines[0].startswith("batch3 True "), lines
    assert lines[1] == ("tensor_only mesh (1, 1, -1): data x fsdp = 1 must be a multiple of the 2 processes (each "
                        "process feeds its own rows of a batch)"), lines


@pytest.mark.multiprocess
def test_two_process_evaluate_ppm_on_different_pairs_raises_everywhere(tmp_path):
  # Process 1 passed 4 pairs (2 batches), process 0 7 (4 batches): process 1 returned its result while process 0
  # waited in its third batch's collectives (a hang).
  for lines in _case("evaluate_ppm_mismatch", tmp_path):
    assert len(lines) == 1 and lines[0].startswith("evaluate_ppm_mismatch evaluate_ppm: the 2 processes differ in "
                                                   "data.fingerprint, data.num_batches"), lines


@pytest.mark.multiprocess
def test_two_process_save_model_then_load_model(tmp_path):
  # save_model returned on process 1 before process 0 had written config.json: loading right after raised
  # "no config.json found" there (and left process 0 waiting for it).
  for lines in _case("save_model", tmp_path):
    assert lines == ["save_model True"], lines


@pytest.mark.multiprocess
def test_two_process_export_into_an_unwritable_folder_raises_everywhere(tmp_path):
  # Process 0 raised NotADirectoryError while process 1 waited in the first gather of the weights for it (a hang
  # until the collective's deadline; 30 s on CPU).
  zero, one = _case("export_error", tmp_path)
  assert zero == ["export_error NotADirectoryError [Errno 20] Not a directory: 'OUT/a_file/export'"], zero
  assert one == ["export_error OSError OUT/a_file/export: process 0 could not create the export folder (its error "
                 "names the cause)"], one


@pytest.mark.multiprocess
def test_two_process_training_on_different_data_raises_everywhere(tmp_path):
  # Process 1's SFT file (a stale copy on its own disk) held 16 records, process 0's 24: process 1 ran 2 steps and
  # went on to the final checkpoint and the export while process 0 waited in its third step's collectives (a hang).
  base, records = _sft_base(tmp_path, "sft0.json")
  testlib.write_json(base / "sft1.json", records[:16])
  for lines in _case("data_mismatch", tmp_path):
    assert len(lines) == 1 and lines[0].startswith("data_mismatch OUT/work: the 2 processes differ in "), lines
    assert "data.num_batches" in lines[0] and "data.fingerprint" in lines[0], lines


@pytest.mark.multiprocess
@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)], ids=["2to1", "1to2"])
def test_a_run_checkpointed_on_some_processes_resumes_on_others_like_an_uninterrupted_run(tmp_path, first, then):
  """Stopped after step 1's checkpoint on `first` processes (4 devices in all), resumed on `then`: the export equals
  an uninterrupted single-process run's."""
  _sft_base(tmp_path, "sft0.json")
  run = lambda nproc, case: _run(nproc, 4 // nproc, case, tmp_path, worker=CASES_WORKER, timeout=240)
  assert run(first, "train_stop") == [["train stopped at 2"]] * first
  assert run(then, "train_finish") == [[f"train 3 {FILES}"]] * then
  assert run(1, "train_reference") == [[f"train 3 {FILES}"]]
  ours = load_file(tmp_path / "work" / "export" / "model.safetensors")
  ref = load_file(tmp_path / "reference" / "export" / "model.safetensors")
  assert sorted(ours) == sorted(ref)
  for name in ref:
    np.testing.assert_allclose(ours[name], ref[name], atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.multiprocess
def test_two_processes_train_a_ppm_from_a_policy_like_one(tmp_path):
  """train_ppm from a policy dir (a fresh value head is added and placed) on 2 processes: the export (backbone and
  value_head.bin) equals a single-process run's on the same 4 devices."""
  base = tmp_path / "base"
  records = testlib.arithmetic_sft_records(12)
  testlib.tiny_hf_model(base, seed=0)
  testlib.tiny_tokenizer(base, [formats.sft_prompt(r["query"]) + r["response"] for r in records])
  pairs = [{"prompt": formats.sft_prompt(r["query"]), "pos": r["response"], "neg": r["response"][:20 + i],
            "pos_count": 1, "neg_count": 1 + i % 3} for i, r in enumerate(records)]
  testlib.write_json(base / "pairs.json", pairs)
  two = _run(2, 2, "train_ppm", tmp_path, worker=CASES_WORKER, timeout=240)
  (one,) = _run(1, 4, "train_ppm", tmp_path, worker=CASES_WORKER, timeout=240)
  assert two == [one] * 2 and one[0].startswith("train_ppm 3 ") and "value_head.bin" in one[0], (two, one)
  for name in ("model.safetensors", "value_head.bin"):
    read = load_file if name.endswith(".safetensors") else read_torch_bin
    ours, ref = read(tmp_path / "ppm2" / "export" / name), read(tmp_path / "ppm1" / "export" / name)
    assert sorted(ours) == sorted(ref)
    for key in ref:
      if key.endswith(".bias") and name == "value_head.bin":
        # The Bradley-Terry loss sees only r_pos - r_neg: the head bias has an exactly-zero gradient, so Adam's
        # update of it is normalised rounding noise on either side (as in sharded_step_test).
        continue
      np.testing.assert_allclose(ours[key], ref[key], atol=1e-5, rtol=0, err_msg=f"{name} {key}")


@pytest.mark.multiprocess
@pytest.mark.parametrize("case,zero_error,one_error", [
    # Process 0's weight file write failed (a full disk) after the gathers: process 1 waited for it in the closing
    # barrier, and process 0, once its error was caught (or at exit, in the distributed shutdown), waited for
    # process 1 (a hang).
    ("export_write_error", "OSError [Errno 28] No space left on device: 'OUT/export/model.safetensors'",
     "OSError OUT/export: process 0 could not write the export (its error names the cause)"),
    # Process 0 raised writing config.json while process 1 waited in the closing barrier, and process 0 then waited
    # for process 1 at shutdown (a hang).
    ("save_model_error", "PermissionError [Errno 13] Permission denied: 'config.json'",
     "OSError OUT/saved: process 0 could not write config.json (its error names the cause)"),
])
def test_two_process_model_write_failing_on_process_0_raises_everywhere(tmp_path, case, zero_error, one_error):
  zero, one = _case(case, tmp_path)
  assert zero == [f"{case} {zero_error}"], zero
  assert one == [f"{case} {one_error}"], one


@pytest.mark.multiprocess
def test_two_process_training_whose_process_0_cannot_write_raises_everywhere(tmp_path):
  # Process 0 raised writing run.json while process 1 went on into the first step, or raised writing the tokenizer
  # while process 1 waited in the closing barrier; process 0 then waited for process 1 in the shutdown (a hang).
  _sft_base(tmp_path, "sft0.json")
  zero, one = _case("trainer_write_error", tmp_path)
  assert zero == ["run.json PermissionError [Errno 13] Permission denied: 'run.json'",
                  "tokenizer.json PermissionError [Errno 13] Permission denied: 'tokenizer.json'"], zero
  assert one == ["run.json OSError OUT/work_run.json: process 0 could not write run.json (its error names the cause)",
                 "tokenizer.json OSError OUT/work_tokenizer.json/export: process 0 could not write the tokenizer (its "
                 "error names the cause)"], one


@pytest.mark.multiprocess
def test_two_process_training_with_other_micro_batches_raises_everywhere(tmp_path):
  # accum_steps may change on resume, so run.json (and the processes' comparison of it) left it out: process 0 ran 2
  # micro-batches per step, process 1 one, so their step programs' collectives did not match.
  _sft_base(tmp_path, "sft0.json")
  assert _case("config_mismatch", tmp_path) == [["config_mismatch OUT/work: the 2 processes differ in accum_steps"]] * 2


@pytest.mark.multiprocess
def test_two_process_training_whose_data_file_is_bad_on_one_process_raises_everywhere(tmp_path):
  # Process 1's copy of the SFT file was cut short (invalid JSON): it raised reading it, while process 0 waited for it
  # in its next collective until the distributed shutdown's deadline (5 minutes); then both aborted (SIGABRT), and
  # process 0 never said why.
  base, _ = _sft_base(tmp_path, "sft0.json")
  (base / "sft1.json").write_text((base / "sft0.json").read_text()[:500])
  zero, one = _case("bad_data_one_process", tmp_path)
  assert zero == ["bad_data RuntimeError OUT/work: processes [1] could not read the tokenizer, model config and "
                  "training data (their errors name the cause)"], zero
  assert len(one) == 1 and one[0].startswith("bad_data DataFormatError OUT/base/sft1.json:1: invalid JSON"), one


@pytest.mark.multiprocess
def test_two_process_training_whose_metrics_write_fails_mid_run_raises_everywhere(tmp_path):
  # Process 0 could not append step 2's line to metrics.jsonl (a full disk): it raised, and waited in the closing
  # checkpoint barrier while process 1 went on into step 3's collectives; both aborted (SIGABRT) at the distributed
  # shutdown's deadline, 5 minutes later.
  _sft_base(tmp_path, "sft0.json")
  zero, one = _case("metrics_write_error", tmp_path)
  assert zero == ["metrics_write_error OSError [Errno 28] No space left on device: 'OUT/work/metrics.jsonl'"], zero
  assert one == ["metrics_write_error OSError OUT/work/metrics.jsonl: process 0 could not write step 2's metrics (its "
                 "error names the cause)"], one


FUZZ_WORKER = os.path.join(HERE, "multihost_fuzz_worker.py")


def _fuzz_base(tmp_path):
  """OUT/base: a tiny HF policy, its tokenizer, 12 SFT records (sft.json) and 12 PPM pairs (pairs.json)."""
  base = tmp_path / "base"
  records = testlib.arithmetic_sft_records(12, seed=1)
  testlib.tiny_hf_model(base, seed=0)
  testlib.tiny_tokenizer(base, [formats.sft_prompt(r["query"]) + r["response"] for r in records])
  testlib.write_json(base / "sft.json", records)
  testlib.write_json(base / "pairs.json", [
      {"prompt": formats.sft_prompt(r["query"]), "pos": r["response"], "neg": r["response"][:15 + 3 * i],
       "pos_count": 1 + i % 2, "neg_count": 1 + i % 3} for i, r in enumerate(records)])


def _fuzz(tmp_path, seed, first, then, total, count=3, engine=True):
  """Runs the fuzz worker's `count` cases: phase a on `first` processes, phase b on `then` (`total` devices each time);
  compares
  compares: the same outcome per case (steps and files, or the same refusal), the same exported weights and
  metrics.jsonl (written once per logged step) whether uninterrupted, resumed across process counts or run on one
  process, and (`engine`) the same Engine tokens and values. Returns the number of cases compared."""
  from rstar_jax.train.metrics_log import read_metrics  # pylint: disable=g-import-not-at-top
  _fuzz_base(tmp_path)
  launch = lambda nproc, phase: _run(nproc, total // nproc, seed, tmp_path, worker=FUZZ_WORKER, timeout=400,
                                     extra=[phase, str(count), str(int(engine))])
  a, b = launch(first, "a"), launch(then, "b")
  assert all(lines == a[0] for lines in a) and all(lines == b[0] for lines in b), (a, b)
  a, b = a[0], b[0]
  assert len(a) == len(b) == count + 2 * engine, (a, b)
  if engine:
    assert a[-2].split()[:2] == ["engine", "generate"] and a[-2] == b[-2], (a[-2], b[-2])  # greedy tokens: identical
    np.testing.assert_allclose(json.loads(a[-1].split(" ", 2)[2]), json.loads(b[-1].split(" ", 2)[2]), atol=1e-5)
  for i, (line_a, line_b) in enumerate(zip(a[:count], b[:count])):
    case_a, outcome_a = line_a.split(" => ")
    case_b, outcome_b = line_b.split(" => ")
    assert case_a == case_b, (case_a, case_b)
    resumed, reference = outcome_b.split(" | ")
    if "'stop_at': None" in case_a:
      assert outcome_a == reference, (case_a, outcome_a, reference)
      ours = tmp_path / f"a{i}"
    else:
      assert outcome_a.startswith("stopped at") or outcome_a == reference, (case_a, outcome_a)
      assert resumed == reference, (case_a, resumed, reference)
      ours = tmp_path / f"r{i}"
    if not reference.startswith("trained"):
      assert "'uneven': True" in case_a and "accum_steps=" in reference, (case_a, reference)
      continue
    ref = tmp_path / f"b{i}"
    for name in ("model.safetensors", "value_head.bin"):
      if not (ref / "export" / name).exists():
        continue
      read = load_file if name.endswith(".safetensors") else read_torch_bin
      got, want = read(ours / "export" / name), read(ref / "export" / name)
      assert sorted(got) == sorted(want), case_a
      for key in want:
        if key.endswith(".bias") and name == "value_head.bin":
          continue  # an exactly-zero gradient: Adam's update of it is normalised rounding noise (see above)
        np.testing.assert_allclose(got[key], want[key], atol=2e-5, rtol=0, err_msg=f"{case_a} {name} {key}")
    got, want = read_metrics(ours / "metrics.jsonl"), read_metrics(ref / "metrics.jsonl")
    assert sorted(got) == sorted(want), case_a
    for step in want:
      for key in want[step]:
        if key != "step_time_s":
          np.testing.assert_allclose(got[step][key], want[step][key], rtol=1e-4, atol=1e-5, err_msg=f"{case_a} {key}")
    if "'stop_at': None" in case_a:  # process 0 alone writes it: one line per logged step
      assert len((ours / "metrics.jsonl").read_text().splitlines()) == len(want), case_a
  return count


@pytest.mark.multiprocess
def test_seeded_fuzz_two_processes_against_one(tmp_path):
  """Random SFT / PPM cases (mesh, batch, micro-batches, lengths, steps, dropout; some with rows that do not divide,
  some stopped after a step) trained on 2 processes of 2 devices, or stopped there and resumed on 1 process of 4,
  against 1 process of 4: the same outcomes, exports and metrics (see `_fuzz`; the Engine's two-process results are
  tested against a plain forward above)."""
  assert _fuzz(tmp_path, seed=280, first=2, then=1, total=4, count=2, engine=False) == 2
