"""What the command lines (`python -m rstar_jax.generate`, `.convert`, `.demo`) share. Imports no jax.

`run` ends a command whose stdout reader left early (`... | head -1`) as a Unix tool ends: quietly, with the exit
status of a process killed by SIGPIPE.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from typing import Callable

# What a shell reports for a process SIGPIPE killed (`yes | head -1`; seen with `set -o pipefail`).
SIGPIPE_EXIT = 128 + signal.SIGPIPE


def _stdout_reader_gone() -> bool:
  """Whether stdout is a pipe or socket whose reading end is closed (poll reports POLLERR or POLLHUP on it)."""
  try:
    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
  except (AttributeError, OSError, ValueError):  # no stdout, or one without a file descriptor
    return False


def run(main: Callable[[], int]) -> int:
  """Runs a command line's `main`; returns its exit status, 141 (SIGPIPE's) when stdout's reader left.

  Python ignores SIGPIPE, so a write into a closed pipe raised BrokenPipeError: a traceback and exit 1 (or, from the
  flush at exit of what the last prints left buffered, "Exception ignored ... BrokenPipeError" and exit 120), which
  `| head -1` users read as a failure. A BrokenPipeError of another pipe (stdout still read) is a real failure and
  propagates. (argparse's `--help` ignores a failed write itself.)
  """
  try:
    code = main()
    sys.stdout.flush()  # the last buffered lines go out here, where a closed pipe is caught, not at exit
    return code
  except BrokenPipeError:
    if not _stdout_reader_gone():
      raise
    # Python's recommended way out: stdout's descriptor now points at /dev/null, so the interpreter's flush at exit
    # of what is still buffered neither fails nor prints "Exception ignored".
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return SIGPIPE_EXIT
