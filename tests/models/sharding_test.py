"""The same model on a (2, 2, 2) mesh of 8 fake CPU devices: same logits, intended parameter shardings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_padded_batch
from flax import nnx
from jax.sharding import PartitionSpec as P

from rstar_jax import sharding
from rstar_jax.models import ModelConfig, Qwen2, convert, default_positions


def test_sharded_logits_equal_single_device(hf_qwen2_factory):
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  path, _ = hf_qwen2_factory(tie_word_embeddings=False, num_heads=4, num_kv_heads=2)
  single = convert.load_qwen2(path)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sharded = convert.load_qwen2(path, mesh=mesh)
  params = nnx.state(sharded)
  q = params["model"]["layers"]["self_attn"]["q_proj"]["kernel"][...]
  assert q.sharding.spec == P(None, "fsdp", "tensor", None)  # [L, D, N, H]
  assert params["model"]["embed_tokens"]["embedding"][...].sharding.spec == P("tensor", "fsdp")
  assert params["lm_head"]["kernel"][...].sharding.spec == P("fsdp", "tensor")
  assert params["model"]["layers"]["mlp"]["down_proj"]["kernel"][...].sharding.spec == P(None, "tensor", "fsdp")
  assert len(q.sharding.device_set) == 8

  tokens, mask = random_padded_batch(np.random.default_rng(0), 300, batch=4, length=9)
  args = (jnp.asarray(tokens), default_positions(jnp.asarray(mask)), jnp.asarray(mask))
  expected = single(*args).logits
  graphdef, state = nnx.split(sharded)
  batch_sharding = sharding.named_sharding(("batch", "length"), tokens.shape, mesh)

  @jax.jit
  def forward(state, *args):
    with sharding.activation_sharding(mesh):
      return nnx.merge(graphdef, state)(*args).logits

  got = forward(state, *(jax.device_put(a, batch_sharding) for a in args))
  assert got.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(np.asarray(got)[mask], np.asarray(expected)[mask], atol=1e-5, rtol=0)


def test_illegal_split_falls_back_or_fails_clearly(caplog):
  config = ModelConfig.tiny(num_heads=4, num_kv_heads=2)
  abstract = nnx.eval_shape(lambda: Qwen2(config, rngs=nnx.Rngs(0)))
  mesh = sharding.make_mesh(data=2, fsdp=1, tensor=4)
  shardings = sharding.param_shardings(abstract, mesh)
  k_spec = shardings["model"]["layers"]["self_attn"]["k_proj"]["kernel"].spec
  q_spec = shardings["model"]["layers"]["self_attn"]["q_proj"]["kernel"].spec
  assert k_spec == P(None, None, None, None) and q_spec == P(None, None, "tensor", None)
  assert "cannot split logical axis 'kv_heads' of size 2" in caplog.text
  with pytest.raises(ValueError, match=r"k_proj.*kv_heads.*size 2"):
    sharding.param_shardings(abstract, mesh, strict=True)


def test_make_mesh_sizes():
  mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh(data=4, fsdp=2, tensor=2)


def test_unstacked_load_places_each_layer_and_matches_single_device(hf_qwen2_factory):
  # `load_qwen2(..., scan_layers=False)` (the engine's layout) writes each layer's tensors straight into its own
  # sharded parameters: the specs lose the leading layers dim, the logits do not change.
  path, _ = hf_qwen2_factory(tie_word_embeddings=False, num_heads=4, num_kv_heads=2)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  flat = convert.load_qwen2(path, mesh=mesh, scan_layers=False)
  params = nnx.state(flat)
  for layer in range(flat.config.num_layers):
    q = params["model"]["layers"][layer]["self_attn"]["q_proj"]["kernel"][...]
    assert q.sharding.spec == P("fsdp", "tensor", None) and len(q.sharding.device_set) == 8  # [D, N, H]
  tokens, mask = random_padded_batch(np.random.default_rng(0), 300, batch=4, length=9)
  args = (jnp.asarray(tokens), default_positions(jnp.asarray(mask)), jnp.asarray(mask))
  graphdef, state = nnx.split(flat)

  @jax.jit
  def forward(state, *args):
    with sharding.activation_sharding(mesh):
      return nnx.merge(graphdef, state)(*args).logits

  expected = convert.load_qwen2(path)(*args).logits
  np.testing.assert_allclose(np.asarray(forward(state, *args))[mask], np.asarray(expected)[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("sizes", [(0, 1, 1), (-2, 1, 1), (-1, 0, 1), (2.0, 1, 1)], ids=str)
def test_make_mesh_refuses_sizes_that_are_not_positive_or_minus_one(sizes):
  # (0, 1, 1) built an empty mesh, (-2, 1, 1) a 6-device one (numpy fills -2 in), (-1, 0, 1) divided by zero.
  with pytest.raises(ValueError, match=r"mesh axis (data|fsdp) must be an integer >= 1 or -1"):
    sharding.make_mesh(*sizes)


@pytest.mark.parametrize("vocab_rule, message", [
    (("tensr",), r"logical axis 'vocab' names unknown mesh axes \['tensr'\]"),
    ("tensor", r"logical axis 'vocab': expected a sequence of mesh axis names, got the string 'tensor'"),
    (("fsdp", "fsdp"), r"logical axis 'vocab' names a mesh axis twice"),
], ids=("typo", "bare_string", "twice"))
def test_bad_rule_override_raises_naming_the_rule(vocab_rule, message):
  # Each of these used to map `vocab` silently to no mesh axis (or to an invalid spec), replicating the embedding.
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  rules = tuple((name, vocab_rule if name == "vocab" else axes) for name, axes in sharding.DEFAULT_RULES)
  assert sharding.logical_to_spec(("vocab", "embed"), (512, 64), mesh) == P("tensor", "fsdp")
  with pytest.raises(ValueError, match=message):
    sharding.logical_to_spec(("vocab", "embed"), (512, 64), mesh, rules)


def test_mesh_sizes_in_place_of_a_mesh_are_named(hf_qwen2_factory):
  # TrainConfig takes the mesh as sizes; given to the loaders (or the Engine) they failed as
  # "'tuple' object has no attribute 'axis_names'".
  path, _ = hf_qwen2_factory()
  with pytest.raises(TypeError, match=r"mesh must be a jax.sharding.Mesh \(make_mesh\(data, fsdp, tensor\) builds "
                                      r"one\), got tuple \(1, 1, 1\)"):
    convert.load_qwen2(path, mesh=(1, 1, 1))
  with pytest.raises(TypeError, match=r"mesh must be a jax.sharding.Mesh"):
    sharding.logical_to_spec(("vocab", "embed"), (512, 64), (2, 2, 2))
