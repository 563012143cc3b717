"""`rstar_jax.cli.run`: the command lines' exit when the reader of their stdout leaves early."""

import os
import subprocess
import sys

import pytest

from rstar_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_with_stdout(stdout, body: str) -> subprocess.CompletedProcess:
  code = ("import sys\n"
          "from rstar_jax import cli\n"
          "def main():\n" + "".join(f"  {line}\n" for line in body.splitlines()) +
          "sys.exit(cli.run(main))\n")
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True,
                        timeout=60, check=False)


def test_a_closed_stdout_ends_quietly_with_sigpipes_status_and_other_broken_pipes_fail():
  read_end, write_end = os.pipe()
  os.close(read_end)  # `| true`: the reader left before the first line
  try:
    # Buffered lines (no flush until exit) and a flushed line: either way no traceback, no "Exception ignored".
    buffered = _run_with_stdout(write_end, "print('x' * 100)\nreturn 0")
    flushed = _run_with_stdout(write_end, "print('x', flush=True)\nprint('never')\nreturn 0")
    # A BrokenPipeError of another pipe (a worker's, say) with stdout closed too is still stdout's reader leaving;
    other = _run_with_stdout(write_end, "raise BrokenPipeError(32, 'Broken pipe')")
  finally:
    os.close(write_end)
  for proc in (buffered, flushed, other):
    assert (proc.returncode, proc.stderr) == (141, ""), proc.stderr[-2000:]
  # ... but with stdout read, it is a real failure: a traceback and exit 1.
  proc = _run_with_stdout(subprocess.PIPE, "print('fine', flush=True)\nraise BrokenPipeError(32, 'Broken pipe')")
  assert (proc.returncode, proc.stdout) == (1, "fine\n") and "BrokenPipeError" in proc.stderr, proc.stderr
  proc = _run_with_stdout(subprocess.PIPE, "print('fine')\nreturn 3")
  assert (proc.returncode, proc.stdout, proc.stderr) == (3, "fine\n", "")


def test_without_a_real_stdout_a_broken_pipe_propagates(capsys):
  def main():
    raise BrokenPipeError(32, "Broken pipe")
  with pytest.raises(BrokenPipeError):  # pytest's capture has no file descriptor: not a pipe whose reader left
    cli.run(main)
  assert cli.run(lambda: 0) == 0 and capsys.readouterr().out == ""

