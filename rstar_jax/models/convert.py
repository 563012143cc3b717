"""Hugging Face Qwen2 checkpoints <-> Flax parameters, as one name table and its inverse.

Loading streams tensor by tensor from memory-mapped safetensors (a single `model.safetensors` or a sharded
`model.safetensors.index.json`) and places each tensor directly with its target sharding via
`jax.make_array_from_callback`, so each process only materialises the shards it owns and no whole host copy of a 7B
model ever exists. Per-layer tensors are written into the stacked `[L, ...]` parameter on device, one layer at a time.

Export writes an HF dir (`config.json` + `model.safetensors`, sharded past `max_shard_bytes`) that
`transformers.AutoModelForCausalLM.from_pretrained` loads; tied checkpoints omit `lm_head.weight`.
The PPM is an HF backbone dir plus `value_head.bin` (`v_head.summary.weight [1, D]`, `v_head.summary.bias [1]`),
the official rStar layout; `value_head.safetensors` with the same keys is accepted too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from rstar_jax import files
from rstar_jax.models.config import ModelConfig, dtype_name
from rstar_jax.models.ppm import PPM
from rstar_jax.models.qwen2 import Qwen2
from rstar_jax.models.tensor_files import SafetensorsFile, read_torch_bin, write_safetensors, write_torch_bin

Path = tuple[str, ...]
VALUE_HEAD_KEYS = ("v_head.summary.weight", "v_head.summary.bias")
VALUE_HEAD_FILES = ("value_head.bin", "value_head.safetensors")
# The files of an HF checkpoint dir besides its config and weights: the tokenizer and the generation settings
# (generation_config.json's EOS ids are where generation stops; the exported config.json names only the token ids
# `copy_token_ids` carries).
# Chat templates: transformers (4.47 on) saves a tokenizer's as chat_template.jinja (older releases: in
# tokenizer_config.json; processors: chat_template.json).
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
              "added_tokens.json", "tokenizer.model", *CHAT_TEMPLATE_FILES, "generation_config.json")


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One HF tensor <-> one of our parameters (per layer when `per_layer`)."""
  hf_name: str  # `{l}` stands for the layer index
  path: Path  # path in our parameter tree
  to_ours: Callable[[np.ndarray, ModelConfig], np.ndarray]
  to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]

  @property
  def per_layer(self) -> bool:
    return "{l}" in self.hf_name


def _same(x, c):
  return x


def _t(x, c):
  return x.T


def _in_heads(heads: str):
  """HF `[heads*H, D]` -> ours `[D, heads, H]` and back."""
  def to_ours(x, c):
    return x.T.reshape(c.hidden_size, getattr(c, heads), c.head_dim)

  def to_hf(x, c):
    return x.reshape(c.hidden_size, -1).T
  return to_ours, to_hf


def _bias_heads(heads: str):
  return (lambda x, c: x.reshape(getattr(c, heads), c.head_dim)), (lambda x, c: x.reshape(-1))


def _o_proj():
  return ((lambda x, c: x.T.reshape(c.num_heads, c.head_dim, c.hidden_size)),
          (lambda x, c: x.reshape(-1, c.hidden_size).T))


def name_table(config: ModelConfig, prefix: Path = ()) -> list[_Entry]:
  """The HF <-> Flax name table for a Qwen2 backbone (`prefix` = where the backbone lives in our tree)."""
  layer = "model.layers.{l}."
  ours = prefix + ("model",)
  entries = [
      _Entry("model.embed_tokens.weight", ours + ("embed_tokens", "embedding"), _same, _same),
      _Entry("model.norm.weight", ours + ("norm", "weight"), _same, _same),
  ]
  for proj, heads in (("q_proj", "num_heads"), ("k_proj", "num_kv_heads"), ("v_proj", "num_kv_heads")):
    entries.append(_Entry(layer + f"self_attn.{proj}.weight", ours + ("layers", "self_attn", proj, "kernel"),
                          *_in_heads(heads)))
    entries.append(_Entry(layer + f"self_attn.{proj}.bias", ours + ("layers", "self_attn", proj, "bias"),
                          *_bias_heads(heads)))
  entries.append(_Entry(layer + "self_attn.o_proj.weight", ours + ("layers", "self_attn", "o_proj", "kernel"),
                        *_o_proj()))
  for proj in ("gate_proj", "up_proj", "down_proj"):
    entries.append(_Entry(layer + f"mlp.{proj}.weight", ours + ("layers", "mlp", proj, "kernel"), _t, _t))
  for norm in ("input_layernorm", "post_attention_layernorm"):
    entries.append(_Entry(layer + f"{norm}.weight", ours + ("layers", norm, "weight"), _same, _same))
  return entries


