"""Jitted train and eval steps for policy SFT and the PPM.

A global batch is split into `accum_steps` micro-batches (row `i` goes to micro-batch `i % accum_steps`, so
each micro-batch stays spread over every data-parallel device); their summed loss gradients are divided once
by the summed token (SFT) or pair (PPM) count, which makes the update equal to the full-batch one.

Randomness (the PPM's optional value-head dropout) is a function of `(seed, step, row of the global batch, side)`
only: the same masks whatever the micro-batch split or the mesh, and the same again after a resume.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rstar_jax import sharding as sharding_lib
from rstar_jax.train import losses
from rstar_jax.train.state import TrainState

Batch = dict[str, jax.Array]
LossFn = Callable[[nnx.State, Batch], tuple[jax.Array, dict[str, jax.Array]]]


def sft_loss_fn(graphdef: nnx.GraphDef) -> LossFn:
  """`(params, batch) -> (loss_sum, metrics)` of the causal LM on an SFT batch (see data.pipeline)."""
  def loss_fn(params, batch):
    model = nnx.merge(graphdef, params)
    out = model(batch["tokens"], batch["positions"], batch["input_mask"])
    return losses.sft_loss(out.logits, batch["targets"], batch["loss_mask"])
  return loss_fn


def ppm_loss_fn(graphdef: nnx.GraphDef, head: str = "raw", value_head_dropout: float = 0.0) -> LossFn:
  """`(params, batch) -> (loss_sum, metrics)` of the PPM on a pair batch: pos and neg rows in one forward.

  With `value_head_dropout > 0` the batch must also hold `dropout_key` (this step's key) and `row` `[P]` (each pair's
  row in the global batch), as `make_train_step(..., dropout_seed=...)` adds them; see `dropout_keys`.
  """
  def loss_fn(params, batch):
    model = nnx.merge(graphdef, params)
    p = batch["pos_tokens"].shape[0]
    cat = lambda name: jnp.concatenate([batch[f"pos_{name}"], batch[f"neg_{name}"]], axis=0)
    dropout = {}
    if value_head_dropout > 0.0:
      if "dropout_key" not in batch:
        raise ValueError("value-head dropout needs the batch's dropout_key and row: build the train step with "
                         "make_train_step(..., dropout_seed=...)")
      dropout = dict(dropout_rate=value_head_dropout, dropout_keys=dropout_keys(batch["dropout_key"], batch["row"]))
    values = model(cat("tokens"), cat("positions"), cat("mask"), **dropout)  # [2P] raw head outputs
    return losses.ppm_loss(values[:p], values[p:], batch["weights"], batch["pair_mask"], head)
  return loss_fn


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The PRNG key of the update that starts at `step` (updates applied so far)."""
  return jax.random.fold_in(jax.random.key(seed), step)


def dropout_keys(key: jax.Array, rows: jax.Array) -> jax.Array:
  """`rows [P]` global pair rows -> `[2P]` keys: the pos sides' (`2 * row`), then the neg sides' (`2 * row + 1`)."""
  rows = rows.astype(jnp.int32)
  return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.concatenate([2 * rows, 2 * rows + 1]))


def batch_sharding(mesh: Mesh, ndim: int, leading: int = 0) -> NamedSharding:
  """Rows (after `leading` unsharded dims) split over `data` x `fsdp`, everything else replicated."""
  return NamedSharding(mesh, PartitionSpec(*([None] * leading), ("data", "fsdp"), *([None] * (ndim - leading - 1))))


def _split_micro(batch: Batch, accum_steps: int, mesh: Mesh) -> Batch:
  def split(x):
    rows = x.shape[0]
    if rows % accum_steps:
      raise ValueError(f"batch of {rows} rows does not split into {accum_steps} micro-batches")
    x = x.reshape((rows // accum_steps, accum_steps) + x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim, leading=1))
  return jax.tree.map(split, batch)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, mesh: Mesh, *, accum_steps: int,
                    count_key: str, schedule: Callable[[jax.Array], jax.Array] | None = None,
                    dropout_seed: int | None = None, rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """A pure `(state, batch) -> (state, metrics)`; jit it with the state donated.

  Args:
    loss_fn: summed loss and metric sums of one micro-batch.
    tx: the optimizer.
    mesh: device mesh (activations get their logical sharding constraints on it).
    accum_steps: micro-batches per update.
    count_key: the metric that normalises the loss ("num_tokens" or "num_pairs").
    schedule: learning-rate schedule, only to report the rate used by this step.
    dropout_seed: when set, every micro-batch also gets `dropout_key` (`step_key(dropout_seed, state.step)`) and
      `row` (each row's index in the global batch), for a loss with dropout (`ppm_loss_fn`'s `value_head_dropout`).
    rules: logical axis rules.

  Returns:
    The step. Metrics: `loss`, `accuracy` (token or pair), `grad_norm` (after normalisation, before
    clipping), `learning_rate` (the rate this update used; the HF Trainer logs the next update's, its scheduler having
    stepped, so its curve is one step ahead and ends at 0), and the raw sums.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch: Batch):
    with sharding_lib.activation_sharding(mesh, rules):
      if dropout_seed is not None:
        # Row ids travel through the same micro-batch split as the rows, so each row keeps its masks under any split.
        batch = dict(batch, row=jnp.arange(jax.tree.leaves(batch)[0].shape[0], dtype=jnp.int32))
      micro = _split_micro(batch, accum_steps, mesh)
      keyed = (lambda mb: mb) if dropout_seed is None else (
          lambda mb: dict(mb, dropout_key=step_key(dropout_seed, state.step)))

      def accumulate(carry, micro_batch):
        grads, sums = carry
        (_, metrics), g = grad_fn(state.params, keyed(micro_batch))
        return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, sums, metrics)), None

      zero_grads = jax.tree.map(jnp.zeros_like, state.params)
      zero_sums = jax.eval_shape(lambda: loss_fn(state.params, keyed(jax.tree.map(lambda x: x[0], micro)))[1])
      zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_sums)
      (grads, sums), _ = jax.lax.scan(accumulate, (zero_grads, zero_sums), micro)
    count = jnp.maximum(sums[count_key], 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(sums, loss=sums["loss_sum"] / count, accuracy=sums["num_correct"] / count,
                   grad_norm=optax.global_norm(grads))
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    return TrainState(state.step + 1, params, opt_state), metrics

  return step


def make_eval_step(loss_fn: LossFn, mesh: Mesh, rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES
                   ) -> Callable[[nnx.State, Batch], dict[str, jax.Array]]:
  """A pure `(params, batch) -> metric sums` (loss and accuracy sums and counts), no gradients."""
  def step(params, batch):
    with sharding_lib.activation_sharding(mesh, rules):
      return loss_fn(params, batch)[1]
  return step


def jit_train_step(step, state_shardings, mesh: Mesh):
  """jit with the train state donated and kept in its sharding; metrics come back replicated.

  Input shardings come with the arguments: the state is placed by `create_state`, batches by `put_batch`.
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(step, out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def put_batch(batch: dict, mesh: Mesh) -> Batch:
  """Host arrays of this process's rows -> global arrays sharded over `data` x `fsdp` (multi-host safe).

  Every process passes its own contiguous `1 / process_count` of the global batch's rows (`data.pipeline`), so the
  global batch has `process_count` times as many rows; a mesh that does not split the rows across the processes
  (e.g. tensor-only) cannot take them and raises instead of treating each process's rows as the whole batch.
  """
  count = jax.process_count()
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v,
                                                    (v.shape[0] * count,) + v.shape[1:])
          for k, v in batch.items()}

