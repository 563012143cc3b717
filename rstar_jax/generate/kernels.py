"""The jitted device code of the engine: prefill levels, token 0, the decode loop, scoring heads.

Letters: B rows, G shared-prefix groups, T level length, S cache slots, M max new tokens, V vocab, E eos slots.

Kernels are built once per (model graph, mesh, rules, pad id, tokenizer vocab limit) and shared by every `Engine`
with those, so two engines over models of one shape (e.g. a policy reloaded after training) reuse the compiled
programs: the weights are an argument, never a constant. Static settings (cache length, M, the sampling method) are
static jit arguments; EOS ids and the decode budget are dynamic inputs, so changing them never recompiles.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rstar_jax import sharding as sharding_lib
from rstar_jax.generate.sampling import SamplingMethod, step_keys, token_logprobs
from rstar_jax.models import KVCache, ModelConfig


@flax.struct.dataclass
class DecodeState:
  """Everything the decode loop carries (a pytree; static settings are jit arguments, not fields)."""
  step: jax.Array  # [] int32, tokens generated so far (the same for every row)
  tokens: jax.Array  # [B, M] int32, generated tokens (pad_id once a row is done)
  logprobs: jax.Array  # [B, M] float32, raw model log-prob of each generated token (0 once done)
  num_tokens: jax.Array  # [B] int32, tokens generated while the row was running
  positions: jax.Array  # [B] int32, position of the next token fed (= real tokens so far)
  done: jax.Array  # [B] bool
  limits: jax.Array  # [B] int32, the most tokens the row may generate (<= M)
  keys: jax.Array  # [B, 2] uint32, the row's sample key; step t uses fold_in(key, t)
  cache: KVCache


def eos_array(eos_ids: Sequence[int]) -> np.ndarray:
  """EOS ids as a dynamic `[E]` int32 input padded with -1 (E = 8 or the next power of two)."""
  size = max(8, 1 << max(0, len(eos_ids) - 1).bit_length())
  out = np.full(size, -1, np.int32)
  out[:len(eos_ids)] = eos_ids
  return out


def _isin(tokens: jax.Array, ids: jax.Array) -> jax.Array:
  """`tokens [B]`, `ids [E]` (padded with -1) -> `[B]` bool."""
  return jnp.any(tokens[:, None] == ids[None, :], axis=-1)


class Kernels:
  """Jitted kernels for one model graph on one mesh (or the default device when `mesh` is None)."""

  def __init__(self, graphdef: nnx.GraphDef, config: ModelConfig, mesh: Mesh | None, rules: sharding_lib.Rules,
               pad_id: int, vocab_limit: int | None = None):
    self.graphdef, self.config, self.mesh, self.rules, self.pad_id = graphdef, config, mesh, rules, pad_id
    # Checkpoints often carry more embedding rows than the tokenizer has tokens (Qwen2.5: 152064 vs 151665 + tags);
    # ids past the tokenizer are never sampled.
    self.vocab_limit = vocab_limit if vocab_limit is not None and vocab_limit < config.vocab_size else None
    self.shared = jax.jit(self._shared, static_argnames=("cache_len",))
    self.start = jax.jit(self._start, static_argnames=("cache_len", "max_new", "sampler"))
    self.decode = jax.jit(self._decode, static_argnames=("sampler",), donate_argnames=("state",))
    self.peek = jax.jit(self._peek, static_argnames=("width",))
    self.values = jax.jit(self._values, static_argnames=("cache_len",))
    self.logprobs = jax.jit(self._logprobs, static_argnames=("cache_len",))

  # --- placement -----------------------------------------------------------------------------------------------------

  def batch_sharding(self, shape: Sequence[int], names: Sequence[str | None] | None = None) -> NamedSharding:
    names = tuple(names) if names is not None else ("batch",) + (None,) * (len(shape) - 1)
    return sharding_lib.named_sharding(names, shape, self.mesh, self.rules, what="generation input")

  def put(self, x: np.ndarray) -> jax.Array | np.ndarray:
    """Host array with a leading batch dim -> device, batch split over the mesh.

    Without a mesh the numpy array is returned as is: a jitted kernel takes it to the device as part of its call,
    which costs less than one dispatch per input (~0.5 ms per generate call for 8 inputs here).
    """
    if self.mesh is None:
      return np.asarray(x)
    return jax.device_put(x, self.batch_sharding(x.shape))

  def put_replicated(self, x: np.ndarray) -> jax.Array | np.ndarray:
    if self.mesh is None:
      return np.asarray(x)
    return jax.device_put(x, NamedSharding(self.mesh, PartitionSpec()))

  def context(self):
    """Activation sharding constraints at trace time: every kernel call runs inside this."""
    if self.mesh is None:
      return contextlib.nullcontext()
    return sharding_lib.activation_sharding(self.mesh, self.rules)

  def _constrain(self, x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    if self.mesh is None:
      return x
    return jax.lax.with_sharding_constraint(x, self.batch_sharding(x.shape, names))

  def _constrain_cache(self, cache: KVCache) -> KVCache:
    if self.mesh is None:
      return cache
    kv = sharding_lib.cache_sharding(self.mesh, cache.k[0].shape, self.rules)
    cache = cache.map_layers(lambda x: jax.lax.with_sharding_constraint(x, kv))
    return cache.replace(kv_mask=self._constrain(cache.kv_mask, ("batch", "kv_length")))

  # --- building blocks -----------------------------------------------------------------------------------------------

  def _module(self, params):
    return nnx.merge(self.graphdef, params)

  def _new_cache(self, rows: int, cache_len: int) -> KVCache:
    return self._constrain_cache(KVCache.init(self.config, rows, cache_len))

  def _extend_rows(self, module, cache, row_group, tokens, positions, mask, cache_len, prompt_slots=None):
    """Copies each row's group cache row (the fork; or starts an empty cache) and prefills `tokens [B, Tr]`.

    `prompt_slots` (static): the prompt ends within the first `prompt_slots` slots, so attention stops there.
    """
    if cache is None:
      cache = self._new_cache(tokens.shape[0], cache_len)
    else:
      cache = cache.map_layers(lambda x: jnp.take(x, row_group, axis=0))
      cache = self._constrain_cache(cache.replace(kv_mask=jnp.take(cache.kv_mask, row_group, axis=0)))
    hidden, cache = module.model(tokens, positions, mask, cache, attend_slots=prompt_slots)
    return hidden, self._constrain_cache(cache)

  def _sample(self, sampler: SamplingMethod, logits, keys, step):
    allowed = logits
    if self.vocab_limit is not None:
      allowed = jnp.where(jnp.arange(logits.shape[-1]) < self.vocab_limit, logits, -jnp.inf)
    token = sampler(allowed, step_keys(keys, step))
    # Over the raw logits: the model's log-prob, as `loglikelihood` computes it (the limit only restricts sampling).
    return token, token_logprobs(logits, token)

  # --- kernels -------------------------------------------------------------------------------------------------------

  def _shared(self, params, tokens, positions, mask, *, cache_len: int) -> KVCache:
    """Prefills group prefixes `tokens [G, Tg]` into a fresh cache of `cache_len` slots."""
    module = self._module(params)
    _, cache = module.model(tokens, positions, mask, self._new_cache(tokens.shape[0], cache_len),
                            attend_slots=tokens.shape[1])
    return self._constrain_cache(cache)

  def _start(self, params, cache, row_group, tokens, positions, mask, lengths, limits, valid, keys, eos, *,
             cache_len: int, max_new: int, sampler: SamplingMethod) -> DecodeState:
    """Row-level prefill and token 0 -> the initial decode state (`step` = 1)."""
    module = self._module(params)
    hidden, cache = self._extend_rows(module, cache, row_group, tokens, positions, mask, cache_len,
                                      prompt_slots=cache_len - max_new)
    logits = module.logits(hidden[:, -1:])[:, 0]  # [B, V]
    token, logprob = self._sample(sampler, logits, keys, jnp.int32(0))
    token = jnp.where(valid, token, self.pad_id)
    logprob = jnp.where(valid, logprob, 0.0)
    rows = tokens.shape[0]
    out_tokens = jnp.full((rows, max_new), self.pad_id, jnp.int32).at[:, 0].set(token)
    out_logprobs = jnp.zeros((rows, max_new), jnp.float32).at[:, 0].set(logprob)
    done = ~valid | _isin(token, eos) | (limits <= 1)
    return DecodeState(step=jnp.int32(1), tokens=self._constrain(out_tokens, ("batch", None)),
                       logprobs=self._constrain(out_logprobs, ("batch", None)),
                       num_tokens=valid.astype(jnp.int32), positions=lengths, done=done, limits=limits, keys=keys,
                       cache=cache)

  def _decode(self, params, state: DecodeState, stop_at, extra_done, eos, *, sampler: SamplingMethod
              ) -> DecodeState:
    """Decodes until every row is done or `state.step == stop_at` (`state` donated: the cache updates in place).

    Rows in `extra_done [B]` (stop strings found on the host) end first. A done row keeps running in the static
    batch with its input masked out; its outputs are pad / 0 and never read.
    """
    module = self._module(params)
    state = state.replace(done=state.done | extra_done)

    def cond(s: DecodeState):
      return (s.step < stop_at) & ~jnp.all(s.done)

    def body(s: DecodeState):
      previous = jax.lax.dynamic_slice_in_dim(s.tokens, s.step - 1, 1, axis=1)  # [B, 1]
      hidden, cache = module.model(previous, s.positions[:, None], ~s.done[:, None], s.cache)
      logits = module.logits(hidden)[:, 0]  # [B, V]
      token, logprob = self._sample(sampler, logits, s.keys, s.step)
      token = jnp.where(s.done, self.pad_id, token)
      logprob = jnp.where(s.done, 0.0, logprob)
      return s.replace(
          step=s.step + 1,
          tokens=jax.lax.dynamic_update_slice_in_dim(s.tokens, token[:, None], s.step, axis=1),
          logprobs=jax.lax.dynamic_update_slice_in_dim(s.logprobs, logprob[:, None], s.step, axis=1),
          num_tokens=s.num_tokens + (~s.done).astype(jnp.int32),
          positions=s.positions + 1,
          done=s.done | _isin(token, eos) | (s.step + 1 >= s.limits),
          cache=cache)

    return jax.lax.while_loop(cond, body, state)

  @staticmethod
  def _peek(state: DecodeState, start, *, width: int):
    """Small reads between chunks: `(tokens[:, start:start+width] or None, done [B], step [], num_tokens [B])`."""
    window = None if width == 0 else jax.lax.dynamic_slice_in_dim(state.tokens, start, width, axis=1)
    return window, state.done, state.step, state.num_tokens

  def _values(self, params, cache, row_group, tokens, positions, mask, *, cache_len: int) -> jax.Array:
    """PPM raw value `[B]` float32 at the last column of the row level (the last token of every row)."""
    module = self._module(params)
    hidden, _ = self._extend_rows(module, cache, row_group, tokens, positions, mask, cache_len)
    return module.value_head(hidden[:, -1])

  def _logprobs(self, params, cache, row_group, tokens, positions, mask, *, cache_len: int) -> jax.Array:
    """`[B, Tr - 1]` float32: log p(tokens[:, t + 1] | everything up to t) over the row level."""
    module = self._module(params)
    hidden, _ = self._extend_rows(module, cache, row_group, tokens, positions, mask, cache_len)
    logp = jax.nn.log_softmax(module.logits(hidden[:, :-1]), axis=-1)  # [B, Tr - 1, V]
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


@functools.lru_cache(maxsize=16)
def kernels_for(graphdef: nnx.GraphDef, config: ModelConfig, mesh: Mesh | None, rules: tuple, pad_id: int,
                vocab_limit: int | None = None) -> Kernels:
  """The shared `Kernels` of a model graph on a mesh."""
  return Kernels(graphdef, config, mesh, rules, pad_id, vocab_limit)
