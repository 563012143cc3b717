"""The native CPU tree kernels (`rstar_jax.search.native`) against the XLA kernels: identical trees and selections on
random workloads in both presets (NaN and negative values, ties, dead ends, max depth, node budgets running out,
idle trees, chunks of the thread split; the `paper` preset's tie-breaks under both of jax's threefry bit layouts),
the fallback when no library can be built, and lowering for other platforms.

The hand-computed trees (mcts_golden_test.py), the official code's transcription (official_transcription_test.py)
and the object tree (tree_kernels_test.py) check both implementations against independent references."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from rstar_jax.search import SearchConfig, kernels, native
from rstar_jax.search.kernels import Expansion, SelectionRule
from rstar_jax.search.tree import NO_NODE, Reason, init_tree

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
RULE = SelectionRule("official", 2.0)
PAPER = SelectionRule("paper", 2.0)


def _random_expansion(rng, tree, nodes, num_actions, max_depth, skip=0.05, terminal_p=0.4):
  """A random expansion of the selected `nodes`: children of every kind (a share `terminal_p` terminal), values
  with NaNs, -0.0 and negatives, random scopes (self, path, both, none) and counts; a few selected rows not expanded
  (`skip`)."""
  b = len(nodes)
  depth = np.asarray(tree.depth)[np.arange(b), np.maximum(nodes, 0)]
  reason = rng.choice([int(r) for r in (Reason.NONE, Reason.ANSWER, Reason.TOO_MANY_ERRORS, Reason.UNPARSABLE)],
                      p=[1 - terminal_p, terminal_p / 2, terminal_p / 4, terminal_p / 4],
                      size=[b, num_actions]).astype(np.int32)
  reason = np.where((depth + 1 >= max_depth)[:, None] & (reason == int(Reason.NONE)), int(Reason.MAX_DEPTH), reason)
  value = rng.choice([-1.0, -0.5, -0.0, 0.0, 0.25, 0.75, 1.0, np.nan], size=[b, num_actions],  # exact ties too
                     p=[.2, .1, .05, .05, .15, .15, .25, .05]).astype(np.float32)
  # A third arbitrary floats (PPM scores): their sums round, so both must add them in the same order.
  value = np.where(rng.random([b, num_actions]) < 0.3, rng.uniform(-1, 1, [b, num_actions]), value).astype(np.float32)
  scope = rng.integers(0, 4, size=[b, num_actions])  # 0 none, 1 self, 2 path, 3 both
  parent = np.where(rng.random(b) < skip, NO_NODE, nodes).astype(np.int32)
  return Expansion(
      parent=parent, count=np.where(parent != NO_NODE, rng.integers(1, num_actions + 1, size=b), 0).astype(np.int32),
      terminal_reason=reason, consecutive_errors=rng.integers(0, 3, size=[b, num_actions]).astype(np.int32),
      ppm_value=np.where(rng.random([b, num_actions]) < 0.3, np.nan, value).astype(np.float32), value=value,
      update_self=(scope & 1).astype(bool), update_path=(scope & 2).astype(bool))


def _search(impl, seed, batch, num_slots, num_actions, max_depth, calls, pack=False, terminal_p=0.4, rule=RULE):
  """A random search through `expand_and_select(..., impl=impl)`; every call's output and the final tree."""
  rng = np.random.default_rng(seed)
  budgets = rng.integers(0, 40, size=batch)
  budgets[0] = 0  # an idle tree (e.g. padding)
  tree = init_tree(batch, num_slots, num_actions, budgets, max_depth, np.arange(batch, dtype=np.uint32))
  tree, out = kernels.select(tree, rule, impl=impl)
  outs = [jax.device_get(out)]
  for _ in range(calls):
    expansion = _random_expansion(rng, tree, np.asarray(out.node), num_actions, max_depth, terminal_p=terminal_p)
    tree, out = kernels.expand_and_select(tree, kernels.pack_expansion(expansion) if pack else expansion, rule,
                                          impl=impl)
    outs.append(jax.device_get(out))
  return outs, jax.device_get(tree)


def _assert_identical(first, second):
  (outs_a, tree_a), (outs_b, tree_b) = first, second
  for call, (a, b) in enumerate(zip(outs_a, outs_b)):
    for field in ("node", "rollout", "steps"):
      np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"call {call}: {field}")
  for field in ("node_info", "node_stats", "ppm_value", "children", "num_nodes", "cursor", "rollouts", "path",
                "out_of_nodes", "rollout_budget", "seed"):
    np.testing.assert_array_equal(getattr(tree_a, field), getattr(tree_b, field), err_msg=field)


