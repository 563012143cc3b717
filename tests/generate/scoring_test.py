"""Scoring: PPM values at the last token and policy log-likelihoods of continuations equal `transformers`, for
batches mixing siblings (shared prefixes, prefilled once) and unrelated texts of different lengths."""

import functools

import numpy as np
import pytest
from generate_helpers import (TEST_BUCKETS, VOCAB, hf_token_logprobs, hf_values, load_tiny, random_prompts,
                              tiny_ppm_dir)

from rstar_jax.generate import Engine
from rstar_jax.models import convert


def _siblings(seed):
  """Three trunks (a question + path) with 3 children each, plus 3 unrelated prompts."""
  rng = np.random.default_rng(seed)
  trunks = random_prompts(seed, 3, 100, 140)
  kids = [t + rng.integers(0, VOCAB, int(rng.integers(1, 12))).tolist() for t in trunks for _ in range(3)]
  return kids + random_prompts(seed + 1, 3, 2, 60)


@functools.cache
def ppm_engine():
  return Engine(convert.load_ppm(tiny_ppm_dir()[0]), buckets=TEST_BUCKETS)


def test_ppm_values_match_transformers():
  prompts = _siblings(5)
  values = ppm_engine().values(prompts)
  assert values.dtype == np.float32 and values.shape == (len(prompts),)
  np.testing.assert_allclose(values, hf_values(prompts), atol=1e-4)
  (batch,) = ppm_engine().stats["batches"]
  assert batch["shared"] is not None  # the siblings' common prefixes were prefilled once


def test_policy_loglikelihood_matches_transformers():
  prompts = _siblings(7)
  rng = np.random.default_rng(8)
  contexts = [p[:-k] if len(p) > 4 else p for p, k in zip(prompts, rng.integers(1, 4, len(prompts)))]
  continuations = [p[len(c):] or [int(rng.integers(VOCAB))] for p, c in zip(prompts, contexts)]
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS)
  out = engine.loglikelihood(contexts, continuations)
  (batch,) = engine.stats["batches"]
  assert batch["shared"] is not None
  for c, x, lp in zip(contexts, continuations, out):
    assert lp.shape == (len(x),)
    np.testing.assert_allclose(lp, hf_token_logprobs(c, x), atol=1e-4)
  # Generators (their len() failed as "object of type 'generator' has no len()").
  again = engine.loglikelihood((c for c in contexts), (x for x in continuations))
  for lp, want in zip(again, out, strict=True):
    np.testing.assert_array_equal(lp, want)


def test_an_empty_prompt_is_named_by_its_input_index():
  with pytest.raises(ValueError, match="prompt 2 is empty"):
    ppm_engine().values([[5, 6], [1], []])
