"""PPM: value equals the official `RewardModelWithValueHead` math in torch; `value_head.bin` round-trips."""

import errno

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import random_padded_batch
from flax import nnx
from safetensors.numpy import load_file

from rstar_jax.models import PPM, ModelConfig, convert, default_positions, last_token_index, value_transform


def _official_values(hf, v_head, tokens, mask):
  """rStar's reward model: causal LM hidden_states[-1] -> v_head.summary (Linear D->1) at the last real token."""
  with torch.no_grad():
    hidden = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                output_hidden_states=True).hidden_states[-1]
    values = v_head(hidden.float()).squeeze(-1)  # [B, T]
  last = [int(np.nonzero(row)[0][-1]) for row in mask]
  return np.array([values[b, t].item() for b, t in enumerate(last)])


@pytest.mark.parametrize("padding", ["left", "right"])
def test_ppm_value_matches_official_math(hf_qwen2_factory, padding):
  path, hf = hf_qwen2_factory(tie_word_embeddings=False)
  torch.manual_seed(1)
  v_head = torch.nn.Linear(hf.config.hidden_size, 1)
  torch.save({"v_head.summary.weight": v_head.weight.detach(), "v_head.summary.bias": v_head.bias.detach()},
             path / "value_head.bin")
  ppm = convert.load_ppm(path)
  tokens, mask = random_padded_batch(np.random.default_rng(5), 300, batch=4, length=11)
  if padding == "right":
    mask = mask[:, ::-1].copy()
  ours = ppm(jnp.asarray(tokens), default_positions(jnp.asarray(mask)), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(ours), _official_values(hf, v_head, tokens, mask), atol=1e-5, rtol=0)


def test_value_head_bin_round_trip_through_torch(hf_qwen2_factory, tmp_path):
  path, hf = hf_qwen2_factory()
  head = {"v_head.summary.weight": torch.randn(1, hf.config.hidden_size), "v_head.summary.bias": torch.randn(1)}
  torch.save(head, path / "value_head.bin")
  ppm = convert.load_ppm(path)
  convert.save_ppm(ppm, tmp_path / "out")
  reread = torch.load(tmp_path / "out" / "value_head.bin", weights_only=True)
  for key, value in head.items():
    assert torch.equal(reread[key], value), key
  again = convert.load_ppm(tmp_path / "out")
  flat = convert.load_ppm(tmp_path / "out", scan_layers=False)  # the engine's layout: each layer its own buffers
  tokens, mask = random_padded_batch(np.random.default_rng(0), 300, batch=2, length=7)
  args = (jnp.asarray(tokens), default_positions(jnp.asarray(mask)), jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(again(*args)), np.asarray(ppm(*args)))
  np.testing.assert_allclose(np.asarray(flat(*args)), np.asarray(ppm(*args)), atol=0, rtol=1e-5)


def test_value_head_safetensors_accepted_and_missing_head_named(hf_qwen2_factory, tmp_path):
  from rstar_jax.models.tensor_files import write_safetensors
  path, hf = hf_qwen2_factory()
  with pytest.raises(FileNotFoundError, match="value_head"):
    convert.load_ppm(path)
  w = np.random.default_rng(0).normal(size=(1, hf.config.hidden_size)).astype(np.float32)
  write_safetensors(path / "value_head.safetensors", {"v_head.summary.weight": w,
                                                      "v_head.summary.bias": np.zeros(1, np.float32)})
  ppm = convert.load_ppm(path)
  np.testing.assert_array_equal(np.asarray(ppm.value_head.kernel[...]).T, w)
  # A head file without the bias is named as one (it was the file reader's bare "no tensor named").
  write_safetensors(path / "value_head.safetensors", {"v_head.summary.weight": w})
  missing = r"value_head\.safetensors: missing value-head tensors \[.v_head\.summary\.bias.\]"
  with pytest.raises(KeyError, match=missing):
    convert.load_ppm(path)


@pytest.mark.parametrize("first, second", [("safetensors", "bin"), ("bin", "safetensors")])
def test_export_over_an_earlier_one_in_the_other_format_reads_back_the_new_head(hf_qwen2_factory, tmp_path, first,
                                                                                 second):
  path, hf = hf_qwen2_factory()
  torch.save({"v_head.summary.weight": torch.randn(1, hf.config.hidden_size), "v_head.summary.bias": torch.randn(1)},
             path / "value_head.bin")
  ppm = convert.load_ppm(path)
  convert.save_ppm(ppm, tmp_path / "out", value_head_format=first)
  new_weight = np.random.default_rng(3).normal(size=(1, hf.config.hidden_size)).astype(np.float32)
  ppm.value_head.kernel[...] = jnp.asarray(new_weight.T)
  convert.save_ppm(ppm, tmp_path / "out", value_head_format=second)
  # The file just written, read by its own reader (torch for the official value_head.bin), holds the new head; an
  # earlier export's head in the other format stayed beside it and load_ppm read that one (it prefers safetensors).
  if second == "bin":
    written = torch.load(tmp_path / "out" / "value_head.bin", weights_only=True)["v_head.summary.weight"].numpy()
  else:
    written = load_file(tmp_path / "out" / "value_head.safetensors")["v_head.summary.weight"]
  np.testing.assert_array_equal(written, new_weight)
  np.testing.assert_array_equal(np.asarray(convert.load_ppm(tmp_path / "out").value_head.kernel[...]).T, new_weight)
  assert not (tmp_path / "out" / f"value_head.{first}").exists()


