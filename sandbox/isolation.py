"""Host side of the jail: which isolation level this machine offers, and the command that starts a worker.

Levels, strongest first (`SandboxPool(isolation="auto")` takes the first that works and says which):

- "bwrap": bubblewrap (`apt-get install bubblewrap`) builds the jail: new PID, network (loopback only, so nothing
  leaves the machine), IPC, UTS and cgroup namespaces; a fresh root holding only read-only binds of the system
  directories, a few `/etc` files, the Python prefix, its user site (`pip install --user`) and this package;
  private size-limited tmpfs `/tmp` (a Python prefix under the host's /tmp, such as a venv there, is bound into it)
  and `/dev/shm`; a minimal `/dev` and a fresh `/proc`; cleared environment; `--die-with-parent`, `--new-session`.
  When the host runs as root, the worker keeps only CAP_SETUID/CAP_SETGID and drops at once to a per-worker
  unprivileged uid (as non-root, bwrap maps the caller's uid in a user namespace instead, and the zygote is the
  jail's pid 1, so no process there that a program could reach runs without the seccomp filter).
- "unshare": util-linux `unshare` makes the same namespaces and the worker builds the same read-only root itself
  (`mount`, `chroot`), then drops to the unprivileged uid. Needs root.
- "rlimits-only": no namespaces. The worker still drops to the unprivileged uid when root, and every executor still
  runs under rlimits and the seccomp filter (which also blocks sockets); files outside the private work dir are
  protected only by permissions. So a program sees the host's whole file system and process list, reads what is
  world-readable (the checkout, data), and writes where anyone may: what it leaves in the host's `/tmp`, `/var/tmp`
  or `/dev/shm` outlives it, later programs of the same worker see it, and `/dev/shm` is memory outside its rlimits.
  As non-root there is no other uid: programs run under the host's own, so they can do whatever the host user can
  to its files, and to its processes through `/proc` (read the host's environment in `/proc/<pid>/environ`, write its
  memory in `/proc/<pid>/mem` where the kernel lets a process do so to its own uid's): no protection of the host.
  As root, programs can import only what the worker preloaded when the Python installation lies beyond a directory
  the unprivileged uid cannot enter (`closed_to_others`; the pool warns).

At every level each snippet runs in an executor with rlimits, its own process group, a wall-clock kill and (x86-64)
the seccomp filter of `_seccomp`.
"""

from __future__ import annotations

import functools
import os
import shutil
import site
import stat
import subprocess
import sys
from typing import Sequence

LEVELS = ("bwrap", "unshare", "rlimits-only")

JAIL_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}

_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/nsswitch.conf",
              "/etc/host.conf", "/etc/hosts", "/etc/resolv.conf", "/etc/gai.conf", "/etc/passwd", "/etc/group",
              "/etc/alternatives")
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Inside a jail the package is bound here, outside /tmp: a checkout under /tmp would vanish under the private /tmp.
JAIL_PACKAGE_PARENT = "/opt/rstar_sandbox"


def user_site_dirs() -> list[str]:
  """The user site-packages this Python imports from (`pip install --user`'s, the default of a non-root pip on a
  system Python), or [] (none, or disabled: `-s`, `-I`, a venv).

  Workers run with `-s` and, in a jail, another HOME: they add these explicitly (and jails bind them), or a package
  installed there (sympy, numpy) was missing from every program while the host imported it.
  """
  user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
  return [user_site] if user_site and user_site in sys.path and os.path.isdir(user_site) else []


def _under(path: str, roots: Sequence[str]) -> bool:
  return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def jail_layout() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """(host path, jail path) pairs to bind read-only, and (target, link) symlinks, for the jail's root."""
  binds: list[str] = []
  symlinks: list[tuple[str, str]] = []
  for d in _SYSTEM_DIRS:
    if os.path.islink(d):
      symlinks.append((os.readlink(d), d))
    elif os.path.isdir(d):
      binds.append(d)
  binds += [p for p in _ETC_FILES if os.path.exists(p)]
  extra = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(sys.executable)),
           *user_site_dirs()}
  try:
    extra.update(site.getsitepackages())
  except AttributeError:  # old virtualenv's site module
    pass
  # Real paths too: a venv's python is a symlink into its base installation.
  extra.update({os.path.realpath(p) for p in list(extra)})
  for p in sorted(extra, key=len):
    if os.path.isdir(p) and not _under(p, binds):
      binds.append(p)
  pairs = [(p, p) for p in binds] + [(PACKAGE_DIR, JAIL_PACKAGE_PARENT + "/sandbox")]
  return pairs, symlinks


def closed_to_others() -> tuple[str, str] | None:
  """(directory, Python path) for the first directory on the way to this Python's installation that users other
  than its owner and group cannot enter (no o+x), or None when every one is open.

  At the rlimits-only level as root, programs run under an unprivileged uid: beyond such a directory (a pyenv or
  conda under /root, mode 0700) they can import only what the worker preloaded, as root, before dropping to it.
  """
  paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *user_site_dirs()}
  try:
    paths.update(site.getsitepackages())
  except AttributeError:  # old virtualenv's site module
    pass
  for path in sorted({os.path.realpath(p) for p in paths}):
    parts = path.strip("/").split("/")
    for i in range(len(parts) + 1):
      d = "/" + "/".join(parts[:i])
      try:
        mode = os.stat(d).st_mode
      except OSError:
        break  # a path that does not exist is not imported from
      if not mode & stat.S_IXOTH:
        return d, path
  return None