def lm_head_entry() -> _Entry:
  return _Entry("lm_head.weight", ("lm_head", "kernel"), _t, _t)


# --- reading HF dirs --------------------------------------------------------------------------------------------------
class HFCheckpoint:
  """The tensors of an HF model dir, across one or several safetensors files, each opened lazily (memory-mapped)."""

  def __init__(self, hf_dir: str | os.PathLike):
    self.dir = os.fspath(hf_dir)
    if not os.path.isdir(self.dir):
      raise FileNotFoundError(f"{self.dir}: not a directory")
    index = os.path.join(self.dir, "model.safetensors.index.json")
    single = os.path.join(self.dir, "model.safetensors")
    if os.path.exists(index) and os.path.exists(single):
      # transformers loads `model.safetensors`, vLLM the index: which weights were meant is unknowable.
      raise ValueError(f"{self.dir}: holds both model.safetensors and model.safetensors.index.json (transformers "
                       "would load the former, vLLM the latter); remove the stale one")
    if os.path.exists(index):
      try:
        with open(index, encoding="utf-8") as f:
          weight_map = files.json_loads(f.read())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
          raise ValueError("weight_map is not an object of tensor name -> shard file")
      except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{index}: not a valid safetensors index ({e})") from None
      self.weight_map = {name: os.path.join(self.dir, file) for name, file in weight_map.items()}
      for file in sorted(set(self.weight_map.values())):
        if not os.path.exists(file):
          raise FileNotFoundError(f"{index}: lists shard {os.path.basename(file)}, which is missing from {self.dir}")
    elif os.path.exists(single):
      with SafetensorsFile(single) as f:
        self.weight_map = {name: single for name in f.keys()}
    else:
      raise FileNotFoundError(f"{self.dir}: no model.safetensors or model.safetensors.index.json "
                              "(PyTorch .bin model checkpoints are not supported; re-save with safetensors)")
    # A bare `Qwen2Model` (e.g. a PPM backbone saved through `AutoModel`) names tensors without the `model.` prefix.
    self._aliases = {}
    if not any(name.startswith("model.") for name in self.weight_map):
      self._aliases = {f"model.{name}": name for name in self.weight_map}
      self.weight_map.update({alias: self.weight_map[name] for alias, name in self._aliases.items()})
    self._open: dict[str, SafetensorsFile] = {}

  def __contains__(self, name: str) -> bool:
    return name in self.weight_map

  def get(self, name: str) -> np.ndarray:
    if name not in self.weight_map:
      raise KeyError(f"{self.dir}: checkpoint has no tensor {name!r}")
    file = self.weight_map[name]
    if file not in self._open:
      self._open[file] = SafetensorsFile(file)
    f = self._open[file]
    if self._aliases.get(name, name) not in f:
      raise KeyError(f"{file}: tensor {name!r} is listed in the index but missing from the file")
    return f.get(self._aliases.get(name, name))

  def close(self):
    for f in self._open.values():
      f.close()
    self._open.clear()


def _place(array: np.ndarray, sharding: jax.sharding.Sharding | None, dtype) -> jax.Array:
  """Host array -> device array with `sharding`; each process copies only the shards it addresses."""
  if sharding is None:
    return jnp.asarray(array, dtype=dtype)
  return jax.make_array_from_callback(array.shape, sharding, lambda idx: np.asarray(array[idx], dtype=dtype))


@jax.jit
def _stacked_write(stacked: jax.Array, layer: jax.Array, index: jax.Array) -> jax.Array:
  return jax.lax.dynamic_update_index_in_dim(stacked, layer.astype(stacked.dtype), index, 0)


_stacked_write_donated = jax.jit(_stacked_write.__wrapped__, donate_argnums=0)


