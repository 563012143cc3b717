"""Prefill throughput: our jitted Flax Qwen2 forward vs the torch (`transformers`) forward of the same weights.

Both in fp32 on the same batch, in one process; prints tokens/s for each and the ratio (ours / torch).

  python benchmarks/forward.py                 # ~60M config and the 0.5B shape
  python benchmarks/forward.py --configs 60m   # one config
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

CONFIGS = {
    # ~63M parameters: vocab 32000, hidden 512, 12 layers, 8 heads / 4 kv heads, MLP 2048.
    "60m": dict(vocab_size=32000, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True),
    # The Qwen2.5-0.5B shape with a 32000 vocab (hidden 896, 24 layers, 14 heads, 2 kv heads, MLP 4864).
    "0.5b": dict(vocab_size=32000, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}


def _time(fn, repeats: int) -> float:
  """Median wall time of `fn()` over `repeats` runs after one warm-up."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def bench(name: str, batch: int, length: int, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  import torch
  import transformers
  from flax import nnx

  from rstar_jax.models import convert, default_positions

  hf_config = transformers.Qwen2Config(max_position_embeddings=4096, **CONFIGS[name])
  torch.manual_seed(0)
  reference = transformers.Qwen2ForCausalLM(hf_config).eval()
  with tempfile.TemporaryDirectory() as tmp:
    reference.save_pretrained(tmp)
    model = convert.load_qwen2(tmp)
  params = sum(p.numel() for p in reference.parameters())

  rng = np.random.default_rng(0)
  tokens = rng.integers(0, hf_config.vocab_size, (batch, length))
  mask = np.ones((batch, length), bool)
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, tokens, mask):
    return nnx.merge(graphdef, state)(tokens, default_positions(mask), mask).logits

  tokens_j, mask_j = jnp.asarray(tokens), jnp.asarray(mask)
  ours = _time(lambda: forward(state, tokens_j, mask_j).block_until_ready(), repeats)
  tokens_t, mask_t = torch.tensor(tokens), torch.tensor(mask.astype(np.int64))

  def torch_forward():
    with torch.inference_mode():
      return reference(input_ids=tokens_t, attention_mask=mask_t).logits

  theirs = _time(torch_forward, repeats)
  diff = float(np.max(np.abs(np.asarray(forward(state, tokens_j, mask_j)) - torch_forward().numpy())))
  n = batch * length
  return dict(config=name, params=params, batch=batch, length=length, ours_tok_s=n / ours, torch_tok_s=n / theirs,
              ratio=theirs / ours, max_abs_logit_diff=diff)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default="60m,0.5b", help=f"comma-separated, of: {', '.join(CONFIGS)}")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  # Checked before any work: an unknown config failed (KeyError) only after the ones before it had run, and
  # --repeats 0 printed NaN rates (the median of no runs).
  unknown = [name for name in args.configs.split(",") if name not in CONFIGS]
  if unknown:
    parser.error(f"--configs: unknown {', '.join(map(repr, unknown))} (known: {', '.join(CONFIGS)})")
  for flag, value in (("--batch", args.batch), ("--length", args.length), ("--repeats", args.repeats)):
    if value < 1:
      parser.error(f"{flag} must be >= 1, got {value}")
  import jax
  import torch
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} | torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) | cpus {os.cpu_count()} | fp32")
  print(f"{'config':>6} {'params':>11} {'batch x len':>11} {'ours tok/s':>11} {'torch tok/s':>12} {'ratio':>6} "
        f"{'max|dlogit|':>11}")
  for name in args.configs.split(","):
    r = bench(name, args.batch, args.length, args.repeats)
    print(f"{r['config']:>6} {r['params']:>11,} {r['batch']:>5} x {r['length']:<4} {r['ours_tok_s']:>11,.0f} "
          f"{r['torch_tok_s']:>12,.0f} {r['ratio']:>5.2f}x {r['max_abs_logit_diff']:>11.2e}", flush=True)


if __name__ == "__main__":
  main()
