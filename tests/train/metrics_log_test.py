"""metrics.jsonl after a crash: a torn last line neither breaks a resumed run nor fuses with its new records."""

import errno
import os
import subprocess
import sys

import pytest

from rstar_jax.train import metrics_log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_torn_last_line_is_cut_before_appending_and_skipped_when_read(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # the run died mid-write of step 2
  assert metrics_log.read_metrics(path) == {1: {"loss": 2.0}}
  log = metrics_log.MetricsLog(tmp_path, tensorboard=False)  # the resumed run
  log.write(2, {"loss": 1.5})
  log.close()
  assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
  assert metrics_log.read_metrics(path) == {1: {"loss": 2.0}, 2: {"loss": 1.5}}


@pytest.mark.parametrize("line", ['{"step": 1, "lo', '[1, 2]', '{"loss": 1.0}', '{"step": "1"}'])
def test_a_bad_record_names_the_file_and_line(tmp_path, line):
  path = tmp_path / "metrics.jsonl"
  path.write_text(f'{{"step": 1, "loss": 2.0}}\n{line}\n{{"step": 2, "loss": 1.0}}\n')
  with pytest.raises(ValueError, match=f"{path}:2: not a metrics record"):
    metrics_log.read_metrics(path)


@pytest.mark.parametrize("line", [b'{"step": 1, "loss": 2.0\xff}', b"[" * 100_000 + b"]" * 100_000,
                                  b'{"step": ' + b"1" * 5000 + b"}"], ids=["not utf8", "deep", "big int"])
def test_a_record_json_cannot_read_names_the_file_and_line(tmp_path, line):
  # Bytes that are no UTF-8, a line nested too deeply, an int of over 4300 digits: a bare UnicodeDecodeError,
  # RecursionError or ValueError naming neither the file nor the line.
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(b'{"step": 1, "loss": 2.0}\n' + line + b'\n{"step": 2, "loss": 1.0}\n')
  with pytest.raises(ValueError, match=f"{path}:2: not a metrics record"):
    metrics_log.read_metrics(path)


def test_a_fresh_run_starts_without_the_records_of_an_earlier_one(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
  (tmp_path / "tensorboard").mkdir()
  (tmp_path / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"old run")
  (tmp_path / "tensorboard" / "notes.txt").write_text("the user's")
  log = metrics_log.MetricsLog(tmp_path, tensorboard=False, fresh=True)
  log.write(1, {"loss": 3.0})
  log.close()
  assert metrics_log.read_metrics(tmp_path / "metrics.jsonl") == {1: {"loss": 3.0}}
  assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["notes.txt"]
  # A resumed run (the default) appends, as documented.
  metrics_log.MetricsLog(tmp_path, tensorboard=False).write(2, {"loss": 2.5})
  assert metrics_log.read_metrics(tmp_path / "metrics.jsonl") == {1: {"loss": 3.0}, 2: {"loss": 2.5}}


def test_without_tensorboard_no_torch_is_imported(tmp_path):
  # README: rstar_jax never imports torch except in `convert verify`. The writer lookup imported torch (seconds, its
  # CUDA libraries) in every trainer of a test install, only for torch.utils.tensorboard to fail without tensorboard.
  import subprocess
  import sys
  code = ("import sys; sys.modules['tensorboardX'] = sys.modules['tensorboard'] = None\n"
          "from rstar_jax.train import metrics_log\n"
          f"log = metrics_log.MetricsLog({str(tmp_path)!r}, tensorboard=True)\n"
          "log.write(1, {'loss': 1.0}); log.close()\n"
          "print(log._tb, sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert out.split() == ["None", "[]"]
  assert metrics_log.read_metrics(tmp_path / "metrics.jsonl") == {1: {"loss": 1.0}}


def test_a_full_disk_names_metrics_jsonl_and_a_resumed_run_keeps_the_whole_records(tmp_path):
  # Past RLIMIT_FSIZE (SIGXFSZ ignored) write(2) fails with EFBIG, as a full disk fails with ENOSPC. Python's OSError
  # from a write names no file: the trainer stopped with a bare "[Errno 27] File too large".
  code = ("import resource, signal, sys\n"
          "from rstar_jax.train import metrics_log\n"
          "log = metrics_log.MetricsLog(sys.argv[1], tensorboard=False)\n"
          "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
          "resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
          "try:\n"
          "  for step in range(1, 10):\n"
          "    log.write(step, {'loss': step / 4})\n"
          "except OSError as e:\n"
          "  print(step, e.errno, e)\n")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  path = tmp_path / "metrics.jsonl"
  # The records are 25 or 26 bytes ('{"step": 1, "loss": 0.25}\n' is 26): the fourth one crosses byte 100.
  lines = [f'{{"step": {k}, "loss": {k / 4}}}\n' for k in range(1, 5)]
  assert sum(map(len, lines[:3])) <= 100 < sum(map(len, lines))
  assert proc.stdout.split(" ", 2)[:2] == ["4", str(errno.EFBIG)] and str(path) in proc.stdout, proc.stdout
  assert path.read_bytes() == "".join(lines)[:100].encode()  # the torn fourth record
  log = metrics_log.MetricsLog(tmp_path, tensorboard=False)  # the resumed run, from a checkpoint at step 2
  log.write(3, {"loss": 9.0})
  log.close()
  assert metrics_log.read_metrics(path) == {1: {"loss": 0.25}, 2: {"loss": 0.5}, 3: {"loss": 9.0}}
