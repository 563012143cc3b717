"""A train step sharded over 8 fake CPU devices (data=2, fsdp=2, tensor=2) equals the 1-device step."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rstar_jax import sharding
from rstar_jax.models import PPM, ModelConfig, Qwen2
from rstar_jax.train import optimizer, state as state_lib, steps

LR = 1e-3


def _sft_batch(rows=8, length=16, vocab=512):
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab, (rows, length)).astype(np.int32)
  lengths = rng.integers(length // 2, length + 1, rows)
  input_mask = np.arange(length)[None, :] < lengths[:, None]
  return {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1),
          "loss_mask": (input_mask & (np.arange(length)[None, :] >= 3)).astype(np.float32),
          "input_mask": input_mask, "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1))}


def _ppm_batch(pairs=8, length=16, vocab=512):
  rng = np.random.default_rng(1)
  batch = {"weights": (1.0 / rng.integers(1, 5, pairs)).astype(np.float32),
           "pair_mask": np.array([1.0] * (pairs - 1) + [0.0], np.float32)}
  for side in ("pos", "neg"):
    lengths = rng.integers(4, length + 1, pairs)
    batch[f"{side}_tokens"] = rng.integers(0, vocab, (pairs, length)).astype(np.int32)
    batch[f"{side}_mask"] = np.arange(length)[None, :] < lengths[:, None]
    batch[f"{side}_positions"] = np.tile(np.arange(length, dtype=np.int32), (pairs, 1))
  return batch


def _run(make_model, loss_fn_of, count_key, batch, mesh, accum_steps, num_steps=2):
  model = make_model()
  sharding.shard_model(model, mesh)
  graphdef, params = state_lib.split_params(model)
  tx = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=LR, warmup_steps=1), 4)
  shardings = state_lib.state_shardings(params, tx, mesh)
  state = state_lib.create_state(params, tx, mesh)
  step = steps.jit_train_step(steps.make_train_step(loss_fn_of(graphdef), tx, mesh, accum_steps=accum_steps,
                                                    count_key=count_key), shardings, mesh)
  history = []
  for _ in range(num_steps):
    state, metrics = step(state, steps.put_batch(batch, mesh))
    history.append({k: float(v) for k, v in metrics.items()})
  return state, history


def _compare(one, eight):
  (state_1, hist_1), (state_8, hist_8) = one, eight
  for m1, m8 in zip(hist_1, hist_8):
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-5)
    assert m8["num_correct"] == m1["num_correct"]
  specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state_8.params)}
  assert any("fsdp" in s for s in specs) and any("tensor" in s for s in specs)  # really sharded
  moments = [leaf for leaf in jax.tree.leaves(state_8.opt_state) if leaf.ndim >= 2]
  assert any("fsdp" in str(leaf.sharding.spec) for leaf in moments)  # optimizer state sharded like params
  flat_1 = jax.tree_util.tree_flatten_with_path(state_1.params)[0]
  for (path, p1), p8 in zip(flat_1, jax.tree.leaves(state_8.params)):
    if "value_head" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path):
      # The Bradley-Terry loss sees only r_pos - r_neg: the head bias has an exactly-zero gradient, so Adam's
      # update of it is normalised rounding noise on either mesh.
      continue
    p1, p8 = np.asarray(p1), np.asarray(p8)
    # Adam divides by sqrt(v): an element whose gradient is ~0 turns summation-order noise into a visible
    # (but lr-bounded) update difference; such elements are rare, so bound the worst one by a fraction of one
    # update and the typical one tightly.
    np.testing.assert_allclose(p8, p1, rtol=1e-5, atol=5e-2 * LR)
    assert np.mean(np.abs(p8 - p1)) < 1e-4 * LR


def test_sharded_sft_step_with_accumulation_equals_single_device():
  config = ModelConfig.tiny(tie_word_embeddings=False)
  make = lambda: Qwen2(config, rngs=nnx.Rngs(0))
  batch = _sft_batch()
  one = _run(make, steps.sft_loss_fn, "num_tokens", batch, sharding.make_mesh(1, 1, 1, jax.devices()[:1]), 1)
  # 8 devices *and* 2 micro-batches: both must leave the update unchanged.
  eight = _run(make, steps.sft_loss_fn, "num_tokens", batch, sharding.make_mesh(2, 2, 2), 2)
  _compare(one, eight)


@pytest.mark.slow
def test_sharded_ppm_step_equals_single_device():
  config = ModelConfig.tiny()
  make = lambda: PPM(config, rngs=nnx.Rngs(0))
  batch = _ppm_batch()
  loss_fn_of = lambda g: steps.ppm_loss_fn(g, "raw")
  one = _run(make, loss_fn_of, "num_pairs", batch, sharding.make_mesh(1, 1, 1, jax.devices()[:1]), 1)
  eight = _run(make, loss_fn_of, "num_pairs", batch, sharding.make_mesh(2, 2, 2), 2)
  _compare(one, eight)


def test_ppm_dropout_masks_follow_the_row_not_the_micro_batch_split():
  # With value-head dropout each pair's masks come from (seed, step, row of the global batch): a 2-micro-batch step
  # must see exactly the masks (and so the loss and gradient) of the whole-batch loss with those keys.
  config = ModelConfig.tiny()
  model = PPM(config, rngs=nnx.Rngs(0))
  model.value_head.kernel[...] = model.value_head.kernel[...] * 300.0  # a head whose dropped inputs move the loss
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  graphdef, params = state_lib.split_params(model)
  batch = jax.tree.map(jax.numpy.asarray, _ppm_batch())
  loss_fn = steps.ppm_loss_fn(graphdef, "raw", 0.1)
  keyed = dict(batch, dropout_key=steps.step_key(5, 0), row=jax.numpy.arange(8))
  (loss_sum, sums), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, keyed)

  tx = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=LR), 4)
  step = jax.jit(steps.make_train_step(loss_fn, tx, mesh, accum_steps=2, count_key="num_pairs", dropout_seed=5))
  _, metrics = step(state_lib.create_state(params, tx, mesh), steps.put_batch(jax.tree.map(np.asarray, batch), mesh))
  np.testing.assert_allclose(float(metrics["loss"]), float(loss_sum / sums["num_pairs"]), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.global_norm(grads)) / 7, rtol=1e-5)


def test_evaluate_ppm_on_any_mesh_and_batch_size_equals_per_pair_reference(tmp_path):
  """evaluate_ppm crashed on a batch size that data x fsdp does not divide (12 pairs over fsdp 8), and on a PPM
  whose parameters sit on other devices (here a 2-device mesh, as a (1, 2, 1) run or `load_ppm(mesh=...)` leaves
  them)."""
  import math
  import rstar_train_testlib as testlib
  from rstar_jax import tokenizer as tokenizer_lib
  from rstar_jax.data import formats, pipeline
  from rstar_jax.train import trainer

  rng = np.random.default_rng(0)
  pairs = [formats.PpmPair(prompt=f"q {a} + {b} =", pos=f" {a + b} ok", neg=f" {a * b + 1} no", pos_count=1,
                           neg_count=int(rng.integers(1, 4))) for a, b in rng.integers(1, 9, (12, 2)).tolist()]
  testlib.tiny_tokenizer(tmp_path, [p.prompt + p.pos + p.neg for p in pairs])
  tok = tokenizer_lib.load_tokenizer(tmp_path)
  ppm = PPM(ModelConfig.tiny(), rngs=nnx.Rngs(0))
  # Reference: every text in one plain forward on the default device, the loss in numpy.
  texts = [p.prompt + side for p in pairs for side in (p.pos, p.neg)]
  tokens, mask = np.zeros((len(texts), 32), np.int32), np.zeros((len(texts), 32), bool)
  for row, text in enumerate(texts):
    ids = tok.encode(text)
    tokens[row, :len(ids)], mask[row, :len(ids)] = ids, True
  values = np.asarray(jax.jit(lambda x, m: ppm(x, jax.numpy.cumsum(m, 1) - 1, m))(tokens, mask)).reshape(-1, 2)
  margins = values[:, 0] - values[:, 1]
  losses = [p.weight * math.log1p(math.exp(-m)) for p, m in zip(pairs, margins)]
  correct = margins > 0
  data = pipeline.PipelineConfig(max_len=32, batch_size=12)
  params = {"tokenizer": tok, "data": data}
  results = [trainer.evaluate_ppm(ppm, pairs, mesh_shape=(1, -1, 1), **params)]  # 12 rows over fsdp 8
  sharding.shard_model(ppm, sharding.make_mesh(1, 2, 1))  # in place: now committed to devices 0 and 1
  results.append(trainer.evaluate_ppm(ppm, pairs, mesh_shape=(2, 2, 2), **params))
  for got in results:
    assert got["num_pairs"] == 12
    np.testing.assert_allclose(got["loss"], np.mean(losses), rtol=1e-5)
    assert got["pair_accuracy"] == np.mean(correct)


def test_train_state_replication_warnings_name_the_array(caplog):
  # The 2 kv heads cannot split over tensor 4 (replicated, as the sharding module documents); the warnings named
  # every parameter and optimizer moment "array".
  abstract = nnx.eval_shape(lambda: Qwen2(ModelConfig.tiny(), rngs=nnx.Rngs(0)))
  _, params = state_lib.split_params(abstract)
  tx = optimizer.make_optimizer(optimizer.OptimizerConfig(), 4)
  shardings = state_lib.state_shardings(params, tx, sharding.make_mesh(2, 1, 4))
  k_proj = shardings.params["model"]["layers"]["self_attn"]["k_proj"]["kernel"]
  assert k_proj.get_value().spec == P(None, None, None, None)
  warned = {r.getMessage().split(":")[0] for r in caplog.records if "cannot split" in r.getMessage()}
  assert {"params.model.layers.self_attn.k_proj.kernel", "opt_state.1.0.mu.model.layers.self_attn.v_proj.bias",
          "opt_state.1.0.nu.model.layers.self_attn.k_proj.kernel"} <= warned, warned
  assert "array" not in warned


# (data, fsdp, tensor) meshes over 8, 4 and 2 of the fake devices.
_FUZZ_MESHES = ((8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2), (4, 1, 2), (1, 2, 4), (2, 4, 1), (2, 1, 2), (1, 1, 2))


def _fuzz_case(rng):
  """A random tiny model (head / kv-head / width / vocab sizes a tensor axis often does not divide), mesh and batch."""
  heads = int(rng.choice([1, 2, 3, 4, 6]))
  head_dim = int(rng.choice([4, 8]))
  hidden = heads * head_dim if rng.random() < 0.7 else int(rng.choice([12, 20, 36]))
  kv_heads = int(rng.choice([d for d in range(1, heads + 1) if heads % d == 0]))
  config = ModelConfig(vocab_size=int(rng.integers(30, 200)), hidden_size=hidden,
                       intermediate_size=int(rng.integers(6, 60)), num_layers=int(rng.integers(1, 3)),
                       num_heads=heads, num_kv_heads=kv_heads,
                       head_dim=head_dim, tie_word_embeddings=bool(rng.random() < 0.5), max_position_embeddings=64)
  mesh_shape = _FUZZ_MESHES[int(rng.integers(len(_FUZZ_MESHES)))]
  accum = int(rng.choice([1, 2]))
  rows = mesh_shape[0] * mesh_shape[1] * accum * int(rng.integers(1, 3))
  length = int(rng.integers(4, 14))
  positions = np.tile(np.arange(length, dtype=np.int32), (rows, 1))
  if rng.random() < 0.4:
    batch = {"weights": (1.0 / rng.integers(1, 5, rows)).astype(np.float32),
             "pair_mask": (rng.random(rows) < 0.8).astype(np.float32)}
    for side in ("pos", "neg"):
      batch[f"{side}_tokens"] = rng.integers(0, config.vocab_size, (rows, length)).astype(np.int32)
      batch[f"{side}_mask"] = np.arange(length)[None, :] < rng.integers(1, length + 1, rows)[:, None]
      batch[f"{side}_positions"] = positions
    make, loss_fn_of, count_key = (lambda: PPM(config, rngs=nnx.Rngs(0))), lambda g: steps.ppm_loss_fn(g), "num_pairs"
  else:
    tokens = rng.integers(0, config.vocab_size, (rows, length)).astype(np.int32)
    input_mask = np.arange(length)[None, :] < rng.integers(1, length + 1, rows)[:, None]
    batch = {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1), "input_mask": input_mask,
             "loss_mask": (input_mask & (rng.random((rows, length)) < 0.7)).astype(np.float32),
             "positions": positions}
    make, loss_fn_of, count_key = (lambda: Qwen2(config, rngs=nnx.Rngs(0))), steps.sft_loss_fn, "num_tokens"
  return make, loss_fn_of, count_key, batch, mesh_shape, accum


@pytest.mark.slow
def test_fuzz_random_models_meshes_and_batches_step_like_one_device_and_restore_onto_any_mesh(tmp_path):
  """Seeded fuzz: 4 random (model shape, mesh, batch, micro-batch split) cases. Two sharded steps give the 1-device
  losses, gradient norms and parameters; the sharded state saved with orbax restores bit-identical (and placed by the
  rules) onto another random mesh, as a resumed run on another slice does."""
  from rstar_jax.train.checkpoint import Checkpointer

  rng = np.random.default_rng(2024)
  for case in range(4):
    make, loss_fn_of, count_key, batch, mesh_shape, accum = _fuzz_case(rng)
    one = _run(make, loss_fn_of, count_key, batch, sharding.make_mesh(1, 1, 1, jax.devices()[:1]), 1)
    state, history = _run(make, loss_fn_of, count_key, batch, sharding.make_mesh(*mesh_shape), accum)
    for m1, m8 in zip(one[1], history):
      np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=2e-5, err_msg=f"case {case} mesh {mesh_shape}")
      np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=2e-5, err_msg=f"case {case} mesh {mesh_shape}")
    flat_1 = jax.tree_util.tree_flatten_with_path(one[0].params)[0]
    for (path, p1), p8 in zip(flat_1, jax.tree.leaves(state.params)):
      if "value_head" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path):
        continue  # zero Bradley-Terry gradient: Adam normalises rounding noise (see _compare)
      np.testing.assert_allclose(np.asarray(p8), np.asarray(p1), rtol=1e-5, atol=5e-2 * LR,
                                 err_msg=f"case {case} mesh {mesh_shape} {jax.tree_util.keystr(path)}")

    _, params = state_lib.split_params(nnx.eval_shape(make))
    tx = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=LR, warmup_steps=1), 4)
    target_mesh = sharding.make_mesh(*_FUZZ_MESHES[int(rng.integers(len(_FUZZ_MESHES)))])
    target = state_lib.state_shardings(params, tx, target_mesh)
    saver = Checkpointer(tmp_path / str(case), every=1)
    saver.save(2, state, {"position": case}, force=True)
    saver.close()
    loader = Checkpointer(tmp_path / str(case), every=1)
    restored, data_state = loader.restore(2, state_lib.abstract_state(params, tx), target)
    loader.close()
    assert data_state == {"position": case}
    for saved, got, want in zip(jax.tree.leaves(state), jax.tree.leaves(restored), jax.tree.leaves(target)):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(saved))
      assert got.sharding.is_equivalent_to(want, got.ndim), (case, got.sharding, want)
