"""Pool behaviour: ordering, futures, cancellation, bad input, recovery from dead workers, isolation levels."""

import concurrent.futures
import gc
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import pytest

from sandbox import SandboxPool, SandboxResult
from sandbox import isolation
from sandbox import pool as pool_lib

LIGHT = dict(preload=("math",), warmup="")


@pytest.fixture(scope="module")
def pool():
  with SandboxPool(num_workers=2, timeout_s=2.0, **LIGHT) as p:
    yield p


def test_sympy_dummies_print_the_same_in_every_pool():
  """A program's observation must not depend on the pool (a search replays in a fresh process): sympy drew the base
  of its `Dummy` indices from the OS at import, and a Dummy hashes by its index, so a set of Dummies printed in
  another order in every pool and `srepr` another index. Three pools of fresh executors (`reuse_limit=1`) print the
  same, and it is the index a fixed base gives."""
  from sandbox import _worker  # pylint: disable=import-outside-toplevel

  programs = ["from sympy import Dummy\nprint(list({Dummy(s) for s in 'abcdefgh'}))",
              "from sympy import Dummy, srepr\nprint(srepr(Dummy('k')))"]
  seen = []
  for _ in range(3):
    with SandboxPool(num_workers=1, timeout_s=10.0, reuse_limit=1) as sympy_pool:
      seen.append([r.observation for r in sympy_pool.run(programs)])
  assert seen[0] == seen[1] == seen[2]
  index = int(re.fullmatch(r"Dummy\('k', dummy_index=(\d+)\)\n", seen[0][1]).group(1))
  assert _worker._DUMMY_BASE_INDEX <= index < _worker._DUMMY_BASE_INDEX + 10**5  # pylint: disable=protected-access


def test_results_in_input_order(pool):
  programs = [f"import time\ntime.sleep({0.05 * (i % 3)})\nprint({i} * {i})" for i in range(12)]
  results = pool.run(programs)
  assert [r.observation for r in results] == [f"{i * i}\n" for i in range(12)]
  assert all(isinstance(r, SandboxResult) and r.ok for r in results)


def test_submit_returns_futures(pool):
  futures = pool.submit(["print('a')", "print('b')"])
  assert all(isinstance(f, concurrent.futures.Future) for f in futures)
  assert [f.result(timeout=30).observation for f in futures] == ["a\n", "b\n"]
  assert pool.run([]) == []


def test_work_is_spread_over_workers(pool):
  start = time.monotonic()
  results = pool.run(["import time\ntime.sleep(0.5)\nprint(1)"] * 4)
  assert all(r.ok for r in results)
  assert time.monotonic() - start < 1.9  # 4 x 0.5 s on 2 workers: ~1 s, not 2 s


def test_a_batch_submitted_on_a_result_goes_to_the_free_worker(monkeypatch):
  # A batch submitted as soon as a result is published (a done callback, or a caller woken by it) found that
  # worker's thread not yet back in the queue: the other worker took the first program and, seeing no idle thread,
  # pipelined the second behind it, so two busy loops ran one after the other (the second ended a full timeout
  # late) while a worker stood free.
  sent, second_sent = [], threading.Event()
  send = pool_lib._WorkerProcess.send

  def recording_send(self, obj, deadline):
    sent.append((id(self), obj["id"]))
    if len(sent) == 4:
      second_sent.set()
    return send(self, obj, deadline)

  monkeypatch.setattr(pool_lib._WorkerProcess, "send", recording_send)
  with SandboxPool(num_workers=2, timeout_s=5.0, **LIGHT) as pool:
    pool.run(["print(1)"])  # sends 1; both workers are up (the pool waits for them)
    second = []

    def submit_next(_):
      # Runs in the finishing worker's thread, before it goes back to the queue; it waits (0.5 s at most) for the
      # other worker, busy for 1.5 s with the first program, to pipeline the second, which it must not.
      second.extend(pool.submit(["import time\ntime.sleep(1.5)\nprint(2)", "print(3)"]))
      second_sent.wait(0.5)

    # (The program sleeps so that the callback is added before it ends and runs in the worker's thread.)
    pool.submit(["import time\ntime.sleep(0.2)\nprint(0)"])[0].add_done_callback(submit_next)
    while len(second) < 2:
      time.sleep(0.01)
    assert [f.result(timeout=30).observation for f in second] == ["2\n", "3\n"]
  workers = [proc for proc, _ in sent[-2:]]
  assert workers[0] != workers[1], sent


