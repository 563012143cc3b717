"""Static shapes: every array a jitted kernel sees is padded to a bucket, so a run compiles a handful of programs.

Lengths use powers of two up to 64 and then steps of 1.5x / 2x (64, 96, 128, 192, 256, 384, ...): padding wastes at most
a third of a long prompt's compute, while the number of distinct lengths stays logarithmic. Row counts are the mesh's
batch split (a batch dimension must divide evenly over `data` x `fsdp`) times a power of two: 13 rows over a split of
6 take 6 x 4 = 24, not the next power of two rounded up to a multiple of 6 (18).
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _ladder_up(n: int, minimum: int, fine_from: int) -> int:
  """Smallest ladder value >= n: powers of two, plus 1.5 x 2^k once values reach `fine_from`."""
  value = max(1, minimum)
  while value < n:
    if value >= fine_from and value * 3 // 2 >= n:
      return value * 3 // 2
    value *= 2
  return value


@dataclasses.dataclass(frozen=True)
class Buckets:
  """Bucket ladders for lengths and row counts.

  Attributes:
    min_length: smallest length bucket of a prompt level (the one-token fork level is never padded).
    fine_from: from this length on, 1.5x steps are added between powers of two.
    min_rows: smallest row bucket (before rounding to the batch split).
    batch_split: the product of the mesh axes the batch is sharded over; row buckets are multiples of it.
  """
  min_length: int = 16
  fine_from: int = 64
  min_rows: int = 1
  batch_split: int = 1

  def __post_init__(self):
    for field in ("min_length", "fine_from", "min_rows", "batch_split"):
      # A float (a config file's 64.0) failed only at the first generate() as "'float' object cannot be interpreted
      # as an integer", naming neither Buckets nor the field.
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Buckets.{field} must be an integer >= 1, got {value!r}")

  def length(self, n: int) -> int:
    """Bucket of a token length `n >= 0` (0 stays 0: an empty level is skipped); 1 stays 1 (a fork level)."""
    if n <= 1:
      return n
    return _ladder_up(n, self.min_length, self.fine_from)

  def cache_length(self, n: int) -> int:
    """Bucket of the number of prompt slots of a cache (same ladder, at least `min_length`)."""
    return _ladder_up(max(n, 1), self.min_length, self.fine_from)

  def rows(self, n: int) -> int:
    """Bucket of a row count `n >= 1`: `batch_split` times the first of m, 2m, 4m, ... that holds `n / batch_split`
    rows, where m = `min_rows / batch_split` rounded up (a power of two at the default `min_rows` of 1)."""
    per_split = -(-max(n, 1) // self.batch_split)
    return self.batch_split * _ladder_up(per_split, max(1, -(-self.min_rows // self.batch_split)), 1 << 62)
