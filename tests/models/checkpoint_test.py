"""Orbax model checkpoints (`rstar_jax.models.checkpoint`): a round trip keeps the weights and the layer layout."""

import json
import re

import jax
import numpy as np
import pytest
from flax import nnx

from rstar_jax.models import PPM, ModelConfig, Qwen2, checkpoint, unstack_layers


@pytest.mark.parametrize("kind", [Qwen2, PPM])
@pytest.mark.parametrize("stacked", [True, False])
def test_save_and_load_keep_weights_and_layer_layout(tmp_path, kind, stacked):
  model = kind(ModelConfig.tiny(num_layers=2), rngs=nnx.Rngs(3))
  model = model if stacked else unstack_layers(model)
  checkpoint.save_model(model, tmp_path / "ckpt")
  loaded = checkpoint.load_model(tmp_path / "ckpt", ppm=kind is PPM)
  assert isinstance(loaded, kind) and loaded.model.scan_layers == stacked
  want, got = nnx.to_pure_dict(nnx.state(model)), nnx.to_pure_dict(nnx.state(loaded))
  assert jax.tree.structure(want) == jax.tree.structure(got)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kind", [Qwen2, PPM])
def test_loading_as_the_other_kind_names_the_kind(tmp_path, kind):
  # It failed inside orbax with a tree-structure diff that named neither the kind nor the flag to pass.
  checkpoint.save_model(kind(ModelConfig.tiny(num_layers=1), rngs=nnx.Rngs(0)), tmp_path / "ckpt")
  with pytest.raises(ValueError, match=r"config\.json: rstar_jax_kind='(ppm|policy)'.*ppm="):
    checkpoint.load_model(tmp_path / "ckpt", ppm=kind is not PPM)


def test_load_takes_config_overrides_such_as_the_compute_dtype(tmp_path):
  model = Qwen2(ModelConfig.tiny(num_layers=1), rngs=nnx.Rngs(1))
  checkpoint.save_model(model, tmp_path / "ckpt")
  loaded = checkpoint.load_model(tmp_path / "ckpt", dtype="bfloat16")
  assert loaded.config.dtype == "bfloat16" and model.config.dtype == "float32"
  want, got = nnx.to_pure_dict(nnx.state(model)), nnx.to_pure_dict(nnx.state(loaded))
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):  # the weights are restored as saved
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_model_saved_from_a_mesh_loads_on_a_host_with_another_device_count(tmp_path):
  # Orbax restored the saved 8-device sharding when no mesh was given: "Topology mismatch" on a 1-device host (the
  # `convert export` CLI), and on this host the model came back spread over the 8 devices instead of on device 0.
  import os
  import subprocess
  import sys
  from jax.sharding import PartitionSpec as P
  from rstar_jax import sharding

  model = PPM(ModelConfig.tiny(num_layers=1), rngs=nnx.Rngs(2))
  want = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model))}
  sharding.shard_model(model, sharding.make_mesh(2, 2, 2))
  checkpoint.save_model(model, tmp_path / "ckpt")
  np.savez(tmp_path / "want.npz", **{".".join(map(str, k)): v for k, v in want.items()})
  loaded = checkpoint.load_model(tmp_path / "ckpt", ppm=True)
  on_mesh = checkpoint.load_model(tmp_path / "ckpt", ppm=True, mesh=sharding.make_mesh(1, 1, 4, jax.devices()[4:]))
  for k, v in nnx.to_flat_state(nnx.state(loaded)):
    assert v.get_value().sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0]), k
    np.testing.assert_array_equal(np.asarray(v.get_value()), want[k])
  for k, v in nnx.to_flat_state(nnx.state(on_mesh)):
    np.testing.assert_array_equal(np.asarray(v.get_value()), want[k])
  assert nnx.state(on_mesh)["model"]["embed_tokens"]["embedding"][...].sharding.spec == P("tensor", None)
  script = (
      "import sys, numpy as np\n"
      "from flax import nnx\n"
      "from rstar_jax.models import checkpoint\n"
      "want = np.load(sys.argv[2])\n"
      "got = {'.'.join(map(str, k)): np.asarray(v.get_value())\n"
      "       for k, v in nnx.to_flat_state(nnx.state(checkpoint.load_model(sys.argv[1], ppm=True)))}\n"
      "assert sorted(got) == sorted(want.files)\n"
      "assert all(np.array_equal(got[k], want[k]) for k in want.files)\n"
      "print('OK')\n")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ckpt"), str(tmp_path / "want.npz")],
                        env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]


def test_an_import_over_an_earlier_one_cut_short_before_its_config_does_not_load_with_the_old_config(tmp_path,
                                                                                                monkeypatch):
  # `convert import` into a folder holding an earlier import: were it killed (or the disk full) after the new weights
  # and before the new config.json, the earlier config stayed beside them and the folder loaded as the earlier model's
  # numerics (here its rope_theta) over the new weights, with no error.
  first = Qwen2(ModelConfig.tiny(num_layers=1, rope_theta=1e4), rngs=nnx.Rngs(0))
  checkpoint.save_model(first, tmp_path / "ckpt")
  second = Qwen2(ModelConfig.tiny(num_layers=1, rope_theta=1e6), rngs=nnx.Rngs(1))

  def cut_short(path, data):
    raise OSError(28, "No space left on device", path)
  monkeypatch.setattr(checkpoint.files, "atomic_write", cut_short)
  with pytest.raises(OSError, match="No space left"):
    checkpoint.save_model(second, tmp_path / "ckpt")
  monkeypatch.undo()
  with pytest.raises(FileNotFoundError, match="config.json"):
    checkpoint.load_model(tmp_path / "ckpt")


@pytest.mark.parametrize("field, value, message", [
    # orbax's "Requested shape: (1, 64) is not compatible with the stored shape: (2, 64) ... set `strict=False`"
    # named neither the folder, config.json, nor the parameter (and advised padding the weights).
    ("num_hidden_layers", 1, r"config\.json: the saved parameters do not fit it: .*layers.*\(2, 64\).*\(1, 64\)"),
    ("intermediate_size", 256, r"config\.json: the saved parameters do not fit it: .*mlp.*\(2, 128, 64\)"),
    # The saved tree has an lm_head, or layers stacked: a tree-structure diff naming no file.
    ("tie_word_embeddings", False, r"config\.json: the saved parameters do not fit it: "),
    ("rstar_jax_scan_layers", False, r"config\.json: the saved parameters do not fit it: "),
    # A string was read as a truth value ("false" loaded as true).
    ("rstar_jax_scan_layers", "false", r"config\.json: field 'rstar_jax_scan_layers' must be true or false"),
    ("rstar_jax_kind", ["ppm"], r"config\.json: field 'rstar_jax_kind' must be 'policy' or 'ppm'"),
])
def test_a_config_json_the_saved_parameters_do_not_fit_names_the_file(tmp_path, field, value, message):
  checkpoint.save_model(Qwen2(ModelConfig.tiny(num_layers=2), rngs=nnx.Rngs(0)), tmp_path / "ckpt")
  config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
  (tmp_path / "ckpt" / "config.json").write_text(json.dumps(dict(config, **{field: value})))
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "ckpt")) + "/" + message):
    checkpoint.load_model(tmp_path / "ckpt")
