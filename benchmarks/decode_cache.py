"""One cached decode step of the Qwen2 module: the current model file vs another version of it, in one process.

  git show <rev>:rstar_jax/models/qwen2.py > /tmp/qwen2_old.py
  python benchmarks/decode_cache.py /tmp/qwen2_old.py && python benchmarks/decode_cache.py rstar_jax/models/qwen2.py

Used to measure carrying the KV cache through the layer scan (in-place writes) against scanning over it.
"""
import importlib.util
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from rstar_jax.models import ModelConfig
spec = importlib.util.spec_from_file_location("q", sys.argv[1]); q = importlib.util.module_from_spec(spec); sys.modules["q"] = q; spec.loader.exec_module(q)
for name, cfg, B, S in [("tiny", ModelConfig.tiny(), 64, 256), ("60m-ish", ModelConfig.tiny(vocab_size=32000, hidden_size=512, intermediate_size=2048, num_layers=12, num_heads=8, num_kv_heads=4), 16, 1024)]:
  m = q.Qwen2(cfg, rngs=nnx.Rngs(0)); g, st = nnx.split(m)
  @jax.jit
  def step(st, cache, tok):
    out = nnx.merge(g, st)(tok, jnp.zeros_like(tok) + cache.end_index, jnp.ones_like(tok, bool), cache=cache)
    return out.logits, out.cache
  step = jax.jit(step.__wrapped__, donate_argnums=1)
  cache = q.KVCache.init(cfg, B, S); tok = jnp.ones((B,1), jnp.int32)
  for _ in range(3): l, cache = step(st, cache, tok)
  l.block_until_ready(); t=time.perf_counter(); n=30
  for _ in range(n): l, cache = step(st, cache, tok)
  l.block_until_ready(); print(sys.argv[1].split('/')[-1], name, f"{(time.perf_counter()-t)/n*1e3:.2f} ms/step")