@pytest.mark.parametrize("batch,num_slots,num_actions,max_depth,terminal_p,reaches", [
    # 200 trees: four chunks of the thread split, the last one partial; small trees full of dead ends.
    (200, 32, 4, 3, 0.4, {"dead_end", "out_of_nodes"}),
    (16, 256, 8, 8, 0.4, {"dead_end"}),
    (8, 40, 1, 20, 0.05, {"dead_end", "max_depth"}),  # one child per expansion: chains down to max depth
    (8, 16, 1, 20, 0.05, {"out_of_nodes"}),  # ... or to the node budget
])
@pytest.mark.parametrize("rule", [RULE, PAPER], ids=["official", "paper"])
def test_native_matches_xla_on_random_searches(batch, num_slots, num_actions, max_depth, terminal_p, reaches, rule):
  run = dict(calls=40, terminal_p=terminal_p, rule=rule)
  xla = _search("xla", 7, batch, num_slots, num_actions, max_depth, **run)
  ours = _search("native", 7, batch, num_slots, num_actions, max_depth, **run)
  _assert_identical(xla, ours)
  outs, tree = ours
  # The workload reached what it is meant to: finished and idle trees, NaN values, and the case's own states.
  assert (outs[-1].node == NO_NODE).any() and (tree.rollout_budget == 0).any()
  assert np.isnan(tree.value_sum).any() and np.isnan(tree.ppm_value[tree.num_nodes > 1]).any()
  reached = {"dead_end": (tree.terminal_reason == Reason.ALL_CHILDREN_TERMINAL).any(),
             "out_of_nodes": tree.out_of_nodes.any(), "max_depth": (tree.terminal_reason == Reason.MAX_DEPTH).any()}
  assert {state for state in reaches if reached[state]} == reaches


def test_paper_tie_breaks_match_jax_random_in_both_threefry_bit_layouts():
  # `jax_threefry_partitionable` (True by default since jax 0.5) changes how `jax.random.uniform` lays out its bits;
  # the native call draws the tie-breaks as the flag says. Five children (odd A: the padded layout), many ties.
  for partitionable in (True, False):
    with jax.threefry_partitionable(partitionable):
      run = dict(calls=30, terminal_p=0.2, rule=PAPER)
      xla, ours = (_search(impl, 5, 64, 128, 5, 6, **run) for impl in ("xla", "native"))
    _assert_identical(xla, ours)
    # The first expansions give unvisited children (score +inf, all tied): the draws picked among them.
    assert len({int(n) for n in ours[0][2].node if n != NO_NODE}) > 3


def test_native_reads_a_packed_expansion_as_its_fields():
  _assert_identical(_search("native", 3, 32, 96, 4, 4, calls=20),
                    _search("native", 3, 32, 96, 4, 4, calls=20, pack=True))


def test_native_runs_in_place_on_the_donated_tree():
  tree, _ = kernels.select(init_tree(4, 32, 2, 3, 4), RULE, impl="native")
  text = kernels.expand_and_select.lower(
      tree, kernels._no_expansion(tree), RULE, impl="native").compile().as_text()
  assert "rstar_tree_expand_and_select" in text
  # No copy of a [B, N, ...] array: the call updates the tree's buffers where they are.
  assert not [line for line in text.splitlines() if " copy(" in line and "[4,32" in line]


def test_native_leaves_a_tree_unchanged_for_a_parent_outside_the_tree():
  # Outside `Expansion`'s contract (parent is a node `select` returned, or NO_NODE): nothing is written out of bounds.
  tree, out = kernels.select(init_tree(2, 16, 2, 3, 4), RULE, impl="native")
  before = jax.device_get(tree)
  bad = Expansion(parent=np.array([16, 1000], np.int32), count=np.array([2, 2], np.int32),
                  terminal_reason=np.zeros([2, 2], np.int32), consecutive_errors=np.zeros([2, 2], np.int32),
                  ppm_value=np.zeros([2, 2], np.float32), value=np.ones([2, 2], np.float32),
                  update_self=np.ones([2, 2], bool), update_path=np.ones([2, 2], bool))
  after, _ = kernels.expand_and_select(tree, bad, RULE, impl="native")
  after = jax.device_get(after)
  for field in ("node_stats", "ppm_value", "children", "num_nodes"):
    np.testing.assert_array_equal(getattr(after, field), getattr(before, field), err_msg=field)


