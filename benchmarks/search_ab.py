"""A/B of the tree kernels of two commits in one process: the working tree's against a baseline revision's.

Runs of `benchmarks/search.py` on this shared machine differ by up to ~25%, more than a kernel change usually moves
them. Here both versions replay the same simulations (`search.make_workload`: B trees, one `expand_and_select`
call per simulation, the `[B]` selection read back, as the driver runs them) alternately in one process, so both see
the same machine. `--thrash` writes a 32 MB buffer before every call, as the object tree or the driver's host work
does between two calls in real runs (each call then starts with cold caches).

  python benchmarks/search_ab.py --baseline 00e8511
  python benchmarks/search_ab.py --baseline HEAD~1 --thrash

The baseline's `rstar_jax/search/{tree,kernels}.py` (and, from 2026-12-04, its native CPU kernels `native/`, whose FFI
target is renamed so both sides' libraries can be registered) are read with `git show` into a temporary package; its
`Expansion` may carry the older `terminal` field (before 2026-12-01), which is filled from `terminal_reason`.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import statistics
import subprocess
import sys
import tempfile

import numpy as np

import search  # benchmarks/search.py (this script's directory is on sys.path)

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_baseline(revision: str, directory: pathlib.Path):
  """The baseline revision's `(tree, kernels)` modules, imported as package `baseline_search`."""
  package = directory / "baseline_search"
  package.mkdir()
  (package / "__init__.py").write_text("")
  def show(path, check=True):
    return subprocess.run(["git", "show", f"{revision}:rstar_jax/search/{path}"], cwd=_ROOT, check=check,
                          capture_output=True, text=True)

  for name in ("tree", "kernels"):
    source = show(f"{name}.py").stdout.replace("rstar_jax.search.tree", "baseline_search.tree")
    (package / f"{name}.py").write_text(source.replace("from rstar_jax.search import native",
                                                       "from baseline_search import native"))
  loader = show("native/__init__.py", check=False)
  if loader.returncode == 0:  # a revision with the native CPU kernels: its own source, under its own target name
    (package / "native").mkdir()
    (package / "native" / "__init__.py").write_text(
        loader.stdout.replace('TARGET = "rstar_tree_expand_and_select"', 'TARGET = "baseline_tree_expand_and_select"'))
    (package / "native" / "tree_kernels.cc").write_text(show("native/tree_kernels.cc").stdout)
  sys.path.insert(0, str(directory))
  for name in [m for m in sys.modules if m == "baseline_search" or m.startswith("baseline_search.")]:
    del sys.modules[name]  # an earlier load's (another revision, another directory)
  return importlib.import_module("baseline_search.tree"), importlib.import_module("baseline_search.kernels")


def baseline_expansion(kernels):
  """`search._expansion` in the fields of `kernels.Expansion` (older ones also carry `terminal`)."""

  def make(nodes, spec):
    fields = search._expansion(nodes, spec)._asdict()  # pylint: disable=protected-access
    fields["terminal"] = fields["terminal_reason"] != 0
    return kernels.Expansion(**{name: fields[name] for name in kernels.Expansion._fields})

  return make


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--baseline", required=True, help="git revision whose tree kernels are the baseline")
  parser.add_argument("--trees", type=int, default=1024)
  parser.add_argument("--nodes", type=int, default=256)
  parser.add_argument("--actions", type=int, default=8)
  parser.add_argument("--iters", type=int, default=24, help="simulations per replay")
  parser.add_argument("--rollouts", type=int, default=16)
  parser.add_argument("--replays", type=int, default=8, help="alternating replays per side (after one warm-up)")
  parser.add_argument("--thrash", action="store_true", help="write 32 MB between calls (cold caches)")
  args = parser.parse_args(argv)
  # Checked before the baseline is loaded and both sides compiled: --replays 0 or --iters 0 failed after that
  # with a StatisticsError of an empty list ("no median for empty data"), naming no flag.
  for flag in ("trees", "nodes", "actions", "iters", "rollouts", "replays"):
    if getattr(args, flag) < 1:
      parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")

  shape = (args.trees, args.nodes, args.actions, args.rollouts)
  workload = search.make_workload(0, args.trees, args.actions, args.iters)
  buffer = np.zeros(8 << 20, np.float32)

  def thrash():
    np.add(buffer, 1, out=buffer)  # writes 32 MB: the next call finds its arrays out of the caches

  with tempfile.TemporaryDirectory() as tmp:
    base_tree, base_kernels = load_baseline(args.baseline, pathlib.Path(tmp))
    sides = {"baseline": dict(tree_lib=base_tree, kernels=base_kernels,
                              make_expansion=baseline_expansion(base_kernels)),
             "current": {}}  # `search.replay_kernels`' defaults: the working tree's kernels
    for side in sides.values():  # compile and warm up
      search.replay_kernels(workload, *shape, **side)
    times = {name: [] for name in sides}
    for _ in range(args.replays):
      picks = []
      for name, side in sides.items():
        seconds, selections = search.replay_kernels(workload, *shape, between=thrash if args.thrash else None,
                                                    **side)
        times[name].append(statistics.mean(seconds))
        picks.append(selections)
      if not np.array_equal(*picks):  # every simulation's `[B]` selection, not only the last
        sim, tree = np.argwhere(picks[0] != picks[1])[0]
        raise SystemExit(f"the two versions selected different nodes (first at simulation {sim}, tree {tree}: "
                         f"{picks[0][sim, tree]} vs {picks[1][sim, tree]}): not the same search")
  base, cur = statistics.median(times["baseline"]), statistics.median(times["current"])
  print(f"B={args.trees} N={args.nodes} A={args.actions}; {args.iters} simulations x {args.replays} alternating "
        f"replays{' with cold caches (--thrash)' if args.thrash else ''}; selections identical")
  for name in sides:
    print(f"{name:9s} {args.baseline if name == 'baseline' else 'working tree':>14s}  "
          f"{1e3 * statistics.median(times[name]):6.3f} ms / simulation (median of replays; "
          f"range {1e3 * min(times[name]):.3f}-{1e3 * max(times[name]):.3f})")
  print(f"current / baseline: {cur / base:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