def test_cancelled_futures_do_not_run(pool):
  futures = pool.submit(["import time\ntime.sleep(0.3)"] * 2 + ["print('x')"] * 20)
  cancelled = [f.cancel() for f in futures[2:]]
  for f, was_cancelled in zip(futures[2:], cancelled):
    assert f.cancelled() == was_cancelled
  assert futures[0].result(timeout=30).ok


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="num_workers"):
    SandboxPool(num_workers=0)
  with pytest.raises(ValueError, match="output_mode"):
    SandboxPool(output_mode="official")
  with pytest.raises(ValueError, match="timeout_s"):
    SandboxPool(timeout_s=0)
  # Each of these started workers: an infinite deadline failed as "executors keep dying at start-up" (a worker
  # traceback), 1.5 workers as range()'s "'float' object cannot be interpreted as an integer", a NaN memory limit
  # as int()'s "cannot convert float NaN to integer".
  with pytest.raises(ValueError, match=r"timeout_s must be > 0 and finite, got inf"):
    SandboxPool(timeout_s=float("inf"))
  with pytest.raises(ValueError, match=r"num_workers must be an integer >= 1, got 1.5"):
    SandboxPool(num_workers=1.5)
  with pytest.raises(ValueError, match=r"memory_mb must be an integer >= 16, got nan"):
    SandboxPool(memory_mb=float("nan"))
  with pytest.raises(ValueError, match=r"pipeline_depth must be an integer >= 1, got 1.5"):
    SandboxPool(pipeline_depth=1.5)
  # These failed as Python's bare "'<' not supported between instances of 'int' and 'str'" or int()'s "argument must
  # be ... not 'NoneType'", naming no argument; a negative grace made the host kill a worker before its own deadline.
  with pytest.raises(ValueError, match=r"timeout_s must be > 0 and finite, got '5'"):
    SandboxPool(timeout_s="5")
  with pytest.raises(ValueError, match=r"host_grace_s must be None or >= 0 and finite, got -1"):
    SandboxPool(host_grace_s=-1)
  with pytest.raises(ValueError, match=r"startup_timeout_s must be > 0 and finite, got None"):
    SandboxPool(startup_timeout_s=None)
  with pytest.raises(ValueError, match=r"static_check_max_chars must be an integer >= 0, got None"):
    SandboxPool(static_check_max_chars=None)
  with pytest.raises(ValueError, match=r"tmp_mb must be an integer >= 1, got 0"):
    SandboxPool(tmp_mb=0)
  with pytest.raises(ValueError, match=r"max_code_chars must be an integer >= 1, got 2.5"):
    SandboxPool(max_code_chars=2.5)
  # A single module name was preloaded letter by letter ("s", "y", "m", ...: all missing, all skipped), silently.
  with pytest.raises(TypeError, match=r"preload must be a sequence of module names, got 'sympy'"):
    SandboxPool(preload="sympy")
  # None (for "no preloads") failed as "'NoneType' object is not iterable", naming no argument; a non-str warm-up was
  # skipped in silence (its failures are ignored, by design) and a str `seccomp` ("no") turned the filter on.
  with pytest.raises(TypeError, match=r"preload must be a sequence of module names, got None"):
    SandboxPool(preload=None)
  with pytest.raises(TypeError, match=r"warmup must be a str \(\"\" to skip\), got None"):
    SandboxPool(warmup=None)
  with pytest.raises(TypeError, match=r"seccomp must be a bool, got 'no'"):
    SandboxPool(seccomp="no")
  with pytest.raises(RuntimeError, match="isolation level 'nsjail'|unknown isolation"):
    try:
      SandboxPool(isolation="nsjail")
    except ValueError as e:
      raise RuntimeError(str(e)) from e


def test_preload_may_be_any_iterable_of_names():
  # A generator was consumed by the names' type check: the workers got an empty list and preloaded nothing, silently.
  with SandboxPool(num_workers=1, preload=(m for m in ("math", "fractions")), warmup="") as p:
    assert p.isolation_details["preloaded"] == ["fractions", "math"]


