"""Model checkpoints in orbax format: `config.json` (HF style) + an orbax `params` tree.

This is the inference/interchange form of one model (what `convert import` writes and `convert export` reads);
training checkpoints with optimizer and data-iterator state live in `rstar_jax.train`.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from rstar_jax import files
from rstar_jax.models.config import ModelConfig
from rstar_jax.models.ppm import PPM
from rstar_jax.models.qwen2 import Qwen2


def save_model(model: Qwen2 | PPM, directory: str | os.PathLike) -> None:
  """Writes `model` to `directory`; in a multi-process run every process calls it, and it returns once all is
  written."""
  directory = os.path.abspath(os.fspath(directory))
  os.makedirs(directory, exist_ok=True)
  from rstar_jax import sharding  # pylint: disable=g-import-not-at-top  (local: models never depend on the mesh module)
  # An earlier save's config.json goes before the new weights are written: left there, a save cut short before the
  # new config (a kill, a full disk) would load the new weights with the earlier model's numerics, with no error.
  config_file = os.path.join(directory, "config.json")

  def remove_config():
    if os.path.lexists(config_file):
      os.remove(config_file)
  sharding.on_process_zero(directory, "remove the earlier config.json", remove_config)
  # The layer layout is recorded too: a model with its layers as a list (`unstack_layers`) has another params tree.
  config = dict(model.config.to_hf_config(), rstar_jax_kind="ppm" if isinstance(model, PPM) else "policy",
                rstar_jax_scan_layers=bool(model.model.scan_layers))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "params"), nnx.to_pure_dict(nnx.state(model)), force=True)
  # No process returns (and may load the model) before config.json is written; a failure raises on every process.
  sharding.on_process_zero(directory, "write config.json", lambda: files.atomic_write(
      config_file, json.dumps(config, indent=2)))


def load_model(directory: str | os.PathLike, *, ppm: bool = False, mesh=None, rules=None,
               **config_overrides) -> Qwen2 | PPM:
  """Restores a model saved by `save_model` (placed with the mesh shardings when `mesh` is given, else on the default
  device, whatever mesh it was saved from), in the layer layout it was saved in.

  `config_overrides` go to `ModelConfig.from_hf_config`, as in `convert.load_qwen2`: e.g. `dtype="bfloat16"` for
  bf16 matmuls (the compute dtype is not saved; the default is float32).
  """
  directory = os.path.abspath(os.fspath(directory))
  config = ModelConfig.from_hf_config(directory, **config_overrides)
  config_file = os.path.join(directory, "config.json")
  with open(config_file, encoding="utf-8") as f:
    saved = json.load(f)
  scan_layers = saved.get("rstar_jax_scan_layers", True)
  if not isinstance(scan_layers, bool):  # a "false" string read as true
    raise ValueError(f"{config_file}: field 'rstar_jax_scan_layers' must be true or false, got {scan_layers!r}")
  kind = saved.get("rstar_jax_kind")
  if kind not in (None, "policy", "ppm"):
    raise ValueError(f"{config_file}: field 'rstar_jax_kind' must be 'policy' or 'ppm', got {kind!r}")
  if kind is not None and (kind == "ppm") != ppm:
    raise ValueError(f"{config_file}: rstar_jax_kind={kind!r}: a {kind} checkpoint, "
                     f"load it with ppm={kind == 'ppm'} (the CLI's --ppm flag)")
  model_class = PPM if ppm else Qwen2
  build = lambda: model_class(config, rngs=nnx.Rngs(0), scan_layers=scan_layers)
  abstract_model = nnx.eval_shape(build)
  abstract = nnx.to_pure_dict(nnx.state(abstract_model))
  if mesh is not None:
    from rstar_jax import sharding as sharding_lib
    shardings = nnx.to_pure_dict(sharding_lib.param_shardings(abstract_model, mesh,
                                                               rules or sharding_lib.DEFAULT_RULES))
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  else:
    # The default device, as an unplaced model's: without a target sharding orbax restores the sharding it saved,
    # which fails on a host with another device count ("Topology mismatch") for a model saved from a mesh.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
  params_dir = os.path.join(directory, "params")
  if not os.path.isdir(params_dir):
    raise FileNotFoundError(f"{directory}: no orbax 'params' checkpoint inside")
  with ocp.StandardCheckpointer() as ckptr:
    try:  # orbax's errors name no folder (a damaged one was a pile of tracebacks from its reader threads)
      saved = ckptr.metadata(params_dir).item_metadata
    except Exception as e:  # pylint: disable=broad-except  (re-raised, with the folder named)
      raise ValueError(f"{params_dir}: cannot read the orbax checkpoint's metadata ({orbax_error_summary(e)}); it is "
                       "damaged: write it again") from e
    if saved is None:  # orbax only logs a warning for a missing or cut _METADATA file
      raise ValueError(f"{params_dir}: the orbax checkpoint lists no parameters (its _METADATA file is missing or "
                       "damaged): write it again")
    _check_saved_shapes(config_file, saved, abstract, bool(config_overrides))
    try:
      params = ckptr.restore(params_dir, target)
    except Exception as e:  # pylint: disable=broad-except  (re-raised, with the folder named)
      raise ValueError(f"{params_dir}: cannot restore the orbax checkpoint ({orbax_error_summary(e)}); it is "
                       "damaged: write it again") from e
  nnx.update(abstract_model, params)
  return abstract_model


def orbax_error_summary(error: BaseException) -> str:
  """The root cause of an orbax error in one line (`Type: first line`, cut to 300 characters): orbax wraps a
  TensorStore read error ("OUT_OF_RANGE: Error reading "model.norm.weight/0.0.0" ...", which names the array) in one
  that prints the array's whole spec."""
  while error.__cause__ is not None:
    error = error.__cause__
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ""
  return f"{type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def _check_saved_shapes(config_file: str, saved, abstract: dict, overridden: bool) -> None:
  """Raises a `ValueError` naming `config_file` and the parameters unless the saved tree (orbax metadata) has the
  parameters and shapes the config builds: orbax's own error ("Requested shape: (1, 64) is not compatible with the
  stored shape: (2, 64) ... set `strict=False`", or a tree diff) named neither the file nor the parameter."""
  def shapes(tree) -> dict[str, tuple[int, ...]]:
    return {".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  have, want = shapes(saved), shapes(abstract)
  problems = [f"{name} saved with shape {have[name]}, the config gives {want[name]}"
              for name in sorted(have.keys() & want.keys()) if have[name] != want[name]]
  problems += [f"{name} is not saved" for name in sorted(want.keys() - have.keys())]
  problems += [f"{name} is saved but not in the model" for name in sorted(have.keys() - want.keys())]
  if problems:
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    raise ValueError(f"{config_file}: the saved parameters do not fit it{' (with the overrides)' if overridden else ''}"
                     f": {'; '.join(problems[:3])}{more}")
