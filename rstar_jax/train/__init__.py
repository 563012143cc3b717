"""Training: train state, losses, optimizer, steps, orbax checkpoints, and the SFT / PPM entry points."""

from rstar_jax.train.config import TrainConfig, official_ppm_config, ppm_config, sft_config
from rstar_jax.train.optimizer import OptimizerConfig
from rstar_jax.train.trainer import NonFiniteLossError, TrainResult, evaluate_ppm, train_policy, train_ppm

__all__ = ["TrainConfig", "official_ppm_config", "ppm_config", "sft_config", "OptimizerConfig", "NonFiniteLossError",
           "TrainResult", "evaluate_ppm", "train_policy", "train_ppm"]
