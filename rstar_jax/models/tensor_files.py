"""Reading and writing checkpoint tensor files without torch: safetensors and torch's zip `.bin` format.

Both readers memory-map the file and return one tensor at a time as a numpy view (bfloat16 via `ml_dtypes`), so a
7B checkpoint is never copied whole into host memory. Errors name the file and the tensor.

`.bin` support covers what checkpoints of flat state dicts use (`torch.save({name: tensor})`: the zip layout with
`data.pkl` + one storage entry per tensor). It is read with a restricted unpickler that resolves only the handful of
torch globals such a file references, so loading never executes arbitrary pickled code.
"""

from __future__ import annotations

import collections
import io
import json
import math
import mmap
import os
import pickle
import struct
import sys
import zipfile
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np

from rstar_jax import files

_ST_DTYPES = {
    "F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_ST_MAX_HEADER = 100_000_000  # the `safetensors` library's MAX_HEADER_SIZE: it refuses a longer header


class SafetensorsFile:
  """A memory-mapped `.safetensors` file: `keys()`, `shape(name)`, `get(name) -> np.ndarray` (a read-only view)."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    try:
      self._file = open(self.path, "rb")
    except FileNotFoundError:
      raise FileNotFoundError(f"{self.path}: safetensors file not found") from None
    self._mmap = None
    try:
      self._read_header()
    except BaseException:
      self.close()  # a corrupt file must not stay open until garbage collection
      raise

  def _read_header(self) -> None:
    size = os.fstat(self._file.fileno()).st_size
    if size < 8:
      raise ValueError(f"{self.path}: truncated safetensors file ({size} bytes, no header)")
    (header_len,) = struct.unpack("<Q", self._file.read(8))
    if header_len > _ST_MAX_HEADER:  # read whole before parsing: a corrupted prefix read GBs of a large shard
      raise ValueError(f"{self.path}: corrupt safetensors header (its length prefix says {header_len} bytes, over the "
                       f"safetensors limit of {_ST_MAX_HEADER})")
    if 8 + header_len > size:
      raise ValueError(f"{self.path}: truncated safetensors file (header of {header_len} bytes, file {size} bytes)")
    try:
      # `files.json_loads`: also a header nested too deeply, or with an integer of over 4300 digits.
      header = files.json_loads(self._file.read(header_len).decode("utf-8"), object_pairs_hook=self._no_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{self.path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
      raise ValueError(f"{self.path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
      raise ValueError(f"{self.path}: corrupt safetensors header (__metadata__ must be an object of strings, got "
                       f"{metadata!r})")
    self.metadata = metadata
    self._entries: dict[str, dict] = header
    self._data_start = 8 + header_len
    self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None
    for name, entry in self._entries.items():
      self._check_entry(name, entry, size)
    # As the `safetensors` library: the tensors tile the whole data section, so none reads another's bytes (or the
    # header), and no bytes are left over (those of a tensor whose entry is gone).
    spans = sorted(tuple(entry["data_offsets"]) for entry in self._entries.values())
    if spans and spans[0][0] != 0:
      raise ValueError(f"{self.path}: corrupt safetensors header (tensor data does not start at byte 0 of the data "
                       "section)")
    for (_, end), (begin, _) in zip(spans, spans[1:]):
      if begin != end:
        raise ValueError(f"{self.path}: corrupt safetensors header (tensor data overlaps or leaves a gap at byte "
                         f"{min(begin, end)})")
    left_over = size - self._data_start - (spans[-1][1] if spans else 0)
    if left_over:
      raise ValueError(f"{self.path}: corrupt safetensors header ({left_over} bytes after the last tensor's data)")

  def _no_duplicates(self, pairs: list[tuple[str, object]]) -> dict:
    """`json.loads`' object hook: a key listed twice would silently keep its last value (the library refuses)."""
    out = {}
    for key, value in pairs:
      if key in out:
        raise ValueError(f"{self.path}: corrupt safetensors header (key {key!r} is listed twice)")
      out[key] = value
    return out

  def _check_entry(self, name: str, entry, size: int) -> None:
    """Raises a `ValueError` naming the file and tensor unless `entry` is a well-formed header entry."""
    def is_int(v):
      return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
      raise ValueError(f"{self.path}: tensor {name!r} has a corrupt header entry {entry!r}")
    offsets, shape = entry["data_offsets"], entry["shape"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(is_int, offsets)) and offsets[0] <= offsets[1]
            and isinstance(shape, list) and all(map(is_int, shape))):
      raise ValueError(f"{self.path}: tensor {name!r} has invalid shape {shape!r} or data_offsets {offsets!r}")
    if not isinstance(entry["dtype"], str) or entry["dtype"] not in _ST_DTYPES:
      raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']!r}")
    if self._data_start + offsets[1] > size:
      raise ValueError(f"{self.path}: tensor {name!r} is truncated (needs bytes up to {self._data_start + offsets[1]}, "
                       f"file has {size})")
    # As the library's checked product, every partial product must fit: numpy refuses a shape whose dims multiply past
    # its index range even with a 0 after them ("cannot reshape ... (2**40, 2**40, 0)", naming no file).
    count = 1
    for n in shape:
      count *= n
      if count >= 2**63:
        raise ValueError(f"{self.path}: tensor {name!r} has a shape too large for any array: {tuple(shape)}")
    # Python ints: numpy's int64 product of a lying shape wraps (2**32 * 2**32 -> 0 elements) or overflows.
    if offsets[1] - offsets[0] != math.prod(shape) * _ST_DTYPES[entry["dtype"]].itemsize:
      raise ValueError(f"{self.path}: tensor {name!r} has {offsets[1] - offsets[0]} bytes for shape {tuple(shape)} "
                       f"{entry['dtype']}")

  def keys(self) -> list[str]:
    return list(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entries[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    if name not in self._entries:
      raise KeyError(f"{self.path}: no tensor named {name!r}")
    entry = self._entries[name]
    dtype = _ST_DTYPES[entry["dtype"]]
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    count = (end - begin) // dtype.itemsize  # checked against the shape when the file was opened
    return np.frombuffer(self._mmap, dtype=dtype, count=count, offset=self._data_start + begin).reshape(shape)

  def close(self):
    if self._mmap is not None:
      try:
        self._mmap.close()
      except BufferError:  # arrays returned by `get` still view the mapping; it is unmapped when they are freed
        pass
    self._file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes `tensors` (numpy, bfloat16 allowed) atomically; readable by `safetensors`/`transformers`."""
  header: dict[str, dict] = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  arrays = {}
  for name, array in tensors.items():
    array = np.asarray(array, order="C")  # not `ascontiguousarray`: it turns a 0-d array into shape [1]
    if array.dtype not in _ST_NAMES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {array.dtype}")
    header[name] = {"dtype": _ST_NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
    arrays[name] = array
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
  with files.atomic_open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for array in arrays.values():
      f.write(array.tobytes())


# --- torch zip (.bin) -------------------------------------------------------------------------------------------------
_TORCH_STORAGES = {
    "FloatStorage": np.dtype(np.float32), "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16), "DoubleStorage": np.dtype(np.float64),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32), "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8), "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}
_STORAGE_NAMES = {v: k for k, v in _TORCH_STORAGES.items()}


class _StorageType:
  def __init__(self, name: str):
    self.name = name


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  # `as_strided` reads wherever offset, size and strides point: check every element lies inside the storage, as
  # `torch.load` does, or a crafted file reads (or crashes on) arbitrary memory.
  size, stride = tuple(size), tuple(stride)
  fields = (storage_offset, *size, *stride)
  if len(size) != len(stride) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in fields):
    raise ValueError(f"invalid tensor layout: offset {storage_offset!r}, size {size!r}, stride {stride!r}")
  if 0 not in size:
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= len(storage):
      raise ValueError(f"tensor of size {size}, stride {stride}, offset {storage_offset} reaches element {last} "
                           f"of a {len(storage)}-element storage")
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                         strides=tuple(s * itemsize for s in stride), writeable=False)
  # A tensor of more elements than its storage overlaps itself (an expanded tensor, stride 0): as torch.load, it stays
  # a (read-only) view, as its copy can be any size (2**30 x 2**30 over one float was a 4 EiB MemoryError). Any other
  # is copied, at most the storage's size.
  return view if math.prod(size) > len(storage) else view.copy()


def _rebuild_parameter(data, *unused):
  return data


class _Refused(pickle.UnpicklingError):
  """What the restricted unpickler will not build (a global outside its list, a persistent id not a storage)."""


class _TorchUnpickler(pickle.Unpickler):
  _ALLOWED = {
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      # A Parameter with Python attributes (`state`, built by this unpickler too): only its data is kept.
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
      ("collections", "OrderedDict"): collections.OrderedDict,
  }

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, swap_bytes: bool):
    super().__init__(io.BytesIO(data))
    self._archive, self._prefix, self._swap_bytes = archive, prefix, swap_bytes

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == "torch" and name in _TORCH_STORAGES:
      return _StorageType(name)
    raise _Refused(f"refusing to load global {module}.{name}")

  def persistent_load(self, pid):
    kind, storage_type, key, _location, numel = pid
    if kind != "storage" or not isinstance(storage_type, _StorageType):
      raise _Refused(f"unsupported persistent id {pid!r}")
    dtype = _TORCH_STORAGES[storage_type.name]
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
      raise ValueError(f"storage {key!r} has an invalid element count {numel!r}")
    # Only the storage's bytes are inflated: an entry inflating to more (a zip bomb, a damaged entry) was read whole.
    with self._archive.open(f"{self._prefix}/data/{key}") as entry:
      raw = entry.read(numel * dtype.itemsize)
    storage = np.frombuffer(raw, dtype=dtype, count=numel)
    return storage.byteswap() if self._swap_bytes else storage


def read_torch_bin(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads a `torch.save`d flat state dict (zip format) as numpy arrays, without torch."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: file not found")
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile:
    # As `torch.load`, the zip magic tells a damaged zip checkpoint (e.g. cut short by a full disk: its directory at
    # the end is gone) from the legacy pickle-only format.
    with open(path, "rb") as f:
      magic = f.read(4)
    if not magic:
      raise ValueError(f"{path}: empty file (a torch checkpoint whose writing never started or was cut off)") from None
    if magic == b"PK\x03\x04":
      raise ValueError(f"{path}: truncated or corrupt torch checkpoint (its zip directory is unreadable)") from None
    raise ValueError(f"{path}: not a torch zip checkpoint (legacy pickle-only .bin files are not supported)") from None
  with archive:
    pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if not pkl:
      raise ValueError(f"{path}: no data.pkl inside; not a torch checkpoint")
    prefix = pkl[0][:-len("/data.pkl")]
    # `torch.save` stores the storages in the writing host's byte order and records it (a file without the record is
    # little-endian, as `torch.load` takes it): read as they lie, a big-endian host's checkpoint is garbage.
    try:
      byteorder = archive.read(f"{prefix}/byteorder").decode("ascii", "replace")
    except KeyError:
      byteorder = "little"
    if byteorder not in ("little", "big"):
      raise ValueError(f"{path}: unknown byte order {byteorder!r} in its byteorder record")
    try:
      state = _TorchUnpickler(archive.read(pkl[0]), archive, prefix, byteorder != sys.byteorder).load()
    except _Refused as e:
      raise ValueError(f"{path}: {e}") from None
    # A damaged or crafted pickle fails in the unpickler or in what it calls (a storage or tensor too short, a
    # persistent id or a tensor's arguments of the wrong type): every one names the file.
    except (KeyError, zipfile.BadZipFile, EOFError, ValueError, TypeError, AttributeError, IndexError,
            pickle.UnpicklingError) as e:
      raise ValueError(f"{path}: truncated or corrupt torch checkpoint ({e})") from None
  if not isinstance(state, Mapping):
    raise ValueError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
  return dict(state)


def _c_strides(shape: tuple[int, ...]) -> list[int]:
  """The element strides of a C-ordered array of `shape` (how `tobytes` lays it out), as torch computes them (a
  length-0 axis counts as 1)."""
  strides, step = [], 1
  for n in reversed(shape):
    strides.append(step)
    step *= max(n, 1)
  return strides[::-1]


def _pickle_state_dict(tensors: Mapping[str, np.ndarray]) -> bytes:
  """Protocol-2 pickle of `OrderedDict{name: tensor}` in the form `torch.save` writes, built opcode by opcode
  (torch itself is never imported)."""
  out = io.BytesIO()
  w = out.write

  def global_(module: str, name: str):
    w(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

  def string(s: str):
    b = s.encode()
    w(b"X" + struct.pack("<I", len(b)) + b)

  def integer(i: int):
    w(b"J" + struct.pack("<i", i)) if -2**31 <= i < 2**31 else w(b"\x8a\x08" + struct.pack("<q", i))

  def int_tuple(values):
    w(b"(")
    for v in values:
      integer(v)
    w(b"t")

  def ordered_dict():
    global_("collections", "OrderedDict")
    w(b")R")  # EMPTY_TUPLE, REDUCE

  w(b"\x80\x02")
  ordered_dict()
  w(b"(")  # MARK for SETITEMS
  for key, (name, array) in enumerate(tensors.items()):
    string(name)
    global_("torch._utils", "_rebuild_tensor_v2")
    w(b"(")  # args tuple
    w(b"(")  # persistent id tuple
    string("storage")
    global_("torch", _STORAGE_NAMES[array.dtype])
    string(str(key))
    string("cpu")
    integer(array.size)
    w(b"tQ")  # TUPLE, BINPERSID
    integer(0)
    int_tuple(array.shape)
    int_tuple(_c_strides(array.shape))  # not `array.strides`: numpy lets a length-1 axis have any stride
    w(b"\x89")  # NEWFALSE (requires_grad)
    ordered_dict()  # backward hooks
    w(b"tR")  # TUPLE, REDUCE
  w(b"u.")  # SETITEMS, STOP
  return out.getvalue()


def write_torch_bin(path: str | os.PathLike, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes a flat state dict that `torch.load` reads, atomically, without importing torch."""
  path = os.fspath(path)
  tensors = {k: np.asarray(v, order="C") for k, v in tensors.items()}  # 0-d stays 0-d
  for name, array in tensors.items():
    if array.dtype not in _STORAGE_NAMES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {array.dtype}")
  prefix = "archive"

  def entry(name: str) -> zipfile.ZipInfo:
    # torch.save's fixed timestamp: a name alone would stamp the current time, and the same tensors written twice
    # would differ in bytes (a rebuilt or resumed run's value_head.bin would not equal the first).
    return zipfile.ZipInfo(f"{prefix}/{name}", date_time=(1980, 0, 0, 0, 0, 0))

  with files.atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
    archive.writestr(entry("data.pkl"), _pickle_state_dict(tensors))
    archive.writestr(entry("byteorder"), "little")
    for key, array in enumerate(tensors.values()):
      archive.writestr(entry(f"data/{key}"), array.tobytes())
    archive.writestr(entry("version"), "3\n")


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (name, array) from a `.safetensors` or torch `.bin` file."""
  path = os.fspath(path)
  if path.endswith(".safetensors"):
    with SafetensorsFile(path) as f:
      for name in f.keys():
        yield name, np.array(f.get(name))
  else:
    yield from read_torch_bin(path).items()
