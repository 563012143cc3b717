"""`SandboxPool`: the host side. Stdlib only; never imports JAX or the math stack.

One host thread per worker feeds its jailed zygote (see `_worker`) through a pipe, keeping up to `pipeline_depth`
programs queued there so the pipe round trip overlaps execution. The thread also watches the zygote: a worker that
dies or stops answering (its own deadline plus a grace period) is killed, its current program gets a clear result,
programs queued behind it go back to the pool, and a fresh worker takes its slot.

Cleanup holds without the host's help: each zygote exits when its host pipe closes (the host exited or was
SIGKILLed), which takes down its PID namespace (bwrap, unshare) or, via PR_SET_PDEATHSIG, its executors. At the
rlimits-only level without the seccomp filter (which stops `fork`), a process a program forked off has neither: as
root the host kills every process of the worker's uid when it stops the worker; a host that dies first cannot.
"""

from __future__ import annotations

import collections
import collections.abc
import concurrent.futures
import inspect
import itertools
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Sequence

from sandbox import _protocol
from sandbox import _worker
from sandbox import isolation as isolation_lib
from sandbox import observation
from sandbox.result import SandboxResult

DEFAULT_PRELOAD = ("math", "cmath", "fractions", "decimal", "itertools", "functools", "collections", "statistics",
                   "random", "re", "numpy", "sympy", "mpmath", "scipy", "scipy.special", "scipy.optimize",
                   "scipy.integrate", "scipy.linalg")

# Trusted warm-up run once in each zygote before it forks: first calls into sympy/numpy are slow (caches, lazy
# imports), so every executor inherits them warm.
DEFAULT_WARMUP = """
import numpy as np
import sympy
from sympy import symbols, solve, simplify, Rational, sqrt, factorint, sin, cos, pi, N, expand, factor
x, y = symbols('x y')
solve(x**2 - 5*x + 6, x)
solve([x + y - 3, x - y - 1], [x, y])
simplify(sin(x)**2 + cos(x)**2)
expand((x + 1)**3); factor(x**2 - 1)
str(Rational(1, 3) + sqrt(2)); N(pi, 15); factorint(360)
str(np.arange(10).mean()); np.linalg.norm(np.ones(3)); np.linalg.solve(np.eye(2), np.ones(2))
"""

# Unprivileged uids for jailed workers: far above login users and the usual subuid ranges. Every worker started by
# this process takes the next of `_UID_SLOTS` uids that no live worker holds (`_UidLease`).
_UID_BASE = 3_900_000_000
_UID_SLOTS = 1024
# Deadlines reach poll() in milliseconds as a C int (2**31 - 1 ms is 24.8 days): timeout_s + host_grace_s stays below.
_MAX_SECONDS = 1e6
# Sizes in MiB and counts fit setrlimit's 64-bit values (and bwrap's --size in bytes) with room to spare.
_MAX_MB = 2**40
_MAX_COUNT = 2**40


class _UidLease:
  """A worker uid that no other live worker of this process holds, until `release`.

  Workers never share a uid: at the rlimits-only level it is all that keeps one worker's programs out of another's
  work dir, and RLIMIT_NPROC budgets count per uid (also across pools).
  """

  _lock = threading.Lock()
  _in_use: set[int] = set()
  _next = itertools.count()  # taken in turn, so a uid just released is the last to come back

  def __init__(self):
    with self._lock:
      for _ in range(_UID_SLOTS):
        slot = next(self._next) % _UID_SLOTS
        if slot not in self._in_use:
          break
      else:
        raise RuntimeError(f"more than {_UID_SLOTS} sandbox workers at once in one process")
      self._in_use.add(slot)
    self.slot = slot
    self._held = True

  def release(self) -> None:
    """Idempotent."""
    with self._lock:
      if self._held:
        self._held = False
        self._in_use.discard(self.slot)


class _Task:
  __slots__ = ("id", "code", "future", "started")

  def __init__(self, task_id: int, code: str):
    self.id = task_id
    self.code = code
    self.future: concurrent.futures.Future = concurrent.futures.Future()
    self.started = False


