"""Engine inputs that were answered wrongly or with an unrelated error: each is now refused, naming what is wrong."""

import pytest
from generate_helpers import QWEN_TOKENIZER, TEST_BUCKETS, hf_generate, load_tiny, tiny_tokenizer

from rstar_jax.generate import Buckets, Engine, Greedy, Request, Sampling
from rstar_jax.tokenizer import load_tokenizer


@pytest.mark.parametrize("max_rows", [0, -1])
def test_max_rows_below_one_is_refused(max_rows):
  # A negative max_rows made no batch at all (each request's result was None); 0 silently meant "no limit".
  with pytest.raises(ValueError, match="max_rows must be an integer >= 1"):
    Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS, max_rows=max_rows)


@pytest.mark.parametrize("setting,value", [("max_rows", 2.5), ("max_rows", "4"), ("stop_check_interval", 2.5),
                                           ("stop_check_interval", None), ("stop_check_interval", True)])
def test_batch_settings_that_are_not_integers_are_named(setting, value):
  # 2.5 was accepted and failed at the first call as "'float' object cannot be interpreted as an integer", "4" and
  # None as "'<' not supported between instances of ...", naming neither setting; True checked every 1 step.
  with pytest.raises(ValueError, match=rf"{setting} must be an integer >= 1.*, got {value!r}"):
    Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS, **{setting: value})


@pytest.mark.parametrize("field,value", [("min_length", 64.0), ("min_length", "64"), ("min_rows", 2.0),
                                         ("fine_from", None), ("min_rows", 0), ("batch_split", 0),
                                         ("min_length", True)])
def test_bucket_settings_that_are_not_counts_are_named(field, value):
  # Buckets took anything: 64.0 failed at the first generate() as "'float' object cannot be interpreted as an
  # integer", "64" and None as "'>' not supported between instances of ...", naming neither Buckets nor the field.
  with pytest.raises(ValueError, match=rf"Buckets.{field} must be an integer >= 1, got {value!r}"):
    Engine(load_tiny(), eos_ids=(), buckets=Buckets(**{field: value}))


def test_max_rows_of_one_runs_every_row():
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS, max_rows=1)
  results = engine.generate([Request([1, 2, 3], n=2), Request([4, 5])], Greedy(), max_new_tokens=2)
  assert [len(row) for row in results] == [2, 1]
  assert all(len(r.token_ids) == 2 for row in results for r in row)
  assert len(engine.stats["batches"]) == 3


@pytest.mark.parametrize("prompt,error,message", [
    ("42", TypeError, r"request 1: expected token ids, got the text '42'"),  # was read as the one token 42
    ("What is 6 * 7?", TypeError, r"request 1: expected token ids, got the text"),  # was "invalid literal for int()"
    ([1.7, 2.2], TypeError, r"request 1: expected a flat sequence of integer token ids, got float64"),  # cut to [1, 2]
    ([[1, 2], [3, 4]], TypeError, r"request 1: .* of shape \(2, 2\)"),  # was flattened into one prompt
])
def test_a_prompt_that_is_not_token_ids_is_refused(prompt, error, message):
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS)
  with pytest.raises(error, match=message):
    engine.generate([Request([5, 6]), Request(prompt)], Greedy(), max_new_tokens=2)


def test_texts_given_to_scoring_are_refused():
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS)
  # The tiny tokenizer encodes "7" as token 22, not 7: reading the digits as an id scored the wrong continuation.
  with pytest.raises(TypeError, match=r"continuation 0: expected token ids, got the text '7'"):
    engine.loglikelihood([[5, 6]], ["7"])
  with pytest.raises(TypeError, match=r"context 1: expected token ids"):
    engine.loglikelihood([[5, 6], "hi"], [[7], [8]])


def test_a_negative_first_sample_is_refused():
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS)
  # Was an OverflowError from numpy ("Python integer -1 out of bounds for uint32") while building the keys.
  with pytest.raises(ValueError, match="request 0: first_sample must be >= 0, got -1"):
    engine.generate([Request([5, 6], first_sample=-1)], Greedy(), max_new_tokens=2)


@pytest.mark.parametrize("first_sample,n", [(2**32, 1), (2**32 - 1, 2), (2**40, 3)])
def test_a_sample_index_past_the_key_range_is_refused(first_sample, n):
  """A sample index enters the key as a uint32: one past it failed as numpy's bare "Python integer 4294967296 out of
  bounds for uint32", naming neither the request nor the field."""
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS)
  with pytest.raises(ValueError, match=rf"request 1: first_sample \+ n must be <= 2\*\*32, got {first_sample} \+ {n}"):
    engine.generate([Request([5, 6]), Request([5, 6], n=n, first_sample=first_sample)], Sampling(),
                    max_new_tokens=2)