def test_lowered_for_a_gpu_the_kernels_are_xla_operations():
  tree = jax.eval_shape(lambda: init_tree(4, 32, 2, 3, 4))
  expansion = jax.eval_shape(lambda: kernels._no_expansion(init_tree(4, 32, 2, 3, 4)))
  fn = jax.jit(lambda t, e: kernels.expand_and_select(t, e, RULE, impl="native"))
  # The native target has no export compatibility guarantee: it is for this process's lowering only.
  allow = [jax.export.DisabledSafetyCheck.custom_call(native.TARGET)]
  on_cpu = jax.export.export(fn, platforms=["cpu"], disabled_checks=allow)(tree, expansion).mlir_module()
  on_cuda = jax.export.export(fn, platforms=["cuda"], disabled_checks=allow)(tree, expansion).mlir_module()
  assert "rstar_tree_expand_and_select" in on_cpu
  assert "rstar_tree_expand_and_select" not in on_cuda and "while" in on_cuda


def test_unknown_impls_and_paper_draws_under_another_prng_are_refused():
  tree = init_tree(2, 16, 2, 3, 4)
  with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'xla', 'native'\), got 'c\+\+'"):
    kernels.select(tree, RULE, impl="c++")
  with pytest.raises(ValueError, match="SearchConfig.kernel_impl must be one of"):
    SearchConfig(kernel_impl="cuda")
  # More children per node than the call's buffers hold: "auto" runs the XLA kernels, "native" is refused.
  wide = init_tree(1, 1 + 1025, 1025, 1, 2)
  assert kernels.resolved_impl(RULE, num_actions=1025) == "xla"
  with pytest.raises(ValueError, match="at most 1024 children per node, got A = 1025"):
    kernels.select(wide, RULE, impl="native")
  _, out = kernels.select(wide, RULE)
  assert int(out.node[0]) == 0
  previous = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")
  try:
    with pytest.raises(ValueError, match="threefry2x32, jax's default PRNG; jax_default_prng_impl is 'rbg'"):
      kernels.select(init_tree(2, 16, 2, 3, 4), PAPER, impl="native")
    assert kernels.resolved_impl(PAPER) == "xla" and kernels.resolved_impl(RULE) == "native"
  finally:
    jax.config.update("jax_default_prng_impl", previous)


def test_the_library_is_built_once_per_source_and_reused(tmp_path, monkeypatch):
  monkeypatch.setenv("RSTAR_JAX_CACHE", str(tmp_path))
  path = native.build()
  assert path.parent == tmp_path / "native" and path.suffix == ".so"
  stamp = path.stat().st_mtime_ns
  assert native.build() == path and path.stat().st_mtime_ns == stamp  # cached: not rebuilt
  assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


_FALLBACK = textwrap.dedent("""
    import jax, numpy as np
    from rstar_jax.search import kernels, native
    from rstar_jax.search.tree import init_tree
    rule = kernels.SelectionRule("official", 2.0)
    tree, out = kernels.select(init_tree(2, 16, 2, 3, 4), rule)  # auto: the XLA kernels
    print("selected", np.asarray(out.node).tolist(), "available", native.available())
    print("reason", native.unavailable_reason())
    try:
      kernels.select(tree, rule, impl="native")
    except RuntimeError as e:
      print("refused", e)
""")


@pytest.mark.parametrize("env,reason", [({"CXX": "/bin/false"}, "building tree_kernels.cc failed"),
                                        ({"CXX": "", "PATH": "/nonexistent"}, "no C++ compiler found"),
                                        ({"RSTAR_JAX_NATIVE": "0"}, "disabled by RSTAR_JAX_NATIVE=0")])
def test_without_the_library_auto_runs_the_xla_kernels_and_native_is_refused(tmp_path, env, reason):
  run_env = dict(os.environ, RSTAR_JAX_CACHE=str(tmp_path), JAX_PLATFORMS="cpu", **env)
  done = subprocess.run([sys.executable, "-c", _FALLBACK], capture_output=True, text=True, env=run_env, cwd=REPO_ROOT,
                        timeout=300)
  assert done.returncode == 0, done.stderr
  assert "selected [0, 0] available False" in done.stdout
  assert reason in done.stdout and "refused impl='native': the native tree kernels are unavailable" in done.stdout
  assert "using the XLA kernels" in done.stderr  # said once, as a warning


def test_the_select_loop_steps_match_xla():
  # `SelectOutput.steps` is the batch's longest descent in loop steps; the native call counts them per tree.
  steps = {}
  for impl in ("xla", "native"):
    rng = np.random.default_rng(0)
    tree, out = kernels.select(init_tree(8, 64, 4, 6, 5), RULE, impl=impl)
    steps[impl] = [int(out.steps)]
    for _ in range(12):
      expansion = _random_expansion(rng, tree, np.asarray(out.node), 4, 5, skip=0.0)
      tree, out = kernels.expand_and_select(tree, expansion, RULE, impl=impl)
      steps[impl].append(int(out.steps))
  assert steps["xla"] == steps["native"] and max(steps["xla"]) > 2
