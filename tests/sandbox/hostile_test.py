"""Hostile and broken programs: each gets a clear result, does no harm, and the pool stays clean and correct.

Every case runs on a one-worker pool, so the check programs that follow it run on the same worker (in the reused
executor and in a fresh one). Expected observations are written out by hand from the rules in DESIGN.md §1.1.
"""

import functools
import os
import signal
import socket
import subprocess
import sys

import pytest

from sandbox import SandboxPool
from sandbox import isolation
from sandbox import observation

TIMEOUT_S = 2.0  # generous: memory bombs must reach the memory limit first even on a loaded 2-core machine
SECRET_ENV = "RSTAR_SANDBOX_TEST_SECRET"
SECRET_VALUE = "hunter2-do-not-leak"
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "sandbox")

CORRUPTED = "RuntimeError: the program corrupted the sandbox result channel"
# Runs in the reused executor (passes the static check) and must be right after anything.
CHECK_REUSED = "import math\nprint(sum(range(10)), math.factorial(5))"
# Needs a fresh executor (imports os) and checks the private /tmp and /dev/shm are empty and the uid unprivileged.
CHECK_FRESH = "import os\nprint(os.getuid() != 0, os.listdir('/tmp'), os.listdir('/dev/shm'))"
# What the jail's private /tmp (the work dir) holds when clean: the top folders of what is bound below it, those of a
# Python (a venv) under the host's /tmp; nothing otherwise.
JAIL_TMP = sorted({dst.split("/")[2] for _, dst in isolation.jail_layout()[0] if dst.startswith("/tmp/")})


@pytest.fixture(scope="module")
def pool():
  os.environ[SECRET_ENV] = SECRET_VALUE  # the host has a secret in its environment while the pool starts
  try:
    with SandboxPool(num_workers=1, timeout_s=TIMEOUT_S, memory_mb=512, max_output_chars=1024) as p:
      yield p
  finally:
    os.environ.pop(SECRET_ENV, None)


@pytest.fixture(scope="module")
def host_secret_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("secret") / "secret.txt"
  path.write_text(SECRET_VALUE)
  path.chmod(0o644)  # world-readable on the host: only the jail's private root keeps it out
  return str(path)


def _run(pool, code):
  return pool.run([code])[0]


def _assert_clean(pool):
  reused, fresh = pool.run([CHECK_REUSED, CHECK_FRESH])
  assert reused.ok and reused.observation == "45 120\n", reused
  assert fresh.ok and fresh.observation == f"True {JAIL_TMP} []\n", fresh


def _timeout(r):
  return r.timed_out and r.observation == f"TimeoutError: execution exceeded {TIMEOUT_S}s" and r.stdout == ""


def _memory(r):
  return r.memory_exceeded and r.observation == "MemoryError: execution exceeded the memory limit (512 MB)"


def _error(prefix):
  return lambda r: (not r.ok) and r.error.startswith(prefix) and r.observation.startswith(prefix)


def _signal(sig):
  name = signal.Signals(sig).name
  return lambda r: r.killed_by_signal == sig and r.error == f"RuntimeError: execution killed by signal {name}"


def _observed(text):
  return lambda r: r.ok and r.observation == text


@functools.lru_cache(maxsize=None)
def _under_hash_seed_0(code: str) -> str:
  """What `code` prints in a fresh interpreter with PYTHONHASHSEED=0 (this test process's seed is random)."""
  env = dict(os.environ, PYTHONHASHSEED="0")
  return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                        timeout=60).stdout


