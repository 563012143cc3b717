"""Prefill planning on the host: which tokens go through the model once per shared prefix, which once per row.

A call's rows (prompt tokens; `n` samples of a prompt are `n` rows) are prefilled in at most two levels:

  shared level   `[G, Tg]`  one row per group of rows with a common prefix; writes cache slots `[0, Tg)`
  row level      `[B, Tr]`  each row's remaining tokens, after copying its group's cache row; slots `[Tg, Tg + Tr)`

Each level is left-padded so every row of a level ends at the same slot (rows of a `KVCache` share `end_index`), so
a row's cache holds `[pad | its group prefix | pad | its remaining tokens]`; the masks hide the pads and positions
count real tokens only (0 at a row's first real token, as Hugging Face under left padding), so the holes change
nothing. The last column of the row level is a real token of every row: its output gives the first generated token
(or the PPM value). `n` samples of one prompt form one group whose prefix is all but the prompt's last token: the
prompt is prefilled once and the cache forked `n` ways, with a one-token row level.

Grouping. Rows are sorted by their tokens, so rows with long common prefixes are adjacent. For a row-level length
`Tr` (tried over the length buckets), a greedy pass grows each group while every member's remainder fits in `Tr`;
the plan costs `rows(G) * Tg + rows(B) * Tr` padded tokens. The cheapest grouping is compared with the flat plan (no
shared level, `rows(B) * T` tokens) and the cheaper one wins (ties: flat, one program fewer).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rstar_jax.generate.buckets import Buckets


@dataclasses.dataclass(frozen=True)
class Level:
  """One prefill level: left-padded tokens of R rows."""
  tokens: np.ndarray  # [R, T] int32
  mask: np.ndarray  # [R, T] bool, True = real token
  positions: np.ndarray  # [R, T] int32, position of each token in its full sequence (pads: 0)

  @property
  def shape(self) -> tuple[int, int]:
    return self.tokens.shape


@dataclasses.dataclass(frozen=True)
class PrefillPlan:
  """How to prefill `num_rows` rows (padded to `rows.shape[0]`)."""
  shared: Level | None  # [Gb, Tg] group prefixes, or None for a flat plan
  row_group: np.ndarray | None  # [Bb] int32: the shared-level row each row copies (0 for padding rows)
  rows: Level  # [Bb, Tr]
  row_start: np.ndarray  # [B] int32: prompt index of each row's first row-level token (its group prefix length)
  lengths: np.ndarray  # [B] int32: prompt length of each row
  num_rows: int  # B, the real rows (row i of the plan is input row i)
  prompt_slots: int  # cache slots reserved for the prompt (>= Tg + Tr, a length bucket)
  cost: int  # padded tokens run through the model

  @property
  def end_index(self) -> int:
    """The first cache slot after the prompt levels (where decoding writes its first token)."""
    shared = 0 if self.shared is None else self.shared.shape[1]
    return shared + self.rows.shape[1]


def token_order(sequences: Sequence[np.ndarray]) -> list[int]:
  """Indices of `sequences` (1-D int32 token arrays) in lexicographic order of their tokens; ties keep input order.

  The same order as sorting by `seq.tolist()`, with one bytes key per row instead of a Python int per token: at a
  search's batch (tens of thousands of rows of thousands of tokens, mostly one shared prompt) the list keys took
  seconds and gigabytes of host memory per call, and their comparisons walked the shared prefix int by int.
  Flipping the sign bit maps int32 order onto uint32 order, and big-endian bytes compare as their numbers do.
  """
  keys = [(np.asarray(s, np.int32).view(np.uint32) ^ np.uint32(1 << 31)).astype(">u4").tobytes() for s in sequences]
  return sorted(range(len(keys)), key=keys.__getitem__)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
  n = min(len(a), len(b))
  if n == 0:
    return 0
  diff = np.flatnonzero(a[:n] != b[:n])
  return int(diff[0]) if diff.size else n


def _level(segments: Sequence[np.ndarray], starts: Sequence[int], rows: int, length: int, pad_id: int) -> Level:
  """Left-pads `segments` (the tokens of each row, beginning at prompt index `starts[i]`) into `[rows, length]`."""
  tokens = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), bool)
  positions = np.zeros((rows, length), np.int32)
  for i, (seg, start) in enumerate(zip(segments, starts)):
    n = len(seg)
    if n:
      tokens[i, length - n:] = seg
      mask[i, length - n:] = True
      positions[i, length - n:] = start + np.arange(n, dtype=np.int32)
  return Level(tokens, mask, positions)


def _greedy_groups(order: np.ndarray, adjacent: np.ndarray, lengths: np.ndarray, max_prefix: np.ndarray,
                   row_length: int) -> tuple[list[list[int]], list[int]]:
  """Groups sorted rows greedily so that every member's remainder (length - group prefix) fits in `row_length`."""
  groups: list[list[int]] = []
  prefixes: list[int] = []
  members: list[int] = []
  prefix = longest = 0
  for k, i in enumerate(order):
    if members:
      joined = min(prefix, int(adjacent[k]), int(max_prefix[i]))
      if max(longest, int(lengths[i])) - joined <= row_length:
        members.append(int(i))
        prefix, longest = joined, max(longest, int(lengths[i]))
        continue
      groups.append(members)
      prefixes.append(prefix)
    members, prefix, longest = [int(i)], int(max_prefix[i]), int(lengths[i])
  groups.append(members)
  prefixes.append(prefix)
  return groups, prefixes


