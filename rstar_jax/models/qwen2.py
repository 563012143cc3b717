"""Qwen2 decoder in Flax NNX, one-to-one with Hugging Face's `Qwen2ForCausalLM`.

Letters used in shapes and einsums:
  B batch, T query length, S key/value length (cache slots), D model width, N query heads, K kv heads,
  G query heads per kv head (N = K * G), H head dim, F MLP width, V vocab, L layers.

Parameter tree (HF name in brackets; `convert.py` holds the transposes between the two):
  model.embed_tokens.embedding            [V, D]      (model.embed_tokens.weight)
  model.layers.self_attn.q_proj.kernel    [L, D, N, H] (model.layers.{l}.self_attn.q_proj.weight, .bias [L, N, H])
  model.layers.self_attn.{k,v}_proj       [L, D, K, H] (+ bias [L, K, H])
  model.layers.self_attn.o_proj.kernel    [L, N, H, D] (no bias, as Qwen2)
  model.layers.mlp.{gate,up}_proj.kernel  [L, D, F];  mlp.down_proj.kernel [L, F, D]
  model.layers.{input,post_attention}_layernorm.weight [L, D];  model.norm.weight [D]
  lm_head.kernel                          [D, V]      (lm_head.weight; absent when embeddings are tied)

Two layer layouts (MaxText's `scan_layers`), the same weights and results:
  stacked (default; training, checkpoints, conversion): every layer weight carries a leading `layers` axis and the
    layers run under `jax.lax.scan`, so a 28-layer model compiles as fast as a 1-layer one;
  unstacked (`scan_layers=False`, or `unstack_layers(model)`; the generation engine's layout): `model.layers` is a
    list of L `DecoderLayer`s, each with its own buffers, run by a Python loop. A decode step then reads every
    weight and cache buffer in place: under a scan, XLA:CPU copies each layer's slice of the stacked weights before
    its matmuls, which doubled the memory traffic of a batch-1 decode step (benchmarks/RESULTS.md, generation).
Every parameter carries `logical_axes` metadata; `rstar_jax.sharding` maps those names onto the mesh. Numerics:
matmuls in `config.dtype`; RMSNorm statistics, RoPE, attention softmax and logits in float32; biases and norm scales
are applied in float32, then rounded to `config.dtype`, so their gradients (sums over every token) sum in float32.

Padding and caching: a boolean (or 0/1 integer) `input_mask` marks real tokens (left or right padding both work).
With a `KVCache`, the T new tokens are written at slots `[end_index, end_index + T)`; a query at slot q sees the real
slots s <= q.
The caller keeps `end_index + T <= max_len`: under jit the index is traced, and an out-of-range write is clamped by
`dynamic_update_slice` (it would overwrite the last slots), not refused (the generation engine sizes its caches so).
The same code is the full forward (no cache), the prefill (cache, T = prompt length) and a decode step (cache, T = 1).
With a cache the layers always run as a Python loop (each layer's cache is its own buffer, updated in place).
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from rstar_jax.models.axes import constrain
from rstar_jax.models.config import ModelConfig



@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for B sequences of up to S slots.

  One buffer per layer, heads before slots (`[B, K, S, H]`): the attention einsums then contract over the cache
  in its stored layout (batch dims B, K leading) instead of transposing the whole cache every step.
  """
  k: tuple[jax.Array, ...]  # L x [B, K, S, H]
  v: tuple[jax.Array, ...]  # L x [B, K, S, H]
  kv_mask: jax.Array  # [B, S] bool, True = slot holds a real token
  end_index: jax.Array  # [] int32, the first free slot (shared by all rows; pad to align rows)

  @classmethod
  def init(cls, config: ModelConfig, batch_size: int, max_len: int, dtype=None) -> "KVCache":
    dtype = jnp.dtype(dtype or config.compute_dtype)
    shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)
    return cls(k=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
               v=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
               kv_mask=jnp.zeros((batch_size, max_len), bool), end_index=jnp.zeros((), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.kv_mask.shape[1]

  def map_layers(self, fn) -> "KVCache":
    """Applies `fn` to every layer's key and value buffer `[B, K, S, H]`."""
    return self.replace(k=tuple(fn(x) for x in self.k), v=tuple(fn(x) for x in self.v))


@flax.struct.dataclass
class ModelOutput:
  logits: jax.Array | None  # [B, T, V] float32
  hidden: jax.Array | None  # [B, T, D] final-norm hidden states (HF's last `hidden_states`)
  cache: KVCache | None


def _param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str | None], config: ModelConfig,
           init: str = "normal") -> nnx.Param:
  if init == "normal":
    value = config.initializer_range * jax.random.normal(rngs.params(), tuple(shape), jnp.float32)
  elif init == "ones":
    value = jnp.ones(tuple(shape), jnp.float32)
  else:
    value = jnp.zeros(tuple(shape), jnp.float32)
  return nnx.Param(value.astype(config.weight_dtype), logical_axes=tuple(axes))