def test_an_export_failing_before_its_value_head_leaves_no_earlier_head_beside_the_new_backbone(
    hf_qwen2_factory, tmp_path, monkeypatch):
  # A full disk while writing value_head.bin left the earlier export's head beside the new backbone: the official
  # rm_engine (torch.load of value_head.bin, the backbone from the dir) scored with a head trained for another model.
  out, heads, embeds = tmp_path / "out", [], []
  for seed in (0, 1):
    path, hf = hf_qwen2_factory(f"ppm{seed}", seed=seed)
    heads.append({"v_head.summary.weight": torch.randn(1, hf.config.hidden_size),
                  "v_head.summary.bias": torch.randn(1)})
    torch.save(heads[-1], path / "value_head.bin")
    embeds.append(hf.model.embed_tokens.weight.detach().numpy())
  convert.save_ppm(convert.load_ppm(tmp_path / "ppm0"), out)

  def disk_full(path, tensors):
    raise OSError(errno.ENOSPC, "No space left on device", path)

  monkeypatch.setattr(convert, "write_torch_bin", disk_full)
  with pytest.raises(OSError, match="No space left"):
    convert.save_ppm(convert.load_ppm(tmp_path / "ppm1"), out)
  backbone = load_file(out / "model.safetensors")["model.embed_tokens.weight"]
  which = [i for i, embed in enumerate(embeds) if np.array_equal(backbone, embed)]
  assert which, "the backbone written is neither model's"
  if (out / "value_head.bin").exists():  # a head beside the backbone must be that model's
    head = torch.load(out / "value_head.bin", weights_only=True)
    for key, value in heads[which[0]].items():
      assert torch.equal(head[key], value), key


