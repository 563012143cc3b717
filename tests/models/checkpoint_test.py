"""Orbax model checkpoints (`rstar_jax.models.checkpoint`): a round trip keeps the weights and the layer layout."""

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
