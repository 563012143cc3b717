"""The search's `Policy` and `Scorer` (`rstar_jax.search.interfaces`) over an `Engine`: text in, text / values out.

`checkpoint_eos_ids` gives the EOS ids a checkpoint's rows end on, as vLLM takes them, for `Engine(eos_ids=)`;
`vllm_row_limit` the `Engine.generate(max_context=)` that ends rows where vLLM's `max_model_len` ends them.
"""

from __future__ import annotations

import json
import numbers
import os
from typing import Any, Sequence

import numpy as np

from rstar_jax import files
from rstar_jax.generate.engine import Engine, Request, check_limits
from rstar_jax.generate.sampling import Greedy, Sampling, SamplingMethod
from rstar_jax.models import value_transform

# vLLM's `_MAX_TEMP`: the lowest positive temperature it samples at.
VLLM_MIN_TEMPERATURE = 1e-2

# The tags of every step text the PPM scores (`PPM_SPECIAL_TOKENS` holds them, each one token since training).
STEP_TAGS = ("<code>", "<end_of_step>", "<end_of_code>", "<output>", "<end_of_output>", "<answer>", "<end_of_answer>")


class EnginePolicy:
  """`Policy`: `generate(prompts, n=, seeds=, stop=)` -> `[len(prompts)][n]` `StepCandidate`s.

  Sampling settings are fixed at construction (the search's contract). Prompt `i`'s sample `j` draws with
  `fold_in(key(seeds[i]), j)`, so candidates depend on (prompt, seed, j) only, not on the rest of the batch, up to
  floating-point rounding: the batch's padded shapes round the logits differently in their last bits, which changes
  a draw only at a near-tie of its two best noisy scores, or of two tokens at the top-k / top-p cutoff when it draws
  one of them (rare in float32 compute, common with bfloat16; README "Interfaces the search drives").
  """

  def __init__(self, engine: Engine, *, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               max_new_tokens: int = 2048, max_context: int | None = None, progress: bool = False):
    """Wraps an engine built from a `Qwen2` with a tokenizer.

    Args:
      engine: the generation engine (its tokenizer encodes prompts and decodes steps; its EOS ids end a step).
      temperature: 0 means greedy; one in (0, 0.01) samples at 0.01, as vLLM's `SamplingParams` raises it (so a
        tiny positive temperature is no greedy decoding there).
      top_p: nucleus filter (1 = off).
      top_k: top-k filter (0 = off).
      max_new_tokens: the most tokens of one step.
      max_context: vLLM's `max_model_len`: a step ends ("length") once prompt + step tokens exceed it, so it may
        end one token past it (that token is sampled, never fed to the model; a prompt of exactly `max_context`
        tokens gets a one-token step), and a longer prompt gets `("", "length")` (`vllm_row_limit`). None: the
        model's `max_position_embeddings`, the positions it was trained on (the official search's 4096-token
        context is Qwen2.5-Math's); more is refused, as vLLM refuses a `max_model_len` past it.
      progress: progress bars over decode steps.

    Raises:
      ValueError: the engine has no tokenizer, a limit is no count, `max_context` exceeds the model's
        `max_position_embeddings`, or a sampling setting is out of range (`Sampling`).
      TypeError: the engine was built from a PPM.
    """
    if engine.tokenizer is None:
      raise ValueError("EnginePolicy needs an Engine with a tokenizer")
    if engine.is_ppm:
      raise TypeError("EnginePolicy needs an Engine built from a Qwen2, not a PPM")
    check_limits(max_new_tokens, max_context)  # now, not at the search's first expansion
    check_context(max_context, engine.config.max_position_embeddings, "max_context")
    self.engine = engine
    # vLLM 0.6.6's `SamplingParams.__post_init__` raises 0 < T < _MAX_TEMP (0.01) to 0.01 before its greedy test
    # (T < 1e-5), so only 0 is greedy there.
    if isinstance(temperature, numbers.Real) and 0 < temperature < VLLM_MIN_TEMPERATURE:  # else Sampling names it
      temperature = VLLM_MIN_TEMPERATURE
    # Built at temperature 0 too: it checks top_p / top_k, as vLLM's SamplingParams does whatever the temperature.
    sampling = Sampling(1.0 if temperature == 0 else temperature, top_p, top_k)
    self.sampler: SamplingMethod = Greedy() if temperature == 0 else sampling
    self.max_new_tokens = max_new_tokens
    self.max_context = engine.config.max_position_embeddings if max_context is None else max_context
    self.progress = progress

  def generate(self, prompts: Sequence[str], *, n: int, seeds: Sequence[int], stop: Sequence[str]) -> list:
    from rstar_jax.search.interfaces import StepCandidate  # pylint: disable=g-import-not-at-top  (search imports us)

    if isinstance(prompts, str):  # as `PPMScorer.score`: its length would be read as a count of prompts
      raise TypeError("generate() takes a sequence of prompts, got one string")
    if len(seeds) != len(prompts):
      raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds (one seed per prompt)")
    for i, seed in enumerate(seeds):
      # Not `int(seed)`: 1.5 and 1.2 both drew with seed 1 (two seeds, one set of candidates), and "1" passed as 1.
      if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seeds[{i}] must be an integer, got {seed!r}")
    ids = self.engine.tokenizer.encode_batch(list(prompts))
    for i, prompt_ids in enumerate(ids):
      if not prompt_ids:
        raise ValueError(f"prompt {i} encodes to no tokens: {prompts[i]!r}")
    results = self.engine.generate([Request(p, n=n, seed=s) for p, s in zip(ids, seeds)], self.sampler,
                                   max_new_tokens=self.max_new_tokens, stop=stop,
                                   max_context=vllm_row_limit(self.max_context),
                                   progress=self.progress)
    return [[StepCandidate(text=r.text, stop_reason=r.stop_reason) for r in row] for row in results]