def test_bad_programs_are_named(pool):
  with pytest.raises(TypeError, match=r"programs\[1\] must be str"):
    pool.submit(["print(1)", 42])
  with pytest.raises(TypeError, match="single str"):
    pool.submit("print(1)")


def test_dead_worker_is_replaced():
  with SandboxPool(num_workers=1, timeout_s=2.0, **LIGHT) as p:
    (pid,) = p.worker_pids()
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:  # the kill is asynchronous
      time.sleep(0.01)
    results = p.run(["print(7)", "print(8)"])
    # The worker died while idle: no program was running on it, so none gets the blame.
    assert [r.observation for r in results] == ["7\n", "8\n"]
    assert p.run(["print(9)"])[0].observation == "9\n"
    assert p.worker_pids() and p.worker_pids() != [pid]


def test_a_pool_whose_workers_cannot_restart_says_why(monkeypatch):
  with SandboxPool(num_workers=1, timeout_s=2.0, **LIGHT) as p:
    def cannot_start(uid_lease):
      raise RuntimeError("worker exited before it was ready (exit 1); stderr: no more processes")
    monkeypatch.setattr(p, "_start_worker", cannot_start)
    (pid,) = p.worker_pids()
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
      time.sleep(0.01)
    (r,) = p.run(["print(1)"])
    assert r.error == ("RuntimeError: sandbox worker could not be restarted: worker exited before it was ready "
                       "(exit 1); stderr: no more processes") == r.observation
    # Later work was refused as "SandboxPool is closed": the pool was never closed, and the cause was lost.
    with pytest.raises(RuntimeError, match=r"no sandbox worker left: .*could not be restarted.*no more processes"):
      p.run(["print(2)"])


def _running(pid):
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def test_hung_worker_is_killed_by_the_host_watchdog():
  with SandboxPool(num_workers=1, timeout_s=0.5, host_grace_s=0.5, isolation="rlimits-only", **LIGHT) as p:
    (pid,) = p.worker_pids()  # at this level the worker process is the zygote itself
    os.kill(pid, signal.SIGSTOP)
    try:
      (r,) = p.run(["print(1)"])
    finally:
      try:
        os.kill(pid, signal.SIGCONT)
      except ProcessLookupError:
        pass
    assert r.timed_out and r.observation == "TimeoutError: execution exceeded 0.5s"
    assert p.run(["print(2)"])[0].observation == "2\n"


def test_close_removes_a_work_dir_nested_past_the_recursion_limit(monkeypatch):
  """At the rlimits-only level the host removes the work dir of a worker it killed: however deep the program nested
  directories there (shutil.rmtree recursed, failed and killed the pool's worker thread, leaving the tree behind)."""
  base = tempfile.mkdtemp(prefix="rstar_pool_test_")
  os.chmod(base, 0o755)  # the worker's unprivileged uid must reach its work dir inside
  monkeypatch.setattr(tempfile, "tempdir", base)
  try:
    p = SandboxPool(num_workers=1, timeout_s=30.0, isolation="rlimits-only", **LIGHT)
    (work_dir,) = os.listdir(base)
    p.submit(["import os, time\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\ntime.sleep(25)"])
    deadline = time.monotonic() + 20
    while _depth_below(os.path.join(base, work_dir), 3000) < 3000 and time.monotonic() < deadline:
      time.sleep(0.05)
    p.close()  # kills the running program's zygote; the host removes the work dir
    assert os.listdir(base) == []
  finally:
    subprocess.run(["rm", "-rf", base], check=False)  # whatever depth a failure left


def _depth_below(path, limit):
  """How many nested subdirectories `d` are below `path`, up to `limit` (opened by relative name: past PATH_MAX)."""
  depth = 0
  fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
  try:
    while depth < limit:
      try:
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
      except OSError:
        break
      os.close(fd)
      fd, depth = child, depth + 1
  finally:
    os.close(fd)
  return depth


