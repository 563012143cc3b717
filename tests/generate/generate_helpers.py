"""Shared references for the generation tests: a tiny random `transformers` Qwen2, the Qwen2.5 tokenizer, HF greedy.

Built once per test process (module-level caches) because compiling and building them dominates the test time.
The tiny model uses `initializer_range=0.3` so its greedy continuations are varied (with HF's default 0.02 a random
model repeats one token) and its next-token distributions are peaked enough for top-k / top-p to bite.
"""

from __future__ import annotations

import atexit
import functools
import json
import pathlib
import shutil
import tempfile

import numpy as np
import torch
import transformers

from rstar_jax.generate import Buckets
from rstar_jax.models import convert
from rstar_jax.tokenizer import load_tokenizer

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
QWEN_TOKENIZER = SHARED_DATA / "qwen2.5-tokenizer"
VOCAB = 512
# Coarse length buckets: every test prompt (< 64 tokens) lands in one bucket, so tests share compiled programs.
TEST_BUCKETS = Buckets(min_length=64)


@functools.cache
def _tmp_root() -> pathlib.Path:
  root = pathlib.Path(tempfile.mkdtemp(prefix="rstar_generate_test_"))
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  return root


def tiny_hf_config(**kw) -> transformers.Qwen2Config:
  fields = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=1024, initializer_range=0.3,
                rope_theta=1e4)
  fields.update(kw)
  return transformers.Qwen2Config(**fields)


@functools.cache
def tiny_hf() -> tuple[pathlib.Path, transformers.Qwen2ForCausalLM]:
  """A random fp32 `Qwen2ForCausalLM` of the tiny shape, saved to disk."""
  torch.manual_seed(0)
  model = transformers.Qwen2ForCausalLM(tiny_hf_config()).eval()
  with torch.no_grad():  # non-trivial biases and norms
    for name, p in model.named_parameters():
      if "bias" in name or "norm" in name:
        p.add_(torch.randn_like(p) * 0.1)
  path = _tmp_root() / "tiny"
  model.save_pretrained(path)
  return path, model


def load_tiny(**kw):
  return convert.load_qwen2(tiny_hf()[0], **kw)


@functools.cache
def tiny_ppm_dir() -> tuple[pathlib.Path, np.ndarray, np.ndarray]:
  """The tiny HF model as a PPM backbone plus a random `value_head.bin` -> (dir, weight [1, D], bias [1])."""
  path = _tmp_root() / "tiny_ppm"
  shutil.copytree(tiny_hf()[0], path, dirs_exist_ok=True)
  gen = torch.Generator().manual_seed(1)
  weight, bias = torch.randn(1, 64, generator=gen) * 0.3, torch.randn(1, generator=gen)
  torch.save({"v_head.summary.weight": weight, "v_head.summary.bias": bias}, path / "value_head.bin")
  return path, weight.numpy(), bias.numpy()


def hf_values(prompts: list[list[int]]) -> np.ndarray:
  """Reference PPM values: the HF model's final hidden state at each prompt's last token, through the head."""
  _, model = tiny_hf()
  _, weight, bias = tiny_ppm_dir()
  out = []
  with torch.no_grad():
    for p in prompts:
      hidden = model(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states[-1][0, -1].numpy()
      out.append(hidden @ weight[0] + bias[0])
  return np.asarray(out, np.float32)


def hf_token_logprobs(context: list[int], continuation: list[int]) -> np.ndarray:
  """Reference log p(continuation[t] | context + continuation[:t]) `[len(continuation)]`."""
  _, model = tiny_hf()
  full = context + continuation
  with torch.no_grad():
    logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].double(), -1).numpy()
  return np.asarray([logp[len(context) - 1 + t, tok] for t, tok in enumerate(continuation)])


# Special tokens of the tiny tokenizer, at ids VOCAB - len(SPECIAL_TOKENS) .. VOCAB - 1.
SPECIAL_TOKENS = ("<|endoftext|>", "<end_of_step>", "<end_of_code>", "<end_of_answer>", "<code>", "<output>",
                  "<end_of_output>", "<answer>", "<|user|>", "<|assistant|>")


@functools.cache
def tiny_tokenizer_dir() -> pathlib.Path:
  """A 512-id byte-level BPE tokenizer cut from the real Qwen2.5 one (same bytes, merges, regex and decoder).

  Ids < 502 are Qwen2.5's first 502 tokens (the 256 bytes and the earliest merges), so random tiny-model ids decode
  to real byte-level text, partial UTF-8 included; ids 502..511 are special tokens (EOS and rStar step tags).
  Small enough for HF's `StopStringCriteria` to index quickly.
  """
  data = json.loads((QWEN_TOKENIZER / "tokenizer.json").read_text())
  base = VOCAB - len(SPECIAL_TOKENS)
  vocab = {t: i for t, i in data["model"]["vocab"].items() if i < base}
  assert len(vocab) == base
  data["model"]["vocab"] = vocab
  data["model"]["merges"] = [m for m in data["model"]["merges"]
                             if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
  data["added_tokens"] = [dict(id=base + k, content=t, single_word=False, lstrip=False, rstrip=False,
                               normalized=False, special=True) for k, t in enumerate(SPECIAL_TOKENS)]
  path = _tmp_root() / "tiny_tokenizer"
  path.mkdir(exist_ok=True)
  (path / "tokenizer.json").write_text(json.dumps(data))
  config = dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token=None, add_bos_token=False,
                clean_up_tokenization_spaces=False, model_max_length=1024, tokenizer_class="Qwen2Tokenizer")
  (path / "tokenizer_config.json").write_text(json.dumps(config))
  return path


