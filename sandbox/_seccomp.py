"""A seccomp-bpf filter for snippet executors, assembled by hand (stdlib + ctypes only).

No pip dependency: the filter is a short classic-BPF program built here and installed with `prctl`. It runs in
every snippet executor right after `fork`, so it holds at every isolation level (even without namespaces it stops
sockets, `fork`/`exec` and signals to other processes).

Denied with `EPERM`: process creation (`fork`, `vfork`, `clone` without `CLONE_THREAD`, `execve`, `execveat`),
signals to anything but the executor itself (`kill`, `tgkill` to another pid, `tkill`, sigqueue, pidfd, and
`fcntl` `F_SETOWN` / `F_SETOWN_EX`, whose owner the kernel sends SIGIO, or any signal `F_SETSIG` names), scheduling
settings of another process (`setpriority`, `ioprio_set`, `sched_setaffinity`, `sched_setscheduler`, `sched_setparam`,
`sched_setattr`: inherited, the zygote's would hold for every later program), tracing and
cross-process memory (`ptrace`, `process_vm_*`, `kcmp`, `move_pages`, `migrate_pages`), every socket (`socket`,
`socketpair`: no network, no DNS, not even loopback), System V IPC (`shmget`, `semget`, `msgget` and their
operations), `memfd_create`, namespace/mount/kernel-admin calls, `bpf`, `perf_event_open`, `userfaultfd`, io_uring,
`prlimit64` on another pid, `prctl(PR_SET_PDEATHSIG)` (the death signal the executor armed is what kills it when its
zygote is SIGKILLed at the "rlimits-only" level, where no PID namespace does), and closing or overwriting the
executor's two protocol pipes (`close`, `dup2`, `dup3` on those fds). `clone3` and `close_range` answer `ENOSYS` so
that glibc and CPython fall back to `clone` (threads still work) and to per-fd `close` (which the filter checks).
Syscalls of a foreign ABI (x32, or i386 on x86-64) kill the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import platform
from typing import Iterable, Sequence

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

_RET_KILL_PROCESS = 0x80000000
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

# Classic BPF opcodes.
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

# struct seccomp_data offsets: nr @0, arch @4, args[i] @16 + 8 * i (low 32 bits first on little endian).
_OFF_NR = 0
_OFF_ARCH = 4


def _arg_lo(i: int) -> int:
  return 16 + 8 * i


_CLONE_THREAD = 0x00010000
_F_SETOWN = 8
_F_SETOWN_EX = 15
_PRIO_PROCESS = 0
_IOPRIO_WHO_PROCESS = 1
_PR_SET_PDEATHSIG = 1
_X32_SYSCALL_BIT = 0x40000000
_AUDIT_ARCH_X86_64 = 0xC000003E

# x86-64 syscall numbers (asm/unistd_64.h).
_X86_64 = {
    "close": 3, "shmget": 29, "shmat": 30, "shmctl": 31, "dup2": 33, "socket": 41, "socketpair": 53, "clone": 56,
    "fork": 57, "vfork": 58, "execve": 59, "kill": 62, "semget": 64, "semop": 65, "semctl": 66, "shmdt": 67,
    "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "fcntl": 72, "ptrace": 101, "syslog": 103,
    "rt_sigqueueinfo": 129, "personality": 135, "setpriority": 141, "sched_setparam": 142, "sched_setscheduler": 144,
    "pivot_root": 155, "prctl": 157, "chroot": 161, "acct": 163, "mount": 165, "umount2": 166, "swapon": 167,
    "swapoff": 168, "reboot": 169, "init_module": 175, "delete_module": 176, "quotactl": 179, "tkill": 200,
    "sched_setaffinity": 203, "semtimedop": 220, "tgkill": 234, "kexec_load": 246, "add_key": 248, "request_key": 249,
    "keyctl": 250, "ioprio_set": 251, "migrate_pages": 256, "unshare": 272, "move_pages": 279, "dup3": 292,
    "rt_tgsigqueueinfo": 297, "perf_event_open": 298, "prlimit64": 302, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "sched_setattr": 314, "memfd_create": 319,
    "kexec_file_load": 320, "bpf": 321, "execveat": 322, "userfaultfd": 323, "pidfd_send_signal": 424,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434, "clone3": 435, "close_range": 436,
    "pidfd_getfd": 438, "process_madvise": 440, "mount_setattr": 442,
}

_DENY_EPERM = (
    "fork", "vfork", "execve", "execveat", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open",
    "pidfd_send_signal", "pidfd_getfd", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "move_pages",
    "migrate_pages", "process_madvise", "socket", "socketpair", "syslog", "personality", "pivot_root", "chroot",
    "acct", "mount", "umount2", "swapon", "swapoff", "reboot", "init_module", "finit_module", "delete_module",
    "quotactl", "kexec_load", "kexec_file_load", "add_key", "request_key", "keyctl", "unshare", "setns",
    "perf_event_open", "bpf", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "open_tree",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # System V IPC: its objects outlive the program (in the worker's IPC namespace, or the host's at the rlimits-only
    # level, even after the pool), readable by the programs that follow, and their memory is outside RLIMIT_AS.
    "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semtimedop", "semctl", "msgget", "msgsnd", "msgrcv",
    "msgctl",
    # Its pages (up to RLIMIT_FSIZE a file, RLIMIT_NOFILE files: 4 GB) are memory outside RLIMIT_AS.
    "memfd_create",
)
_DENY_ENOSYS = ("clone3", "close_range")


def supported() -> bool:
  """Whether this machine's architecture has a syscall table here (x86-64 only for now)."""
  return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