def test_a_large_reply_while_a_large_program_is_sent_does_not_hang():
  """The worker's reply to the first program (16 print points of 1000 CJK characters: ~97 KB as escaped JSON) and
  the second program (5.4 MB) both exceed the pipes: the host sent while the worker replied, neither read, and
  the slot hung for good (no deadline covered the send)."""
  piece = "print('\u4e00' * 1000)\n"
  big_program = "s = '" + "\u4e00" * 900_000 + "'\nprint(len(s))"
  with SandboxPool(num_workers=1, timeout_s=5.0, **LIGHT) as p:
    futures = p.submit([piece * 16, big_program])
    done, _ = concurrent.futures.wait(futures, timeout=60)
    assert len(done) == 2, "the pool hung"
    # Rule 5 by hand: label `'\u4e00' * 1000:`, a space and the piece's output, for each of the 16 print points.
    assert futures[0].result().observation == ("'\u4e00' * 1000: " + "\u4e00" * 1000 + "\n") * 16
    assert futures[1].result().observation == "900000\n"


def test_hung_worker_is_killed_by_the_host_watchdog_while_a_large_program_is_sent():
  """A program larger than the pipe: the host's blocking write to a stopped worker had no deadline and hung."""
  with SandboxPool(num_workers=1, timeout_s=0.5, host_grace_s=0.5, isolation="rlimits-only", **LIGHT) as p:
    (pid,) = p.worker_pids()
    os.kill(pid, signal.SIGSTOP)
    try:
      (future,) = p.submit(["s = '" + "x" * 900_000 + "'\nprint(len(s))"])
      done, _ = concurrent.futures.wait([future], timeout=30)
    finally:
      try:
        os.kill(pid, signal.SIGCONT)
      except ProcessLookupError:
        pass
    assert done, "the pool hung"
    r = future.result()
    assert r.timed_out and r.observation == "TimeoutError: execution exceeded 0.5s"
    assert p.run(["print(2)"])[0].observation == "2\n"


def test_a_host_holding_fds_past_1024_runs_programs():
  """The pipes to the workers then get fd numbers past 1024, which `select.select` refused ('filedescriptor out of
  range in select()'): the pool did not start, and a worker thread that met one later died."""
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  if hard != resource.RLIM_INFINITY and hard < 1200:
    pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1200")
  resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
  held = []
  try:
    while not held or held[-1] < 1100:
      held.append(os.open(os.devnull, os.O_RDONLY))
    with SandboxPool(num_workers=1, timeout_s=2.0, **LIGHT) as p:
      assert [r.observation for r in p.run(["print(1)", "import time\ntime.sleep(0.1)\nprint(2)"])] == ["1\n", "2\n"]
  finally:
    for fd in held:
      os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _uid_of(pid):
  with open(f"/proc/{pid}/status", encoding="utf-8") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))


@pytest.mark.skipif(os.geteuid() != 0, reason="workers take uids of their own only when the host is root")
def test_live_workers_never_share_a_uid(monkeypatch):
  """At the rlimits-only level a uid is what keeps one worker's programs out of another's work dir. Uids were
  handed out in turn whatever was still alive: the 64th respawn since a worker started took that worker's uid."""
  monkeypatch.setattr(pool_lib, "_UID_SLOTS", 4)  # a few respawns stand for the 64
  with SandboxPool(num_workers=2, timeout_s=2.0, isolation="rlimits-only", **LIGHT) as p:
    survivor = p.worker_pids()[0]  # at this level the worker process is the zygote, which runs as the worker uid
    for _ in range(5):
      (victim,) = [pid for pid in p.worker_pids() if pid != survivor]
      os.kill(victim, signal.SIGKILL)
      deadline = time.monotonic() + 30
      while (victim in p.worker_pids() or len(p.worker_pids()) < 2) and time.monotonic() < deadline:
        p.run(["print(1)"] * 2)  # a dead worker is replaced when its slot takes a program
      (new,) = [pid for pid in p.worker_pids() if pid != survivor]
      assert _uid_of(new) != _uid_of(survivor)


def test_closed_pool_refuses_work():
  p = SandboxPool(num_workers=1, **LIGHT)
  p.close()
  p.close()  # idempotent
  with pytest.raises(RuntimeError, match="closed"):
    p.submit(["print(1)"])


def test_close_while_running_fails_the_running_program():
  p = SandboxPool(num_workers=1, timeout_s=30.0, **LIGHT)
  futures = p.submit(["import time\ntime.sleep(20)", "print(1)"])
  time.sleep(0.5)
  start = time.monotonic()
  p.close()
  assert time.monotonic() - start < 10
  with pytest.raises((RuntimeError, concurrent.futures.CancelledError)):
    futures[0].result(timeout=1)
  assert futures[1].cancelled() or isinstance(futures[1].exception(timeout=1), RuntimeError)