def _load_entries(ckpt: HFCheckpoint, entries: list[_Entry], abstract: dict, shardings: dict | None,
                  config: ModelConfig) -> dict:
  """Fills a pure-dict parameter tree following `entries`; `abstract` gives each parameter's shape and dtype."""
  out: dict = {}

  def store(path, value):
    node = out
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value

  for entry in entries:
    if entry.per_layer and _unstacked(abstract, entry.path):
      # A model with `scan_layers=False`: every layer's tensor goes to its own parameter, no stacked buffer.
      for l in range(config.num_layers):
        path = _layer_path(entry.path, l)
        target = _lookup(abstract, path)
        value = _convert(ckpt, entry.hf_name.format(l=l), entry, config, target.shape)
        store(path, _place(value, _lookup(shardings, path) if shardings is not None else None, target.dtype))
      continue
    target = _lookup(abstract, entry.path)
    sharding = _lookup(shardings, entry.path) if shardings is not None else None
    dtype = target.dtype
    if not entry.per_layer:
      value = _convert(ckpt, entry.hf_name, entry, config, target.shape)
      store(entry.path, _place(value, sharding, dtype))
      continue
    layer_shape = target.shape[1:]
    layer_sharding = None
    if sharding is not None:
      spec = sharding.spec
      layer_sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*tuple(spec)[1:]))
    if sharding is not None:
      stacked = jax.jit(lambda: jnp.zeros(target.shape, dtype), out_shardings=sharding)()
    else:
      stacked = jnp.zeros(target.shape, dtype)
    for l in range(config.num_layers):
      name = entry.hf_name.format(l=l)
      value = _convert(ckpt, name, entry, config, layer_shape)
      stacked = _stacked_write_donated(stacked, _place(value, layer_sharding, dtype), jnp.int32(l))
    store(entry.path, stacked)
  return out


def _layer_path(path: Path, layer: int) -> Path:
  """`(..., "layers", "mlp", ...)` -> `(..., "layers", layer, "mlp", ...)`: the path in an unstacked model."""
  i = path.index("layers") + 1
  return path[:i] + (layer,) + path[i:]


def _lookup(tree: dict, path: Path):
  """`tree[path[0]][path[1]]...` in a nested (pure) dict."""
  for p in path:
    tree = tree[p]
  return tree


def _unstacked(tree: dict, path: Path) -> bool:
  """Whether the model's layers are a list (`scan_layers=False`): `layers` then holds one subtree per layer."""
  return 0 in _lookup(tree, path[:path.index("layers") + 1])


def _hf_shape(entry: _Entry, config: ModelConfig, shape) -> tuple[int, ...]:
  """The shape of the HF tensor that maps to our parameter of `shape` (`entry.to_hf` on shapes only)."""
  spec = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  return tuple(jax.eval_shape(lambda x: entry.to_hf(x, config), spec).shape)


def _convert(ckpt: HFCheckpoint, name: str, entry: _Entry, config: ModelConfig, shape) -> np.ndarray:
  """The HF tensor `name` as our parameter of `shape`.

  The HF shape is checked before any reshape: a reshape accepts any tensor with the right element count, so a
  transposed `[D, K*H]` k_proj or a `[N, H]` bias would otherwise load as scrambled weights.
  """
  raw = ckpt.get(name)
  expected = _hf_shape(entry, config, shape)
  if tuple(raw.shape) != expected:
    raise ValueError(f"{ckpt.weight_map[name]}: tensor {name!r} has shape {tuple(raw.shape)}, expected {expected} "
                     "for this config")
  return entry.to_ours(raw, config)


def _abstract_and_shardings(build, mesh, rules):
  abstract_model = nnx.eval_shape(build)
  abstract = nnx.to_pure_dict(nnx.state(abstract_model))
  shardings = None
  if mesh is not None:
    from rstar_jax import sharding as sharding_lib  # local: models never depend on the mesh module
    shardings = nnx.to_pure_dict(sharding_lib.param_shardings(abstract_model, mesh,
                                                              rules or sharding_lib.DEFAULT_RULES))
  return abstract_model, abstract, shardings


def value_head_files(directory: str | os.PathLike) -> list[str]:
  """The value head files (`VALUE_HEAD_FILES`) `directory` holds: a PPM dir has one (or both, equal)."""
  return [name for name in VALUE_HEAD_FILES if os.path.isfile(os.path.join(directory, name))]


