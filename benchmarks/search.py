"""Search benchmark (issue 5): tree kernels vs a plain-Python object tree, and the kernels' share of
a full search iteration.

1. Per-simulation time of the jitted tree kernels (expand + backup + select over all B trees)
   against `rstar_jax.search.object_tree.ObjectTree` (one Python node object per node, the official
   code's structure) doing the same selection and backup on the same shapes and the same random
   expansions, in one run. A "simulation" advances every tree by one select + one expansion/backup.
2. The share of a full lockstep MCTS iteration (select, generate, step protocol, sandbox, grading,
   PPM, expand/backup) spent in the tree kernels, with a fast scripted policy, a constant sandbox and
   a cheap scorer: the host work that remains is the step protocol and bookkeeping.
3. What any kernels pay around each call: a minimal while-loop step, reading a ready `[B]` array back to the host
   (the driver reads the selection once per simulation), and the per-call floor of 1. (building the expansion, and a
   jitted call with the kernels' arguments that does nothing, after the same object-tree simulations).

  python benchmarks/search.py                      # B=1024, N=256, A=8
  python benchmarks/search.py --trees 64 --iters 8 # quick
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from rstar_jax.grading import Grader
from rstar_jax.search import MCTS, Problem, SearchConfig
from rstar_jax.search import kernels as search_kernels
from rstar_jax.search import tree as search_tree
from rstar_jax.search.kernels import Expansion, SelectionRule, expand_and_select, select, transfer_form
from rstar_jax.search.object_tree import ObjectTree
from rstar_jax.search.scripted import ConstantExecutor, FunctionScorer, ScriptedPolicy
from rstar_jax.search.tree import NO_NODE, Reason, init_tree

# The synthetic workload never marks nodes too deep, so the path buffer is sized past the deepest
# node a run can reach (one level per simulation).
MAX_DEPTH = 32
# Child kinds of the synthetic workload: PPM-initialised step (self), answer (+-1 to the root),
# invalid terminal (-1 on itself).
_KIND_P = (0.7, 0.2, 0.1)


def make_workload(seed: int, trees: int, actions: int, iters: int):
  """Per simulation: `count [B]`, `reason [B, A]`, `value [B, A]`, `scope [B, A]` (0 none, 1 self, 2 path)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(iters):
    kind = rng.choice(3, size=[trees, actions], p=_KIND_P)
    reason = np.select([kind == 1, kind == 2], [int(Reason.ANSWER), int(Reason.TOO_MANY_ERRORS)], 0)
    ppm = rng.integers(-8, 9, size=[trees, actions]) / 8.0  # dyadic: float32 sums are exact
    value = np.where(kind == 0, ppm, np.where(kind == 1, rng.choice([-1.0, 1.0], [trees, actions]), -1.0))
    scope = np.where(kind == 1, 2, 1)
    count = rng.integers(actions // 2, actions + 1, size=[trees])
    out.append((count.astype(np.int32), reason.astype(np.int32), value.astype(np.float32),
                scope.astype(np.int32)))
  return out


def _expansion(nodes, spec):
  count, reason, value, scope = spec
  active = nodes != NO_NODE
  return Expansion(
      parent=nodes.astype(np.int32), count=np.where(active, count, 0).astype(np.int32),
      terminal_reason=reason, consecutive_errors=np.zeros_like(reason),
      ppm_value=np.where(reason == 0, value, np.nan).astype(np.float32), value=value,
      update_self=scope == 1, update_path=scope == 2)


def object_tree_simulation(objs, spec):
  """One simulation on the object trees: per tree `select` then `expand` (with backup) with the spec's children.
  Returns the selected node ids `[B]` (NO_NODE where a tree selected none)."""
  count, reason, value, scope = spec
  picked = np.full([len(objs)], NO_NODE, np.int32)
  for b, t in enumerate(objs):
    node = t.select()
    if node is None:
      continue
    picked[b] = node.id
    t.expand(node, [(int(reason[b, j]), float(value[b, j]), "self" if scope[b, j] == 1 else "path")
                    for j in range(count[b])])
  return picked


def bench_tree_ops(workload, trees, nodes, actions, rollouts, impl="auto"):
  """Times the same simulations on the kernels and on object trees, interleaved.

  Kernels, as in the driver: one `select`, then per simulation one `expand_and_select` call
  (expansion and backup of the previous selection + the next selection) and the `[B]` read of its
  result. Object trees: per tree, `select` then `expand` (with backup). Interleaving the two per
  simulation exposes both to the same machine load.

  Returns:
    `(kernel seconds [iters], object-tree seconds [iters], agreement of the selected nodes,
    final kernel tree, select loop steps [iters])`.
  """
  rule = SelectionRule("official", 2.0)
  # Compile (and warm up) on a throwaway tree of the same shapes.
  warm, out = select(init_tree(trees, nodes, actions, rollouts, MAX_DEPTH), rule, host_output=True, impl=impl)
  warm, out = expand_and_select(warm, transfer_form(_expansion(np.asarray(out.node), workload[0])), rule,
                                host_output=True, impl=impl)
  jax.block_until_ready(out)
  tree, out = select(init_tree(trees, nodes, actions, rollouts, MAX_DEPTH), rule, host_output=True, impl=impl)
  picked = np.asarray(out.node)
  objs = [ObjectTree("official", 2.0, rollouts, float32=False, num_actions=actions)
          for _ in range(trees)]
  k_times, o_times, agree, steps = [], [], [], []
  for spec in workload:
    start = time.perf_counter()
    obj_picked = object_tree_simulation(objs, spec)
    o_times.append(time.perf_counter() - start)
    agree.append(np.mean(obj_picked == picked))
    start = time.perf_counter()
    tree, out = expand_and_select(tree, transfer_form(_expansion(picked, spec)), rule, host_output=True, impl=impl)
    picked = np.asarray(out.node)  # the driver's one read per iteration (written to host memory by the call)
    k_times.append(time.perf_counter() - start)
    steps.append(int(out.steps))  # read after the timing (the driver does not need it)
  return k_times, o_times, float(np.mean(agree)), tree, steps


def bench_call_floor(workload, trees, nodes, actions, rollouts):
  """What `bench_tree_ops`' kernel figure pays before any tree work, timed the same way: per simulation, after the
  same object-tree simulation (fresh object trees replaying the workload), the expansion's build from numpy and a
  jitted call that takes the kernels' arguments (the tree donated, the expansion) and does nothing but return the
  tree and its `[B]` cursor in host memory, then the read of that cursor. Any jitted tree kernels pay this much.

  Returns:
    `(build seconds [iters], call and read seconds [iters], the call and read warm: back to back, seconds [iters])`.
  """
  @functools.partial(jax.jit, donate_argnums=(0,))
  def nothing(tree, expansion):
    del expansion
    return tree, jax.device_put(tree.cursor, jax.memory.Space.Host)

  tree = init_tree(trees, nodes, actions, rollouts, MAX_DEPTH)
  picked = np.zeros([trees], np.int32)
  tree, out = nothing(tree, transfer_form(_expansion(picked, workload[0])))  # compile
  np.asarray(out)
  objs = [ObjectTree("official", 2.0, rollouts, float32=False, num_actions=actions) for _ in range(trees)]
  builds, calls, warm = [], [], []
  for spec in workload:
    object_tree_simulation(objs, spec)  # as in `bench_tree_ops`, untimed here
    start = time.perf_counter()
    expansion = transfer_form(_expansion(picked, spec))
    built = time.perf_counter()
    tree, out = nothing(tree, expansion)
    picked = np.asarray(out)
    calls.append(time.perf_counter() - built)
    builds.append(built - start)
    start = time.perf_counter()
    tree, out = nothing(tree, expansion)
    picked = np.asarray(out)
    warm.append(time.perf_counter() - start)
  return builds, calls, warm


def bench_kernels_alone(workload, trees, nodes, actions, rollouts, repeats=3, impl="auto"):
  """The kernels' part of `bench_tree_ops` replayed on its own (same simulations, no object tree in between):
  per simulation, the median over `repeats` replays. Interleaving with the object tree, whose ~10^5 Python
  objects go through the caches between two kernel calls, makes each kernel call start cold; this is the warm
  figure (the driver sits between the two: its host work also runs between kernel calls)."""
  times = [replay_kernels(workload, trees, nodes, actions, rollouts, impl=impl)[0] for _ in range(repeats)]
  return [statistics.median(column) for column in zip(*times)]


def replay_kernels(workload, trees, nodes, actions, rollouts, *, kernels=search_kernels, tree_lib=search_tree,
                   make_expansion=_expansion, between=None, impl=None):
  """One replay of the workload on the kernels, as the driver runs them: per simulation one `expand_and_select`
  call (expansion built from numpy inside the timing) and the `[B]` read of its selection.

  `kernels` / `tree_lib` / `make_expansion`: the modules and expansion builder to run (`search_ab.py` passes a
  baseline revision's); `between`: called before each timed call (e.g. to thrash the caches); `impl`: the kernels'
  implementation (None: the revision's default; revisions before the native call have no choice).

  Returns:
    `(seconds per simulation [iters], every simulation's selection [iters, B])`. All of them, not the last: the
    last expansion's children get the same ids whichever node it expanded, so the last selection alone can agree
    between two searches that went apart.
  """
  rule = kernels.SelectionRule("official", 2.0)
  # As the driver calls them; a baseline revision's kernels from before `host_output` return device arrays, and
  # from before `transfer_form` take the expansion's fields.
  host = {"host_output": True} if "host_output" in inspect.signature(kernels.select).parameters else {}
  if impl is not None:
    host["impl"] = impl
  form = getattr(kernels, "transfer_form", lambda expansion: expansion)
  tree, out = kernels.select(tree_lib.init_tree(trees, nodes, actions, rollouts, MAX_DEPTH), rule, **host)
  picked = np.asarray(out.node)
  times, selections = [], []
  for spec in workload:
    if between is not None:
      between()
    start = time.perf_counter()
    tree, out = kernels.expand_and_select(tree, form(make_expansion(picked, spec)), rule, **host)
    picked = np.asarray(out.node)
    times.append(time.perf_counter() - start)
    selections.append(picked)
  return times, np.stack(selections)


_FREE_OPS = ("parameter", "get-tuple-element", "constant", "bitcast", "tuple")


def compiled_op_counts(trees, nodes, actions, rollouts, spec, impl="auto"):
  """Operations XLA runs in one `expand_and_select` call: `(outside the select loop, per loop step)`."""
  rule = SelectionRule("official", 2.0)
  tree, out = select(init_tree(trees, nodes, actions, rollouts, MAX_DEPTH), rule, impl=impl)
  expansion = transfer_form(_expansion(np.asarray(out.node), spec))
  return hlo_op_counts(expand_and_select.lower(tree, expansion, rule, host_output=True, impl=impl).compile().as_text())


def hlo_op_counts(text):
  """`(outside the select loop, per loop step)` operations of a compiled module's text: the non-free instructions
  (not bitcasts, tuples, ...) of the entry computation, and of its while loops' bodies and conditions. A condition
  runs once per step and once more to end the loop; that last run counts outside the loop."""
  computations = {}
  for block in re.split(r"\n\s*\n", text):
    head = block.strip().split("\n", 1)[0]
    name = re.match(r"(?:ENTRY )?%?([\w.\-]+)", head)
    if name:
      computations["ENTRY" if head.startswith("ENTRY") else name.group(1)] = block

  def ops(block):
    # The opcode is the first ` name(` after ` = `: a tuple-typed result (a while, a multi-output fusion) has spaces
    # in its type, which holds no such token (shapes read `s32[4]{0}`).
    return re.findall(r"^\s*(?:ROOT )?%\S+ = .*? ([a-z][\w\-]*)\(", block, re.MULTILINE)

  def count(block):
    return sum(op not in _FREE_OPS for op in ops(block))

  entry = computations["ENTRY"]
  loops = re.findall(r" while\(.*?condition=%([\w.\-]+), body=%([\w.\-]+)", entry)
  conditions = sum(count(computations[c]) for c, _ in loops)
  outside = count(entry) - ops(entry).count("while") + conditions
  return outside, sum(count(computations[b]) for _, b in loops) + conditions


def loop_step_floor(trees, nodes, repeats=50):
  """Seconds per step of a minimal `while_loop` on this machine: one `[B, N]` gather + one fused
  update per step (what any lockstep descent pays per level before doing its own work)."""
  @jax.jit
  def loop(x, table, n):
    def body(s):
      i, x = s
      g = jnp.take_along_axis(table, x[:, None] % nodes, axis=1)[:, 0]
      return i + 1, (3 * x + g) % 1000
    return jax.lax.while_loop(lambda s: s[0] < n, body, (0, x))[1]

  x = jnp.arange(trees, dtype=jnp.int32)
  table = jnp.ones((trees, nodes), jnp.int32)
  times = {}
  for n in (1, 33):
    loop(x, table, n).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      loop(x, table, n).block_until_ready()
      best = min(best, time.perf_counter() - start)
    times[n] = best
  return (times[33] - times[1]) / 32


def host_read_floor(trees, repeats=30):
  """Seconds (medians) to read a ready `[B]` int32 array back to the host, `(in device memory, written to host memory
  by the call)`: what each driver iteration pays for its selection whatever the kernels do (the kernels' selection
  is the second kind, `host_output`)."""
  ready = jnp.arange(trees, dtype=jnp.int32)
  to_host = jax.jit(lambda x: jax.device_put(x + 1, jax.memory.Space.Host))
  out = []
  for make in (lambda: ready + 1, lambda: to_host(ready)):
    reads = []
    for _ in range(repeats):
      fresh = make().block_until_ready()  # a new buffer each time: no host copy cached from the last read
      start = time.perf_counter()
      np.asarray(fresh)
      reads.append(time.perf_counter() - start)
    out.append(statistics.median(reads))
  return tuple(out)


def bench_driver(trees, nodes, actions, iters_rollouts, seed=0, impl="auto"):
  """A full MCTS run with fast fakes; returns the driver's per-phase stats."""
  rng = np.random.default_rng(seed)
  pool = [f"<code>\nx = {k}\n<end_of_step>" for k in range(64)]
  pool += [f"print(x + {k})\n<end_of_code>" for k in range(16)]
  pool += [f"So \\boxed{{{k}}}.<end_of_answer>" for k in range(16)]
  weights = np.array([0.8 / 64] * 64 + [0.1 / 16] * 16 + [0.1 / 16] * 16)

  def script(prompt, n, step_seed):
    del prompt
    r = np.random.default_rng(step_seed)
    return [pool[i] for i in r.choice(len(pool), size=n, p=weights)]

  scorer = FunctionScorer(lambda text: (len(text) % 17) / 8.0 - 1.0)
  problems = [Problem(f"p{i}", f"question {i}", str(int(rng.integers(0, 16)))) for i in range(trees)]
  config = SearchConfig(mode="ppm_augmented", num_rollouts=iters_rollouts, num_candidates=actions,
                        max_depth=8, errors_threshold=1, max_nodes=nodes, seed=seed, kernel_impl=impl)
  with Grader() as grader:
    # Warm-up run (compiles the kernels for these shapes), then the measured run.
    MCTS(ScriptedPolicy(script), ConstantExecutor("1"), config, prompt_fn="Q: {}\n".format,
         scorer=scorer, grader=grader, progress=False).run(problems)
    search = MCTS(ScriptedPolicy(script), ConstantExecutor("1"), config, prompt_fn="Q: {}\n".format,
                  scorer=scorer, grader=grader, progress=False)
    start = time.perf_counter()
    search.run(problems)
    wall = time.perf_counter() - start
  return search.stats, wall


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trees", type=int, default=1024)
  parser.add_argument("--nodes", type=int, default=256)
  parser.add_argument("--actions", type=int, default=8)
  parser.add_argument("--iters", type=int, default=24, help="simulations timed")
  parser.add_argument("--rollouts", type=int, default=16)
  parser.add_argument("--driver-rollouts", type=int, default=3,
                      help="MCTS rollouts of the full-iteration run (3: N=256 never runs out)")
  parser.add_argument("--impl", choices=search_kernels.IMPLS, default="auto",
                      help="tree kernels: the driver's default (auto: native on the CPU), xla or native")
  parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
  args = parser.parse_args(argv)
  for flag, value in (("--trees", args.trees), ("--nodes", args.nodes), ("--actions", args.actions),
                      ("--iters", args.iters), ("--rollouts", args.rollouts),
                      ("--driver-rollouts", args.driver_rollouts)):
    if value < 1:
      parser.error(f"{flag} must be >= 1, got {value}")
  # Each simulation adds up to A children per tree. A kernel tree that runs out of its N slots drops the expansion
  # while the object tree (no limit) keeps growing: the two sides would time different searches.
  if args.nodes < 1 + args.iters * args.actions:
    parser.error(f"--nodes {args.nodes} can run out: {args.iters} simulations (--iters) of up to {args.actions} "
                 f"children (--actions) need 1 + {args.iters} x {args.actions} = {1 + args.iters * args.actions}")

  workload = make_workload(0, args.trees, args.actions, args.iters)
  impl = search_kernels.resolved_impl(SelectionRule("official", 2.0), args.impl, args.actions)
  k_times, o_times, agree, k_tree, steps = bench_tree_ops(workload, args.trees, args.nodes, args.actions,
                                                          args.rollouts, impl)
  alone = statistics.median(bench_kernels_alone(workload, args.trees, args.nodes, args.actions, args.rollouts,
                                                impl=impl))
  floor_build, floor_call, floor_warm = (statistics.median(x) for x in bench_call_floor(
      workload, args.trees, args.nodes, args.actions, args.rollouts))
  floor = loop_step_floor(args.trees, args.nodes)
  read_s, host_read_s = host_read_floor(args.trees)
  try:
    entry_ops, step_ops = compiled_op_counts(args.trees, args.nodes, args.actions, args.rollouts, workload[0], impl)
  except (KeyError, AttributeError) as e:  # another backend's module text (the count reads XLA:CPU's layout)
    print(f"XLA op count unavailable on {jax.default_backend()}: {type(e).__name__}: {e}", file=sys.stderr)
    entry_ops = step_ops = None
  ops = entry_ops + statistics.median(steps) * step_ops if entry_ops is not None else None
  sizes = np.asarray(k_tree.num_nodes)
  k_med, o_med = statistics.median(k_times), statistics.median(o_times)
  stats, wall = bench_driver(args.trees, args.nodes, args.actions, args.driver_rollouts, impl=impl)
  result = {
      "device": str(jax.devices()[0]), "device_kind": jax.devices()[0].device_kind,
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "impl": impl,
      "trees": args.trees, "nodes": args.nodes,
      "actions": args.actions, "simulations": args.iters,
      "kernel_ms_per_simulation": 1e3 * k_med, "object_tree_ms_per_simulation": 1e3 * o_med,
      "speedup": o_med / k_med, "selection_agreement": agree,
      "kernel_alone_ms_per_simulation": 1e3 * alone, "speedup_kernel_alone": o_med / alone,
      "select_steps_per_simulation": statistics.median(steps),
      "xla_ops_per_call": entry_ops, "xla_ops_per_select_step": step_ops, "xla_ops_per_simulation": ops,
      "kernel_alone_us_per_op": 1e6 * alone / ops if ops else None, "minimal_loop_step_us": 1e6 * floor,
      "floor_build_ms": 1e3 * floor_build, "floor_call_ms": 1e3 * floor_call,
      "floor_call_warm_ms": 1e3 * floor_warm,
      "host_read_ms": 1e3 * read_s, "host_memory_read_ms": 1e3 * host_read_s,
      "mean_nodes_per_tree": float(sizes.mean()),
      "driver": {"iterations": stats.iterations, "wall_s": wall, "kernel_s": stats.kernel_s,
                 "kernel_share": stats.kernel_s / stats.total_s,
                 "generate_s": stats.generate_s, "sandbox_s": stats.sandbox_s,
                 "grade_s": stats.grade_s, "score_s": stats.score_s, "host_s": stats.host_s},
  }
  if args.json:
    print(json.dumps(result))
    return 0
  print(f"device {result['device']}; B={args.trees} N={args.nodes} A={args.actions}; "
        f"{args.iters} simulations; trees end with {sizes.mean():.0f} nodes on average")
  print(f"tree kernels   {1e3 * k_med:9.2f} ms / simulation (median; implementation: {impl})")
  print(f"object tree    {1e3 * o_med:9.2f} ms / simulation (median)")
  print(f"speed-up       {o_med / k_med:9.1f}x   (selections agree: {100 * agree:.1f}%)")
  print(f"tree kernels alone {1e3 * alone:5.2f} ms / simulation (same simulations replayed without the object "
        f"tree in between: {o_med / alone:.1f}x the object tree)")
  if ops and impl == "xla":
    print(f"XLA ops        {ops:9.0f} / simulation ({entry_ops} per call + {step_ops} per select loop step x "
          f"{result['select_steps_per_simulation']:.1f} steps, the batch's deepest descent): "
          f"{result['kernel_alone_us_per_op']:.1f} us per op alone; a minimal while-loop step (one [B, N] "
          f"gather) costs {result['minimal_loop_step_us']:.1f} us here")
  else:  # the native call: one custom call, its loops in C++
    print(f"select loop    {result['select_steps_per_simulation']:.1f} steps / simulation (the batch's deepest "
          f"descent); XLA runs {ops if ops is not None else 'an unknown number of'} operations per call; a minimal "
          f"while-loop step (one [B, N] gather) costs {result['minimal_loop_step_us']:.1f} us here")
  print(f"host read      {1e3 * read_s:9.3f} ms to read a ready [B] array back from device memory, "
        f"{1e3 * host_read_s:.3f} ms written to host memory by the call as the kernels' selection is (once per "
        f"simulation; 50x the object tree leaves {1e3 * o_med / 50:.3f} ms per simulation)")
  print(f"per-call floor {1e3 * (floor_build + floor_call):9.2f} ms / simulation interleaved as above, before any tree "
        f"work: building the expansion {1e3 * floor_build:.2f} ms + a jitted call with the same arguments that does "
        f"nothing, and its read, {1e3 * floor_call:.2f} ms ({1e3 * floor_warm:.3f} ms back to back)")
  d = result["driver"]
  print(f"full MCTS iteration (fake policy/sandbox/PPM, {args.driver_rollouts} rollouts, "
        f"{d['iterations']} iterations, {wall:.1f} s): tree kernels {100 * d['kernel_share']:.1f}% "
        f"({d['kernel_s']:.2f} s; generate "
        f"{d['generate_s']:.2f} s, sandbox {d['sandbox_s']:.2f} s, grade {d['grade_s']:.2f} s, "
        f"PPM {d['score_s']:.2f} s, host step protocol {d['host_s']:.2f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