class _TaskQueue:
  """FIFO of tasks shared by the worker threads; failed workers push their unstarted tasks back in front.

  `free_workers()` counts the live workers with nothing in flight; pipelining leaves that many queued tasks to them.
  """

  def __init__(self, free_workers: Callable[[], int]):
    self._items: collections.deque[_Task] = collections.deque()
    self._cond = threading.Condition()
    self._free_workers = free_workers
    self.closed = False
    self._closed_because = "SandboxPool is closed"

  def put(self, tasks: Sequence[_Task]) -> None:
    """Appends `tasks`; raises RuntimeError once the queue is closed (a put racing `close` must not be lost)."""
    with self._cond:
      if self.closed:
        raise RuntimeError(self._closed_because)
      self._items.extend(tasks)
      self._cond.notify_all()

  def put_front(self, tasks: Sequence[_Task]) -> None:
    with self._cond:
      self._items.extendleft(reversed(list(tasks)))
      self._cond.notify_all()

  def take(self, block: bool) -> _Task | None:
    """Next task. `block=False` is a pipelining request: it yields only tasks no free worker is there for.

    A free worker is not only one blocked here: counting those alone, a batch submitted on a result (whose worker's
    thread was not back yet) was pipelined onto the other worker, one program behind another, with a worker free.
    """
    with self._cond:
      if not block:
        if self.closed or len(self._items) <= self._free_workers():
          return None
        return self._items.popleft()
      while not self._items and not self.closed:
        self._cond.wait()
      if self.closed:
        return None
      return self._items.popleft()

  def close(self, because: str | None = None) -> list[_Task]:
    """Closes the queue (later `put`s raise RuntimeError(`because`), if given); returns the tasks it held."""
    with self._cond:
      if because is not None and not self.closed:
        self._closed_because = because
      self.closed = True
      left = list(self._items)
      self._items.clear()
      self._cond.notify_all()
    return left


class _WorkerProcess:
  """One jailed zygote as seen from the host."""

  def __init__(self, popen: subprocess.Popen, stderr_file, cleanup_dirs: list[str], max_frame: int,
               uid_lease: _UidLease | None):
    self.popen = popen
    self.stderr_file = stderr_file
    self.cleanup_dirs = cleanup_dirs
    self.uid_lease = uid_lease
    self.kill_uid: int | None = None  # rlimits-only as root: the worker's uid, whose processes `stop` kills
    self.reader = _protocol.FrameReader(max_frame)
    self.pending: list = []
    self.info: dict = {}
    self.inflight: collections.deque[_Task] = collections.deque()  # sent, result not yet back; its thread's deque

  def send(self, obj: dict, deadline: float) -> None:
    """Writes a frame while taking in the worker's replies (into `pending`, for `recv`).

    A blocking write could wait forever: the zygote reads no new tasks while it writes a reply larger than the pipe,
    and it would be waiting for us to read. Raises TimeoutError at `deadline` (a hung worker), OSError when the
    worker is gone, `ProtocolError` for a bad reply.
    """
    data = memoryview(_protocol.encode(obj))
    out_fd, in_fd = self.popen.stdin.fileno(), self.popen.stdout.fileno()
    while data:
      left = deadline - time.monotonic()
      if left <= 0:
        raise TimeoutError
      readable, writable = _protocol.wait([in_fd], [out_fd], left)
      if readable:
        chunk = os.read(in_fd, 1 << 16)
        if not chunk:
          raise BrokenPipeError("the worker closed its pipe")
        self.pending.extend(self.reader.feed(chunk))
      if writable:  # a pipe that polls writable takes PIPE_BUF bytes without blocking
        data = data[os.write(out_fd, data[:select.PIPE_BUF]):]

  def recv(self, deadline: float | None) -> Any:
    return _protocol.read_frame(self.popen.stdout.fileno(), self.reader, self.pending, deadline)

  def signal_kill(self) -> None:
    """SIGKILLs the worker's process group (thread-safe: only sends a signal)."""
    try:
      os.killpg(self.popen.pid, signal.SIGKILL)
    except OSError:
      pass

  def stderr_tail(self, n: int = 2000) -> str:
    try:
      self.stderr_file.seek(0, os.SEEK_END)
      size = self.stderr_file.tell()
      self.stderr_file.seek(max(0, size - n))
      return self.stderr_file.read().decode(errors="replace")
    except (OSError, ValueError):
      return ""

  def stop(self, graceful: bool) -> None:
    if graceful and self.popen.poll() is None:
      try:
        self.popen.stdin.close()  # the zygote sees EOF, kills its executors and exits
        self.popen.wait(timeout=2.0)
      except (OSError, subprocess.TimeoutExpired):
        pass
    self.signal_kill()
    self.popen.wait()
    for f in (self.popen.stdin, self.popen.stdout, self.stderr_file):
      try:
        f.close()
      except OSError:
        pass
    if self.kill_uid is not None:
      # Before the wipe, which root runs: no process of the program's may swap a directory for a symlink under it.
      _kill_uid(self.kill_uid)
    for d in self.cleanup_dirs:
      _worker.wipe_dir(d)  # not shutil.rmtree, which recurses: a program can nest directories past the limit
      try:
        os.rmdir(d)
      except OSError:
        pass
    if self.uid_lease is not None:  # after the wait: none of the worker's processes runs under the uid any more
      self.uid_lease.release()


