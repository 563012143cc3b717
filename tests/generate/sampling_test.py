"""Sampling: filters equal HF's warpers (ties at the top-k boundary included); empirical next-token frequencies match
softmax(logits / T) after top-k / top-p (logits from the `transformers` model); a rounding error in the logits does not
reshuffle draws; seeds make samples reproducible and batch-independent (across buckets, prefix sharing, `max_rows`,
precompile and the policy); an `n`-way fork equals `n` copies of the prompt with the same seeds."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from generate_helpers import (SPECIAL_TOKENS, TEST_BUCKETS, VOCAB, _tmp_root, hf_next_token_logits, load_tiny,
                              plain_stop_rules, random_prompts, tiny_hf_config, tiny_tokenizer)
from transformers.generation import logits_process

from rstar_jax.generate import Buckets, Engine, EnginePolicy, Request, Sampling
from rstar_jax.generate.sampling import sample_keys
from rstar_jax.models import convert

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
  ours = filtered_probs(logits, method)
  ref = reference_probs(logits, method)
  np.testing.assert_array_equal(ours > 0, ref > 0)
  np.testing.assert_allclose(ours, ref, atol=1e-6)


def filtered_probs(logits: np.ndarray, method: Sampling) -> np.ndarray:
  """softmax of `method.candidates(logits)` `[B, V]` (column c is token c)."""
  scores = np.asarray(method.candidates(jnp.asarray(logits)), np.float64)
  assert scores.shape == logits.shape
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  return probs / probs.sum(-1, keepdims=True)


@pytest.mark.parametrize("method", [Sampling(1.0, top_k=5), Sampling(0.8, top_k=40), Sampling(1.0, top_k=3, top_p=0.9),
                                    Sampling(1.0, top_k=200)], ids=str)
def test_ties_at_the_top_k_boundary_are_kept_as_by_transformers(method):
  """`TopKLogitsWarper` keeps every token tied with the k-th score (so does vLLM): logits rounded to quarters tie."""
  rng = np.random.default_rng(1)
  logits = (np.round(rng.normal(size=(8, VOCAB)) * 8) / 4).astype(np.float32)
  logits[:, 7:12] = 9.0  # a 5-way tie at the top, across the k = 3 boundary
  logits[:, 12] = 10.0
  ours, ref = filtered_probs(logits, method), reference_probs(logits, method)
  kept = (ref > 0).sum(-1)
  if method.top_k < 200:
    assert (kept > method.top_k).any()  # the ties bite
  np.testing.assert_array_equal(ours > 0, ref > 0)
  np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_filters_that_keep_everything_are_off():
  logits = np.random.default_rng(2).normal(size=(2, VOCAB)).astype(np.float32)
  # top_k=-1 is vLLM's "off", as the official rStar configs write it (it was refused).
  for method in [Sampling(0.5), Sampling(0.5, top_k=VOCAB), Sampling(0.5, top_k=VOCAB + 7), Sampling(0.5, top_p=1.0),
                 Sampling(0.5, top_k=-1)]:
    # Scores are shifted by the row's max (softmax-invariant), so they never overflow at a tiny temperature.
    want = (logits - logits.max(-1, keepdims=True)) / np.float32(0.5)
    np.testing.assert_array_equal(np.asarray(method.candidates(jnp.asarray(logits))), want)


@pytest.mark.parametrize("temperature", [1e-30, 1e-38, 1e-40, 1e-50])
@pytest.mark.parametrize("filters", [{}, dict(top_p=0.9), dict(top_k=3), dict(top_k=3, top_p=0.5)], ids=str)
def test_a_tiny_temperature_draws_the_most_likely_token(temperature, filters):
  """softmax(logits / T) tends to one-hot at the argmax as T -> 0 (vLLM samples greedily below T = 1e-5).

  `logits / T` overflowed float32 below T ~ 1e-37 (every positive logit became +inf, a tie the draw broke towards
  the lowest id) and a T below float32's range divided by zero: every draw was token 0 or the first positive logit,
  never the argmax. Each row's maximum is unique, so at T <= 1e-30 its lead over the runner-up (>= 1 ulp, ~5e-7)
  is >= 5e23 tempered units, past any Gumbel noise: the argmax is the only token such a T can draw.
  """
  rng = np.random.default_rng(4)
  logits = (rng.normal(size=(64, VOCAB)) * 4).astype(np.float32)
  assert ((logits == logits.max(-1, keepdims=True)).sum(-1) == 1).all()
  keys = sample_keys([3] * 64, range(64))
  drawn = np.asarray(Sampling(temperature, **filters)(jnp.asarray(logits), keys))
  np.testing.assert_array_equal(drawn, np.argmax(logits, axis=-1))


@pytest.mark.parametrize("method", [Sampling(1.0, top_p=0.9), Sampling(0.7, top_k=50),
                                    Sampling(0.7, top_k=50, top_p=0.95), Sampling(1.0)], ids=str)
def test_a_rounding_error_in_the_logits_does_not_reshuffle_the_draws(method):
  """The same row in another batch shape (or on a mesh) gets logits that differ in the last bits; its draws must not.

  bfloat16-rounded logits tie often; nudging them by 1e-3 reorders the tied tokens. With noise indexed by rank (the
  old filtered draw) 2-8% of 2000 draws changed; with noise indexed by token id a draw changes only when its two best
  noisy scores are within 2e-3 / temperature of each other, which none of these draws is, or when the filters' cutoff
  moves past the drawn token, which in this row it does not (the next test).
  """
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(1, VOCAB)) * 3).astype(jnp.bfloat16).astype(np.float32)
  nudged = logits + rng.uniform(-1e-3, 1e-3, size=logits.shape).astype(np.float32)
  keys = sample_keys([5] * 2000, range(2000))
  draw = jax.jit(lambda x: method(jnp.broadcast_to(x, (2000, VOCAB)), keys))
  np.testing.assert_array_equal(np.asarray(draw(logits)), np.asarray(draw(nudged)))


@pytest.mark.parametrize("method", [Sampling(1.0, top_k=20), Sampling(1.0, top_p=0.9),
                                    Sampling(0.7, top_k=40, top_p=0.8), Sampling(1.0)], ids=str)
def test_a_rounding_error_at_the_filter_cutoff_moves_only_the_draws_it_can(method):
  """What a rounding error in the logits can change in a filtered draw, and what it cannot (README "Interfaces the
  search drives"): with top-k / top-p, a draw also changes when the cutoff falls between two tokens whose logits are
  within that error and the token kept on one side wins the draw, however far apart the two best noisy scores are.

  In each row the first token past the cutoff of HF's warpers is moved 1e-5 below the last token kept (a few ulps of
  the row's largest logit: a real model's tail packs logits that densely, and its float32 logits move that much
  between batch shapes), and a second version of the row swaps the two values. Against a float64 Gumbel-max draw
  over what HF's warpers keep: both versions draw as the reference; a draw differs between them only where the kept
  sets differ and one of the two swapped tokens is drawn; without filters no draw differs.
  """
  rng = np.random.default_rng(7)
  rows = 400
  logits = (rng.normal(size=(rows, VOCAB)) * 2).astype(np.float32)
  count = (reference_probs(logits, method) > 0).sum(-1)
  ranked = np.argsort(-logits, axis=-1)
  cut = np.where(count < VOCAB, count, 20)  # unfiltered: a pair inside the distribution
  last, first_out = ranked[np.arange(rows), cut - 1], ranked[np.arange(rows), cut]
  logits[np.arange(rows), first_out] = logits[np.arange(rows), last] - np.float32(1e-5)
  swapped = logits.copy()
  swapped[np.arange(rows), last], swapped[np.arange(rows), first_out] = (logits[np.arange(rows), first_out],
                                                                         logits[np.arange(rows), last])
  keys = sample_keys(range(rows), [0] * rows)
  noise = np.asarray(jax.vmap(lambda key: jax.random.gumbel(key, (VOCAB,), jnp.float32))(keys), np.float64)

  def reference(x):
    """The float64 draw over HF's kept tokens `[rows]`, whether it is clear of a near-tie `[rows]`, and the kept set."""
    kept = reference_probs(x, method) > 0
    noisy = np.where(kept, x.astype(np.float64) / method.temperature + noise, -np.inf)
    top2 = -np.sort(-noisy, axis=-1)[:, :2]
    return np.argmax(noisy, axis=-1), top2[:, 0] - top2[:, 1] > 1e-4, kept

  draw = jax.jit(lambda x: method(x, keys))
  a, b = np.asarray(draw(logits)), np.asarray(draw(swapped))
  (ref_a, clear_a, kept_a), (ref_b, clear_b, kept_b) = reference(logits), reference(swapped)
  assert clear_a.all() and clear_b.all()  # no near-tie of noisy scores anywhere: every change below is the cutoff
  np.testing.assert_array_equal(a, ref_a)
  np.testing.assert_array_equal(b, ref_b)
  moved = a != b
  other_kept = (kept_a != kept_b).any(-1)
  assert not (moved & ~other_kept).any()
  assert ((a == last) | (a == first_out) | (b == last) | (b == first_out))[moved].all()
  if method.top_k or method.top_p < 1:
    # The cutoff fell between the swapped pair (top-p: in most rows; raising the first token out added to the
    # mass before it, and some rows kept both).
    assert other_kept.sum() >= rows // 2
    assert moved.any()  # and a draw that took one of them moved (top-p 0.9: a tail token, rarely drawn)
  else:
    assert not moved.any()


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
    (dict(temperature=float("inf")), "temperature must be > 0 and finite"),  # sampled uniformly, without a word
    (dict(top_p=0.0), "top_p must be in"),
    (dict(top_p=1.5), "top_p must be in"),
    (dict(top_k=-2), r"top_k must be a non-negative integer \(or -1 for off, as in vLLM\), got -2"),
    (dict(top_k=2.0), r"top_k must be a non-negative integer .*, got 2.0"),  # would fail later, inside jax's top_k
    (dict(top_k=True), "top_k must be a non-negative integer"),
    # Were "'>' not supported between instances of 'str' and 'int'", naming neither setting.
    (dict(temperature="0.7"), "temperature must be a number, got '0.7'"),
    (dict(temperature=None), "temperature must be a number, got None"),
    (dict(top_p="0.95"), "top_p must be a number, got '0.95'"),
])
def test_bad_sampling_settings_are_refused_up_front(kwargs, message):
  with pytest.raises(ValueError, match=message):
    Sampling(**kwargs)
  assert Sampling(top_k=np.int64(3)).top_k == 3