def test_close_from_a_done_callback():
  """Callbacks run on the worker thread that resolved the future: `close` there must not try to join it."""
  p = SandboxPool(num_workers=2, **LIGHT)
  errors = []
  def close(_):
    try:
      p.close()
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  (future,) = p.submit(["import time\ntime.sleep(0.3)\nprint(1)"])  # still running when the callback is added
  future.add_done_callback(close)
  assert future.result(timeout=30).observation == "1\n"
  deadline = time.monotonic() + 10
  while p.worker_pids() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not errors and not p.worker_pids()
  with pytest.raises(RuntimeError, match="closed"):
    p.submit(["print(2)"])


def test_submit_racing_close_fails_instead_of_hanging(monkeypatch):
  """A submit that passed the closed check when `close` ran must not leave futures nobody will ever resolve."""
  p = SandboxPool(num_workers=1, **LIGHT)
  put = pool_lib._TaskQueue.put
  def preempted_put(queue, tasks):
    time.sleep(0.5)  # the submitting thread loses the CPU between the closed check and the put
    put(queue, tasks)
  monkeypatch.setattr(pool_lib._TaskQueue, "put", preempted_put)
  with concurrent.futures.ThreadPoolExecutor(1) as ex:
    submitted = ex.submit(p.submit, ["print(1)"])
    time.sleep(0.1)
    p.close()
    try:
      futures = submitted.result(timeout=10)
    except RuntimeError as e:
      assert "closed" in str(e)
    else:
      concurrent.futures.wait(futures, timeout=5)
      assert all(f.done() for f in futures), "a future of a closed pool is never resolved"


def test_program_too_long_for_the_pipe_is_refused_and_the_worker_lives(pool):
  """Beyond `max_code_chars` the program is refused as documented, at any length (not by a frame that kills the
  worker: 20 M characters exceed the worker's frame limit)."""
  pids = pool.worker_pids()
  for code in ("#" * 2_000_001, "#" * 20_000_000, "s = '" + "\U0001F600" * 1_500_000 + "'"):
    too_long, after = pool.run([code, "print(2)"])
    assert too_long.observation == too_long.error == f"ValueError: program too long ({len(code)} characters > 1000000)"
    assert after.observation == "2\n"
  assert pool.worker_pids() == pids

def test_auto_reports_the_strongest_level(pool):
  assert pool.isolation_level in isolation.LEVELS
  expected = next(level for level in isolation.LEVELS if isolation.probe(level) is None)
  assert pool.isolation_level == expected
  assert pool.isolation_details["level"] == expected
  assert pool.isolation_details["seccomp"] is True
  if os.geteuid() == 0:
    assert pool.isolation_details["uid"] >= 3_900_000_000


ISOLATION_CHECKS = [
    ("import os\nprint(os.getuid() != 0)", "True\n"),
    ("import os\nprint('RSTAR_POOL_TEST' in os.environ)", "False\n"),
    ("import socket\nsocket.socket()", "PermissionError: [Errno 1] Operation not permitted"),
    ("import os\nos.fork()", "PermissionError: [Errno 1] Operation not permitted"),
    ("while True:\n    pass", "TimeoutError: execution exceeded 1.0s"),
    ("x = [0] * 10 ** 10", "MemoryError: execution exceeded the memory limit (1024 MB)"),
    # Where the work dir is the worker uid's own (rlimits-only), locking it broke every later program of the worker.
    ("import os\ntry:\n    os.chmod('.', 0)\nexcept OSError:\n    pass\nprint(2)", "2\n"),
    # Moving it away took its files along to the next program, removing it left no place to write a file.
    ("import os\nopen('x', 'w').close()\ntry:\n    os.rename(os.getcwd(), os.getcwd() + '_moved')\nexcept OSError:\n"
     "    pass\nprint(3)", "3\n"),
    ("import os\ntry:\n    os.rmdir(os.getcwd())\nexcept OSError:\n    pass\nprint(4)", "4\n"),
    ("open('leftover', 'w').write('1')\nprint(1)", "1\n"),
    ("import os\nprint(os.listdir('.'))", "[]\n"),
]


