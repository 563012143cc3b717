"""`tensor_files` against the reference libraries: `safetensors` and `torch.load` / `torch.save`."""

import json
import os
import pickle
import re
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file as torch_save_safetensors

from rstar_jax.models.tensor_files import SafetensorsFile, read_torch_bin, write_safetensors, write_torch_bin


def _arrays():
  return {"matrix": np.arange(6, dtype=np.float32).reshape(2, 3), "scalar": np.array(3.5, np.float32),
          "empty": np.zeros((0, 4), np.float16), "bf16": np.array([1.0, -3.140625], ml_dtypes.bfloat16),
          "int8": np.array([-3, 7], np.int8), "int16": np.array([-300], np.int16), "int64": np.array(2**40)}


def _numpy(t: torch.Tensor) -> np.ndarray:
  return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def test_safetensors_written_keep_0d_and_empty_shapes_for_the_reference_reader(tmp_path):
  path = tmp_path / "x.safetensors"
  write_safetensors(path, _arrays())
  with safe_open(path, framework="pt") as f:
    for name, array in _arrays().items():
      tensor = f.get_tensor(name)
      assert tuple(tensor.shape) == array.shape, name  # a 0-d tensor came back as shape [1]
      np.testing.assert_array_equal(_numpy(tensor), array.astype(_numpy(tensor).dtype))


def test_safetensors_reader_reads_the_reference_writer(tmp_path):
  tensors = {"scalar": torch.tensor(2.0), "empty": torch.zeros(0, 3), "bf16": torch.randn(5).bfloat16(),
             "int16": torch.tensor([3], dtype=torch.int16)}
  torch_save_safetensors(tensors, tmp_path / "t.safetensors", metadata={"format": "pt", "note": "x"})
  with SafetensorsFile(tmp_path / "t.safetensors") as f:
    assert f.metadata == {"format": "pt", "note": "x"}
    for name, tensor in tensors.items():
      np.testing.assert_array_equal(np.asarray(f.get(name), np.float32), _numpy(tensor).astype(np.float32))
      assert f.get(name).shape == tuple(tensor.shape)


@pytest.mark.parametrize("mmap", [False, True])
def test_torch_bin_written_loads_in_torch_with_shapes_kept(tmp_path, mmap):
  path = tmp_path / "x.bin"
  write_torch_bin(path, _arrays())
  state = torch.load(path, weights_only=True, mmap=mmap)
  for name, array in _arrays().items():
    assert tuple(state[name].shape) == array.shape, name
    np.testing.assert_array_equal(_numpy(state[name]), array.astype(_numpy(state[name]).dtype))


def test_torch_bin_of_an_array_with_an_odd_stride_on_a_length_1_axis_reads_back(tmp_path):
  # numpy calls `[1, 3][::-1]` C-contiguous although its first stride is negative; the bytes written are C order, so
  # the strides recorded must be those of C order, as `torch.save` writes for the same tensor.
  arrays = {"flipped": np.arange(3, dtype=np.float32).reshape(1, 3)[::-1],
            "stacked": np.arange(6, dtype=np.float32).reshape(3, 1, 2)[:, ::-1]}
  write_torch_bin(tmp_path / "x.bin", arrays)
  state, ours = torch.load(tmp_path / "x.bin", weights_only=True), read_torch_bin(tmp_path / "x.bin")
  for name, array in arrays.items():
    assert state[name].stride() == torch.from_numpy(array.copy()).stride(), name
    np.testing.assert_array_equal(ours[name], array, err_msg=name)


def test_torch_bin_bytes_do_not_depend_on_the_time_of_writing(tmp_path, monkeypatch):
  import time
  write_torch_bin(tmp_path / "a.bin", _arrays())
  real_time = time.time
  monkeypatch.setattr(time, "time", lambda: real_time() + 86400 * 400)  # zip entries carry a time stamp
  write_torch_bin(tmp_path / "b.bin", _arrays())
  monkeypatch.undo()
  # The demo's "rebuilt identically" value_head.bin differed from the first run's in its entries' time stamps.
  assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
  torch.save({"w": torch.zeros(2)}, tmp_path / "ref.bin")
  stamps = {info.date_time for info in zipfile.ZipFile(tmp_path / "ref.bin").infolist()}
  assert {info.date_time for info in zipfile.ZipFile(tmp_path / "a.bin").infolist()} == stamps  # torch's fixed one


