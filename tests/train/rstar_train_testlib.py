"""Helpers shared by the training tests: tiny HF Qwen2 checkpoints, a tiny tokenizer for them, SFT and PPM data."""

from __future__ import annotations

import json
import os
import pathlib
import random

import numpy as np
import torch
import transformers

from rstar_jax.data import formats

EOS = "<|endoftext|>"


def tiny_hf_model(path: pathlib.Path, *, vocab_size: int = 512, tie: bool = True, seed: int = 0,
                  hidden: int = 64, layers: int = 2) -> transformers.Qwen2ForCausalLM:
  """A random-init `transformers` Qwen2 saved as an HF dir (float32 safetensors) at `path`."""
  torch.manual_seed(seed)
  config = transformers.Qwen2Config(
      vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6,
      tie_word_embeddings=tie, rope_theta=10000.0, torch_dtype="float32")
  model = transformers.Qwen2ForCausalLM(config).eval()
  model.save_pretrained(path, safe_serialization=True)
  return model


def tiny_tokenizer(path: pathlib.Path, texts: list[str], vocab_size: int = 300) -> None:
  """Trains a byte-level BPE on `texts` and writes `tokenizer.json` + `tokenizer_config.json` into `path`.

  Ids stay below `vocab_size` + the special tokens, so they fit a 512-row tiny model with the rStar tags.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  os.makedirs(path, exist_ok=True)
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS, "pad_token": EOS}))


def arithmetic_sft_records(n: int, seed: int = 0) -> list[dict[str, str]]:
  """Small learnable SFT data: the response copies the query's numbers in a fixed code template."""
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    out.append({"query": f"add {a} and {b}",
                "response": f"<code>\nx = {a} + {b}\n<end_of_step>\nprint(x)\n<end_of_code>"
                            f"<output>{a + b}<end_of_output><answer>\\boxed{{{a + b}}}<end_of_answer>"})
  return out


def ppm_pairs(n: int, seed: int) -> list:
  """Separable PPM pairs: the preferred step ends in a "# check" comment, the other in "# guess"."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    a, b = (int(v) for v in rng.integers(1, 9, 2))
    prompt = formats.sft_prompt(f"add {a} and {b}") + f"<code>\nx = {a} + {b}\n<end_of_step>"
    out.append(formats.PpmPair(prompt=prompt, pos="\nprint(x) # check\n<end_of_code>",
                               neg=f"\nprint(x + {int(rng.integers(1, 9))}) # guess\n<end_of_code>",
                               pos_count=1, neg_count=int(rng.integers(1, 3))))
  return out


def write_json(path: pathlib.Path, obj) -> pathlib.Path:
  path.write_text(json.dumps(obj))
  return path
