"""Generation engine: batched, sharded sampling with a KV cache, stop strings, `n` samples, prefix sharing, scoring.

Public API:
  Engine(model, tokenizer=, eos_ids=, mesh=)
                                     .generate(requests, sampler, max_new_tokens=, stop=) -> [R][n] Result
                                     .values(token_ids) (a PPM) / .loglikelihood(contexts, continuations)
  Request(prompt, n, seed)           one prompt (token ids), `n` samples
  Result(text, stop_reason, token_ids, logprob)
  Greedy(), Sampling(temperature, top_p, top_k)
  EnginePolicy, PPMScorer            the search's Policy / Scorer (`rstar_jax.search.interfaces`)
  checkpoint_eos_ids(dir, tokenizer) the EOS ids vLLM would use for a checkpoint (tokenizer + generation_config)
  Buckets                            shape buckets (how many programs a run compiles)
CLI: `python -m rstar_jax.generate --hf-dir DIR --prompts FILE ...` (see `__main__.py`).

The names load on first use (PEP 562): `python -m rstar_jax.generate` imports this package before its `__main__`,
and importing the engine here imported jax first, so `--help` and argparse's usage errors took seconds, not a moment.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
  from rstar_jax.generate.adapters import EnginePolicy, PPMScorer, checkpoint_eos_ids
  from rstar_jax.generate.buckets import Buckets
  from rstar_jax.generate.engine import Engine, Request, Result
  from rstar_jax.generate.kernels import DecodeState
  from rstar_jax.generate.sampling import Greedy, Sampling, sample_keys

# Public name -> the submodule defining it.
_WHERE = {"EnginePolicy": "adapters", "PPMScorer": "adapters", "checkpoint_eos_ids": "adapters", "Buckets": "buckets",
          "Engine": "engine", "Request": "engine", "Result": "engine", "DecodeState": "kernels", "Greedy": "sampling",
          "Sampling": "sampling", "sample_keys": "sampling"}
# Reached as attributes of the package too (`rstar_jax.generate.engine`), as when this file imported them all.
_SUBMODULES = ("adapters", "buckets", "engine", "kernels", "prefill", "sampling", "stops")

__all__ = ["EnginePolicy", "PPMScorer", "checkpoint_eos_ids", "Buckets", "Engine", "Request", "Result",
           "DecodeState", "Greedy", "Sampling", "sample_keys"]


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  if name not in _WHERE:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
