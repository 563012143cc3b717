"""HF <-> Flax conversion: bit-exact round trips, sharded checkpoints, transformers loading our export, bad input."""

import errno
import json
import os
import re
import shutil
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import random_padded_batch
from safetensors.numpy import load_file

from rstar_jax.models import convert, default_positions, tensor_files
from rstar_jax.models.tensor_files import write_safetensors


def _all_tensors(hf_dir):
  tensors = {}
  for name in sorted(os.listdir(hf_dir)):
    if name.endswith(".safetensors"):
      tensors.update(load_file(os.path.join(hf_dir, name)))
  return tensors


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_is_bit_identical(hf_qwen2_factory, tmp_path, tied, scan_layers):
  path, _ = hf_qwen2_factory(tie_word_embeddings=tied)
  model = convert.load_qwen2(path, scan_layers=scan_layers)
  assert model.model.scan_layers == scan_layers
  convert.save_qwen2(model, tmp_path / "out")
  original, exported = _all_tensors(path), _all_tensors(tmp_path / "out")
  assert sorted(original) == sorted(exported)
  assert ("lm_head.weight" in exported) == (not tied)
  for name in original:
    assert original[name].dtype == exported[name].dtype, name
    np.testing.assert_array_equal(original[name], exported[name], err_msg=name)