class Dense(nnx.Module):
  """A linear map written as an einsum over named weight dims (`"BTD,DNH->BTNH"`), with optional bias.

  Runs as one `dot_general` contracting the shared dims in the kernel's order (`jnp.einsum` sorts them, which for
  `"BTNH,NHD->BTD"` contracts (H, N) and makes XLA transpose the `[N, H, D]` kernel on every call).
  """

  def __init__(self, equation: str, kernel_shape: Sequence[int], kernel_axes: Sequence[str | None],
               bias_shape: Sequence[int] | None, bias_axes: Sequence[str | None] | None, *,
               config: ModelConfig, rngs: nnx.Rngs):
    inputs, out = equation.split("->")
    lhs, rhs = inputs.split(",")
    contract = [c for c in rhs if c in lhs and c not in out]
    if "".join(c for c in lhs + rhs if c not in contract) != out:
      raise ValueError(f"Dense equation {equation!r}: output must be lhs free dims then kernel free dims")
    self.equation = equation
    self.dimension_numbers = (((tuple(lhs.index(c) for c in contract)), tuple(rhs.index(c) for c in contract)),
                              ((), ()))
    self.dtype = config.compute_dtype
    self.kernel = _param(rngs, kernel_shape, kernel_axes, config)
    self.bias = _param(rngs, bias_shape, bias_axes, config, "zeros") if bias_shape is not None else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.lax.dot_general(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.dimension_numbers)
    if self.bias is None:
      return y
    # The bias's gradient is the sum of the output gradients over every token: added in bf16, that sum ran in bf16
    # too (5% off for a v_proj bias over 432 tokens, against 0.3% for torch autocast). Added in float32, it is summed
    # in float32, while the backward matmuls still take the bf16 output gradient (not a float32 one).
    return (y.astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)


