"""Sampling methods and per-sample random keys.

A sampling method is a small frozen dataclass: hashable, so the jitted decode loop takes it as a static argument and
compiles once per method, never per call. `method(logits [B, V], keys [B, 2]) -> tokens [B]`.

Keys are per sample, never per batch: sample `j` of a request with seed `s` draws its `t`-th token with
`fold_in(fold_in(sample_key(s), j), t)`, so what a sample gets does not depend on which other requests share its batch,
on its row, or on how many samples the request asked for.

Order of the filters is Hugging Face's (`TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`) and vLLM's:
logits / temperature, then keep the `top_k` largest (and any token tied with the `top_k`-th, as HF and vLLM do), then
the smallest set of the most likely remaining tokens whose probability reaches `top_p`.

The Gumbel noise of a draw is indexed by token id, so a draw depends on the logits only through the noisy scores'
argmax: logits that differ by a rounding error (the same row in another batch shape or on another mesh computes its
logits with a different reduction order) give the same token unless the two best noisy scores are within that error,
or the top-k / top-p cutoff falls between two tokens within that error (or the top-p mass reaches `top_p` within it)
and the token kept on one side is drawn (a filter is a threshold: a token on it is in or out).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class SamplingMethod(Protocol):
  """`logits [B, V] float32`, `keys [B, 2] uint32` (one PRNG key per row, already folded per step) -> `[B] int32`."""

  def __call__(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
    ...


def first_argmax(x: jax.Array) -> jax.Array:
  """`jnp.argmax(x, axis=-1)` (first index on ties) for `x [B, V]` -> `[B]` int32, as a max and a min.

  XLA:CPU runs `argmax` as a variadic (value, index) reduction that does not vectorise: over a vocabulary it is
  3-4x slower than these two plain reductions (8 x 512: 23 vs 5 us; 8 x 32000: 577 vs 172 us), and a decode step
  takes one per token. A row holding NaN (never a valid model output) gives the last column.
  """
  best = jnp.max(x, axis=-1, keepdims=True)
  columns = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.min(jnp.where(x == best, columns, x.shape[-1] - 1), axis=-1)


@dataclasses.dataclass(frozen=True)
class Greedy:
  """The most likely token (first index on ties, as `torch.argmax` / HF greedy search)."""

  def __call__(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
    del keys
    return first_argmax(logits)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Ancestral sampling from softmax(logits / temperature), optionally restricted by top-k and top-p.

  Attributes:
    temperature: > 0. (Use `Greedy` for temperature 0.)
    top_p: in (0, 1]; 1 disables nucleus filtering.
    top_k: >= 0; 0 disables top-k filtering, and so does -1 (vLLM's spelling, which the official rStar configs use).
  """
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0

  def __post_init__(self):
    for name in ("temperature", "top_p"):  # a string or None (a config file's value) failed in the comparison below
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0 < self.temperature < float("inf"):  # an infinite one sampled uniformly over the vocabulary
      raise ValueError(f"temperature must be > 0 and finite (use Greedy() for greedy decoding), got "
                       f"{self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < -1:
      raise ValueError(f"top_k must be a non-negative integer (or -1 for off, as in vLLM), got {self.top_k!r}")

  def candidates(self, logits: jax.Array) -> jax.Array:
    """The filtered scaled logits, in token order.

    Top-k keeps every token scoring at least the `top_k`-th largest score (ties at the boundary included, as
    `TopKLogitsWarper`); top-p then keeps every token scoring at least the last token of the smallest most-likely
    prefix whose probability (over what top-k kept) reaches `top_p` (a tie at that boundary keeps all tied tokens).

    Args:
      logits: `[B, V]` float32.

    Returns:
      `[B, V]` float32: (logits - the row's max) / temperature (softmax-equivalent to logits / temperature), `-inf`
      where filtered out; column c is token c.
    """
    logits = logits.astype(jnp.float32)
    # Shifted first, so the scores are <= 0: `logits / T` overflowed to +inf below T ~ 1e-37 (every positive logit
    # tied at +inf, and the draw took the lowest id, not the argmax); a score below float32's range becomes -inf,
    # probability 0, the T -> 0 limit. T is kept >= float32's smallest normal: one below it rounded (or flushed) to 0
    # and 0 / 0 was NaN; the tempered gaps there dwarf any Gumbel noise anyway, so the draw is the argmax.
    temperature = max(float(self.temperature), float(np.finfo(np.float32).tiny))
    scores = (logits - jnp.max(logits, axis=-1, keepdims=True)) / jnp.float32(temperature)
    vocab = scores.shape[-1]
    top_k = self.top_k if 0 < self.top_k < vocab else 0
    if top_k == 0 and self.top_p >= 1:
      return scores
    # `lax.top_k` sorts descending; with k = V it is a full sort, needed by top-p. Only the sorted values are used:
    # the filter becomes a score threshold, so which tokens survive does not depend on how ties were sorted.
    ranked, _ = jax.lax.top_k(scores, top_k or vocab)  # [B, C]
    cutoff = ranked[:, -1:]  # [B, 1]
    if self.top_p < 1:
      best = ranked[:, :1]
      weights = jnp.exp(ranked - best)  # [B, C]
      total = jnp.sum(weights, axis=-1, keepdims=True)
      if top_k:  # tokens tied with the k-th beyond the k columns were kept by top-k: they count in the mass
        extra = jnp.sum(scores >= cutoff, axis=-1, keepdims=True) - top_k
        total = total + extra.astype(jnp.float32) * jnp.exp(cutoff - best)
      probs = weights / total
      # Probability of the strictly more likely columns (an exclusive cumsum: non-decreasing, 0 first).
      mass_before = jnp.concatenate([jnp.zeros_like(probs[:, :1]), jnp.cumsum(probs, axis=-1)[:, :-1]], axis=-1)
      kept = jnp.sum(mass_before < self.top_p, axis=-1, keepdims=True)  # [B, 1], >= 1: a prefix of the columns
      cutoff = jnp.take_along_axis(ranked, kept - 1, axis=-1)
    return jnp.where(scores >= cutoff, scores, -jnp.inf)

  def __call__(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
    scores = self.candidates(logits)
    # The Gumbel-max draw `jax.random.categorical` makes, with the argmax as two plain reductions. The noise is
    # indexed by token id (never by rank), so logits that move by a rounding error (another batch shape, another
    # mesh) change the draw only when its two best noisy scores are that close (or the filters' cutoff moves past the
    # drawn token, module docstring), not whenever two tokens swap ranks.
    gumbel = jax.vmap(lambda key, row: jax.random.gumbel(key, row.shape, jnp.float32))(keys, scores)
    return first_argmax(scores + gumbel)


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """Log-probability of `tokens [B]` under the raw model distribution softmax(`logits [B, V]`), float32 `[B]`.

  These are the policy's log-likelihoods (temperature 1, unfiltered), the same quantity `Engine.loglikelihood` sums.
  """
  logits = logits.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def step_keys(sample_keys: jax.Array, step: jax.Array) -> jax.Array:
  """`sample_keys [B, 2] uint32` -> the keys of decode step `step` `[B, 2]` (the inputs are not consumed)."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(sample_keys, step)


@jax.jit
def _sample_keys(seeds_lo: jax.Array, seeds_hi: jax.Array, sample_index: jax.Array) -> jax.Array:
  def one(lo, hi, j):
    key = jax.random.fold_in(jax.random.PRNGKey(lo), hi)
    return jax.random.fold_in(key, j)
  return jax.vmap(one)(seeds_lo, seeds_hi, sample_index)


def sample_keys(seeds: Sequence[int], sample_index: Sequence[int]) -> np.ndarray:
  """The PRNG key of sample `sample_index[i]` of a request seeded `seeds[i]`, `[B, 2] uint32` (host array).

  Seeds are any Python ints; they are taken modulo 2**64 and both 32-bit halves enter the key, so distinct 64-bit
  seeds give distinct streams.
  """
  seeds_u64 = np.asarray([int(s) % 2**64 for s in seeds], dtype=np.uint64)
  lo = (seeds_u64 & np.uint64(0xFFFFFFFF)).astype(np.uint32)
  hi = (seeds_u64 >> np.uint64(32)).astype(np.uint32)
  index = np.asarray(sample_index, dtype=np.uint32)
  if lo.shape != index.shape:
    raise ValueError(f"seeds and sample_index must have the same length, got {lo.shape} and {index.shape}")
  if lo.size == 0:
    return np.zeros((0, 2), np.uint32)
  return np.asarray(_sample_keys(lo, hi, index))
