"""SFT train-step benchmark: rstar-jax vs torch + transformers on the same model, batch and AdamW (fp32).

Both sides start from the same random Hugging Face Qwen2 checkpoint (ours loads it through the converter),
train on the same token batch with AdamW (lr 1e-5, weight decay 0.1, clipping 1.0), and are timed in
alternating rounds after warm-up (the best round of each side is reported, so background load on a shared
machine hurts both alike). The first-step losses are printed side by side as a sanity check.
`--compute-dtype bfloat16` runs both sides in bf16 from fp32 weights (torch under `torch.autocast`).

Model FLOPs per step use the usual count: 6 x (non-embedding parameters + LM head) per trained token, plus
attention scores and values (`12 x layers x heads x head_dim x T` per token, no causal discount). MFU is
that rate over the matmul ceiling measured in the same run (a large square `jnp.dot` in the compute dtype: a
bf16 step against an fp32 ceiling would overstate its MFU by the bf16/fp32 peak ratio, ~2x on a GPU).

Usage:
  python benchmarks/train.py                      # CPU-sized shape (hidden 256, 4 layers, vocab 8192)
  python benchmarks/train.py --shape 0.5b --batch 8 --seq 1024 --no-torch   # Qwen2.5-0.5B shape (GPU/TPU)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

SHAPES = {
    "small": dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}
LR, WD, CLIP = 1e-5, 0.1, 1.0


def model_flops_per_step(shape: dict, batch: int, seq: int) -> float:
  d, f, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
  heads, kv = shape["num_attention_heads"], shape["num_key_value_heads"]
  head_dim = d // heads
  attn_params = d * heads * head_dim * 2 + d * kv * head_dim * 2
  dense = layers * (attn_params + 3 * d * f) + shape["vocab_size"] * d  # + the LM head matmul
  tokens = batch * seq
  return 6.0 * dense * tokens + 12.0 * layers * heads * head_dim * seq * tokens


def matmul_ceiling(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
  """Best observed FLOP/s of an `n x n` @ `n x n` jnp.dot in `dtype` on the default device."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  dot = jax.jit(lambda x, y: x @ y)
  dot(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    dot(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def make_checkpoint(shape: dict, path: pathlib.Path):
  import torch
  import transformers
  torch.manual_seed(0)
  config = transformers.Qwen2Config(**shape, max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1e4,
                                    torch_dtype="float32")
  model = transformers.Qwen2ForCausalLM(config)
  model.save_pretrained(path, safe_serialization=True)
  return model


def make_batch(vocab: int, batch: int, seq: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  ids = rng.integers(0, vocab, (batch, seq + 1)).astype(np.int32)
  loss_mask = np.ones((batch, seq), np.float32)
  loss_mask[:, :seq // 4] = 0  # a prompt quarter, masked as in SFT
  loss_mask[:, -1] = 0  # torch sees T tokens, so it cannot score the last target: count the same targets
  return {"tokens": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": loss_mask,
          "input_mask": np.ones((batch, seq), bool), "positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1))}


def jax_runner(path: pathlib.Path, batch: dict, compute_dtype: str, remat: bool):
  """Builds the jitted step; returns (run(n) -> seconds per step, first-step loss, compile seconds)."""
  import jax
  from rstar_jax import sharding
  from rstar_jax.models import ModelConfig, convert
  from rstar_jax.train import optimizer, state as state_lib, steps as steps_lib
  config = ModelConfig.from_hf_config(path, param_dtype="float32", dtype=compute_dtype)
  mesh = sharding.make_mesh(1, -1, 1)
  model = convert.load_qwen2(path, config, mesh=mesh)
  model.model.remat = remat
  graphdef, params = state_lib.split_params(model)
  tx = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=LR, weight_decay=WD, max_grad_norm=CLIP,
                                                          schedule="constant"), 1)
  shardings = state_lib.state_shardings(params, tx, mesh)
  holder = {"state": state_lib.create_state(params, tx, mesh)}
  del model, params
  step = steps_lib.jit_train_step(steps_lib.make_train_step(steps_lib.sft_loss_fn(graphdef), tx, mesh,
                                                            accum_steps=1, count_key="num_tokens"), shardings, mesh)
  device_batch = steps_lib.put_batch(batch, mesh)
  t = time.perf_counter()
  holder["state"], metrics = step(holder["state"], device_batch)
  first_loss = float(metrics["loss"])
  compile_s = time.perf_counter() - t

  def run(n: int) -> float:
    jax.block_until_ready(holder["state"])
    t = time.perf_counter()
    for _ in range(n):
      holder["state"], _ = step(holder["state"], device_batch)
    jax.block_until_ready(holder["state"])
    return (time.perf_counter() - t) / n

  return run, first_loss, compile_s


def torch_runner(model, batch: dict, compute_dtype: str = "float32"):
  """Same for torch + transformers: (run(n) -> seconds per step, first-step loss).

  `compute_dtype` as ours: fp32 weights and optimizer state either way; "bfloat16" runs the forward and backward
  under `torch.autocast` (bf16 matmuls), as our model computes in bf16 from fp32 parameters.
  """
  import contextlib
  import torch
  if compute_dtype == "float32":
    autocast = contextlib.nullcontext
  elif compute_dtype == "bfloat16":
    autocast = functools.partial(torch.autocast, device_type="cpu", dtype=torch.bfloat16)
  else:
    raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}")
  model.train()
  decay = [p for n, p in model.named_parameters() if not ("bias" in n or "norm" in n)]
  no_decay = [p for n, p in model.named_parameters() if "bias" in n or "norm" in n]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}], lr=LR)
  seq = batch["tokens"].shape[1]
  input_ids = torch.tensor(batch["tokens"], dtype=torch.long)
  # HF shifts labels itself: label t+1 = target t; the last target is masked on the jax side too.
  labels = torch.tensor(np.concatenate([np.full((len(input_ids), 1), -100),
                                        np.where(batch["loss_mask"] > 0, batch["targets"], -100)[:, :seq - 1]], 1))

  def one_step() -> float:
    with autocast():
      out = model(input_ids=input_ids, labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.loss.item()

  first_loss = one_step()

  def run(n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
      one_step()
    return (time.perf_counter() - t) / n

  return run, first_loss


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
  parser.add_argument("--rounds", type=int, default=3, help="alternating jax/torch timing rounds (best kept)")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--no-torch", action="store_true", help="skip the torch side (e.g. on TPU)")
  args = parser.parse_args(argv)
  for flag, value, least in (("--batch", args.batch, 1), ("--seq", args.seq, 2), ("--steps", args.steps, 1),
                             ("--rounds", args.rounds, 1), ("--warmup", args.warmup, 0)):
    if value < least:
      parser.error(f"{flag} must be >= {least}, got {value}")

  import jax
  shape = SHAPES[args.shape]
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp)
    hf_model = make_checkpoint(shape, path)
    batch = make_batch(shape["vocab_size"], args.batch, args.seq)
    ceiling = matmul_ceiling(dtype=args.compute_dtype)
    run_jax, jax_loss, compile_s = jax_runner(path, batch, args.compute_dtype, args.remat)
    run_torch = torch_loss = None
    if not args.no_torch:
      import torch
      torch.set_num_threads(os.cpu_count() or 1)
      run_torch, torch_loss = torch_runner(hf_model, batch, args.compute_dtype)
    # Warm up, then alternate timed rounds so both sides see the same background load; keep each side's best.
    jax_times, torch_times = [], []
    if args.warmup:  # run(0) would divide by zero steps
      run_jax(args.warmup)
      if run_torch:
        run_torch(args.warmup)
    for _ in range(args.rounds):
      jax_times.append(run_jax(args.steps))
      if run_torch:
        torch_times.append(run_torch(args.steps))
  jax_s = min(jax_times)
  torch_s = min(torch_times) if torch_times else None
  tokens = args.batch * args.seq
  flops = model_flops_per_step(shape, args.batch, args.seq)
  result = {
      "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind} x{jax.device_count()}",
      "shape": args.shape, "batch": args.batch, "seq": args.seq, "compute_dtype": args.compute_dtype,
      "jax_step_s": jax_s, "jax_tokens_per_s": tokens / jax_s, "jax_compile_s": compile_s,
      "torch_step_s": torch_s, "torch_tokens_per_s": None if torch_s is None else tokens / torch_s,
      "speedup_vs_torch": None if torch_s is None else torch_s / jax_s,
      "model_tflops_per_step": flops / 1e12, "matmul_ceiling_tflops": ceiling / 1e12,
      "jax_mfu": flops / jax_s / ceiling, "torch_mfu": None if torch_s is None else flops / torch_s / ceiling,
      "first_loss_jax": jax_loss, "first_loss_torch": torch_loss,
      "jax_round_step_s": jax_times, "torch_round_step_s": torch_times,
  }
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
