"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every file the project writes that a later phase (or a resumed run) reads goes through `atomic_open`: the data goes
to a temporary file in the target's folder, is flushed to disk, and is renamed over the target; the folder is then
synced, so the rename itself survives a power loss or a host crash (without it, a journaling file system may bring back
the old file, or no file, after the writer reported success). A crash or an exception mid-write leaves the old file
(or none) and no temporary behind. A killed process (SIGKILL, a preemption) cannot remove its temporary: the next
write of the same target on the same host removes it (also when the writer had the pid of the process writing now,
as a job restarted in its container does).

`FolderLock` keeps a second run (a search, a trainer) out of a folder another run is writing.

`lone_surrogate` is the check text read from JSON needs before it is written out again or tokenized; `json_loads` is
`json.loads` with every failure on bad text a `json.JSONDecodeError`, so a reader's one handler names its file and line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import socket
import tempfile
import threading
from typing import IO, Any, Iterator

# The temporaries this process is writing: a killed earlier run with the same pid (a container restarted in its pod
# starts its job with the pid it had) left temporaries that carry this pid too, and those must go like any other.
_WRITING: set[str] = set()
_WRITING_LOCK = threading.Lock()


def _umask() -> int:
  """The process umask, read from /proc where possible: setting it to query it would race other threads."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _host_prefix(path: str) -> str:
  """`NAME.HOST.`: temporaries are named `NAME.HOST.PID.RANDOM.tmp`, so a later write can tell a dead writer's."""
  return f"{os.path.basename(path)}.{socket.gethostname()}."


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    pass
  return True


