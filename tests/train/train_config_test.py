"""TrainConfig from nested mappings (as `ml_collections` config files produce them)."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rstar_jax.data.pipeline import PipelineConfig
from rstar_jax.train import config as config_lib
from rstar_jax.train.optimizer import OptimizerConfig


def test_from_config_dict():
  cd = ml_collections.ConfigDict({
      "optimizer": {"learning_rate": 1e-5, "schedule": "cosine", "warmup_steps": 10},
      "data": {"max_len": 4096, "batch_size": 64, "buckets": [1024, 2048]},
      "mesh": [1, 4, 2], "accum_steps": 4, "compute_dtype": "bfloat16", "ppm_head": "tanh"})
  config = config_lib.TrainConfig.from_dict(cd.to_dict())
  assert config.optimizer == OptimizerConfig(learning_rate=1e-5, schedule="cosine", warmup_steps=10)
  assert config.data == PipelineConfig(max_len=4096, batch_size=64, buckets=(1024, 2048))
  assert config.mesh == (1, 4, 2) and config.accum_steps == 4 and config.ppm_head == "tanh"
  hash(config)  # frozen all the way down


def test_from_a_config_dict_itself():
  # A config file's ConfigDict is no Mapping: from_dict(cd) kept its nested ConfigDicts unbuilt (no defaults, no
  # checks; a field the file did not set failed as an AttributeError once the trainer read it).
  cd = ml_collections.ConfigDict({"optimizer": {"learning_rate": 1e-5}, "data": {"batch_size": 64, "buckets": [512]},
                                  "mesh": [1, -1, 1]})
  config = config_lib.TrainConfig.from_dict(cd)
  assert config.optimizer == OptimizerConfig(learning_rate=1e-5)
  assert config.data == PipelineConfig(batch_size=64, buckets=(512,))
  assert config == config_lib.TrainConfig.from_dict(cd.to_dict())
  assert config == config_lib.TrainConfig.from_dict({"optimizer": cd.optimizer, "data": cd.data, "mesh": cd.mesh})


def test_defaults_are_the_paper_sft_settings():
  config = config_lib.sft_config()
  assert (config.optimizer.learning_rate, config.optimizer.weight_decay, config.optimizer.schedule,
          config.optimizer.warmup_steps) == (7e-6, 0.1, "linear", 0)
  assert (config.data.num_epochs, config.data.batch_size, config.data.max_len) == (2, 128, 2048)


def test_unknown_keys_raise():
  with pytest.raises(KeyError, match=r"optimizer: unknown keys \['lr'\]"):
    config_lib.TrainConfig.from_dict({"optimizer": {"lr": 1e-5}})
  with pytest.raises(KeyError, match=r"config: unknown keys \['epochs'\]"):
    config_lib.TrainConfig.from_dict({"epochs": 2})


@pytest.mark.parametrize("changes, message", [
    ({"accum_steps": 0}, r"accum_steps must be an integer >= 1, got 0"),
    ({"log_every": 0}, r"log_every must be an integer >= 1, got 0"),
    ({"checkpoint_every": 0}, r"checkpoint_every must be an integer >= 1, got 0"),
    ({"keep_checkpoints": 0}, r"keep_checkpoints must be an integer >= 1, got 0"),
    ({"max_steps": 0}, r"max_steps must be an integer >= 1, got 0"),
    ({"mesh": (2, 2)}, r"mesh must be three sizes \(data, fsdp, tensor\), each >= 1 or -1, got \(2, 2\)"),
    ({"mesh": (1, 0, 1)}, r"mesh must be three sizes"),
    ({"ppm_head": "sigmoid"}, r"ppm_head must be one of \('raw', 'tanh'\), got 'sigmoid'"),
    ({"value_head_dropout": 1.0}, r"value_head_dropout must be a number in \[0, 1\), got 1.0"),
    ({"value_head_dropout": -0.1}, r"value_head_dropout must be a number in \[0, 1\), got -0.1"),
    ({"compute_dtype": "fp8"}, r"unknown dtype 'fp8'"),
    ({"export_dtype": "half"}, r"unknown dtype 'half'"),
    ({"seed": 1.5}, r"TrainConfig.seed must be an integer, got 1.5"),  # was jax's "Invalid rng value" after tokenizing
    ({"seed": None}, r"TrainConfig.seed must be an integer, got None"),
])
def test_bad_values_raise_before_training(changes, message):
  # Before, these surfaced as a ZeroDivisionError after the first step (accum_steps, log_every), a run that kept no
  # checkpoint at all (keep_checkpoints=0), or an export that failed after the whole run (export_dtype).
  with pytest.raises(ValueError, match=message):
    config_lib.sft_config(**changes)


@pytest.mark.parametrize("values, message", [
    # The schedule was checked only when the trainer built the optimizer, after tokenizing the data and loading the
    # model; the others trained on: a NaN rate or decay made every weight NaN at the first update (the run stopped
    # at the loss check), a negative warm-up counted as none, b1 = 1.5 is no moving average, a string rate failed
    # inside jit.
    ({"schedule": "cosin"}, r"OptimizerConfig.schedule must be one of \('linear', 'cosine', 'constant'\), got 'cosin'"),
    ({"learning_rate": "7e-6"}, r"OptimizerConfig.learning_rate must be a finite number >= 0, got '7e-6'"),
    ({"learning_rate": float("nan")}, r"OptimizerConfig.learning_rate must be a finite number >= 0, got nan"),
    ({"weight_decay": None}, r"OptimizerConfig.weight_decay must be a finite number >= 0, got None"),
    ({"b1": 1.5}, r"OptimizerConfig.b1 must be a number in \[0, 1\), got 1.5"),
    ({"eps": -1.0}, r"OptimizerConfig.eps must be a finite number > 0, got -1.0"),
    # Adam divides by sqrt(v) + eps: with eps 0 an element whose gradient is 0 so far gets 0 / 0 = NaN (torch's AdamW
    # too), e.g. the PPM head's bias at the first update (Bradley-Terry sees only r_pos - r_neg) or an embedding row
    # of a token no batch had yet, and the run stopped at the loss check advising a lower learning rate.
    ({"eps": 0.0}, r"OptimizerConfig.eps must be a finite number > 0, got 0.0"),
    ({"warmup_steps": -5}, r"OptimizerConfig.warmup_steps must be an integer >= 0, got -5"),
    ({"warmup_steps": 2.5}, r"OptimizerConfig.warmup_steps must be an integer >= 0, got 2.5"),
    ({"max_grad_norm": float("inf")}, r"OptimizerConfig.max_grad_norm must be None or a finite number, got inf"),
])
def test_bad_optimizer_values_raise_when_the_config_is_read(values, message):
  with pytest.raises(ValueError, match=message):
    config_lib.TrainConfig.from_dict({"optimizer": values})


def test_optimizer_values_that_turn_features_off_are_kept():
  # Documented: max_grad_norm None or <= 0 means no clipping; 0 decay and 0 warm-up are the official RM settings.
  for values in ({"max_grad_norm": None}, {"max_grad_norm": 0.0}, {"max_grad_norm": -1}, {"weight_decay": 0.0},
                 {"warmup_steps": 0, "learning_rate": 0}):
    assert config_lib.TrainConfig.from_dict({"optimizer": values}).optimizer == OptimizerConfig(**values)


def test_dtype_aliases_are_normalised():
  config = config_lib.TrainConfig.from_dict({"compute_dtype": "bf16", "export_dtype": "fp16", "mesh": [1, -1, 1]})
  assert (config.compute_dtype, config.export_dtype, config.mesh) == ("bfloat16", "float16", (1, -1, 1))


@pytest.mark.parametrize("dtype", ["float16", "fp16"])
def test_float16_compute_is_refused_naming_the_field(dtype):
  # Documented choices are float32 and bfloat16 (fp32 master weights, no loss scaling). float16 was taken and trained
  # silently wrong: at the official PPM head init (std 1e-6) the gradient reaching the backbone is ~1e-9, below
  # float16's smallest number, so every layer's gradient was exactly 0 (float32 and bfloat16: 8e-8 for a q_proj).
  with pytest.raises(ValueError, match=r"TrainConfig.compute_dtype .*'float32' or 'bfloat16'.*float16"):
    config_lib.TrainConfig.from_dict({"compute_dtype": dtype})
  with pytest.raises(ValueError, match=r"TrainConfig.compute_dtype"):
    config_lib.sft_config(compute_dtype=dtype)
  assert config_lib.TrainConfig(export_dtype=dtype).export_dtype == "float16"  # weights may still be saved so


@pytest.mark.parametrize("changes, message", [
    ({"optimizer": {"learning_rate": 1e-5}},
     r"TrainConfig.optimizer must be an OptimizerConfig \(TrainConfig.from_dict builds one from a mapping\), got dict"),
    ({"data": {"batch_size": 64}},
     r"TrainConfig.data must be a PipelineConfig \(TrainConfig.from_dict builds one from a mapping\), got dict"),
    ({"optimizer": None}, r"TrainConfig.optimizer must be an OptimizerConfig .*, got NoneType"),
])
def test_nested_settings_that_are_not_their_configs_are_named(changes, message):
  # A dict here was kept: `data` failed as "'dict' object has no attribute 'batch_size'" and `optimizer` only after
  # the data was tokenized and the model loaded ("'dict' object has no attribute 'max_grad_norm'").
  with pytest.raises(TypeError, match=message):
    config_lib.sft_config(**changes)
  if not isinstance(next(iter(changes.values())), dict):  # from_dict builds the configs from mappings
    with pytest.raises(TypeError, match=message):
      config_lib.TrainConfig.from_dict(changes)


@pytest.mark.parametrize("seed", [2**32 + 5, -1, 2**63])
def test_a_seed_outside_32_bits_is_refused(seed):
  # The seed is `jax.random.key(seed)` of the value head's init and its dropout masks; jax keeps 32 bits of it, so
  # 2**32 + 5 initialised and dropped exactly as seed 5 (and -1 as 2**32 - 1), and 2**63 failed as "Python int too
  # large to convert to C long" only after the data was tokenized and the model loaded.
  if -2**63 <= seed < 2**63:
    assert (jax.random.key_data(jax.random.key(seed)) == jax.random.key_data(jax.random.key(seed % 2**32))).all()
  with pytest.raises(ValueError, match=rf"TrainConfig.seed must be in \[0, 2\*\*32\).*got {seed}"):
    config_lib.sft_config(seed=seed)
  assert config_lib.ppm_config(seed=2**32 - 1).seed == 2**32 - 1


@pytest.mark.parametrize("changes, message", [
    # These failed as "Cannot interpret '2.5' as a data type" or "unknown dtype 'fp8'", not naming the setting a
    # config file got wrong, and a dtype object that is no float one was kept: `export_dtype=int` ("int64") exported
    # every weight cast to an integer (0 for all |w| < 1) after the whole run.
    ({"compute_dtype": 2.5}, r"TrainConfig.compute_dtype: .*2.5"),
    ({"compute_dtype": "fp8"}, r"TrainConfig.compute_dtype: unknown dtype 'fp8'"),
    ({"export_dtype": "half"}, r"TrainConfig.export_dtype: unknown dtype 'half'"),
    ({"export_dtype": [1]}, r"TrainConfig.export_dtype: .*\[1\]"),
    ({"export_dtype": int}, r"TrainConfig.export_dtype: unknown dtype .*int"),
    ({"export_dtype": np.int8}, r"TrainConfig.export_dtype: unknown dtype .*int8"),
])
def test_bad_dtypes_name_the_field(changes, message):
  with pytest.raises((ValueError, TypeError), match=message):
    config_lib.sft_config(**changes)
  assert config_lib.sft_config(export_dtype=np.float16, compute_dtype=jnp.bfloat16).export_dtype == "float16"


@pytest.mark.parametrize("mesh", [4, None, 2.0])
def test_a_mesh_that_is_no_sequence_is_named(mesh):
  # Failed as "'int' object is not iterable" (or 'NoneType', 'float'), naming no setting.
  with pytest.raises(ValueError, match=rf"TrainConfig.mesh must be three sizes \(data, fsdp, tensor\).*got {mesh}"):
    config_lib.TrainConfig.from_dict({"mesh": mesh})


@pytest.mark.parametrize("values, field, bad", [
    ({"remat": "false"}, "TrainConfig.remat", "'false'"), ({"async_checkpoint": "no"}, "TrainConfig.async_checkpoint",
                                                           "'no'"),
    ({"progress": None}, "TrainConfig.progress", "None"), ({"tensorboard": 0}, "TrainConfig.tensorboard", "0"),
    ({"data": {"shuffle": "false"}}, "PipelineConfig.shuffle", "'false'"),
    ({"optimizer": {"decay_norms_and_biases": "false"}}, "OptimizerConfig.decay_norms_and_biases", "'false'"),
])
def test_switches_that_are_not_bools_are_named(values, field, bad):
  # A config file's "false" is a non-empty str, so bool("false") is True: the run shuffled, decayed the norm weights,
  # or recomputed activations it was told not to, and None or 0 turned a feature off unnoticed.
  assert bool("false") and not bool(None)
  with pytest.raises(ValueError, match=rf"{field} must be a bool \(true or false\), got {re.escape(bad)}"):
    config_lib.TrainConfig.from_dict(values)


@pytest.mark.parametrize("values", [None, [("seed", 1)], "seed=1"])
def test_from_dict_refuses_what_is_no_mapping(values):
  # An empty YAML file loads as None: it failed as "'NoneType' object is not iterable"; a list of pairs was taken
  # as a mapping by dict(), and a string as "dictionary update sequence element #0 has length 1", naming nothing.
  with pytest.raises(TypeError, match=rf"TrainConfig.from_dict takes a mapping or a ConfigDict, got "
                                      rf"{type(values).__name__}"):
    config_lib.TrainConfig.from_dict(values)
