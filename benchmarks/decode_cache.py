"""One cached decode step of the Qwen2 module: the current model file vs another version of it, in one process each.

  git show <rev>:rstar_jax/models/qwen2.py > /tmp/qwen2_old.py
  python benchmarks/decode_cache.py /tmp/qwen2_old.py && python benchmarks/decode_cache.py rstar_jax/models/qwen2.py
  python benchmarks/decode_cache.py rstar_jax/models/qwen2.py --unstacked   # the generation engine's layout

Used to measure how the KV cache and the layer weights are laid out for decoding (benchmarks/RESULTS.md: carrying
the cache through the layer scan, per-layer buffers). The step is jitted with the cache donated, as the engine runs
it; the model file is imported on its own, so any revision's file works as long as its `Qwen2` / `KVCache` have the
same constructors.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from rstar_jax.models import ModelConfig

# (name, config, batch, cache slots)
SHAPES = (
    ("tiny", ModelConfig.tiny(), 64, 256),
    ("60m-ish", ModelConfig.tiny(vocab_size=32000, hidden_size=512, intermediate_size=2048, num_layers=12,
                                 num_heads=8, num_kv_heads=4), 16, 1024),
)


def load_model_file(path: str):
  """Imports a `qwen2.py` (of any revision) as a standalone module."""
  spec = importlib.util.spec_from_file_location("qwen2_under_test", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def seconds_per_step(qwen2, config: ModelConfig, batch: int, slots: int, unstacked: bool, steps: int = 30) -> float:
  """Mean wall time of one donated, jitted decode step (1 token per row) after 3 warm-up steps."""
  kwargs = dict(scan_layers=False) if unstacked else {}
  graphdef, state = nnx.split(qwen2.Qwen2(config, rngs=nnx.Rngs(0), **kwargs))

  @functools.partial(jax.jit, donate_argnums=1)
  def step(state, cache, tokens):
    positions = jnp.zeros_like(tokens) + cache.end_index
    out = nnx.merge(graphdef, state)(tokens, positions, jnp.ones_like(tokens, bool), cache=cache)
    return out.logits, out.cache
  cache = qwen2.KVCache.init(config, batch, slots)
  tokens = jnp.ones((batch, 1), jnp.int32)
  for _ in range(3):
    logits, cache = step(state, cache, tokens)
  logits.block_until_ready()
  start = time.perf_counter()
  for _ in range(steps):
    logits, cache = step(state, cache, tokens)
  logits.block_until_ready()
  return (time.perf_counter() - start) / steps


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("model_file", nargs="?", default=str(pathlib.Path(__file__).parent.parent /
                                                             "rstar_jax/models/qwen2.py"))
  parser.add_argument("--unstacked", action="store_true", help="layers as a list (Qwen2(..., scan_layers=False))")
  args = parser.parse_args(argv)
  qwen2 = load_model_file(args.model_file)
  for name, config, batch, slots in SHAPES:
    ms = 1e3 * seconds_per_step(qwen2, config, batch, slots, args.unstacked)
    print(f"{pathlib.Path(args.model_file).name} {name} (batch {batch}, {slots} slots"
          f"{', unstacked' if args.unstacked else ''}): {ms:.2f} ms/step")
  return 0


if __name__ == "__main__":
  sys.exit(main())