def load_qwen2(hf_dir: str | os.PathLike, config: ModelConfig | None = None, *, mesh=None, rules=None,
               scan_layers: bool = True, **config_overrides) -> Qwen2:
  """Loads an HF Qwen2 dir as our `Qwen2` (placed on `mesh` with the logical rules when given).

  `scan_layers=False` loads the layers as a list of per-layer parameters (the generation engine's layout, so an
  `Engine` built on the model makes no copy of them); the default stacks them (training, export).

  A PPM dir (one with a value head file) is refused: a round's policy and PPM exports look alike, and a tied PPM's
  backbone loaded as a policy without a word (generation or SFT then ran on the PPM); `load_ppm` loads it.
  """
  heads = value_head_files(hf_dir)
  if heads:
    raise ValueError(f"{os.fspath(hf_dir)} holds a PPM ({heads[0]}): load it with load_ppm; a policy dir has no "
                     "value head")
  config = config or ModelConfig.from_hf_config(hf_dir, **config_overrides)
  model, abstract, shardings = _abstract_and_shardings(
      lambda: Qwen2(config, rngs=nnx.Rngs(0), scan_layers=scan_layers), mesh, rules)
  entries = name_table(config)
  if not config.tie_word_embeddings:
    entries.append(lm_head_entry())
  ckpt = HFCheckpoint(hf_dir)
  try:
    if config.tie_word_embeddings:
      _check_tied_head(ckpt)
    params = _load_entries(ckpt, entries, abstract, shardings, config)
  finally:
    ckpt.close()
  nnx.update(model, params)
  return model


def _check_tied_head(ckpt: HFCheckpoint) -> None:
  """Refuses a tied config whose checkpoint holds an `lm_head.weight` unlike the embedding.

  transformers v5 then unties and runs the file's head, vLLM skips the tensor: which head was meant is unknowable.
  An equal copy (some exports write both) loads.
  """
  name, embed = lm_head_entry().hf_name, "model.embed_tokens.weight"
  if name not in ckpt or embed not in ckpt:
    return
  head, table = ckpt.get(name), ckpt.get(embed)
  if head.shape != table.shape or not np.array_equal(head, table):
    raise ValueError(f"{ckpt.dir}: config.json sets tie_word_embeddings but the checkpoint's {name} differs from "
                     f"{embed} (transformers would run the former, vLLM the latter); set tie_word_embeddings to "
                     f"false to load the lm_head, or drop the tensor to tie")


def load_ppm(ppm_dir: str | os.PathLike, config: ModelConfig | None = None, *, mesh=None, rules=None,
             scan_layers: bool = True, **config_overrides) -> PPM:
  """Loads the official PPM layout: HF backbone dir + `value_head.bin` (or `value_head.safetensors`).

  `scan_layers` as in `load_qwen2`. The value head stays float32 whatever the backbone's `param_dtype`: the official
  `rm_engine` loads `value_head.bin` into a float32 `ValueHead`, so rounding it to a bfloat16 checkpoint's dtype
  would change every PPM value.
  """
  config = config or ModelConfig.from_hf_config(ppm_dir, **config_overrides)
  model, abstract, shardings = _abstract_and_shardings(
      lambda: PPM(config, rngs=nnx.Rngs(0), scan_layers=scan_layers), mesh, rules)
  ckpt = HFCheckpoint(ppm_dir)
  try:
    params = _load_entries(ckpt, name_table(config), abstract, shardings, config)
  finally:
    ckpt.close()
  head = read_value_head(ppm_dir)
  weight, bias = head[VALUE_HEAD_KEYS[0]], head[VALUE_HEAD_KEYS[1]]
  if weight.shape != (1, config.hidden_size) or bias.shape != (1,):
    raise ValueError(f"{ppm_dir}: value head has weight {weight.shape} / bias {bias.shape}, expected "
                     f"(1, {config.hidden_size}) / (1,)")
  dtype = jnp.float32
  params["value_head"] = {"kernel": _place(weight.T, None if shardings is None else
                                           shardings["value_head"]["kernel"], dtype),
                          "bias": _place(bias, None if shardings is None else shardings["value_head"]["bias"], dtype)}
  nnx.update(model, params)
  return model


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  with SafetensorsFile(path) as f:
    return {k: np.array(f.get(k)) for k in f.keys()}


