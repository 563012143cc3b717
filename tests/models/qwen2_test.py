"""Qwen2 parity with `transformers` (logits, hidden states), cached decode, config and presets."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import random_padded_batch
from flax import nnx

from rstar_jax.models import KVCache, ModelConfig, Qwen2, default_positions, unstack_layers
from rstar_jax.models import convert

# (tied, query heads per kv head 1 / 2 / 7, rope theta 1e4 / 1e6, odd sizes)
PARITY_CONFIGS = {
    "tied_gqa2_theta1e4": dict(num_heads=4, num_kv_heads=2, rope_theta=1e4, tie_word_embeddings=True),
    "untied_mha_theta1e6": dict(num_heads=4, num_kv_heads=4, rope_theta=1e6, tie_word_embeddings=False),
    "untied_gqa7_odd": dict(vocab_size=301, hidden_size=56, intermediate_size=97, num_layers=3, num_heads=7,
                            num_kv_heads=1, rope_theta=1e6, tie_word_embeddings=False),
    "tied_gqa2_odd_headdim": dict(vocab_size=257, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=6,
                                  num_kv_heads=3, head_dim=10, rope_theta=1e4, tie_word_embeddings=True),
}


def _reference(hf, tokens, mask):
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
             output_hidden_states=True)
  return out.logits.numpy(), out.hidden_states[-1].numpy()


@pytest.mark.parametrize("layout", ["stacked", "unstacked"])
@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_logits_and_hidden_match_transformers(hf_qwen2_factory, name, layout):
  path, hf = hf_qwen2_factory(**PARITY_CONFIGS[name])
  model = convert.load_qwen2(path)
  if layout == "unstacked":
    model = unstack_layers(model)
    assert isinstance(model.model.layers, nnx.List) and len(model.model.layers) == hf.config.num_hidden_layers
  rng = np.random.default_rng(1)
  tokens, mask = random_padded_batch(rng, hf.config.vocab_size, batch=4, length=13)
  ref_logits, ref_hidden = _reference(hf, tokens, mask)
  out = model(jnp.asarray(tokens), default_positions(jnp.asarray(mask)), jnp.asarray(mask), return_hidden=True)
  assert out.logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out.logits)[mask], ref_logits[mask], atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(out.hidden)[mask], ref_hidden[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("layout", ["stacked", "unstacked"])
@pytest.mark.parametrize("heads", [(4, 2), (7, 1)])
def test_prefill_then_decode_equals_full_forward(layout, heads):
  config = ModelConfig.tiny(num_layers=3, num_heads=heads[0], num_kv_heads=heads[1], hidden_size=56,
                            tie_word_embeddings=False)
  model = Qwen2(config, rngs=nnx.Rngs(0))
  if layout == "unstacked":
    model = unstack_layers(model)
  rng = np.random.default_rng(0)
  tokens, mask = random_padded_batch(rng, config.vocab_size, batch=3, length=12)
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
  positions = default_positions(mask)
  full = model(tokens, positions, mask).logits

  @jax.jit
  def step(state, tok, pos, msk, cache):
    out = nnx.merge(graphdef, state)(tok, pos, msk, cache=cache)
    return out.logits, out.cache

  graphdef, state = nnx.split(model)
  prefill = 5
  cache = KVCache.init(config, 3, 16)
  logits, cache = step(state, tokens[:, :prefill], positions[:, :prefill], mask[:, :prefill], cache)
  decoded = [logits]
  for t in range(prefill, 12):
    logits, cache = step(state, tokens[:, t:t + 1], positions[:, t:t + 1], mask[:, t:t + 1], cache)
    decoded.append(logits)
  decoded = jnp.concatenate(decoded, axis=1)
  m = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(decoded)[m], np.asarray(full)[m], atol=1e-4, rtol=0)
  assert int(cache.end_index) == 12
  assert len(cache.k) == 3 and cache.k[0].shape == (3, config.num_kv_heads, 16, config.head_dim)


def test_unstack_layers_shares_weights_and_drops_the_layers_axis():
  config = ModelConfig.tiny(num_layers=2)
  model = Qwen2(config, rngs=nnx.Rngs(0))
  flat = unstack_layers(model)
  assert unstack_layers(flat) is flat
  assert flat.model.embed_tokens.embedding[...] is model.model.embed_tokens.embedding[...]
  for l in range(2):
    q = flat.model.layers[l].self_attn.q_proj.kernel
    np.testing.assert_array_equal(q[...], model.model.layers.self_attn.q_proj.kernel[...][l])
    assert q.get_metadata()["logical_axes"] == ("embed", "heads", "head_dim")
  assert model.model.layers.self_attn.q_proj.kernel.get_metadata()["logical_axes"][0] == "layers"


def test_bf16_compute_keeps_fp32_logits_close():
  config = ModelConfig.tiny()
  model32 = Qwen2(config, rngs=nnx.Rngs(0))
  model16 = Qwen2(config.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
  tokens = jnp.arange(16).reshape(2, 8)
  mask = jnp.ones((2, 8), bool)
  pos = default_positions(mask)
  l32 = model32(tokens, pos, mask).logits
  l16 = model16(tokens, pos, mask).logits
  assert l16.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(l32 - l16))) < 0.05 * float(jnp.max(jnp.abs(l32))) + 1e-2


@pytest.mark.parametrize("start", [0, 2000])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_logits_are_as_close_to_fp32_as_transformers(hf_qwen2_factory, dtype, start):
  # A float16 forward failed to compile on CPU (jax's attention asks for an F16_F16_F32 dot). Reference: HF's fp32
  # logits; the yardstick is HF's own forward in that dtype (RoPE tables, norms and softmax in fp32, cast back).
  # Factor 2: both round every matmul and residual add to the half dtype, in different orders; at position 2000 a
  # half-precision RoPE angle would be off by ~8 rad and the logits far off, whatever the factor.
  path, _ = hf_qwen2_factory(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                             num_kv_heads=2, tie_word_embeddings=False)
  tokens, mask = random_padded_batch(np.random.default_rng(1), 512, batch=4, length=13)
  positions = np.asarray(default_positions(jnp.asarray(mask))) + start
  reference = {}
  for torch_dtype in (torch.float32, getattr(torch, dtype)):
    hf = transformers.Qwen2ForCausalLM.from_pretrained(path, dtype=torch_dtype).eval()
    with torch.no_grad():
      reference[torch_dtype] = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                                  position_ids=torch.tensor(positions)).logits.float().numpy()
  model = convert.load_qwen2(path, dtype=dtype)
  logits = jax.jit(lambda t, p, m: model(t, p, m).logits)(jnp.asarray(tokens), jnp.asarray(positions),
                                                          jnp.asarray(mask))
  assert logits.dtype == jnp.float32
  fp32 = reference[torch.float32][mask]
  ours_error = np.abs(np.asarray(logits)[mask] - fp32).max()
  hf_error = np.abs(reference[getattr(torch, dtype)][mask] - fp32).max()
  assert ours_error <= 2 * hf_error, (ours_error, hf_error)


@pytest.mark.parametrize("preset", ["qwen2p5_0p5b", "qwen2p5_math_1p5b", "qwen2p5_math_7b"])
def test_preset_parameter_counts(preset):
  # Counts derived by hand from each checkpoint's published config.json (embedding + 24/28 layers of
  # q,k,v (+bias), o, gate, up, down, 2 norms + final norm (+ untied head)); they are the published sizes.
  published = {"qwen2p5_0p5b": 494_032_768, "qwen2p5_math_1p5b": 1_543_714_304, "qwen2p5_math_7b": 7_615_616_512}
  config = getattr(ModelConfig, preset)()
  abstract = nnx.eval_shape(lambda: Qwen2(config, rngs=nnx.Rngs(0)))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert count == published[preset] == config.num_params()


def test_config_from_hf_json_top_level_and_rope_parameters(tmp_path):
  base = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 10, "hidden_size": 8,
          "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
          "rms_norm_eps": 1e-5, "max_position_embeddings": 64, "tie_word_embeddings": True}
  v4 = ModelConfig.from_hf_config(dict(base, rope_theta=1e6))
  v5 = ModelConfig.from_hf_config(dict(base, rope_parameters={"rope_type": "default", "rope_theta": 1e6}))
  assert v4 == v5 and v4.rope_theta == 1e6 and v4.head_dim == 4 and v4.rms_norm_eps == 1e-5
  with pytest.raises(ValueError, match="llama"):
    ModelConfig.from_hf_config(dict(base, model_type="llama", architectures=["LlamaForCausalLM"]))
  with pytest.raises(KeyError, match="hidden_size"):
    ModelConfig.from_hf_config({k: v for k, v in base.items() if k != "hidden_size"})
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="config.json"):
    ModelConfig.from_hf_config(tmp_path)



@pytest.mark.parametrize("field, value", [("hidden_size", "8"), ("num_hidden_layers", 1.5), ("num_hidden_layers", None),
                                          ("vocab_size", True), ("num_key_value_heads", 0)])
def test_config_fields_of_the_wrong_type_are_named(tmp_path, field, value):
  # transformers' Qwen2Config refuses these; we loaded them and failed far from the file (or built a wrong model).
  from transformers import Qwen2Config  # pylint: disable=import-outside-toplevel
  base = {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_key_value_heads": 1}
  if value != 0:  # transformers checks types, not ranges
    with pytest.raises(Exception, match=field):
      Qwen2Config(**dict(base, **{field: value}))
  (tmp_path / "config.json").write_text(json.dumps(dict(base, **{field: value})))
  with pytest.raises(ValueError, match=rf"config.json: field '{field}' must be an integer >= 1, got {value!r}"):
    ModelConfig.from_hf_config(tmp_path)


@pytest.mark.parametrize("field, value, message", [
    ("num_heads", 4.0, "an integer >= 1"),  # a float head count: head_dim came out 16.0
    ("num_heads", 0, "an integer >= 1"),  # a bare ZeroDivisionError
    ("num_kv_heads", 0, "an integer >= 1"),
    ("num_heads", -4, "an integer >= 1"),  # head_dim -16
    ("hidden_size", -64, "an integer >= 1"),
    ("vocab_size", "512", "an integer >= 1"),
    ("num_layers", True, "an integer >= 1"),
    ("num_layers", 0, "an integer >= 1"),
    ("head_dim", 0, "an integer >= 1"),
    ("max_position_embeddings", 0, "an integer >= 1"),
    ("rope_theta", 0.0, "a finite number > 0"),  # RoPE angles position / theta**(2i/d): inf and NaN
    ("rope_theta", -1e4, "a finite number > 0"),
    ("rope_theta", float("nan"), "a finite number > 0"),
    ("rms_norm_eps", None, "a finite number >= 0"),
    ("rms_norm_eps", -1e-6, "a finite number >= 0"),
    ("tie_word_embeddings", 1, "a bool"),
])
def test_config_built_directly_refuses_wrong_types_and_values_naming_the_field(field, value, message):
  # Each was accepted and failed far away (or built a model of NaNs).
  with pytest.raises(ValueError, match=rf"ModelConfig\.{field} must be {message}, got {re.escape(repr(value))}"):
    ModelConfig.tiny(**{field: value})


@pytest.mark.parametrize("field, hf_field, value", [("num_heads", "num_attention_heads", 4.0),
                                                    ("num_layers", "num_hidden_layers", True),
                                                    ("tie_word_embeddings", "tie_word_embeddings", 1),
                                                    ("rms_norm_eps", "rms_norm_eps", None)])
def test_config_refuses_the_types_transformers_refuses(field, hf_field, value):
  from transformers import Qwen2Config  # pylint: disable=import-outside-toplevel
  with pytest.raises(Exception, match=hf_field):
    Qwen2Config(**{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "num_key_value_heads": 1, hf_field: value})
  with pytest.raises(ValueError, match=rf"ModelConfig\.{field} must be"):
    ModelConfig.tiny(**{field: value})


def test_config_json_values_the_dataclass_refuses_name_the_file(tmp_path):
  base = {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_key_value_heads": 1}
  for extra, message in [({"rope_theta": 0}, r"ModelConfig.rope_theta must be a finite number > 0, got 0"),
                         ({"rms_norm_eps": None}, r"ModelConfig.rms_norm_eps must be a finite number >= 0, got None")]:
    (tmp_path / "config.json").write_text(json.dumps(dict(base, **extra)))
    with pytest.raises(ValueError, match=r"config.json: " + message):
      ModelConfig.from_hf_config(tmp_path)
  assert ModelConfig.tiny(num_layers=np.int64(3), rope_theta=10000).num_layers == 3  # numpy ints and int thetas load


def test_a_config_json_that_is_not_an_object_or_not_utf8_is_named(tmp_path):
  (tmp_path / "config.json").write_text("[1]")  # dict([1]) raised a TypeError naming nothing
  with pytest.raises(ValueError, match=r"config.json: expected a JSON object, got list"):
    ModelConfig.from_hf_config(tmp_path)
  (tmp_path / "config.json").write_bytes(b'{"model_type": "qwen2", "note": "caf\xe9"}')
  with pytest.raises(ValueError, match=r"config.json: not valid UTF-8"):
    ModelConfig.from_hf_config(tmp_path)
  (tmp_path / "config.json").write_text('{"model_type": "qwen2",\n"note": ' + "[" * 100_000)  # a bare RecursionError
  with pytest.raises(ValueError, match=r"config.json: not valid JSON \(nested too deeply to read: line 2"):
    ModelConfig.from_hf_config(tmp_path)


@pytest.mark.parametrize("extra, message", [
    ({"torch_dtype": ["bfloat16"]}, "field 'torch_dtype' must be a dtype name, got ['bfloat16']"),  # unhashable
    ({"dtype": {"name": "bfloat16"}}, "field 'dtype' must be a dtype name"),
    # float("abc") comparing the two thetas: a ValueError naming neither the file nor the field
    ({"rope_theta": 1e4, "rope_parameters": {"rope_theta": "abc"}},
     "field 'rope_parameters.rope_theta' must be a number, got 'abc'"),
    ({"rope_theta": "1e4", "rope_parameters": {"rope_theta": 1e4}}, "field 'rope_theta' must be a number, got '1e4'"),
])
def test_config_json_dtype_and_rope_theta_of_the_wrong_type_name_the_file_and_field(tmp_path, extra, message):
  base = {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_key_value_heads": 1}
  (tmp_path / "config.json").write_text(json.dumps(dict(base, **extra)))
  with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'}: {message}")):
    ModelConfig.from_hf_config(tmp_path)


def test_configs_the_model_does_not_implement_are_refused():
  # What transformers would run differently must not load as plain Qwen2 (the logits would silently differ).
  from transformers import Qwen2Config  # pylint: disable=import-outside-toplevel
  shape = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1)
  assert ModelConfig.from_hf_config(Qwen2Config(**shape).to_dict()).num_layers == 2  # transformers' defaults load
  # Published Qwen2.5 configs: a window is named but not used.
  ModelConfig.from_hf_config(dict(Qwen2Config(**shape).to_dict(), use_sliding_window=False, sliding_window=4096))
  for config, message in [
      (Qwen2Config(**shape, use_sliding_window=True, sliding_window=8, max_window_layers=1).to_dict(),
       "sliding-window attention is not supported"),
      (dict(Qwen2Config(**shape).to_dict(), layer_types=None, use_sliding_window=True, sliding_window=8,
            max_window_layers=1), "sliding-window attention is not supported"),  # a v4 file: no layer_types
      ({k: v for k, v in Qwen2Config(**shape).to_dict().items() if k not in ("layer_types", "sliding_window")}
       | {"use_sliding_window": True, "max_window_layers": 1},
       "sliding-window attention is not supported"),  # no sliding_window key: transformers' default 4096 applies
      (dict(Qwen2Config(**shape).to_dict(), rope_theta=1e6), "disagrees with rope_parameters"),  # v5 runs 1e4
      (Qwen2Config(**shape, hidden_act="gelu").to_dict(), "hidden_act='gelu' is not supported"),
      (dict(Qwen2Config(**shape).to_dict(), rope_parameters=None,
            rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
       "rope_type='yarn' is not supported"),  # the older key of the Qwen2.5 model cards' YaRN snippet
      # Fields of the wrong type were a bare AttributeError / TypeError naming no field (transformers fails on
      # these too), or loaded as another model: a non-empty string is truthy.
      (dict(Qwen2Config(**shape).to_dict(), rope_scaling="yarn"), r"field 'rope_scaling' must be an object"),
      (dict(Qwen2Config(**shape).to_dict(), rope_parameters=["default"]), r"field 'rope_parameters' must be an "),
      (dict(Qwen2Config(**shape).to_dict(), use_sliding_window=True, sliding_window=8, max_window_layers=None),
       r"field 'max_window_layers' must be an integer, got None"),
      (dict(Qwen2Config(**shape).to_dict(), tie_word_embeddings="false"),
       r"field 'tie_word_embeddings' must be true or false, got 'false'"),
      (dict(Qwen2Config(**shape).to_dict(), layer_types="full_attention"), r"field 'layer_types' must be a list"),
      # transformers v5's per-layer-type nesting (transformers' Qwen2 fails on it: KeyError 'rope_type'): it loaded
      # as default RoPE with theta 1e4, the YaRN and the theta of 1e6 silently dropped.
      (dict(Qwen2Config(**shape).to_dict(), rope_theta=None, rope_parameters={"full_attention": {
          "rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}),
       r"field 'rope_parameters' is nested by layer type \(full_attention\); Qwen2 takes one flat dict"),
      (dict(Qwen2Config(**shape).to_dict(), rope_scaling={"full_attention": {"rope_type": "default",
                                                                          "rope_theta": 1e6}}),
       r"field 'rope_scaling' is nested by layer type \(full_attention\)"),
      # A null or empty type with a factor (transformers fails: KeyError None / ''): it loaded as unscaled RoPE.
      (dict(Qwen2Config(**shape).to_dict(), rope_scaling={"type": None, "factor": 2.0}),
       r"rope_type=None is not supported"),
      (dict(Qwen2Config(**shape).to_dict(), rope_scaling={"rope_type": "", "factor": 2.0}),
       r"rope_type='' is not supported"),
  ]:
    with pytest.raises(ValueError, match=message):
      ModelConfig.from_hf_config(config)


def test_unstacked_remat_gradients_equal_stacked():
  config = ModelConfig.tiny(num_layers=2)
  stacked = Qwen2(config, rngs=nnx.Rngs(0), remat=True)
  flat = unstack_layers(stacked)
  assert flat.model.remat
  tokens = jnp.arange(24).reshape(2, 12) % config.vocab_size
  mask = jnp.ones((2, 12), bool)

  def loss(model):
    return jnp.mean(model(tokens, default_positions(mask), mask).logits ** 2)

  grads_stacked, grads_flat = nnx.grad(loss)(stacked), nnx.grad(loss)(flat)
  for l in range(2):
    np.testing.assert_allclose(grads_flat["model"]["layers"][l]["mlp"]["up_proj"]["kernel"][...],
                               grads_stacked["model"]["layers"]["mlp"]["up_proj"]["kernel"][...][l], atol=1e-8)


def test_rope_scaling_added_to_a_v5_config_is_refused():
  # The Qwen2.5 model cards' YaRN snippet added to a config.json that transformers v5 wrote (rope_parameters with
  # rope_type default): transformers replaces rope_parameters with rope_scaling and runs YaRN, so loading it as
  # default RoPE would silently give other logits.
  from transformers import Qwen2Config  # pylint: disable=import-outside-toplevel
  shape = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1)
  yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
  config = dict(Qwen2Config(**shape).to_dict(), rope_scaling=yarn)
  assert config["rope_parameters"]["rope_type"] == "default"
  assert Qwen2Config.from_dict(dict(config, rope_scaling=dict(yarn))).rope_parameters["rope_type"] == "yarn"
  with pytest.raises(ValueError, match="rope_type='yarn' is not supported"):
    ModelConfig.from_hf_config(config)
  # A default-type rope_scaling is plain RoPE for transformers too, and loads.
  default = dict(config, rope_scaling={"rope_type": "default"})
  reference = Qwen2Config.from_dict(dict(default, rope_scaling={"rope_type": "default"}))
  assert reference.rope_parameters["rope_type"] == "default"
  assert ModelConfig.from_hf_config(default).rope_theta == 1e4


def test_swish_is_silu(tmp_path):
  # transformers' ACT2FN maps "swish" to SiLU as "silu": such a config is the same model and must load.
  import transformers  # pylint: disable=import-outside-toplevel
  config = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=2, hidden_act="swish")
  torch.manual_seed(0)
  hf = transformers.Qwen2ForCausalLM(config).eval()
  hf.save_pretrained(tmp_path)
  tokens, mask = random_padded_batch(np.random.default_rng(0), 64, batch=2, length=6)
  ref_logits, _ = _reference(hf, tokens, mask)
  logits = convert.load_qwen2(tmp_path)(jnp.asarray(tokens), default_positions(jnp.asarray(mask)),
                                        jnp.asarray(mask)).logits
  np.testing.assert_allclose(np.asarray(logits)[mask], ref_logits[mask], atol=1e-5, rtol=0)


def test_an_integer_mask_as_transformers_takes_gives_its_logits(hf_qwen2_factory):
  # A tokenizer's 0/1 `attention_mask` (int64), as transformers takes it: the forward failed inside
  # jax.nn.dot_product_attention ('mask dtype should be bool') and a cached prefill inside dynamic_update_slice
  # ('requires arguments to have the same dtypes, got bool, int32'), neither naming input_mask.
  path, hf = hf_qwen2_factory()
  model = convert.load_qwen2(path)
  tokens, mask = random_padded_batch(np.random.default_rng(2), hf.config.vocab_size, batch=3, length=9)
  int_mask = mask.astype(np.int64)
  ref_logits, _ = _reference(hf, tokens, mask)
  positions = default_positions(jnp.asarray(int_mask))
  full = model(jnp.asarray(tokens), positions, jnp.asarray(int_mask)).logits
  np.testing.assert_allclose(np.asarray(full)[mask], ref_logits[mask], atol=1e-4, rtol=0)
  cached = model(jnp.asarray(tokens), positions, jnp.asarray(int_mask), cache=KVCache.init(model.config, 3, 12))
  np.testing.assert_allclose(np.asarray(cached.logits)[mask], ref_logits[mask], atol=1e-4, rtol=0)
  assert cached.cache.kv_mask.dtype == jnp.bool_
  with pytest.raises(TypeError, match=r"input_mask must be bool or integer \(nonzero = real token\), got float32"):
    model(jnp.asarray(tokens), positions, jnp.asarray(mask, jnp.float32))


def test_inputs_of_mismatched_shapes_are_named():
  # Each failed deep inside jax naming no argument: 'Too many indices: array is 2-dimensional, but 3 were indexed',
  # 'incompatible shapes for broadcasting: (2, 2, 10, 10), (2, 1, 10, 9)', "Size of label 'B' for operand 1 (2)
  # does not match previous terms (3)", 'dynamic_update_slice update shape must be smaller than operand shape'.
  config = ModelConfig.tiny(num_layers=1)
  model = Qwen2(config, rngs=nnx.Rngs(0))
  tokens = jnp.ones((2, 10), jnp.int32)
  mask = jnp.ones((2, 10), bool)
  positions = default_positions(mask)
  for args, cache, message in [
      ((tokens, jnp.arange(10), mask), None, r"positions of shape \(10,\) do not fit tokens of shape \(2, 10\)"),
      ((tokens, positions, mask[:, :9]), None, r"input_mask of shape \(2, 9\) does not match tokens \(2, 10\)"),
      ((tokens[0], positions[0], mask[0]), None, r"tokens must be \[B, T\] token ids, got shape \(10,\)"),
      ((tokens, positions, mask), KVCache.init(config, 3, 16), r"the KVCache holds 3 rows, tokens 2"),
      ((tokens, positions, mask), KVCache.init(config, 2, 8), r"10 new tokens do not fit a KVCache of 8 slots"),
  ]:
    with pytest.raises(ValueError, match=message):
      model(*args, cache=cache)
  # Positions of one row for every row (as transformers' position_ids [1, T]) broadcast as before.
  np.testing.assert_array_equal(np.asarray(model(tokens, positions[:1], mask).logits),
                                np.asarray(model(tokens, positions, mask).logits))
