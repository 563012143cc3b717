"""SFT and PPM losses (and SFT gradients) against `transformers` / torch on the same weights and batch (fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

import rstar_train_testlib as testlib
from rstar_jax import sharding
from rstar_jax import tokenizer as tokenizer_lib
from rstar_jax.data import formats, pipeline
from rstar_jax.models import ModelConfig, PPM, ValueHead, convert, dropout_keep_mask
from rstar_jax.models.ppm import OFFICIAL_VALUE_HEAD_INIT
from rstar_jax.train import config as config_lib
from rstar_jax.train import optimizer
from rstar_jax.train import state as state_lib
from rstar_jax.train import steps


def _checkpoint(tmp_path_factory, tie):
  path = tmp_path_factory.mktemp("hf")
  records = testlib.arithmetic_sft_records(12)
  hf_model = testlib.tiny_hf_model(path, tie=tie, seed=3)
  testlib.tiny_tokenizer(path, [formats.sft_prompt(r["query"]) + r["response"] for r in records])
  tok = tokenizer_lib.load_tokenizer(path)
  tokenizer_lib.add_rstar_tokens(tok)
  config = ModelConfig.from_hf_config(path, param_dtype="float32")
  return path, hf_model, tok, config, [formats.SftRecord(**r) for r in records]


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def checkpoint(request, tmp_path_factory):
  return _checkpoint(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def tied_checkpoint(tmp_path_factory):
  return _checkpoint(tmp_path_factory, True)


def _sft_batch(records, tok):
  config = pipeline.PipelineConfig(max_len=72, batch_size=6, num_epochs=1, shuffle=False)
  return next(pipeline.sft_pipeline(records[:6], tok, config).iterator())


def test_sft_loss_and_grads_match_transformers(checkpoint, tmp_path):
  path, hf_model, tok, config, records = checkpoint
  batch = _sft_batch(records, tok)
  # Rows longer than max_len were truncated: make sure at least one row is full so the last column counts.
  model = convert.load_qwen2(path, config)
  graphdef, params = state_lib.split_params(model)

  def mean_loss(p):
    loss_sum, metrics = steps.sft_loss_fn(graphdef)(p, jax.tree.map(jnp.asarray, batch))
    return loss_sum / metrics["num_tokens"]

  loss, grads = jax.value_and_grad(mean_loss)(params)

  reference_loss, reference_grads = _hf_sft_loss_and_grads(hf_model, batch)
  np.testing.assert_allclose(float(loss), reference_loss, rtol=1e-5)

  # Gradients: write ours as an HF checkpoint (same name table as the weights) and compare by HF name.
  ours = _grads_by_hf_name(graphdef, grads, tmp_path / "grads")
  for name, reference in reference_grads.items():
    if name == "lm_head.weight" and config.tie_word_embeddings:
      continue  # tied: HF accumulates the head's gradient into the embedding
    np.testing.assert_allclose(ours[name], reference, rtol=2e-4, atol=2e-7, err_msg=name)


def _hf_sft_loss_and_grads(hf_model, batch, autocast_dtype=None):
  """transformers' mean SFT loss and gradients by parameter name (under torch autocast when a dtype is given)."""
  # transformers sees the full sequences (inputs + the last target) and -100 on prompt and padding.
  rows = batch["tokens"].shape[0]
  last_real = batch["input_mask"][:, -1:]
  input_ids = np.concatenate([batch["tokens"], batch["targets"][:, -1:]], axis=1)
  attention = np.concatenate([batch["input_mask"], last_real], axis=1)
  labels = np.concatenate([np.full((rows, 1), -100), np.where(batch["loss_mask"] > 0, batch["targets"], -100)],
                          axis=1)
  hf_model.zero_grad()
  with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
    out = hf_model(input_ids=torch.tensor(input_ids, dtype=torch.long),
                   attention_mask=torch.tensor(attention, dtype=torch.long),
                   labels=torch.tensor(labels, dtype=torch.long))
  out.loss.backward()
  grads = {name: param.grad.numpy().copy() for name, param in hf_model.named_parameters()}
  hf_model.zero_grad()
  return out.loss.item(), grads


