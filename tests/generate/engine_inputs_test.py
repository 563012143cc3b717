"""Engine inputs that were answered wrongly or with an unrelated error: each is now refused, naming what is wrong."""

import pytest
from generate_helpers import TEST_BUCKETS, load_tiny

from rstar_jax.generate import Engine, Greedy, Request


@pytest.mark.parametrize("max_rows", [0, -1])
def test_max_rows_below_one_is_refused(max_rows):
  # A negative max_rows made no batch at all (each request's result was None); 0 silently meant "no limit".
  with pytest.raises(ValueError, match="max_rows must be >= 1"):
    Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS, max_rows=max_rows)


def test_max_rows_of_one_runs_every_row():
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS, max_rows=1)
  results = engine.generate([Request([1, 2, 3], n=2), Request([4, 5])], Greedy(), max_new_tokens=2)
  assert [len(row) for row in results] == [2, 1]
  assert all(len(r.token_ids) == 2 for row in results for r in row)
  assert len(engine.stats["batches"]) == 3
