"""The tree kernels as one XLA:CPU custom call (`tree_kernels.cc`), built on first use with the system C++ compiler.

On XLA:CPU the jitted kernels (`kernels.py`) cost ~96 operations per simulation, each paying a fixed dispatch cost
far above its work (benchmarks/RESULTS.md, search). `tree_kernels.cc` runs the same expansion, backup and selection
with plain loops over the trees inside one XLA FFI custom call; `kernels.expand_and_select` / `select` use it on the
CPU (`impl="auto"`), and the XLA kernels everywhere else.

The library is compiled against the installed jaxlib's FFI headers (`jax.ffi.include_dir()`) the first time a
process asks for it, and cached by a hash of the source, the headers and the compiler (`$RSTAR_JAX_CACHE`, default
`~/.cache/rstar_jax`, then `native/`); a build takes ~5 s. No compiler, a failed build or `RSTAR_JAX_NATIVE=0`:
`available()` is False (the reason in `unavailable_reason()`, logged once) and the XLA kernels run instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import pathlib
import shlex
import shutil
import subprocess
import tempfile
import threading

import jax

SOURCE = pathlib.Path(__file__).with_name("tree_kernels.cc")
TARGET = "rstar_tree_expand_and_select"  # the FFI target name `kernels.py` calls
_SYMBOL = "RstarTreeExpandAndSelect"
MAX_ACTIONS = 1024  # children per node the call takes (`kMaxActions` in tree_kernels.cc)
# -ffp-contract=off: no fused multiply-adds, so `q + c * sqrt(...)` rounds as XLA:CPU's separate multiply and add.
_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off")
_BUILD_TIMEOUT_S = 300

_LOG = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict[str, object] = {}  # "library" (ctypes.CDLL) once registered, or "error" (str)


def cache_dir() -> pathlib.Path:
  """Where built libraries are kept: `$RSTAR_JAX_CACHE/native` (default `~/.cache/rstar_jax/native`)."""
  root = os.environ.get("RSTAR_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rstar_jax")
  return pathlib.Path(root) / "native"


def _compiler() -> list[str] | None:
  """The C++ compiler's command: `$CXX` (split as a shell would: "ccache g++" works), else the first one found."""
  command = shlex.split(os.environ.get("CXX", ""))
  if command:
    return command
  found = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
  return [found] if found else None


def _library_path(compiler: list[str], include: pathlib.Path) -> pathlib.Path:
  """The cached library's path: named by a hash of everything that makes it (source, FFI headers, compiler, flags)."""
  digest = hashlib.sha256(SOURCE.read_bytes())
  for header in sorted((include / "xla" / "ffi" / "api").glob("*.h")):
    digest.update(header.read_bytes())
  version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
  digest.update("\0".join((*compiler, version) + _FLAGS).encode())
  return cache_dir() / f"tree_kernels-{digest.hexdigest()[:20]}.so"


def build() -> pathlib.Path:
  """Builds the library if it is not cached yet; returns its path.

  Raises:
    RuntimeError: no C++ compiler, or the compiler failed (its output included).
  """
  compiler = _compiler()
  if compiler is None:
    raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
  include = pathlib.Path(jax.ffi.include_dir())
  path = _library_path(compiler, include)
  if path.exists():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  # Built under a temporary name and renamed: processes building at once each rename a complete library.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
  os.close(fd)
  try:
    command = [*compiler, *_FLAGS, "-isystem", str(include), str(SOURCE), "-o", tmp]
    done = subprocess.run(command, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
    if done.returncode != 0:
      raise RuntimeError(f"building {SOURCE.name} failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return path


def available() -> bool:
  """Whether the custom call is registered (built and loaded on the first call; never raises)."""
  with _lock:
    if not _state:
      try:
        if os.environ.get("RSTAR_JAX_NATIVE", "1") == "0":
          raise RuntimeError("disabled by RSTAR_JAX_NATIVE=0")
        library = ctypes.CDLL(str(build()))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(getattr(library, _SYMBOL)), platform="cpu")
        _state["library"] = library
      except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _state["error"] = f"{type(e).__name__}: {e}"
        _LOG.warning("native CPU tree kernels unavailable, using the XLA kernels (%s)", _state["error"])
    return "library" in _state


def unavailable_reason() -> str | None:
  """Why `available()` is False (None when it is True or was not asked yet)."""
  return _state.get("error")  # type: ignore[return-value]
