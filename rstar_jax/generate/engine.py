"""The generation engine: a host loop around a few jitted kernels over a static-shape KV cache.

Letters: B rows (samples), G shared-prefix groups, T level length, S cache slots, M max new tokens, V vocab.

One `generate` call:
  1. host: expand requests into rows (`n` samples of a prompt = `n` rows, each with its own PRNG key), plan the
     prefill (`prefill.plan_prefill`: shared prefixes once, bucketed shapes, left padding);
  2. device: `shared` kernel prefills the group prefixes into a fresh cache (L x `[G, K, S, H]`); `start` kernel copies
     each row's group cache row (the `n`-way fork), prefills the rest of the row, and samples token 0;
  3. device: `decode` kernel, a `lax.while_loop` over steps, runs until every row is done (EOS, its length limit) or
     a step budget `stop_at` ends the chunk; its state is donated, so the cache is updated in place;
  4. host (between chunks, only when stop strings or a progress bar are asked for): read the new tokens of the chunk
     (`[B, k]` int32), decode the tails, and end rows whose text now holds a stop string (next chunk's `extra_done`);
  5. host: read tokens and log-probs once, cut each row at its first stop string / EOS / limit (`stops.py`).

Why stop strings are checked on the host every `k` steps (big_vision's look-behind, not a device check): a stop
string is defined on text, and text depends on the tokenizer's byte/merge rules, which a device check could only
approximate with token-level tables; the exact check is cheap on the host. Rows that ended wait idle in the static
batch anyway, so a late check costs at most `k - 1` extra steps for the last row of a call, not a wrong result:
tokens past the stop are discarded. Without stop strings there is one decode call and no host round trip.

Shapes are bucketed (`buckets.py`): rows to powers of two, prompt levels to a length ladder, the cache to
`prompt_slots + M`; a run compiles one `shared`/`start`/`decode` program per bucket combination it meets.
Sharding: with a mesh, parameters are placed by their logical axes, the batch dimension of every input and of the
cache is split over `data` x `fsdp`, kv heads over `tensor` (`rstar_jax.sharding`), and activations are constrained
at trace time; the same code runs unsharded without a mesh. A mesh may span several processes (multi-host): each call
is then one global program, so every process makes the same calls with the same arguments (all the requests, not a
share of them), and every process gets all the results.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rstar_jax import sharding as sharding_lib
from rstar_jax.generate import kernels as kernels_lib
from rstar_jax.generate import stops as stops_lib
from rstar_jax.generate.buckets import Buckets
from rstar_jax.generate.prefill import Level, PrefillPlan, plan_prefill, token_order
from rstar_jax.generate.sampling import Greedy, SamplingMethod, sample_keys
from rstar_jax.models import PPM, KVCache, Qwen2, unstack_layers


@dataclasses.dataclass(frozen=True)
class Request:
  """`n` samples of one prompt; sample `j` (from `first_sample`) draws with `fold_in(key(seed), j)`.

  So sample j's result depends only on (prompt, seed, j) and the settings: not on `n`, the batch, or the row.
  """
  prompt: Sequence[int]
  n: int = 1
  seed: int = 0
  first_sample: int = 0


@dataclasses.dataclass(frozen=True)
class Result:
  """One sample.

  Attributes:
    text: the continuation text before the stop string (EOS excluded); None when the engine has no tokenizer.
    stop_reason: the matched stop string, "eos", or "length" (vLLM style: `text + stop_reason` rebuilds the step
      when a stop string matched).
    token_ids: generated tokens up to and including the one that completed the stop string (or the EOS token).
    logprob: sum of the raw model log-probs of `token_ids`.
  """
  text: str | None
  stop_reason: str
  token_ids: tuple[int, ...]
  logprob: float


@dataclasses.dataclass
class _Row:
  request: int
  sample: int
  prompt: np.ndarray
  limit: int


class Engine:
  """Batched generation and scoring with a Qwen2 policy (or a PPM for `values`).

  Threads may share an engine: each call keeps its own state, so calls made at once from several threads return
  what each would alone. `stats` (prefill / decode seconds, steps, each batch's shapes) describes the last call to
  finish. Not so on a mesh that spans several processes: each process must make the same calls in the same order
  (module docstring), an order that threads racing each other do not keep.

  Example:
    engine = Engine(load_qwen2(dir, scan_layers=False), tokenizer=load_tokenizer(dir))
    results = engine.generate([Request(ids, n=8, seed=3)], Sampling(0.7, top_p=0.95), max_new_tokens=256,
                              stop=["<end_of_step>"])   # [1][8] Result
  """

  def __init__(self, model: Qwen2 | PPM, *, tokenizer: stops_lib.Detokenizer | None = None,
               eos_ids: Sequence[int] | None = None, mesh: Mesh | None = None,
               rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES, buckets: Buckets | None = None,
               share_prefixes: bool = True, stop_check_interval: int = 16, max_rows: int | None = None,
               pad_id: int = 0, scan_layers: bool = False):
    """Wraps `model`.

    Args:
      model: a `Qwen2` (generate, loglikelihood) or a `PPM` (values). With a mesh, the parameters the engine runs
        are placed on the mesh in place (`rstar_jax.sharding.shard_model`).
      tokenizer: decodes text (results' `text`, stop strings); optional for token-only use. When it has a length,
        only ids below it are generated (a checkpoint's spare embedding rows, as Qwen2.5's, are never sampled); the
        length is read at each call, so tags added to the tokenizer later are generated too.
      eos_ids: token ids that end a row; None takes the tokenizer's EOS id (if any). A checkpoint's
        `generation_config.json` may list more (instruct models): `checkpoint_eos_ids` gives both, as vLLM uses.
      mesh: a `(data, fsdp, tensor)` mesh, or None for the default device.
      rules: logical-axis rules for the mesh.
      buckets: shape buckets (their `batch_split` is set from the mesh).
      share_prefixes: prefill shared prompt prefixes (and the `n` samples of a prompt) once; False prefills every
        row in full (the reference the fork is tested against).
      stop_check_interval: decode steps between host checks for stop strings.
      max_rows: the most rows one device batch holds (>= 1; None: no limit); bigger calls run in several batches
        (memory bound).
      pad_id: the token written at padded and finished positions (a token id of the model; never attended to).
      scan_layers: False (default) runs the layers as a list (`rstar_jax.models.unstack_layers`): a stacked model's
        layer weights are copied once into per-layer buffers, which a decode step reads in place (about 2x faster
        at batch 1 on CPU; drop the stacked model afterwards to free its copy; an unstacked model is used as is).
        True runs a stacked model's own weights (no copy; each cached step then slices the stacked weights).
    """
    self.config = model.config
    self.is_ppm = isinstance(model, PPM)
    if not isinstance(model, (Qwen2, PPM)):
      raise TypeError(f"Engine needs a Qwen2 or a PPM, got {type(model).__name__}")
    if tokenizer is not None and not all(hasattr(tokenizer, m) for m in ("decode", "decode_batch")):
      # A tokenizer's path was taken as one: its length capped the sampled ids (a 20-character path: ids < 20), and
      # the error came only when the first result was decoded, after the whole generation.
      raise TypeError(f"tokenizer must be a loaded tokenizer with decode / decode_batch "
                      f"(rstar_jax.tokenizer.load_tokenizer(path)), got {type(tokenizer).__name__} {tokenizer!r:.80}")
    self.tokenizer = tokenizer
    if eos_ids is None:
      eos = getattr(tokenizer, "eos_id", None) if tokenizer is not None else None
      if eos is not None and not self.is_ppm and not 0 <= int(eos) < self.config.vocab_size:
        # As an explicit one is refused: an id past the model's rows is never generated, so no row would ever end at
        # EOS (the rows ran to max_new_tokens without a word).
        raise ValueError(f"the tokenizer's EOS id {int(eos)} is not a token id of the model (vocab_size "
                         f"{self.config.vocab_size}): is it the model's tokenizer? Pass eos_ids= (() for none)")
      self.eos_ids = () if eos is None else (int(eos),)
    else:
      self.eos_ids = _eos_ids(eos_ids, self.config.vocab_size)
    self.mesh, self.rules = mesh, rules
    if not scan_layers:
      model = unstack_layers(model)
    split = 1
    if mesh is not None:
      sharding_lib.shard_model(model, mesh, rules)
      split = math.prod(mesh.shape[a] for a in dict(rules).get("batch", ()) if a in mesh.shape)
    self.buckets = dataclasses.replace(buckets or Buckets(), batch_split=split)
    self.share_prefixes = share_prefixes
    # A float failed at the first call as "'float' object cannot be interpreted as an integer" (a chunk size, a
    # static slice width), naming neither setting.
    if not _is_int(stop_check_interval) or stop_check_interval < 1:
      raise ValueError(f"stop_check_interval must be an integer >= 1, got {stop_check_interval!r}")
    self.stop_check_interval = int(stop_check_interval)
    if max_rows is not None and (not _is_int(max_rows) or max_rows < 1):
      raise ValueError(f"max_rows must be an integer >= 1 (None: no limit), got {max_rows!r}")
    self.max_rows = None if max_rows is None else int(max_rows)
    if not _is_int(pad_id) or not 0 <= pad_id < self.config.vocab_size:
      # The embedding looks up an id past the vocabulary as NaN, and NaN keys/values at masked (padded) slots still
      # reach the live rows through the attention sum (0 * NaN): every padded prompt's tokens silently changed.
      raise ValueError(f"pad_id must be a token id in [0, {self.config.vocab_size}), got {pad_id!r}")
    self.pad_id = int(pad_id)
    graphdef, params = nnx.split(model)
    # Own variables over the same arrays (no copy): `nnx.split` hands back the model's own variable objects, so a
    # later in-place placement of the caller's model (a second Engine on another mesh, `shard_model`) moved this
    # engine's weights onto other devices under its compiled kernels ("incompatible devices").
    self._params = jax.tree.map(lambda x: x, params)
    rules = tuple((name, tuple(axes)) for name, axes in rules)
    self._kernel_args = (graphdef, self.config, mesh, rules, pad_id)
    self._vocab_limit = _vocab_limit(tokenizer)
    self._k = kernels_lib.kernels_for(*self._kernel_args, self._vocab_limit)
    self.stats: dict[str, Any] = {}

  # --- prefill -------------------------------------------------------------------------------------------------------

  def _plan(self, prompts: Sequence[np.ndarray], max_prefix=None) -> PrefillPlan:
    return plan_prefill(prompts, max_prefix, buckets=self.buckets, share=self.share_prefixes, pad_id=self.pad_id)

  def _level_args(self, level: Level) -> tuple[jax.Array, jax.Array, jax.Array]:
    return self._k.put(level.tokens), self._k.put(level.positions), self._k.put(level.mask)

  def _shared_cache(self, plan: PrefillPlan, cache_len: int) -> tuple[KVCache | None, jax.Array | None]:
    if plan.shared is None:
      return None, None
    cache = self._k.shared(self._params, *self._level_args(plan.shared), cache_len=cache_len)
    return cache, self._k.put(plan.row_group)

  @staticmethod
  def _record(stats: dict[str, Any], plan: PrefillPlan, cache_len: int) -> None:
    """Notes a batch's shapes in the call's `stats["batches"]` (for tests, benchmarks and tuning buckets)."""
    stats["batches"].append(dict(rows=plan.rows.shape[0], num_rows=plan.num_rows, cost=plan.cost,
                                 shared=None if plan.shared is None else plan.shared.shape,
                                 row_level=plan.rows.shape, cache_len=cache_len))

  def _row_chunks(self, order: Sequence[int]) -> list[list[int]]:
    order = list(order)
    size = self.max_rows or max(len(order), 1)
    return [order[i:i + size] for i in range(0, len(order), size)]

  # --- generation ----------------------------------------------------------------------------------------------------

  def generate(self, requests: Sequence[Request], sampler: SamplingMethod = Greedy(), *, max_new_tokens: int,
               stop: Sequence[str] | None = (), eos_ids: Sequence[int] | None = None, max_context: int | None = None,
               progress: bool = False) -> list[list[Result]]:
    """Generates `n` samples for each request.

    Args:
      requests: prompts (token ids), sample counts and seeds.
      sampler: `Greedy()` or `Sampling(temperature, top_p, top_k)`.
      max_new_tokens: M, the most tokens a sample generates (a static shape: keep it fixed across calls).
      stop: stop strings (need a tokenizer); None or empty: none.
      eos_ids: overrides the engine's EOS ids for this call.
      max_context: if given, a row also stops ("length") when prompt + generated tokens reach it.
      progress: show a progress bar over decode steps.

    Returns:
      `[len(requests)][n]` results.
    """
    if self.is_ppm:
      raise TypeError("this Engine wraps a PPM (no LM head): use values(), or build the Engine from a Qwen2")
    _check_sampler(sampler)
    stop = stops_lib.validate_stops(stop)
    eos_ids = self.eos_ids if eos_ids is None else _eos_ids(eos_ids, self.config.vocab_size)
    if stop and self.tokenizer is None:
      raise ValueError("stop strings need a tokenizer: Engine(model, tokenizer=...)")
    self._follow_tokenizer_length()
    requests = _request_list(requests)
    rows, keys, results = self._rows(requests, max_new_tokens, max_context)
    stats = dict(prefill_s=0.0, decode_s=0.0, steps=0, batches=[])
    for chunk in self._row_chunks(token_order([row.prompt for row in rows])):
      outs = self._generate_batch([rows[i] for i in chunk], keys[chunk], sampler, max_new_tokens, stop, eos_ids,
                                  progress, stats)
      for i, out in zip(chunk, outs):
        row = rows[i]
        results[row.request][row.sample - requests[row.request].first_sample] = out
    self.stats = stats
    return results  # type: ignore[return-value]

  def precompile(self, requests: Sequence[Request], sampler: SamplingMethod = Greedy(), *, max_new_tokens: int,
                 max_context: int | None = None) -> None:
    """Compiles the programs `generate` would run for these requests (same shapes), without running them.

    A warm-up for long runs and benchmarks: prefilling a big batch only to trigger compilation costs as much as the
    real call. Compiled programs land in JAX's compilation cache, so the later `generate` call only traces.
    """
    if self.is_ppm:
      raise TypeError("this Engine wraps a PPM: nothing to precompile for generate()")
    _check_sampler(sampler)
    self._follow_tokenizer_length()
    rows, keys, _ = self._rows(_request_list(requests), max_new_tokens, max_context)
    for chunk in self._row_chunks(token_order([row.prompt for row in rows])):
      plan, args, statics = self._batch_inputs([rows[i] for i in chunk], keys[chunk], sampler, max_new_tokens, ())
      k = self._k
      with k.context():
        cache = None
        if plan.shared is not None:
          shared_args = (self._params, *self._level_args(plan.shared))
          k.shared.lower(*shared_args, cache_len=statics["cache_len"]).compile()
          cache = jax.eval_shape(functools.partial(k.shared, cache_len=statics["cache_len"]), *shared_args)
        start_args = (self._params, cache, *args)
        k.start.lower(*start_args, **statics).compile()
        state = jax.eval_shape(functools.partial(k.start, **statics), *start_args)
        eos = args[-1]
        k.decode.lower(self._params, state, np.int32(0), k.put(np.zeros(plan.rows.shape[0], bool)), eos,
                       sampler=sampler).compile()
        k.peek.lower(state, np.int32(0), width=0).compile()

  def _follow_tokenizer_length(self) -> None:
    """Samples below the tokenizer's current length: tags added to it in place after the engine was built
    (`add_rstar_tokens`, a trainer given the same tokenizer) would otherwise never be generated."""
    limit = _vocab_limit(self.tokenizer)
    if limit != self._vocab_limit:
      self._vocab_limit = limit
      self._k = kernels_lib.kernels_for(*self._kernel_args, limit)

  def _rows(self, requests: Sequence[Request], max_new_tokens: int, max_context: int | None
            ) -> tuple[list[_Row], np.ndarray, list[list[Result | None]]]:
    """Requests -> rows (one per sample) with their keys; results pre-filled for rows with no room to generate."""
    check_limits(max_new_tokens, max_context)
    rows: list[_Row] = []
    for r, req in enumerate(requests):
      if not isinstance(req, Request):  # bare token ids failed as "'list' object has no attribute 'prompt'"
        raise TypeError(f"request {r}: expected a Request(prompt, n, seed), got {type(req).__name__} {req!r:.40}")
      prompt = _token_ids(req.prompt, f"request {r}", self.config.vocab_size)
      if prompt.size == 0:
        raise ValueError(f"request {r}: empty prompt")
      for field in ("n", "first_sample", "seed"):  # a float or None failed in range() or int() naming nothing
        value = getattr(req, field)
        if not _is_int(value):
          raise TypeError(f"request {r}: {field} must be an integer, got {value!r}")
      if req.n < 0:
        raise ValueError(f"request {r}: n must be >= 0, got {req.n}")
      if req.first_sample < 0:
        raise ValueError(f"request {r}: first_sample must be >= 0, got {req.first_sample}")
      if req.n and req.first_sample + req.n > 2**32:  # sample indices enter the key as uint32 (`sample_keys`)
        raise ValueError(f"request {r}: first_sample + n must be <= 2**32, got {req.first_sample} + {req.n}")
      limit = max_new_tokens if max_context is None else min(max_new_tokens, max_context - prompt.size)
      rows.extend(_Row(r, req.first_sample + j, prompt, limit) for j in range(req.n))
    results: list[list[Result | None]] = [[None] * req.n for req in requests]
    keys = sample_keys([requests[row.request].seed for row in rows], [row.sample for row in rows])
    live = [i for i, row in enumerate(rows) if row.limit > 0]
    for row in rows:
      if row.limit <= 0:
        empty = Result("" if self.tokenizer is not None else None, "length", (), 0.0)
        results[row.request][row.sample - requests[row.request].first_sample] = empty
    return [rows[i] for i in live], keys[live], results

  def _batch_inputs(self, rows: list[_Row], keys: np.ndarray, sampler: SamplingMethod, max_new: int,
                    eos_ids: tuple[int, ...]) -> tuple[PrefillPlan, tuple, dict]:
    """The plan, the device arguments of the `start` kernel after `(params, cache)`, and its static arguments."""
    plan = self._plan([row.prompt for row in rows])
    batch, num = plan.rows.shape[0], len(rows)

    def padded(values, fill, dtype):
      out = np.full((batch,) + np.shape(values)[1:], fill, dtype)
      out[:num] = values
      return out

    k = self._k
    row_group = None if plan.shared is None else k.put(plan.row_group)
    args = (row_group, *self._level_args(plan.rows), k.put(padded(plan.lengths, 0, np.int32)),
            k.put(padded([row.limit for row in rows], 1, np.int32)), k.put(padded(np.ones(num, bool), False, bool)),
            k.put(padded(keys, 0, np.uint32)), k.put_replicated(kernels_lib.eos_array(eos_ids)))
    statics = dict(cache_len=plan.prompt_slots + max_new, max_new=max_new, sampler=sampler)
    return plan, args, statics

  def _generate_batch(self, rows: list[_Row], keys: np.ndarray, sampler: SamplingMethod, max_new: int,
                      stop: tuple[str, ...], eos_ids: tuple[int, ...], progress: bool, stats: dict[str, Any]
                      ) -> list[Result]:
    t0 = time.perf_counter()
    plan, args, statics = self._batch_inputs(rows, keys, sampler, max_new, eos_ids)
    batch, num = plan.rows.shape[0], len(rows)
    cache_len = statics["cache_len"]
    eos = args[-1]
    k = self._k
    with k.context():
      cache = None
      if plan.shared is not None:
        cache = k.shared(self._params, *self._level_args(plan.shared), cache_len=cache_len)
      state = k.start(self._params, cache, *args, **statics)
      del cache
      checking = bool(stop)
      interval = self.stop_check_interval if (checking or progress) else max_new
      width = min(interval + 1, max_new) if checking else 0
      texts = [stops_lib.RowText(self.tokenizer, row.prompt) for row in rows] if checking else []
      generated: list[list[int]] = [[] for _ in range(num)]
      stopped = np.zeros(batch, bool)
      start = 0
      window, done, step, counts = sharding_lib.host_value(k.peek(state, np.int32(start), width=width))
      t1 = time.perf_counter()
      bar = _progress_bar(max_new, progress)
      bar.update(int(step))
      while True:
        step = int(step)
        if checking:
          self._check_stops(window, start, counts, done, generated, texts, stop, stopped)
        if step >= max_new or np.all(done | stopped):
          break
        stop_at = min(step + interval, max_new)
        state = k.decode(self._params, state, np.int32(stop_at), k.put(stopped), eos, sampler=sampler)
        start = max(0, min(step, max_new - width))
        window, done, new_step, counts = sharding_lib.host_value(k.peek(state, np.int32(start), width=width))
        bar.update(int(new_step) - step)
        step = new_step
      bar.close()
      tokens, logprobs, num_tokens = sharding_lib.host_value((state.tokens, state.logprobs, state.num_tokens))
    t2 = time.perf_counter()
    stats["prefill_s"] += t1 - t0
    stats["decode_s"] += t2 - t1
    stats["steps"] += int(step)
    self._record(stats, plan, cache_len)
    return [self._finish(rows[i], tokens[i, :num_tokens[i]], logprobs[i, :num_tokens[i]], stop, eos_ids)
            for i in range(num)]

  def _check_stops(self, window, start, counts, done, generated, texts, stop, stopped) -> None:
    """Appends the chunk's new tokens of running rows to their host copies; ends rows whose text holds a stop.

    `window [B, width]` holds tokens `[start, start + width)`; row i has `counts[i]` tokens. Rows already done on
    the device are left to `_finish` (exact in any case).
    """
    candidates, tails = [], []
    for i in range(len(generated)):
      old, new = len(generated[i]), int(counts[i])
      if stopped[i] or done[i] or new <= old:
        continue
      generated[i].extend(int(t) for t in window[i, old - start:new - start])
      candidates.append(i)
      tails.append(stops_lib.tail_start(old, stop))
    if not candidates:
      return
    hits = stops_lib.tail_contains_stop(self.tokenizer, [generated[i] for i in candidates], tails, stop)
    for i, hit in zip(candidates, hits):
      # Confirm in context: the tail was decoded alone.
      if hit and texts[i].find_stop(generated[i], stop) is not None:
        stopped[i] = True

  def _finish(self, row: _Row, tokens: np.ndarray, logprobs: np.ndarray, stop: tuple[str, ...],
              eos_ids: tuple[int, ...]) -> Result:
    tokens = stops_lib.as_int_list(tokens)
    ended_eos = bool(tokens) and tokens[-1] in eos_ids
    body = tokens[:-1] if ended_eos else tokens
    text = None
    match = None
    if self.tokenizer is not None:
      row_text = stops_lib.RowText(self.tokenizer, row.prompt)
      match = row_text.find_stop(body, stop) if stop else None
      if match is None:
        text = row_text.of(body)
    if match is not None:
      kept, text, reason = match.num_tokens, match.text, match.stop
    else:
      kept, reason = len(tokens), ("eos" if ended_eos else "length")
    return Result(text=text, stop_reason=reason, token_ids=tuple(tokens[:kept]),
                  logprob=float(np.sum(logprobs[:kept], dtype=np.float64)))

  # --- scoring -------------------------------------------------------------------------------------------------------

  def values(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
    """PPM raw values at the last token of each prompt, `[N]` float32 (shared prefixes prefilled once)."""
    if not self.is_ppm:
      raise TypeError("values() needs an Engine built from a PPM")
    arrays = self._token_arrays(prompts, "prompt")
    for i, a in enumerate(arrays):
      if a.size == 0:
        raise ValueError(f"prompt {i} is empty (a value needs a last token)")
    out = np.zeros(len(arrays), np.float32)
    if not arrays:
      return out
    order = token_order(arrays)
    stats = dict(batches=[])
    for chunk in self._row_chunks(order):
      plan = self._plan([arrays[i] for i in chunk])
      self._record(stats, plan, plan.prompt_slots)
      with self._k.context():
        cache, row_group = self._shared_cache(plan, plan.prompt_slots)
        values = self._k.values(self._params, cache, row_group, *self._level_args(plan.rows),
                                cache_len=plan.prompt_slots)
      out[chunk] = np.asarray(sharding_lib.host_value(values))[:len(chunk)]
    self.stats = stats
    return out

  def loglikelihood(self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
                    ) -> list[np.ndarray]:
    """Per-token log-probs of each continuation given its context under the policy (temperature 1).

    Args:
      contexts: `[N]` non-empty token id sequences.
      continuations: `[N]` token id sequences.

    Returns:
      `[N]` float32 arrays, entry i of shape `[len(continuations[i])]` (sum them for the sequence log-likelihood).
    """
    if self.is_ppm:
      raise TypeError("loglikelihood() needs an Engine built from a Qwen2")
    ctx = self._token_arrays(contexts, "context")  # lists: a generator's len() failed naming nothing
    cont = self._token_arrays(continuations, "continuation")
    if len(ctx) != len(cont):
      raise ValueError(f"{len(ctx)} contexts but {len(cont)} continuations")
    for i, c in enumerate(ctx):
      if c.size == 0:
        raise ValueError(f"context {i} is empty (the first continuation token needs a context)")
    full = [np.concatenate([a, b]) for a, b in zip(ctx, cont)]
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(full)
    order = token_order(full)
    stats = dict(batches=[])
    for chunk in self._row_chunks(order):
      plan = self._plan([full[i] for i in chunk], max_prefix=[len(ctx[i]) - 1 for i in chunk])
      self._record(stats, plan, plan.prompt_slots)
      with self._k.context():
        cache, row_group = self._shared_cache(plan, plan.prompt_slots)
        logp = self._k.logprobs(self._params, cache, row_group, *self._level_args(plan.rows),
                                cache_len=plan.prompt_slots)
      logp = np.asarray(sharding_lib.host_value(logp))
      width = plan.rows.shape[1]
      for k, i in enumerate(chunk):
        # The token at prompt index t sits in row-level column width - (length - t); column c - 1 predicts it
        # (the planner keeps every continuation token, and the context's last one, in the row level).
        length = len(full[i])
        cols = width - (length - np.arange(len(ctx[i]), length)) - 1
        out[i] = logp[k, cols].astype(np.float32)
    self.stats = stats
    return out

  def _token_arrays(self, sequences: Sequence[Sequence[int]], what: str) -> list[np.ndarray]:
    return [_token_ids(p, f"{what} {i}", self.config.vocab_size) for i, p in enumerate(sequences)]


def _vocab_limit(tokenizer: Any) -> int | None:
  """The number of ids a tokenizer can decode (the ids sampling may pick), or None without a length."""
  return len(tokenizer) if tokenizer is not None and hasattr(tokenizer, "__len__") else None


def _token_ids(ids: Sequence[int], where: str, vocab_size: int) -> np.ndarray:
  """A flat sequence of token ids -> `[T]` int32, refusing what `np.asarray` would misread.

  A string is refused (its digits would be read as one id: "42" is not the token ids of the text "42"), as are
  non-integers (cut towards zero), nested sequences (flattened into one prompt) and ids outside the vocabulary.
  """
  if isinstance(ids, (str, bytes)):
    raise TypeError(f"{where}: expected token ids, got the text {ids[:40]!r} (encode it with the tokenizer first)")
  array = np.asarray(ids)
  if array.size == 0:
    return np.zeros(0, np.int32)
  if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
    raise TypeError(f"{where}: expected a flat sequence of integer token ids, got {array.dtype} of shape "
                    f"{array.shape}")
  if (array < 0).any() or (array >= vocab_size).any():
    raise ValueError(f"{where}: token ids outside [0, {vocab_size})")
  return array.astype(np.int32)


def check_limits(max_new_tokens: int, max_context: int | None) -> None:
  """Refuses generation limits that are not integers >= 1 (`max_context` may be None: no limit), or a
  `max_new_tokens` from 2**31 on (positions are int32).

  `max_new_tokens` is a static shape (a float failed as a jax shape error after the prefill was planned), and a
  `max_context` below 1 leaves no row any room: every sample came back empty ("length") without an error.
  """
  for name, value in (("max_new_tokens", max_new_tokens), ("max_context", max_context)):
    if value is None and name == "max_context":
      continue
    if not _is_int(value) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
  if max_new_tokens >= 2**31:  # 2**63 failed inside as "Python int too large to convert to C long"
    raise ValueError(f"max_new_tokens must be an integer >= 1 and < 2**31 (token positions are int32), got "
                     f"{max_new_tokens}")


def _request_list(requests: Sequence[Request]) -> list[Request]:
  """The requests as a list: a generator was read twice (rows, then results by index) and failed as "'generator'
  object is not subscriptable"; one Request, unwrapped, as "'Request' object is not iterable"."""
  if isinstance(requests, Request):
    raise TypeError("requests must be a sequence of Request, got one Request (wrap it in a list)")
  return list(requests)


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_sampler(sampler: Any) -> None:
  """Refuses what is not a sampling method instance before it reaches the jitted kernels, where a temperature in
  its place failed as "'float' object is not callable" and the class `Sampling` as "temperature must be a number,
  got JitTracer(...)"."""
  if isinstance(sampler, type):
    raise TypeError(f"sampler must be Greedy() or Sampling(temperature, top_p, top_k), got the class "
                    f"{sampler.__name__} (call it)")
  if not callable(sampler):
    raise TypeError(f"sampler must be Greedy() or Sampling(temperature, top_p, top_k), got "
                    f"{type(sampler).__name__} {sampler!r:.40}")


def _eos_ids(ids: Sequence[int], vocab_size: int) -> tuple[int, ...]:
  """Sorted distinct EOS ids, checked as token ids: a string's characters were read as ids ("151643" -> 1, 3, 4, 5,
  6) and an id outside the vocabulary can never be generated (its rows would silently never end at EOS)."""
  return tuple(sorted(set(_token_ids(ids, "eos_ids", vocab_size).tolist())))


class _NoBar:
  def update(self, n: int) -> None:
    pass

  def close(self) -> None:
    pass


def _progress_bar(total: int, enabled: bool):
  if not enabled:
    return _NoBar()
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc="decode steps", leave=False)