class _Pool:
  """What `SandboxPool` runs on: its worker threads hold this object, never the `SandboxPool` (see there)."""

  def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 1024,
               max_output_chars: int = 1024, output_mode: str = "rstar", *, isolation: str = "auto",
               preload: Sequence[str] = DEFAULT_PRELOAD, warmup: str = DEFAULT_WARMUP, reuse_limit: int = 100,
               pipeline_depth: int = 2,
               max_code_chars: int = 1_000_000, static_check_max_chars: int = 65536, fsize_mb: int = 16,
               nofile: int = 256, nproc: int = 64, tmp_mb: int = 64, seccomp: bool = True,
               startup_timeout_s: float = 120.0, host_grace_s: float | None = None):
    """Starts `num_workers` jailed workers and waits until they are warm.

    Args:
      num_workers: worker processes (each runs one program at a time).
      timeout_s: wall-clock limit per program.
      memory_mb: address space a program may add on top of the warm worker's footprint.
      max_output_chars: observation/stdout cut (rStar: 1024 -> head 512 + '...' + tail 512); with several print
        points each piece is cut so, and their concatenation at 16 times it (`sandbox.observation`, rule 5).
      output_mode: "rstar" (official interpreter rules) or "plain"; see `sandbox.observation`.
      isolation: "auto" (strongest available), "bwrap", "unshare" or "rlimits-only".
      preload: modules every worker imports once before forking executors (missing ones are skipped).
      warmup: trusted code each worker runs once after preloading, so executors start with warm library caches
        ("" to skip; failures are ignored).
      reuse_limit: programs a reused executor serves before it is replaced.
      pipeline_depth: programs queued per worker ahead of the running one.
      max_code_chars: longer programs get a ValueError result without running.
      static_check_max_chars: longer programs always get a single-use executor.
      fsize_mb, nofile, nproc, tmp_mb: per-program file size, open files, processes (non-root uid only), and the
        size of the private /tmp and /dev/shm.
      seccomp: install the syscall filter in executors (x86-64).
      startup_timeout_s: how long to wait for workers to become ready.
      host_grace_s: the host kills a worker that has not answered `timeout_s + host_grace_s` after a program
        became its head of line (default: 2 s + timeout_s / 2).

    Raises:
      ValueError: a bad argument (named).
      TypeError: `preload` is no sequence of module names, `warmup` no str or `seccomp` no bool.
      RuntimeError: the requested isolation is unavailable, or workers failed to start.
    """
    # Checked before any comparison: a str or None failed as Python's "'<' not supported between ...", a float in
    # range() or int(), both naming nothing.
    for name, value, low in (("num_workers", num_workers, 1), ("memory_mb", memory_mb, 16),
                             ("max_output_chars", max_output_chars, 2), ("reuse_limit", reuse_limit, 1),
                             ("pipeline_depth", pipeline_depth, 1), ("max_code_chars", max_code_chars, 1),
                             ("static_check_max_chars", static_check_max_chars, 0), ("fsize_mb", fsize_mb, 0),
                             ("nofile", nofile, 1), ("nproc", nproc, 1),
                             ("tmp_mb", tmp_mb, 1)):  # bwrap refuses a tmpfs of 0 bytes, once the worker started
      if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    # Larger limits were accepted and failed once workers started, naming nothing: setrlimit overflowed or refused a
    # value above the hard limit an executor (no root, no CAP_SYS_RESOURCE) inherits ("executors keep dying at
    # start-up"), and bwrap refused 2**70 bytes of /tmp.
    for name, value, high in (("memory_mb", memory_mb, _hard_limit(resource.RLIMIT_AS, _MAX_MB, 1 << 20)),
                              ("fsize_mb", fsize_mb, _hard_limit(resource.RLIMIT_FSIZE, _MAX_MB, 1 << 20)),
                              ("nofile", nofile, _hard_limit(resource.RLIMIT_NOFILE, _nr_open(), 1)),
                              ("nproc", nproc, _hard_limit(resource.RLIMIT_NPROC, _MAX_COUNT, 1)),
                              ("tmp_mb", tmp_mb, _MAX_MB), ("reuse_limit", reuse_limit, _MAX_COUNT)):
      if value > high:
        raise ValueError(f"{name} must be at most {high} (this host's hard limit, or what setrlimit and bwrap can "
                         f"take), got {value!r}")
    # An infinite deadline made every executor die at start-up, and one past _MAX_SECONDS overflowed poll() at the
    # first program ("SandboxPool closed before the program finished"); a negative grace made the host kill a worker
    # that was still within its own deadline.
    for name, value in (("timeout_s", timeout_s), ("startup_timeout_s", startup_timeout_s)):
      if not _is_number(value) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
    if host_grace_s is not None and (not _is_number(host_grace_s) or not 0 <= host_grace_s < float("inf")):
      raise ValueError(f"host_grace_s must be None or >= 0 and finite, got {host_grace_s!r}")
    for name, value in (("timeout_s", timeout_s), ("startup_timeout_s", startup_timeout_s),
                        ("host_grace_s", host_grace_s or 0)):
      if value > _MAX_SECONDS:
        raise ValueError(f"{name} must be at most {_MAX_SECONDS:g} s (deadlines reach poll() in milliseconds), got "
                         f"{value!r}")
    if isinstance(preload, collections.abc.Iterable) and not isinstance(preload, str):
      preload = tuple(preload)  # once: a generator checked below was empty by the time the workers got it
    if not isinstance(preload, tuple) or not all(isinstance(m, str) for m in preload):
      # A string was iterated letter by letter: modules "s", "y", ... are missing, skipped, and nothing preloaded.
      raise TypeError(f"preload must be a sequence of module names, got {preload!r}")
    if not isinstance(warmup, str):  # anything else was skipped in silence (warm-up failures are ignored)
      raise TypeError(f'warmup must be a str ("" to skip), got {warmup!r}')
    if not isinstance(seccomp, bool):  # bool("no") is True
      raise TypeError(f"seccomp must be a bool, got {seccomp!r}")
    if output_mode not in observation.OUTPUT_MODES:
      raise ValueError(f"output_mode must be one of {observation.OUTPUT_MODES}, got {output_mode!r}")
    self.num_workers = num_workers
    self.timeout_s = float(timeout_s)
    self.memory_mb = int(memory_mb)
    self.max_output_chars = int(max_output_chars)
    self.output_mode = output_mode
    self._depth = pipeline_depth
    self._grace = (2.0 + self.timeout_s / 2) if host_grace_s is None else float(host_grace_s)
    self._startup_timeout = startup_timeout_s
    level, skipped = isolation_lib.choose(isolation)
    if isolation == "auto" and level != "bwrap":
      warnings.warn(f"sandbox isolation fell back to {level!r}: {skipped}", RuntimeWarning, stacklevel=3)
    self.isolation_level = level
    self._as_root = os.geteuid() == 0
    closed = isolation_lib.closed_to_others() if level == "rlimits-only" and self._as_root else None
    if closed is not None:
      warnings.warn(f"sandbox isolation 'rlimits-only': programs run under an unprivileged uid that cannot enter "
                    f"{closed[0]} (on the way to {closed[1]}), so importing any module the workers did not preload "
                    f"fails with ModuleNotFoundError (e.g. scipy.stats); install Python where every user can read "
                    f"it, or use the bwrap or unshare level", RuntimeWarning, stacklevel=3)
    self._uid_base = _UID_BASE + (os.getpid() % 100_000) * _UID_SLOTS
    self._worker_cfg = {
        "timeout_s": self.timeout_s, "memory_mb": self.memory_mb, "max_output_chars": self.max_output_chars,
        "output_mode": output_mode, "reuse_limit": int(reuse_limit), "max_code_chars": int(max_code_chars),
        "static_check_max_chars": int(static_check_max_chars), "fsize_mb": int(fsize_mb), "nofile": int(nofile),
        "nproc": int(nproc), "seccomp": bool(seccomp), "preload": list(preload),
        "warmup": warmup,
    }
    self._tmp_bytes = int(tmp_mb) << 20
    self._queue = _TaskQueue(self._free_workers)
    self._ids = itertools.count()
    self._lock = threading.Lock()
    self._procs: dict[int, _WorkerProcess] = {}
    self._startup_errors: list[str] = []
    self._ready = threading.Semaphore(0)
    self._closed = False
    self._live_slots = num_workers
    self.isolation_details: dict = {"level": level, "skipped": skipped}
    self._threads = [threading.Thread(target=self._serve, args=(slot,), name=f"sandbox-worker-{slot}", daemon=True)
                     for slot in range(num_workers)]
    for t in self._threads:
      t.start()
    deadline = time.monotonic() + startup_timeout_s
    try:
      for _ in range(num_workers):
        if not self._ready.acquire(timeout=max(0.0, deadline - time.monotonic())):
          self._startup_errors.append("timed out waiting for workers to start")
          break
        if self._startup_errors:
          break
    except BaseException:  # Ctrl-C while waiting: no caller holds the pool to close the workers already started
      self.close()
      raise
    if self._startup_errors:
      self.close()
      raise RuntimeError(f"sandbox workers failed to start ({level}): {self._startup_errors[0]}")

  # -- public API ---------------------------------------------------------------------------------------------------

  def submit(self, programs: Sequence[str]) -> list[concurrent.futures.Future]:
    """Queues programs; returns one Future[SandboxResult] per program, in input order.

    Done-callbacks run on the pool's worker threads (as with `concurrent.futures.ThreadPoolExecutor`): a callback
    may `submit` more programs, but must not wait for results (`run`, `Future.result`), which can deadlock a pool
    whose workers are all busy running callbacks.
    """
    if isinstance(programs, str):
      raise TypeError("programs must be a sequence of str, not a single str")
    tasks = []
    for i, code in enumerate(programs):
      if not isinstance(code, str):
        raise TypeError(f"programs[{i}] must be str, got {type(code).__name__}")
      tasks.append(_Task(next(self._ids), code))
    if self._closed:
      raise RuntimeError("SandboxPool is closed")
    # Too long for the worker's frame limit once JSON-escaped (up to 12 bytes a char): answered here, as the worker
    # would, instead of a frame that kills the worker.
    limit = self._worker_cfg["max_code_chars"]
    queued = [t for t in tasks if len(t.code) <= limit]
    self._queue.put(queued)  # raises if `close` ran since the check above
    for t in tasks:
      if len(t.code) > limit and t.future.set_running_or_notify_cancel():
        err = f"ValueError: program too long ({len(t.code)} characters > {limit})"
        t.future.set_result(SandboxResult(observation=err, stdout="", error=err, timed_out=False,
                                          memory_exceeded=False, killed_by_signal=None, duration_s=0.0))
    return [t.future for t in tasks]

  def close(self) -> None:
    """Stops the workers and reaps every process; queued programs are cancelled, running ones fail."""
    if self._closed:
      return
    self._closed = True
    for task in self._queue.close():
      _abandon(task)
    with self._lock:
      procs = list(self._procs.values())
    for proc in procs:
      if self._busy(proc):
        proc.signal_kill()  # a program is running: do not wait for it
    for t in self._threads:
      if t is not threading.current_thread():  # `close` from a future's done-callback runs on a worker thread
        t.join()

  def worker_pids(self) -> list[int]:
    """Host pids of the worker processes (bwrap / unshare / python) currently alive."""
    with self._lock:
      return [p.popen.pid for p in self._procs.values() if p.popen.poll() is None]

  # -- worker threads -------------------------------------------------------------------------------------------------

  @staticmethod
  def _busy(proc: _WorkerProcess) -> bool:
    return bool(proc is not None and proc.inflight)

  def _spawn(self, slot: int) -> _WorkerProcess:
    uid_lease = _UidLease() if self._as_root else None
    try:
      return self._start_worker(uid_lease)
    except BaseException:
      if uid_lease is not None:
        uid_lease.release()
      raise

  def _start_worker(self, uid_lease: _UidLease | None) -> _WorkerProcess:
    cfg = dict(self._worker_cfg)
    cleanup: list[str] = []
    uid = None if uid_lease is None else self._uid_base + uid_lease.slot
    cfg.update(uid=uid, gid=uid)
    env = dict(isolation_lib.JAIL_ENV)
    # What the jail binds below its private /tmp (a Python under the host's /tmp) survives the wipes.
    keep = [dst for _, dst in isolation_lib.jail_layout()[0] if dst.startswith("/tmp/")]
    if self.isolation_level == "bwrap":
      cfg.update(workdir="/tmp", wipe_dirs=["/tmp", "/dev/shm"], keep=keep)
      argv = isolation_lib.bwrap_argv(isolation_lib.worker_argv(json.dumps(cfg)), tmp_bytes=self._tmp_bytes,
                                      shm_bytes=self._tmp_bytes, as_root=self._as_root)
      env.update(HOME="/tmp", TMPDIR="/tmp")
    elif self.isolation_level == "unshare":
      # The new root is a tmpfs mounted over /sys inside the worker's private mount namespace: an always-present
      # directory that is never a bind source, so nothing is created on the host (nothing to leak on SIGKILL).
      newroot = "/sys"
      binds, symlinks = isolation_lib.jail_layout()
      cfg.update(workdir="/tmp", wipe_dirs=["/tmp", "/dev/shm"], keep=keep,
                 mounts={"newroot": newroot, "binds": binds, "symlinks": symlinks, "tmp_bytes": self._tmp_bytes,
                         "shm_bytes": self._tmp_bytes})
      # The worker imports this package before it builds the jail (which binds it at JAIL_PACKAGE_PARENT), so it
      # starts from the host path; every module it needs is imported before the chroot.
      argv = isolation_lib.UNSHARE_PREFIX + isolation_lib.worker_argv(
          json.dumps(cfg), os.path.dirname(isolation_lib.PACKAGE_DIR))
      env.update(HOME="/tmp", TMPDIR="/tmp")
    else:
      workdir = tempfile.mkdtemp(prefix="rstar_sandbox_")
      cleanup.append(workdir)
      if uid is not None:
        # Root keeps the entry and the worker's group gets the use of it: in the sticky /tmp only the owner may
        # rename or remove it (a program moved it, and the next program saw its files; or removed it, and no later
        # program could write a file), or change its mode.
        os.chown(workdir, 0, uid)
        os.chmod(workdir, 0o770)
      else:
        os.chmod(workdir, 0o700)
      cfg.update(workdir=workdir, wipe_dirs=[workdir], host_pid=os.getpid(), remove_workdir=True,
                 nproc_shared=uid is None)  # no uid of its own: RLIMIT_NPROC counts the host user's processes too
      argv = isolation_lib.worker_argv(json.dumps(cfg), os.path.dirname(isolation_lib.PACKAGE_DIR))
      env.update(HOME=workdir, TMPDIR=workdir)
    stderr_file = tempfile.TemporaryFile(prefix="rstar_sandbox_stderr_")
    try:
      popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_file, env=env,
                               cwd="/", start_new_session=True, close_fds=True)
    except OSError:
      stderr_file.close()
      for d in cleanup:
        shutil.rmtree(d, ignore_errors=True)
      raise
    proc = _WorkerProcess(popen, stderr_file, cleanup, 256 * self.max_output_chars + (1 << 20), uid_lease)
    if self.isolation_level == "rlimits-only":
      proc.kill_uid = uid  # no PID namespace: a process a program forked off (no filter) is found by its uid
    try:
      frame = proc.recv(time.monotonic() + self._startup_timeout)
    except (TimeoutError, _protocol.ProtocolError) as e:
      frame = None
      reason = f"{type(e).__name__}"
    else:
      reason = "exited"
    if not isinstance(frame, dict) or not frame.get("ready"):
      proc.signal_kill()
      popen.wait()
      stderr = proc.stderr_tail()  # before `stop` closes the file
      proc.stop(graceful=False)
      raise RuntimeError(f"worker {reason} before it was ready (exit {popen.returncode}); stderr: {stderr}")
    proc.info = frame
    return proc

  def _result_from_frame(self, frame: dict) -> SandboxResult:
    def text(key: str, limit: int) -> str:
      return observation.truncate(observation.clean_text(str(frame.get(key) or "")), limit)
    error = frame.get("error")
    sig = frame.get("killed_by_signal")
    return SandboxResult(
        observation=text("observation", observation.observation_limit(self.max_output_chars, final=True)),
        stdout=text("stdout", self.max_output_chars),
        error=None if error is None else observation.clean_text(str(error)),
        timed_out=bool(frame.get("timed_out")), memory_exceeded=bool(frame.get("memory_exceeded")),
        killed_by_signal=int(sig) if isinstance(sig, int) else None,
        duration_s=float(frame.get("duration_s") or 0.0))

  def _failure_result(self, timed_out: bool, duration: float) -> SandboxResult:
    if timed_out:
      err = f"TimeoutError: execution exceeded {self.timeout_s}s"
    else:
      err = "RuntimeError: sandbox worker died unexpectedly"
    return SandboxResult(observation=err, stdout="", error=err, timed_out=timed_out, memory_exceeded=False,
                         killed_by_signal=None, duration_s=duration)

  def _serve(self, slot: int) -> None:
    """Worker thread: (re)starts the slot's worker and feeds it tasks until the pool closes."""
    proc: _WorkerProcess | None = None
    inflight: collections.deque[_Task] = collections.deque()
    head_since = 0.0
    announced = False
    failures = 0
    try:
      while not self._closed:
        if proc is None:
          try:
            proc = self._spawn(slot)
          except Exception as e:  # pylint: disable=broad-except
            failures += 1
            if not announced or failures >= 3:
              self._startup_errors.append(str(e))
              if not announced:
                self._ready.release()
                return
              self._slot_lost(f"RuntimeError: sandbox worker could not be restarted: {e}")
              return
            time.sleep(0.5 * failures)
            continue
          failures = 0
          proc.inflight = inflight
          with self._lock:
            self._procs[slot] = proc
            if not announced:
              self.isolation_details.update(seccomp=proc.info.get("seccomp"), uid=proc.info.get("uid"),
                                            preloaded=proc.info.get("preloaded"))
          if not announced:
            announced = True
            self._ready.release()
        if not inflight and proc.popen.poll() is not None:
          # The jail's outer process died (a zygote may answer a little longer): replace the worker now.
          proc.stop(graceful=False)
          with self._lock:
            self._procs.pop(slot, None)
          proc = None
          continue
        while len(inflight) < self._depth:
          task = self._queue.take(block=not inflight)
          if task is None:
            break
          if not task.started:
            if not task.future.set_running_or_notify_cancel():
              continue
            task.started = True
          if not inflight and proc.popen.poll() is not None:
            # The worker died while idle (killed from outside): the task never reached it, so it must not get the
            # blame. It goes back in front and the top of the loop replaces the worker.
            self._queue.put_front([task])
            break
          if not inflight:
            head_since = time.monotonic()
          inflight.append(task)
          try:
            proc.send({"id": task.id, "code": task.code}, head_since + self.timeout_s + self._grace)
          except TimeoutError:  # hung: recv below times out at once and blames the head, as for any hung worker
            break
          except (OSError, _protocol.ProtocolError):
            # The worker died or sent nonsense: this task never reached it (recv blames the head, if any).
            inflight.pop()
            self._queue.put_front([task])
            proc.signal_kill()
            proc.popen.wait()
            break
        if not inflight:
          continue
        try:
          frame = proc.recv(head_since + self.timeout_s + self._grace)
          hung = False
        except TimeoutError:
          frame, hung = None, True
        except (_protocol.ProtocolError, OSError):
          frame, hung = None, False
        if isinstance(frame, dict) and frame.get("id") == inflight[0].id:
          task = inflight.popleft()
          task.future.set_result(self._result_from_frame(frame))
          head_since = time.monotonic()
          continue
        # The worker died, hung or spoke nonsense: the head task gets the blame, the rest go back to the queue.
        proc.signal_kill()
        proc.stop(graceful=False)
        with self._lock:
          self._procs.pop(slot, None)
        proc = None
        task = inflight.popleft()
        if self._closed:
          _abandon(task)
        else:
          task.future.set_result(self._failure_result(hung, time.monotonic() - head_since))
          self._queue.put_front(list(inflight))
          inflight.clear()
    finally:
      for task in inflight:
        _abandon(task)
      for task in self._queue.close() if self._closed else []:
        _abandon(task)
      if proc is not None:
        proc.stop(graceful=True)
        with self._lock:
          self._procs.pop(slot, None)

  def _free_workers(self) -> int:
    """Live workers with nothing in flight. A worker's in-flight deque empties before its result is published, so a
    batch submitted on that result finds the worker counted here (taken under the queue's lock; never the other
    way round)."""
    with self._lock:
      return sum(not proc.inflight for proc in self._procs.values())

  def _slot_lost(self, err: str) -> None:
    """A slot gave up restarting; when none is left, every queued program gets `err` and later `submit`s raise it."""
    with self._lock:
      self._live_slots -= 1
      if self._live_slots > 0:
        return
    for task in self._queue.close(because=f"no sandbox worker left: {err}"):
      if task.future.set_running_or_notify_cancel() if not task.started else True:
        task.future.set_result(SandboxResult(observation=err, stdout="", error=err, timed_out=False,
                                             memory_exceeded=False, killed_by_signal=None, duration_s=0.0))