class _Assembler:
  """Tiny classic-BPF assembler with forward labels (jump offsets are resolved at the end)."""

  def __init__(self):
    self.code: list[tuple[int, object, object, int]] = []
    self.labels: dict[str, int] = {}

  def ld(self, offset: int) -> None:
    self.code.append((_LD_W_ABS, 0, 0, offset))

  def jump(self, op: int, k: int, jt: int | str, jf: int | str) -> None:
    """`jt`/`jf`: a label name, or 0 to fall through."""
    self.code.append((op, jt, jf, k))

  def ret(self, k: int) -> None:
    self.code.append((_RET_K, 0, 0, k))

  def label(self, name: str) -> None:
    self.labels[name] = len(self.code)

  def assemble(self) -> bytes:
    out = bytearray()
    for pc, (op, jt, jf, k) in enumerate(self.code):
      offs = []
      for target in (jt, jf):
        if isinstance(target, str):
          delta = self.labels[target] - pc - 1
          if not 0 <= delta <= 255:
            raise ValueError(f"BPF jump to {target!r} out of range ({delta})")
          offs.append(delta)
        else:
          offs.append(int(target))
      out += op.to_bytes(2, "little") + bytes(offs) + (k & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(out)


def build_filter(own_pid: int, protected_fds: Sequence[int]) -> bytes:
  """Returns the raw `sock_filter[]` bytes of the executor policy.

  Args:
    own_pid: the executor's pid as seen by itself (signals to it stay allowed: `raise`, `abort`).
    protected_fds: protocol pipe fds that the snippet may not close or overwrite.
  """
  nr = _X86_64
  a = _Assembler()
  a.ld(_OFF_ARCH)
  a.jump(_JEQ_K, _AUDIT_ARCH_X86_64, 0, "kill")
  a.ld(_OFF_NR)
  a.jump(_JGE_K, _X32_SYSCALL_BIT, "kill", 0)
  for name in _DENY_EPERM:
    a.jump(_JEQ_K, nr[name], "eperm", 0)
  for name in _DENY_ENOSYS:
    a.jump(_JEQ_K, nr[name], "enosys", 0)
  a.jump(_JEQ_K, nr["clone"], "clone", 0)
  a.jump(_JEQ_K, nr["kill"], "self_arg0", 0)
  a.jump(_JEQ_K, nr["tgkill"], "self_arg0", 0)
  a.jump(_JEQ_K, nr["prlimit64"], "self_or_zero_arg0", 0)
  for name in ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr"):
    a.jump(_JEQ_K, nr[name], "self_or_zero_arg0", 0)
  a.jump(_JEQ_K, nr["setpriority"], "setpriority", 0)
  a.jump(_JEQ_K, nr["ioprio_set"], "ioprio_set", 0)
  a.jump(_JEQ_K, nr["prctl"], "prctl", 0)
  a.jump(_JEQ_K, nr["close"], "fd_arg0", 0)
  a.jump(_JEQ_K, nr["dup2"], "fd_arg1", 0)
  a.jump(_JEQ_K, nr["dup3"], "fd_arg1", 0)
  a.jump(_JEQ_K, nr["fcntl"], "fcntl", 0)
  a.ret(_RET_ALLOW)
  # An fd's owner gets a signal on I/O, sent with the program's credentials: its zygote, or the host itself at the
  # rlimits-only level as non-root, could be SIGKILLed that way.
  a.label("fcntl")
  a.ld(_arg_lo(1))
  a.jump(_JEQ_K, _F_SETOWN, "eperm", 0)
  a.jump(_JEQ_K, _F_SETOWN_EX, "eperm", "allow")
  # Threads (CLONE_THREAD set) are allowed; anything that makes a new process is not.
  a.label("clone")
  a.ld(_arg_lo(0))
  a.jump(_JSET_K, _CLONE_THREAD, "allow", "eperm")
  a.label("self_arg0")
  a.ld(_arg_lo(0))
  a.jump(_JEQ_K, own_pid, "allow", "eperm")
  a.label("self_or_zero_arg0")
  a.ld(_arg_lo(0))
  a.jump(_JEQ_K, 0, "allow", 0)
  a.jump(_JEQ_K, own_pid, "allow", "eperm")
  # (which, who): only the executor itself, not its process group nor every process of its uid.
  a.label("setpriority")
  a.ld(_arg_lo(0))
  a.jump(_JEQ_K, _PRIO_PROCESS, "self_or_zero_arg1", "eperm")
  a.label("ioprio_set")
  a.ld(_arg_lo(0))
  a.jump(_JEQ_K, _IOPRIO_WHO_PROCESS, "self_or_zero_arg1", "eperm")
  a.label("self_or_zero_arg1")
  a.ld(_arg_lo(1))
  a.jump(_JEQ_K, 0, "allow", 0)
  a.jump(_JEQ_K, own_pid, "allow", "eperm")
  a.label("prctl")
  a.ld(_arg_lo(0))
  a.jump(_JEQ_K, _PR_SET_PDEATHSIG, "eperm", "allow")
  for arg, name in ((0, "fd_arg0"), (1, "fd_arg1")):
    a.label(name)
    a.ld(_arg_lo(arg))
    for fd in protected_fds:
      a.jump(_JEQ_K, fd, "eperm", 0)
    a.ret(_RET_ALLOW)
  a.label("allow")
  a.ret(_RET_ALLOW)
  a.label("eperm")
  a.ret(_RET_ERRNO | errno.EPERM)
  a.label("enosys")
  a.ret(_RET_ERRNO | errno.ENOSYS)
  a.label("kill")
  a.ret(_RET_KILL_PROCESS)
  return a.assemble()


class _SockFprog(ctypes.Structure):
  _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(own_pid: int, protected_fds: Iterable[int]) -> None:
  """Sets no_new_privs and installs the filter on the calling (single-threaded) process.

  Raises:
    OSError: the kernel refused (the caller decides whether to continue without the filter).
  """
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
  prog_bytes = build_filter(own_pid, list(protected_fds))
  buf = ctypes.create_string_buffer(prog_bytes, len(prog_bytes))
  prog = _SockFprog(len(prog_bytes) // 8, ctypes.cast(buf, ctypes.c_void_p))
  libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
  if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {errno.errorcode.get(err, err)}")
  if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"prctl(PR_SET_SECCOMP): {errno.errorcode.get(err, err)}")
