"""Losses and metrics as pure functions on arrays (DESIGN §1.4).

Each loss returns the *sum* of its per-item terms plus the counts needed to normalise it, so gradient
accumulation over micro-batches reproduces the full-batch mean exactly: the trainer divides the summed
gradients by the summed count once, after the last micro-batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PPM_HEADS = ("raw", "tanh")


def sft_loss(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Causal-LM cross-entropy on response tokens.

  Args:
    logits: `[B, T, V]` next-token logits (computed in float32 here whatever their dtype).
    targets: `[B, T]` int32, the token each position must predict (inputs shifted left by one).
    loss_mask: `[B, T]` bool/float, 1 where the target is a response token (prompt and padding 0).

  Returns:
    `loss_sum` (sum of masked token cross-entropies) and metrics with float32 scalars `loss_sum`,
    `num_tokens` (masked target count) and `num_correct` (masked targets that are the argmax).
    The mean loss is `loss_sum / num_tokens`, as `transformers` computes with `-100` labels.
  """
  logits = logits.astype(jnp.float32)
  mask = loss_mask.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  loss_sum = jnp.sum((log_z - target_logit) * mask)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  metrics = {"loss_sum": loss_sum, "num_tokens": jnp.sum(mask), "num_correct": jnp.sum(correct * mask)}
  return loss_sum, metrics


def ppm_head(raw: jax.Array, head: str) -> jax.Array:
  """The score the loss compares: the raw linear output (official) or its tanh (paper)."""
  if head == "raw":
    return raw
  if head == "tanh":
    return jnp.tanh(raw)
  raise ValueError(f"unknown PPM head {head!r}; expected one of {PPM_HEADS}")


def ppm_loss(raw_pos: jax.Array, raw_neg: jax.Array, weights: jax.Array, pair_mask: jax.Array,
             head: str = "raw") -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted pairwise Bradley-Terry loss `-w * log sigmoid(r_pos - r_neg)`.

  Args:
    raw_pos: `[P]` raw value-head outputs for `prompt + pos`.
    raw_neg: `[P]` raw value-head outputs for `prompt + neg`.
    weights: `[P]` pair weights `1 / (pos_count * neg_count)`.
    pair_mask: `[P]` bool/float, 1 for real pairs (0 for batch padding).
    head: "raw" (official rStar training) or "tanh" (the paper's head).

  Returns:
    `loss_sum` (sum over real pairs of the weighted losses) and metrics: `loss_sum`, `num_pairs`
    (real pairs), `num_correct` (real pairs with score(pos) > score(neg)). The batch loss is
    `loss_sum / num_pairs`, the mean of the weighted per-pair losses.
  """
  mask = pair_mask.astype(jnp.float32)
  r_pos = ppm_head(raw_pos.astype(jnp.float32), head)
  r_neg = ppm_head(raw_neg.astype(jnp.float32), head)
  per_pair = -jax.nn.log_sigmoid(r_pos - r_neg) * weights.astype(jnp.float32)
  loss_sum = jnp.sum(per_pair * mask)
  correct = (r_pos > r_neg).astype(jnp.float32)
  metrics = {"loss_sum": loss_sum, "num_pairs": jnp.sum(mask), "num_correct": jnp.sum(correct * mask)}
  return loss_sum, metrics
