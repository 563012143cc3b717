"""Greedy generation equals `transformers` `generate(do_sample=False)` token for token (tiny random fp32 Qwen2).

One padded batch of 24 prompts of mixed lengths (3..60 tokens): plain, with an EOS id, with stop strings (checked
against HF's own `StopStringCriteria`), with both, with a context limit; plus a stop string spanning three tokens, a
multi-byte character split over two tokens as a stop, and a stop that only occurs across the prompt boundary.
Every call has the same shapes, so the whole file compiles one set of programs.
"""

import functools

import numpy as np
import torch
import transformers
from generate_helpers import (SPECIAL_TOKENS, TEST_BUCKETS, VOCAB, CachedHFGreedy, _tmp_root, emitted_text,
                              hf_generate, hf_tiny_tokenizer, load_tiny, plain_stop_rules, random_prompts, tiny_hf,
                              tiny_hf_config, tiny_tokenizer)

from rstar_jax.generate import Buckets, Engine, Greedy, Request
from rstar_jax.models import convert

MAX_NEW = 32
PROMPTS = random_prompts(seed=1, count=24, low=3, high=60)


@functools.cache
def engine():
  return Engine(load_tiny(), tokenizer=tiny_tokenizer(), eos_ids=(), buckets=TEST_BUCKETS)


@functools.cache
def reference(eos=None):
  return hf_generate(PROMPTS, MAX_NEW, eos=eos, pad=0)


def _printable_piece(tok, tokens, j, k):
  text = tok.decode(tokens[j:j + k])
  return text if text.isascii() and text.isprintable() and text.strip() and len(text) >= 2 else None


def test_greedy_matches_transformers_without_stops():
  ref = reference()
  results = engine().generate([Request(p) for p in PROMPTS], Greedy(), max_new_tokens=MAX_NEW)
  assert len({len(p) for p in PROMPTS}) > 10
  for i, (res,) in enumerate(results):
    assert res.token_ids == tuple(ref[i].tolist()), f"row {i}"
    assert res.stop_reason == "length"
    assert res.text == emitted_text(tiny_tokenizer(), ref[i].tolist())