def test_last_token_index_and_transforms():
  mask = jnp.array([[0, 0, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], bool)
  np.testing.assert_array_equal(np.asarray(last_token_index(mask)), [3, 2, 0])
  raw = jnp.array([-10.0, 0.0, 5.0])
  np.testing.assert_allclose(np.asarray(value_transform(raw, "tanh5")), np.tanh(np.array([-2.0, 0.0, 1.0])),
                             rtol=1e-6)
  with pytest.raises(ValueError):
    value_transform(raw, "sigmoid")


@pytest.mark.parametrize("tied", [False, True])
def test_saving_a_model_with_the_other_kinds_writer_is_named(hf_qwen2_factory, tmp_path, tied):
  # save_ppm(policy) failed as KeyError 'value_head'; save_qwen2(ppm) as KeyError 'lm_head' (untied), or, tied, wrote
  # the PPM's backbone as a policy without its value head and without an error.
  path, _ = hf_qwen2_factory(tie_word_embeddings=tied)
  policy = convert.load_qwen2(path)
  head = {"v_head.summary.weight": torch.randn(1, policy.config.hidden_size), "v_head.summary.bias": torch.randn(1)}
  torch.save(head, path / "value_head.bin")
  ppm = convert.load_ppm(path)
  with pytest.raises(TypeError, match=r"save_ppm writes a PPM, got Qwen2 \(save_qwen2 writes a Qwen2 policy\)"):
    convert.save_ppm(policy, tmp_path / "ppm")
  with pytest.raises(TypeError, match=r"save_qwen2 writes a Qwen2 policy, got PPM \(save_ppm writes a PPM\)"):
    convert.save_qwen2(ppm, tmp_path / "policy")
  assert not (tmp_path / "policy" / "config.json").exists()


def test_dropout_keys_that_are_not_one_per_row_are_refused():
  # One key for a batch of 3 broadcast its mask to every row (each row dropped the same hidden units, unlike the
  # official nn.Dropout's independent elements); a rate outside [0, 1) scaled by 1 / (1 - rate) <= 0 or > 1 silently.
  ppm = PPM(ModelConfig.tiny(num_layers=1), rngs=nnx.Rngs(0))
  tokens = jnp.ones((3, 4), jnp.int32)
  mask = jnp.ones((3, 4), bool)
  args = (tokens, default_positions(mask), mask)
  with pytest.raises(ValueError, match=r"dropout_keys must hold one PRNG key per row \(3\), got shape \(1,\)"):
    ppm(*args, dropout_rate=0.1, dropout_keys=jax.random.split(jax.random.key(0), 1))
  with pytest.raises(ValueError, match=r"one PRNG key per row \(2\), got shape \(2,\)"):  # one raw uint32 key
    ppm(tokens[:2], args[1][:2], mask[:2], dropout_rate=0.1, dropout_keys=jax.random.PRNGKey(0))
  for rate in (1.0, -0.1):
    with pytest.raises(ValueError, match=rf"dropout_rate must be in \[0, 1\), got {rate}"):
      ppm(*args, dropout_rate=rate, dropout_keys=jax.random.split(jax.random.key(0), 3))
  # Independent rows: with keys per row, rows of the same input get different values.
  values = ppm(*args, dropout_rate=0.5, dropout_keys=jax.random.split(jax.random.key(0), 3))
  assert len(set(np.asarray(values).tolist())) == 3


def test_a_dir_with_two_different_value_heads_is_refused_and_two_equal_ones_load(hf_qwen2_factory, tmp_path):
  # The official `save_rm.py` writing value_head.bin into a folder that held our export's value_head.safetensors:
  # the official rm_engine scores with value_head.bin, and we read the stale .safetensors head instead.
  from rstar_jax.models.tensor_files import write_safetensors
  path, hf = hf_qwen2_factory()
  rng = np.random.default_rng(0)
  stale, new = (rng.normal(size=(1, hf.config.hidden_size)).astype(np.float32) for _ in range(2))
  write_safetensors(path / "value_head.safetensors", {"v_head.summary.weight": stale,
                                                      "v_head.summary.bias": np.zeros(1, np.float32)})
  torch.save({"v_head.summary.weight": torch.from_numpy(new), "v_head.summary.bias": torch.zeros(1)},
             path / "value_head.bin")
  official = torch.load(path / "value_head.bin", weights_only=True)["v_head.summary.weight"].numpy()
  try:
    kernel = np.asarray(convert.load_ppm(path).value_head.kernel[...]).T
  except ValueError as e:
    assert "value_head.bin" in str(e) and "value_head.safetensors" in str(e)
  else:
    np.testing.assert_array_equal(kernel, official)
  torch.save({"v_head.summary.weight": torch.from_numpy(stale), "v_head.summary.bias": torch.zeros(1)},
             path / "value_head.bin")  # the same head in both formats loads
  np.testing.assert_array_equal(np.asarray(convert.load_ppm(path).value_head.kernel[...]).T, stale)


# vLLM 0.6.6.post1 (the version rStar pins), `LLM(model=ppm_dir, task="reward")` as rStar's `rm_engine` runs it: the
# registry maps `Qwen2Model` to `Qwen2EmbeddingModel`, a pooling model whose own pooler (MEAN, normalized) the reward
# task keeps, and `Qwen2ForCausalLM` through `as_reward_model` to ALL pooling without normalization, skipping every
# `lm_head.` tensor (vllm/model_executor/models/registry.py, adapters.py, model_loader/utils.py).
_VLLM_REWARD_POOLING = {"Qwen2Model": "mean-normalized", "Qwen2ForCausalLM": "all"}


def _vllm_reward_output(ppm_dir, hidden: torch.Tensor) -> torch.Tensor:
  """`output.outputs.data` of vLLM's reward task for one sequence with last hidden states `hidden` [T, D]."""
  import json  # pylint: disable=g-import-not-at-top
  with open(ppm_dir / "config.json") as f:
    (architecture,) = json.load(f)["architectures"]
  if _VLLM_REWARD_POOLING[architecture] == "all":
    return hidden  # [T, D]
  return torch.nn.functional.normalize(hidden.mean(0), dim=-1)  # [D]


@pytest.mark.parametrize("tied", [True, False])
def test_an_exported_ppm_scores_in_the_official_vllm_reward_engine(hf_qwen2_factory, tmp_path, tied):
  # rStar's `rm_generate` applies its value head to `output.outputs.data[-1]`: the last token's hidden state under
  # the per-token pooling. Untied PPMs (Qwen2.5-Math-7B) were exported as `Qwen2Model`, which vLLM runs as a mean-pooled
  # normalized embedding model, so `data[-1]` was one number and the value head could not run on it.
  import transformers  # pylint: disable=g-import-not-at-top
  path, _ = hf_qwen2_factory(tie_word_embeddings=tied)
  ppm = PPM(ModelConfig.from_hf_config(path), rngs=nnx.Rngs(3))
  convert.save_ppm(ppm, tmp_path / "ppm")
  backbone = transformers.AutoModel.from_pretrained(tmp_path / "ppm").eval()  # the weights vLLM loads (no lm_head)
  head = torch.load(tmp_path / "ppm" / "value_head.bin", weights_only=True)
  v_head = torch.nn.Linear(backbone.config.hidden_size, 1)
  v_head.load_state_dict({k.replace("v_head.summary.", ""): v for k, v in head.items()})
  tokens = np.random.default_rng(2).integers(0, backbone.config.vocab_size, size=(1, 9))
  with torch.no_grad():
    hidden = backbone(input_ids=torch.tensor(tokens)).last_hidden_state[0]  # [T, D]
    official = v_head(_vllm_reward_output(tmp_path / "ppm", hidden)[-1]).item()
  mask = jnp.ones(tokens.shape, jnp.int32)
  ours = float(ppm(jnp.asarray(tokens), default_positions(mask), mask)[0])
  np.testing.assert_allclose(ours, official, atol=1e-5, rtol=0)