HOSTILE = [
    # Hangs.
    ("busy_loop", "while True:\n    pass", _timeout),
    ("sleep", "import time\ntime.sleep(100)", _timeout),
    # Threads that release the GIL use every core, so the CPU-time backstop can fire before the wall clock: still a
    # timeout (it was reported as "killed by signal SIGXCPU").
    ("threads_on_all_cores", "import hashlib, threading\ndata = b'x' * 10_000_000\ndef burn():\n"
     "    while True:\n        hashlib.sha256(data).digest()\n"
     "for _ in range(3):\n    threading.Thread(target=burn, daemon=True).start()\nburn()", _timeout),
    ("swallow_signals",
     "import signal, time\n"
     "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU, signal.SIGHUP):\n"
     "    signal.signal(s, signal.SIG_IGN)\n"
     "while True:\n"
     "    try:\n"
     "        time.sleep(0.01)\n"
     "    except BaseException:\n"
     "        pass", _timeout),
    ("regex_backtracking", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')", _timeout),
    ("huge_integer_power", "x = 10 ** (10 ** 8)", _timeout),
    ("stdout_flood", "while True:\n    print('x' * 10000)", _timeout),
    # Memory.
    ("list_bomb", "x = [0] * (10 ** 10)", _memory),
    ("growing_bomb", "chunks = []\nwhile True:\n    chunks.append(bytearray(2 ** 27))", _memory),
    ("numpy_bomb", "import numpy as np\nx = np.ones((10 ** 5, 10 ** 5))", _memory),
    ("mmap_bomb", "import mmap\nm = mmap.mmap(-1, 10 ** 11)", _memory),
    # 640 MB (over the 512 MB limit) written into memory files, whose pages no address-space limit counts.
    ("memfd_bomb", "import os\nfds = []\nfor _ in range(40):\n    fds.append(os.memfd_create('m'))\n"
     "    for _ in range(16):\n        os.write(fds[-1], b'1' * 2 ** 20)\nprint(len(fds) * 16)",
     _error("PermissionError: [Errno 1]")),
    ("int_str_limit", "print(len(str(10 ** 100000)))", _error("ValueError: Exceeds the limit")),
    # Processes and signals.
    ("fork_bomb", "import os\nwhile True:\n    os.fork()", _error("PermissionError: [Errno 1]")),
    ("thread_bomb",
     "import threading, time\nts = []\nwhile True:\n"
     "    t = threading.Thread(target=time.sleep, args=(30,), daemon=True)\n    t.start()\n    ts.append(t)",
     lambda r: not r.ok and (r.memory_exceeded or r.error.startswith("RuntimeError: can't start new thread"))),
    ("subprocess", "import subprocess\nsubprocess.run(['touch', '/tmp/pwned'])", _error("PermissionError")),
    ("os_system", "import os\nprint(os.system('touch /tmp/pwned'))",
     lambda r: r.ok and r.observation.strip() not in ("0", "")),
    ("kill_parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", _error("PermissionError")),
    ("kill_process_group", "import os, signal\nos.killpg(0, signal.SIGKILL)", _error("PermissionError")),
    ("kill_everything", "import os, signal\nos.kill(-1, signal.SIGKILL)", _error("PermissionError")),
    # SIGIO to an fd's owner is a signal the kernel sends for the program, to any pid it may signal (its zygote; the
    # host itself at the rlimits-only level as non-root): killed the zygote ("sandbox worker died unexpectedly").
    ("sigio_to_parent", "import os, fcntl, signal\nr, w = os.pipe()\nfcntl.fcntl(r, fcntl.F_SETSIG, signal.SIGKILL)\n"
     "fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC)\nfcntl.fcntl(r, fcntl.F_SETOWN, os.getppid())\nos.write(w, b'x')",
     _error("PermissionError")),
    ("kill_self", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", _signal(9)),
    # What the CPU-time backstop delivers (threads_on_all_cores above reaches it only when it gets several cores):
    # reported as the timeout it stands for.
    ("cpu_limit_signal", "import os, signal\nos.kill(os.getpid(), signal.SIGXCPU)", _timeout),
    ("abort", "import os\nos.abort()", _signal(6)),
    ("os_exit", "import os\nos._exit(0)",
     lambda r: r.error == "SystemExit: process exited with status 0" and r.observation == r.error),
    ("sys_exit", "import sys\nsys.exit(3)", lambda r: r.observation == "SystemExit: 3"),
    ("exit_builtin", "exit()", _error("SystemExit")),
    ("keyboard_interrupt", "raise KeyboardInterrupt", lambda r: r.observation == "KeyboardInterrupt: "),
    ("sigint_self", "import signal\nsignal.raise_signal(signal.SIGINT)",
     lambda r: r.observation == "KeyboardInterrupt: "),
    ("setuid_root", "import os\nos.setuid(0)", _error("PermissionError")),
    ("parent_memory", "import os\nopen(f'/proc/{os.getppid()}/mem', 'rb').read(1)", _error("PermissionError")),
    ("ctypes_segfault", "import ctypes\nctypes.string_at(0)", _signal(11)),
    ("deep_recursion", "def f(n):\n    return f(n + 1)\nf(0)", _error("RecursionError")),
    ("c_stack_overflow", "import sys\nsys.setrecursionlimit(10 ** 7)\ndef f(n):\n    return f(n + 1)\nf(0)",
     lambda r: not r.ok),
    ("input", "input()", _error("RuntimeError")),
    # Output channels.
    ("close_stdout", "import sys\nsys.stdout.close()\nprint('after')",
     _error("ValueError: I/O operation on closed file")),
    ("close_all_fds",
     "import os\nfor fd in range(1024):\n    try:\n        os.close(fd)\n    except OSError:\n        pass\n"
     "print('still here')", _observed("still here\n")),
    ("overwrite_fds",
     "import os\nfor fd in range(3, 64):\n    try:\n        os.dup2(0, fd)\n    except OSError:\n        pass\n"
     "print('ok')", _observed("ok\n")),
    # A forged reply on every fd, one that does not decode and one for another program: reported as such.
    ("forged_undecodable_frame",
     "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'\\x00\\x00\\x00\\x03abc')\n"
     "    except OSError:\n        pass\nprint('done')", lambda r: r.observation == r.error == CORRUPTED),
    ("forged_frame_of_another_program",
     "import os, json\np = json.dumps({'id': -7}).encode()\nfor fd in range(3, 64):\n    try:\n"
     "        os.write(fd, len(p).to_bytes(4, 'big') + p)\n    except OSError:\n        pass\nprint('done')",
     lambda r: r.observation == r.error == CORRUPTED),
    # A reply for its own task (the id is in its caller's frame) that fits the executor's frame limit as raw UTF-8 but
    # not the host's once re-encoded with escapes: the program's failure, not a dead worker.
    ("forged_frame_too_big_to_forward",
     "import os, sys, json\nf = sys._getframe()\nwhile 'task' not in f.f_locals:\n    f = f.f_back\n"
     "p = json.dumps({'id': f.f_locals['task']['id'], 'observation': '\\U0001F600' * 300000}, ensure_ascii=False)\n"
     "p = p.encode()\nfor fd in range(3, 64):\n    try:\n        os.write(fd, len(p).to_bytes(4, 'big') + p)\n"
     "    except OSError:\n        pass", lambda r: r.observation == r.error == CORRUPTED),
    ("big_print", "print('y' * 10 ** 8)",
     lambda r: r.ok and r.observation == "y" * 512 + "..." + "y" * 511 + "\n" and len(r.stdout) == 1027),
    ("stderr_flood", "import sys\nfor _ in range(2000):\n    sys.stderr.write('e' * 100000)\nprint('done')",
     _observed("done\n")),
    ("raw_fd_flood",
     "import os\nfor _ in range(100):\n    os.write(1, b'z' * 1000000)\n    os.write(2, b'z' * 1000000)\n"
     "print('done')", _observed("done\n")),
    # rStar rule: only the last statement's output is observed (here the newline of print()).
    ("invalid_utf8", "import sys\nsys.stdout.buffer.write(b'\\xff\\xfeok')\nprint()",
     lambda r: r.ok and r.observation == "\n" and r.stdout == "\ufffd\ufffdok\n"),
    ("lone_surrogates", "print('\\udc80\\ud800x')", _observed("\ufffd\ufffdx\n")),
    # Files and secrets.
    ("read_shadow", "print(open('/etc/shadow').read())", _error("FileNotFoundError")),
    ("proc1_environ", "print(open('/proc/1/environ').read())",
     lambda r: not r.ok and r.error.split(":")[0] in ("PermissionError", "FileNotFoundError")),
    ("environment", "import os\nprint(sorted(os.environ))",
     lambda r: r.ok and SECRET_ENV not in r.observation and "'PYTHONHASHSEED'" in r.observation),
    # The str hash a program sees is the one of hash seed 0 (as a separate interpreter computes it), whatever the
    # host's own seed: `hash('abc') == hash('abc')` holds under any seed, so it could not tell.
    ("hash_seed_fixed", "import os\nprint(os.environ['PYTHONHASHSEED'], hash('abc'), list({'pear', 'fig', 'kiwi'}))",
     lambda r: r.ok and r.observation == _under_hash_seed_0(
         "print(0, hash('abc'), list({'pear', 'fig', 'kiwi'}))")),
    ("write_usr", "open('/usr/pwned.txt', 'w').write('x')", _error("OSError: [Errno 30] Read-only file system")),
    # The package is bound read-only into the jail (at /opt/rstar_sandbox/sandbox); it is this checkout's sandbox/.
    ("write_package_dir", "open('/opt/rstar_sandbox/sandbox/pwned.txt', 'w')",
     _error("OSError: [Errno 30] Read-only file system")),
    ("leave_files", "open('/tmp/leftover', 'w').write('x')\nopen('/dev/shm/leftover', 'w').write('x')\n"
     "import os\nos.makedirs('/tmp/d/e')\nos.chmod('/tmp/d', 0)\nprint('left')", _observed("left\n")),
    # Deeper than the recursion limit and PATH_MAX: the wipe after it killed the worker (RecursionError).
    ("deep_directories", "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\nprint('deep')",
     _observed("deep\n")),
    ("fill_tmp", "with open('/tmp/big', 'wb') as f:\n    f.write(b'0' * (200 * 2 ** 20))",
     lambda r: not r.ok),
    ("fd_exhaustion", "fs = [open('/dev/null') for _ in range(100000)]", _error("OSError: [Errno 24]")),
    # Network (loopback only; nothing can leave the machine).
    ("tcp_outside", "import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=0.5)",
     _error("PermissionError")),
    ("dns", "import socket\nprint(socket.getaddrinfo('example.com', 80))", _error("gaierror")),
    ("raw_socket", "import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)", _error("PermissionError")),
    # Broken programs.
    ("syntax_error", "x = = 1", lambda r: r.observation == "SyntaxError: invalid syntax (<unknown>, line 1)"),
    ("null_bytes", "print(1)\x00", lambda r: r.observation == "SyntaxError: source code string cannot contain "
                                                               "null bytes"),
    ("code_700kb_literal", "s = '" + "a" * 700_000 + "'\nprint(len(s))", _observed("700000\n")),
    ("code_700kb_statements", "x = 0\n" + "x += 1\n" * 100000 + "print(x)",
     lambda r: r.observation == "100000\n" or r.timed_out),
    ("code_too_long", "#" * 2_000_001, _error("ValueError: program too long")),
    # The official `f"{type(e).__name__}: {e}"`, cut at rule 5's bound, 16 * 1024 (it read as a corrupted channel);
    # the `error` field is cut as `stdout` is.
    ("huge_exception_name", "raise type('E' * 2_000_000, (Exception,), {})('boom')",
     lambda r: r.observation == "E" * 8192 + "..." + "E" * 8186 + ": boom"
     and r.error == "E" * 512 + "..." + "E" * 506 + ": boom"),
    ("deeply_nested", "x = " + "(" * 300 + ")" * 300, _error("SyntaxError: too many nested parentheses")),
]


def test_the_suite_is_big_enough():
  assert len(HOSTILE) >= 40


@pytest.mark.parametrize("name,code,expect", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_program(pool, name, code, expect):
  result = _run(pool, code)
  assert expect(result), f"{name}: {result}"
  assert result.observation.encode("utf-8")  # always valid text for the policy
  # An error observation is the official whole text, cut only at rule 5's bound (`sandbox.observation`, rule 6).
  limit = observation.MULTI_PRINT_LIMIT * 1024 + 3 if result.error else 1027
  assert len(result.observation) <= limit and len(result.stdout) <= 1027 and len(result.error or "") <= 1027
  _assert_clean(pool)


def test_secret_file_on_host_is_invisible(pool, host_secret_file):
  result = _run(pool, f"print(open({host_secret_file!r}).read())")
  assert result.error.startswith("FileNotFoundError"), result
  assert SECRET_VALUE not in result.observation
  _assert_clean(pool)


def test_tcp_to_host_loopback_fails_and_nothing_arrives(pool):
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    result = _run(pool, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=0.5)")
    assert result.error.startswith("PermissionError"), result
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
      listener.accept()
  _assert_clean(pool)


def test_udp_to_host_loopback_fails_and_nothing_arrives(pool):
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
    receiver.bind(("127.0.0.1", 0))
    port = receiver.getsockname()[1]
    result = _run(pool, f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                        f"s.sendto(b'x', ('127.0.0.1', {port}))")
    assert result.error.startswith("PermissionError"), result
    receiver.setblocking(False)
    with pytest.raises(BlockingIOError):
      receiver.recvfrom(16)
  _assert_clean(pool)


# Every other process the program can see: is its memory open to the program for writing?
OTHER_PROCESS_MEMORY = """
import os
writable = []
for name in os.listdir('/proc'):
    if name.isdigit() and int(name) != os.getpid():
        try:
            open(f'/proc/{name}/mem', 'r+b').close()
            writable.append(name)
        except OSError:
            pass
print(writable)
"""


def test_no_other_process_memory_is_writable(pool):
  """A process whose /proc/<pid>/mem a program can write runs the program's code outside the seccomp filter. As a
  non-root host, bwrap's reaper (the jail's pid 1) ran under the worker's uid and dumpable: '['1']' (found as uid
  65534 with setpriv; as root the reaper is root in the jail and the worker uid cannot reach it)."""
  result = _run(pool, OTHER_PROCESS_MEMORY)
  assert result.observation == "[]\n", result
  _assert_clean(pool)


SCHEDULING = ("import os\n"
              "print(sorted(os.sched_getaffinity(0)), os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))")


def test_a_program_cannot_slow_down_its_zygote(pool):
  """Scheduling settings are inherited: set on the zygote (same uid), they held for every later program of the worker
  (pinned to one CPU, nice 19, SCHED_IDLE: starved into timeouts); at the rlimits-only level as non-root, the host's
  own. Expected: the host's settings, which the jail inherits."""
  host = f"{sorted(os.sched_getaffinity(0))} {os.getpriority(os.PRIO_PROCESS, 0)} {os.sched_getscheduler(0)}\n"
  for poison in ("import os\nos.sched_setaffinity(os.getppid(), {0})",
                 "import os\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 19)",
                 "import os\nos.setpriority(os.PRIO_USER, 0, 19)",
                 "import os\nos.sched_setscheduler(os.getppid(), os.SCHED_IDLE, os.sched_param(0))",
                 "import os\nos.sched_setparam(os.getppid(), os.sched_param(0))"):
    result = _run(pool, poison)
    assert result.error.startswith("PermissionError"), (poison, result)
    # The spare executor was forked while the poison ran: the one after it is a fresh fork of the zygote.
    assert [r.observation for r in pool.run([SCHEDULING] * 2)] == [host, host], poison
  _assert_clean(pool)


def test_a_mount_under_a_bound_directory_is_read_only_too(tmp_path, monkeypatch):
  """The jail binds directories read-only; a mount below one (a volume under the Python prefix, /usr/local on its own
  disk) stayed writable at the unshare level, and what a program wrote there was on the host. Here a world-writable
  tmpfs below a bound test directory (mounted when root; as non-root the plain directory below the bind)."""
  source = tmp_path / "bound"
  volume = source / "volume"
  volume.mkdir(parents=True)
  mounted = os.geteuid() == 0 and subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs", str(volume)], check=False).returncode == 0
  volume.chmod(0o1777)
  layout = isolation.jail_layout
  monkeypatch.setattr(isolation, "jail_layout",
                      lambda: (layout()[0] + [(str(source), "/opt/rstar_test_bind")], layout()[1]))
  try:
    for level in (lvl for lvl in ("bwrap", "unshare") if isolation.probe(lvl) is None):
      with SandboxPool(num_workers=1, timeout_s=TIMEOUT_S, isolation=level, preload=(), warmup="") as p:
        result = p.run(["open('/opt/rstar_test_bind/volume/pwned', 'w').write('x')"])[0]
      assert result.error.startswith("OSError: [Errno 30] Read-only file system"), (level, result)
    assert not os.listdir(volume)
  finally:
    if mounted:
      subprocess.run(["umount", str(volume)], check=True)


# Trusted warm-up code (it runs in the zygote): every executor after the first fails to install the filter.
FILTER_FAILS_AFTER_THE_FIRST_EXECUTOR = """
import sys
worker, seccomp = sys.modules['sandbox._worker'], sys.modules['sandbox._seccomp']
forks, fork, install = [0], worker.Zygote.fork_executor, seccomp.install
def counting_fork(self):
    forks[0] += 1
    seccomp.fail = forks[0] > 1
    return fork(self)
def failing_install(*args):
    if seccomp.fail:
        raise OSError(12, 'injected')
    return install(*args)
worker.Zygote.fork_executor = counting_fork
seccomp.install = failing_install
"""


def test_an_executor_without_the_filter_never_runs_a_program():
  """The filter's install failing (ENOMEM, ...) let that executor run programs unfiltered, and nothing said so: the
  pool had reported the first executor's filter. A worker whose filter is on kills such an executor instead."""
  make_socket = "import socket\nsocket.socket()\nprint('made')"
  with SandboxPool(num_workers=1, timeout_s=TIMEOUT_S, preload=(), warmup=FILTER_FAILS_AFTER_THE_FIRST_EXECUTOR) as p:
    assert p.isolation_details["seccomp"] is True
    first, second = p.run([make_socket, make_socket])
  assert first.error == "PermissionError: [Errno 1] Operation not permitted", first
  assert second.error == "RuntimeError: sandbox worker died unexpectedly", second


# Without the filter (seccomp=False, or no x86-64), a double fork into a new session: the grandchild has no death
# signal and no PID namespace to die with. Prints its pid.
OUTLIVE_THE_POOL = """
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
    os.write(w, str(pid).encode())
    os._exit(0)
print(int(os.read(r, 16)))
"""


def _uid_alive(pid: int) -> int | None:
  """The real uid of `pid` if it runs (not a zombie), else None."""
  try:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
      fields = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
  except OSError:
    return None
  return None if fields["State"].startswith("Z") else int(fields["Uid"].split()[0])


def test_no_process_of_a_worker_uid_outlives_its_worker():
  """At the rlimits-only level without the filter, a program's double-forked process ran on after the pool closed,
  under a worker uid the next pool hands out again. As root the host now kills every process of the worker's uid
  when it stops the worker; as non-root there is no uid to tell them apart (see `isolation`)."""
  with SandboxPool(num_workers=1, timeout_s=TIMEOUT_S, isolation="rlimits-only", seccomp=False, preload=(),
                   warmup="") as p:
    uid = p.isolation_details["uid"]
    pid = int(_run(p, OUTLIVE_THE_POOL).observation)
    assert _uid_alive(pid) == uid
  if os.geteuid() == 0:
    assert _uid_alive(pid) is None
  else:
    assert _uid_alive(pid) == uid  # the documented limit of rlimits-only as non-root
    os.kill(pid, signal.SIGKILL)


def test_a_program_can_start_a_thread_while_the_host_user_runs_many_processes():
  """RLIMIT_NPROC counts every task of the uid: at the rlimits-only level as non-root that is the host user's, so once
  they ran 64 processes (nproc) no program could start a thread ("can't start new thread"; seen as uid 65534 with
  setpriv; as root the worker has a uid of its own)."""
  sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(70)]
  try:
    with SandboxPool(num_workers=1, timeout_s=TIMEOUT_S, isolation="rlimits-only", preload=(), warmup="") as p:
      result = _run(p, "import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()\nprint('ok')")
  finally:
    for sleeper in sleepers:
      sleeper.kill()
      sleeper.wait()
  assert result.observation == "ok\n", result


def test_no_harm_on_the_host(pool):
  """What the suite tried to write never reached the host's file system."""
  for path in ("/tmp/pwned", "/usr/pwned.txt", os.path.join(PACKAGE_DIR, "pwned.txt"), "/tmp/leftover", "/tmp/big"):
    assert not os.path.exists(path), path
  assert len(pool.worker_pids()) == 1


# Writes a well-formed reply for its own task (the id is in its caller's frame) on every fd, then runs on, writing a
# file in its work dir every millisecond.
FORGED_REPLY_THEN_RUN_ON = """
import json, os, sys, time
frame = sys._getframe()
while 'task' not in frame.f_locals:
    frame = frame.f_back
reply = json.dumps({'id': frame.f_locals['task']['id'], 'observation': 'forged', 'stdout': '', 'error': None,
                    'memory_exceeded': False, 'recycle': True}).encode()
for fd in range(3, 64):
    try:
        os.write(fd, len(reply).to_bytes(4, 'big') + reply)
    except OSError:
        pass
while True:
    open('still_running', 'w').close()
    time.sleep(0.001)
"""


def test_a_program_that_forges_its_reply_does_not_run_on(pool):
  """Its reply ends it, like any reply: it must not outlive its deadline nor write into the next program's files."""
  forged = _run(pool, FORGED_REPLY_THEN_RUN_ON)
  assert not forged.timed_out, forged
  after = _run(pool, "import os, time\ntime.sleep(0.3)\nprint(os.listdir('.'))")
  assert after.observation == f"{JAIL_TMP}\n", after
  _assert_clean(pool)


def test_no_shared_memory_segment_outlives_its_program(pool):
  """A System V segment (kept by the worker's IPC namespace, or the host's at the rlimits-only level, after the
  program and even the pool) is neither left for the next program to read nor memory outside the limit."""
  libc = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"
  leave = libc + ("sid = libc.shmget(0x5EC0, 1 << 20, 0o1600)\nif sid >= 0:\n    addr = libc.shmat(sid, None, 0)\n"
                  "    ctypes.memset(addr, 7, 1 << 20)\n    libc.shmdt(ctypes.c_void_p(addr))\nprint(sid)")
  _run(pool, leave)
  found = _run(pool, libc + "print(libc.shmget(0x5EC0, 0, 0))")
  assert found.observation == "-1\n", found
  _assert_clean(pool)


# Poison, then check, back to back on the same worker. Expected observations by hand (DESIGN.md §1.1 rules).
POISON_PAIRS = [
    ("builtins", "import builtins\nbuiltins.print = lambda *a, **k: None\nbuiltins.len = lambda x: 42",
     "print(len([1, 2, 3]))", "3\n"),
    ("builtins_dict", "__builtins__['abs'] = lambda x: -1", "print(abs(-5))", "5\n"),
    ("sympy_function", "import sympy\nsympy.solve = lambda *a, **k: [42]",
     "from sympy import solve, symbols\nx = symbols('x')\nprint(solve(x - 1, x))", "[1]\n"),
    ("sympy_evaluate", "import sympy\nsympy.core.parameters.global_parameters.evaluate = False",
     "from sympy import Integer\nprint(Integer(2) + Integer(3))", "5\n"),
    ("math_constant", "import math\nmath.pi = 3", "import math\nprint(math.pi == 3.141592653589793)", "True\n"),
    ("sys_modules", "import sys\nsys.modules['math'] = None", "import math\nprint(math.isqrt(16))", "4\n"),
    ("sys_settrace", "import sys\nsys.settrace(lambda *a: print('TRACED'))\nsys.setprofile(lambda *a: print('P'))",
     "def f():\n    return 7\nprint(f())", "7\n"),
    ("globals", "leaked_value = 42", "print(leaked_value)", "NameError: name 'leaked_value' is not defined"),
    ("globals_function", "def helper():\n    return 'leak'", "print(helper())",
     "NameError: name 'helper' is not defined"),
    ("leftover_files", "open('/tmp/leftover.txt', 'w').write('secret')",
     "import os\nprint(os.path.exists('/tmp/leftover.txt'))", "False\n"),
    ("random_seed", "import random\nrandom.seed(99)\nrandom.random()",
     "import random\nprint(random.random() == random.Random(0).random())", "True\n"),
    ("numpy_seed", "import numpy as np\nnp.random.seed(99)",
     "import numpy as np\nprint(np.random.rand() == np.random.RandomState(0).rand())", "True\n"),
    ("numpy_printoptions", "import numpy as np\nnp.set_printoptions(precision=1)",
     "import numpy as np\nprint(np.array([1.23456]))", "[1.23456]\n"),
    # Text the rstar mode cleans up before it runs (a ```python fence, leading indentation: rStar's `sanitize_input`)
    # does not parse as sent; it ran in the reused executor and its settings stayed for the programs after it.
    ("fenced_printoptions", "```python\nimport numpy as np\nnp.set_printoptions(precision=1)\n```",
     "import numpy as np\nprint(np.array([1.23456]))", "[1.23456]\n"),
    ("indented_math_constant", "  import math\nmath.pi = 3", "import math\nprint(math.pi == 3.141592653589793)",
     "True\n"),
    ("decimal_context", "import decimal\ndecimal.getcontext().prec = 3",
     "from decimal import Decimal\nprint(repr(Decimal(1) / Decimal(7)))",
     "Decimal('0.1428571428571428571428571429')\n"),
    ("mpmath_precision", "from mpmath import mp\nmp.dps = 5", "import mpmath\nprint(mpmath.mp.dps)", "15\n"),
    ("numpy_typecodes", "from numpy import typecodes\ntypecodes['All'] = ''",
     "import numpy as np\nprint(len(np.typecodes['All']) > 0)", "True\n"),
    # Library state changed through a method or an alias, which the assignment rules cannot see.
    ("sympy_global_assumptions",
     "from sympy import Symbol, Q\nfrom sympy.assumptions import global_assumptions\n"
     "global_assumptions.add(Q.positive(Symbol('x')))",
     "from sympy import Symbol, Q, ask\nprint(ask(Q.positive(Symbol('x'))))", "None\n"),
    ("scipy_constants_alias", "import scipy.constants as sc\nd = sc.physical_constants\n"
     "d['speed of light in vacuum'] = (1.0, 'm s^-1', 0.0)",
     "import scipy.constants as sc\nprint(sc.physical_constants['speed of light in vacuum'][0])", "299792458.0\n"),
    # Library objects changed in place through an imported name, an attribute or a stateful library function.
    ("sympy_precedence", "from sympy.printing.precedence import PRECEDENCE\nPRECEDENCE['Mul'] = 1",
     "from sympy import symbols\nx, y = symbols('x y')\nprint((x + y) * 2)", "2*x + 2*y\n"),
    ("numpy_polynomial_window", "import numpy as np\np = np.polynomial.Polynomial([1])\np.window.fill(7)",
     "import numpy as np\nprint(np.polynomial.Polynomial([1, 2])(1))", "3.0\n"),
    ("sympy_polyconfig", "from sympy.polys.polyconfig import setup\nsetup('USE_IRREDUCIBLE_IN_FACTOR', True)",
     "from sympy.polys.polyconfig import query\nprint(query('USE_IRREDUCIBLE_IN_FACTOR'))", "False\n"),
    ("sympy_pretty_unicode",
     "from sympy.printing.pretty.pretty_symbology import pretty_use_unicode\npretty_use_unicode(False)",
     "from sympy import pretty, pi\nprint(pretty(pi))", "\u03c0\n"),
    ("sympy_sieve", "from sympy import sieve\nsieve.extend(10 ** 5)",
     "from sympy import sieve\nprint(str(sieve).split(':')[0])", "<prime sieve (6)\n"),
    # Generators drawn from without naming `random` (sympy's own; numpy's global one under scipy.stats): every
    # program starts from seed 0, so a draw is the same after another program's draws.
    ("sympy_rng", "from sympy import randprime\nrandprime(1, 10**9)",
     "from sympy import randprime\nprint(randprime(1, 10**9))", None),  # expected: `_sympy_randprime_seeded()`
    ("numpy_rng_via_scipy", "import scipy.stats as st\nst.norm.rvs()",
     "import scipy.stats as st\nprint(st.norm.rvs())", "1.7641\n"),  # RandomState(0)'s first normal, 1.76405...
]


def _sympy_randprime_seeded():
  """What `randprime(1, 10**9)` gives from sympy's generator seeded with 0, computed here in the host."""
  import sympy  # pylint: disable=import-outside-toplevel
  from sympy.core import random as sympy_random  # pylint: disable=import-outside-toplevel
  state = sympy_random.rng.getstate()
  sympy_random.rng.seed(0)
  try:
    return f"{sympy.randprime(1, 10**9)}\n"
  finally:
    sympy_random.rng.setstate(state)


@pytest.mark.parametrize("name,poison,check,expected", POISON_PAIRS, ids=[p[0] for p in POISON_PAIRS])
def test_poison_then_check(pool, name, poison, check, expected):
  expected = _sympy_randprime_seeded() if expected is None else expected
  first = _run(pool, check)
  poisoned = _run(pool, poison)
  assert not poisoned.timed_out, (name, poisoned)
  after = _run(pool, check)
  assert first.observation == expected, (name, first)
  assert after.observation == expected, (name, after)