@pytest.mark.parametrize("level", isolation.LEVELS)
def test_every_level_isolates(level, monkeypatch):
  why = isolation.probe(level)
  if why is not None:
    pytest.skip(f"{level} unavailable here: {why}")
  monkeypatch.setenv("RSTAR_POOL_TEST", "secret")
  # socket is preloaded: at the rlimits-only level a Python under /root cannot import lazily (see isolation.py).
  with SandboxPool(num_workers=1, timeout_s=1.0, isolation=level, preload=("math", "socket"), warmup="") as p:
    assert p.isolation_level == level
    results = p.run([code for code, _ in ISOLATION_CHECKS])
  for (code, expected), r in zip(ISOLATION_CHECKS, results):
    if expected == "[]\n" and level != "rlimits-only":
      # The work dir is the jail's private /tmp: clean, it holds the top folders of what is bound below it (a Python,
      # a venv, under the host's /tmp).
      expected = f"{sorted({d.split('/')[2] for _, d in isolation.jail_layout()[0] if d.startswith('/tmp/')})}\n"
    assert r.observation == expected, (level, code, r)


@pytest.mark.parametrize("level", ["bwrap", "unshare"])
def test_namespaced_levels_hide_the_host(level):
  if isolation.probe(level) is not None:
    pytest.skip(f"{level} unavailable here")
  with SandboxPool(num_workers=1, timeout_s=2.0, isolation=level, **LIGHT) as p:
    root, tmp, home, pid = p.run([
        "import os\nprint(sorted(os.listdir('/')))",
        f"import os\nprint(os.path.exists({os.path.abspath(__file__)!r}))",
        "import os\nprint(os.path.exists('/root/.bash_history') or os.path.exists('/home'))",
        "import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]) <= 10)",
    ])
  assert root.ok and "home" not in root.observation and "var" not in root.observation, root
  assert tmp.observation == "False\n"  # the test file (repo checkout) is not visible
  assert home.observation == "False\n"
  assert pid.observation == "True\n"  # own PID namespace: only the jail's few processes


def test_a_worker_that_fails_to_start_shows_its_stderr(monkeypatch):
  failing = [sys.executable, "-c", "import sys; sys.stderr.write('boom-marker'); sys.exit(3)"]
  monkeypatch.setattr(pool_lib.isolation_lib, "worker_argv", lambda *args: failing)
  with pytest.raises(RuntimeError, match="exit 3.*boom-marker"):
    SandboxPool(num_workers=1, isolation="rlimits-only", preload=(), warmup="")


