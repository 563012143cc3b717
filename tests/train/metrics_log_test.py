"""metrics.jsonl after a crash: a torn last line neither breaks a resumed run nor fuses with its new records."""

import pytest

from rstar_jax.train import metrics_log


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