def read_value_head(ppm_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """The value head of a PPM dir as float32 `{v_head.summary.weight: [1, D], v_head.summary.bias: [1]}`, from
  `value_head.safetensors` or `value_head.bin`.

  A dir holding both with different heads is refused: the official `rm_engine` scores with `value_head.bin`, so
  preferring the other (e.g. one left by an earlier export when the official `save_rm.py` wrote the .bin) would score
  with another head. An equal copy in both formats loads.
  """
  ppm_dir = os.fspath(ppm_dir)
  heads = {}
  for name, reader in (("value_head.safetensors", _read_safetensors), ("value_head.bin", read_torch_bin)):
    path = os.path.join(ppm_dir, name)
    if os.path.exists(path):
      tensors = reader(path)
      missing = [k for k in VALUE_HEAD_KEYS if k not in tensors]
      if missing:
        raise KeyError(f"{path}: missing value-head tensors {missing}")
      for k in VALUE_HEAD_KEYS:  # a .bin may hold any picklable value: "0.5" and None converted to float32 scalars
        if not isinstance(tensors[k], np.ndarray):
          raise ValueError(f"{path}: {k!r} is not a tensor (a {type(tensors[k]).__name__})")
      heads[name] = {k: np.asarray(tensors[k], np.float32) for k in VALUE_HEAD_KEYS}
  if not heads:
    raise FileNotFoundError(f"{ppm_dir}: no value_head.bin or value_head.safetensors")
  first, *others = heads.values()
  for other in others:
    if any(first[k].shape != other[k].shape or not np.array_equal(first[k], other[k]) for k in VALUE_HEAD_KEYS):
      raise ValueError(f"{ppm_dir}: value_head.bin and value_head.safetensors hold different heads (the official "
                       "rm_engine reads value_head.bin); remove the stale one")
  return first


def copy_side_files(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, names=SIDE_FILES) -> None:
  """Copies the files `names` (default: the tokenizer and generation settings) that `src_dir` holds into `dst_dir`;
  one in `dst_dir` that `src_dir` lacks is removed (an earlier export's, not this model's). Call on one process."""
  for name in names:
    src, dst = os.path.join(src_dir, name), os.path.join(dst_dir, name)
    if os.path.isfile(src):
      if not (os.path.exists(dst) and os.path.samefile(src, dst)):
        with open(src, "rb") as f:
          files.atomic_write(dst, f.read())
    elif os.path.lexists(dst):
      os.remove(dst)


# The token ids of config.json that generation falls back on without a generation_config.json (vLLM and
# transformers' `GenerationConfig.from_model_config` read its eos_token_id then). `ModelConfig` holds none of them.
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def copy_token_ids(src_dir: str | os.PathLike, dst_dir: str | os.PathLike) -> None:
  """Sets `TOKEN_ID_KEYS` in `dst_dir`'s config.json (written by a conversion) to `src_dir`'s, where those are set.

  A conversion writes config.json from `ModelConfig`, which has no token ids: a checkpoint whose EOS ids are only in
  its config.json (no generation_config.json) lost them on import, export and a trainer's export, and generation
  from the result ran past the end of every answer. Call on one process, after the conversion wrote config.json.
  """
  with open(os.path.join(src_dir, "config.json"), encoding="utf-8") as f:
    source = json.load(f)  # already read (and checked) by the conversion's loader
  ids = {key: source[key] for key in TOKEN_ID_KEYS if isinstance(source, dict) and source.get(key) is not None}
  dst = os.path.join(dst_dir, "config.json")
  with open(dst, encoding="utf-8") as f:
    target = json.load(f)
  if any(target.get(key) != value for key, value in ids.items()):
    _write_json(dst, dict(target, **ids))


def weights_fingerprint(hf_dir: str | os.PathLike) -> str:
  """sha256 of the weights an HF dir holds (for a PPM dir, its value head too): what a model is, whichever path it
  is read from. Reads every weight byte once (about 10 s for a 7B model's 15 GB)."""
  hf_dir = os.fspath(hf_dir)
  paths = sorted(set(HFCheckpoint(hf_dir).weight_map.values()))
  heads = [os.path.join(hf_dir, name) for name in ("value_head.safetensors", "value_head.bin")]
  paths += [path for path in heads if os.path.exists(path)][:1]  # the head `read_value_head` reads
  digest = hashlib.sha256()
  for path in paths:
    digest.update(os.path.basename(path).encode() + b"\0")
    with open(path, "rb") as f:
      while chunk := f.read(1 << 24):
        digest.update(chunk)
  return digest.hexdigest()


# --- export -----------------------------------------------------------------------------------------------------------
def _host_array(x) -> np.ndarray:
  """The whole of `x` on this host. Collective when `x` spans processes (parameters split over a multi-host mesh):
  every process must then call it, in the same order."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _on_process_zero(out_dir: str, what: str, work: Callable[[], None]) -> None:
  from rstar_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top  (local, as in `_load`)
  sharding_lib.on_process_zero(out_dir, what, work)


def _make_out_dir(out_dir: str) -> None:
  """Process 0 creates the export folder before any gather; a failure is raised on every process."""
  _on_process_zero(out_dir, "create the export folder", lambda: os.makedirs(out_dir, exist_ok=True))


def _iter_hf_tensors(state: dict, config: ModelConfig, entries: list[_Entry], dtype
                     ) -> Iterator[tuple[str, np.ndarray]]:
  for entry in entries:
    if entry.per_layer:
      unstacked = _unstacked(state, entry.path)
      for l in range(config.num_layers):
        layer = _lookup(state, _layer_path(entry.path, l)) if unstacked else _lookup(state, entry.path)[l]
        layer = _host_array(layer)
        yield entry.hf_name.format(l=l), np.ascontiguousarray(entry.to_hf(layer, config).astype(dtype))
    else:
      value = _host_array(_lookup(state, entry.path))
      yield entry.hf_name, np.ascontiguousarray(entry.to_hf(value, config).astype(dtype))


_WEIGHT_FILE_RE = re.compile(r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?")


def _write_hf_dir(out_dir: str, tensors: Iterator[tuple[str, np.ndarray]], hf_config: dict,
                  max_shard_bytes: int, stale: tuple[str, ...] = (), always_index: bool = False) -> None:
  """Gathers `tensors` (collective in a multi-host run), then replaces the weights, the config and the `stale`
  files of an earlier export in `out_dir`. With `always_index`, even one shard is written as
  `model-00001-of-00001.safetensors` under a `model.safetensors.index.json`."""
  os.makedirs(out_dir, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, array in tensors:
    if size and size + array.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = array
    size += array.nbytes
  # The weight files of an earlier export into the same folder go before anything is written: left there, loaders
  # that prefer a different file (transformers `model.safetensors`, vLLM the index) would load other weights, and an
  # export failing half-way (a full disk, a kill) would leave the earlier index over some new and some old shards,
  # which loads without an error. The config goes first and the single file or the index last, so until the export
  # is complete the folder holds no weights a loader opens.
  for name in os.listdir(out_dir):
    if _WEIGHT_FILE_RE.fullmatch(name) or name in stale:
      os.remove(os.path.join(out_dir, name))
  _write_json(os.path.join(out_dir, "config.json"), hf_config)
  if len(shards) == 1 and not always_index:
    write_safetensors(os.path.join(out_dir, "model.safetensors"), shards[0])
  else:
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards):
      file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      write_safetensors(os.path.join(out_dir, file), shard)
      weight_map.update({name: file for name in shard})
      total += sum(a.nbytes for a in shard.values())
    _write_json(os.path.join(out_dir, "model.safetensors.index.json"),
                {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_json(path: str, obj) -> None:
  files.atomic_write(path, json.dumps(obj, indent=2))


def _export_dtype(dtype, config: ModelConfig) -> np.dtype:
  """`dtype` as numpy's dtype, through `dtype_name` so the short names the CLI accepts ("bf16") work."""
  return np.dtype(config.weight_dtype if dtype is None else dtype_name(dtype))


def save_qwen2(model: Qwen2, out_dir: str | os.PathLike, *, dtype=None, max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes `model` as an HF dir (`config.json` + safetensors) in `dtype` (a name `dtype_name` takes or a dtype;
  default: the parameter dtype).

  Into a folder holding an earlier export, its weight files and any PPM value head are removed.

  Only process 0 writes; in a multi-host run every process must call it (the gathers are collective), and it returns
  once the files are written.
  """
  if not isinstance(model, Qwen2):  # a PPM has no LM head: KeyError 'lm_head' (untied) or a policy without one
    raise TypeError(f"save_qwen2 writes a Qwen2 policy, got {type(model).__name__} (save_ppm writes a PPM)")
  config = model.config
  dtype = _export_dtype(dtype, config)
  entries = name_table(config) + ([] if config.tie_word_embeddings else [lm_head_entry()])
  state = nnx.to_pure_dict(nnx.state(model))
  hf_config = dict(config.to_hf_config(), torch_dtype=np.dtype(dtype).name)
  _make_out_dir(os.fspath(out_dir))
  tensors = _iter_hf_tensors(state, config, entries, dtype)
  if jax.process_index() != 0:
    for _ in tensors:  # the gathers process 0 makes while it writes
      pass
  # A PPM export's value head in the folder goes too: beside the new weights it would read as a PPM of this backbone
  # and the old head (`train_ppm` from this policy would continue from that head instead of a fresh one).
  _on_process_zero(os.fspath(out_dir), "write the export", lambda: _write_hf_dir(
      os.fspath(out_dir), tensors, hf_config, max_shard_bytes, stale=VALUE_HEAD_FILES))


def save_ppm(ppm: PPM, out_dir: str | os.PathLike, *, dtype=None, value_head_format: str = "bin",
             max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes the official PPM layout: backbone HF dir + `value_head.bin` (float32; or `value_head.safetensors`, with
  the backbone under a `model.safetensors.index.json` even in one shard: vLLM loads only the index's files then,
  where it would load every *.safetensors of the folder, the head's too).

  Into a folder holding an earlier export, the stale weight files and value head (of either format) are removed.

  The PPM has no LM head; the backbone exports as `Qwen2ForCausalLM`, tied or not, without an `lm_head.weight`, so the
  official scorer runs it: rStar's `rm_engine` loads the folder with vLLM's `task="reward"`, which (vLLM 0.6.6) runs
  a `*ForCausalLM` with per-token pooling, skips its `lm_head.` tensors, and hands back every token's hidden state for
  the value head; a `Qwen2Model` it would run as a mean-pooled, normalized embedding model instead. transformers'
  `AutoModel` loads the backbone (`AutoModelForCausalLM` of an untied one warns that `lm_head.weight` is new).
  """
  if not isinstance(ppm, PPM):  # a policy has no value head: it failed as KeyError 'value_head'
    raise TypeError(f"save_ppm writes a PPM, got {type(ppm).__name__} (save_qwen2 writes a Qwen2 policy)")
  config = ppm.config
  dtype = _export_dtype(dtype, config)
  state = nnx.to_pure_dict(nnx.state(ppm))
  hf_config = dict(config.to_hf_config(), torch_dtype=np.dtype(dtype).name)
  tensors = _iter_hf_tensors(state, config, name_table(config), dtype)
  if value_head_format not in ("bin", "safetensors"):
    raise ValueError(f"value_head_format must be 'bin' or 'safetensors', got {value_head_format!r}")
  _make_out_dir(os.fspath(out_dir))
  head = {VALUE_HEAD_KEYS[0]: _host_array(state["value_head"]["kernel"]).astype(np.float32).T.copy(),
          VALUE_HEAD_KEYS[1]: _host_array(state["value_head"]["bias"]).astype(np.float32)}
  if jax.process_index() != 0:
    for _ in tensors:  # the gathers process 0 makes while it writes
      pass

  def write():
    # An earlier export's head goes with its weights, in either format: `read_value_head` prefers
    # value_head.safetensors, the official engine reads value_head.bin, so one left beside the new head would score
    # with the old one; and an export failing before its head is written would leave the new backbone with the old
    # head.
    # vLLM (`DefaultModelLoader._prepare_weights`) loads every *.safetensors of a folder without an index, so a
    # value_head.safetensors beside a single model.safetensors reached its Qwen2ForCausalLM, which refused the
    # unknown `v_head.` tensors: with that head, the backbone goes under an index, which vLLM's loader keeps to.
    _write_hf_dir(os.fspath(out_dir), tensors, hf_config, max_shard_bytes, stale=VALUE_HEAD_FILES,
                  always_index=value_head_format == "safetensors")
    (write_torch_bin if value_head_format == "bin" else write_safetensors)(
        os.path.join(out_dir, f"value_head.{value_head_format}"), head)
  _on_process_zero(os.fspath(out_dir), "write the export", write)
