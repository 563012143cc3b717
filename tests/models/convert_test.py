"""HF <-> Flax conversion: bit-exact round trips, sharded checkpoints, transformers loading our export, bad input."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import random_padded_batch
from safetensors.numpy import load_file

from rstar_jax.models import convert, default_positions
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


def test_unknown_architecture_is_refused(hf_qwen2_factory):
  path, _ = hf_qwen2_factory()
  config = json.loads((path / "config.json").read_text())
  config.update(model_type="llama", architectures=["LlamaForCausalLM"])
  (path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"config\.json.*unsupported architecture"):
    convert.load_qwen2(path)