class SandboxPool:
  """A pool of jailed, pre-warmed Python workers (design: `sandbox._worker`; levels: `sandbox.isolation`).

  Threads may share a pool: `run` and `submit` from several threads at once share the workers, and each caller gets
  the results of its own programs.

  Constructor arguments: see `_Pool.__init__`. Other attributes (`num_workers`, `timeout_s`, ...) are the `_Pool`'s.
  A pool dropped without `close` is closed once it is collected: its worker threads hold the inner `_Pool`, never
  this object (holding it, they kept a pool nobody used alive for good, with a thread, three fds and a warm jailed
  interpreter per worker).

  Attributes:
    isolation_level: "bwrap", "unshare" or "rlimits-only" (what is active; see `sandbox.isolation`).
    isolation_details: the level, why stronger levels were skipped, whether the seccomp filter is active, the
      worker uid and the preloaded modules.
  """

  def __init__(self, *args, **kwargs):
    pool = _Pool(*args, **kwargs)
    object.__setattr__(self, "_pool", pool)
    finalizer = weakref.finalize(self, pool.close)
    finalizer.atexit = False  # at exit, the workers stop as they do when the host is killed (module docstring)
    object.__setattr__(self, "_finalizer", finalizer)

  def __getattr__(self, name: str) -> Any:
    if name == "_pool":  # not set: the constructor failed
      raise AttributeError(name)
    return getattr(self._pool, name)

  def __setattr__(self, name: str, value: Any) -> None:
    setattr(self._pool, name, value)

  def submit(self, programs: Sequence[str]) -> list[concurrent.futures.Future]:
    return self._pool.submit(programs)

  submit.__doc__ = _Pool.submit.__doc__

  def run(self, programs: Sequence[str]) -> list[SandboxResult]:
    """Runs programs across the workers; results in input order.

    Interrupted (Ctrl-C) or failing while it waits, it cancels its programs that have not started, so the pool does
    not go on running them for nobody ahead of the next call's.
    """
    futures = self.submit(programs)
    try:
      return [f.result() for f in futures]
    except BaseException:
      for f in futures:
        f.cancel()
      raise

  def close(self) -> None:
    self._pool.close()

  close.__doc__ = _Pool.close.__doc__

  def worker_pids(self) -> list[int]:
    return self._pool.worker_pids()

  worker_pids.__doc__ = _Pool.worker_pids.__doc__

  def __enter__(self) -> "SandboxPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


