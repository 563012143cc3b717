"""Length-prefixed JSON frames over pipes (host <-> worker <-> executor). Stdlib only.

JSON (never pickle or marshal) because frames coming back from an executor are untrusted bytes: parsing them can
fail, but cannot run code. `ensure_ascii` keeps lone surrogates encodable. Every reader enforces a size limit.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import time
from typing import Any

_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
  """A peer sent a malformed or oversized frame."""


def encode(obj: Any) -> bytes:
  payload = json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")
  return _HEADER.pack(len(payload)) + payload


def write_all(fd: int, data: bytes) -> None:
  """Writes all of `data` to a blocking fd (raises OSError, e.g. BrokenPipeError)."""
  view = memoryview(data)
  while view:
    n = os.write(fd, view)
    view = view[n:]


class FrameReader:
  """Incremental decoder: `feed` bytes, get complete frames back."""

  def __init__(self, max_frame_bytes: int):
    self._max = max_frame_bytes
    self._buf = bytearray()

  def feed(self, data: bytes) -> list[Any]:
    self._buf += data
    frames = []
    while len(self._buf) >= _HEADER.size:
      (length,) = _HEADER.unpack_from(self._buf)
      if length > self._max:
        raise ProtocolError(f"frame of {length} bytes exceeds the {self._max}-byte limit")
      end = _HEADER.size + length
      if len(self._buf) < end:
        break
      payload = bytes(self._buf[_HEADER.size:end])
      del self._buf[:end]
      try:
        frames.append(json.loads(payload))
      except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"undecodable frame: {e}") from e
    return frames


_READY_IN = select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL
_READY_OUT = select.POLLOUT | select.POLLHUP | select.POLLERR | select.POLLNVAL


def wait(readable: list[int], writable: list[int], timeout: float) -> tuple[list[int], list[int]]:
  """`select.select(readable, writable, [], timeout)` for fds of any number (`select` refuses fds from 1024 on,
  which a host process may well hold). An fd at EOF or in error counts as ready, as with `select`."""
  poller = select.poll()
  for fd in readable:
    poller.register(fd, select.POLLIN)
  for fd in writable:
    poller.register(fd, select.POLLOUT)
  events = dict(poller.poll(math.ceil(max(timeout, 0.0) * 1000)))
  return ([fd for fd in readable if events.get(fd, 0) & _READY_IN],
          [fd for fd in writable if events.get(fd, 0) & _READY_OUT])


def read_frame(fd: int, reader: FrameReader, pending: list, deadline: float | None) -> Any:
  """Returns the next frame from `fd`, None at EOF; raises TimeoutError at `deadline` (time.monotonic()).

  `pending` holds frames already decoded but not yet returned (shared across calls).
  """
  while not pending:
    if deadline is not None:
      left = deadline - time.monotonic()
      if left <= 0:
        raise TimeoutError
      ready, _ = wait([fd], [], left)
      if not ready:
        continue
    data = os.read(fd, 1 << 16)
    if not data:
      return None
    pending.extend(reader.feed(data))
  return pending.pop(0)