def test_torch_bin_reader_reads_torch_save_of_every_integer_width(tmp_path):
  base = torch.arange(10.0)
  state = {"int8": torch.tensor([-1, 5], dtype=torch.int8), "int16": torch.tensor([-300], dtype=torch.int16),
           "scalar": torch.tensor(1.5), "transposed": torch.randn(4, 3).t(), "view": base[2:5]}
  torch.save(state, tmp_path / "t.bin")
  ours = read_torch_bin(tmp_path / "t.bin")
  for name, tensor in state.items():
    assert ours[name].dtype == _numpy(tensor).dtype and ours[name].shape == tuple(tensor.shape), name
    np.testing.assert_array_equal(ours[name], _numpy(tensor))


def test_torch_bin_reader_reads_parameters_with_python_attributes(tmp_path):
  # `torch.save` of a Parameter carrying attributes (as libraries tag them, e.g. `_is_hf_initialized`) pickles it
  # through `_rebuild_parameter_with_state`, which `torch.load(weights_only=True)` reads; it was refused as unsafe.
  weight = torch.nn.Parameter(torch.randn(1, 4))
  weight._is_hf_initialized = True
  path = tmp_path / "value_head.bin"
  torch.save({"v_head.summary.weight": weight, "v_head.summary.bias": torch.nn.Parameter(torch.zeros(1))}, path)
  reference, ours = torch.load(path, weights_only=True), read_torch_bin(path)
  for name, tensor in reference.items():
    np.testing.assert_array_equal(ours[name], tensor.detach().numpy(), err_msg=name)


@pytest.mark.parametrize("header, message", [
    ([1, 2], "not an object"),
    ({"a": {"dtype": "F32", "shape": [2]}}, "'a' has a corrupt header entry"),
    ({"a": "x"}, "'a' has a corrupt header entry"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-4, 4]}}, "'a' has invalid"),  # reads header bytes
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "'a' has invalid"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, "overlaps"),
])
def test_corrupt_safetensors_header_names_the_file_and_tensor(tmp_path, header, message):
  # The `safetensors` library refuses each of these; none may load bytes that are not the tensor's.
  path = tmp_path / "bad.safetensors"
  blob = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(16))
  with pytest.raises(ValueError, match="bad.safetensors.*" + re.escape(message)):
    with SafetensorsFile(path) as f:
      for name in f.keys():
        f.get(name)


def test_a_truncated_torch_bin_is_called_truncated_and_a_legacy_one_legacy(tmp_path):
  # A zip cut short (its directory at the end gone) was reported as a legacy pickle-only file; `torch.load` tells the
  # two apart by the zip magic, and fails on the first as a zip archive.
  path, legacy = tmp_path / "value_head.bin", tmp_path / "legacy.bin"
  torch.save({"v_head.summary.weight": torch.ones(1, 64)}, path)
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(RuntimeError, match="zip archive"):
    torch.load(path, weights_only=True)
  with pytest.raises(ValueError, match=r"value_head\.bin: truncated or corrupt torch checkpoint"):
    read_torch_bin(path)
  torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
  assert torch.equal(torch.load(legacy, weights_only=True)["w"], torch.ones(2))
  with pytest.raises(ValueError, match=r"legacy\.bin: not a torch zip checkpoint \(legacy pickle-only"):
    read_torch_bin(legacy)
  legacy.write_bytes(b"")  # was called a legacy file too
  with pytest.raises(ValueError, match=r"legacy\.bin: empty file"):
    read_torch_bin(legacy)


def test_a_corrupt_safetensors_file_is_not_left_open(tmp_path):
  path = tmp_path / "bad.safetensors"
  blob = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}'
  path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(8))

  def open_on_path():
    return sum(os.path.realpath(f"/proc/self/fd/{fd}") == str(path.resolve()) for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}"))

  with pytest.raises(ValueError, match="truncated") as caught:
    SafetensorsFile(path)
  # The handle used to stay open as long as anything held the exception (its traceback holds the object).
  assert caught.value is not None and open_on_path() == 0


