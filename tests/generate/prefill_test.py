"""Prefill planning (host only): buckets, forks, shared prefixes, positions and masks under padding."""

import numpy as np
import pytest

from rstar_jax.generate import Buckets
from rstar_jax.generate.prefill import plan_prefill, token_order


def _rebuild(plan, row):
  """The (token, position) pairs row `row` feeds the model, in cache-slot order, pads dropped."""
  pairs = []
  if plan.shared is not None:
    g = plan.row_group[row]
    m = plan.shared.mask[g]
    pairs += list(zip(plan.shared.tokens[g][m], plan.shared.positions[g][m]))
  m = plan.rows.mask[row]
  pairs += list(zip(plan.rows.tokens[row][m], plan.rows.positions[row][m]))
  return pairs


def _check_rows(plan, prompts):
  for i, p in enumerate(prompts):
    assert _rebuild(plan, i) == [(t, k) for k, t in enumerate(p)], f"row {i}"
    assert plan.rows.mask[i, -1]  # the last column is real: it gives the first generated token
  assert plan.prompt_slots >= plan.end_index


def test_bucket_ladders():
  b = Buckets()
  assert [b.length(n) for n in (0, 1, 2, 16, 17, 64, 65, 96, 97, 129, 1000)] == [0, 1, 16, 16, 32, 64, 96, 96, 128,
                                                                                  192, 1024]
  assert [b.rows(n) for n in (1, 3, 8, 9)] == [1, 4, 8, 16]
  split = Buckets(batch_split=6)
  assert [split.rows(n) for n in (1, 6, 7, 13)] == [6, 6, 12, 24]


def test_row_buckets_are_the_split_times_the_documented_doublings():
  # `Buckets.rows`' docstring as a brute force: the smallest `split * m * 2**k` >= n, m = ceil(min_rows / split).
  # (It read "a power of two >= min_rows", which a min_rows of 3 (3, 6, 12, ...) or a split of 6 (6, 12, 24) is not.)
  for min_rows in (1, 2, 3, 5, 8):
    for split in (1, 2, 3, 4, 6):
      m = -(-min_rows // split)
      ladder = [split * m * 2**k for k in range(12)]
      for n in range(1, 200):
        assert Buckets(min_rows=min_rows, batch_split=split).rows(n) == min(r for r in ladder if r >= n), (
            min_rows, split, n)


def test_token_order_is_the_order_of_the_token_lists():
  # Python's own list order (what the engine and the planner sorted rows by) is the reference: prefixes first,
  # duplicates in input order, and byte-order traps (255/256, 65535/65536, negative and extreme int32 ids).
  rng = np.random.default_rng(0)
  alphabet = np.asarray([0, 1, 255, 256, 65535, 65536, 151643, 2**31 - 1, -1, -256, -2**31], np.int32)
  seqs = [alphabet[rng.integers(0, len(alphabet), rng.integers(0, 5))] for _ in range(400)]
  seqs += [seqs[7][:1], seqs[7], np.zeros(0, np.int32), np.arange(300, dtype=np.int32)[::3]]  # a strided view
  expected = sorted(range(len(seqs)), key=lambda i: [int(t) for t in seqs[i]])
  assert token_order(seqs) == expected
  assert token_order([[5, 3], [5], [4, 9]]) == [2, 1, 0]  # plain lists too
  assert token_order([]) == []


def test_n_samples_of_one_prompt_are_prefilled_once_and_forked():
  prompt = list(range(3, 40))
  plan = plan_prefill([prompt] * 8)
  assert plan.shared.shape == (1, 64)  # all but the last token, once
  assert plan.rows.shape == (8, 1)  # the fork: one token per row
  assert (plan.row_group == 0).all()
  _check_rows(plan, [prompt] * 8)


def test_siblings_share_their_common_prefix():
  rng = np.random.default_rng(0)
  trunks = [rng.integers(0, 500, 150).tolist() for _ in range(3)]
  prompts = [t + rng.integers(0, 500, int(rng.integers(1, 12))).tolist() for t in trunks for _ in range(5)]
  plan = plan_prefill(prompts)
  assert plan.shared is not None and plan.shared.shape[0] == 4  # 3 groups, bucketed
  assert plan.rows.shape[1] == 16  # only the short own parts are per row
  assert len(set(plan.row_group[:15].tolist())) == 3
  assert plan.cost < 16 * 192  # cheaper than prefilling every row in full
  _check_rows(plan, prompts)


def test_unrelated_prompts_use_the_flat_plan():
  rng = np.random.default_rng(1)
  prompts = [rng.integers(0, 500, 100).tolist() for _ in range(8)]
  plan = plan_prefill(prompts)
  assert plan.shared is None and plan.rows.shape == (8, 128)
  _check_rows(plan, prompts)
  assert plan_prefill(prompts[:2] * 4, share=False).shared is None


def test_mixed_lengths_positions_and_max_prefix():
  rng = np.random.default_rng(2)
  base = rng.integers(0, 500, 40).tolist()
  prompts = [base[:k] + rng.integers(0, 500, int(rng.integers(0, 30))).tolist() for k in (1, 5, 20, 40, 40, 40)]
  prompts += [[7], [7], [8, 9]]
  max_prefix = [max(0, len(p) - 3) for p in prompts]
  plan = plan_prefill(prompts, max_prefix, buckets=Buckets(batch_split=4))
  assert plan.rows.shape[0] % 4 == 0 and (plan.shared is None or plan.shared.shape[0] % 4 == 0)
  assert (plan.row_start <= np.asarray(max_prefix)).all()
  _check_rows(plan, prompts)


def test_empty_prompt_is_an_error():
  with pytest.raises(ValueError, match="non-empty"):
    plan_prefill([[1, 2], []])