def test_same_samples_in_any_batch_shape_precompiled_or_not_and_through_the_policy():
  """In float32 a request's samples are the same, token for token, alone and in batches that change every padded
  shape (row bucket 4 -> 16, length bucket 16 -> 96, shared-prefix groups on / off, `max_rows` chunks), after
  `precompile`, and through `EnginePolicy`. (The logits differ in their last bits between these shapes: the draws
  agree because none of them is within a rounding error of a tie; see the test above.)"""
  tok = tiny_tokenizer()
  model = load_tiny()
  text = "Question: what is 6 * 7?\n"
  target = Request(tok.encode(text), n=3, seed=11)
  long_prompt, other = random_prompts(seed=3, count=2, low=90, high=90)[0], PROMPTS[5]
  batch = [Request(long_prompt, n=6, seed=1), Request(target.prompt[:4], n=2, seed=2), target, Request(other, seed=3)]
  run = lambda e, reqs, i: [r.token_ids for r in e.generate(reqs, METHOD, max_new_tokens=12)[i]]
  shared = Engine(model, tokenizer=tok)
  alone = run(shared, [target], 0)
  (small,) = shared.stats["batches"]
  assert len(set(alone)) == 3
  assert run(shared, batch, 2) == alone
  (big,) = shared.stats["batches"]
  assert (small["row_level"][0], big["row_level"][0]) == (4, 16)
  assert small["cache_len"] < big["cache_len"]  # longer prompt levels: a bigger length bucket
  unshared = Engine(model, tokenizer=tok, share_prefixes=False)
  assert run(unshared, [target], 0) == run(unshared, batch, 2) == alone
  chunked = Engine(model, tokenizer=tok, max_rows=2)
  assert run(chunked, batch, 2) == alone
  precompiled = Engine(model, tokenizer=tok, buckets=Buckets(min_length=32, min_rows=2))
  precompiled.precompile(batch, METHOD, max_new_tokens=12)
  assert run(precompiled, batch, 2) == alone
  policy = EnginePolicy(shared, temperature=METHOD.temperature, top_p=METHOD.top_p, top_k=METHOD.top_k,
                        max_new_tokens=12)
  texts = [r.text for r in shared.generate([target], METHOD, max_new_tokens=12)[0]]
  assert [c.text for c in policy.generate([text], n=3, seeds=[11], stop=[])[0]] == texts
  long_text = tok.decode(long_prompt)
  assert len(tok.encode(long_text)) > 64
  assert [c.text for c in policy.generate([long_text, text], n=3, seeds=[4, 11], stop=[])[1]] == texts