@pytest.mark.parametrize("eos_ids,error,message", [
    ("502", TypeError, r"eos_ids: expected token ids, got the text '502'"),  # rows ended at tokens 0, 2 and 5
    (502, TypeError, r"eos_ids: expected a flat sequence of integer token ids"),  # was "'int' object is not iterable"
    ([502, None], TypeError, r"eos_ids: expected a flat sequence of integer token ids"),  # was int()'s NoneType error
    ([-1], ValueError, r"eos_ids: token ids outside \[0, 512\)"),  # no row could ever end at EOS
    ([100000], ValueError, r"eos_ids: token ids outside \[0, 512\)"),
])
def test_eos_ids_that_are_not_token_ids_are_refused(eos_ids, error, message):
  with pytest.raises(error, match=message):
    Engine(load_tiny(), eos_ids=eos_ids, buckets=TEST_BUCKETS)
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS)
  with pytest.raises(error, match=message):  # the per-call override too
    engine.generate([Request([5, 6])], Greedy(), max_new_tokens=2, eos_ids=eos_ids)


def test_eos_ids_are_kept_sorted_and_distinct():
  assert Engine(load_tiny(), eos_ids=[7, 3, 7], buckets=TEST_BUCKETS).eos_ids == (3, 7)


@pytest.mark.parametrize("field,value", [("n", 2.0), ("n", None), ("seed", None), ("seed", 1.5), ("first_sample", 0.5)])
def test_a_request_count_or_seed_that_is_not_an_integer_is_named(field, value):
  # Was "'float' object cannot be interpreted as an integer" or int()'s NoneType error, naming neither request nor
  # field; a fractional seed was cut to an integer without a word.
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS)
  with pytest.raises(TypeError, match=rf"request 1: {field} must be an integer, got {value!r}"):
    engine.generate([Request([5, 6]), Request([7, 8], **{field: value})], Greedy(), max_new_tokens=2)


def test_a_tokenizer_path_instead_of_a_tokenizer_is_refused():
  # The path was used as the tokenizer: len(path) capped the sampled ids (ids < 8 here), and the AttributeError
  # ('str' object has no attribute 'decode') came only after the whole generation, when the results were decoded.
  with pytest.raises(TypeError, match=r"tokenizer must be a loaded tokenizer .*load_tokenizer\(path\)\), got str "
                                      r"'tok/dir/'"):
    Engine(load_tiny(), tokenizer="tok/dir/", eos_ids=(), buckets=TEST_BUCKETS)


@pytest.mark.parametrize("pad_id", [512, 10**6, -1, 1.0, True, None])
def test_a_pad_id_that_is_not_a_token_id_is_refused(pad_id):
  # nnx.Embed looks up an id past the vocabulary as NaN: the NaN keys/values written at a row's padded (masked) slots
  # still reached the live rows (0 * NaN in the attention sum), so pad_id=512 (VOCAB) silently changed the greedy
  # tokens of every prompt that was padded.
  with pytest.raises(ValueError, match=rf"pad_id must be a token id in \[0, 512\), got {pad_id!r}"):
    Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS, pad_id=pad_id)


def test_the_last_token_id_as_pad_id_changes_nothing():
  prompts = [[5, 6, 7, 8, 9], [3]]  # the short one is left-padded
  expected = hf_generate(prompts, 3)
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS, pad_id=511, share_prefixes=False)
  results = engine.generate([Request(p) for p in prompts], Greedy(), max_new_tokens=3)
  assert [row[0].token_ids for row in results] == [tuple(e) for e in expected.tolist()]


@pytest.mark.parametrize("requests,message", [
    ([[1, 2, 3]], r"request 0: expected a Request\(prompt, n, seed\), got list \[1, 2, 3\]"),  # was "'list' object
    ([Request([1]), (4, 5)], r"request 1: expected a Request\(prompt, n, seed\), got tuple"),  # has no attribute"
    (Request([1, 2]), r"requests must be a sequence of Request, got one Request"),  # was "not iterable"
])
def test_requests_that_are_not_requests_are_named(requests, message):
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS)
  with pytest.raises(TypeError, match=message):
    engine.generate(requests, Greedy(), max_new_tokens=2)
  with pytest.raises(TypeError, match=message):
    engine.precompile(requests, Greedy(), max_new_tokens=2)


