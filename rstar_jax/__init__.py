"""rstar-jax: rStar-Math self-evolution in JAX (Qwen2 policy + PPM, batched MCTS, sandboxed code, trainers).

Packages: `models` (Flax Qwen2, PPM, HF conversion), `generate` (sampling engine), `search` (lockstep MCTS),
`data` (tree extraction, rStar formats, grain pipelines), `train` (SFT and PPM trainers); modules `sharding`,
`tokenizer`, `grading`, `prompts`. The sandbox pool is the separate top-level package `sandbox`.
"""

__version__ = "0.1.0"
