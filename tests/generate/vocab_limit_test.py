"""Ids past the tokenizer's length (spare embedding rows, as Qwen2.5's 152064 vs 151665 + tags) are never sampled."""

import json

import numpy as np
import pytest
from generate_helpers import SPECIAL_TOKENS, TEST_BUCKETS, VOCAB, load_tiny, tiny_tokenizer, tiny_tokenizer_dir

from rstar_jax.generate import Engine, Request, Sampling
from rstar_jax.tokenizer import load_tokenizer


class _Truncated:
  """The tiny tokenizer, claiming only its first `size` ids (the model keeps all 512 rows)."""

  def __init__(self, tokenizer, size):
    self._tokenizer, self._size = tokenizer, size
    self.eos_id = None

  def __len__(self):
    return self._size

  def decode(self, ids, skip_special_tokens=False):
    return self._tokenizer.decode(ids, skip_special_tokens)

  def decode_batch(self, batch, skip_special_tokens=False):
    return self._tokenizer.decode_batch(batch, skip_special_tokens)


def _sampled_ids(tokenizer, engine=None):
  engine = engine or Engine(load_tiny(), tokenizer=tokenizer, eos_ids=(), buckets=TEST_BUCKETS)
  results = engine.generate([Request([1, 2, 3, 4], n=16, seed=0)], Sampling(temperature=3.0), max_new_tokens=16)
  return np.concatenate([r.token_ids for r in results[0]])


def test_ids_past_the_tokenizer_are_never_sampled():
  full = _sampled_ids(tiny_tokenizer())
  assert full.max() >= 256  # control: at temperature 3 the upper half of the vocab is drawn
  limited = _sampled_ids(_Truncated(tiny_tokenizer(), 256))
  assert limited.size == full.size and limited.max() < 256


def test_logprob_is_the_raw_model_log_prob_under_a_vocab_limit():
  # The limit only restricts what is sampled: each result's log-prob is still the model's (over all 512 rows), the
  # quantity `loglikelihood` sums, not a log-prob renormalised over the allowed ids.
  engine = Engine(load_tiny(), tokenizer=_Truncated(tiny_tokenizer(), 256), eos_ids=(), buckets=TEST_BUCKETS)
  prompt = [1, 2, 3, 4]
  (samples,) = engine.generate([Request(prompt, n=4, seed=0)], Sampling(temperature=3.0), max_new_tokens=8)
  scored = engine.loglikelihood([prompt] * 4, [list(r.token_ids) for r in samples])
  assert [r.logprob for r in samples] == pytest.approx([float(np.sum(s)) for s in scored], abs=1e-4)
  # Control: the ids past the limit carry real mass here, so a renormalised log-prob would differ.
  spare = np.concatenate(engine.loglikelihood([prompt] * 256, [[i] for i in range(256, 512)]))
  assert np.exp(spare).sum() > 0.1


def test_ids_a_tokenizer_gains_after_the_engine_is_built_are_sampled(tmp_path):
  """Tags added in place after `Engine(...)` (`add_rstar_tokens`, or a trainer given the same tokenizer object) are
  generated: the limit is the tokenizer's length at each call, as the Engine documents, not at construction."""
  data = json.loads((tiny_tokenizer_dir() / "tokenizer.json").read_text())
  data["added_tokens"] = []  # the tiny tokenizer without its 10 special tokens: ids < 502
  (tmp_path / "tokenizer.json").write_text(json.dumps(data))
  tok = load_tokenizer(tmp_path)
  base = VOCAB - len(SPECIAL_TOKENS)
  assert len(tok) == base
  engine = Engine(load_tiny(), tokenizer=tok, eos_ids=(), buckets=TEST_BUCKETS)
  assert _sampled_ids(tok, engine).max() < base
  assert tok.add_special_tokens(SPECIAL_TOKENS) == len(SPECIAL_TOKENS)  # ids 502..511, as the tiny tokenizer's
  grown = _sampled_ids(tok, engine)
  np.testing.assert_array_equal(grown, _sampled_ids(tiny_tokenizer()))  # an engine built with all 512 ids
  assert grown.max() >= base  # control: the new ids are drawn
