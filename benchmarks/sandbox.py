"""Sandbox throughput and latency against the unsafe baselines, all in one run.

  python benchmarks/sandbox.py                   # full run (~2-3 minutes on the 2-core dev machine)
  python benchmarks/sandbox.py --quick           # smaller counts, for a smoke check
  python benchmarks/sandbox.py --markdown out.md # also write the results table

Three executors run the same program lists with the same number of processes (`--workers`):
- `pool`: `sandbox.SandboxPool` ("rstar" output mode, strongest isolation available).
- `unsafe`: the official style: long-lived worker processes (multiprocessing) that exec each program in-process
  with rStar's output rules, a SIGALRM timer and one namespace shared by all programs of a process (no isolation at
  all). They get the same warm start as the pool's workers (preloaded modules, warm-up, `gc.freeze()`), so the
  ratio measures the sandbox's overhead, not warm-up differences.
- `subprocess`: a fresh `python -c` per program (run on a subset: it is ~100x slower).

Workloads: trivial arithmetic; sympy `solve`; numpy; a growing multi-step program re-run at each step (as MCTS does);
and `mix`, the four interleaved. Reported: programs/s, p50/p99 latency per program (for the pool: submit -> result
over a full batch, so it includes queueing; `exec` is the in-sandbox duration), and the timeout detection delay
(result time minus the deadline for `while True: pass`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sandbox import SandboxPool  # pylint: disable=wrong-import-position
from sandbox import observation  # pylint: disable=wrong-import-position
from sandbox import pool as pool_lib  # pylint: disable=wrong-import-position

MULTI_STEPS = [
    "from sympy import Rational\ntotal = Rational(0)\n",
    "for i in range(1, 21):\n    total += Rational(1, i * (i + 1))\n",
    "import math\nresult = total * 2\nratio = float(result) / math.pi\n",
    "print(result)\nprint(round(ratio, 6))\n",
]


def workloads(n: int) -> dict[str, list[str]]:
  trivial = [f"a = {i}\nb = a * 3 + 7\nprint(b)" for i in range(n)]
  sym = [f"from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - {i % 9 + 3}*x + 2, x))"
         for i in range(n)]
  num = [f"import numpy as np\na = np.arange({100 + i % 50})\nprint(a.mean(), np.linalg.norm(a))" for i in range(n)]
  multi = ["".join(MULTI_STEPS[:k % len(MULTI_STEPS) + 1]) for k in range(n)]
  mix = [p for quad in zip(trivial, sym, num, multi) for p in quad][:n]
  return {"trivial": trivial, "sympy": sym, "numpy": num, "multistep": multi, "mix": mix}


# -- unsafe official-style baseline -------------------------------------------------------------------------------

_UNSAFE_NS: dict = {}


def _unsafe_init() -> None:
  """Same warm start as the pool's workers (imports, warm-up, gc.freeze), so the comparison isolates overhead."""
  import gc  # pylint: disable=import-outside-toplevel
  import importlib  # pylint: disable=import-outside-toplevel
  for name in pool_lib.DEFAULT_PRELOAD:
    with contextlib.suppress(ImportError):
      importlib.import_module(name)
  observation.run_program(pool_lib.DEFAULT_WARMUP, {}, mode="plain")
  gc.collect()
  gc.freeze()
  _UNSAFE_NS["__builtins__"] = __builtins__


def _alarm(signum, frame):
  raise TimeoutError("timeout")


def _unsafe_run(code: str) -> tuple[str, float]:
  """One program the official way: in-process exec, shared namespace, signal timer."""
  start = time.perf_counter()
  signal.signal(signal.SIGALRM, _alarm)
  signal.setitimer(signal.ITIMER_REAL, 5.0)
  try:
    out = observation.run_program(code, _UNSAFE_NS, mode="rstar", max_chars=1024)
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
  obs = observation.postprocess(out.observation, printed=out.printed, max_chars=1024)
  return obs, time.perf_counter() - start


