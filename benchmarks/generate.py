"""Generation benchmark: our engine vs Hugging Face `generate`, same random weights, fp32, greedy, in one process.

  python benchmarks/generate.py                       # tiny + 0.5B shape, batch 1/8/64, prompt 128, 64 new tokens
  python benchmarks/generate.py --shapes tiny --json out.json

For each shape a random `transformers.Qwen2ForCausalLM` is built, saved, and loaded into our model, so both sides
run the same weights. Per batch size: random prompts of exactly `--prompt-len` tokens (no padding), `--new-tokens`
new tokens (no EOS), throughput = batch * new tokens / wall time of the whole call (prefill included, tokenization
excluded). Ours is precompiled first (`Engine.precompile`, so no timed call compiles), then gets one untimed call:
the first execution of the precompiled programs is slower (measured 0.03-0.09 s more on tiny, 0.25-0.5 s with 24
layers, mostly device time), a one-time cost that a single timed run would count. HF gets one untimed warm-up call
on the tiny shape. Then the two sides run interleaved, `--repeats` times on the tiny shape and `--repeats-0p5b`
(default 1: one call takes minutes here) on the 0.5B shape, and the best run of each side counts (on a shared
machine, load spikes hit single runs; every run's figure is kept in the JSON). Token agreement between the two is
reported as a check.

Matmul ceiling: the time of exactly the weight matmuls of one decode step at batch 64 (q/k/v/o, gate/up/down for
every layer, LM head), same shapes and dtype, best of several runs, in the same process. "decode % of ceiling" =
ceiling step time / our measured decode step time at batch 64 (1.0 would mean decoding costs nothing beyond its
matmuls). A large square matmul's rate is reported too, as the machine's peak reference.

Hardware floor: the least time any engine could take for a call on this machine, from figures measured in the same
run: the prefill's FLOPs at the square matmul's rate, plus per decode step the larger of (weights + KV cache read
once, at the best streaming-read bandwidth) and (its FLOPs at the square matmul's rate). "best possible speedup" =
HF's wall time / that floor: a goal above it cannot be met on this machine by any engine.

Decode bandwidth: per decode step, the bytes any engine must read (every weight once, the LM head included, and
the KV cache of the positions so far) over our measured step time, as GB/s and as a share of the streaming-read
rate measured in the same run: how close decoding runs to the memory system at small batch.

HF runs on torch's CUDA device whenever torch sees one (`--hf-device auto`; `cpu` or `cuda:N` to choose). On an
accelerator (`jax.default_backend()` not cpu) the bandwidth and square-matmul references run on the accelerator
(4 GiB read, 8192 square), and HF runs at every batch. `--precision highest` (the default) keeps both sides in
true fp32 (on NVIDIA GPUs both JAX and torch can run fp32 matmuls as TF32 instead; `default` lets each side choose,
JAX's default being TF32 there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rstar_jax.generate import Engine, Greedy, Request  # pylint: disable=g-import-not-at-top,wrong-import-position
from rstar_jax.models import convert  # pylint: disable=g-import-not-at-top,wrong-import-position

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, rope_theta=1e4),
    "0.5b": dict(vocab_size=32000, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, intermediate_size=4864, rope_theta=1e6),
}


def _load() -> str:
  return " ".join(f"{x:.1f}" for x in os.getloadavg())


def on_accelerator() -> bool:
  return jax.default_backend() != "cpu"


def matmul_ceiling(shape: dict, batch: int, repeats: int = 5) -> dict:
  """Time of one decode step's weight matmuls at `batch` rows, and a square matmul's rate."""
  d, f, v, layers = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"], shape["num_hidden_layers"]
  hd = d // shape["num_attention_heads"]
  q, kv = shape["num_attention_heads"] * hd, shape["num_key_value_heads"] * hd
  rng = np.random.default_rng(0)
  dims = [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)]
  # One buffer per layer weight and a Python loop over layers (as the engine runs them): under a scan over stacked
  # weights XLA:CPU would copy each layer's slice first, and the "ceiling" would include those copies.
  weights = [[jnp.asarray(rng.standard_normal((a, b), np.float32) * 0.02) for a, b in dims] for _ in range(layers)]
  embed = jnp.asarray(rng.standard_normal((v, d), np.float32) * 0.02)

  @jax.jit
  def step(x, weights, embed):
    for wq, wk, wv, wo, wg, wu, wd in weights:
      keep = (x @ wk).sum() + (x @ wv).sum()
      x = x + (x @ wq) @ wo + ((x @ wg) * (x @ wu)) @ wd + 0 * keep
    return x @ embed.T

  x = jnp.ones((batch, d), jnp.float32)
  step(x, weights, embed).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    step(x, weights, embed).block_until_ready()
    times.append(time.perf_counter() - t)
  flops = 2 * batch * (layers * sum(a * b for a, b in dims) + v * d)
  # A 2048 square takes a fraction of a millisecond on a GPU, too short to time from the host.
  n = 8192 if on_accelerator() else 2048
  square = jnp.ones((n, n), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  mm(square).block_until_ready()
  sq = []
  for _ in range(3):
    t = time.perf_counter()
    mm(square).block_until_ready()
    sq.append(time.perf_counter() - t)
  return dict(step_s=min(times), gflops=flops / min(times) / 1e9, square_gflops=2 * n**3 / min(sq) / 1e9,
              square_n=n)


def read_bandwidth(megabytes: int = 1024, repeats: int = 3) -> float:
  """Best streaming-read rate in bytes/s over `megabytes` of float32: a jitted sum, and on the CPU also a numpy
  sum (the better of the two: either can be the faster here)."""
  host = not on_accelerator()
  x = np.ones(megabytes * 2**20 // 4, np.float32)
  xj = jnp.asarray(x)
  if not host:
    del x
  total = jax.jit(jnp.sum)
  total(xj).block_until_ready()
  best_s = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    total(xj).block_until_ready()
    best_s = min(best_s, time.perf_counter() - t)
    if host:
      t = time.perf_counter()
      np.add.reduce(x)
      best_s = min(best_s, time.perf_counter() - t)
  return xj.nbytes / best_s


def _dims(shape: dict) -> tuple[int, int, int]:
  """`(layer parameters, query width, key/value width)` of `shape`."""
  d, f, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
  hd = d // shape["num_attention_heads"]
  q, kv = shape["num_attention_heads"] * hd, shape["num_key_value_heads"] * hd
  return layers * (d * q + 2 * d * kv + q * d + 3 * d * f), q, kv


def decode_bytes_per_step(shape: dict, batch: int, prompt_len: int, new_tokens: int) -> float:
  """Mean bytes one fp32 decode step must read: every weight once (tied LM head included) and the KV cache of the
  positions so far (decode step s attends over prompt_len + s positions, s = 1 .. new_tokens - 1)."""
  layer_params, _, kv = _dims(shape)
  weights = layer_params + shape["vocab_size"] * shape["hidden_size"]
  slots = np.arange(1, new_tokens) + prompt_len
  return float(np.mean(4 * (weights + 2 * shape["num_hidden_layers"] * batch * slots * kv)))


def hardware_floor(shape: dict, batch: int, prompt_len: int, new_tokens: int, peak_flops: float,
                   bandwidth: float) -> float:
  """Least seconds for one greedy call on this machine (see the module doc), fp32, tied embeddings."""
  d, v, layers = shape["hidden_size"], shape["vocab_size"], shape["num_hidden_layers"]
  layer_params, q, kv = _dims(shape)
  # Prefill: every layer weight once per token, causal attention (QK and PV over the past), LM head at the last token.
  prefill = 2 * batch * prompt_len * layer_params + 2 * layers * batch * prompt_len**2 * q + 2 * batch * v * d
  prefill_s = prefill / peak_flops
  decode_s = 0.0
  for step in range(1, new_tokens):
    slots = prompt_len + step
    read = 4 * (layer_params + v * d + 2 * layers * batch * slots * kv)
    flops = 2 * batch * (layer_params + v * d) + 4 * layers * batch * slots * q
    decode_s += max(read / bandwidth, flops / peak_flops)
  return prefill_s + decode_s


def time_ours(engine: Engine, requests: list[Request], new_tokens: int) -> dict:
  t = time.perf_counter()
  results = engine.generate(requests, Greedy(), max_new_tokens=new_tokens)
  wall = time.perf_counter() - t
  # The first token comes from the prefill: a call with one new token has no decode step (NaN per step).
  steps = new_tokens - 1
  return dict(wall_s=wall, prefill_s=engine.stats["prefill_s"],
              decode_step_s=engine.stats["decode_s"] / steps if steps else float("nan"),
              tok_s=len(requests) * new_tokens / wall,
              tokens=np.array([r[0].token_ids for r in results]))


def time_hf(model, prompts: np.ndarray, new_tokens: int) -> dict:
  device = next(model.parameters()).device
  ids = torch.tensor(prompts, device=device)
  with torch.inference_mode():
    t = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    tokens = out[:, prompts.shape[1]:].cpu().numpy()  # waits for the device
    wall = time.perf_counter() - t
  return dict(wall_s=wall, tok_s=len(prompts) * new_tokens / wall, tokens=tokens)


def best(runs: list[dict]) -> dict:
  return min(runs, key=lambda r: r["wall_s"])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shapes", default="tiny,0.5b")
  p.add_argument("--batches", default="1,8,64")
  p.add_argument("--prompt-len", type=int, default=128)
  p.add_argument("--new-tokens", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5, help="interleaved timed runs per side on the tiny shape (best)")
  p.add_argument("--repeats-0p5b", type=int, default=1, help="interleaved timed runs per side on the 0.5B shape")
  p.add_argument("--hf-max-batch-0p5b", type=int, default=None,
                 help="skip HF on the 0.5B shape above this batch (default: 8 on the CPU, where one HF batch-64 call "
                      "takes many minutes; none on an accelerator)")
  p.add_argument("--hf-device", default="auto", help="torch device for HF (auto: cuda when torch sees one)")
  p.add_argument("--precision", choices=("highest", "default"), default="highest",
                 help="fp32 matmul precision on both sides (default lets a GPU use TF32)")
  p.add_argument("--json", default=None, help="also write the results here")
  args = p.parse_args(argv)
  for flag, value in (("--new-tokens", args.new_tokens), ("--prompt-len", args.prompt_len),
                      ("--repeats", args.repeats), ("--repeats-0p5b", args.repeats_0p5b)):
    if value < 1:
      p.error(f"{flag} must be >= 1, got {value}")
  # Checked before any work: an unknown shape or a bad batch used to fail only when its turn came, after the
  # shapes before it had run for minutes, and the JSON (written at the end) was lost.
  names = args.shapes.split(",")
  unknown = [name for name in names if name not in SHAPES]
  if unknown:
    p.error(f"--shapes: unknown {', '.join(map(repr, unknown))} (known: {', '.join(SHAPES)})")
  try:
    batches = [int(b) for b in args.batches.split(",")]
  except ValueError:
    p.error(f"--batches must be comma-separated integers, got {args.batches!r}")
  if min(batches) < 1:
    p.error(f"--batches must be >= 1, got {args.batches!r}")
  hf_device = args.hf_device
  if hf_device == "auto":
    hf_device = "cuda" if torch.cuda.is_available() else "cpu"
  hf_max_batch = args.hf_max_batch_0p5b
  if hf_max_batch is None:
    hf_max_batch = max(batches) if on_accelerator() else 8
  jax.config.update("jax_default_matmul_precision", args.precision)
  torch.set_float32_matmul_precision("highest" if args.precision == "highest" else "high")
  torch.manual_seed(0)
  env = dict(jax=jax.__version__, torch=torch.__version__, transformers=transformers.__version__,
             cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
             torch_threads=torch.get_num_threads(), devices=str(jax.devices()),
             device_kind=jax.devices()[0].device_kind, hf_device=hf_device, precision=args.precision,
             xla_flags=os.environ.get("XLA_FLAGS", ""),
             load_at_start=_load())
  if hf_device.startswith("cuda"):
    env["hf_device_name"] = torch.cuda.get_device_name(torch.device(hf_device))
  print(json.dumps(env), flush=True)
  out = dict(env=env, shapes={})
  for name in names:
    shape = SHAPES[name]
    config = transformers.Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=4096,
                                      torch_dtype="float32")
    hf = transformers.Qwen2ForCausalLM(config).eval()
    hf.generation_config.eos_token_id = None
    tmp = tempfile.mkdtemp(prefix="bench_generate_")
    try:
      hf.save_pretrained(tmp)
      engine = Engine(convert.load_qwen2(tmp), eos_ids=())
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    hf.to(hf_device)
    rows = {}
    rng = np.random.default_rng(0)
    big = name != "tiny"
    repeats = args.repeats_0p5b if big else args.repeats
    for batch in batches:
      prompts = rng.integers(0, shape["vocab_size"], (batch, args.prompt_len))
      requests = [Request(p) for p in prompts]
      t = time.perf_counter()
      engine.precompile(requests, Greedy(), max_new_tokens=args.new_tokens)
      compile_s = time.perf_counter() - t
      # The programs' first execution costs more than later ones (a one-time cost): keep it out of the timing.
      first = time_ours(engine, requests, args.new_tokens)
      with_hf = not (big and batch > hf_max_batch)
      if with_hf and (not big or hf_device != "cpu"):
        time_hf(hf, prompts, args.new_tokens)  # warm-up
      ours, theirs = [], []
      for _ in range(repeats):  # interleaved, so both sides see the same machine load
        ours.append(time_ours(engine, requests, args.new_tokens))
        if with_hf:
          theirs.append(time_hf(hf, prompts, args.new_tokens))
      o = best(ours)
      row = dict(ours_tok_s=o["tok_s"], ours_wall_s=o["wall_s"], ours_prefill_s=o["prefill_s"],
                 ours_decode_step_s=o["decode_step_s"], ours_compile_s=compile_s, ours_first_call_s=first["wall_s"],
                 ours_tok_s_runs=[r["tok_s"] for r in ours])
      if with_hf:
        h = best(theirs)
        row.update(hf_tok_s=h["tok_s"], hf_wall_s=h["wall_s"], speedup=o["tok_s"] / h["tok_s"],
                   tokens_equal=float((h["tokens"] == o["tokens"]).mean()), hf_tok_s_runs=[r["tok_s"] for r in theirs])
      rows[batch] = row
      print(json.dumps(dict(shape=name, batch=batch, load=_load(), **row)), flush=True)
    result = dict(rows=rows)
    peaks = [matmul_ceiling(shape, 1, repeats=1)["square_gflops"]]
    if 64 in batches:
      ceiling = matmul_ceiling(shape, 64)
      peaks.append(ceiling["square_gflops"])
      result.update(ceiling_step_s=ceiling["step_s"], ceiling_gflops=ceiling["gflops"],
                    square_matmul_gflops=ceiling["square_gflops"],
                    decode_pct_of_ceiling=100 * ceiling["step_s"] / rows[64]["ours_decode_step_s"])
    peak = max(peaks) * 1e9  # the best rate seen: the floor must not be pessimistic
    bandwidth = read_bandwidth(4096 if on_accelerator() else 1024, repeats=5 if on_accelerator() else 3)
    result.update(peak_gflops=peak / 1e9, read_gb_s=bandwidth / 1e9)
    for batch, row in rows.items():
      step_bytes = decode_bytes_per_step(shape, batch, args.prompt_len, args.new_tokens)
      row["decode_gb_s"] = step_bytes / row["ours_decode_step_s"] / 1e9
      row["decode_pct_of_read"] = 100 * step_bytes / row["ours_decode_step_s"] / bandwidth
      row["floor_s"] = hardware_floor(shape, batch, args.prompt_len, args.new_tokens, peak, bandwidth)
      row["ours_over_floor"] = row["ours_wall_s"] / row["floor_s"]
      if "hf_wall_s" in row:
        row["best_possible_speedup"] = row["hf_wall_s"] / row["floor_s"]
    print(json.dumps(dict(shape=name, **{k: v for k, v in result.items() if k != "rows"})), flush=True)
    out["shapes"][name] = result
    del engine, hf
  out["env"]["load_at_end"] = _load()
  _print_table(out, args)
  if args.json:
    tmp = args.json + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)
    os.replace(tmp, args.json)
  return 0


def _print_table(out: dict, args) -> None:
  env = out["env"]
  print(f"\nprompt {args.prompt_len}, {args.new_tokens} new tokens, greedy, fp32 (precision {env['precision']}); "
        f"ours on {env['device_kind']}, HF on {env.get('hf_device_name', env['hf_device'])}; load avg "
        f"{env['load_at_start']} -> {env['load_at_end']}")
  print("| shape | batch | ours tok/s | HF tok/s | speedup | tokens equal | ours prefill s | ours decode ms/step "
        "| decode GB/s (% of read) | hardware floor s | ours / floor | best possible speedup |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for name, result in out["shapes"].items():
    for batch, r in result["rows"].items():
      hf = f"{r['hf_tok_s']:.1f}" if "hf_tok_s" in r else "skipped"
      speed = f"{r['speedup']:.1f}x" if "speedup" in r else "-"
      equal = f"{100 * r['tokens_equal']:.0f}%" if "tokens_equal" in r else "-"
      bound = f"{r['best_possible_speedup']:.1f}x" if "best_possible_speedup" in r else "-"
      print(f"| {name} | {batch} | {r['ours_tok_s']:.1f} | {hf} | {speed} | {equal} | {r['ours_prefill_s']:.3f} | "
            f"{1e3 * r['ours_decode_step_s']:.2f} | {r['decode_gb_s']:.1f} ({r['decode_pct_of_read']:.0f}%) | "
            f"{r['floor_s']:.3f} | {r['ours_over_floor']:.1f}x | {bound} |")
    print(f"| {name} | peak (square matmul) {result['peak_gflops']:.1f} GFLOP/s, streaming read "
          f"{result['read_gb_s']:.1f} GB/s | | | | | | | | | | |")
    if "ceiling_step_s" in result:
      print(f"| {name} | matmul ceiling @64: {1e3 * result['ceiling_step_s']:.2f} ms/step "
            f"({result['ceiling_gflops']:.1f} GFLOP/s; square matmul {result['square_matmul_gflops']:.1f} "
            f"GFLOP/s); batch-64 decode at {result['decode_pct_of_ceiling']:.0f}% of it | | | | | | | | | | |")


if __name__ == "__main__":
  sys.exit(main())
