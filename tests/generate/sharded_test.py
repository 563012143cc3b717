"""The engine on the 8-device CPU mesh (data 2 x fsdp 2 x tensor 2) gives the same results as on one device."""

import functools

import jax
import numpy as np
import pytest
from generate_helpers import (TEST_BUCKETS, hf_token_logprobs, hf_values, load_tiny, random_prompts,
                              tiny_ppm_dir, tiny_tokenizer)

from rstar_jax import sharding
from rstar_jax.generate import Engine, Greedy, Request, Sampling
from rstar_jax.models import convert

PROMPTS = random_prompts(seed=1, count=24, low=3, high=60)  # the greedy-parity batch (shared compiled programs)
STOPS = (" the", "in", "ore")


@functools.cache
def engines():
  assert len(jax.devices()) == 8, "tests/conftest.py sets 8 fake CPU devices"
  mesh = sharding.make_mesh(2, 2, 2)
  single = Engine(load_tiny(), tokenizer=tiny_tokenizer(), eos_ids=(), buckets=TEST_BUCKETS)
  sharded = Engine(load_tiny(), tokenizer=tiny_tokenizer(), eos_ids=(), buckets=TEST_BUCKETS, mesh=mesh)
  return single, sharded


def test_parameters_are_sharded_and_batches_split_over_data_fsdp():
  _, sharded = engines()
  for layer in (0, 1):  # the engine runs the layers as a list: each layer's own [D, K, H] kernel is sharded
    kernel = sharded._params["model"]["layers"][layer]["self_attn"]["k_proj"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert sharded.buckets.batch_split == 4


def _same(a, b):
  for ra, rb in zip(a, b):
    for x, y in zip(ra, rb):
      assert (x.token_ids, x.text, x.stop_reason) == (y.token_ids, y.text, y.stop_reason)
      np.testing.assert_allclose(x.logprob, y.logprob, atol=1e-4)


def test_greedy_with_stops_same_on_8_devices_as_on_1():
  single, sharded = engines()
  run = lambda e: e.generate([Request(p) for p in PROMPTS], Greedy(), max_new_tokens=32, stop=STOPS)
  ours, theirs = run(single), run(sharded)
  assert sum(r.stop_reason != "length" for (r,) in ours) >= 5
  _same(ours, theirs)


def test_forked_sampling_same_on_8_devices_as_on_1():
  single, sharded = engines()
  method = Sampling(0.7, top_k=30, top_p=0.85)
  requests = [Request(PROMPTS[0], n=8, seed=3), Request(PROMPTS[1], n=4, seed=4)]
  _same(single.generate(requests, method, max_new_tokens=16), sharded.generate(requests, method, max_new_tokens=16))


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 1, 4)], ids=str)
def test_filtered_sampling_same_on_other_mesh_shapes_as_on_1_device(shape):
  """float32: sampled tokens are identical on 1 device and on a data / fsdp / tensor mesh (the tiny model's 2 kv
  heads replicate over tensor 4); the log-probs agree to rounding."""
  single, _ = engines()
  sharded = Engine(load_tiny(), tokenizer=tiny_tokenizer(), eos_ids=(), buckets=TEST_BUCKETS,
                   mesh=sharding.make_mesh(*shape))
  method = Sampling(0.9, top_k=40, top_p=0.9)
  requests = [Request(PROMPTS[2], n=3, seed=5), Request(PROMPTS[3], n=2, seed=6), Request(PROMPTS[4], seed=7)]
  _same(single.generate(requests, method, max_new_tokens=16), sharded.generate(requests, method, max_new_tokens=16))


def test_ppm_values_and_loglikelihood_on_8_devices_equal_transformers():
  """Scoring on the mesh (coverage: only generation was compared there): 6 prompts, one sharing prompt 0's prefix, in
  rows padded to 8 over data x fsdp = 4; the padding rows must not shift any real row's value or log-probs."""
  _, sharded = engines()
  prompts = random_prompts(seed=3, count=5, low=3, high=40)
  prompts.append(prompts[0] + [7, 8, 9])  # shares its prefix with prompt 0
  ppm = Engine(convert.load_ppm(tiny_ppm_dir()[0]), buckets=TEST_BUCKETS, mesh=sharding.make_mesh(2, 2, 2))
  kernel = ppm._params["model"]["layers"][0]["mlp"]["up_proj"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  np.testing.assert_allclose(ppm.values(prompts), hf_values(prompts), atol=1e-4)
  contexts, continuations = prompts[:3], [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
  for got, c, x in zip(sharded.loglikelihood(contexts, continuations), contexts, continuations):
    np.testing.assert_allclose(got, hf_token_logprobs(c, x), atol=1e-4)


def test_engine_keeps_working_when_its_model_is_placed_on_another_mesh_later():
  """An engine running the caller's model as is (`scan_layers=True`) shared its parameter variables with it: a second
  engine on another mesh (or `shard_model`) moved them onto that mesh's devices in place, and the first engine's
  kernels then failed on 'incompatible devices'. Both engines must give the transformers values."""
  prompts = random_prompts(seed=4, count=3, low=3, high=20)
  ppm = convert.load_ppm(tiny_ppm_dir()[0])
  first = Engine(ppm, buckets=TEST_BUCKETS, mesh=sharding.make_mesh(2, 2, 2), scan_layers=True)
  second = Engine(ppm, buckets=TEST_BUCKETS, mesh=sharding.make_mesh(1, 2, 1), scan_layers=True)
  for engine in (first, second):
    np.testing.assert_allclose(engine.values(prompts), hf_values(prompts), atol=1e-4)