def test_seeded_fuzz_of_sampled_generation_against_transformers():
  """Random sampled calls on a second model shape (untied head, one kv head, head_dim 24; short stop checks):
  prompts with shared prefixes, duplicates and prefixes of each other; n in 0..3; random 64-bit seeds; the settings
  include top_k = 1, top_k >= V, a tiny top_p with a tiny temperature, and top_p = 1. Against a `transformers`
  forward pass over each sample: every token is one HF's warpers keep at its step (for the greedy-like settings,
  the tokens are HF greedy generation's), and the reported log-prob is the sum of the raw model log-softmax. The
  target request's samples are the same in another engine (no prefix sharing, `max_rows` chunks, other buckets)
  next to other requests and a duplicate of itself, and as `n` copies with `first_sample = j`. With stop strings
  (cut from the samples' own text, and tags) and an EOS id, each sample equals the samples above cut by the plain
  rules (`plain_stop_rules`). A scratch version (7 random model shapes, 28 calls, 153 samples, random buckets,
  `max_rows` and vocab limits, 27 next-token histograms of 2048 samples at random settings) found no divergence."""
  torch.manual_seed(5)
  config = tiny_hf_config(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=1, head_dim=24, tie_word_embeddings=False)
  hf_model = transformers.Qwen2ForCausalLM(config).eval()
  path = _tmp_root() / "sampling_fuzz_shape"
  hf_model.save_pretrained(path)
  model = convert.load_qwen2(path, scan_layers=False)
  tok = tiny_tokenizer()
  # Coarse buckets: each sampling method compiles one set of programs per engine (compiling dominates the time).
  ours = Engine(model, tokenizer=tok, eos_ids=(), buckets=Buckets(min_length=32, min_rows=16), stop_check_interval=2)
  other = Engine(model, tokenizer=tok, eos_ids=(), buckets=Buckets(min_length=64, min_rows=4), share_prefixes=False,
                 max_rows=3)
  methods = [Sampling(0.8, top_k=1), Sampling(1e-30, top_k=VOCAB + 3, top_p=1e-6),
             Sampling(1.2, top_k=VOCAB, top_p=1.0), Sampling(0.7, top_k=20, top_p=0.9)]
  rng = np.random.default_rng(7)
  max_new = 8

  def hf_logprobs(prompt, tokens):
    with torch.no_grad():
      logits = hf_model(input_ids=torch.tensor([prompt + list(tokens)])).logits[0, len(prompt) - 1:-1]
    return logits.float().numpy(), torch.log_softmax(logits.double(), -1).numpy()

  counts = dict(samples=0, greedy=0, same=0, cut=0)
  cut_reasons = set()
  for call, method in enumerate(methods):
    prompts = []
    for _ in range(int(rng.integers(2, 5))):
      src = prompts[int(rng.integers(len(prompts)))] if prompts else []
      kind = int(rng.integers(4)) if prompts else 0
      if kind == 0:
        prompts.append(rng.integers(0, VOCAB, int(rng.integers(1, 20))).tolist())
      elif kind == 1:
        prompts.append(list(src[:int(rng.integers(1, len(src) + 1))]))  # a prefix of another prompt
      elif kind == 2:
        prompts.append(list(src))  # identical, another seed
      else:
        prompts.append(src[:int(rng.integers(0, len(src) + 1))] + rng.integers(0, VOCAB, 3).tolist())
    ns = [int(rng.integers(0, 4)) for _ in prompts]
    ns[0] = max(ns[0], 2)
    seeds = [int(rng.integers(-2**63, 2**63)) for _ in prompts]
    requests = [Request(p, n=n, seed=s) for p, n, s in zip(prompts, ns, seeds)]
    results = ours.generate(requests, method, max_new_tokens=max_new)
    greedy_like = method.top_k == 1 or method.top_p < 1e-3 or method.temperature < 1e-3
    for prompt, row in zip(prompts, results):
      if greedy_like and row:
        with torch.no_grad():
          ids = torch.tensor([prompt])
          hf_greedy = hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=max_new, min_new_tokens=max_new, pad_token_id=0,
                                        eos_token_id=None)[0, len(prompt):].tolist()
      for res in row:
        assert len(res.token_ids) == max_new and res.stop_reason == "length"
        logits, logp = hf_logprobs(prompt, res.token_ids)
        kept = reference_probs(logits, method) > 0  # [max_new, V]
        assert kept[np.arange(max_new), list(res.token_ids)].all(), f"call {call} {method}: a filtered token drawn"
        np.testing.assert_allclose(res.logprob, logp[np.arange(max_new), list(res.token_ids)].sum(), atol=1e-3)
        counts["samples"] += 1
        if greedy_like:
          assert list(res.token_ids) == hf_greedy, f"call {call} {method}"
          counts["greedy"] += 1
    # The first request elsewhere: other shapes and chunks, other requests, a duplicate, n copies.
    target = requests[0]
    want = [r.token_ids for r in results[0]]
    mixed = [Request(rng.integers(0, VOCAB, int(rng.integers(1, 30))).tolist(), n=2, seed=call), target,
             Request(list(target.prompt), n=target.n, seed=target.seed)]
    again = other.generate(mixed, method, max_new_tokens=max_new)
    copies = other.generate([Request(target.prompt, seed=target.seed, first_sample=j) for j in range(target.n)],
                            method, max_new_tokens=max_new)
    assert [r.token_ids for r in again[1]] == [r.token_ids for r in again[2]] == want, f"call {call} {method}"
    assert [r.token_ids for (r,) in copies] == want, f"call {call} {method}"
    counts["same"] += 1
    if not greedy_like:
      assert len(set(want)) == len(want)  # the samples differ: the seeds reach them
    # Stop strings and EOS cut the same samples as the plain rules do.
    texts = [tok.decode(list(r.token_ids)) for row in results for r in row]
    stops = [SPECIAL_TOKENS[int(rng.integers(1, 4))]]
    for text in texts[:3]:
      start = int(rng.integers(len(text)))
      stops.append(text[start:start + int(rng.integers(1, 4))])
    stops = [s for s in stops if s]
    eos = [int(rng.choice([t for row in results for r in row for t in r.token_ids[1:4]]))]
    cut = ours.generate(requests, method, max_new_tokens=max_new, stop=stops, eos_ids=eos)
    for prompt, row, cut_row in zip(prompts, results, cut):
      for res, got in zip(row, cut_row):
        logp = hf_logprobs(prompt, res.token_ids)[1][np.arange(max_new), list(res.token_ids)]
        want_cut = plain_stop_rules(prompt, list(res.token_ids), logp, max_new, set(eos), stops)
        assert (got.text, got.stop_reason, got.token_ids) == want_cut[:3], f"call {call}: stops {stops} eos {eos}"
        np.testing.assert_allclose(got.logprob, want_cut[3], atol=1e-3)
        counts["cut"] += 1
        cut_reasons.add(want_cut[1] if want_cut[1] in ("eos", "length") else "stop")
  assert counts["samples"] >= 24 and counts["greedy"] >= 8 and counts["same"] == len(methods), counts
  assert cut_reasons == {"eos", "length", "stop"}