def bench_unsafe(mp_pool, programs: list[str]) -> dict:
  start = time.perf_counter()
  results = mp_pool.map(_unsafe_run, programs, chunksize=max(1, len(programs) // 64))
  wall = time.perf_counter() - start
  lat = [d for _, d in results]
  return {"per_s": len(programs) / wall, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
          "observations": [o for o, _ in results]}


# -- python -c per program ----------------------------------------------------------------------------------------

def _subprocess_run(code: str) -> float:
  start = time.perf_counter()
  subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=False)
  return time.perf_counter() - start


def bench_subprocess(programs: list[str], workers: int) -> dict:
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(workers) as ex:
    lat = list(ex.map(_subprocess_run, programs))
  wall = time.perf_counter() - start
  return {"per_s": len(programs) / wall, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}


# -- the pool -----------------------------------------------------------------------------------------------------

def bench_pool(pool: SandboxPool, programs: list[str]) -> dict:
  start = time.perf_counter()
  futures = pool.submit(programs)
  done_at = {}
  for f in futures:
    f.add_done_callback(lambda fut: done_at.setdefault(id(fut), time.perf_counter()))
  results = [f.result() for f in futures]
  wall = time.perf_counter() - start
  lat = [done_at[id(f)] - start for f in futures]
  exec_lat = [r.duration_s for r in results]
  return {"per_s": len(programs) / wall, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
          "exec_p50_ms": _pct(exec_lat, 50), "exec_p99_ms": _pct(exec_lat, 99),
          "observations": [r.observation for r in results], "ok": sum(r.ok for r in results)}


def bench_timeouts(workers: int, samples: int, timeout_s: float, *, make_pool=SandboxPool,
                   clock=time.perf_counter) -> dict:
  """Timeout detection delay: per busy loop, the time its result reaches the host minus the deadline.

  `samples // workers` batches of `workers` loops. A result's in-jail `duration_s` leaves out the way back to the
  host, so each future's completion is timed on the host instead. That also counts a loop's wait in a queue (until
  commit 3350ffa a batch submitted right after the last one's results could be pipelined onto one worker while the
  other was free, and its second loop ended one full timeout late).
  `make_pool` / `clock`: the pool class and the clock (tests pass fakes).
  """
  with make_pool(num_workers=workers, timeout_s=timeout_s) as pool:
    pool.run(["print(1)"] * workers)
    delays = []
    for _ in range(samples // workers):
      done_at = {}
      start = clock()
      futures = pool.submit(["while True:\n    pass"] * workers)
      for f in futures:
        f.add_done_callback(lambda fut: done_at.setdefault(id(fut), clock()))
      for f in futures:
        r = f.result()
        assert r.timed_out, r
        delays.append(done_at[id(f)] - start - timeout_s)
  if not delays:
    raise ValueError(f"no busy loop timed: {samples} samples < {workers} workers")
  return {"p50_ms": _pct(delays, 50), "p99_ms": _pct(delays, 99), "max_ms": max(delays) * 1e3, "loops": len(delays)}


def _pct(xs: list[float], q: float) -> float:
  xs = sorted(xs)
  return 1e3 * xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


# Counts of a full run and of `--quick`; a flag given explicitly wins over either.
_FULL = dict(n=800, subprocess_n=24, timeout_samples=20)
_QUICK = dict(n=200, subprocess_n=6, timeout_samples=6)


def parse_args(argv=None) -> argparse.Namespace:
  """The command line, with `--quick`'s counts filled in before the checks (so they hold for what runs)."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--n", type=int, default=None, help=f"programs per workload (default {_FULL['n']})")
  parser.add_argument("--subprocess-n", type=int, default=None,
                      help=f"programs per workload for python -c (default {_FULL['subprocess_n']})")
  parser.add_argument("--timeout-samples", type=int, default=None,
                      help=f"busy loops timed out (default {_FULL['timeout_samples']}, at least --workers)")
  parser.add_argument("--quick", action="store_true", help="smaller counts: " +
                      ", ".join(f"{k} {v}" for k, v in _QUICK.items()))
  parser.add_argument("--markdown", default=None, help="write the table to this file")
  args = parser.parse_args(argv)
  for name, value in (_QUICK if args.quick else _FULL).items():
    if getattr(args, name) is None:
      # Timeouts are measured a batch of `workers` busy loops at a time: a default below that would time none.
      setattr(args, name, max(value, args.workers) if name == "timeout_samples" else value)
  for flag, value, least in (("--workers", args.workers, 1), ("--n", args.n, 1),
                             ("--subprocess-n", args.subprocess_n, 1),
                             ("--timeout-samples", args.timeout_samples, max(args.workers, 1))):
    if value < least:
      parser.error(f"{flag} must be >= {least}, got {value}")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  loads = workloads(args.n)
  rows = []
  ctx = multiprocessing.get_context("fork")
  with ctx.Pool(args.workers, initializer=_unsafe_init) as mp_pool, \
      SandboxPool(num_workers=args.workers, timeout_s=5.0) as pool:
    level = pool.isolation_level
    mp_pool.map(_unsafe_run, ["print(1)"] * args.workers * 4)
    pool.run(["print(1)"] * args.workers * 4)
    for name, programs in loads.items():
      unsafe = bench_unsafe(mp_pool, programs)
      ours = bench_pool(pool, programs)
      same = sum(a == b for a, b in zip(unsafe.pop("observations"), ours.pop("observations")))
      sub = bench_subprocess(programs[:args.subprocess_n], args.workers)
      rows.append((name, ours, unsafe, sub, same, len(programs)))
      print(f"{name:10s} pool {ours['per_s']:8.0f}/s  unsafe {unsafe['per_s']:8.0f}/s  "
            f"python -c {sub['per_s']:6.1f}/s  pool/unsafe {ours['per_s'] / unsafe['per_s']:.2f}  "
            f"pool/subprocess {ours['per_s'] / sub['per_s']:.0f}x  same observations {same}/{len(programs)}",
            flush=True)
  tmo = bench_timeouts(args.workers, args.timeout_samples, 0.5)
  print(f"timeout detection delay (deadline 0.5 s): p50 {tmo['p50_ms']:.1f} ms, p99 {tmo['p99_ms']:.1f} ms, "
        f"max {tmo['max_ms']:.1f} ms")
  lines = [
      f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
      f"{args.workers} worker processes for every executor; isolation `{level}`; {args.n} programs per workload "
      f"({args.subprocess_n} for `python -c`).",
      "",
      "| workload | pool prog/s | unsafe prog/s | `python -c` prog/s | pool / unsafe | pool / `python -c` | "
      "pool p50 / p99 ms (batch) | pool exec p50 / p99 ms | unsafe exec p50 / p99 ms | same observation |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for name, ours, unsafe, sub, same, n in rows:
    lines.append(
        f"| {name} | {ours['per_s']:.0f} | {unsafe['per_s']:.0f} | {sub['per_s']:.1f} | "
        f"{ours['per_s'] / unsafe['per_s']:.2f} | {ours['per_s'] / sub['per_s']:.0f}x | "
        f"{ours['p50_ms']:.0f} / {ours['p99_ms']:.0f} | {ours['exec_p50_ms']:.2f} / {ours['exec_p99_ms']:.2f} | "
        f"{unsafe['p50_ms']:.2f} / {unsafe['p99_ms']:.2f} | {same}/{n} |")
  lines += ["", f"Timeout detection delay (result minus a 0.5 s deadline, {tmo['loops']} busy loops): "
            f"p50 {tmo['p50_ms']:.1f} ms, p99 {tmo['p99_ms']:.1f} ms, max {tmo['max_ms']:.1f} ms."]
  text = "\n".join(lines)
  print(text)
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
