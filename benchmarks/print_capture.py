"""Output capture of print-heavy programs: the sandbox's bounded capture against the official `StringIO` redirect.

  python benchmarks/print_capture.py            # ~1 minute on the 2-core dev machine
  python benchmarks/print_capture.py --quick    # smaller counts, for a smoke check

What runs inside one sandbox executor, without the pool around it: `sandbox.observation.run_program` (rStar output
rules, memory bounded whatever a program prints) against what the official interpreter does
(`contextlib.redirect_stdout(io.StringIO())` around `exec`, then its `truncate_string` on the whole text). Both run
the same program in a fresh namespace, alternately for `--rounds` rounds; the best round per side is reported, with
the observations compared (they must be equal). A slow capture matters because the pool's `timeout_s` covers the
whole program: a program the official interpreter finishes in time must not time out here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sandbox import observation  # pylint: disable=wrong-import-position


def official_observation(code: str, max_chars: int) -> str:
  """The official `_base_run` for a program whose only print point is its last statement (a loop that prints): the
  body runs under `redirect_stdout(StringIO())` and the whole text is cut by `truncate_string`."""
  buffer = io.StringIO()
  with contextlib.redirect_stdout(buffer):
    exec(code, {})  # pylint: disable=exec-used
  text = buffer.getvalue()
  if len(text) > max_chars:
    return text[:max_chars // 2] + "..." + text[-max_chars // 2:]
  return text


def ours(code: str, max_chars: int) -> str:
  out = observation.run_program(code, {}, mode="rstar", max_chars=max_chars)
  return observation.postprocess(out.observation, printed=out.printed, max_chars=max_chars)


def workloads(scale: float) -> list[tuple[str, str, int]]:
  """(name, program, max_chars)."""
  n1, n2 = int(1_000_000 * scale), int(200_000 * scale)
  return [
      (f"{n1:,} print(i)", f"for i in range({n1}):\n    print(i)", 1024),
      (f"{n2:,} print(i, i * i), max_chars 10^6", f"for i in range({n2}):\n    print(i, i * i)", 10**6),
      (f"{n2:,} sys.stdout.write", f"import sys\nfor i in range({n2}):\n    sys.stdout.write(str(i) + ' ')", 1024),
  ]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="a tenth of the prints, 2 rounds")
  args = parser.parse_args()
  scale, rounds = (0.1, 2) if args.quick else (1.0, args.rounds)
  print(f"Python {sys.version.split()[0]}; best of {rounds} alternating rounds per side")
  print("| program | official StringIO (s) | rstar-jax capture (s) | ours / official | same observation |")
  print("| --- | ---: | ---: | ---: | --- |")
  for name, code, max_chars in workloads(scale):
    best = {"official": float("inf"), "ours": float("inf")}
    results = {}
    for _ in range(rounds):
      for side, run in (("official", official_observation), ("ours", ours)):
        start = time.perf_counter()
        results[side] = run(code, max_chars)
        best[side] = min(best[side], time.perf_counter() - start)
    same = "yes" if results["official"] == results["ours"] else "NO"
    print(f"| {name} | {best['official']:.3f} | {best['ours']:.3f} | {best['ours'] / best['official']:.2f}x | "
          f"{same} |")


if __name__ == "__main__":
  main()
