"""The start every multihost worker shares: `python WORKER.py PROCESS_ID NUM_PROCESSES PORT DEVICES ARGS...`.

Import it before anything imports jax: the device count is an XLA flag, read when jax starts.
"""

import os
import sys


def start() -> tuple[int, int, list[str]]:
  """Sets this process's CPU device count and joins the run; returns (process id, process count, the other args)."""
  pid, nproc, port, ndev = (int(v) for v in sys.argv[1:5])
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ndev}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax  # pylint: disable=g-import-not-at-top

  if nproc > 1:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)
  return pid, nproc, sys.argv[5:]