def test_rlimits_only_says_when_programs_cannot_import():
  """As root the rlimits-only worker runs programs under an unprivileged uid: with Python installed where that uid
  cannot go (a pyenv or conda under /root, mode 0700), every import of a module the worker did not preload failed
  with ModuleNotFoundError (`scipy.stats`, sympy's `ask`) and nothing said why. The oracle is what a program can
  import: the pool warns exactly when that fails."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with SandboxPool(num_workers=1, timeout_s=2.0, isolation="rlimits-only", **LIGHT) as p:
      result = p.run(["import colorsys\nprint(colorsys.rgb_to_hsv(1, 0, 0))"])[0]
  warned = [str(w.message) for w in caught if "ModuleNotFoundError" in str(w.message)]
  if result.observation == "(0.0, 1.0, 1)\n":
    assert not warned, warned
  else:
    assert result.observation == "ModuleNotFoundError: No module named 'colorsys'", result
    assert len(warned) == 1 and "cannot enter" in warned[0], [str(w.message) for w in caught]


def test_an_interrupted_run_leaves_nothing_queued(monkeypatch):
  # Ctrl-C in `run` (a notebook's interrupt of a search step) left the rest of its programs queued: the long-lived
  # pool went on running them for nobody, and the next run waited behind them all (here 8 x 60 s).
  submitted = []
  submit = SandboxPool.submit

  def spying_submit(self, programs):
    futures = submit(self, programs)
    submitted.extend(futures)
    # Ctrl-C once the first program is done (the main thread then waits in `result` of the second).
    futures[0].add_done_callback(lambda _: os.kill(os.getpid(), signal.SIGINT))
    return futures

  monkeypatch.setattr(SandboxPool, "submit", spying_submit)
  with SandboxPool(num_workers=1, timeout_s=60.0, **LIGHT) as pool:
    with pytest.raises(KeyboardInterrupt):
      pool.run(["print(1)"] + ["import time\ntime.sleep(60)"] * 8)
    queued = [i for i, f in enumerate(submitted) if not (f.done() or f.running())]
    assert queued == []
    assert sum(f.cancelled() for f in submitted) >= 6  # all but the first and those the worker had taken


@pytest.mark.parametrize("setting,value", [("memory_mb", 2**44), ("fsize_mb", 2**63), ("tmp_mb", 2**50),
                                           ("nofile", 2**40), ("nproc", 2**63), ("reuse_limit", 2**63),
                                           ("timeout_s", 1e10), ("startup_timeout_s", 1e308), ("host_grace_s", 1e10)])
def test_limits_too_large_for_the_kernel_are_named(setting, value):
  # Each was accepted and then failed deep inside: a worker traceback "executors keep dying at start-up" (setrlimit's
  # "Python int too large to convert to C long", or above fs.nr_open open files), bwrap's "--size takes a non-zero
  # number of bytes" (2**70 bytes of /tmp), or, for deadlines, poll()'s "timestamp too large" as "SandboxPool closed
  # before the program finished" at the first program.
  with pytest.raises(ValueError, match=rf"{setting} must be at most .*got {re.escape(repr(value))}"):
    SandboxPool(num_workers=1, **{setting: value})


def test_limits_at_their_largest_run():
  # The bounds refuse only what cannot work: a pool at each of them starts and runs a program (open files and
  # processes up to the hard limits this process has, which executors inherit and cannot raise).
  def hard(which, default):
    value = resource.getrlimit(which)[1]
    return default if value == resource.RLIM_INFINITY else min(value, default)
  largest = dict(memory_mb=2**30, fsize_mb=2**30, tmp_mb=2**30, reuse_limit=2**40, timeout_s=1e6, host_grace_s=1e6,
                 startup_timeout_s=1e6, nofile=hard(resource.RLIMIT_NOFILE, 2**20),
                 nproc=hard(resource.RLIMIT_NPROC, 2**40))
  with SandboxPool(num_workers=1, **largest) as big:
    assert big.run(["print(6 * 7)"])[0].observation == "42\n"


def test_run_from_eight_threads_at_once_gives_each_caller_its_own_results():
  """A server or a thread pool of searches shares one pool: every caller gets the results of its own programs, in
  its order, the same as when the calls are made one after another, while programs of other callers time out or
  end their executor around them."""
  def programs(t):
    out = []
    for j in range(6):
      if j == 2 and t % 3 == 0:  # a timeout: its executor is replaced while other callers' programs wait
        out.append("import time\ntime.sleep(30)")
      elif j == 4:
        out.append(f"import os\nprint({t})\nos._exit(3)")  # ends its executor
      else:
        out.append(f"print({t} * 100 + {j})")
    return out

  with SandboxPool(num_workers=3, timeout_s=1.0, **LIGHT) as p:
    serial = [[r.observation for r in p.run(programs(t))] for t in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as callers:
      futures = [callers.submit(p.run, programs(t)) for t in range(8)]
      together = [[r.observation for r in f.result(timeout=120)] for f in futures]
  assert together == serial
  for t, observations in enumerate(serial):  # the prints are the callers' own (computed here)
    for j, observation in enumerate(observations):
      if j != 4 and not (j == 2 and t % 3 == 0):
        assert observation == f"{t * 100 + j}\n"
    assert serial[t][2].startswith("TimeoutError") == (t % 3 == 0)


def _live_children() -> set[int]:
  """Pids of this process's live (non-zombie) children, read from /proc."""
  found = set()
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
          state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
      except OSError:
        continue
      if int(ppid) == os.getpid() and state != "Z":
        found.add(int(entry))
  return found


def test_a_pool_dropped_without_close_stops_its_workers():
  # Its worker threads held the pool, so it was never collected: each dropped pool kept a thread, three fds and a
  # warm jailed interpreter per worker for the rest of the process. Counted from /proc and `threading`.
  children, fds, threads = _live_children(), len(os.listdir("/proc/self/fd")), set(threading.enumerate())
  for _ in range(2):
    p = SandboxPool(num_workers=2, timeout_s=5.0, **LIGHT)
    assert [r.observation for r in p.run(["print(1)", "print(2)"])] == ["1\n", "2\n"]
    assert len(_live_children() - children) == 2
    del p
    gc.collect()
  for _ in range(200):
    if not _live_children() - children and set(threading.enumerate()) <= threads:
      break
    time.sleep(0.05)
  assert not _live_children() - children, "a dropped pool's workers still run"
  assert set(threading.enumerate()) <= threads, "a dropped pool's worker threads still run"
  assert len(os.listdir("/proc/self/fd")) == fds


