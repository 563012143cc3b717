"""Atomic writes (`rstar_jax.files`) and the project's writers that use them."""

import errno
import os
import signal
import stat
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from rstar_jax import files
from rstar_jax.data import formats
from rstar_jax.models import tensor_files
from rstar_jax.search import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def umask_027():
  old = os.umask(0o027)
  yield
  os.umask(old)


def _mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_text_and_bytes_syncs_and_takes_the_umask(tmp_path, umask_027, monkeypatch):
  synced = []
  real_fsync = os.fsync
  monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real_fsync(fd))[1])
  files.atomic_write(tmp_path / "sub" / "a.txt", "héllo\n")
  files.atomic_write(tmp_path / "sub" / "b.bin", b"\x00\xff")
  assert (tmp_path / "sub" / "a.txt").read_bytes() == "héllo\n".encode("utf-8")
  assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\xff"
  # mkstemp alone gives 0o600: another account's training job could not read the data.
  assert _mode(tmp_path / "sub" / "a.txt") == _mode(tmp_path / "sub" / "b.bin") == 0o640
  # Each write syncs its file, then the folder (the rename is only durable once the directory entry is on disk); the
  # first one also syncs tmp_path, which holds the entry of the folder it created.
  assert [stat.S_ISDIR(mode) for mode in synced] == [False, True, True, False, True]
  assert sorted(os.listdir(tmp_path / "sub")) == ["a.txt", "b.bin"]


def test_a_write_into_new_folders_syncs_each_folder_s_entry_in_its_parent(tmp_path, monkeypatch):
  # fsync(2): syncing a file does not put its entry in its folder on disk; that takes a sync of the folder. So does a
  # folder's own entry in its parent: only the file's folder was synced, and a folder atomic_open created for the file
  # could vanish with it at a power loss after the write reported success.
  synced = []
  real_fsync = os.fsync
  def fsync(fd):
    if stat.S_ISDIR(os.fstat(fd).st_mode):
      synced.append(os.readlink(f"/proc/self/fd/{fd}"))
    return real_fsync(fd)
  monkeypatch.setattr(os, "fsync", fsync)
  base = os.path.realpath(tmp_path)
  files.atomic_write(tmp_path / "a" / "b" / "c.txt", "new")
  assert sorted(synced) == sorted([base, f"{base}/a", f"{base}/a/b"])
  synced.clear()
  files.atomic_write(tmp_path / "a" / "b" / "d.txt", "new")  # the folders are there: only the rename's is synced
  assert synced == [f"{base}/a/b"]
  with pytest.raises(FileExistsError):  # a file where the folder should be fails as before
    files.atomic_write(tmp_path / "a" / "b" / "c.txt" / "e.txt", "new")
  assert (tmp_path / "a" / "b" / "c.txt").read_text() == "new"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  target = tmp_path / "data.jsonl"
  target.write_text("old\n")
  with pytest.raises(RuntimeError, match="boom"):
    with files.atomic_open(target) as f:
      f.write("half of the new")
      raise RuntimeError("boom")
  assert target.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["data.jsonl"]
  with pytest.raises(ValueError, match="mode"):
    with files.atomic_open(target, "a"):
      pass


def test_a_write_to_a_symbolic_link_replaces_the_file_it_points_to_and_keeps_the_link(tmp_path):
  # As `open(link, "w")` does. Renamed over the link itself, the temporary replaced the link with a plain file, and
  # the file it pointed to (elsewhere, say on a data disk) kept its old content.
  (tmp_path / "data").mkdir()
  (tmp_path / "run").mkdir()
  (tmp_path / "data" / "trees.jsonl").write_text("old\n")
  os.symlink("../data/trees.jsonl", tmp_path / "run" / "trees.jsonl")
  os.symlink("trees.jsonl", tmp_path / "run" / "alias.jsonl")  # a link to a link
  files.atomic_write(tmp_path / "run" / "trees.jsonl", "new\n")
  files.atomic_write(tmp_path / "run" / "alias.jsonl", "newer\n")
  assert os.readlink(tmp_path / "run" / "trees.jsonl") == "../data/trees.jsonl"
  assert os.readlink(tmp_path / "run" / "alias.jsonl") == "trees.jsonl"
  assert (tmp_path / "data" / "trees.jsonl").read_text() == "newer\n"
  assert sorted(os.listdir(tmp_path / "data")) == ["trees.jsonl"]  # no temporary left beside the file
  assert sorted(os.listdir(tmp_path / "run")) == ["alias.jsonl", "trees.jsonl"]
  os.symlink("../data/new/made.jsonl", tmp_path / "run" / "dangling.jsonl")  # `open` would create the file it names
  files.atomic_write(tmp_path / "run" / "dangling.jsonl", "made\n")
  assert os.path.islink(tmp_path / "run" / "dangling.jsonl")
  assert (tmp_path / "data" / "new" / "made.jsonl").read_text() == "made\n"