def test_torch_bin_saved_on_a_big_endian_host_reads_as_torch_load_reads_it(tmp_path):
  # `torch.save` records the host's byte order in `byteorder` and stores the storages in it; `torch.load` swaps
  # big-endian storages on a little-endian host. The file is the one a big-endian host writes: `byteorder` "big" and
  # every storage byte-swapped.
  state = {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3) + 0.5,
           "bf16": torch.tensor([1.0, -3.140625], dtype=torch.bfloat16), "steps": torch.arange(3)}
  torch.save(state, tmp_path / "little.bin")
  storage_dtypes = {"0": np.float32, "1": ml_dtypes.bfloat16, "2": np.int64}  # in the order torch.save writes them
  with zipfile.ZipFile(tmp_path / "little.bin") as src, zipfile.ZipFile(tmp_path / "big.bin", "w") as dst:
    for info in src.infolist():
      data = src.read(info.filename)
      if info.filename.endswith("/byteorder"):
        data = b"big"
      elif "/data/" in info.filename:
        data = np.frombuffer(data, storage_dtypes[info.filename.rsplit("/", 1)[1]]).byteswap().tobytes()
      dst.writestr(info, data)
  reference = torch.load(tmp_path / "big.bin", weights_only=True)
  ours = read_torch_bin(tmp_path / "big.bin")
  for name, tensor in state.items():
    assert torch.equal(reference[name], tensor), name  # the crafted file is what torch reads as `state`
    assert ours[name].dtype.isnative, name
    np.testing.assert_array_equal(ours[name].astype(_numpy(tensor).dtype), _numpy(tensor), err_msg=name)


class _RunsACommand:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


# data.pkl payloads of a `torch.save` zip: a pickle that would run code, and pickles a damaged or crafted file holds.
_STORAGE = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ"
_BAD_PICKLES = {
    "runs a command": None,  # built in the test: it names the test's marker file
    "not a pickle": b"\x80\x02\xff\xfe",
    "storage type as a string": _STORAGE.replace(b"ctorch\nFloatStorage\n", b"X\x0c\x00\x00\x00FloatStorage"),
    "persistent id not a tuple": b"K\x01Q",
    "tensor of an int storage": b"ctorch._utils\n_rebuild_tensor_v2\n(K\x01K\x00K\x01\x85K\x01\x85\x89tR",
}


@pytest.mark.parametrize("case", sorted(_BAD_PICKLES))
def test_a_bin_whose_pickle_is_malicious_or_damaged_is_refused_naming_the_file(tmp_path, case):
  marker = tmp_path / "ran"
  value = pickle.dumps(_RunsACommand(marker), protocol=2)[2:-1] if _BAD_PICKLES[case] is None else _BAD_PICKLES[case]
  path = tmp_path / "value_head.bin"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", b"\x80\x02}X\x01\x00\x00\x00w" + value + b"s.")
    archive.writestr("archive/byteorder", "little")
    archive.writestr("archive/data/0", np.ones(1, np.float32).tobytes())
    archive.writestr("archive/version", "3\n")  # without it torch.load refuses any file, whatever its pickle
  with pytest.raises(Exception):  # torch refuses each one too
    torch.load(path, weights_only=True)
  with pytest.raises(ValueError, match=re.escape(str(path)) + ": "):
    read_torch_bin(path)
  assert not marker.exists()


