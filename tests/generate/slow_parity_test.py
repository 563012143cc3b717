"""Longer greedy parity on other model shapes (untied LM head, 7 query heads per kv head, 3 layers) and on prompts of
thousands of tokens, slow."""

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


@pytest.mark.slow
def test_long_contexts_match_transformers_up_to_the_last_position(tmp_path):
  """Prompts of thousands of tokens (the parity tests above and in greedy_parity_test stay under 100): a 4080-token
  prompt whose greedy steps reach position 4095 of the model's 4096 (Qwen2.5's rope_theta 1e6), two samples of it
  (one prefill forked), a prompt sharing its first 2500 tokens, and a 5-token prompt left-padded by thousands of slots
  in the same batch; then continuation log-likelihoods and PPM values behind a long shared prefix. Reference:
  `transformers` greedy generation and forward passes of each unpadded sequence."""
  torch.manual_seed(5)
  hf = transformers.Qwen2ForCausalLM(tiny_hf_config(max_position_embeddings=4096, rope_theta=1e6,
                                                    initializer_range=0.1)).eval()
  with torch.no_grad():  # non-trivial biases and norms
    for name, p in hf.named_parameters():
      if "bias" in name or "norm" in name:
        p.add_(torch.randn_like(p) * 0.1)
  hf.save_pretrained(tmp_path)
  rng = np.random.default_rng(6)
  long = rng.integers(0, 512, 4080).tolist()
  prompts = [long, long[:2500] + [7, 8, 9], long[:5]]
  engine = Engine(convert.load_qwen2(tmp_path), eos_ids=())
  results = engine.generate([Request(prompts[0], n=2), Request(prompts[1]), Request(prompts[2])], Greedy(),
                            max_new_tokens=16)
  assert engine.stats["batches"][0]["shared"] is not None  # the long prefix was prefilled once, then forked
  for prompt, row in zip(prompts, results):
    with torch.no_grad():
      ids = torch.tensor([prompt])
      ref = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16,
                        min_new_tokens=16, pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
    for res in row:
      assert list(res.token_ids) == ref, len(prompt)

  def hf_forward(tokens):
    with torch.no_grad():
      return hf(input_ids=torch.tensor([tokens]), output_hidden_states=True)

  contexts = [long[:3000], long[:3000], long[:1200], long[:3]]
  continuations = [long[3000:3040], rng.integers(0, 512, 7).tolist(), long[1200:1201], [4, 5]]
  for c, x, got in zip(contexts, continuations, engine.loglikelihood(contexts, continuations)):
    logp = torch.log_softmax(hf_forward(c + x).logits[0].double(), -1).numpy()
    np.testing.assert_allclose(got, [logp[len(c) - 1 + t, y] for t, y in enumerate(x)], atol=1e-4)

  gen = torch.Generator().manual_seed(7)
  weight, bias = torch.randn(1, 64, generator=gen) * 0.3, torch.randn(1, generator=gen)
  torch.save({"v_head.summary.weight": weight, "v_head.summary.bias": bias}, tmp_path / "value_head.bin")
  texts = [long[:3500], long[:3500] + [11], long[:3500] + [12, 13], long[:2]]
  values = Engine(convert.load_ppm(tmp_path)).values(texts)
  want = [hf_forward(t).hidden_states[-1][0, -1].numpy() @ weight[0].numpy() + bias.item() for t in texts]
  np.testing.assert_allclose(values, want, atol=1e-4)
