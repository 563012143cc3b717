"""Sampling: filters equal HF's warpers; empirical next-token frequencies match softmax(logits / T) after top-k /
top-p (logits from the `transformers` model); seeds make samples reproducible and batch-independent; an `n`-way
fork equals `n` copies of the prompt with the same seeds."""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from generate_helpers import TEST_BUCKETS, VOCAB, hf_next_token_logits, load_tiny, random_prompts
from transformers.generation import logits_process

from rstar_jax.generate import Engine, Request, Sampling

PROMPTS = random_prompts(seed=2, count=6, low=5, high=40)


@functools.cache
def engine(share_prefixes=True):
  # The unshared engine pads every call to 8 rows, so all its calls below run one compiled program.
  buckets = TEST_BUCKETS if share_prefixes else dataclasses.replace(TEST_BUCKETS, min_rows=8)
  return Engine(load_tiny(), eos_ids=(), share_prefixes=share_prefixes, buckets=buckets)


def reference_probs(logits: np.ndarray, method: Sampling) -> np.ndarray:
  """softmax after HF's TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper, `[..., V]`."""
  scores = torch.tensor(logits, dtype=torch.float32).reshape(-1, logits.shape[-1])
  warpers = [logits_process.TemperatureLogitsWarper(method.temperature)]
  if method.top_k:
    warpers.append(logits_process.TopKLogitsWarper(method.top_k))
  if method.top_p < 1:
    warpers.append(logits_process.TopPLogitsWarper(method.top_p))
  for warper in warpers:
    scores = warper(None, scores)
  return torch.softmax(scores, dim=-1).numpy().reshape(logits.shape)


METHODS = [Sampling(1.0), Sampling(0.7, top_k=30, top_p=0.85), Sampling(1.3, top_p=0.6), Sampling(0.5, top_k=5)]
# The method of the end-to-end tests below (one sampler: one set of compiled programs).
METHOD = METHODS[1]


@pytest.mark.parametrize("method", METHODS, ids=str)
def test_filtered_distribution_equals_transformers_warpers(method):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, VOCAB)).astype(np.float32) * np.array([0.5, 1, 2, 3, 4, 6], np.float32)[:, None]
  scores, ids = method.candidates(jnp.asarray(logits))
  probs = np.array(jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)))
  probs /= probs.sum(-1, keepdims=True)
  ours = np.zeros_like(logits)
  if ids is None:
    ours = probs
  else:
    np.put_along_axis(ours, np.asarray(ids), probs, axis=-1)
  ref = reference_probs(logits, method)
  np.testing.assert_array_equal(ours > 0, ref > 0)
  np.testing.assert_allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("method", [METHOD, Sampling(1.3, top_p=0.6)], ids=str)
def test_empirical_next_token_distribution(method):
  """N = 4096 samples of the first token after one prompt (prefilled once, forked N ways).

  Bound: every token's count is within 5 binomial standard deviations of N * p (+1 for the discreteness): a
  two-sided 5.7e-7 chance per token, below 3e-4 over all 512 tokens for a correct sampler; tokens the filters
  remove (p = 0) are never drawn. The log-prob reported with each sample is the raw model log-softmax.
  """
  n = 4096
  prompt = PROMPTS[0]
  logits = hf_next_token_logits(prompt)
  p = reference_probs(logits, method)
  (results,) = engine().generate([Request(prompt, n=n, seed=123)], method, max_new_tokens=1)
  first = np.array([r.token_ids[0] for r in results])
  counts = np.bincount(first, minlength=VOCAB)
  assert counts[p == 0].sum() == 0
  kept = p > 0
  assert 3 <= kept.sum() < VOCAB // 4  # the filters bite, and there is something to compare
  sigma = np.sqrt(n * p * (1 - p))
  assert (np.abs(counts - n * p) <= 5 * sigma + 1)[kept].all(), np.c_[counts[kept], n * p[kept]]
  raw = logits - np.logaddexp.reduce(logits.astype(np.float64))
  np.testing.assert_allclose([r.logprob for r in results[:64]], raw[first[:64]], atol=1e-4)


def test_same_seed_same_samples_whatever_the_batch():
  target = Request(PROMPTS[0], n=3, seed=11)
  run = lambda reqs: engine(share_prefixes=False).generate(reqs, METHOD, max_new_tokens=16)
  a = run([target, Request(PROMPTS[1], n=2, seed=5)])[0]
  b = run([Request(PROMPTS[2], n=4, seed=9), Request(PROMPTS[3], seed=1), target])[2]
  c = run([target, Request(PROMPTS[1], n=2, seed=5)])[0]
  tokens = lambda rs: [r.token_ids for r in rs]
  assert tokens(a) == tokens(b) == tokens(c)
  assert len(set(tokens(a))) == 3  # the three samples differ from each other
  other = run([Request(PROMPTS[0], n=3, seed=12), Request(PROMPTS[1], n=2, seed=5)])[0]
  assert tokens(other) != tokens(a)
  # Sample j does not depend on n: the first sample of n=1 is the first sample of n=3.
  single = run([Request(PROMPTS[0], n=1, seed=11), Request(PROMPTS[1], n=2, seed=5)])[0]
  assert single[0].token_ids == a[0].token_ids


def test_n_way_fork_equals_n_copies_with_the_same_seeds():
  method = METHOD
  prompt = PROMPTS[4]
  forked = engine().generate([Request(prompt, n=4, seed=7)], method, max_new_tokens=16)[0]
  (batch,) = engine().stats["batches"]
  assert batch["shared"][0] == 1 and batch["row_level"][1] == 1  # prefilled once, one-token row level
  copies = engine(share_prefixes=False).generate(
      [Request(prompt, n=1, seed=7, first_sample=j) for j in range(4)], method, max_new_tokens=16)
  (batch,) = engine(share_prefixes=False).stats["batches"]
  assert batch["shared"] is None  # each copy prefilled on its own
  for fork, (copy,) in zip(forked, copies):
    assert fork.token_ids == copy.token_ids
    assert fork.stop_reason == copy.stop_reason
    np.testing.assert_allclose(fork.logprob, copy.logprob, atol=1e-4)
  assert len({r.token_ids for r in forked}) == 4


def test_max_rows_splits_a_call_without_changing_results():
  requests = [Request(p, n=4, seed=20 + i) for i, p in enumerate(PROMPTS[:3])]
  flat = engine(share_prefixes=False)
  chunked = Engine(load_tiny(), eos_ids=(), share_prefixes=False, buckets=flat.buckets, max_rows=8)
  together = chunked.generate(requests, METHOD, max_new_tokens=16)
  assert len(chunked.stats["batches"]) == 2  # 12 rows in batches of at most 8
  for request, row in zip(requests, together):
    (alone,) = flat.generate([request], METHOD, max_new_tokens=16)
    assert [r.token_ids for r in row] == [r.token_ids for r in alone]


@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(top_p=1.5), "top_p must be in"),
    (dict(top_k=-1), "top_k must be a non-negative integer"),
    (dict(top_k=2.0), "top_k must be a non-negative integer, got 2.0"),  # would fail later, inside jax's top_k
    (dict(top_k=True), "top_k must be a non-negative integer"),
])
def test_bad_sampling_settings_are_refused_up_front(kwargs, message):
  with pytest.raises(ValueError, match=message):
    Sampling(**kwargs)
  assert Sampling(top_k=np.int64(3)).top_k == 3