_F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("blob, data, message", [
    # A dtype that is not a string was a bare "unhashable type" TypeError naming neither file nor tensor.
    (json.dumps({"a": dict(_F32_2, dtype=["F32"])}), 8, "'a' has unsupported dtype"),
    # A shape whose element count overflows int64 wrapped to 0 and opened (then a reshape error naming no file), or
    # was an OverflowError; the byte count is checked for every tensor when the file opens, as the library does.
    (json.dumps({"a": dict(_F32_2, shape=[2**32, 2**32], data_offsets=[0, 0])}), 0, "'a' has a shape too large"),
    (json.dumps({"a": dict(_F32_2, shape=[2**70])}), 8, "'a' has a shape too large"),
    (json.dumps({"a": dict(_F32_2, shape=[3])}), 8, "'a' has 8 bytes for shape (3,)"),
    # 0 elements, but 2**80 before the 0: numpy refuses the shape ("cannot reshape", naming no file).
    (json.dumps({"a": dict(_F32_2, shape=[2**40, 2**40, 0], data_offsets=[0, 0])}), 0, "'a' has a shape too large"),
    # Data before the first tensor, after the last one, or a name listed twice (json keeps the last entry): the bytes
    # of a tensor whose entry is gone.
    (json.dumps({"a": dict(_F32_2, data_offsets=[8, 16])}), 16, "data does not start at byte 0"),
    (json.dumps({"a": _F32_2}), 16, "8 bytes after the last tensor"),
    ('{"a": ' + json.dumps(_F32_2) + ', "a": ' + json.dumps(dict(_F32_2, data_offsets=[8, 16])) + "}", 16,
     "'a' is listed twice"),
    (json.dumps({"__metadata__": ["format", "pt"], "a": _F32_2}), 8, "__metadata__ must be an object of strings"),
    # json's RecursionError and its plain ValueError for an int of over 4300 digits were raised bare.
    ('{"a": ' + "[" * 100_000, 0, "corrupt safetensors header (nested too deeply"),
    ('{"a": ' + "7" * 5000 + "}", 0, "corrupt safetensors header (Exceeds the limit (4300 digits)"),
], ids=lambda value: value[:60] if isinstance(value, str) else None)
def test_a_safetensors_header_the_library_refuses_is_refused_naming_the_file(tmp_path, blob, data, message):
  path = tmp_path / "bad.safetensors"
  path.write_bytes(struct.pack("<Q", len(blob)) + blob.encode() + bytes(data))
  with pytest.raises(Exception, match="deserializing header"):
    safe_open(str(path), "np")
  with pytest.raises(ValueError, match="bad.safetensors: .*" + re.escape(message)):
    SafetensorsFile(path)


@pytest.mark.parametrize("size", [(2, 3), (2**30, 2**30)], ids=["2x3", "4 EiB"])
def test_a_bin_tensor_viewing_its_storage_at_stride_0_reads_as_torch_load_reads_it(tmp_path, size):
  # An expanded tensor (`torch.ones(1).expand(...)` saved): a size over a 1-element storage at stride 0. torch.load
  # gives a view and allocates nothing; the copy made of it was a bare MemoryError for 2**30 x 2**30 (4 EiB).
  path = tmp_path / "expanded.bin"
  torch.save({"w": torch.full((1,), 2.5).expand(*size)}, path)
  reference, ours = torch.load(path, weights_only=True)["w"], read_torch_bin(path)["w"]
  assert reference.shape == ours.shape == size and reference.stride() == (0, 0)
  assert ours[1, 2] == reference[1, 2].item() == 2.5 and ours[-1, -1] == 2.5


def test_a_safetensors_length_prefix_over_the_librarys_limit_is_refused_before_reading(tmp_path, monkeypatch):
  # A corrupted length prefix in a large shard (a sparse file here) was read whole into memory (GBs of a 15 GB shard)
  # before its JSON failed; the library refuses a header over 100 MB at once.
  path = tmp_path / "big.safetensors"
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", 100_000_001))
    f.truncate(200_000_000)
  with pytest.raises(Exception, match="HeaderTooLarge|header too large"):
    safe_open(str(path), "np")
  with pytest.raises(ValueError, match=r"big\.safetensors: corrupt safetensors header \(its length prefix says "
                                       r"100000001 bytes"):
    SafetensorsFile(path)


def test_a_bin_storage_entry_larger_than_its_tensor_is_not_read_whole(tmp_path):
  # A storage entry deflated to a few hundred KB that inflates to 256 MB, for a 1-element storage (a zip bomb, or
  # a damaged entry): it was inflated whole into memory before the first float was taken from it.
  import tracemalloc  # pylint: disable=g-import-not-at-top
  path = tmp_path / "value_head.bin"
  write_torch_bin(path, {"w": np.array([1.5], np.float32)})
  with zipfile.ZipFile(path) as z:
    items = {info.filename: z.read(info) for info in z.infolist()}
  items["archive/data/0"] = np.array([1.5], np.float32).tobytes() + bytes(256 << 20)
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
    for name, data in items.items():
      z.writestr(name, data)
  del items
  tracemalloc.start()
  try:
    state = read_torch_bin(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert state["w"].tolist() == [1.5] and peak < 16 << 20, peak