def test_transformers_loads_our_export(hf_qwen2_factory, tmp_path):
  path, _ = hf_qwen2_factory(tie_word_embeddings=False, num_heads=4, num_kv_heads=1)
  model = convert.load_qwen2(path)
  convert.save_qwen2(model, tmp_path / "out", max_shard_bytes=100_000)  # forces a sharded export with an index
  assert (tmp_path / "out" / "model.safetensors.index.json").exists()
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  tokens, mask = random_padded_batch(np.random.default_rng(3), 300, batch=3, length=10)
  with torch.no_grad():
    ref = reloaded(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
  ours = model(jnp.asarray(tokens), default_positions(jnp.asarray(mask)), jnp.asarray(mask)).logits
  np.testing.assert_allclose(np.asarray(ours)[mask], ref[mask], atol=1e-4, rtol=0)
  # ... and our loader reads the sharded export back identically.
  again = convert.load_qwen2(tmp_path / "out")
  np.testing.assert_array_equal(np.asarray(again(jnp.asarray(tokens), default_positions(jnp.asarray(mask)),
                                                 jnp.asarray(mask)).logits), np.asarray(ours))


@pytest.mark.parametrize("first_shard_bytes,second_shard_bytes", [(100_000, 5 * 2**30), (5 * 2**30, 100_000)])
def test_export_over_an_earlier_export_leaves_only_the_new_weights(hf_qwen2_factory, tmp_path, first_shard_bytes,
                                                                 second_shard_bytes):
  # Sharded then single (or the reverse) into one folder: the earlier files must go, or our loader (index first)
  # and transformers (`model.safetensors` first) would read different models.
  out = tmp_path / "out"
  convert.save_qwen2(convert.load_qwen2(hf_qwen2_factory("a", seed=0)[0]), out, max_shard_bytes=first_shard_bytes)
  path, hf = hf_qwen2_factory("b", seed=1)
  convert.save_qwen2(convert.load_qwen2(path), out, max_shard_bytes=second_shard_bytes)
  sharded = second_shard_bytes < 5 * 2**30
  weights = sorted(n for n in os.listdir(out) if n != "config.json")
  assert (weights == ["model.safetensors"]) != sharded
  assert all(n.startswith("model-") or n == "model.safetensors.index.json" for n in weights) == sharded
  tokens, mask = random_padded_batch(np.random.default_rng(4), 300, batch=2, length=8)
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()(
        input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
  ours = convert.load_qwen2(out)(jnp.asarray(tokens), default_positions(jnp.asarray(mask)), jnp.asarray(mask)).logits
  np.testing.assert_allclose(theirs[mask], want[mask], atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(ours)[mask], want[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("value_head_format", ["bin", "safetensors"])
def test_a_policy_export_over_an_earlier_ppm_export_leaves_no_value_head(hf_qwen2_factory, tmp_path,
                                                                         value_head_format):
  # The PPM's value head stayed beside the new policy's weights: the folder then read as a PPM of the new backbone and
  # the old head (`train_ppm` from that policy continued from the stale head instead of starting a fresh one).
  out = tmp_path / "out"
  ppm = convert.load_ppm(_with_value_head(hf_qwen2_factory("a", seed=0)[0]))
  convert.save_ppm(ppm, out, value_head_format=value_head_format)
  assert (out / f"value_head.{value_head_format}").exists()
  path, _ = hf_qwen2_factory("b", seed=1)
  convert.save_qwen2(convert.load_qwen2(path), out)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  with pytest.raises(FileNotFoundError, match="no value_head"):
    convert.read_value_head(out)


def _with_value_head(hf_dir):
  """`hf_dir` with a `value_head.bin` as the official `save_rm.py` writes it (`torch.save` of the head's tensors)."""
  head = torch.nn.Linear(64, 1)
  torch.save({"v_head.summary.weight": head.weight.detach(), "v_head.summary.bias": head.bias.detach()},
             os.path.join(hf_dir, "value_head.bin"))
  return hf_dir


def _vllm_weight_files(hf_dir):
  """The files vLLM 0.6.6 loads weights from, for a local dir and the default load format: transcribed from
  `model_executor/model_loader/loader.py` `DefaultModelLoader._prepare_weights` (the first of "*.safetensors",
  "*.bin" that matches any file; for safetensors, `weight_utils.filter_duplicate_safetensors_files`: only the files
  of `model.safetensors.index.json`'s weight_map when that index exists)."""
  import glob  # pylint: disable=g-import-not-at-top
  for pattern in ("*.safetensors", "*.bin"):
    found = glob.glob(os.path.join(hf_dir, pattern))
    if found:
      break
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  if pattern == "*.safetensors" and os.path.isfile(index):
    with open(index) as f:
      mapped = {os.path.join(hf_dir, file) for file in json.load(f)["weight_map"].values()}
    found = [f for f in found if f in mapped]
  return sorted(found)


@pytest.mark.parametrize("value_head_format", ["bin", "safetensors"])
def test_vllm_loads_only_the_backbone_of_a_ppm_export(hf_qwen2_factory, tmp_path, value_head_format):
  # A single-file backbone with value_head.safetensors beside it: vLLM reads every *.safetensors of a folder without
  # an index, so its Qwen2ForCausalLM got `v_head.summary.*` and refused the folder ("There is no module or
  # parameter named 'v_head'"); rStar's rm_engine (vLLM task="reward") could not load the PPM.
  out = tmp_path / "out"
  ppm = convert.load_ppm(_with_value_head(hf_qwen2_factory("a", seed=0)[0]))
  convert.save_ppm(ppm, out, value_head_format=value_head_format)
  names = [name for file in _vllm_weight_files(str(out)) for name in load_file(file)]
  assert names and all(name.startswith("model.") for name in names), [n for n in names if not n.startswith("model.")]
  assert sorted(names) == sorted(n for n in _all_tensors(out) if not n.startswith("v_head."))
  reloaded = convert.load_ppm(out)
  np.testing.assert_array_equal(np.asarray(reloaded.value_head.kernel[...]), np.asarray(ppm.value_head.kernel[...]))
  transformers.AutoModel.from_pretrained(out)  # the backbone still loads with transformers


def test_an_export_failing_half_way_over_an_earlier_one_does_not_load_as_a_mix(hf_qwen2_factory, tmp_path,
                                                                              monkeypatch):
  # A full disk while writing shard 2 of 4 left the earlier export's index over a new shard 1 and old shards 2..4:
  # transformers and our loader both loaded that folder, without an error, as part one model and part the other.
  out = tmp_path / "out"
  path_a, hf_a = hf_qwen2_factory("a", seed=0)
  path_b, hf_b = hf_qwen2_factory("b", seed=1)
  convert.save_qwen2(convert.load_qwen2(path_a), out, max_shard_bytes=100_000)
  real, calls = convert.write_safetensors, []

  def disk_full_on_the_second_shard(path, tensors, *args):
    calls.append(path)
    if len(calls) == 2:
      raise OSError(errno.ENOSPC, "No space left on device", path)
    real(path, tensors, *args)

  monkeypatch.setattr(convert, "write_safetensors", disk_full_on_the_second_shard)
  with pytest.raises(OSError, match="No space left"):
    convert.save_qwen2(convert.load_qwen2(path_b), out, max_shard_bytes=100_000)
  monkeypatch.undo()
  try:
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
  except OSError:  # no weights a loader opens: what a failed export may leave
    loaded = None
  if loaded is not None:
    assert any(all(torch.equal(t, hf.state_dict()[k]) for k, t in loaded.items()) for hf in (hf_a, hf_b))
  try:
    ours = convert.HFCheckpoint(out)
  except FileNotFoundError:
    ours = None
  if ours is not None:
    assert any(all(np.array_equal(ours.get(k), t) for k, t in _all_tensors(p).items()) for p in (path_a, path_b))
    ours.close()


def test_bf16_checkpoint_round_trip(hf_qwen2_factory, tmp_path):
  path, hf = hf_qwen2_factory()
  hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  model = convert.load_qwen2(tmp_path / "bf16")
  assert model.config.param_dtype == "bfloat16"
  convert.save_qwen2(model, tmp_path / "out")
  original, exported = _all_tensors(tmp_path / "bf16"), _all_tensors(tmp_path / "out")
  for name in original:
    np.testing.assert_array_equal(original[name].view(np.uint16), exported[name].view(np.uint16), err_msg=name)


def test_missing_file_names_the_directory(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 10, "hidden_size": 8,
                                                    "intermediate_size": 8, "num_hidden_layers": 1,
                                                    "num_attention_heads": 2}))
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    convert.load_qwen2(tmp_path)


def test_truncated_file_names_file_and_tensor(hf_qwen2_factory, tmp_path):
  path, _ = hf_qwen2_factory()
  file = path / "model.safetensors"
  data = file.read_bytes()
  file.write_bytes(data[:len(data) - 1000])
  with pytest.raises(ValueError, match=r"model\.safetensors.*tensor '.*' is truncated"):
    convert.load_qwen2(path)


def _rewrite_member(path, member, edit):
  """Rewrites one member of a zip file in place (a crafted copy of a real `torch.save`-format file)."""
  with zipfile.ZipFile(path) as z:
    items = {n: z.read(n) for n in z.namelist()}
  items[member] = edit(items[member])
  with zipfile.ZipFile(path, "w") as z:
    for name, data in items.items():
      z.writestr(name, data)


@pytest.mark.parametrize("edit,message", [
    # stride (7, 1) -> (112, 1): the tensor claims elements far past its 21-element storage
    (lambda pkl: pkl.replace(b"(J\x07\x00\x00\x00J\x01\x00\x00\x00t", b"(J\x70\x00\x00\x00J\x01\x00\x00\x00t"),
     r"reaches element 230 of a 21-element storage"),
    # storage offset 0 -> 1000
    (lambda pkl: pkl.replace(b"tQJ\x00\x00\x00\x00(", b"tQJ\xe8\x03\x00\x00("), r"offset 1000 reaches element"),
    # a negative stride
    (lambda pkl: pkl.replace(b"(J\x07\x00\x00\x00J\x01\x00\x00\x00t", b"(J\xff\xff\xff\xffJ\x01\x00\x00\x00t"),
     r"invalid tensor layout"),
])
def test_crafted_torch_bin_cannot_read_outside_its_storage(tmp_path, edit, message):
  # `torch.load(weights_only=True)` refuses such files; reading them must not return (or crash on) foreign memory.
  path = tmp_path / "value_head.bin"
  tensor_files.write_torch_bin(path, {"w": np.arange(21, dtype=np.float32).reshape(3, 7)})
  _rewrite_member(path, "archive/data.pkl", edit)
  with pytest.raises(ValueError, match=r"value_head\.bin: truncated or corrupt torch checkpoint \(.*" + message):
    tensor_files.read_torch_bin(path)


def test_missing_tensor_and_shape_mismatch_name_the_tensor(hf_qwen2_factory, tmp_path):
  path, _ = hf_qwen2_factory()
  tensors = _all_tensors(path)
  broken = tmp_path / "missing"
  shutil.copytree(path, broken)
  write_safetensors(broken / "model.safetensors",
                    {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"})
  with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
    convert.load_qwen2(broken)
  wrong = tmp_path / "wrong"
  shutil.copytree(path, wrong)
  tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"]
  write_safetensors(wrong / "model.safetensors", tensors)
  with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight"):
    convert.load_qwen2(wrong)


@pytest.mark.parametrize("name, scramble", [
    ("model.layers.0.self_attn.k_proj.weight", lambda w: w.T),  # [D, K*H] instead of [K*H, D]
    ("model.layers.1.self_attn.q_proj.bias", lambda w: w.reshape(4, -1)),  # [N, H] instead of [N*H]
])
def test_a_tensor_with_the_right_size_but_wrong_shape_is_refused(hf_qwen2_factory, tmp_path, name, scramble):
  # transformers refuses these (size mismatch); a reshape would accept them and load scrambled weights.
  path, _ = hf_qwen2_factory(num_heads=4, num_kv_heads=2, hidden_size=64)
  tensors = _all_tensors(path)
  tensors[name] = np.ascontiguousarray(scramble(tensors[name]))
  write_safetensors(path / "model.safetensors", tensors)
  with pytest.raises(ValueError, match=re.escape(name) + r".*has shape " + re.escape(str(tensors[name].shape))):
    convert.load_qwen2(path)


def test_a_dir_with_both_a_single_file_and_a_sharded_index_is_refused(hf_qwen2_factory, tmp_path):
  # transformers loads model.safetensors from such a dir; the index used to win here: different weights, silently.
  path, _ = hf_qwen2_factory()
  tensors = _all_tensors(path)
  write_safetensors(path / "model-00001-of-00001.safetensors", {k: v * 2 for k, v in tensors.items()})
  (path / "model.safetensors.index.json").write_text(
      json.dumps({"weight_map": {k: "model-00001-of-00001.safetensors" for k in tensors}}))
  with pytest.raises(ValueError, match=r"both model\.safetensors and model\.safetensors\.index\.json"):
    convert.load_qwen2(path)


@pytest.mark.parametrize("index", [[], {"weight_map": ["model.safetensors"]}, {"weight_map": {"lm_head.weight": 1}},
                                   {"metadata": {}}])
def test_a_malformed_shard_index_is_named(hf_qwen2_factory, tmp_path, index):
  # A list, or a weight_map that is not name -> file, raised a bare TypeError or AttributeError.
  path, _ = hf_qwen2_factory()
  os.rename(path / "model.safetensors", path / "model-00001-of-00001.safetensors")
  (path / "model.safetensors.index.json").write_text(json.dumps(index))
  with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: not a valid safetensors index"):
    convert.load_qwen2(path)


def test_a_shard_index_json_cannot_read_is_named(hf_qwen2_factory, tmp_path):
  # Brackets nested too deeply (a corrupted file): json raised a bare RecursionError naming no file.
  path, _ = hf_qwen2_factory()
  os.rename(path / "model.safetensors", path / "model-00001-of-00001.safetensors")
  (path / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * 100_000)
  with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: not a valid safetensors index \(nested too"):
    convert.load_qwen2(path)


def test_unknown_architecture_is_refused(hf_qwen2_factory):
  path, _ = hf_qwen2_factory()
  config = json.loads((path / "config.json").read_text())
  config.update(model_type="llama", architectures=["LlamaForCausalLM"])
  (path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"config\.json.*unsupported architecture"):
    convert.load_qwen2(path)


@pytest.mark.parametrize("dtype", ["bf16", "bfloat16", "fp16"])
def test_export_dtype_takes_the_short_names_the_cli_accepts(hf_qwen2_factory, tmp_path, dtype):
  # `convert export --dtype bf16` passed the CLI's check (dtype_name) and then failed in np.dtype('bf16').
  path, hf = hf_qwen2_factory(tie_word_embeddings=False)
  torch_dtype = torch.bfloat16 if dtype.startswith("bf") else torch.float16
  convert.save_qwen2(convert.load_qwen2(path), tmp_path / "out", dtype=dtype)
  head = {"v_head.summary.weight": torch.randn(1, hf.config.hidden_size), "v_head.summary.bias": torch.randn(1)}
  torch.save(head, path / "value_head.bin")
  convert.save_ppm(convert.load_ppm(path), tmp_path / "ppm", dtype=dtype)
  for out in ("out", "ppm"):
    reloaded = transformers.AutoModel.from_pretrained(tmp_path / out, dtype=torch_dtype)
    for name, value in hf.model.state_dict().items():  # transformers' own rounding of the float32 weights
      assert torch.equal(reloaded.state_dict()[name], value.to(torch_dtype)), (out, name)


def test_a_tied_config_with_a_different_lm_head_in_the_checkpoint_is_refused(hf_qwen2_factory, tmp_path):
  # transformers v5 does not tie such a checkpoint and runs its lm_head.weight; vLLM skips that tensor for a tied
  # config. Loading it tied gave logits ~30 away from transformers' here; an lm_head equal to the embedding loads.
  path, _ = hf_qwen2_factory(tie_word_embeddings=True)
  tensors = _all_tensors(path)
  assert "lm_head.weight" not in tensors
  same = tmp_path / "same"
  shutil.copytree(path, same)
  write_safetensors(same / "model.safetensors", {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]})
  tokens, mask = random_padded_batch(np.random.default_rng(6), 300, batch=2, length=8)
  args = (jnp.asarray(tokens), default_positions(jnp.asarray(mask)), jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(convert.load_qwen2(same)(*args).logits),
                                np.asarray(convert.load_qwen2(path)(*args).logits))
  head = np.random.default_rng(0).normal(size=tensors["model.embed_tokens.weight"].shape).astype(np.float32)
  write_safetensors(path / "model.safetensors", {**tensors, "lm_head.weight": head})
  reference = transformers.AutoModelForCausalLM.from_pretrained(path)
  assert np.array_equal(reference.lm_head.weight.detach().numpy(), head)  # transformers runs the file's head
  with pytest.raises(ValueError, match=r"tie_word_embeddings.*lm_head\.weight.*differs"):
    convert.load_qwen2(path)


@pytest.mark.parametrize("tied", [True, False])
def test_a_ppm_dir_is_not_loaded_as_a_policy(hf_qwen2_factory, tmp_path, tied):
  # A round's two exports look alike (HF dir + tokenizer; the PPM's adds value_head.bin, as the official save_rm).
  # Passing the PPM's where the policy goes (EnginePolicy, train_policy's base) loaded its backbone as a policy
  # without a word when tied (Qwen2.5-Math-1.5B): generation or SFT ran on the PPM's backbone; untied it failed as
  # "checkpoint has no tensor 'lm_head.weight'", naming no reason.
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from rstar_jax.models import PPM, ModelConfig  # pylint: disable=g-import-not-at-top
  path, _ = hf_qwen2_factory(tie_word_embeddings=tied)
  ppm_dir = tmp_path / "ppm"
  convert.save_ppm(PPM(ModelConfig.from_hf_config(path), rngs=nnx.Rngs(0)), ppm_dir)
  with pytest.raises(ValueError, match=re.escape(f"{ppm_dir} holds a PPM (value_head.bin): load it with load_ppm")):
    convert.load_qwen2(ppm_dir)
  assert convert.load_ppm(ppm_dir).config.tie_word_embeddings == tied
  convert.load_qwen2(path)  # the policy dir it came from still loads


@pytest.mark.parametrize("value", ["0.5", None, {"w": 1}, [[0.5, 0.5]]], ids=["str", "None", "dict", "list"])
def test_a_value_head_bin_entry_that_is_no_tensor_names_the_file_and_tensor(tmp_path, value):
  # `torch.save({...: "0.5"})` and the like: torch.load (weights_only) returns them, and np.asarray(..., float32)
  # raised a bare ValueError / TypeError naming neither the file nor the tensor (a list loaded as a head).
  head = {"v_head.summary.weight": value, "v_head.summary.bias": torch.zeros(1)}
  torch.save(head, tmp_path / "value_head.bin")
  assert torch.load(tmp_path / "value_head.bin", weights_only=True)["v_head.summary.weight"] == value
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "value_head.bin")) + r": 'v_head\.summary\.weight' is "
                                       r"not a tensor"):
    convert.read_value_head(tmp_path)


def _random_qwen2_config(rng: np.random.Generator) -> dict:
  """Random tiny `Qwen2Config` kwargs: GQA grouping 1..4, tied or not, optional explicit head_dim and token ids."""
  kv_heads, group, head_dim = int(rng.integers(1, 4)), int(rng.integers(1, 5)), 2 * int(rng.integers(1, 5))
  heads = kv_heads * group
  vocab = int(rng.integers(17, 601))
  kw = dict(vocab_size=vocab, hidden_size=heads * head_dim, intermediate_size=int(rng.integers(3, 40)),
            num_hidden_layers=int(rng.integers(1, 4)), num_attention_heads=heads, num_key_value_heads=kv_heads,
            tie_word_embeddings=bool(rng.integers(2)), rope_theta=float(rng.choice([500.0, 1e4, 1e6])),
            rms_norm_eps=float(rng.choice([1e-6, 1e-5, 1e-3])), max_position_embeddings=int(rng.integers(8, 300)),
            rope_scaling=None, use_sliding_window=False)
  if rng.integers(2):
    kw["head_dim"] = head_dim
  for key in ("bos_token_id", "pad_token_id"):
    if rng.integers(2):
      kw[key] = int(rng.integers(vocab))
  eos = int(rng.integers(3))
  if eos:
    kw["eos_token_id"] = int(rng.integers(vocab)) if eos == 1 else [int(i) for i in rng.integers(vocab, size=2)]
  return kw


def _hf_config_dict(hf_dir) -> dict:
  """What transformers reads of a config.json, less the fields that name the writer rather than the model."""
  config = transformers.Qwen2Config.from_pretrained(hf_dir).to_dict()
  for key in ("transformers_version", "_name_or_path", "architectures"):
    config.pop(key, None)
  return config


def test_random_transformers_checkpoints_round_trip_through_import_and_export(tmp_path):
  # A seeded differential sweep: transformers writes a random tiny checkpoint (single file or sharded, generation
  # config or none); ours imports and exports it (sharded or not). The tensors must come back bit-exact, transformers
  # must read the same config and generation config, and our logits must match transformers' up to the last position.
  rng = np.random.default_rng(20261203)
  for case in range(6):
    kw = _random_qwen2_config(rng)
    src, out = tmp_path / f"src{case}", tmp_path / f"out{case}"
    torch.manual_seed(case)
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw)).eval()
    with torch.no_grad():
      for p in hf.parameters():
        p.add_(torch.randn_like(p) * 0.05)  # non-trivial norms and biases
    hf.save_pretrained(src, **({"max_shard_size": 4000} if rng.integers(2) else {}))
    if rng.integers(2):
      (src / "generation_config.json").unlink(missing_ok=True)  # token ids then only in config.json
    model = convert.load_qwen2(src)
    convert.save_qwen2(model, out, max_shard_bytes=int(rng.integers(1000, 20000)) if rng.integers(2) else 5 * 2**30)
    convert.copy_side_files(src, out)
    convert.copy_token_ids(src, out)
    where = f"case {case}: {kw}"

    original, exported = _all_tensors(src), _all_tensors(out)
    assert sorted(exported) == sorted(n for n in original if not (kw["tie_word_embeddings"] and n == "lm_head.weight"))
    for name, array in exported.items():
      assert array.dtype == original[name].dtype and array.tobytes() == original[name].tobytes(), (name, where)
    want, got = _hf_config_dict(src), _hf_config_dict(out)
    if want.get("head_dim") is None:  # the export names the head_dim transformers derives
      assert got.pop("head_dim") == kw["hidden_size"] // kw["num_attention_heads"], where
      want.pop("head_dim", None)
    assert got == want, where
    generation = [transformers.GenerationConfig.from_pretrained(d).to_dict()
                  if (d / "generation_config.json").exists() else None for d in (src, out)]
    assert generation[0] == generation[1], where

    length, max_pos = 5, kw["max_position_embeddings"]
    tokens = rng.integers(0, kw["vocab_size"], (2, length))
    positions = np.stack([np.arange(length), np.arange(max_pos - length, max_pos)])  # up to the last position
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
      ref = hf(input_ids=torch.tensor(tokens), position_ids=torch.tensor(positions)).logits.numpy()
      again = reloaded(input_ids=torch.tensor(tokens), position_ids=torch.tensor(positions)).logits.numpy()
    np.testing.assert_array_equal(again, ref, err_msg=where)
    ours = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.ones((2, length), bool)).logits
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0, err_msg=where)
