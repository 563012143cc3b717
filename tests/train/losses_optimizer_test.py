"""Losses, schedules and AdamW against torch / transformers references (fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rstar_jax.train import losses, optimizer


def test_sft_loss_matches_torch_cross_entropy():
  rng = np.random.default_rng(0)
  b, t, v = 3, 7, 11
  logits = rng.normal(size=(b, t, v)).astype(np.float32) * 3
  targets = rng.integers(0, v, size=(b, t)).astype(np.int32)
  mask = rng.random((b, t)) < 0.6
  loss_sum, metrics = losses.sft_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  labels = torch.tensor(np.where(mask, targets, -100), dtype=torch.long)
  ref = torch.nn.functional.cross_entropy(torch.tensor(logits).reshape(-1, v), labels.reshape(-1),
                                          ignore_index=-100)
  np.testing.assert_allclose(float(loss_sum / metrics["num_tokens"]), ref.item(), rtol=1e-6)
  assert float(metrics["num_tokens"]) == mask.sum()
  ref_correct = ((logits.argmax(-1) == targets) & mask).sum()
  assert float(metrics["num_correct"]) == ref_correct


@pytest.mark.parametrize("head", ["raw", "tanh"])
def test_ppm_loss_matches_torch_formula(head):
  rng = np.random.default_rng(1)
  p = 9
  pos, neg = (rng.normal(size=p).astype(np.float32) * 2 for _ in range(2))
  counts = rng.integers(1, 5, size=(p, 2))
  weights = (1.0 / (counts[:, 0] * counts[:, 1])).astype(np.float32)
  mask = np.array([1] * 7 + [0] * 2, bool)  # the last two are batch padding
  loss_sum, metrics = losses.ppm_loss(jnp.asarray(pos), jnp.asarray(neg), jnp.asarray(weights),
                                      jnp.asarray(mask), head=head)
  tp, tn = torch.tensor(pos[mask]), torch.tensor(neg[mask])
  if head == "tanh":
    tp, tn = torch.tanh(tp), torch.tanh(tn)
  ref = (-torch.nn.functional.logsigmoid(tp - tn) * torch.tensor(weights[mask])).mean()
  np.testing.assert_allclose(float(loss_sum / metrics["num_pairs"]), ref.item(), rtol=1e-6)
  assert float(metrics["num_correct"]) == (tp > tn).sum().item()
  with pytest.raises(ValueError, match="unknown PPM head"):
    losses.ppm_loss(jnp.asarray(pos), jnp.asarray(neg), jnp.asarray(weights), jnp.asarray(mask), head="sigmoid")


@pytest.mark.parametrize("kind,warmup", [("linear", 0), ("linear", 3), ("cosine", 4), ("constant", 2)])
def test_schedules_match_transformers(kind, warmup):
  total = 13
  cfg = optimizer.OptimizerConfig(learning_rate=0.5, schedule=kind, warmup_steps=warmup)
  sched = optimizer.learning_rate_schedule(cfg, total)
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
  ref = {"linear": transformers.get_linear_schedule_with_warmup(opt, warmup, total),
         "cosine": transformers.get_cosine_schedule_with_warmup(opt, warmup, total),
         "constant": transformers.get_constant_schedule_with_warmup(opt, warmup)}[kind]
  for step in range(total + 2):
    np.testing.assert_allclose(float(sched(step)), ref.get_last_lr()[0], rtol=1e-6, atol=1e-9)
    opt.step()
    ref.step()


def test_adamw_steps_match_torch_with_param_groups_schedule_and_clipping():
  rng = np.random.default_rng(2)
  params = {"layer": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                      "bias": rng.normal(size=(3,)).astype(np.float32)},
            "input_layernorm": {"weight": rng.normal(size=(3,)).astype(np.float32)}}
  cfg = optimizer.OptimizerConfig(learning_rate=1e-2, weight_decay=0.1, schedule="linear", warmup_steps=1,
                                  max_grad_norm=0.5)
  total = 5
  tx = optimizer.make_optimizer(cfg, total)
  jparams = jax.tree.map(jnp.asarray, params)
  state = tx.init(jparams)
  tk = torch.nn.Parameter(torch.tensor(params["layer"]["kernel"]))
  tb = torch.nn.Parameter(torch.tensor(params["layer"]["bias"]))
  tn = torch.nn.Parameter(torch.tensor(params["input_layernorm"]["weight"]))
  topt = torch.optim.AdamW([{"params": [tk], "weight_decay": 0.1}, {"params": [tb, tn], "weight_decay": 0.0}],
                           lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
  tsched = transformers.get_linear_schedule_with_warmup(topt, 1, total)
  for _ in range(total):
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, jparams)
    jparams = jax.tree.map(lambda p, u: p + u, jparams, updates)
    for t, g in ((tk, grads["layer"]["kernel"]), (tb, grads["layer"]["bias"]),
                 (tn, grads["input_layernorm"]["weight"])):
      t.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_([tk, tb, tn], 0.5)
    topt.step()
    tsched.step()
  for got, ref in ((jparams["layer"]["kernel"], tk), (jparams["layer"]["bias"], tb),
                   (jparams["input_layernorm"]["weight"], tn)):
    np.testing.assert_allclose(np.asarray(got), ref.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_decay_mask_names():
  params = {"model": {"layers": {"self_attn": {"q_proj": {"kernel": 0, "bias": 0}},
                                 "input_layernorm": {"weight": 0}},
                      "norm": {"weight": 0}, "embed_tokens": {"embedding": 0}},
            "value_head": {"kernel": 0, "bias": 0}}
  assert optimizer.decay_mask(params) == {
      "model": {"layers": {"self_attn": {"q_proj": {"kernel": True, "bias": False}},
                           "input_layernorm": {"weight": False}},
                "norm": {"weight": False}, "embed_tokens": {"embedding": True}},
      "value_head": {"kernel": True, "bias": False}}