def test_every_writer_gives_readable_files(tmp_path, umask_027):
  tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  tensor_files.write_safetensors(tmp_path / "m.safetensors", tensors)
  tensor_files.write_torch_bin(tmp_path / "m.bin", tensors)
  records.write_run_config(tmp_path / "trees.config.json", {"seed": 1})
  records.write_trees(tmp_path / "trees.jsonl", [])
  formats.write_sft_records(tmp_path / "sft.jsonl", [formats.SftRecord(query="q", response="r")])
  for name in os.listdir(tmp_path):
    assert _mode(tmp_path / name) == 0o640, name
  assert sorted(os.listdir(tmp_path)) == ["m.bin", "m.safetensors", "sft.jsonl", "trees.config.json", "trees.jsonl"]
  with tensor_files.SafetensorsFile(tmp_path / "m.safetensors") as f:
    np.testing.assert_array_equal(f.get("w"), tensors["w"])
  np.testing.assert_array_equal(tensor_files.read_torch_bin(tmp_path / "m.bin")["w"], tensors["w"])
  assert formats.read_sft_records(tmp_path / "sft.jsonl") == [formats.SftRecord(query="q", response="r")]


def test_a_full_disk_names_the_file_it_was_writing(tmp_path):
  # A real failed write, no root needed: past RLIMIT_FSIZE (SIGXFSZ ignored) write(2) fails with EFBIG, as a full
  # disk fails with ENOSPC. Python's OSError from a write names no file (unlike open's), so the run stopped with
  # "[Errno 28] No space left on device" and nothing said which of the phase's files it was writing.
  target = tmp_path / "trees-00000.jsonl"
  code = ("import resource, signal, sys\n"
          "from rstar_jax import files\n"
          "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
          "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
          "try:\n"
          "  files.atomic_write(sys.argv[1], 'x' * 100000)\n"
          "except OSError as e:\n"
          "  print(e.errno, e)\n")
  proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60,
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith(f"{errno.EFBIG} ") and str(target) in proc.stdout, proc.stdout
  assert os.listdir(tmp_path) == []  # no temporary left, no target