def plan_prefill(prompts: Sequence[Sequence[int] | np.ndarray], max_prefix: Sequence[int] | None = None, *,
                 buckets: Buckets = Buckets(), share: bool = True, pad_id: int = 0) -> PrefillPlan:
  """Plans the prefill of `prompts` (one per row).

  Args:
    prompts: token ids of each row (non-empty).
    max_prefix: per row, the most prompt tokens its shared prefix may cover (default `len - 1`, so at least the last
      token is in the row level; scoring continuations passes `len(context) - 1` to get every continuation logit).
    buckets: the bucket ladders.
    share: whether shared prefixes are considered at all (False: always the flat plan).
    pad_id: the token id written at padded slots (never attended to).

  Returns:
    The plan (see the module docstring).
  """
  arrays = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
  num = len(arrays)
  if num == 0:
    raise ValueError("plan_prefill needs at least one prompt")
  lengths = np.asarray([len(a) for a in arrays], np.int32)
  if (lengths == 0).any():
    raise ValueError(f"prompts must be non-empty; rows {np.flatnonzero(lengths == 0)[:8].tolist()} are empty")
  max_prefix = lengths - 1 if max_prefix is None else np.minimum(np.asarray(max_prefix, np.int32), lengths - 1)
  if (max_prefix < 0).any():
    raise ValueError("max_prefix must be >= 0")
  batch = buckets.rows(num)
  flat_length = buckets.length(int(lengths.max()))
  best = dict(cost=batch * flat_length, groups=None)

  if share and num > 1:
    order = np.asarray(token_order(arrays), np.int64)
    adjacent = np.zeros(num, np.int64)
    for k in range(1, num):
      adjacent[k] = _common_prefix(arrays[order[k - 1]], arrays[order[k]])
    needed = int((lengths - max_prefix).max())
    for row_length in sorted(_ladder_between(buckets, needed, int(lengths.max()))):
      groups, prefixes = _greedy_groups(order, adjacent, lengths, max_prefix, row_length)
      remainder = max(int(lengths[i]) - p for g, p in zip(groups, prefixes) for i in g)
      cost = buckets.rows(len(groups)) * buckets.length(max(prefixes)) + batch * buckets.length(remainder)
      if cost < best["cost"]:
        best = dict(cost=cost, groups=groups, prefixes=prefixes)

  if best["groups"] is None:
    rows = _level(arrays, [0] * num, batch, flat_length, pad_id)
    return PrefillPlan(shared=None, row_group=None, rows=rows, row_start=np.zeros(num, np.int32), lengths=lengths,
                       num_rows=num, prompt_slots=buckets.cache_length(flat_length), cost=int(best["cost"]))

  groups, prefixes = best["groups"], best["prefixes"]
  row_group = np.zeros(batch, np.int32)
  row_start = np.zeros(num, np.int32)
  for g, (members, prefix) in enumerate(zip(groups, prefixes)):
    row_group[members] = g
    row_start[members] = prefix
  shared_length = buckets.length(max(prefixes))
  shared = _level([arrays[g[0]][:p] for g, p in zip(groups, prefixes)], [0] * len(groups),
                  buckets.rows(len(groups)), shared_length, pad_id)
  row_length = buckets.length(int((lengths - row_start).max()))
  rows = _level([a[s:] for a, s in zip(arrays, row_start)], row_start, batch, row_length, pad_id)
  return PrefillPlan(shared=shared, row_group=row_group, rows=rows, row_start=row_start, lengths=lengths,
                     num_rows=num, prompt_slots=buckets.cache_length(shared_length + row_length),
                     cost=int(best["cost"]))


def _ladder_between(buckets: Buckets, low: int, high: int) -> set[int]:
  """The length buckets covering `[low, high]` (without enumerating every integer)."""
  out, n = set(), low
  while True:
    b = buckets.length(n)
    out.add(b)
    if b >= high:
      return out
    n = b + 1