VENV_CHECK = """
import sys
from sandbox import SandboxPool, isolation
for level in sys.argv[1:]:
  # Fresh executors after wipes of the private /tmp: the venv is still there (as non-root, the wipe moved it away).
  with SandboxPool(num_workers=1, timeout_s=5.0, isolation=level, preload=(), warmup="", reuse_limit=1) as p:
    results = p.run(["import sys, venv_only\\nprint(sys.prefix, venv_only.VALUE)"] * 3)
  print(level, p.isolation_level, *sorted({repr(r.observation) for r in results}))
"""


def test_a_python_in_a_venv_under_tmp_runs_at_every_namespaced_level():
  """The jail's private /tmp was mounted over what was bound below it: a venv under the host's /tmp (a CI's or a
  reviewer's) made bwrap fail ("execvp /tmp/.../bin/python: No such file"; the pool fell back to a weaker level), and
  at the unshare level its site-packages vanished for the programs. Both now see the venv, read-only."""
  levels = [level for level in ("bwrap", "unshare") if isolation.probe(level) is None]
  assert levels, "neither bwrap nor unshare works here (.ci/run installs bubblewrap)"
  with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
    venv = os.path.join(tmp, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "venv_only.py"), "w", encoding="utf-8") as f:
      f.write("VALUE = 42\n")
    package_parent = os.path.dirname(os.path.dirname(pool_lib.__file__))
    proc = subprocess.run([python, "-c", VENV_CHECK, *levels], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=package_parent))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{level} {level} {venv + ' 42' + chr(10)!r}" for level in levels], proc


def test_a_package_in_the_user_site_is_imported_by_programs_at_every_level():
  """`pip install --user` (what a non-root pip does on a system Python) puts sympy and numpy in the user site: the
  workers run with `-s` (and, jailed, another HOME and no bind of it), so every program importing them failed with
  ModuleNotFoundError while the host imported them. The user site now comes along, before the other site-packages
  as on the host."""
  levels = [level for level in isolation.LEVELS if isolation.probe(level) is None]
  code = ("import sys\nfrom sandbox import SandboxPool\n"
          "for level in sys.argv[1:]:\n"
          "  with SandboxPool(num_workers=1, timeout_s=5.0, isolation=level, preload=(), warmup='') as p:\n"
          "    print(level, repr(p.run([CHECK])[0].observation))\n")
  # The module, and the user site ahead of the other site-packages, as on the host.
  check = ("import os, site, sys, user_only\nat = sys.path.index(os.path.dirname(user_only.__file__))\n"
           "print(user_only.VALUE, all(at < sys.path.index(p) for p in site.getsitepackages() if p in sys.path))")
  code = code.replace("CHECK", repr(check))
  with tempfile.TemporaryDirectory(dir="/tmp") as base:
    os.chmod(base, 0o755)  # the rlimits-only level's unprivileged uid reads it too
    # A Python outside any venv (a venv has no user site), with this package from its checkout or install.
    python = getattr(sys, "_base_executable", sys.executable)
    env = dict(os.environ, PYTHONUSERBASE=base, PYTHONPATH=os.path.dirname(os.path.dirname(pool_lib.__file__)))
    env.pop("PYTHONNOUSERSITE", None)
    user_site = subprocess.run([python, "-c", "import site; print(site.getusersitepackages())"], check=True, env=env,
                               capture_output=True, text=True).stdout.strip()
    os.makedirs(user_site)
    for d in (user_site, os.path.dirname(user_site), os.path.dirname(os.path.dirname(user_site))):
      os.chmod(d, 0o755)
    with open(os.path.join(user_site, "user_only.py"), "w", encoding="utf-8") as f:
      f.write("VALUE = 7\n")
    proc = subprocess.run([python, "-c", code, *levels], capture_output=True, text=True, timeout=120, env=env,
                          cwd="/")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [f"{level} {'7 True' + chr(10)!r}" for level in levels], proc