def test_a_read_only_folder_names_the_file_not_its_temporary(tmp_path):
  # The temporary's creation failed first, and its error named that random name ("out.jsonl.host.12.k3j_x9.tmp"), a
  # file the user never asked for and will not find. Root writes anywhere: the writer drops to uid 65534 then (in a
  # folder of /tmp, which that uid can reach; pytest's tmp_path is root's alone).
  folder = tempfile.mkdtemp()
  try:
    os.chmod(folder, 0o555)
    target = os.path.join(folder, "out.jsonl")
    code = ("import os, sys\n"
            "from rstar_jax import files\n"
            "if os.geteuid() == 0:\n"
            "  os.setgid(65534); os.setuid(65534)\n"
            "try:\n"
            "  files.atomic_write(sys.argv[1], 'new')\n"
            "except OSError as e:\n"
            "  print(e.errno, e.filename)\n")
    proc = subprocess.run([sys.executable, "-c", code, target], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == f"{errno.EACCES} {target}\n"
    assert os.listdir(folder) == []
  finally:
    os.rmdir(folder)


def _writer(target, then: str) -> subprocess.Popen:
  """A process inside `atomic_open(target)`, half-way through writing; `then` runs there once it says so."""
  code = ("import os, signal, sys\n"
          "from rstar_jax import files\n"
          "with files.atomic_open(sys.argv[1]) as f:\n"
          "  f.write('half of the new'); f.flush()\n"
          "  print('writing', flush=True)\n"
          f"  {then}\n")
  proc = subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=REPO, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline() == "writing\n"
  return proc


def test_a_write_after_a_killed_one_removes_its_temporary_and_keeps_a_live_writers(tmp_path):
  # SIGKILL skips atomic_open's cleanup: the temporary (a whole checkpoint export, in a real run) stayed beside the
  # target for good, every kill adding one, though the module promises no temporary behind.
  target = tmp_path / "model.safetensors"
  killed = _writer(target, "os.kill(os.getpid(), signal.SIGKILL)")
  assert killed.wait(timeout=60) == -signal.SIGKILL
  assert len(os.listdir(tmp_path)) == 1  # its temporary
  live = _writer(target, "sys.stdin.readline()")  # still writing: its temporary must survive another write
  try:
    files.atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and len(os.listdir(tmp_path)) == 2, os.listdir(tmp_path)
  finally:
    live.communicate("go\n", timeout=60)
  assert live.returncode == 0 and target.read_text() == "half of the new"
  assert os.listdir(tmp_path) == ["model.safetensors"]


def test_a_killed_writer_s_temporary_is_removed_when_this_process_has_its_pid(tmp_path):
  # A container restarted in its pod (an OOM kill, a preemption) starts its job with the pid it had before (pid 1 or
  # 2 of a fresh pid namespace) and the same host name: its killed write's temporary carries this process's pid, so
  # it was taken for one this process is writing and stayed for good, a whole export more per kill.
  target = tmp_path / "model.safetensors"
  killed = _writer(target, "os.kill(os.getpid(), signal.SIGKILL)")
  assert killed.wait(timeout=60) == -signal.SIGKILL
  [temporary] = os.listdir(tmp_path)
  prefix = f"model.safetensors.{files.socket.gethostname()}."
  assert temporary.startswith(prefix)
  # The same file as the earlier run would have named it, had it run with this process's pid.
  os.rename(tmp_path / temporary, tmp_path / f"{prefix}{os.getpid()}.{temporary[len(prefix):].split('.', 1)[1]}")
  with files.atomic_open(target, "wb") as outer:  # this process's own write in progress must survive another write
    outer.write(b"outer")
    files.atomic_write(target, b"inner")
    assert target.read_bytes() == b"inner" and len(os.listdir(tmp_path)) == 2, os.listdir(tmp_path)
  assert target.read_bytes() == b"outer"
  assert os.listdir(tmp_path) == ["model.safetensors"]


def test_a_folder_lock_whose_record_cannot_be_written_is_not_left_held(tmp_path):
  # Past RLIMIT_FSIZE 0 (SIGXFSZ ignored) writing the holder's record fails with EFBIG, as on a full disk. The
  # descriptor holding the flock was never closed: a retry in the same process (once space was freed) was refused as
  # "another search is writing here", and the error named no file.
  code = ("import resource, signal, sys\n"
          "from rstar_jax import files\n"
          "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
          "hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]\n"
          "resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))\n"
          "try:\n"
          "  files.FolderLock(sys.argv[1], 'trees.lock', 'search').acquire()\n"
          "  first = 'acquired'\n"
          "except OSError as e:\n"
          "  first = f'{e.errno} {e.filename}'\n"
          "resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # stdout may be a file too\n"
          "print(first)\n"
          "with files.FolderLock(sys.argv[1], 'trees.lock', 'search'):\n"
          "  print(open(sys.argv[1] + '/trees.lock').read().split(' on ')[0])\n")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  pid = proc.stdout.splitlines()[-1].rsplit(" ", 1)[-1]  # the retry took the lock and recorded its holder
  assert proc.stdout == f"{errno.EFBIG} {tmp_path / 'trees.lock'}\nsearch pid {pid}\n" and pid.isdigit()
  assert files.lock_holder(tmp_path / "trees.lock") is None


HOLD_LOCK = """
import sys
from rstar_jax import files
files.FolderLock(sys.argv[1], "run.lock", "search").acquire()
print("held", flush=True)
sys.stdin.read()  # holds the lock until killed
"""


def test_a_folder_lock_keeps_out_a_second_run_until_its_holder_is_gone(tmp_path):
  # Two searches (or trainers) on one folder wrote over each other's files; the second must be refused while the
  # first runs, in another process (here one SIGKILLed later, as a preempted job) or in this one.
  holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO))
  try:
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(files.FolderInUseError, match=rf"{tmp_path}: another search is writing here \(search pid "
                       rf"{holder.pid} on .*run one search per folder at a time"):
      files.FolderLock(tmp_path, "run.lock", "search").acquire()
  finally:
    holder.kill()
    holder.wait()
  with files.FolderLock(tmp_path, "run.lock", "search"):  # the kernel freed a killed holder's lock
    with pytest.raises(files.FolderInUseError, match=rf"search pid {os.getpid()} on"):
      files.FolderLock(tmp_path, "run.lock", "search").acquire()
    files.FolderLock(tmp_path, "other.lock", "search").acquire()  # another lock file is another lock
  with files.FolderLock(tmp_path, "run.lock", "search"):  # released on exit
    pass
