"""grain input pipelines for policy SFT and PPM training.

Texts are tokenized once up front (the tokenizer's batch encoder is multithreaded, and knowing every length
gives the exact number of steps for the learning-rate schedule). The batch order is then a deterministic
plan: per epoch a permutation seeded by `(seed, epoch)`, optionally sorted by length inside windows of a few
batches so that rows of similar length share a batch (less padding), cut into global batches; each epoch has
`ceil(n / batch_size)` of them (its last one padded), as transformers >= 4.46 counts them. (The 4.45.2 the official
trainers pin runs `epochs * floor(L / accum)` updates of `accum` micro-batches, `L` = micro-batches per epoch, counted
across epoch ends: `epochs * (L % accum)` micro-batches, up to 96 SFT rows an epoch at 8 GPUs x 4 rows x 4, were never
trained. An upstream bug, fixed in 4.46 (transformers#34198); here every example is trained every epoch.) grain
serves that plan: `MapDataset.source(plan).map(collate)`, iterated through a `DatasetIterator` whose state (the next
batch index) is saved with every checkpoint, so a resumed run sees exactly the batches it had not seen.

Batch layout (global batch `B`; each process gets its `B / process_count` rows; `T` = the smallest bucket that
fits the longest row):
- SFT: `tokens`, `targets` `[B, T]` int32 (targets = tokens shifted left by one), `loss_mask` `[B, T]` float32
  (1 where the target is a response or EOS token), `input_mask` `[B, T]` bool, `positions` `[B, T]` int32.
- PPM: `pos_tokens`, `neg_tokens`, `pos_positions`, `neg_positions` `[P, T]` int32, `pos_mask`, `neg_mask`
  `[P, T]` bool, `weights` `[P]` float32 (`1/(pos_count*neg_count)`), `pair_mask` `[P]` float32.
Rows that pad a batch to full size have all-zero loss/pair masks, so they never change a loss.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterable, Protocol, Sequence

import grain
import numpy as np

from rstar_jax.data.formats import PpmPair, SftRecord, sft_prompt

OVERLONG = ("truncate", "drop")


class NoExamplesError(ValueError):
  """A pipeline with nothing to batch: no examples, or tokenization dropped them all."""


class TextTokenizer(Protocol):
  """What the pipelines need from `rstar_jax.tokenizer.Tokenizer`."""

  def encode(self, text: str) -> list[int]: ...

  @property
  def eos_id(self) -> int | None: ...

  @property
  def pad_id(self) -> int | None: ...


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Batching of one training set (defaults: rStar policy SFT as in the official code)."""
  max_len: int = 2048           # tokens per row (model inputs)
  batch_size: int = 128         # global batch, rows (SFT) or pairs (PPM)
  num_epochs: int = 2
  seed: int = 0
  shuffle: bool = True
  buckets: tuple[int, ...] = ()  # row lengths a batch may be padded to; () -> (max_len,) only
  length_window: int = 0        # > 0: sort by length inside windows of this many batches
  overlong: str = "truncate"    # "truncate": keep the first max_len tokens (SFT and PPM); "drop" the example
  prompt_template: str | None = None  # SFT only: None = the search's SFT prompt, else `{input}` -> query

  def __post_init__(self):
    # The seed seeds numpy's shuffles (a negative or fractional one failed there, naming nothing), and the buckets
    # were checked only after the whole data set was tokenized: both are checked here.
    for name, least in (("max_len", 1), ("batch_size", 1), ("num_epochs", 1), ("length_window", 0), ("seed", 0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"PipelineConfig.{name} must be an integer >= {least}, got {value!r}")
    if not isinstance(self.shuffle, bool):  # a config file's "false" is a non-empty str: it shuffled
      raise ValueError(f"PipelineConfig.shuffle must be a bool (true or false), got {self.shuffle!r}")
    if self.prompt_template is not None and not isinstance(self.prompt_template, str):
      # A list or tuple passed sft_prompt's "'{input}' in" check and failed at tokenizing as "'tuple' object has no
      # attribute 'replace'", naming nothing. (A str without `{input}` is refused there, by sft_prompt.)
      raise TypeError(f"PipelineConfig.prompt_template must be None or a str with `{{input}}`, got "
                      f"{type(self.prompt_template).__name__} {self.prompt_template!r:.60}")
    if self.overlong not in OVERLONG:
      raise ValueError(f"PipelineConfig.overlong must be one of {OVERLONG}, got {self.overlong!r}")
    if (isinstance(self.buckets, str) or not isinstance(self.buckets, (tuple, list))
        or any(isinstance(b, bool) or not isinstance(b, int) for b in self.buckets)):
      raise ValueError(f"PipelineConfig.buckets must be a tuple of integer row lengths, got {self.buckets!r}")
    object.__setattr__(self, "buckets", tuple(self.buckets))  # frozen configs are hashed (jit statics, run.json)
    self.bucket_lengths()

  def bucket_lengths(self) -> tuple[int, ...]:
    buckets = tuple(sorted(set(self.buckets) | {self.max_len}))
    if buckets[0] < 1 or buckets[-1] != self.max_len:
      raise ValueError(f"buckets must lie in [1, max_len={self.max_len}], got {self.buckets}")
    return buckets


@dataclasses.dataclass(frozen=True)
class TokenizedSet:
  """Tokenized examples: `arrays[i]` maps field name -> 1-D array; `lengths[i]` = row length it needs."""
  arrays: list[dict[str, np.ndarray]]
  lengths: np.ndarray  # [N] int
  num_dropped: int     # examples dropped (too long with overlong="drop", or nothing left to learn)


def _encode_all(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
  if hasattr(tokenizer, "encode_batch"):
    return [list(ids) for ids in tokenizer.encode_batch(list(texts))]
  return [list(tokenizer.encode(t)) for t in texts]


def tokenize_sft(records: Iterable[SftRecord], tokenizer: TextTokenizer, config: PipelineConfig) -> TokenizedSet:
  """`prompt(query)` + `response` + EOS; only response and EOS tokens are targets (all of them for an empty query).

  As the official trainer (`train_SFT.py`'s `preprocess`): `prompt + response` is tokenized as one text (EOS, a
  special token, is its own id) and the first `len(encode(prompt))` ids are the prompt. Tokenizing the two apart gave
  other ids whenever BPE merges across the boundary ("code." + "\n<code>" is ".\n" `<code>`, not "." "\n" `<code>`;
  "code." + "Sure" is ".S" "ure"): ids the tokenizer never produces for that text, so neither the official trainer
  nor the search (which encodes prompt + partial solution as one text) ever shows them. As there, a token that merges
  the prompt's end with the response's start counts as prompt (not a target).
  """
  if tokenizer.eos_id is None:
    raise ValueError("the tokenizer has no EOS token; SFT appends EOS to every response")
  if config.overlong not in OVERLONG:
    raise ValueError(f"overlong must be one of {OVERLONG}, got {config.overlong!r}")
  records = list(records)  # read twice below (prompts, responses): an iterator's second pass would be empty
  # An empty query means no prompt at all (the whole text is a target), as the official trainer reads it
  # (`if example['instruction'] == ''`): a prompt around no question is no text the search ever gives the policy.
  prompt_texts = [sft_prompt(r.query, config.prompt_template) if r.query else "" for r in records]
  prompts = _encode_all(tokenizer, prompt_texts)
  joint = _encode_all(tokenizer, [p + r.response for p, r in zip(prompt_texts, records)])
  arrays, lengths, dropped = [], [], 0
  for prompt, text in zip(prompts, joint):
    ids = text + [tokenizer.eos_id]
    num_prompt = min(len(prompt), len(text))
    is_target = [False] * num_prompt + [True] * (len(ids) - num_prompt)
    if len(ids) - 1 > config.max_len:  # inputs are ids[:-1]
      if config.overlong == "drop":
        dropped += 1
        continue
      ids, is_target = ids[:config.max_len + 1], is_target[:config.max_len + 1]
    if not any(is_target[1:]):
      dropped += 1
      continue
    arrays.append({"ids": np.asarray(ids, np.int32), "is_target": np.asarray(is_target, bool)})
    lengths.append(len(ids) - 1)
  return TokenizedSet(arrays, np.asarray(lengths, np.int64), dropped)


def tokenize_ppm(pairs: Iterable[PpmPair], tokenizer: TextTokenizer, config: PipelineConfig) -> TokenizedSet:
  """`prompt + pos` and `prompt + neg`, each tokenized as one text (exactly what the PPM scores at search).

  A pair longer than `max_len` is dropped (`overlong="drop"`) or cut to its first `max_len` tokens; a pair the cut
  leaves identical on both sides (its prompt alone fills `max_len`) is dropped either way and counted in
  `num_dropped`: it would add a constant log 2 to the loss and count as a pair without teaching anything.
  """
  if config.overlong not in OVERLONG:
    raise ValueError(f"overlong must be one of {OVERLONG}, got {config.overlong!r}")
  pairs = list(pairs)  # read three times below: an iterator's second pass would be empty
  pos = _encode_all(tokenizer, [p.prompt + p.pos for p in pairs])
  neg = _encode_all(tokenizer, [p.prompt + p.neg for p in pairs])
  arrays, lengths, dropped = [], [], 0
  for pair, p_ids, n_ids in zip(pairs, pos, neg):
    if not p_ids or not n_ids:
      dropped += 1
      continue
    if max(len(p_ids), len(n_ids)) > config.max_len:
      if config.overlong == "drop":
        dropped += 1
        continue
      # Keep the head, as the official trainer (right-side truncation) and our search-time PPMScorer do, so
      # training scores exactly what search scores.
      p_ids, n_ids = p_ids[:config.max_len], n_ids[:config.max_len]
      if p_ids == n_ids:  # the cut left only the shared prompt: a pair with no signal (loss log 2, no gradient)
        dropped += 1
        continue
    arrays.append({"pos": np.asarray(p_ids, np.int32), "neg": np.asarray(n_ids, np.int32),
                   "weight": np.asarray(pair.weight, np.float32)})
    lengths.append(max(len(p_ids), len(n_ids)))
  return TokenizedSet(arrays, np.asarray(lengths, np.int64), dropped)


def batch_plan(lengths: np.ndarray, config: PipelineConfig) -> np.ndarray:
  """`[num_batches, batch_size]` example indices for all epochs in order.

  -1 marks padding rows, which fill each epoch's last batch.
  """
  n = len(lengths)
  if n == 0:
    raise NoExamplesError("no training examples")
  order = []
  for epoch in range(config.num_epochs):
    perm = (np.random.default_rng([config.seed, epoch]).permutation(n) if config.shuffle
            else np.arange(n))
    if config.length_window > 0:
      window = config.length_window * config.batch_size
      rng = np.random.default_rng([config.seed, epoch, 1])
      chunks = []
      for start in range(0, n, window):
        idx = perm[start:start + window]
        idx = idx[np.argsort(-lengths[idx], kind="stable")]
        batches = [idx[i:i + config.batch_size] for i in range(0, len(idx), config.batch_size)]
        # Keep full batches shuffled among themselves; a short tail batch stays last.
        full = [b for b in batches if len(b) == config.batch_size]
        tail = [b for b in batches if len(b) < config.batch_size]
        chunks.extend(full[i] for i in (rng.permutation(len(full)) if config.shuffle else range(len(full))))
        chunks.extend(tail)
      perm = np.concatenate(chunks)
    # Every epoch ends on a batch boundary (padding rows are masked): `ceil(n / batch_size)` steps per epoch, as HF
    # Trainer >= 4.46 (see the module docstring for 4.45.2's), and no batch holds an example twice.
    order.append(np.concatenate([perm, np.full(-len(perm) % config.batch_size, -1, perm.dtype)]))
  return np.concatenate(order).astype(np.int64).reshape(-1, config.batch_size)


def _bucket(length: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if length <= b:
      return b
  return buckets[-1]


def _batch_length(data: TokenizedSet, indices: np.ndarray, buckets: tuple[int, ...]) -> int:
  """`T` of a global batch: the smallest bucket that fits its longest row, over *all* its rows (not only this
  process's), so every process builds the same global shape."""
  longest = max((int(data.lengths[i]) for i in indices if i >= 0), default=1)
  return _bucket(longest, buckets)


def _local_rows(indices: np.ndarray) -> np.ndarray:
  """This process's contiguous slice of a global batch's rows."""
  import jax  # local: the data package is usable without initialising JAX
  count, index = jax.process_count(), jax.process_index()
  if len(indices) % count:
    raise ValueError(f"global batch {len(indices)} does not divide over {count} processes")
  per = len(indices) // count
  return indices[index * per:(index + 1) * per]


@dataclasses.dataclass(frozen=True)
class _SftCollate:
  data: TokenizedSet
  buckets: tuple[int, ...]
  pad_id: int

  def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    t = _batch_length(self.data, indices, self.buckets)
    indices = _local_rows(indices)
    b = len(indices)
    out = {"tokens": np.full((b, t), self.pad_id, np.int32), "targets": np.full((b, t), self.pad_id, np.int32),
           "loss_mask": np.zeros((b, t), np.float32), "input_mask": np.zeros((b, t), bool),
           "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1))}
    for row, i in enumerate(indices):
      if i < 0:
        continue
      ids, is_target = self.data.arrays[i]["ids"], self.data.arrays[i]["is_target"]
      n = len(ids) - 1
      out["tokens"][row, :n] = ids[:-1]
      out["targets"][row, :n] = ids[1:]
      out["loss_mask"][row, :n] = is_target[1:]
      out["input_mask"][row, :n] = True
    return out


@dataclasses.dataclass(frozen=True)
class _PpmCollate:
  data: TokenizedSet
  buckets: tuple[int, ...]
  pad_id: int

  def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    t = _batch_length(self.data, indices, self.buckets)
    indices = _local_rows(indices)
    p = len(indices)
    out = {"weights": np.zeros((p,), np.float32), "pair_mask": np.zeros((p,), np.float32)}
    for side in ("pos", "neg"):
      out[f"{side}_tokens"] = np.full((p, t), self.pad_id, np.int32)
      out[f"{side}_mask"] = np.zeros((p, t), bool)
      out[f"{side}_positions"] = np.tile(np.arange(t, dtype=np.int32), (p, 1))
    for row, i in enumerate(indices):
      if i < 0:
        continue
      example = self.data.arrays[i]
      for side in ("pos", "neg"):
        ids = example[side]
        out[f"{side}_tokens"][row, :len(ids)] = ids
        out[f"{side}_mask"][row, :len(ids)] = True
      out["weights"][row] = example["weight"]
      out["pair_mask"][row] = 1.0
    return out


@dataclasses.dataclass
class Pipeline:
  """A grain dataset of global batches plus what the trainer needs to know about it."""
  dataset: grain.MapDataset
  num_batches: int
  num_examples: int
  num_dropped: int
  fingerprint: str = ""  # sha256 of the batch plan and every tokenized example (see `data_fingerprint`)

  def iterator(self) -> grain.DatasetIterator:
    """A fresh checkpointable iterator (state: `{"next_index": ...}`); prefetches in a thread."""
    options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
    return iter(self.dataset.to_iter_dataset(read_options=options))


def data_fingerprint(data: TokenizedSet, plan: np.ndarray) -> str:
  """sha256 of what a run trains on: the batch plan `[num_batches, batch_size]` and every tokenized example.

  It changes with the data files, the tokenizer, the prompt template, the length policy and the batching, so a
  resumed run can tell that its checkpoint's data position no longer points into the same batches.
  """
  digest = hashlib.sha256(np.ascontiguousarray(plan, np.int64).tobytes())
  for name in sorted(data.arrays[0]) if data.arrays else ():
    fields = [np.ravel(example[name]) for example in data.arrays]
    digest.update(name.encode())
    digest.update(np.asarray([len(f) for f in fields], np.int64).tobytes())
    digest.update(np.ascontiguousarray(np.concatenate(fields)).tobytes())
  return digest.hexdigest()


def _pipeline(data: TokenizedSet, collate, config: PipelineConfig) -> Pipeline:
  if not data.arrays:
    raise NoExamplesError("no training examples" + (
        f": tokenization dropped all {data.num_dropped} (longer than max_len={config.max_len} with "
        f"overlong={config.overlong!r}, or nothing left to train on)" if data.num_dropped else ""))
  plan = batch_plan(data.lengths, config)
  dataset = grain.MapDataset.source(list(plan)).map(collate)
  return Pipeline(dataset, len(plan), len(data.arrays), data.num_dropped, data_fingerprint(data, plan))


def _pad_id(tokenizer: TextTokenizer) -> int:
  pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
  return 0 if pad is None else int(pad)


def sft_pipeline(records: Iterable[SftRecord], tokenizer: TextTokenizer, config: PipelineConfig) -> Pipeline:
  """The policy SFT pipeline over rStar SFT records (see the module docstring for the batch layout)."""
  data = tokenize_sft(records, tokenizer, config)
  return _pipeline(data, _SftCollate(data, config.bucket_lengths(), _pad_id(tokenizer)), config)


def ppm_pipeline(pairs: Iterable[PpmPair], tokenizer: TextTokenizer, config: PipelineConfig) -> Pipeline:
  """The PPM pipeline over rStar pair records (see the module docstring for the batch layout)."""
  data = tokenize_ppm(pairs, tokenizer, config)
  return _pipeline(data, _PpmCollate(data, config.bucket_lengths(), _pad_id(tokenizer)), config)