def _grads_by_hf_name(graphdef, grads, out_dir):
  """Our gradient tree written as an HF checkpoint (the weights' name table) and read back, float32."""
  convert.save_qwen2(nnx.merge(graphdef, grads), out_dir, dtype="float32")
  return load_file(str(out_dir / "model.safetensors"))


def test_bf16_compute_grads_are_as_close_to_fp32_as_torch_autocast(checkpoint, tmp_path):
  # A bias or norm weight multiplies every token, so its gradient is a sum over the batch's tokens; added in bf16,
  # that sum ran in bf16 (the v_proj bias came out 5% off, 17x torch autocast's error), and so did an embedding row's.
  # Reference: torch's fp32 gradients; the yardstick is torch bf16 autocast's error against them. Factor 2: ours
  # keeps the residual stream in bf16 (as HF's bf16 models) where autocast keeps it in fp32, so the rounding
  # differs; both errors are bf16 rounding (0.2-1%), while a bf16-summed gradient was 3-17x autocast's.
  path, hf_model, tok, config, records = checkpoint
  batch = _sft_batch(records, tok)
  model = convert.load_qwen2(path, config.replace(dtype="bfloat16"))
  graphdef, params = state_lib.split_params(model)

  def mean_loss(p):
    loss_sum, metrics = steps.sft_loss_fn(graphdef)(p, jax.tree.map(jnp.asarray, batch))
    return loss_sum / metrics["num_tokens"]

  loss, grads = jax.jit(jax.value_and_grad(mean_loss))(params)
  assert loss.dtype == jnp.float32 and {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  fp32_loss, fp32_grads = _hf_sft_loss_and_grads(hf_model, batch)
  _, autocast_grads = _hf_sft_loss_and_grads(hf_model, batch, torch.bfloat16)
  np.testing.assert_allclose(float(loss), fp32_loss, rtol=1e-3)  # autocast's loss: 2e-5 off
  ours = _grads_by_hf_name(graphdef, grads, tmp_path / "grads")
  relative = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
  for name, reference in fp32_grads.items():
    if name == "lm_head.weight" and config.tie_word_embeddings:
      continue
    ours_error, autocast_error = relative(ours[name], reference), relative(autocast_grads[name], reference)
    assert ours_error <= 2 * autocast_error + 1e-3, (name, ours_error, autocast_error)


def _ppm_batch_and_model(path, tok, config, records):
  """A 6-row PPM batch (5 pairs and a padding row) and a PPM on the checkpoint's backbone with a head large enough
  to move the loss."""
  pairs = [formats.PpmPair(prompt=formats.sft_prompt(r.query), pos=r.response[:20 + 3 * i], neg=r.response[-25:],
                           pos_count=1 + i % 2, neg_count=1 + i % 3) for i, r in enumerate(records[:5])]
  batch = next(pipeline.ppm_pipeline(pairs, tok, pipeline.PipelineConfig(
      max_len=96, batch_size=6, num_epochs=1, shuffle=False)).iterator())
  ppm = nnx.eval_shape(lambda: PPM(config, rngs=nnx.Rngs(0)))
  ppm.model = convert.load_qwen2(path, config).model
  ppm.value_head = ValueHead(config, rngs=nnx.Rngs(1), init_std=0.5)
  return batch, ppm


def test_ppm_loss_matches_torch(checkpoint):
  path, _, tok, config, records = checkpoint
  batch, ppm = _ppm_batch_and_model(path, tok, config, records)
  graphdef, params = state_lib.split_params(ppm)
  for head in ("raw", "tanh"):
    loss_sum, metrics = steps.ppm_loss_fn(graphdef, head)(params, jax.tree.map(jnp.asarray, batch))

    # Reference: HF backbone hidden state at each row's last real token, the same linear head, the formula.
    backbone = transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    kernel = torch.tensor(np.asarray(ppm.value_head.kernel[...]))
    bias = torch.tensor(np.asarray(ppm.value_head.bias[...]))

    def score(side):
      ids = torch.tensor(batch[f"{side}_tokens"], dtype=torch.long)
      mask = torch.tensor(batch[f"{side}_mask"], dtype=torch.long)
      with torch.no_grad():
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
      last = mask.sum(1) - 1
      raw = hidden[torch.arange(len(ids)), last] @ kernel[:, 0] + bias[0]
      return torch.tanh(raw) if head == "tanh" else raw

    real = torch.tensor(batch["pair_mask"] > 0)
    weights = torch.tensor(batch["weights"])
    ref = (-torch.nn.functional.logsigmoid(score("pos") - score("neg")) * weights)[real].mean()
    assert float(metrics["num_pairs"]) == 5
    np.testing.assert_allclose(float(loss_sum / metrics["num_pairs"]), ref.item(), rtol=1e-5)


def test_bf16_compute_keeps_fp32_master_weights(tied_checkpoint):
  path, _, tok, config, records = tied_checkpoint
  batch = jax.tree.map(jnp.asarray, _sft_batch(records, tok))
  losses = {}
  for dtype in ("float32", "bfloat16"):
    model = convert.load_qwen2(path, config.replace(dtype=dtype))
    graphdef, params = state_lib.split_params(model)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    loss_sum, metrics = jax.jit(steps.sft_loss_fn(graphdef))(params, batch)
    losses[dtype] = float(loss_sum / metrics["num_tokens"])
  assert losses["bfloat16"] != losses["float32"]  # bf16 matmuls really ran
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=2e-2)