class PPMScorer:
  """`Scorer`: `score(texts) -> [len(texts)] float32`, the PPM value at each text's last token.

  Texts sharing a prefix (siblings of one node: prompt + path + their own step) are prefilled once.
  """

  def __init__(self, engine: Engine, *, transform: str = "tanh5", max_tokens: int | None = None):
    """Wraps an engine built from a `PPM` with a tokenizer.

    Args:
      engine: the engine.
      transform: "raw" (the linear head, as trained), "tanh" (the paper's head) or "tanh5" (`tanh(r / 5)`, the
        official search-time value). The PPM does not record how it was trained: one trained with
        `TrainConfig.ppm_head="tanh"` is scored as trained with "tanh"; "tanh5" goes with the default "raw".
      max_tokens: a text is cut to its first `max_tokens` tokens. None: the model's `max_position_embeddings` minus
        one, as the official scorer cuts at the context length minus one; more than `max_position_embeddings` is
        refused (a text's last tokens would sit at positions the model was never trained on).
    """
    if engine.tokenizer is None:
      raise ValueError("PPMScorer needs an Engine with a tokenizer")
    if not engine.is_ppm:
      raise TypeError("PPMScorer needs an Engine built from a PPM")
    value_transform(np.zeros(1, np.float32), transform)  # validates the name
    split = [tag for tag in STEP_TAGS if len(engine.tokenizer.encode(tag)) != 1]
    if split:
      # The base model's tokenizer, say: every value would come from token ids the PPM never saw, without an error.
      raise ValueError(f"PPMScorer: the tokenizer splits rStar's step tags ({', '.join(split)}) into several tokens; "
                       "the PPM was trained with each as one token: use the PPM export's tokenizer (or "
                       "rstar_jax.tokenizer.add_rstar_tokens(tokenizer, 'ppm'))")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
      # A negative count would cut every text's last tokens (`ids[:-1]`) and score what is left.
      raise ValueError(f"max_tokens must be an integer >= 1 (None: the model's context minus one), got {max_tokens!r}")
    check_context(max_tokens, engine.config.max_position_embeddings, "max_tokens")
    self.engine = engine
    self.transform = transform
    self.max_tokens = engine.config.max_position_embeddings - 1 if max_tokens is None else max_tokens

  def score(self, texts: Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      raise TypeError("score() takes a sequence of texts, got one string")
    ids = self.engine.tokenizer.encode_batch(list(texts))
    ids = [i[:self.max_tokens] for i in ids]
    for i, text_ids in enumerate(ids):
      if not text_ids:
        raise ValueError(f"text {i} encodes to no tokens: {texts[i]!r}")
    raw = self.engine.values(ids)
    return np.asarray(value_transform(raw, self.transform), np.float32)


def check_context(limit: int | None, max_position_embeddings: int, name: str) -> None:
  """Refuses a context `limit` past the model's `max_position_embeddings` (None: the model's own, always fine).

  vLLM refuses a `max_model_len` past it (unless `VLLM_ALLOW_LONG_MAX_MODEL_LEN` is set); taken here, the rows ran on
  at positions the model was never trained on (default RoPE extrapolates without a word) and came back as
  plausible-looking text from a model outside its context.
  """
  if limit is not None and limit > max_position_embeddings:
    raise ValueError(f"{name}={limit} exceeds the model's max_position_embeddings={max_position_embeddings} (the "
                     "positions it was trained on; vLLM refuses such a max_model_len too): use at most that")


def vllm_row_limit(max_model_len: int) -> int:
  """The `Engine.generate(max_context=)` that ends rows where vLLM 0.6.6 ends them for `max_model_len`.

  vLLM's `StopChecker.maybe_stop_sequence` ends a sequence once `prompt + output > max_model_len`, checked after each
  sampled token, and its scheduler ignores (no tokens) only prompts longer than `max_model_len`: prompt + output
  reaches `max_model_len + 1` tokens, the last sampled but never fed, so no position past the context is computed.
  (With the async output processor the scheduler stops one step earlier; the official rStar engine runs with
  `enforce_eager=True`, which disables it.)
  """
  return max_model_len + 1


def checkpoint_eos_ids(model_dir: str | os.PathLike[str], tokenizer: Any = None) -> list[int]:
  """The ids that end a row for a checkpoint, as vLLM takes them: the tokenizer's EOS plus the generation config's.

  Instruct checkpoints end a turn with a token other than the tokenizer's EOS (Qwen2.5-Math-Instruct: `<|im_end|>`
  and `<|endoftext|>`), listed only in `generation_config.json`. Pass the result as `Engine(..., eos_ids=)`.

  Args:
    model_dir: a Hugging Face checkpoint dir. Its `generation_config.json`'s `eos_token_id` counts; without that file,
      `config.json`'s does (vLLM and transformers build the generation config from the model config then); without
      either, only the tokenizer's EOS.
    tokenizer: a loaded tokenizer (its `eos_id`, if any, is included), or None.

  Returns:
    The sorted, distinct ids.

  Raises:
    ValueError: naming the file read when it is not a JSON object or its `eos_token_id` is not token ids.
    TypeError: `tokenizer` is not a loaded tokenizer (e.g. its path).
    FileNotFoundError: `model_dir` is not a directory.
  """
  if tokenizer is not None and not hasattr(tokenizer, "eos_id"):
    # A tokenizer's path in its place was read as "no EOS": the rows would end only at generation_config.json's ids.
    raise TypeError(f"tokenizer must be a loaded tokenizer (rstar_jax.tokenizer.load_tokenizer(path)) or None, got "
                    f"{type(tokenizer).__name__} {tokenizer!r:.80}")
  if not os.path.isdir(model_dir):
    # A mistyped dir read as one without a generation config: an instruct model's turn-end ids were silently lost.
    raise FileNotFoundError(f"{os.fspath(model_dir)}: no such checkpoint directory")
  eos_id = getattr(tokenizer, "eos_id", None)
  ids = [] if eos_id is None else [eos_id]
  for name in ("generation_config.json", "config.json"):  # the first present one only, as vLLM's fallback
    path = os.path.join(os.fspath(model_dir), name)
    if os.path.isfile(path):
      ids += _config_eos_ids(path)
      break
  return sorted(set(ids))


def _config_eos_ids(path: str) -> list[int]:
  """The `eos_token_id` of a generation or model config file (an int, a list of them, or absent / null)."""
  try:
    with open(path, encoding="utf-8") as f:
      config = files.json_loads(f.read())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(config, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
  eos = config.get("eos_token_id")
  eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
  if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in eos):
    raise ValueError(f"{path}: eos_token_id must be a token id or a list of them, got {config['eos_token_id']!r}")
  return eos