def _remove_stale_temporaries(path: str, folder: str) -> None:
  """Removes the temporaries of `path` whose writer on this host is gone: a SIGKILL skips `atomic_open`'s cleanup,
  and each killed write would otherwise leave a copy of the file (a whole checkpoint export) there for good.

  A temporary with this process's pid is stale unless this process is writing it (`_WRITING`). Call with
  `_WRITING_LOCK` held, so that no other thread's new temporary is between its creation and its registration.
  """
  prefix = _host_prefix(path)
  for name in os.listdir(folder):
    if name.startswith(prefix) and name.endswith(".tmp"):
      pid, tmp = name[len(prefix):].split(".", 1)[0], os.path.join(folder, name)
      if pid.isdigit() and (tmp not in _WRITING if int(pid) == os.getpid() else not _alive(int(pid))):
        with contextlib.suppress(FileNotFoundError):  # another writer of the same target removed it first
          os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
  """Opens a temporary file beside `path` for writing; on a clean exit, syncs it and renames it over `path`.

  The folder is synced after the rename (see the module docstring), and so is the parent of each folder this call
  created, which holds that folder's entry.

  The file gets the permissions of a plain `open(path, "w")` (0o666 less the umask), not `mkstemp`'s owner-only
  0o600, so other users and jobs that read a run folder can read it. The parent folder is created if missing. A
  `path` that is a symbolic link is written through, as `open` does: the file it points to is replaced (beside it,
  in its own folder) and the link is kept; renaming over the link itself would replace it with a plain file and leave
  the file it points to stale.

  Args:
    path: the file to (re)place.
    mode: "w" (text, UTF-8) or "wb".
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
  path = os.fspath(path)
  if os.path.islink(path):
    path = os.path.realpath(path)
  folder = os.path.dirname(os.path.abspath(path))
  created_in = _make_folders(folder)
  with _WRITING_LOCK:
    _remove_stale_temporaries(path, folder)
    try:
      fd, tmp = tempfile.mkstemp(prefix=f"{_host_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=folder)
    except OSError as e:  # a read-only folder: the error named the temporary's random name, a file no one asked for
      e.filename = path
      raise
    _WRITING.add(tmp)
  try:
    with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
      yield f
      f.flush()
      os.fchmod(f.fileno(), 0o666 & ~_umask())
      os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_folder(folder)
    for parent in created_in:
      _sync_folder(parent)
  except BaseException as e:
    if os.path.exists(tmp):
      os.unlink(tmp)
    if isinstance(e, OSError) and e.filename is None:  # a failed write or sync (a full disk) names no file
      e.filename = path
    raise
  finally:
    with _WRITING_LOCK:
      _WRITING.discard(tmp)


def _make_folders(folder: str) -> list[str]:
  """Creates `folder` and its missing ancestors; returns the folders that gained an entry (a created child), deepest
  first. Syncing `folder` makes a rename in it durable, but not `folder`'s own entry in its parent: a folder created
  for the file could vanish, file and all, at a power loss after the write reported success."""
  missing = []
  while not os.path.isdir(folder):
    missing.append(folder)
    parent = os.path.dirname(folder)
    if parent == folder:
      break
    folder = parent
  if missing:
    os.makedirs(missing[0], exist_ok=True)
  return [os.path.dirname(f) for f in missing]


def _sync_folder(folder: str) -> None:
  """fsyncs the directory `folder`, making the renames in it durable (where the file system can sync a directory)."""
  fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
  try:
    os.fsync(fd)
  except OSError as e:
    if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # a file system that cannot sync folders (some FUSE)
      raise
  finally:
    os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> None:
  """Writes `data` (text as UTF-8, or bytes) to `path` atomically (see `atomic_open`)."""
  with atomic_open(path, "w" if isinstance(data, str) else "wb") as f:
    f.write(data)


class FolderInUseError(RuntimeError):
  """Another run holds the `FolderLock` of a folder this run would write."""


class FolderLock:
  """An exclusive lock on a run folder, held from `acquire` (or `with`) to `release`.

  Two searches on one `output_dir`, or two trainers on one workdir, would search the same shards twice or write over
  each other's checkpoints, `run.json` and metrics. The lock is an `flock` on the file `name` in `folder` (created if
  missing, left in place: removing it would race a run taking it), so it goes with its holder however that ends (a
  SIGKILL too), and a second holder in the same process is refused as well as one in another process. It records the
  holder's pid and host for the error. Where the file system has no locks (some network mounts) it warns and runs
  unlocked.
  """

  def __init__(self, folder: str | os.PathLike[str], name: str, what: str):
    """`what` names the holder in messages ("search", "trainer")."""
    self.path = os.path.join(os.fspath(folder), name)
    self.what = what
    self._fd: int | None = None

  def acquire(self) -> None:
    folder = os.path.dirname(self.path)
    os.makedirs(folder, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
      os.close(fd)
      raise FolderInUseError(f"{folder}: another {self.what} is writing here ({holder}; lock file {self.path}); run "
                             f"one {self.what} per folder at a time, or use another folder") from None
    except OSError as e:  # no locks on this file system
      os.close(fd)
      logging.getLogger(__name__).warning("%s: cannot lock (%s); nothing stops a second %s in this folder", self.path,
                                          e.strerror, self.what)
      return
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{self.what} pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    except BaseException as e:
      # A full disk: the descriptor, no one's to close, held the lock for the rest of the process, and every later
      # run in it (a retry once space was freed) was refused as "another search is writing here".
      os.close(fd)
      if isinstance(e, OSError) and e.filename is None:  # a failed write names no file
        e.filename = self.path
      raise
    self._fd = fd

  def release(self) -> None:
    """Frees the lock (a no-op when not held)."""
    if self._fd is not None:
      fd, self._fd = self._fd, None
      os.close(fd)  # closing the one descriptor that holds the flock frees it

  def __enter__(self) -> "FolderLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def lock_holder(path: str | os.PathLike[str]) -> str | None:
  """Who holds the `FolderLock` whose file is `path` ("search pid 12 on host"), or None when no one does (also when
  the file cannot be opened or the file system has no locks). Checks with a shared lock, taken and freed at once."""
  try:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
  except OSError:  # gone, or another user's file (a umask of 077 makes it 0600): nothing to tell
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
  except OSError:  # no locks on this file system: nothing to tell
    return None
  finally:
    os.close(fd)  # frees the shared lock if it was taken
  return None


def is_finite_number(value: int | float) -> bool:
  """Whether a JSON number is a finite float or an int that converts to one: JSON integers have any size, and
  `math.isfinite` raises a bare OverflowError for one beyond the float range (~1.8e308)."""
  try:
    return math.isfinite(value)
  except OverflowError:
    return False


def lone_surrogate(text: str) -> str | None:
  """None when `text` has a UTF-8 encoding, else what is wrong: "holds a lone surrogate '\\ud83d' at position 4,
  which is not valid Unicode". json.loads gives one for a "\\ud83d" escape (a cut emoji), a "surrogateescape"
  decode makes them; writing or tokenizing such a text fails with an error that names no file or field."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    return f"holds a lone surrogate {text[e.start]!r} at position {e.start}, which is not valid Unicode"
  return None


_LONG_INT = re.compile(r"\d{%d,}" % 4301)  # int's default string conversion limit is 4300 digits


def json_loads(text: str, **kwargs) -> Any:
  """`json.loads(text, **kwargs)`, failing only with a `json.JSONDecodeError` (its `lineno` and `colno` point into
  `text`), or with what a hook in `kwargs` raises.

  Corrupted text makes `json.loads` raise two other errors that name no position, which readers catching
  `JSONDecodeError` let through bare (naming neither the file nor the line): a `RecursionError` for brackets nested
  too deeply, and a plain `ValueError` for an integer of more than 4300 digits. Both become `JSONDecodeError`s
  pointing at the deepest bracket / the long integer.
  """
  try:
    return json.loads(text, **kwargs)
  except json.JSONDecodeError:
    raise
  except RecursionError:
    raise json.JSONDecodeError("nested too deeply to read", text, _deepest_bracket(text)) from None
  except ValueError as e:
    found = _LONG_INT.search(text)
    if type(e) is not ValueError or found is None:  # not the integer string conversion limit: a hook's own error
      raise
    raise json.JSONDecodeError(str(e), text, found.start()) from None


def _deepest_bracket(text: str) -> int:
  """The offset of the first bracket at the greatest nesting depth of `text` (strings skipped)."""
  depth, best, where = 0, -1, 0
  for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', text):
    token = m.group()
    if token in "[{":
      depth += 1
      if depth > best:
        best, where = depth, m.start()
    elif token in "]}":
      depth -= 1
  return where