SandboxPool.__init__.__doc__ = _Pool.__init__.__doc__
SandboxPool.__init__.__signature__ = inspect.signature(_Pool.__init__)  # for help() and IDEs: the real arguments


def _kill_uid(uid: int) -> None:
  """SIGKILLs every live process whose real uid is `uid` (this process's own worker uid: nothing else runs under it).

  Rounds until one finds none: a process may fork between the listing and the kill (not once SIGKILL is pending).
  """
  for _ in range(1000):
    found = False
    for pid, fields in _worker.processes_of_uid(uid):
      if fields.get(b"State", b"").startswith(b"Z"):
        continue
      found = True
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        continue  # gone meanwhile
    if not found:
      return
    time.sleep(0.001)


def _hard_limit(which: int, cap: int, unit: int) -> int:
  """The largest setting (in `unit`s) an executor can set `which` to: the inherited hard limit, at most `cap`."""
  hard = resource.getrlimit(which)[1]
  return cap if hard == resource.RLIM_INFINITY else min(cap, hard // unit)


def _nr_open() -> int:
  """The kernel's ceiling on RLIMIT_NOFILE (fs.nr_open; 1048576 by default)."""
  try:
    with open("/proc/sys/fs/nr_open") as f:
      return int(f.read())
  except (OSError, ValueError):
    return 1 << 20


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _abandon(task: _Task) -> None:
  """The pool is closing: a task that never started is cancelled, a started one fails."""
  if task.future.done() or (not task.started and task.future.cancel()):
    return
  try:
    task.future.set_exception(RuntimeError("SandboxPool closed before the program finished"))
  except concurrent.futures.InvalidStateError:
    pass