def test_greedy_matches_transformers_with_eos():
  plain = reference()
  # An id that the greedy continuations actually produce mid-way, so several rows end early on it.
  counts = np.bincount(plain[:, 2:MAX_NEW // 2].reshape(-1), minlength=512)
  eos = int(np.argmax(counts))
  ref = reference(eos=eos)
  results = engine().generate([Request(p) for p in PROMPTS], Greedy(), max_new_tokens=MAX_NEW, eos_ids=[eos])
  ended = 0
  for i, (res,) in enumerate(results):
    row = ref[i].tolist()
    if eos in row:
      row = row[:row.index(eos) + 1]
      ended += 1
      assert res.stop_reason == "eos"
      assert res.text == emitted_text(tiny_tokenizer(), row[:-1])
    else:
      assert res.stop_reason == "length"
    assert res.token_ids == tuple(row), f"row {i}"
  assert ended >= 3


def _stop_strings(plain):
  """Stop strings cut from the greedy texts of a few rows, each spanning a token boundary."""
  tok = tiny_tokenizer()
  stops = []
  for i in range(0, len(PROMPTS), 3):
    row = plain[i].tolist()
    for j in range(4, MAX_NEW - 6):
      a, b = tok.decode(row[j:j + 1]), tok.decode(row[j + 1:j + 2])
      piece = _printable_piece(tok, row, j, 2)
      if piece and len(a) >= 1 and len(b) >= 1 and a.isascii() and b.isascii():
        stops.append(a[-1] + b)  # the last character of token j and all of token j + 1: spans their boundary
        break
  return tuple(dict.fromkeys(stops))


def test_greedy_matches_transformers_with_stop_strings():
  plain = reference()
  stops = _stop_strings(plain)
  assert len(stops) >= 4
  # HF pads finished rows only when an EOS criterion exists: give it an id the greedy continuations never produce.
  unused = int(np.setdiff1d(np.arange(512), plain)[0])
  ref = hf_generate(PROMPTS, MAX_NEW, eos=unused, pad=unused, stop_strings=list(stops))
  tok = tiny_tokenizer()
  results = engine().generate([Request(p) for p in PROMPTS], Greedy(), max_new_tokens=MAX_NEW, stop=stops)
  stopped = 0
  for i, (res,) in enumerate(results):
    full = tok.decode(plain[i].tolist())
    hits = [(full.find(s), s) for s in stops if s in full]
    if res.stop_reason == "length":
      assert res.token_ids == tuple(plain[i].tolist())
      assert not hits, f"row {i}: missed a stop in {full!r}"
      continue
    stopped += 1
    n = len(res.token_ids)
    # HF stopped on the same token: same prefix, then padding only.
    assert res.token_ids == tuple(ref[i, :n].tolist()), f"row {i}"
    assert (ref[i, n:] == unused).all(), f"row {i}: HF continued past {n} tokens"
    assert res.token_ids == tuple(plain[i, :n].tolist())
    # The text ends right before the earliest stop string, which is the reason.
    text_n = tok.decode(plain[i, :n].tolist())
    start, stop = min((text_n.find(s), s) for s in stops if s in text_n)
    assert res.stop_reason == stop
    assert res.text == text_n[:start]
    assert not any(s in tok.decode(plain[i, :n - 1].tolist()) for s in stops)  # the n-th token completed it
  assert stopped >= 4


def test_stop_string_spanning_three_tokens():
  plain = reference()
  tok = tiny_tokenizer()
  prompt_index, stop, j = None, None, None
  for i in range(len(PROMPTS)):
    row = plain[i].tolist()
    for j in range(2, MAX_NEW - 4):
      pieces = [tok.decode(row[j + k:j + k + 1]) for k in range(3)]
      if all(p.isascii() and p.isprintable() and len(p) >= 1 for p in pieces) and len(pieces[1]) >= 1:
        candidate = pieces[0][-1] + pieces[1] + pieces[2][:1]
        earlier = tok.decode(row[:j + 2])  # the stop must first appear with token j + 2
        if len(pieces[2]) > 1 and candidate not in earlier:
          prompt_index, stop = i, candidate
          break
    if stop:
      break
  assert stop is not None
  # The whole batch (same shapes as the other tests: no new compilation); the checks are on one row.
  results = engine().generate([Request(p) for p in PROMPTS], Greedy(), max_new_tokens=MAX_NEW, stop=[stop])
  (res,) = results[prompt_index]
  row = plain[prompt_index].tolist()
  text = tok.decode(row[:j + 3])
  assert res.stop_reason == stop
  assert res.token_ids == tuple(row[:j + 3])
  assert res.text == text[:text.find(stop)]
  assert res.text + stop == text[:text.find(stop) + len(stop)]


def test_eos_and_stop_strings_together_match_transformers():
  plain = reference()
  stops = _stop_strings(plain)
  counts = np.bincount(plain[:, 2:MAX_NEW // 2].reshape(-1), minlength=512)
  eos = int(np.argsort(counts)[-2])  # another frequent id: some rows end on EOS first, others on a stop
  ref = hf_generate(PROMPTS, MAX_NEW, eos=eos, pad=eos, stop_strings=list(stops))
  results = engine().generate([Request(p) for p in PROMPTS], Greedy(), max_new_tokens=MAX_NEW, stop=stops,
                              eos_ids=[eos])
  reasons = set()
  for i, (res,) in enumerate(results):
    n = len(res.token_ids)
    assert res.token_ids == tuple(ref[i, :n].tolist()), f"row {i}"
    assert (ref[i, n:] == eos).all(), f"row {i}"
    reasons.add("stop" if res.stop_reason in stops else res.stop_reason)
  assert {"stop", "eos"} <= reasons


def test_max_context_and_progress_bar():
  plain = reference()
  requests = [Request(p) for p in PROMPTS]
  results = engine().generate(requests, Greedy(), max_new_tokens=MAX_NEW, max_context=50, progress=True)
  for i, (res,) in enumerate(results):
    room = max(0, min(MAX_NEW, 50 - len(PROMPTS[i])))
    assert res.token_ids == tuple(plain[i, :room].tolist()) and res.stop_reason == "length"


def test_stacked_layers_engine_matches_transformers():
  # `scan_layers=True` runs the caller's stacked weights (each cached step slices them) instead of a per-layer copy.
  stacked = Engine(load_tiny(), tokenizer=tiny_tokenizer(), eos_ids=(), buckets=TEST_BUCKETS, scan_layers=True)
  assert stacked._params["model"]["layers"]["self_attn"]["q_proj"]["kernel"].ndim == 4  # [L, D, N, H]
  ref = reference()
  results = stacked.generate([Request(p) for p in PROMPTS], Greedy(), max_new_tokens=MAX_NEW)
  for i, (res,) in enumerate(results):
    assert res.token_ids == tuple(ref[i].tolist()), f"row {i}"


def _split_character(plain):
  """(row, j, char): the first non-ASCII character of a greedy text whose UTF-8 bytes start before token j and
  end in token j (decoded with `transformers`' tokenizer: the text up to token j - 1 ends in a replacement char)."""
  tok = hf_tiny_tokenizer()
  for i in range(len(PROMPTS)):
    row = plain[i].tolist()
    for j in range(1, MAX_NEW):
      before, after = tok.decode(row[:j]), tok.decode(row[:j + 1])
      if before.endswith("\ufffd") and len(after) >= len(before):
        char = after[len(before) - 1]
        if not char.isascii() and char != "\ufffd" and char not in before:
          return i, j, char
  raise AssertionError("no split multi-byte character in the greedy texts")


def test_multi_byte_stop_strings_and_the_prompt_boundary():
  """A stop string whose UTF-8 bytes are split over two tokens is caught on the token that completes it, and text
  from the prompt never completes a stop (vLLM's rule: only generated text is searched). Coverage for both was
  ASCII-only. Reference: `transformers`' tokenizer decoding the continuation after the prompt text."""
  plain = reference()
  i, j, char = _split_character(plain)
  row = plain[i].tolist()
  hf_tok = hf_tiny_tokenizer()
  # The stop's bytes start in token j - 1 (its text alone ends in a replacement character); cut the prompt there.
  cut = j - 1
  prompt = PROMPTS[i] + row[:cut]
  prompt_text = hf_tok.decode(prompt)
  assert not prompt_text.endswith("\ufffd")
  spanning = prompt_text[-1] + char  # the prompt's last character and the split one: spans the boundary
  requests = [Request(p) for p in PROMPTS]
  results = engine().generate(requests, Greedy(), max_new_tokens=MAX_NEW, stop=[char])
  (res,) = results[i]
  text = hf_tok.decode(row[:j + 1])
  assert (res.text, res.stop_reason, res.token_ids) == (text[:text.find(char)], char, tuple(row[:j + 1]))
  requests[i] = Request(prompt)
  results = engine().generate(requests, Greedy(), max_new_tokens=MAX_NEW, stop=[spanning])
  (res,) = results[i]
  assert res.stop_reason == "length" and res.token_ids[:MAX_NEW - cut] == tuple(row[cut:])  # the same greedy text
  assert spanning not in hf_tok.decode(prompt + list(res.token_ids))[len(prompt_text):]  # only across the boundary
  results = engine().generate(requests, Greedy(), max_new_tokens=MAX_NEW, stop=[spanning, char])
  (res,) = results[i]
  assert (res.text, res.stop_reason, res.token_ids) == ("", char, tuple(row[cut:j + 1]))


def test_the_last_allowed_token_reports_a_stop_or_eos_before_length():
  """vLLM 0.6's StopChecker ranks EOS, then stop strings, then the length limit: a row whose MAX_NEW-th token
  completes a stop string (or is an EOS id) reports that, not "length". Coverage: no test ended on the last token."""
  plain = reference()
  tok = tiny_tokenizer()
  rows = []
  for i in range(len(PROMPTS)):
    row = plain[i].tolist()
    last, before = tok.decode(row[-1:]), tok.decode(row[:-1])
    if last.isascii() and last.isprintable() and last.strip() and last not in before:
      rows.append((i, last))
  assert len(rows) >= 2
  stops = [last for _, last in rows]
  results = engine().generate([Request(p) for p in PROMPTS], Greedy(), max_new_tokens=MAX_NEW, stop=stops)
  checked = 0
  for i, last in rows:
    (res,) = results[i]
    text = tok.decode(plain[i].tolist())
    if any(s in text[:len(text) - len(last)] for s in stops):
      continue  # another row's stop occurs earlier in this text
    assert (res.stop_reason, res.token_ids) == (last, tuple(plain[i].tolist())), f"row {i}"
    checked += 1
  assert checked >= 1
  i = next(i for i in range(len(PROMPTS)) if plain[i, -1] not in plain[i, :-1])
  results = engine().generate([Request(p) for p in PROMPTS], Greedy(), max_new_tokens=MAX_NEW,
                              eos_ids=[int(plain[i, -1])])
  (res,) = results[i]
  assert (res.stop_reason, res.token_ids) == ("eos", tuple(plain[i].tolist()))


def test_seeded_fuzz_against_transformers_and_plain_stop_rules():
  """Random calls (prompt batches with shared prefixes, identical prompts and prompts that are prefixes of others;
  n in 0..2; stop strings cut from the model's own greedy text: the first token's text, spans of tokens, a stop and
  its prefix, prompt text, special tags; EOS ids from the continuation; context limits) on a second model shape
  (untied head, one kv head, explicit head_dim, 3 layers) with fine length buckets, row-chunked batches and a short
  stop-check interval, against `transformers` greedy generation cut by `plain_stop_rules`, and continuation
  log-likelihoods against a `transformers` forward pass. A longer scratch version (288 calls, 11 random shapes,
  random buckets, `max_rows`, prefix sharing on / off, stop-check intervals 1..16) found no divergence."""
  torch.manual_seed(3)
  config = tiny_hf_config(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=1, head_dim=24, tie_word_embeddings=False)
  hf_model = transformers.Qwen2ForCausalLM(config).eval()
  path = _tmp_root() / "fuzz_shape"
  hf_model.save_pretrained(path)
  ours = Engine(convert.load_qwen2(path), tokenizer=tiny_tokenizer(), eos_ids=(),
                buckets=Buckets(min_length=4, fine_from=8, min_rows=2), max_rows=3, stop_check_interval=2)
  rng = np.random.default_rng(11)
  tok = tiny_tokenizer()
  max_new = 10
  hf_greedy = CachedHFGreedy(hf_model)

  compared = scored = 0
  seen = set()
  for call in range(7):
    prompts = []
    for _ in range(int(rng.integers(1, 6))):
      kind = int(rng.integers(4)) if prompts else 0
      src = prompts[int(rng.integers(len(prompts)))] if prompts else []
      if kind == 0:
        prompts.append(rng.integers(0, VOCAB, int(rng.integers(1, 24))).tolist())
      elif kind == 1:
        prompts.append(list(src[:int(rng.integers(1, len(src) + 1))]))  # a prefix of another prompt
      elif kind == 2:
        prompts.append(list(src))  # identical
      else:
        prompts.append(src[:int(rng.integers(0, len(src) + 1))] + rng.integers(0, VOCAB, 3).tolist())
    conts = [hf_greedy(p, max_new) for p in prompts]
    texts = [tok.decode(c[0]) for c in conts]
    stops = []
    for _ in range(int(rng.integers(0, 4))):
      i, kind = int(rng.integers(len(prompts))), int(rng.integers(5))
      text = texts[i]
      if kind == 0:
        stops.append(tok.decode(conts[i][0][:1]))  # completed by the first generated token
      elif kind == 1 and len(text) > 2:
        a = int(rng.integers(len(text) - 1))
        stops.append(text[a:a + int(rng.integers(2, 5))])  # a span, often across token boundaries
      elif kind == 2 and stops:
        stops.append(stops[-1][:max(1, len(stops[-1]) - 1)])  # a prefix of another stop
      elif kind == 3:
        stops.append(tok.decode(prompts[i])[-2:])  # prompt text (counts only when generated again)
      else:
        stops.append(SPECIAL_TOKENS[int(rng.integers(len(SPECIAL_TOKENS)))])
    stops = [s for s in stops if s]
    pool = [t for c in conts for t in c[0][:4]]  # early tokens, so EOS often ends a row before its limit
    eos = [int(rng.choice(pool))] if rng.integers(3) else []
    max_new_call = int(rng.choice([1, max_new]))
    max_context = None if rng.integers(3) else int(rng.integers(5, 30))
    ns = [int(rng.integers(0, 3)) for _ in prompts]
    results = ours.generate([Request(p, n=n, seed=call) for p, n in zip(prompts, ns)], Greedy(),
                            max_new_tokens=max_new_call, stop=stops, eos_ids=eos, max_context=max_context)
    for i, (prompt, n) in enumerate(zip(prompts, ns)):
      limit = max_new_call if max_context is None else min(max_new_call, max_context - len(prompt))
      want = plain_stop_rules(prompt, *conts[i], limit, set(eos), stops)
      for res in results[i]:
        got = (res.text, res.stop_reason, res.token_ids)
        assert got == want[:3], f"call {call} prompt {i}: {prompts[i]} stops {stops} eos {eos}"
        np.testing.assert_allclose(res.logprob, want[3], atol=1e-3)
        compared += 1
        seen.add(want[1] if want[1] in ("eos", "length") else "stop")
    contexts = [p[:int(rng.integers(1, len(p) + 1))] for p in prompts]
    continuations = [p[len(c):] + rng.integers(0, VOCAB, int(rng.integers(0, 4))).tolist()
                     for p, c in zip(prompts, contexts)]
    for c, x, lp in zip(contexts, continuations, ours.loglikelihood(contexts, continuations)):
      with torch.no_grad():
        logp = torch.log_softmax(hf_model(input_ids=torch.tensor([c + x])).logits[0].double(), -1).numpy()
      np.testing.assert_allclose(lp, [logp[len(c) - 1 + t, y] for t, y in enumerate(x)], atol=1e-4)
      scored += 1
  assert compared >= 12 and scored >= 12 and seen == {"eos", "length", "stop"}


def test_seeded_boundary_lengths_against_transformers_and_plain_stop_rules():
  """Every length setting at its edge: the longest prompt of a call at a length bucket minus one / at it / plus one
  (fine buckets 4, 8, 12, 16, 24), rows vs the row buckets and `max_rows` (calls split into chunks: results must come
  back in request order), `max_context` = the longest prompt -1 / +0 / +1 / +2, `max_new_tokens` = 1, prompts at the
  model's last positions (1022, 1023 of 1024), EOS as the first generated token, and stop strings completed by the
  first token, by the last allowed token, or only across the prompt boundary; prompts of a call share prefixes (last
  token differs, identical, one a prefix of another). Reference: a per-prompt `transformers` greedy loop cut by
  `plain_stop_rules`, and continuation log-likelihoods of a `transformers` forward pass. A longer scratch version of
  this (988 cases, default and fine buckets, PPM values and scorer cuts) found no divergence."""
  _, hf_model = tiny_hf()
  ours = Engine(load_tiny(), tokenizer=tiny_tokenizer(), eos_ids=(), buckets=Buckets(min_length=4, fine_from=8),
                max_rows=3, stop_check_interval=2)
  tok = tiny_tokenizer()
  rng = np.random.default_rng(15)
  hf_greedy = CachedHFGreedy(hf_model)

  compared, seen = 0, set()
  calls = [(length, max_new) for length in (3, 4, 5, 7, 8, 9, 15, 16, 17, 23, 24, 25) for max_new in (1, 3)]
  calls.append((1023, 3))
  for call, (length, max_new) in enumerate(calls):
    base = rng.integers(0, VOCAB - len(SPECIAL_TOKENS), length).tolist()
    if length > 1000:  # the model's last positions: 1024 is its max_position_embeddings
      prompts, max_context = [base, base[:-1]], 1024
    else:
      prompts = [base, base[:-1] + [(base[-1] + 1) % 500], list(base), base[:max(1, length // 2)], [int(base[0])]]
      max_context = [None, length - 1, length, length + 1, length + 2][call % 5]
    ns = [int(n) for n in rng.integers(0, 3, len(prompts))]
    ns[0] = max(ns[0], 1)
    first, _ = hf_greedy(prompts[0], max_new)
    text = tok.decode(first)
    stops, eos = [], []
    kind = call % 4
    if kind == 0 and text:
      stops = [tok.decode(first[:1]) or text[:1]]  # completed by the first generated token
    elif kind == 1 and text:
      stops = [text[-1:], text[-2:]]  # completed by the last allowed token (a stop and its suffix)
    elif kind == 2:
      stops = [tok.decode(prompts[0])[-1:] + text[:1]]  # spans the prompt boundary: never matched there
    else:
      eos = [first[0]]  # EOS as the very first generated token
    stops = [s for s in stops if s]
    results = ours.generate([Request(p, n=n, seed=call) for p, n in zip(prompts, ns)], Greedy(),
                            max_new_tokens=max_new, stop=stops, eos_ids=eos, max_context=max_context)
    assert [len(r) for r in results] == ns
    for prompt, row in zip(prompts, results):
      limit = max_new if max_context is None else min(max_new, max_context - len(prompt))
      if limit <= 0:
        want = ("", "length", (), 0.0)
      else:
        want = plain_stop_rules(prompt, *hf_greedy(prompt, limit), limit, set(eos), stops)
      for res in row:
        assert (res.text, res.stop_reason, res.token_ids) == want[:3], f"call {call}: {prompt} {stops} {eos}"
        np.testing.assert_allclose(res.logprob, want[3], atol=1e-4)
        compared += 1
        seen.add(want[1] if want[1] in ("eos", "length") else "stop")
  # Log-likelihoods with the whole text at the bucket edges and the shortest context.
  contexts = [[5], [5], [7, 9, 11], list(range(1, 8)), list(range(1, 9)), list(range(2, 10))]
  continuations = [[], [6], [1], [8], [9], [10, 11, 12, 13, 14, 15, 16, 17]]
  for c, x, lp in zip(contexts, continuations, ours.loglikelihood(contexts, continuations)):
    with torch.no_grad():
      logp = torch.log_softmax(hf_model(input_ids=torch.tensor([c + x])).logits[0].double(), -1).numpy()
    np.testing.assert_allclose(lp, [logp[len(c) - 1 + t, y] for t, y in enumerate(x)], atol=1e-4)
    compared += 1
  assert compared >= 100 and seen == {"eos", "length", "stop"}
