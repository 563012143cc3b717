"""`ModelConfig`: the shape and numerics of a Qwen2-family decoder.

Built from a Hugging Face `config.json` (`ModelConfig.from_hf_config`) or from a named preset of a real checkpoint
(`ModelConfig.qwen2p5_math_7b()`); written back with `to_hf_config` so exported checkpoints load in `transformers`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from rstar_jax import files

# Architectures whose weights follow the Qwen2 layout (q/k/v bias, no o bias, SwiGLU, RMSNorm, rotate-half RoPE).
SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen2ForTokenClassification", "Qwen2Model")
_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "fp32": "float32",
                "bf16": "bfloat16", "fp16": "float16"}


def dtype_name(dtype: Any, where: str | None = None) -> str:
  """Normalises `jnp.float32`, `"bf16"`, `np.dtype(...)` to a canonical dtype name (float32, bfloat16, float16).

  Args:
    dtype: a name in `_DTYPE_NAMES` or anything `jnp.dtype` reads as one of the three float dtypes.
    where: the setting it came from, named in the error (e.g. "TrainConfig.export_dtype").

  Raises:
    ValueError: `dtype` is no dtype, or not one of the three (an integer dtype object such as `int` was taken as
      "int64", and weights saved so were cast to integers).
  """
  prefix = f"{where}: " if where else ""
  if isinstance(dtype, str):
    name = _DTYPE_NAMES.get(dtype)
  else:
    try:
      name = jnp.dtype(dtype).name
    except (TypeError, ValueError):  # jnp.dtype's own message names only the value
      name = None
  if name not in _DTYPE_NAMES.values():
    raise ValueError(f"{prefix}unknown dtype {dtype!r}; expected one of {sorted(_DTYPE_NAMES)}")
  return name


_SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Qwen2 decoder hyper-parameters.

  `dtype` is the compute dtype of matmuls and activations; `param_dtype` is the storage dtype of the weights.
  Softmax, norm statistics, logits and the PPM head always run in float32 whatever `dtype` is.
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int | None = None  # None: hidden_size // num_heads (as Qwen2 checkpoints)
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  max_position_embeddings: int = 32768
  tie_word_embeddings: bool = False
  initializer_range: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    # A float, bool, string or non-positive size was taken as given and failed far away (a float head count made a
    # float head_dim, a zero one a bare ZeroDivisionError) or built a wrong model (rope_theta <= 0 gives NaN angles).
    for name in _SIZE_FIELDS:
      value = getattr(self, name)
      if value is None and name == "head_dim":
        continue
      if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"ModelConfig.{name} must be an integer >= 1, got {value!r}")
      object.__setattr__(self, name, int(value))
    for name, low in (("rope_theta", "> 0"), ("rms_norm_eps", ">= 0"), ("initializer_range", ">= 0")):
      value = getattr(self, name)
      if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating))
          or not math.isfinite(value) or (value <= 0 if low == "> 0" else value < 0)):
        raise ValueError(f"ModelConfig.{name} must be a finite number {low}, got {value!r}")
      object.__setattr__(self, name, float(value))
    if not isinstance(self.tie_word_embeddings, (bool, np.bool_)):
      raise ValueError(f"ModelConfig.tie_word_embeddings must be a bool, got {self.tie_word_embeddings!r}")
    object.__setattr__(self, "tie_word_embeddings", bool(self.tie_word_embeddings))
    object.__setattr__(self, "dtype", dtype_name(self.dtype, "ModelConfig.dtype"))
    object.__setattr__(self, "param_dtype", dtype_name(self.param_dtype, "ModelConfig.param_dtype"))
    if self.head_dim is None:
      if self.hidden_size % self.num_heads:
        raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                         "set head_dim explicitly")
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")

  # --- derived -----------------------------------------------------------------------------------------------------
  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def num_queries_per_kv(self) -> int:
    return self.num_heads // self.num_kv_heads

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count derived from the shapes (independent of the Flax module, used to check it)."""
    d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
    q, kv = self.num_heads * h, self.num_kv_heads * h
    attn = d * q + q + 2 * (d * kv + kv) + q * d
    per_layer = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_word_embeddings else self.vocab_size * d
    return self.vocab_size * d + self.num_layers * per_layer + d + head

  # --- Hugging Face config.json --------------------------------------------------------------------------------------
  @classmethod
  def from_hf_config(cls, source: str | os.PathLike | Mapping[str, Any], **overrides) -> "ModelConfig":
    """Reads an HF Qwen2 `config.json` (a path to the file or its folder, or the parsed dict).

    Rope theta is read from the top level (transformers v4) or from `rope_parameters` (transformers v5).
    """
    where = "<dict>"
    if not isinstance(source, Mapping):
      path = os.fspath(source)
      if os.path.isdir(path):
        path = os.path.join(path, "config.json")
      where = path
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no config.json found")
      try:
        with open(path, encoding="utf-8") as f:
          source = files.json_loads(f.read())
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
      except UnicodeDecodeError as e:  # its message names no file
        raise ValueError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(source, Mapping):
      raise ValueError(f"{where}: expected a JSON object, got {type(source).__name__}")
    hf = dict(source)
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    if model_type not in (None, "qwen2") or (archs and not any(a in SUPPORTED_ARCHITECTURES for a in archs)):
      raise ValueError(f"{where}: unsupported architecture model_type={model_type!r} architectures={archs}; "
                       f"rstar-jax supports {SUPPORTED_ARCHITECTURES}")

    def need(key):
      if key not in hf:
        raise KeyError(f"{where}: missing field {key!r}")
      return hf[key]

    # A string, float or null size loaded here and failed later, far from the file (or built a wrong model).
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    for key in required + ("num_key_value_heads", "head_dim", "max_position_embeddings"):
      value = need(key) if key in required else hf.get(key)
      if (value is not None or key in required) and (isinstance(value, bool) or not isinstance(value, int)
                                                     or value < 1):
        raise ValueError(f"{where}: field {key!r} must be an integer >= 1, got {value!r}")

    # Fields of another type were a bare AttributeError / TypeError naming no field, or (a "false" string is truthy)
    # loaded as another model.
    for key, types, what in (("rope_parameters", Mapping, "an object"), ("rope_scaling", Mapping, "an object"),
                             ("layer_types", list, "a list"), ("tie_word_embeddings", bool, "true or false")):
      if hf.get(key) is not None and not isinstance(hf[key], types):
        raise ValueError(f"{where}: field {key!r} must be {what}, got {hf[key]!r}")

    for key in ("rope_parameters", "rope_scaling"):
      # transformers v5 nests these by layer type ({"full_attention": {"rope_type": ..., "rope_theta": ...}}) for
      # models with several attention kinds; Qwen2 reads one flat dict and fails on a nested one (KeyError
      # 'rope_type'), while here it found no rope_type nor rope_theta and loaded as default RoPE with theta 1e4.
      nested = [k for k, v in (hf.get(key) or {}).items() if isinstance(v, Mapping)]
      if nested:
        raise ValueError(f"{where}: field {key!r} is nested by layer type ({', '.join(map(str, nested))}); Qwen2 takes "
                         "one flat dict (rope_type, rope_theta)")
    rope_theta = hf.get("rope_theta")
    rope_params = hf.get("rope_parameters") or {}
    v5_theta = rope_params.get("rope_theta") if isinstance(rope_params, Mapping) else None
    # Checked before the two are compared: float("abc") raised a ValueError naming neither the file nor the field.
    for key, value in (("rope_theta", rope_theta), ("rope_parameters.rope_theta", v5_theta)):
      if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{where}: field {key!r} must be a number, got {value!r}")
    if rope_theta is not None and v5_theta is not None and float(rope_theta) != float(v5_theta):
      # transformers v5 runs `rope_parameters`' theta, v4 the top-level one: which one was meant is unknowable.
      raise ValueError(f"{where}: rope_theta={rope_theta} disagrees with rope_parameters.rope_theta={v5_theta}")
    if rope_theta is None:
      rope_theta = v5_theta
    rope_scaling = hf.get("rope_scaling") or {}
    # Older configs name the scaling `type` (the YaRN snippet of the Qwen2.5 model cards: {"type": "yarn", ...}).
    # Both dicts are read: v4 runs `rope_scaling` only, and v5 runs a `rope_scaling` it finds in place of
    # `rope_parameters` (that snippet added to a config v5 wrote), so a scaled type in either one would run.
    for rope_dict in (rope_params, rope_scaling):
      # Read as transformers reads it: a null `rope_type` / `type` stays null (transformers then fails with KeyError
      # None); `or` chains took it, or "", for "default" and ran a {"type": null, "factor": 2.0} unscaled.
      rope_dict = rope_dict or {}
      rope_type = rope_dict.get("rope_type", rope_dict.get("type", "default"))
      if rope_type != "default":
        raise ValueError(f"{where}: rope_type={rope_type!r} is not supported (only default RoPE)")
    # What the model does not implement must not load as if it did (the logits would silently differ from HF's).
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):  # transformers' ACT2FN: both names are SiLU
      raise ValueError(f"{where}: hidden_act={hf['hidden_act']!r} is not supported (Qwen2's MLP is SwiGLU with silu)")
    layer_types = hf.get("layer_types") or []
    # transformers' defaults: a config that turns the window on without naming it gets sliding_window=4096.
    window_on = bool(hf.get("use_sliding_window")) and hf.get("sliding_window", 4096) is not None
    max_window_layers = hf.get("max_window_layers", 28)
    if window_on and (isinstance(max_window_layers, bool) or not isinstance(max_window_layers, int)):
      raise ValueError(f"{where}: field 'max_window_layers' must be an integer, got {max_window_layers!r}")
    sliding = any(t != "full_attention" for t in layer_types) or (
        window_on and max_window_layers < need("num_hidden_layers"))
    if sliding:
      raise ValueError(f"{where}: sliding-window attention is not supported (use_sliding_window / layer_types): "
                       "every layer here attends to the whole context")
    num_heads = need("num_attention_heads")
    fields = dict(
        vocab_size=need("vocab_size"),
        hidden_size=need("hidden_size"),
        intermediate_size=need("intermediate_size"),
        num_layers=need("num_hidden_layers"),
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim"),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=rope_theta if rope_theta is not None else 10000.0,
        max_position_embeddings=hf.get("max_position_embeddings", 32768),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        initializer_range=hf.get("initializer_range", 0.02),
    )
    for key in ("torch_dtype", "dtype"):  # a list was a bare "unhashable type" TypeError
      if hf.get(key) is not None and not isinstance(hf[key], str):
        raise ValueError(f"{where}: field {key!r} must be a dtype name, got {hf[key]!r}")
    torch_dtype = hf.get("torch_dtype") or hf.get("dtype")
    if torch_dtype in _DTYPE_NAMES:
      fields["param_dtype"] = torch_dtype
    fields.update(overrides)
    try:
      return cls(**fields)
    except ValueError as e:  # a field checked by the dataclass (`"rms_norm_eps": null`): name the file too
      raise ValueError(f"{where}: {e}") from None

  def to_hf_config(self) -> dict[str, Any]:
    """An HF `config.json` dict that `transformers` loads as `Qwen2ForCausalLM`."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings,
        "initializer_range": self.initializer_range,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "torch_dtype": self.param_dtype,
    }

  # --- presets of real checkpoints (values from their published config.json) ----------------------------------------
  @classmethod
  def qwen2p5_0p5b(cls, **kw) -> "ModelConfig":
    """Qwen/Qwen2.5-0.5B (494,032,768 parameters)."""
    return cls(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
               num_kv_heads=2, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
               tie_word_embeddings=True, param_dtype="bfloat16", **kw)

  @classmethod
  def qwen2p5_math_1p5b(cls, **kw) -> "ModelConfig":
    """Qwen/Qwen2.5-Math-1.5B (1,543,714,304 parameters)."""
    return cls(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
               num_kv_heads=2, rms_norm_eps=1e-6, rope_theta=1e4, max_position_embeddings=4096,
               tie_word_embeddings=True, param_dtype="bfloat16", **kw)

  @classmethod
  def qwen2p5_math_7b(cls, **kw) -> "ModelConfig":
    """Qwen/Qwen2.5-Math-7B (7,615,616,512 parameters)."""
    return cls(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
               num_kv_heads=4, rms_norm_eps=1e-6, rope_theta=1e4, max_position_embeddings=4096,
               tie_word_embeddings=False, param_dtype="bfloat16", **kw)

  @classmethod
  def tiny(cls, **kw) -> "ModelConfig":
    """The tiny test/benchmark shape (vocab 512, hidden 64, 2 layers, 4 heads, 2 kv heads, intermediate 128)."""
    fields = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
    fields.update(kw)
    return cls(**fields)


PRESETS = {
    "qwen2.5-0.5b": ModelConfig.qwen2p5_0p5b,
    "qwen2.5-math-1.5b": ModelConfig.qwen2p5_math_1p5b,
    "qwen2.5-math-7b": ModelConfig.qwen2p5_math_7b,
    "tiny": ModelConfig.tiny,
}