@pytest.mark.parametrize("sampler,shown", [(0.7, "float 0.7"), (Sampling, "the class Sampling"), ("greedy", "str"),
                                           (None, "NoneType")])
def test_a_sampler_that_is_not_a_sampling_method_is_named(sampler, shown):
  # A temperature in its place failed inside the jitted kernel as "'float' object is not callable", and the class
  # Sampling (not an instance) as "temperature must be a number, got JitTracer(float32[1,512])".
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS)
  message = rf"sampler must be Greedy\(\) or Sampling\(temperature, top_p, top_k\), got {shown}"
  with pytest.raises(TypeError, match=message):
    engine.generate([Request([1, 2])], sampler, max_new_tokens=2)
  with pytest.raises(TypeError, match=message):
    engine.precompile([Request([1, 2])], sampler, max_new_tokens=2)


def test_stop_none_means_no_stop_strings_as_in_vllm():
  # vLLM's SamplingParams(stop=None) (the official search passes `config.stop`, None when unset) failed here as
  # "'NoneType' object is not iterable".
  prompts = [[5, 6, 7, 8, 9], [3]]
  expected = hf_generate(prompts, 3)
  engine = Engine(load_tiny(), tokenizer=tiny_tokenizer(), eos_ids=(), buckets=TEST_BUCKETS)
  results = engine.generate([Request(p) for p in prompts], Greedy(), max_new_tokens=3, stop=None)
  got = [(row[0].token_ids, row[0].stop_reason) for row in results]
  assert got == [(tuple(e), "length") for e in expected.tolist()]


def test_requests_from_a_generator_give_the_results_of_a_list():
  # A generator was iterated twice (rows, then results by request index): "'generator' object is not subscriptable".
  prompts = [[5, 6, 7, 8, 9], [3]]
  expected = hf_generate(prompts, 3)
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS)
  engine.precompile((Request(p) for p in prompts), Greedy(), max_new_tokens=3)
  results = engine.generate((Request(p, n=2) for p in prompts), Greedy(), max_new_tokens=3)
  assert [[r.token_ids for r in row] for row in results] == [[tuple(e)] * 2 for e in expected.tolist()]


def test_a_tokenizer_eos_outside_the_model_vocabulary_is_refused():
  # eos_ids=[151643] is refused for a 512-id model (never generated: rows would silently never end at EOS), but the
  # same id taken from the tokenizer (the Qwen2.5 tokenizer with a small test model) was accepted without a word.
  qwen = load_tokenizer(QWEN_TOKENIZER)
  assert qwen.eos_id == 151643
  with pytest.raises(ValueError, match=r"the tokenizer's EOS id 151643 is not a token id of the model \(vocab_size "
                                       r"512\).*eos_ids="):
    Engine(load_tiny(), tokenizer=qwen, buckets=TEST_BUCKETS)
  with pytest.raises(ValueError, match=r"eos_ids: token ids outside \[0, 512\)"):
    Engine(load_tiny(), tokenizer=qwen, eos_ids=[151643], buckets=TEST_BUCKETS)
  assert Engine(load_tiny(), tokenizer=qwen, eos_ids=(), buckets=TEST_BUCKETS).eos_ids == ()


@pytest.mark.parametrize("stop", [7, 2.5, True])
def test_a_stop_that_is_no_sequence_is_named(stop):
  # It failed as "'int' object is not iterable" (or 'float', 'bool'), naming no argument.
  engine = Engine(load_tiny(), tokenizer=tiny_tokenizer(), eos_ids=(), buckets=TEST_BUCKETS)
  with pytest.raises(TypeError, match=rf"stop must be a sequence of strings, got {type(stop).__name__} {stop!r}"):
    engine.generate([Request([1, 2])], Greedy(), max_new_tokens=2, stop=stop)


@pytest.mark.parametrize("max_new_tokens", [2**31, 2**63])
def test_a_step_length_beyond_int32_positions_is_named(max_new_tokens):
  # 2**63 failed as "Python int too large to convert to C long" inside the engine, naming nothing; token positions
  # and lengths are int32, so no length from 2**31 on can be generated.
  engine = Engine(load_tiny(), eos_ids=(), buckets=TEST_BUCKETS)
  message = rf"max_new_tokens must be an integer >= 1 and < 2\*\*31 .*, got {max_new_tokens}"
  with pytest.raises(ValueError, match=message):
    engine.generate([Request([1, 2])], Greedy(), max_new_tokens=max_new_tokens)