def test_ppm_value_head_dropout_matches_the_official_head_in_train_mode(tied_checkpoint):
  # The official ValueHead runs nn.Dropout(0.1) on hidden_states[-1] before its Linear, active under the Trainer's
  # train mode. Reference: that head in torch on the HF model's hidden states, with torch's dropout mask replaced by
  # ours at the positions the loss reads; loss and gradients must agree.
  path, _, tok, config, records = tied_checkpoint
  batch, ppm = _ppm_batch_and_model(path, tok, config, records)
  graphdef, params = state_lib.split_params(ppm)
  rate, key, rows = 0.1, steps.step_key(7, 3), jnp.arange(6, dtype=jnp.int32)
  keyed = dict(jax.tree.map(jnp.asarray, batch), dropout_key=key, row=rows)

  def mean_loss(p, rate):
    loss_sum, metrics = steps.ppm_loss_fn(graphdef, "raw", rate)(p, keyed)
    return loss_sum / metrics["num_pairs"]

  loss, grads = jax.value_and_grad(mean_loss)(params, rate)
  keep = np.asarray(dropout_keep_mask(steps.dropout_keys(key, rows), rate, config.hidden_size))  # [2P, D]
  assert 0.8 < keep.mean() < 0.97 and (keep[:6] != keep[6:]).any()  # ~10% dropped; pos and neg masks differ

  hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
  summary = torch.nn.Linear(config.hidden_size, 1)
  with torch.no_grad():
    summary.weight.copy_(torch.tensor(np.asarray(ppm.value_head.kernel[...]).T))
    summary.bias.copy_(torch.tensor(np.asarray(ppm.value_head.bias[...])))
  torch.manual_seed(0)
  scores = []
  for s, side in enumerate(("pos", "neg")):
    ids = torch.tensor(batch[f"{side}_tokens"], dtype=torch.long)
    mask = torch.tensor(batch[f"{side}_mask"], dtype=torch.long)
    hidden = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]  # [P, T, D]
    last = (mask.sum(-1) - 1).clamp(min=0)  # the official read position (right padding); row 6 is batch padding
    drop = torch.bernoulli(torch.full(hidden.shape, 1 - rate))
    drop[torch.arange(6), last] = torch.tensor(keep[6 * s:6 * (s + 1)], dtype=torch.float32)
    values = summary(hidden * drop / (1 - rate)).squeeze(-1)  # nn.Dropout: input * mask / (1 - p)
    scores.append(values.gather(-1, last[:, None])[:, 0])
  real = torch.tensor(batch["pair_mask"] > 0)
  ref = (-torch.nn.functional.logsigmoid(scores[0] - scores[1]) * torch.tensor(batch["weights"]))[real].mean()
  ref.backward()
  np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-5)
  assert abs(float(loss) - float(mean_loss(params, 0.0))) > 1e-3  # the dropout did change the loss
  np.testing.assert_allclose(np.asarray(grads["value_head"]["kernel"][...]).T, summary.weight.grad.numpy(),
                             rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(np.asarray(grads["model"]["norm"]["weight"][...]), hf.model.norm.weight.grad.numpy(),
                             rtol=1e-4, atol=1e-7)


class _CharTokenizer:
  """One id per character, so `prompt + response` tokenizes as the two parts do and the official reference (one text,
  the prompt's length masked) has the same ids as ours (two texts concatenated)."""

  def __init__(self, eos, pad):
    self.eos_id, self.pad_id = eos, pad

  def encode(self, text):
    return [3 + ord(c) % 500 for c in text]


def _torch_adamw(named, opt_config, lr, total):
  """torch AdamW with the transformers Trainer's param groups (no decay on biases and norms) and its schedule."""
  no_decay = lambda name: "bias" in name or "norm" in name
  torch_opt = torch.optim.AdamW(
      [{"params": [p for n, p in named if not no_decay(n)], "weight_decay": opt_config.weight_decay},
       {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}], lr=lr, eps=1e-3)
  make_schedule = {"linear": transformers.get_linear_schedule_with_warmup,
                   "cosine": transformers.get_cosine_schedule_with_warmup}.get(
                       opt_config.schedule, lambda o, w, _: transformers.get_constant_schedule_with_warmup(o, w))
  return torch_opt, make_schedule(torch_opt, opt_config.warmup_steps, total)


@pytest.mark.parametrize("seed", range(3))
def test_sft_train_steps_fuzz_match_transformers_and_torch_adamw(seed, tmp_path):
  # Random tiny model, records (empty queries/responses, rows cut at max_len or dropped), buckets, micro-batch split
  # and AdamW settings (schedule, warm-up, decay, clipping off/below/above the norm). Reference: transformers' causal
  # LM loss on the official layout (one text, -100 on the prompt and padding), torch AdamW with the Trainer's
  # param groups and schedule, clip_grad_norm_; compared: per-row targets, loss, grad norm, lr, weights after.
  rng = np.random.default_rng(seed)
  hf = testlib.tiny_hf_model(tmp_path, tie=bool(seed % 2), seed=seed, hidden=int(rng.choice([16, 32])),
                             layers=int(rng.integers(1, 3)))
  config = ModelConfig.from_hf_config(tmp_path, param_dtype="float32")
  tok = _CharTokenizer(eos=0, pad=[None, 0, 1][seed % 3])
  text = lambda lo, hi: "".join(rng.choice(list("ab cd\n{}0123XY")) for _ in range(rng.integers(lo, hi + 1)))
  records = [formats.SftRecord(query=text(0, 6), response=text(0, 20)) for _ in range(int(rng.integers(6, 12)))]
  max_len, template, overlong = int(rng.integers(8, 24)), "Q:{input}\nA:", ["truncate", "drop"][seed % 2]
  batch_size, accum = [(4, 2), (3, 1), (4, 4)][seed]
  data_config = pipeline.PipelineConfig(max_len=max_len, batch_size=batch_size, num_epochs=1, shuffle=False,
                                        buckets=(max_len // 2,), overlong=overlong, prompt_template=template)
  reference_rows = []  # (ids, labels) as the official collator builds them, cut to max_len inputs + 1 target
  for r in records:
    # The official `preprocess`: prompt + response + EOS tokenized as one text, -100 on len(encode(prompt)) ids.
    prompt_text = formats.sft_prompt(r.query, template) if r.query else ""  # no prompt for an empty query
    num_prompt = len(tok.encode(prompt_text))
    ids = tok.encode(prompt_text + r.response) + [tok.eos_id]
    labels = [-100] * num_prompt + ids[num_prompt:]
    if len(ids) - 1 > max_len:
      if overlong == "drop":
        continue
      ids, labels = ids[:max_len + 1], labels[:max_len + 1]
    if any(label != -100 for label in labels[1:]):
      reference_rows.append((ids, labels))
  batches = list(pipeline.sft_pipeline(records, tok, data_config).iterator())
  opt_config = optimizer.OptimizerConfig(
      learning_rate=1e-3, weight_decay=[0.1, 0.0, 0.5][seed], eps=1e-3, schedule=["linear", "cosine", "constant"][seed],
      warmup_steps=seed % 3, max_grad_norm=[1e-3, None, 1.0][seed])
  total = len(batches)
  mesh = sharding.make_mesh()
  graphdef, params = state_lib.split_params(convert.load_qwen2(tmp_path, config))
  tx = optimizer.make_optimizer(opt_config, total)
  schedule = optimizer.learning_rate_schedule(opt_config, total)
  state = state_lib.create_state(params, tx, mesh)
  step = steps.jit_train_step(steps.make_train_step(steps.sft_loss_fn(graphdef), tx, mesh, accum_steps=accum,
                                                    count_key="num_tokens", schedule=schedule),
                              state_lib.state_shardings(params, tx, mesh), mesh)
  named = list(hf.named_parameters())
  torch_opt, torch_schedule = _torch_adamw(named, opt_config, lr=1e-3, total=total)
  for index, batch in enumerate(batches[:2]):
    rows = reference_rows[index * batch_size:(index + 1) * batch_size]
    width = batch["tokens"].shape[1]
    assert width == (max_len // 2 if max(len(ids) - 1 for ids, _ in rows) <= max_len // 2 else max_len)
    ids = np.zeros((len(rows), width + 1), np.int64)
    labels = np.full((len(rows), width + 1), -100)
    for i, (row_ids, row_labels) in enumerate(rows):
      ids[i, :len(row_ids)], labels[i, :len(row_labels)] = row_ids, row_labels
      np.testing.assert_array_equal(batch["targets"][i, :len(row_ids) - 1], row_ids[1:])
    np.testing.assert_array_equal(batch["loss_mask"][:len(rows)], labels[:, 1:] != -100)
    assert not batch["loss_mask"][len(rows):].any()
    torch_opt.zero_grad()
    attention = np.arange(width + 1) < np.array([len(row_ids) for row_ids, _ in rows])[:, None]
    out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(attention).long(), labels=torch.tensor(labels))
    out.loss.backward()
    norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], opt_config.max_grad_norm or float("inf"))
    np.testing.assert_allclose(float(schedule(index)), torch_schedule.get_last_lr()[0], rtol=1e-6, atol=1e-12)
    torch_opt.step()
    torch_schedule.step()
    state, metrics = step(state, steps.put_batch(batch, mesh))
    np.testing.assert_allclose(float(metrics["loss"]), out.loss.item(), rtol=2e-5)
    np.testing.assert_allclose(float(metrics["grad_norm"]), norm.item(), rtol=2e-4)
  ours = _grads_by_hf_name(graphdef, state.params, tmp_path / "after")
  for name, param in named:
    np.testing.assert_allclose(ours[name], param.detach().numpy(), rtol=1e-4, atol=3e-6, err_msg=name)


@pytest.mark.parametrize("seed", range(3))
def test_ppm_train_steps_fuzz_match_the_official_reward_model_and_torch_adamw(seed, tmp_path):
  # Random tiny model, pair file (identical pos/neg, empty sides, a prompt alone past max_len, pairs cut at max_len
  # or dropped, counts 1..3), buckets, micro-batch split, raw/tanh head, value-head dropout and AdamW settings.
  # Reference: the official reward model in torch (hidden_states[-1] -> Linear head at mask.sum - 1 of the
  # right-padded rows, -logsigmoid(pos - neg) * 1 / (pos_count * neg_count); our documented mean over the pairs
  # instead of its sum), its dropout with our masks at the read positions, torch AdamW with the Trainer's param
  # groups and schedule, clip_grad_norm_; compared: rows, weights, loss, pair accuracy, grad norm, lr, every weight
  # after (by HF name, value head included).
  rng = np.random.default_rng(seed)
  tie, head, rate, overlong = [(True, "raw", 0.1, "truncate"), (False, "tanh", 0.0, "drop"),
                               (True, "raw", 0.5, "truncate")][seed]
  hf = testlib.tiny_hf_model(tmp_path, tie=tie, seed=seed, hidden=[16, 32, 16][seed], layers=[2, 1, 1][seed])
  config = ModelConfig.from_hf_config(tmp_path, param_dtype="float32")
  tok = _CharTokenizer(eos=0, pad=[None, 0, 1][seed])
  text = lambda lo, hi: "".join(rng.choice(list("ab cd\n{}0123XY")) for _ in range(rng.integers(lo, hi + 1)))
  counts = lambda: (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
  max_len = int(rng.integers(10, 18))
  pairs = [formats.PpmPair(text(0, 8), text(0, 10), text(0, 10), *counts()) for _ in range(int(rng.integers(7, 10)))]
  same = text(1, 4)
  pairs[1:1] = [formats.PpmPair("", "", text(1, 3), *counts()),  # an empty prompt and side: scored at the other
                formats.PpmPair(text(1, 3), same, same, *counts()),  # identical sides: log 2, no gradient
                formats.PpmPair(text(max_len, max_len + 3), text(1, 3), text(1, 3), *counts()),  # prompt fills max_len
                formats.PpmPair(text(4, 6), text(max_len, max_len + 2), text(0, 2), *counts())]  # one side cut
  rng.shuffle(pairs)
  buckets = (max_len // 2,) if seed != 1 else ()
  batch_size, accum = [(4, 2), (3, 1), (4, 4)][seed]
  data_config = pipeline.PipelineConfig(max_len=max_len, batch_size=batch_size, num_epochs=1, shuffle=False,
                                        buckets=buckets, overlong=overlong)
  reference = []  # (pos ids, neg ids, factor): rm.py's preprocess_value_dataset, then our documented drops
  for p in pairs:
    source = tok.encode(p.prompt)
    pos, neg = source + tok.encode(p.pos), source + tok.encode(p.neg)
    if not pos or not neg:
      continue
    if max(len(pos), len(neg)) > max_len:
      if overlong == "drop":
        continue
      pos, neg = pos[:max_len], neg[:max_len]
      if pos == neg:
        continue
    reference.append((pos, neg, 1 / (p.pos_count * p.neg_count)))
  pipe = pipeline.ppm_pipeline(pairs, tok, data_config)
  assert pipe.num_examples == len(reference)
  batches = list(pipe.iterator())
  opt_config = optimizer.OptimizerConfig(
      learning_rate=1e-2, weight_decay=[0.1, 0.0, 0.5][seed], eps=1e-3, schedule=["linear", "cosine", "constant"][seed],
      warmup_steps=[0, 1, 2][seed], max_grad_norm=[1e-3, None, 1.0][seed])
  total = len(batches)
  mesh = sharding.make_mesh()
  ppm = nnx.eval_shape(lambda: PPM(config, rngs=nnx.Rngs(0)))
  ppm.model = convert.load_qwen2(tmp_path, config).model
  ppm.value_head = ValueHead(config, rngs=nnx.Rngs(seed), init_std=0.5)
  summary = torch.nn.Linear(config.hidden_size, 1)  # the official v_head.summary, on the same initial weights
  with torch.no_grad():
    summary.weight.copy_(torch.tensor(np.asarray(ppm.value_head.kernel[...]).T))
    summary.bias.copy_(torch.tensor(np.asarray(ppm.value_head.bias[...])))
  graphdef, params = state_lib.split_params(ppm)
  tx = optimizer.make_optimizer(opt_config, total)
  schedule = optimizer.learning_rate_schedule(opt_config, total)
  state = state_lib.create_state(params, tx, mesh)
  dropout_seed = 7 + seed
  step = steps.jit_train_step(
      steps.make_train_step(steps.ppm_loss_fn(graphdef, head, rate), tx, mesh, accum_steps=accum,
                            count_key="num_pairs", schedule=schedule, dropout_seed=dropout_seed if rate else None),
      state_lib.state_shardings(params, tx, mesh), mesh)
  hf.train()
  # The reward model's parameters that get gradients (its LM head's logits never reach the loss).
  named = [(n, p) for n, p in hf.named_parameters() if not n.startswith("lm_head")] + [
      ("v_head.summary.weight", summary.weight), ("v_head.summary.bias", summary.bias)]
  torch_opt, torch_schedule = _torch_adamw(named, opt_config, lr=1e-2, total=total)
  assert total >= 2
  for index, batch in enumerate(batches[:2]):
    rows = reference[index * batch_size:(index + 1) * batch_size]
    n, width = len(rows), batch["pos_tokens"].shape[1]
    longest = max(max(len(pos), len(neg)) for pos, neg, _ in rows)
    assert width == (buckets[0] if buckets and longest <= buckets[0] else max_len)
    np.testing.assert_array_equal(batch["pair_mask"], np.arange(batch_size) < n)
    np.testing.assert_allclose(batch["weights"][:n], [factor for _, _, factor in rows], rtol=1e-7)
    if rate:
      keep = np.asarray(dropout_keep_mask(steps.dropout_keys(steps.step_key(dropout_seed, index),
                                                             jnp.arange(batch_size)), rate, config.hidden_size))
    torch_opt.zero_grad()
    scores = []
    for s, side in enumerate(("pos", "neg")):
      ids, mask = np.zeros((n, max_len), np.int64), np.zeros((n, max_len), np.int64)  # padding="max_length", right
      for i, row in enumerate(rows):
        ids[i, :len(row[s])], mask[i, :len(row[s])] = row[s], 1
        np.testing.assert_array_equal(batch[f"{side}_tokens"][i, :len(row[s])], row[s])
      np.testing.assert_array_equal(batch[f"{side}_mask"][:n], mask[:, :width] > 0)
      ids, mask = torch.tensor(ids), torch.tensor(mask)
      hidden = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]  # [n, T, D]
      last = mask.sum(-1) - 1
      if rate:  # nn.Dropout: input * mask / (1 - p); ours at the read positions, torch's elsewhere (never read)
        drop = torch.bernoulli(torch.full(hidden.shape, 1 - rate))
        drop[torch.arange(n), last] = torch.tensor(keep[s * batch_size:s * batch_size + n], dtype=torch.float32)
        hidden = hidden * drop / (1 - rate)
      scores.append(summary(hidden).squeeze(-1).gather(-1, last[:, None])[:, 0])
    if head == "tanh":
      scores = [torch.tanh(score) for score in scores]
    factor = torch.tensor([f for _, _, f in rows], dtype=torch.float32)
    loss = (-torch.nn.functional.logsigmoid(scores[0] - scores[1]) * factor).sum() / n
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], opt_config.max_grad_norm or float("inf"))
    learning_rate = torch_schedule.get_last_lr()[0]
    torch_opt.step()
    torch_schedule.step()
    state, metrics = step(state, steps.put_batch(batch, mesh))
    np.testing.assert_allclose(float(metrics["learning_rate"]), learning_rate, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(float(metrics["loss"]), loss.item(), rtol=2e-5)
    assert float(metrics["accuracy"]) == (scores[0] > scores[1]).float().mean().item()
    np.testing.assert_allclose(float(metrics["grad_norm"]), norm.item(), rtol=2e-4)
  convert.save_ppm(nnx.merge(graphdef, state.params), tmp_path / "after", dtype="float32")
  ours = {name.removeprefix("model."): w for name, w in load_file(str(tmp_path / "after/model.safetensors")).items()}
  ours.update({name: w.numpy() for name, w in torch.load(tmp_path / "after/value_head.bin").items()})
  for name, param in named:
    np.testing.assert_allclose(ours[name.removeprefix("model.")], param.detach().numpy(), rtol=1e-4, atol=3e-6,
                               err_msg=name)


def test_official_ppm_config_takes_the_official_rm_steps_from_the_official_head_init(tmp_path):
  # The official train_RM.py (rm.py's RMTrainer on transformers 4.45.2) sums the weighted pair losses of each
  # per-device micro-batch and averages over accumulation steps; Trainer: torch AdamW (eps 1e-8, no decay), linear
  # lr, clip_grad_norm_(1.0). Its value head starts near zero (weights ~1e-6), so the backbone's gradients are ~1e-8,
  # as small as Adam's eps: there the step depends on the gradient's scale, not only on its direction. Reference:
  # that run transcribed in torch (2 pairs a device here); compared: every weight's change after 2 updates.
  pairs_per_device, accum = 2, 2
  rng = np.random.default_rng(0)
  testlib.tiny_hf_model(tmp_path, tie=False, seed=1, hidden=16, layers=1)
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).train()
  config = ModelConfig.from_hf_config(tmp_path, param_dtype="float32")
  tok = _CharTokenizer(eos=0, pad=0)
  text = lambda lo, hi: "".join(rng.choice(list("ab cd\n{}0123XY")) for _ in range(rng.integers(lo, hi + 1)))
  pairs = [formats.PpmPair(text(2, 6), text(1, 6), text(1, 6), int(rng.integers(1, 4)), int(rng.integers(1, 4)))
           for _ in range(8)]
  batch_size = pairs_per_device * accum
  train_config = config_lib.official_ppm_config(
      pairs_per_device, data=pipeline.PipelineConfig(max_len=16, batch_size=batch_size, num_epochs=1, shuffle=False),
      accum_steps=accum, value_head_dropout=0.0)  # dropout's parity: test_ppm_value_head_dropout_matches_...
  opt_config = train_config.optimizer
  batches = list(pipeline.ppm_pipeline(pairs, tok, train_config.data).iterator())
  total = len(batches)
  mesh = sharding.make_mesh()
  ppm = nnx.eval_shape(lambda: PPM(config, rngs=nnx.Rngs(0)))
  ppm.model = convert.load_qwen2(tmp_path, config).model
  ppm.value_head = ValueHead(config, rngs=nnx.Rngs(0), **OFFICIAL_VALUE_HEAD_INIT)
  summary = torch.nn.Linear(config.hidden_size, 1)
  with torch.no_grad():
    summary.weight.copy_(torch.tensor(np.asarray(ppm.value_head.kernel[...]).T))
    summary.bias.copy_(torch.tensor(np.asarray(ppm.value_head.bias[...])))
  graphdef, params = state_lib.split_params(ppm)
  tx = optimizer.make_optimizer(opt_config, total)
  state = state_lib.create_state(params, tx, mesh)
  step = steps.jit_train_step(
      steps.make_train_step(steps.ppm_loss_fn(graphdef), tx, mesh, accum_steps=accum, count_key="num_pairs"),
      state_lib.state_shardings(params, tx, mesh), mesh)
  named = [(n, p) for n, p in hf.named_parameters() if not n.startswith("lm_head")] + [
      ("v_head.summary.weight", summary.weight), ("v_head.summary.bias", summary.bias)]
  before = {name: p.detach().numpy().copy() for name, p in named}
  torch_opt = torch.optim.AdamW([p for _, p in named], lr=7e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  torch_schedule = transformers.get_linear_schedule_with_warmup(torch_opt, 0, total)
  for batch in batches[:2]:
    torch_opt.zero_grad()
    scores = []
    for side in ("pos", "neg"):
      ids, mask = torch.tensor(batch[f"{side}_tokens"], dtype=torch.long), torch.tensor(batch[f"{side}_mask"]).long()
      hidden = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
      scores.append(summary(hidden).squeeze(-1).gather(-1, mask.sum(-1, keepdim=True) - 1)[:, 0])
    per_pair = -torch.nn.functional.logsigmoid(scores[0] - scores[1]) * torch.tensor(batch["weights"])
    # Each micro-batch's sum (compute_loss), averaged over the accumulation steps (the Trainer's backward).
    (per_pair.sum() / accum).backward()
    torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
    torch_opt.step()
    torch_schedule.step()
    state, _ = step(state, steps.put_batch(batch, mesh))
  convert.save_ppm(nnx.merge(graphdef, state.params), tmp_path / "after", dtype="float32")
  ours = {name.removeprefix("model."): w for name, w in load_file(str(tmp_path / "after/model.safetensors")).items()}
  ours.update({name: w.numpy() for name, w in torch.load(tmp_path / "after/value_head.bin").items()})
  for name, param in named:
    if name == "v_head.summary.bias":
      continue  # it cancels in r_pos - r_neg: its gradient is rounding noise on both sides, and Adam scales noise up
    name_ours = name.removeprefix("model.")
    np.testing.assert_allclose(ours[name_ours] - before[name], param.detach().numpy() - before[name], rtol=1e-3,
                               atol=1e-3 * 7e-6, err_msg=name)
