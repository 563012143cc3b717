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
"""

from rstar_jax.generate.adapters import EnginePolicy, PPMScorer, checkpoint_eos_ids
from rstar_jax.generate.buckets import Buckets
from rstar_jax.generate.engine import Engine, Request, Result
from rstar_jax.generate.kernels import DecodeState
from rstar_jax.generate.sampling import Greedy, Sampling, sample_keys

__all__ = ["EnginePolicy", "PPMScorer", "checkpoint_eos_ids", "Buckets", "Engine", "Request", "Result",
           "DecodeState", "Greedy", "Sampling", "sample_keys"]
