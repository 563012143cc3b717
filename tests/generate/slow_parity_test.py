"""Longer greedy parity on other model shapes (untied LM head, 7 query heads per kv head, 3 layers), slow."""

import numpy as np
import pytest
import torch
import transformers
from generate_helpers import left_pad, random_prompts, tiny_hf_config

from rstar_jax.generate import Engine, Greedy, Request
from rstar_jax.models import convert


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    dict(tie_word_embeddings=False, num_attention_heads=4, num_key_value_heads=4, rope_theta=1e6),
    dict(hidden_size=56, num_attention_heads=7, num_key_value_heads=1, num_hidden_layers=3, intermediate_size=97),
], ids=["untied_mha", "gqa7_3layers"])
def test_greedy_parity_other_shapes(tmp_path, overrides):
  torch.manual_seed(3)
  hf = transformers.Qwen2ForCausalLM(tiny_hf_config(**overrides)).eval()
  hf.save_pretrained(tmp_path)
  prompts = random_prompts(seed=4, count=21, low=1, high=90)
  ids, mask = left_pad(prompts)
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                      max_new_tokens=64, min_new_tokens=64, pad_token_id=0, eos_token_id=None)
  ref = ref[:, ids.shape[1]:].numpy()
  results = Engine(convert.load_qwen2(tmp_path), eos_ids=()).generate([Request(p) for p in prompts], Greedy(),
                                                                      max_new_tokens=64)
  np.testing.assert_array_equal(np.array([r.token_ids for (r,) in results]), ref)
