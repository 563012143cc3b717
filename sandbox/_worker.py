"""The jailed side: a warm "zygote" process that forks snippet executors. Runs inside the sandbox, stdlib only.

Process tree inside one worker's jail (namespaces set up by bwrap / unshare, or none at the "rlimits-only" level):

  zygote      imports the math stack once, drops to the worker's unprivileged uid, never runs snippet code; reads
              tasks from the host, picks an executor, enforces the wall-clock deadline, wipes the private /tmp.
  executor    a fork of the zygote: own process group, rlimits, seccomp filter, stdio on /dev/null. Runs programs
              with fresh globals. A *reused* executor serves programs that `static_check.is_reusable` accepts and
              exits after any runtime error or `reuse_limit` programs; any other program gets a *single-use*
              executor. One spare executor is always forked ahead, so forking (~10 ms) overlaps the current run.

Why a fork per executor rather than per program: a warm sympy process takes ~10 ms to fork on this machine (about
75 sympy programs/s on 2 cores), while a reused executor costs two pipe round trips per program.

Frames (see `_protocol`): host -> zygote `{"id", "code"}`; zygote -> host `{"ready", ...}` once, then one result
per task in order; zygote -> executor `{"id", "code", "last"}`; executor -> zygote `{"hello", "seccomp"}` once,
then results.
"""

from __future__ import annotations

import builtins
import ctypes
import ctypes.util
import errno
import gc
import importlib
import itertools
import json
import math
import os
import resource
import signal
import stat
import sys
import time
from collections import deque
from typing import Any, Callable, Iterator, Sequence

from sandbox import _protocol
from sandbox import _seccomp
from sandbox import observation
from sandbox import static_check

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38

_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18

_HELLO_TIMEOUT_S = 30.0

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _prctl(option: int, arg: int) -> None:
  if _libc.prctl(option, arg, 0, 0, 0) != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
  enc = lambda s: None if s is None else s.encode()
  if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"mount({source!r} -> {target!r}): {os.strerror(err)}")


# ----------------------------------------------------------------------------------------------------------------
# Jail setup for the "unshare" level: the same layout bwrap builds, done by hand in a fresh mount namespace.