@functools.cache
def tiny_tokenizer():
  return load_tokenizer(tiny_tokenizer_dir())


@functools.cache
def hf_tiny_tokenizer():
  return transformers.AutoTokenizer.from_pretrained(tiny_tokenizer_dir())


def random_prompts(seed: int, count: int, low: int, high: int) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(0, VOCAB, int(rng.integers(low, high + 1))).tolist() for _ in range(count)]


def left_pad(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
  width = max(map(len, prompts))
  ids = np.zeros((len(prompts), width), np.int64)
  mask = np.zeros((len(prompts), width), np.int64)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):] = p
    mask[i, width - len(p):] = 1
  return ids, mask


def hf_generate(prompts: list[list[int]], max_new_tokens: int, *, eos: int | None = None, pad: int = 0,
                stop_strings: list[str] | None = None) -> np.ndarray:
  """`transformers` greedy generation of one left-padded batch -> new tokens `[N, <= max_new_tokens]`."""
  _, model = tiny_hf()
  ids, mask = left_pad(prompts)
  kwargs = dict(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
  if eos is None:
    kwargs["min_new_tokens"] = max_new_tokens
  if stop_strings:
    kwargs.update(stop_strings=stop_strings, tokenizer=hf_tiny_tokenizer())
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs)
  return out[:, ids.shape[1]:].numpy()


def hf_next_token_logits(prompt: list[int]) -> np.ndarray:
  """`[V]` float32 logits of the token after `prompt`."""
  _, model = tiny_hf()
  with torch.no_grad():
    return model(input_ids=torch.tensor([prompt])).logits[0, -1].numpy()


class CachedHFGreedy:
  """transformers greedy continuations of single unpadded prompts (no EOS, exactly `count` tokens) with the float64
  log-probs of their tokens under a forward pass, cached per prompt (a longer continuation serves shorter ones:
  greedy decoding extends its own prefixes)."""

  def __init__(self, model):
    self.model = model
    self._cache = {}

  def __call__(self, prompt, count):
    """`(tokens [count], log-probs [count])` of the greedy continuation of `prompt`."""
    key = tuple(prompt)
    if len(self._cache.get(key, ((),))[0]) < count:
      with torch.no_grad():
        ids = torch.tensor([list(prompt)])
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=count, min_new_tokens=count, pad_token_id=0, eos_token_id=None)
        tokens = out[0, len(prompt):].tolist()
        logp = torch.log_softmax(self.model(input_ids=torch.tensor([list(prompt) + tokens])).logits[0].double(), -1)
      self._cache[key] = tokens, np.asarray([logp[len(prompt) - 1 + t, x] for t, x in enumerate(tokens)])
    tokens, logp = self._cache[key]
    return tokens[:count], logp[:count]


def emitted_text(tok, tokens):
  """`tok.decode(tokens)` as vLLM's incremental detokenizer has emitted it: a text ending in U+FFFD (an unfinished
  character) is held back, so it is the text of the longest prefix of `tokens` whose text does not end there."""
  tokens = list(tokens)
  while tokens and tok.decode(tokens).endswith("\ufffd"):
    tokens = tokens[:-1]
  return tok.decode(tokens)


def plain_stop_rules(prompt, tokens, logprobs, limit, eos, stops):
  """The reference cut, written from the rules alone: scan the generated tokens one at a time; an EOS id ends the row
  ("eos", the EOS token kept, its text not searched), else the first token after which the continuation text holds a
  stop ends it (text up to the earliest stop, ties to the longer; later tokens discarded), else "length"."""
  tok = hf_tiny_tokenizer()
  prompt_text = tok.decode(prompt)

  def text_of(ts):
    # vLLM's incremental detokenizer holds back a text ending in U+FFFD (bytes of an unfinished character): the text
    # is that of the longest prefix of the tokens whose text does not end there.
    while ts:
      full = tok.decode(prompt + ts)
      # A prompt ending inside a character the continuation completes: the new tokens decoded alone (as
      # `batch_decode(output[:, len(prompt):])`; the engine's documented choice, see `stops.RowText.of`).
      text = full[len(prompt_text):] if full.startswith(prompt_text) else tok.decode(ts)
      if not text.endswith("\ufffd"):
        return text
      ts = ts[:-1]
    return ""

  tokens = tokens[:max(limit, 0)]
  for t in range(1, len(tokens) + 1):
    if tokens[t - 1] in eos:
      return text_of(tokens[:t - 1]), "eos", tuple(tokens[:t]), float(np.sum(logprobs[:t]))
    text = text_of(tokens[:t])
    hits = [(text.find(s), -len(s), s) for s in stops if s in text]
    if hits:
      start, _, s = min(hits)
      return text[:start], s, tuple(tokens[:t]), float(np.sum(logprobs[:t]))
  return text_of(tokens), "length", tuple(tokens), float(np.sum(logprobs[:len(tokens)]))