class RMSNorm(nnx.Module):
  """`w * x / rms(x)`, statistics in float32; the scale is applied after casting back (as HF Qwen2RMSNorm)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.eps = config.rms_norm_eps
    self.weight = _param(rngs, (config.hidden_size,), ("embed",), config, "ones")

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    # HF rounds the normalised x to the input dtype before the scale; the product is formed in float32 and rounded
    # once (bf16 * bf16 is exact in float32, so bf16 weights give HF's bf16 result), so the weight's gradient, a sum
    # over every token, is summed in float32 instead of the compute dtype.
    return (self.weight[...].astype(jnp.float32) * x32.astype(x.dtype).astype(jnp.float32)).astype(x.dtype)


def rope_sin_cos(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """`positions [B, T]` -> sin, cos `[B, T, H]` float32 (rotate-half layout: both halves repeat the frequencies)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # [H/2]
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.sin(emb), jnp.cos(emb)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
  """`x [B, T, N, H]` rotated by position; computed in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


def cached_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, mask: jax.Array) -> jax.Array:
  """Grouped-query attention over a cache in its stored layout.

  `q [B, T, N, H]`, `k_cache, v_cache [B, K, S, H]`, `mask [B, T, S]` -> `[B, T, N, H]`. The G = N / K query heads
  of a kv head and the T queries are folded into one axis, so both einsums are plain batched matmuls over (B, K)
  that read the cache without a transpose. Scores and softmax in float32 (as HF's eager attention).
  """
  b, t, n, h = q.shape
  k = k_cache.shape[1]
  g = n // k
  qg = q.reshape(b, t, k, g, h).transpose(0, 2, 3, 1, 4).reshape(b, k, g * t, h)  # [B, K, G*T, H]
  scores = jnp.einsum("BKQH,BKSH->BKQS", qg, k_cache.astype(q.dtype), preferred_element_type=jnp.float32)
  scores = scores * (1.0 / h ** 0.5)
  visible = jnp.broadcast_to(mask[:, None, None], (b, 1, g, t, mask.shape[-1])).reshape(b, 1, g * t, -1)
  scores = jnp.where(visible, scores, jnp.float32(-1e30))
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  out = jnp.einsum("BKQS,BKSH->BKQH", probs, v_cache.astype(q.dtype))  # [B, K, G*T, H]
  return out.reshape(b, k, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


class Attention(nnx.Module):
  """Grouped-query attention with q/k/v bias and no output bias."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, n, k, h = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    self.num_kv_heads, self.head_dim = k, h
    self.dtype = config.compute_dtype
    self.q_proj = Dense("BTD,DNH->BTNH", (d, n, h), ("embed", "heads", "head_dim"), (n, h), ("heads", "head_dim"),
                        config=config, rngs=rngs)
    self.k_proj = Dense("BSD,DKH->BSKH", (d, k, h), ("embed", "kv_heads", "head_dim"), (k, h),
                        ("kv_heads", "head_dim"), config=config, rngs=rngs)
    self.v_proj = Dense("BSD,DKH->BSKH", (d, k, h), ("embed", "kv_heads", "head_dim"), (k, h),
                        ("kv_heads", "head_dim"), config=config, rngs=rngs)
    self.o_proj = Dense("BTNH,NHD->BTD", (n, h, d), ("heads", "head_dim", "embed"), None, None,
                        config=config, rngs=rngs)

  def __call__(self, x: jax.Array, sin: jax.Array, cos: jax.Array, mask: jax.Array,
               cache_kv: tuple[jax.Array, jax.Array] | None, write_index: jax.Array | None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """`x [B, T, D]`, `mask [B, T, S]` -> `[B, T, D]`.

    `cache_kv = (k, v)`: this layer's cache `[B, K, S, H]`; the new keys and values are written in place at slots
    `[write_index, write_index + T)` and the updated `(k, v)` returned.
    """
    q = apply_rope(self.q_proj(x), sin, cos)  # [B, T, N, H]
    k = apply_rope(self.k_proj(x), sin, cos)  # [B, T, K, H]
    v = self.v_proj(x)
    q = constrain(q, ("batch", "length", "heads", "head_dim"))
    if cache_kv is not None:
      k_cache, v_cache = cache_kv
      start = (0, 0, write_index, 0)
      k_cache = jax.lax.dynamic_update_slice(k_cache, k.transpose(0, 2, 1, 3).astype(k_cache.dtype), start)
      v_cache = jax.lax.dynamic_update_slice(v_cache, v.transpose(0, 2, 1, 3).astype(v_cache.dtype), start)
      k_cache = constrain(k_cache, ("batch", "kv_heads", "kv_length", "head_dim"))
      v_cache = constrain(v_cache, ("batch", "kv_heads", "kv_length", "head_dim"))
      window = mask.shape[-1]  # attend to the first `window` slots only (see `Qwen2Model.__call__`)
      out = cached_attention(q.astype(self.dtype), k_cache[:, :, :window], v_cache[:, :, :window], mask)
      return self.o_proj(out), (k_cache, v_cache)
    k = constrain(k, ("batch", "kv_length", "kv_heads", "head_dim"))
    if self.dtype == jnp.float16:
      # jax's attention asks for its float32 scores with the `F16_F16_F32` dot algorithm, which XLA:CPU (and TPU)
      # refuse when compiling ("not supported by dot_general"), so a float16 forward failed outright; the einsum
      # chain of the cached path keeps the float32 scores without naming an algorithm.
      out = cached_attention(q.astype(self.dtype), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)
      return self.o_proj(out), None
    # jax's attention groups the N query heads onto the K kv heads itself and keeps scores and softmax in float32
    # (and can dispatch to fused kernels on accelerators); on CPU it gives the same values as the explicit
    # einsum / where / softmax chain, at the same speed within noise (benchmarks/RESULTS.md, model forward).
    out = jax.nn.dot_product_attention(q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype),
                                       mask=mask[:, None, :, :])  # [B, T, N, H]
    return self.o_proj(out), None


class MLP(nnx.Module):
  """SwiGLU: `down(silu(gate(x)) * up(x))`."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    self.gate_proj = Dense("BTD,DF->BTF", (d, f), ("embed", "mlp"), None, None, config=config, rngs=rngs)
    self.up_proj = Dense("BTD,DF->BTF", (d, f), ("embed", "mlp"), None, None, config=config, rngs=rngs)
    self.down_proj = Dense("BTF,FD->BTD", (f, d), ("mlp", "embed"), None, None, config=config, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
    return self.down_proj(constrain(h, ("batch", "length", "mlp")))


class DecoderLayer(nnx.Module):
  """Pre-norm residual block: attention then MLP."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.input_layernorm = RMSNorm(config, rngs=rngs)
    self.self_attn = Attention(config, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(config, rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x, sin, cos, mask, cache_kv, write_index):
    attn_out, cache_kv = self.self_attn(self.input_layernorm(x), sin, cos, mask, cache_kv, write_index)
    x = x + attn_out
    x = x + self.mlp(self.post_attention_layernorm(x))
    return constrain(x, ("batch", "length", "embed")), cache_kv


def _layer_slice(stacked, layer: int):
  """Layer `layer`'s weights from a tree of stacked `[L, ...]` layer weights."""
  return jax.tree.map(lambda w: w[layer], stacked)


def _stacked_layers(config: ModelConfig, rngs: nnx.Rngs) -> DecoderLayer:
  """`config.num_layers` decoder layers as one module whose weights carry a leading `layers` axis."""

  @nnx.split_rngs(splits=config.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(layer_rngs):
    return DecoderLayer(config, rngs=layer_rngs)

  layers = make(rngs)
  for _, var in nnx.iter_graph(layers):
    if isinstance(var, nnx.Variable) and "logical_axes" in var.get_metadata():
      var.set_metadata("logical_axes", ("layers",) + tuple(var.get_metadata()["logical_axes"]))
  return layers


def _bool_mask(input_mask: jax.Array) -> jax.Array:
  """`input_mask [B, T]` as bool: a tokenizer's 0/1 integer `attention_mask` (what transformers takes) is accepted.

  The attention and the cache's `kv_mask` need bool; an integer mask failed deep inside jax naming no argument.
  """
  input_mask = jnp.asarray(input_mask)
  if input_mask.dtype == jnp.bool_:
    return input_mask
  if not jnp.issubdtype(input_mask.dtype, jnp.integer):
    raise TypeError(f"input_mask must be bool or integer (nonzero = real token), got {input_mask.dtype}")
  return input_mask != 0


def _check_shapes(tokens: jax.Array, positions: jax.Array, input_mask: jax.Array, cache: KVCache | None) -> None:
  """Refuses inputs whose (static) shapes do not fit, naming the argument: jax failed deep inside naming none."""
  if jnp.ndim(tokens) != 2:
    raise ValueError(f"tokens must be [B, T] token ids, got shape {jnp.shape(tokens)}")
  shape = tuple(jnp.shape(tokens))
  # positions may be one row for every row ([1, T], as transformers' position_ids), which RoPE broadcasts.
  if jnp.ndim(positions) != 2 or jnp.shape(positions)[1] != shape[1] or jnp.shape(positions)[0] not in (1, shape[0]):
    raise ValueError(f"positions of shape {jnp.shape(positions)} do not fit tokens of shape {shape} "
                     "(expected [B, T] or [1, T])")
  if tuple(jnp.shape(input_mask)) != shape:
    raise ValueError(f"input_mask of shape {jnp.shape(input_mask)} does not match tokens {shape}")
  if cache is not None:
    if cache.kv_mask.shape[0] != shape[0]:
      raise ValueError(f"the KVCache holds {cache.kv_mask.shape[0]} rows, tokens {shape[0]}")
    if shape[1] > cache.max_len:
      raise ValueError(f"{shape[1]} new tokens do not fit a KVCache of {cache.max_len} slots")


class Qwen2Model(nnx.Module):
  """The backbone: token embedding, decoder layers (stacked or a list, see the module doc), final norm (HF
  `Qwen2Model`)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, remat: bool = False, scan_layers: bool = True):
    self.config = config
    self.remat = remat
    self.scan_layers = scan_layers
    self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=config.compute_dtype,
                                  param_dtype=config.weight_dtype, rngs=rngs,
                                  embedding_init=nnx.initializers.normal(config.initializer_range))
    self.embed_tokens.embedding.set_metadata("logical_axes", ("vocab", "embed"))
    if scan_layers:
      self.layers = _stacked_layers(config, rngs)
    else:
      self.layers = nnx.List([DecoderLayer(config, rngs=rngs) for _ in range(config.num_layers)])
    self.norm = RMSNorm(config, rngs=rngs)

  def _layer_list(self) -> list[DecoderLayer]:
    """The L layers as modules (for a stacked model, each merges its static slice of the stacked weights)."""
    if not self.scan_layers:
      return list(self.layers)
    graphdef, state = nnx.split(self.layers)
    return [nnx.merge(graphdef, _layer_slice(state, i)) for i in range(self.config.num_layers)]

  def __call__(self, tokens: jax.Array, positions: jax.Array, input_mask: jax.Array,
               cache: KVCache | None = None, attend_slots: int | None = None) -> tuple[jax.Array, KVCache | None]:
    """`tokens, positions [B, T] int32`, `input_mask [B, T] bool` -> hidden `[B, T, D]`, updated cache.

    `attend_slots` (static, with a cache): attention reads only the first `attend_slots` cache slots; the caller
    guarantees `end_index + T <= attend_slots`. A prefill into a cache sized for prompt + generation passes the
    prompt's slots, so it does not score the empty generation slots (a third of a 128 + 64 prefill's attention).
    """
    config = self.config
    _check_shapes(tokens, positions, input_mask, cache)
    input_mask = _bool_mask(input_mask)
    t = tokens.shape[1]
    # Rows are gathered in the table's dtype, then cast: casting the table first (what `nnx.Embed` does) made the
    # table's gradient a scatter-add in the compute dtype, summing a frequent token's rows in bf16.
    x = jnp.take(self.embed_tokens.embedding[...], tokens, axis=0).astype(config.compute_dtype)
    x = constrain(x, ("batch", "length", "embed"))
    sin, cos = rope_sin_cos(positions, config.head_dim, config.rope_theta)
    if cache is None:
      kv_mask, q_slots, write_index = input_mask, jnp.arange(t), None
    else:
      write_index = cache.end_index
      kv_mask = jax.lax.dynamic_update_slice(cache.kv_mask, input_mask, (0, write_index))
      q_slots = write_index + jnp.arange(t)
    s = kv_mask.shape[1]
    mask = kv_mask[:, None, :] & (jnp.arange(s)[None, None, :] <= q_slots[None, :, None])  # [B, T, S]
    if cache is not None and attend_slots is not None:
      mask = mask[:, :, :attend_slots]

    if cache is None and self.scan_layers:
      graphdef, layer_state = nnx.split(self.layers)

      def layer_step(x, state):
        x, _ = nnx.merge(graphdef, state)(x, sin, cos, mask, None, None)
        return x, None

      if self.remat:
        layer_step = jax.checkpoint(layer_step, policy=jax.checkpoint_policies.nothing_saveable)
      x, _ = jax.lax.scan(layer_step, x, layer_state)
      return self.norm(x), None

    def run_layer(layer, x, cache_kv):
      return layer(x, sin, cos, mask, cache_kv, write_index)

    if self.remat:
      run_layer = nnx.remat(run_layer, policy=jax.checkpoint_policies.nothing_saveable)
    new_k, new_v = [], []
    for i, layer in enumerate(self._layer_list()):
      x, cache_kv = run_layer(layer, x, None if cache is None else (cache.k[i], cache.v[i]))
      if cache_kv is not None:
        new_k.append(cache_kv[0])
        new_v.append(cache_kv[1])
    if cache is not None:
      cache = KVCache(k=tuple(new_k), v=tuple(new_v), kv_mask=kv_mask, end_index=cache.end_index + t)
    return self.norm(x), cache


def unstack_layers(model: nnx.Module) -> nnx.Module:
  """A copy of a `Qwen2` / `PPM` / `Qwen2Model` with its layers as a list (`scan_layers=False`).

  Each layer's weights become their own buffers (a slice of the stacked weight: the layer weights are copied once;
  every other parameter is shared with `model`). Their `logical_axes` lose the leading `layers` name, so the copy
  shards by the same rules. A model already unstacked is returned as is.
  """
  backbone = model if isinstance(model, Qwen2Model) else model.model
  if not backbone.scan_layers:
    return model
  abstract = nnx.eval_shape(
      lambda: type(model)(backbone.config, rngs=nnx.Rngs(0), remat=backbone.remat, scan_layers=False))
  source = nnx.to_pure_dict(nnx.state(model))
  layers_parent = source if isinstance(model, Qwen2Model) else source["model"]
  stacked = layers_parent["layers"]
  layers_parent["layers"] = {i: _layer_slice(stacked, i) for i in range(backbone.config.num_layers)}
  state = nnx.state(abstract)
  nnx.replace_by_pure_dict(state, source)
  nnx.update(abstract, state)
  return abstract


class Qwen2(nnx.Module):
  """Causal LM (HF `Qwen2ForCausalLM`): backbone + LM head (tied to the embedding or its own `[D, V]` kernel)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, remat: bool = False, scan_layers: bool = True):
    self.config = config
    self.model = Qwen2Model(config, rngs=rngs, remat=remat, scan_layers=scan_layers)
    if config.tie_word_embeddings:
      self.lm_head = None
    else:
      self.lm_head = Dense("BTD,DV->BTV", (config.hidden_size, config.vocab_size), ("embed", "vocab"), None, None,
                           config=config, rngs=rngs)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """`hidden [B, T, D]` -> float32 logits `[B, T, V]`."""
    dtype = self.config.compute_dtype
    if self.lm_head is None:
      table = self.model.embed_tokens.embedding[...]
      out = jnp.einsum("BTD,VD->BTV", hidden.astype(dtype), table.astype(dtype), preferred_element_type=jnp.float32)
    else:
      out = jnp.einsum("BTD,DV->BTV", hidden.astype(dtype), self.lm_head.kernel[...].astype(dtype),
                       preferred_element_type=jnp.float32)
    return constrain(out, ("batch", "length", "vocab"))

  def __call__(self, tokens: jax.Array, positions: jax.Array, input_mask: jax.Array,
               cache: KVCache | None = None, return_hidden: bool = False,
               return_logits: bool = True) -> ModelOutput:
    hidden, cache = self.model(tokens, positions, input_mask, cache)
    logits = self.logits(hidden) if return_logits else None
    return ModelOutput(logits=logits, hidden=hidden if return_hidden else None, cache=cache)


def default_positions(input_mask: jax.Array) -> jax.Array:
  """Positions `[B, T]` counting real tokens only (0 at each row's first real token), as HF computes them
  from an attention mask under left padding."""
  return jnp.maximum(jnp.cumsum(input_mask.astype(jnp.int32), axis=-1) - 1, 0)