def _setup_mounts(spec: dict) -> None:
  """Builds a read-only root from `spec` under `spec["newroot"]` and chroots into it (needs root)."""
  newroot = spec["newroot"]
  _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
  _mount("tmpfs", newroot, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=4m,mode=0755")
  # The private /tmp before the binds, as bwrap's: a Python prefix under the host's /tmp (a venv) shows through it
  # instead of being hidden, with its site-packages, by a tmpfs mounted over it afterwards.
  os.makedirs(newroot + "/tmp")
  _mount("tmpfs", newroot + "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={spec['tmp_bytes']},mode=1777")
  for path, dst in spec["binds"]:
    target = newroot + dst
    if os.path.isdir(path):
      os.makedirs(target, exist_ok=True)
    else:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      with open(target, "a", encoding="utf-8"):
        pass
    _mount(path, target, None, _MS_BIND | _MS_REC)
    # A read-only remount holds for one mount only: each mount under the source (a volume under the Python prefix,
    # /usr/local on its own disk) came along writable, and what a program wrote there stayed on the host.
    for point in _mount_points_under(target):
      _mount(None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
  for target, link in spec["symlinks"]:
    os.makedirs(os.path.dirname(newroot + link), exist_ok=True)
    os.symlink(target, newroot + link)
  os.makedirs(newroot + "/dev", exist_ok=True)
  for dev in ("null", "zero", "full", "random", "urandom"):
    node = f"{newroot}/dev/{dev}"
    with open(node, "a", encoding="utf-8"):
      pass
    _mount(f"/dev/{dev}", node, None, _MS_BIND)
    _mount(None, node, None, _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _MS_NOEXEC)
  os.makedirs(newroot + "/proc", exist_ok=True)
  _mount("proc", newroot + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
  os.makedirs(newroot + "/dev/shm", exist_ok=True)
  _mount("tmpfs", newroot + "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={spec['shm_bytes']},mode=1777")
  _mount(None, newroot, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=4m,mode=0755")
  os.chdir(newroot)
  os.chroot(".")
  os.chdir("/")


def _mount_points_under(target: str) -> list[str]:
  """`target` and every mount point below it, from /proc/self/mountinfo (field 5, octal escapes undone)."""
  points = []
  with open("/proc/self/mountinfo", "rb") as f:
    for line in f:
      point = line.split()[4]
      for code in (b"\\040", b"\\011", b"\\012", b"\\134"):  # space, tab, newline, backslash
        point = point.replace(code, bytes([int(code[1:], 8)]))
      point = os.fsdecode(point)
      if point == target or point.startswith(target.rstrip("/") + "/"):
        points.append(point)
  return points


def _drop_privileges(uid: int, gid: int) -> None:
  os.setgroups([])
  os.setresgid(gid, gid, gid)
  os.setresuid(uid, uid, uid)
  if os.getuid() != uid or os.geteuid() != uid:
    raise RuntimeError("failed to drop privileges")
  try:
    os.setuid(0)
  except PermissionError:
    return
  raise RuntimeError("privileges could be regained after dropping them")


def _vm_size_bytes() -> int:
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith("VmSize:"):
        return int(line.split()[1]) * 1024
  return 0


def wipe_dir(path: str, keep: Sequence[str] = ()) -> None:
  """Removes everything inside `path` (entries are owned by this uid; modes may have been locked).

  `keep`: mount points below `path` that stay, with the directories on the way to them (a Python under the host's
  /tmp, bound into the jail's): those directories get mode 0755 back and lose everything else. Without it, the
  first wipe moved them away with the mount (where this uid owns them: bwrap as non-root), and the Python's
  site-packages were gone for every later program. One of them gone (a program moved it) raises OSError.

  A program can nest directories past the recursion limit and PATH_MAX, so nothing here recurses or builds paths:
  each directory met in `path` has its own subdirectories moved up into `path` (renamed, relative to directory fds
  opened without following symlinks), its files removed, and is removed itself; what moved up is met later.
  """
  try:
    top = os.open(path, _DIR_FLAGS)
  except OSError:
    return
  kept = {os.path.relpath(k, path).split("/")[0]: k for k in keep if k.startswith(path.rstrip("/") + "/")}
  moved = itertools.count()
  failed: set[str] = set(kept)  # entries that could not be removed: skipped from then on, so this ends
  try:
    while True:
      with os.scandir(top) as it:
        names = [(e.name, e.is_dir(follow_symlinks=False)) for e in it if e.name not in failed]
      if not names:
        break
      for name, is_dir in names:
        try:
          if is_dir:
            _flatten(top, name, moved)
            os.rmdir(name, dir_fd=top)
          else:
            os.unlink(name, dir_fd=top)
        except OSError:
          failed.add(name)
  finally:
    os.close(top)
  for name in kept:
    way = os.path.join(path, name)
    info = os.lstat(way)
    if not stat.S_ISDIR(info.st_mode):
      raise NotADirectoryError(f"{way} (the way to a mount point) was replaced")
    if way not in keep:  # a mount point itself is read-only and stays as it is
      if info.st_uid == os.getuid():  # else root's (a root host's jail), which no program could change either
        os.chmod(way, 0o755)
      wipe_dir(way, [k for k in keep if k.startswith(way + "/")])


def _flatten(top: int, name: str, moved) -> None:
  """Moves the subdirectories of `top`/`name` up into `top` (under fresh names) and removes its other entries."""
  try:
    os.chmod(name, stat.S_IRWXU, dir_fd=top)
  except OSError:
    pass
  fd = os.open(name, _DIR_FLAGS, dir_fd=top)
  try:
    with os.scandir(fd) as it:
      entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for entry, is_dir in entries:
      try:
        if not is_dir:
          os.unlink(entry, dir_fd=fd)
          continue
        while True:
          try:
            os.rename(entry, f".wipe-{next(moved)}", src_dir_fd=fd, dst_dir_fd=top)
            break
          except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
              raise  # a name the program left in `top` is tried no more than once each
      except OSError:
        pass
  finally:
    os.close(fd)


# ----------------------------------------------------------------------------------------------------------------
# Executor (forked child).


class _ExecutorState:
  """Per-process state of an executor that must survive between programs."""

  def __init__(self, cfg: dict, rng_states: list):
    self.cfg = cfg
    self.rng_states = rng_states
    self.builtins_template = dict(builtins.__dict__)
    self.uses = 0


def _seed_rngs() -> list[tuple[Callable[[Any], Any], Any]]:
  """Seeds every global generator a program can draw from (0) and returns `(restore, state)` pairs.

  Besides `random` and `numpy.random` (which `scipy.stats` draws from without naming it), sympy keeps its own
  `random.Random` instances (`randprime`, `random_poly`, ...), seeded from the OS at import: seeded here, a sympy
  draw is the same in every executor of every pool, so a search replays.
  """
  import random  # pylint: disable=import-outside-toplevel
  generators = [random]  # the module's functions are the methods of its hidden `Random` instance
  sympy_random = sys.modules.get("sympy.core.random")
  for name in ("rng", "_assumptions_rng"):
    generator = getattr(sympy_random, name, None)
    if isinstance(generator, random.Random):
      generators.append(generator)
  pairs = []
  for generator in generators:
    generator.seed(0)
    pairs.append((generator.setstate, generator.getstate()))
  if "numpy" in sys.modules:
    np_random = sys.modules["numpy"].random
    np_random.seed(0)
    pairs.append((np_random.set_state, np_random.get_state()))
  return pairs


# Above the range sympy draws its base from (10**6 to 9 * 10**6): the Dummies made at import keep their own indices.
_DUMMY_BASE_INDEX = 10**7


def _fix_dummy_indices() -> None:
  """Numbers sympy's `Dummy` symbols the same way in every pool (before the warm-up makes any).

  sympy numbers them from a base it draws from the OS at import (`Dummy._base_dummy_index`), and a Dummy hashes by
  its index: a set of Dummies (`{Dummy('a'), Dummy('b')}`, an expression's `free_symbols`) printed in another order
  in every pool, and `srepr` showed another index, so the same program observed something else in a fresh process
  and a search did not replay.
  """
  dummy = getattr(sys.modules.get("sympy.core.symbol"), "Dummy", None)
  if isinstance(getattr(dummy, "_base_dummy_index", None), int):
    dummy._base_dummy_index = _DUMMY_BASE_INDEX  # pylint: disable=protected-access


def _reset_rngs(rng_states: list) -> None:
  """Every program starts from the same global RNG states, reused executor or not (numpy's costs ~70 us)."""
  for restore, state in rng_states:
    restore(state)


def _apply_rlimits(cfg: dict, as_base: int) -> None:
  mb = 1 << 20
  limits = {
      resource.RLIMIT_AS: as_base + cfg["memory_mb"] * mb,
      resource.RLIMIT_FSIZE: cfg["fsize_mb"] * mb,
      resource.RLIMIT_NOFILE: cfg["nofile"],
      resource.RLIMIT_CORE: 0,
      resource.RLIMIT_MEMLOCK: 0,
      resource.RLIMIT_MSGQUEUE: 0,
  }
  if os.geteuid() != 0:  # RLIMIT_NPROC does not bind root; the seccomp filter is the first line anyway
    # It counts every task of the uid in its user namespace: at the rlimits-only level as non-root that is the host
    # user's, so with 64 processes of theirs running no program could start a thread. `nproc` more than those.
    limits[resource.RLIMIT_NPROC] = cfg["nproc"] + (_tasks_of_uid(os.getuid()) if cfg.get("nproc_shared") else 0)
  for which, value in limits.items():
    resource.setrlimit(which, (value, value))
  cpu_per_task = math.ceil(cfg["timeout_s"]) + 1
  resource.setrlimit(resource.RLIMIT_CPU, (cpu_per_task, cpu_per_task * (cfg["reuse_limit"] + 1)))


def processes_of_uid(uid: int) -> Iterator[tuple[int, dict[bytes, bytes]]]:
  """(pid, /proc/<pid>/status fields) of every live process whose real uid is `uid`; one that exits meanwhile is
  skipped."""
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/status", "rb") as f:
        fields = dict(line.split(b":\t", 1) for line in f.read().splitlines() if b":\t" in line)
      if int(fields[b"Uid"].split()[0]) == uid:
        yield int(name), fields
    except (OSError, KeyError, ValueError, IndexError):
      continue  # gone meanwhile


def _tasks_of_uid(uid: int) -> int:
  """Threads of all live processes whose real uid is `uid` (what RLIMIT_NPROC counts)."""
  total = 0
  for _, fields in processes_of_uid(uid):
    try:
      total += int(fields[b"Threads"])
    except (KeyError, ValueError):
      continue
  return total


def _set_task_cpu_limit(cfg: dict, last: bool) -> None:
  """CPU backstop for this task: the zygote's wall-clock kill comes first."""
  used = resource.getrusage(resource.RUSAGE_SELF)
  spent = used.ru_utime + used.ru_stime
  soft = math.ceil(spent + cfg["timeout_s"]) + 1
  _, hard = resource.getrlimit(resource.RLIMIT_CPU)
  if last:
    hard = min(hard, soft + 1)
  resource.setrlimit(resource.RLIMIT_CPU, (min(soft, hard), hard))


def _executor_main(cfg: dict, task_fd: int, result_fd: int, zygote_pid: int, as_base: int,
                   rng_states: list) -> None:
  devnull = os.open("/dev/null", os.O_RDWR)
  for fd in (0, 1, 2):
    os.dup2(devnull, fd)
  keep = sorted({0, 1, 2, task_fd, result_fd})
  for lo, hi in zip(keep, keep[1:] + [1 << 16]):
    if hi > lo + 1:
      os.closerange(lo + 1, hi)
  os.setpgid(0, 0)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  if os.getppid() != zygote_pid:
    os._exit(1)
  _apply_rlimits(cfg, as_base)
  seccomp_on = False
  if cfg["seccomp"] and _seccomp.supported():
    try:
      _seccomp.install(os.getpid(), [task_fd, result_fd])
      seccomp_on = True
    except OSError:
      seccomp_on = False
  sys.stdin = None  # input() -> RuntimeError ("lost sys.stdin"), never a read from a pipe
  state = _ExecutorState(cfg, rng_states)
  _protocol.write_all(result_fd, _protocol.encode({"hello": True, "seccomp": seccomp_on}))
  reader = _protocol.FrameReader(cfg["max_code_chars"] * 16 + (1 << 20))
  pending: list = []
  while True:
    task = _protocol.read_frame(task_fd, reader, pending, None)
    if task is None:
      return
    result, recycle = _execute(state, task)
    _protocol.write_all(result_fd, _protocol.encode(result))
    if recycle:
      return


def _execute(state: _ExecutorState, task: dict) -> tuple[dict, bool]:
  """Runs one program; returns (result frame, whether this executor must exit now)."""
  cfg = state.cfg
  state.uses += 1
  _set_task_cpu_limit(cfg, task["last"])
  _reset_rngs(state.rng_states)
  namespace = {"__name__": "__main__", "__builtins__": dict(state.builtins_template)}
  out = observation.run_program(task["code"], namespace, mode=cfg["output_mode"], max_chars=cfg["max_output_chars"])
  namespace.clear()
  exc = out.exception
  memory = isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)
  ran = out.started
  out.exception = exc = None  # drop frames (and the memory they hold) before building the reply
  max_chars = cfg["max_output_chars"]
  if memory and ran:
    error = f"MemoryError: execution exceeded the memory limit ({cfg['memory_mb']} MB)"
    obs, printed, final = error, False, False
  else:
    memory = False
    error, obs, printed, final = out.error, out.observation, out.printed, out.final
  result = {
      "id": task["id"],
      "observation": observation.postprocess(obs, printed=printed, max_chars=max_chars, final=final),
      "stdout": observation.clean_text(out.stdout.value(max_chars)),
      "error": error,
      "memory_exceeded": memory,
  }
  recycle = task["last"] or (error is not None and ran) or state.uses >= cfg["reuse_limit"]
  result["recycle"] = recycle
  return result, recycle


# ----------------------------------------------------------------------------------------------------------------
# Zygote.


class _Executor:
  """The zygote's handle on one forked executor."""

  def __init__(self, pid: int, task_fd: int, result_fd: int, max_frame: int):
    self.pid = pid
    self.task_fd = task_fd
    self.result_fd = result_fd
    self.reader = _protocol.FrameReader(max_frame)
    self.pending: list = []
    self.hello: dict | None = None
    self.uses = 0
    self.alive = True


class _Shutdown(Exception):
  """The host closed its pipe: stop everything now."""


class Zygote:
  """Serves tasks from the host; see the module docstring."""

  def __init__(self, cfg: dict, host_in: int, host_out: int):
    self.cfg = cfg
    self.host_in = host_in
    self.host_out = host_out
    self.host_reader = _protocol.FrameReader(cfg["max_code_chars"] * 16 + (1 << 20))
    self.tasks: deque = deque()
    self.current: _Executor | None = None
    self.spare: _Executor | None = None
    self.retired: list[int] = []
    self.max_result_frame = 256 * cfg["max_output_chars"] + (1 << 20)  # JSON escapes: <= 12 bytes a char
    self.pid = os.getpid()
    self.as_base = _vm_size_bytes()
    self.rng_states: list = []
    self.seccomp_on: bool | None = None  # the first executor's, which the host reports; None until then
    # Modes the private dirs had at start: a program may lock its work dir (0) or open it to other workers (0o777).
    self.wipe_modes = {path: stat.S_IMODE(os.stat(path).st_mode) for path in cfg["wipe_dirs"]}

  # -- executors --------------------------------------------------------------------------------------------------

  def fork_executor(self) -> _Executor:
    task_r, task_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
      code = 70
      try:
        os.close(task_w)
        os.close(res_r)
        _executor_main(self.cfg, task_r, res_w, self.pid, self.as_base, self.rng_states)
        code = 0
      except BaseException:  # pylint: disable=broad-except
        code = 71
      finally:
        os._exit(code)
    os.close(task_r)
    os.close(res_w)
    return _Executor(pid, task_w, res_r, self.max_result_frame)

  def _await_hello(self, ex: _Executor) -> bool:
    if ex.hello is not None:
      return True
    try:
      frame = self._read(ex, time.monotonic() + _HELLO_TIMEOUT_S)
    except (TimeoutError, _protocol.ProtocolError):
      frame = None
    # An executor whose filter failed to install (ENOMEM, ...) while the first one's holds would run programs
    # unfiltered, with the host told the filter is on: it is killed like one that died at start-up.
    if (not isinstance(frame, dict) or not frame.get("hello")
        or (self.seccomp_on is not None and bool(frame.get("seccomp")) != self.seccomp_on)):
      self.kill(ex)
      return False
    ex.hello = frame
    return True

  def take_spare(self) -> _Executor:
    for _ in range(3):
      ex, self.spare = self.spare, None
      if ex is None:
        ex = self.fork_executor()
      if self._await_hello(ex):
        return ex
    raise RuntimeError("executors keep dying at start-up")

  def kill(self, ex: _Executor) -> int | None:
    """SIGKILLs the executor and its process group; returns its wait status."""
    if not ex.alive:
      return None
    ex.alive = False
    self._signal_kill(ex.pid)
    status = self._reap(ex.pid)
    self._close_fds(ex)
    return status

  def retire(self, ex: _Executor) -> None:
    """The executor has replied and must exit (last task, error, or used up): SIGKILLed now, collected later.

    Not left to exit by itself: a program can write its own reply (its task id is in its caller's frame) and run on,
    past its deadline and into the programs that follow.
    """
    if ex.alive:
      ex.alive = False
      self._signal_kill(ex.pid)
      self._close_fds(ex)
      self.retired.append(ex.pid)

  @staticmethod
  def _signal_kill(pid: int) -> None:
    for fn in (os.killpg, os.kill):
      try:
        fn(pid, signal.SIGKILL)
      except OSError:
        pass

  @staticmethod
  def _close_fds(ex: _Executor) -> None:
    for fd in (ex.task_fd, ex.result_fd):
      try:
        os.close(fd)
      except OSError:
        pass

  @staticmethod
  def _reap(pid: int) -> int | None:
    while True:
      try:
        _, status = os.waitpid(pid, 0)
        return status
      except InterruptedError:
        continue
      except ChildProcessError:
        return None

  def reap_retired(self) -> None:
    still = []
    for pid in self.retired:
      try:
        done, _ = os.waitpid(pid, os.WNOHANG)
      except ChildProcessError:
        continue
      if not done:
        still.append(pid)
    self.retired = still

  # -- I/O ----------------------------------------------------------------------------------------------------------

  def _pump_host(self) -> None:
    data = os.read(self.host_in, 1 << 20)
    if not data:
      raise _Shutdown
    self.tasks.extend(self.host_reader.feed(data))

  def _read(self, ex: _Executor, deadline: float) -> Any:
    """Next frame from `ex` (None at EOF) while still taking in host frames; TimeoutError at `deadline`."""
    while not ex.pending:
      left = deadline - time.monotonic()
      if left <= 0:
        raise TimeoutError
      ready, _ = _protocol.wait([ex.result_fd, self.host_in], [], left)
      if self.host_in in ready:
        self._pump_host()
      if ex.result_fd in ready:
        data = os.read(ex.result_fd, 1 << 16)
        if not data:
          return None
        ex.pending.extend(ex.reader.feed(data))
    return ex.pending.pop(0)

  def send_host(self, obj: dict) -> None:
    _protocol.write_all(self.host_out, _protocol.encode(obj))

  # -- tasks --------------------------------------------------------------------------------------------------------

  def run_task(self, task: dict) -> dict:
    cfg = self.cfg
    task_id = task.get("id")
    code = task.get("code")
    base = {"id": task_id, "stdout": "", "error": None, "timed_out": False, "memory_exceeded": False,
            "killed_by_signal": None}
    if not isinstance(code, str):
      err = "TypeError: program must be a str"
      return {**base, "observation": err, "error": err, "duration_s": 0.0}
    if len(code) > cfg["max_code_chars"]:
      err = f"ValueError: program too long ({len(code)} characters > {cfg['max_code_chars']})"
      return {**base, "observation": err, "error": err, "duration_s": 0.0}
    # Judged on the text that runs: a fenced program does not parse as sent, and unparsable text counts as reusable.
    reusable = static_check.is_reusable(observation.program_text(code, cfg["output_mode"]),
                                        cfg["static_check_max_chars"])
    cur = self.current
    if reusable and cur is not None and cur.alive and cur.uses < cfg["reuse_limit"]:
      ex = cur
    else:
      ex = self.take_spare()
      if reusable:
        if cur is not None:
          self.kill(cur)
        self.current = ex
    last = not reusable
    ex.uses += 1
    start = time.monotonic()
    try:
      _protocol.write_all(ex.task_fd, _protocol.encode({"id": task_id, "code": code, "last": last}))
    except OSError:
      pass  # it died: reading below sees EOF and reports how
    if self.spare is None:
      self.spare = self.fork_executor()  # overlaps with the program's run
    garbled = False  # a frame that does not decode (or carries another id): not an exit of the program
    try:
      frame = self._read(ex, start + cfg["timeout_s"])
      bad = not isinstance(frame, dict) or frame.get("id") != task_id
    except TimeoutError:
      self.kill(ex)
      err = f"TimeoutError: execution exceeded {cfg['timeout_s']}s"
      return {**base, "observation": err, "error": err, "timed_out": True,
              "duration_s": time.monotonic() - start}
    except _protocol.ProtocolError:
      frame, bad, garbled = None, True, True
    duration = time.monotonic() - start
    if frame is None or bad:
      status = self.kill(ex)
      if not garbled and frame is None and _cpu_limit_death(status):
        # A program whose threads run on several cores reaches the CPU backstop (`_set_task_cpu_limit`) before
        # the wall clock: it is a timeout like any other, not a crash.
        err = f"TimeoutError: execution exceeded {cfg['timeout_s']}s"
        return {**base, "observation": err, "error": err, "timed_out": True, "duration_s": duration}
      return {**base, **_death_result(status, garbled or frame is not None), "duration_s": duration}
    recycle = last or bool(frame.get("recycle")) or ex.uses >= cfg["reuse_limit"]
    if recycle:
      self.retire(ex)
      if ex is self.current:
        self.current = None
    reply = {**base, "observation": str(frame.get("observation", "")), "stdout": str(frame.get("stdout", "")),
             "error": None if frame.get("error") is None else str(frame["error"]),
             "memory_exceeded": bool(frame.get("memory_exceeded")), "duration_s": duration}
    if len(_protocol.encode(reply)) > self.max_result_frame:
      # Only a frame the program wrote itself grows past the host's limit (the same as ours) when re-encoded: its raw
      # UTF-8 becomes \u escapes, up to 3 times longer. Sent on, the host would refuse it and restart this worker.
      self.kill(ex)
      return {**base, **_death_result(None, garbled=True), "duration_s": duration}
    return reply

  def wipe(self) -> None:
    """Empties the private dirs after giving them back their modes (at the rlimits-only level the work dir is this
    uid's; bwrap's and unshare's tmpfs roots are root's, which no program could change either)."""
    for path, mode in self.wipe_modes.items():
      try:
        os.chmod(path, mode)
      except OSError:
        pass
      wipe_dir(path, self.cfg.get("keep", ()))

  def serve(self) -> None:
    first = self.take_spare()
    self.spare = first
    self.seccomp_on = bool(first.hello and first.hello.get("seccomp"))
    self.send_host({"ready": True, "pid": self.pid, "uid": os.getuid(), "gid": os.getgid(),
                    "seccomp": self.seccomp_on, "preloaded": sorted(self.cfg["_preloaded"])})
    try:
      while True:
        while not self.tasks:
          self._pump_host()
        task = self.tasks.popleft()
        result = self.run_task(task)
        self.wipe()
        self.reap_retired()
        self.send_host(result)
    except (_Shutdown, BrokenPipeError):
      pass
    finally:
      signal.signal(signal.SIGTERM, signal.SIG_IGN)  # EOF and the death signal both come: finish cleaning up
      for ex in (self.current, self.spare):
        if ex is not None:
          self.kill(ex)
      for pid in self.retired:
        try:
          os.kill(pid, signal.SIGKILL)
        except OSError:
          pass
        self._reap(pid)
      if self.cfg.get("remove_workdir"):  # rlimits-only: the host may be gone (SIGKILL) and cannot clean up
        self.wipe()
        try:
          os.rmdir(self.cfg["workdir"])
        except OSError:
          pass  # a root host owns the entry (`SandboxPool`): after its SIGKILL the empty dir stays


def _cpu_limit_death(status: int | None) -> bool:
  """Whether an executor died of its CPU-time limit (SIGXCPU at the soft limit; the kernel's SIGKILL at the hard
  one is not told apart from other kills, so only SIGXCPU counts)."""
  return status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU


def _death_result(status: int | None, garbled: bool) -> dict:
  """Result fields for an executor that ended without a proper reply."""
  if garbled:
    err = "RuntimeError: the program corrupted the sandbox result channel"
    return {"observation": err, "error": err}
  if status is not None and os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    try:
      name = signal.Signals(sig).name
    except ValueError:
      name = str(sig)
    err = f"RuntimeError: execution killed by signal {name}"
    return {"observation": err, "error": err, "killed_by_signal": sig}
  code = os.WEXITSTATUS(status) if status is not None else -1
  err = f"SystemExit: process exited with status {code}"
  return {"observation": err, "error": err}


def _preload(modules: list[str]) -> set[str]:
  loaded = set()
  for name in modules:
    try:
      importlib.import_module(name)
      loaded.add(name)
    except Exception:  # pylint: disable=broad-except
      pass  # optional libraries (scipy) may be missing
  return loaded


def _on_sigterm(signum, frame) -> None:
  raise _Shutdown


def main() -> None:
  """Entry point: `python -c '...; _worker.main()' CONFIG_JSON` with the host pipes on fds 0 and 1."""
  cfg = json.loads(sys.argv[1])
  host_in, host_out = os.dup(0), os.dup(1)
  devnull = os.open("/dev/null", os.O_RDWR)
  os.dup2(devnull, 0)
  os.dup2(devnull, 1)  # stray prints from imported libraries never reach the protocol pipe
  os.close(devnull)
  if cfg.get("mounts"):
    _setup_mounts(cfg["mounts"])
  os.chdir(cfg["workdir"])
  os.umask(0o077)
  # What the zygote and executors may import lazily, loaded while still root: at the rlimits-only level the
  # Python prefix can sit under a directory the unprivileged uid cannot enter (e.g. /root/.pyenv).
  _preload(["encodings.ascii", "encodings.latin_1", "encodings.idna", "traceback", "linecache", "tokenize"])
  cfg["_preloaded"] = _preload(cfg["preload"])
  _fix_dummy_indices()
  if cfg.get("warmup"):
    # Trusted code from the host: fills library caches (sympy) once, so every fork starts warm.
    observation.run_program(cfg["warmup"], {"__builtins__": builtins}, mode="plain")
  rng_states = _seed_rngs()
  if cfg.get("uid") is not None and os.geteuid() == 0:
    _drop_privileges(cfg["uid"], cfg["gid"])
  _prctl(_PR_SET_NO_NEW_PRIVS, 1)
  _prctl(_PR_SET_DUMPABLE, 0)  # /proc/<pid>/mem of the zygote and executors stays closed to snippets
  # If the host dies, SIGTERM -> _Shutdown: executors are killed and the work dir removed (after the uid change,
  # which clears the death signal). The host pipe's EOF says the same; this also covers a zygote busy elsewhere.
  signal.signal(signal.SIGTERM, _on_sigterm)
  _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  if cfg.get("host_pid") and os.getppid() != cfg["host_pid"]:
    os._exit(1)  # the host died before the death signal was armed
  gc.collect()
  gc.freeze()  # keeps forks copy-on-write friendly
  zygote = Zygote(cfg, host_in, host_out)
  zygote.rng_states = rng_states
  zygote.serve()