def worker_argv(config_json: str, package_parent: str = JAIL_PACKAGE_PARENT) -> list[str]:
  # The user site goes where the host has it, before the other site-packages (its packages win, as on the host).
  boot = (f"import site, sys; sys.path.insert(0, {package_parent!r}); n = len(sys.path); "
          f"[site.addsitedir(p) for p in {user_site_dirs()!r}]; "
          "i = min([sys.path.index(p) for p in site.getsitepackages() if p in sys.path[:n]], default=n); "
          "sys.path[i:] = sys.path[n:] + sys.path[i:n]; "
          "from sandbox import _worker; _worker.main()")
  return [os.path.abspath(sys.executable), "-s", "-B", "-c", boot, config_json]


def bwrap_argv(inner: list[str], *, tmp_bytes: int, shm_bytes: int, as_root: bool) -> list[str]:
  binds, symlinks = jail_layout()
  argv = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
          "--die-with-parent", "--new-session", "--hostname", "sandbox"]
  if as_root:
    argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
  else:
    # Without --as-pid-1, bwrap's reaper is the jail's pid 1: outside the seccomp filter, under the worker's own uid
    # and dumpable, so a program could open its /proc/1/mem for writing and run code there (fork, exec, signals).
    # The zygote (non-dumpable) takes its place. As root the reaper is root in the jail, out of the worker uid's reach,
    # and stays: it is what SIGKILLs the jail when bwrap dies (bwrap, without CAP_KILL, may not signal the zygote's
    # uid, so the zygote's own death signal would never come).
    argv += ["--unshare-user", "--as-pid-1"]
  # The private /tmp comes first, so that what is bound below it shows through: a Python (a venv) under the host's
  # /tmp was hidden by a tmpfs mounted over it afterwards, and bwrap could not exec it ("execvp ...: No such file").
  argv += ["--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
  # bwrap would create missing parents (e.g. /root for a pyenv Python) as 0700: make them traversable.
  targets = [dst for _, dst in binds]
  parents = set()
  for dst in targets:
    parent = os.path.dirname(dst)
    while parent != "/" and not _under(parent, targets):
      parents.add(parent)
      parent = os.path.dirname(parent)
  for parent in sorted(parents, key=lambda q: q.count("/")):
    argv += ["--perms", "0755", "--dir", parent]
  for src, dst in binds:
    argv += ["--ro-bind", src, dst]
  for target, link in symlinks:
    argv += ["--symlink", target, link]
  argv += ["--dev", "/dev", "--proc", "/proc",
           "--perms", "1777", "--size", str(shm_bytes), "--tmpfs", "/dev/shm",
           "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
  for k, v in JAIL_ENV.items():
    argv += ["--setenv", k, v]
  argv += ["--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp"]
  return argv + ["--"] + inner


UNSHARE_PREFIX = ["unshare", "--fork", "--kill-child", "--pid", "--net", "--ipc", "--uts", "--mount",
                  "--propagation", "private"]


def _probe(argv: list[str]) -> str | None:
  """Runs a tiny command; returns None when it worked, else why not."""
  try:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=30, check=False, env=dict(JAIL_ENV))
  except (OSError, subprocess.TimeoutExpired) as e:
    return f"{argv[0]}: {e}"
  if proc.returncode != 0:
    return f"{argv[0]} exited {proc.returncode}: {proc.stdout.decode(errors='replace').strip()[:300]}"
  return None


@functools.lru_cache(maxsize=None)
def probe(level: str) -> str | None:
  """None when `level` works on this machine, else the reason it does not (cached per process)."""
  if level not in LEVELS:
    raise ValueError(f"unknown isolation level {level!r}; expected one of {LEVELS}")
  if sys.platform != "linux":
    return None if level == "rlimits-only" else "namespaces need Linux"
  if level == "bwrap":
    if shutil.which("bwrap") is None:
      return "bwrap not found (apt-get install bubblewrap)"
    inner = [os.path.abspath(sys.executable), "-s", "-B", "-c", "pass"]
    return _probe(bwrap_argv(inner, tmp_bytes=1 << 20, shm_bytes=1 << 20, as_root=os.geteuid() == 0))
  if level == "unshare":
    if os.geteuid() != 0:
      return "the unshare level needs root (it mounts the jail itself)"
    if shutil.which("unshare") is None:
      return "unshare (util-linux) not found"
    return _probe(UNSHARE_PREFIX + ["true"])
  return None


def choose(requested: str) -> tuple[str, dict[str, str]]:
  """The level to use and, for "auto", why stronger levels were skipped.

  Raises:
    RuntimeError: an explicitly requested level does not work here.
  """
  if requested != "auto":
    why = probe(requested)
    if why is not None:
      raise RuntimeError(f"isolation level {requested!r} is not available: {why}")
    return requested, {}
  skipped = {}
  for level in LEVELS:
    why = probe(level)
    if why is None:
      return level, skipped
    skipped[level] = why
  raise AssertionError("rlimits-only is always available")
