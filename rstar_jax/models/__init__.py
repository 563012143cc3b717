"""Flax Qwen2 policy and PPM, their configs, and HF checkpoint conversion."""

from rstar_jax.models.config import PRESETS, ModelConfig
from rstar_jax.models.ppm import PPM, ValueHead, dropout_keep_mask, last_token_index, value_transform
from rstar_jax.models.qwen2 import KVCache, ModelOutput, Qwen2, Qwen2Model, default_positions, unstack_layers

__all__ = [
    "PRESETS", "ModelConfig", "PPM", "ValueHead", "dropout_keep_mask", "last_token_index", "value_transform",
    "KVCache", "ModelOutput", "Qwen2", "Qwen2Model", "default_positions", "unstack_layers",
]
