"""Reference models for parity tests: random-init `transformers` Qwen2 checkpoints saved to disk."""

import numpy as np
import pytest
import torch
import transformers


def make_hf_qwen2(path, *, vocab_size=300, hidden_size=64, intermediate_size=112, num_layers=2, num_heads=4,
                  num_kv_heads=2, rope_theta=1e4, tie_word_embeddings=True, seed=0, head_dim=None):
  """Saves a random `transformers.Qwen2ForCausalLM` (weights perturbed so biases and norms are non-trivial)."""
  kwargs = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                rope_theta=rope_theta, tie_word_embeddings=tie_word_embeddings, max_position_embeddings=512)
  if head_dim is not None:
    kwargs["head_dim"] = head_dim
  config = transformers.Qwen2Config(**kwargs)
  torch.manual_seed(seed)
  model = transformers.Qwen2ForCausalLM(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  model.save_pretrained(path)
  return model


def random_padded_batch(rng: np.random.Generator, vocab_size: int, batch: int, length: int):
  """Tokens `[B, T]` and a mask with mixed left padding (row 0 unpadded)."""
  tokens = rng.integers(0, vocab_size, (batch, length))
  mask = np.ones((batch, length), bool)
  for b in range(1, batch):
    mask[b, :rng.integers(1, length - 1)] = False
  return tokens, mask


@pytest.fixture
def hf_qwen2_factory(tmp_path):
  def build(name="hf", **kw):
    path = tmp_path / name
    model = make_hf_qwen2(path, **kw)
    return path, model
  return build
