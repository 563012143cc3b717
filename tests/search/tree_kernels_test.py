"""Tree kernels on randomised trees: agreement with the plain-Python object tree (an independent
implementation of §1.2 written like the official code), invariants (root visits, running means,
parent/child consistency), batch independence, and the `paper` preset's random tie-breaks.

Tests taking the `kernel_impl` fixture run once per implementation of `select` / `expand_and_select`: the XLA
kernels and the native CPU call (`native_kernels_test.py` compares the two directly)."""

import dataclasses
import functools
import math
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstar_jax.search import SearchConfig, kernels
from rstar_jax.search.kernels import Expansion, SelectionRule, expand_and_backup, select
from rstar_jax.search.object_tree import ObjectTree
from rstar_jax.search.tree import NO_CHILD, NO_NODE, NO_PARENT, Reason, init_tree

A = 4
N = 96
MAX_DEPTH = 4
VALUES = (-1.0, -0.5, 0.25, 0.5, 1.0)  # dyadic: float32 sums are exact


BOTH_IMPLS = pytest.mark.parametrize("kernel_impl", ["xla", "native"], indirect=True)
PRESET_IMPLS = pytest.mark.parametrize("preset,kernel_impl", [(preset, impl) for preset in ("official", "paper")
                                                              for impl in ("xla", "native")], indirect=["kernel_impl"])


@pytest.fixture
def kernel_impl(request, monkeypatch):
  """Runs the test's `select` and `kernels.expand_and_select` calls with `impl=request.param`."""
  monkeypatch.setattr(sys.modules[__name__], "select", functools.partial(kernels.select, impl=request.param))
  monkeypatch.setattr(kernels, "expand_and_select", functools.partial(kernels.expand_and_select,
                                                                      impl=request.param))
  return request.param


def _random_specs(rng, preset, depth):
  """Random children (reason, value, scope) for an expansion at `depth`."""
  specs = []
  for _ in range(rng.integers(1, A + 1)):
    kind = rng.choice(4, p=[0.45, 0.3, 0.15, 0.1])
    value = float(rng.choice(VALUES))
    if depth + 1 > MAX_DEPTH and kind == 0:
      kind = 4
    if kind == 0:
      specs.append((Reason.NONE, value, rng.choice([None, "self"])))
    elif kind == 1:
      specs.append((Reason.ANSWER, rng.choice([-1.0, 1.0]), "path"))
    else:
      reason = {2: Reason.TOO_MANY_ERRORS, 3: Reason.UNPARSABLE, 4: Reason.MAX_DEPTH}[int(kind)]
      specs.append((reason, -1.0, "self" if preset == "official" else "path"))
  return specs


def _expansion(batch_specs, parents):
  b = len(batch_specs)
  arr = lambda fill, dtype: np.full([b, A], fill, dtype)
  parent = np.array(parents, np.int32)
  count = np.zeros([b], np.int32)
  reason, value = arr(0, np.int32), arr(0, np.float32)
  upd_self, upd_path = arr(False, bool), arr(False, bool)
  for i, specs in enumerate(batch_specs):
    count[i] = len(specs)
    for j, (r, v, scope) in enumerate(specs):
      reason[i, j] = int(r)
      value[i, j] = v
      upd_self[i, j] = scope == "self"
      upd_path[i, j] = scope == "path"
  return Expansion(parent=jnp.asarray(parent), count=jnp.asarray(count), terminal_reason=jnp.asarray(reason),
                   consecutive_errors=jnp.zeros([b, A], jnp.int32), ppm_value=jnp.full([b, A], jnp.nan, jnp.float32),
                   value=jnp.asarray(value),
                   update_self=jnp.asarray(upd_self), update_path=jnp.asarray(upd_path))


def _run(preset, seeds, budgets, tree_seeds=None, compare_reference=True):
  """Runs random searches (one rng per tree) on the kernels and, optionally, on object trees."""
  b = len(seeds)
  rngs = [np.random.default_rng(s) for s in seeds]
  tree_seeds = np.array(tree_seeds if tree_seeds is not None else seeds, np.uint32)
  tree = init_tree(b, N, A, np.array(budgets), MAX_DEPTH, tree_seeds)
  refs = [ObjectTree(preset, 2.0, budgets[i], int(tree_seeds[i]), float32=True, num_actions=A)
          for i in range(b)]
  rule = SelectionRule(preset, 2.0)
  log = [[] for _ in range(b)]  # per tree: (node, specs) of every expansion
  for _ in range(400):
    tree, out = select(tree, rule)
    nodes, rollouts = jax.device_get((out.node, out.rollout))
    if compare_reference:
      for i in range(b):
        ref_node = refs[i].select()
        assert (ref_node.id if ref_node is not None else NO_NODE) == nodes[i], f"tree {i}"
        if ref_node is not None:
          assert refs[i].rollouts - 1 == rollouts[i]
    if np.all(nodes == NO_NODE):
      break
    depth = np.asarray(tree.depth)
    batch_specs = []
    for i in range(b):
      specs = _random_specs(rngs[i], preset, int(depth[i, nodes[i]])) if nodes[i] != NO_NODE else []
      batch_specs.append(specs)
      if specs:
        log[i].append((int(nodes[i]), specs))
        if compare_reference:
          refs[i].expand(refs[i].nodes[nodes[i]], specs)
    tree = expand_and_backup(tree, _expansion(batch_specs, nodes))
  else:
    raise AssertionError("searches did not finish")
  return jax.device_get(tree), refs, log


@PRESET_IMPLS
def test_kernels_match_object_tree_and_invariants(preset, kernel_impl):
  seeds = list(range(6))
  budgets = [6, 4, 8, 1, 6, 5]
  final, refs, log = _run(preset, seeds, budgets)
  for i, ref in enumerate(refs):
    n = int(final.num_nodes[i])
    assert n == len(ref.nodes)
    assert n > 1 + A  # the random search went beyond the root's expansion
    for node in ref.nodes:
      v = node.id
      assert final.parent[i, v] == (node.parent.id if node.parent else NO_PARENT)
      assert final.depth[i, v] == node.depth
      assert final.visits[i, v] == node.visits, (preset, i, v)
      assert final.value_sum[i, v] == pytest.approx(node.value_sum, abs=1e-6)
      assert bool(final.terminal[i, v]) == node.terminal
      assert final.terminal_reason[i, v] == int(node.reason)
      kids = [c for c in final.children[i, v] if c != NO_CHILD]
      assert kids == [c.id for c in node.children]
    assert np.all(final.parent[i, n:] == NO_PARENT) and np.all(final.visits[i, n:] == 0)
    assert int(final.rollouts[i]) <= budgets[i]

    # Invariants computed from the expansion log alone.
    self_n = np.zeros(n, int)
    self_w = np.zeros(n)
    path_n = np.zeros(n, int)
    path_w = np.zeros(n)
    parent = {0: NO_PARENT}
    next_id = 1
    for node, specs in log[i]:
      for _, value, scope in specs:
        parent[next_id] = node
        if scope == "self":
          self_n[next_id] += 1
          self_w[next_id] += value
        elif scope == "path":
          path_n[next_id] += 1
          path_w[next_id] += value
        next_id += 1
    assert next_id == n
    sub_n, sub_w = path_n.copy(), path_w.copy()
    for v in range(n - 1, 0, -1):  # children have larger ids than their parents
      sub_n[parent[v]] += sub_n[v]
      sub_w[parent[v]] += sub_w[v]
    assert final.visits[i, 0] == path_n.sum()  # root visits = values backed up to the root
    np.testing.assert_array_equal(final.visits[i, :n], self_n + sub_n)
    np.testing.assert_allclose(final.value_sum[i, :n], self_w + sub_w, atol=1e-6)
    visited = final.visits[i, :n] > 0
    means = (self_w + sub_w)[visited] / (self_n + sub_n)[visited]
    np.testing.assert_allclose(final.value_sum[i, :n][visited] / final.visits[i, :n][visited], means,
                               atol=1e-6)  # running means
    for v in range(1, n):
      assert v in list(final.children[i, parent[v]])
      assert final.depth[i, v] == final.depth[i, parent[v]] + 1


@PRESET_IMPLS
def test_batch_independence(preset, kernel_impl):
  seeds = [11, 12, 13, 14]
  budgets = [5, 3, 6, 4]
  together, _, _ = _run(preset, seeds, budgets, compare_reference=False)
  for i, (s, r) in enumerate(zip(seeds, budgets)):
    alone, _, _ = _run(preset, [s], [r], compare_reference=False)
    for field in dataclasses.fields(alone):
      np.testing.assert_array_equal(getattr(together, field.name)[i], getattr(alone, field.name)[0],
                                    err_msg=f"{preset} tree {i} field {field.name}")


@BOTH_IMPLS
def test_paper_ties_are_uniform_and_seeded(kernel_impl):
  """Three unvisited children tie at +inf: the choice follows the documented key, and over many
  tree seeds each child is picked about a third of the time."""
  seeds = np.arange(300, dtype=np.uint32)
  b = len(seeds)
  rule = SelectionRule("paper", 2.0)
  tree = init_tree(b, 8, 3, 2, 2, seeds)
  tree, out = select(tree, rule)
  specs = [[(Reason.NONE, 0.0, None)] * 3] * b
  exp = _expansion(specs, np.asarray(out.node))
  exp = exp._replace(terminal_reason=exp.terminal_reason[:, :3],
                     consecutive_errors=exp.consecutive_errors[:, :3], ppm_value=exp.ppm_value[:, :3],
                     value=exp.value[:, :3], update_self=exp.update_self[:, :3],
                     update_path=exp.update_path[:, :3])
  tree = expand_and_backup(tree, exp)
  tree, out = select(tree, rule)
  chosen = np.asarray(out.node) - 1
  draws = jax.vmap(lambda s: jax.random.uniform(kernels.tie_break_key(s, 0, 0), [3]))(seeds)
  want = np.argmax(np.asarray(draws), axis=1)
  np.testing.assert_array_equal(chosen, want)
  counts = np.bincount(chosen, minlength=3)
  assert np.all(counts > 70), counts  # each ~100 of 300


@BOTH_IMPLS
def test_official_ties_go_to_first_child(kernel_impl):
  rule = SelectionRule("official", 2.0)
  tree = init_tree(1, 8, A, 1, 2)
  tree, out = select(tree, rule)
  specs = [(Reason.NONE, 0.5, "self"), (Reason.NONE, 0.5, "self"), (Reason.NONE, 0.25, "self")]
  tree = expand_and_backup(tree, _expansion([specs], np.asarray(out.node)))
  tree, out = select(tree, rule)
  assert int(out.node[0]) == 1  # children 1 and 2 tie at Q = 0.5 (root N = 0: no exploration)


@BOTH_IMPLS
def test_out_of_nodes_stops_the_tree(kernel_impl):
  tree = init_tree(1, 1 + 2 * A, A, 10, 4)
  rule = SelectionRule("official", 2.0)
  expanded = 0
  for _ in range(10):
    tree, out = select(tree, rule)
    if int(out.node[0]) == NO_NODE:
      break
    expanded += 1
    tree = expand_and_backup(tree, _expansion([[(Reason.NONE, 0.0, None)] * A], np.asarray(out.node)))
  assert expanded == 2
  assert bool(tree.out_of_nodes[0])


def test_kernels_compile_once():
  rule = SelectionRule("official", 2.0)
  select._clear_cache()  # pylint: disable=protected-access
  expand_and_backup._clear_cache()  # pylint: disable=protected-access
  tree = init_tree(3, 32, A, 3, MAX_DEPTH)
  for _ in range(6):
    tree, out = select(tree, rule)
    nodes = np.asarray(out.node)
    if np.all(nodes == NO_NODE):
      break
    specs = [[(Reason.NONE, 0.5, "self"), (Reason.ANSWER, 1.0, "path")] if n != NO_NODE else []
             for n in nodes]
    tree = expand_and_backup(tree, _expansion(specs, nodes))
  assert select._cache_size() == 1  # pylint: disable=protected-access
  assert expand_and_backup._cache_size() == 1  # pylint: disable=protected-access


def _random_fused_search(seed, budgets, host_output=False, pack=False, calls=10):
  """Random expansions (scored and unscored, with code errors) through `expand_and_select`, official preset.

  Returns:
    `(every call's SelectOutput, read back; the final tree; memory kinds of the last output's node, rollout, steps)`.
  """
  rng = np.random.default_rng(seed)
  rule = SelectionRule("official", 2.0)
  tree = init_tree(len(budgets), N, A, np.array(budgets), MAX_DEPTH, np.arange(len(budgets), dtype=np.uint32))
  tree, out = select(tree, rule, host_output=host_output)
  seen = [jax.device_get(out)]
  for _ in range(calls):
    nodes, depth = np.asarray(out.node), np.asarray(tree.depth)
    batch = [_random_specs(rng, "official", int(depth[i, n])) if n != NO_NODE else [] for i, n in enumerate(nodes)]
    expansion = jax.device_get(_expansion(batch, nodes))
    ppm = rng.choice([np.nan, -0.75, 0.5], size=expansion.ppm_value.shape).astype(np.float32)
    expansion = expansion._replace(ppm_value=ppm, consecutive_errors=rng.integers(0, 3, size=ppm.shape))
    tree, out = kernels.expand_and_select(tree, kernels.pack_expansion(expansion) if pack else expansion, rule,
                                          host_output=host_output)
    seen.append(jax.device_get(out))
  kinds = tuple(getattr(out, f).sharding.memory_kind for f in ("node", "rollout", "steps"))
  return seen, jax.device_get(tree), kinds


def _assert_same_search(first, second):
  (outs_a, tree_a, _), (outs_b, tree_b, _) = first, second
  for a, b in zip(outs_a, outs_b):
    for field in ("node", "rollout", "steps"):
      np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert int(tree_a.num_nodes.max()) > 1 + A  # the searches went on past the roots' expansions
  for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
    np.testing.assert_array_equal(a, b)


@BOTH_IMPLS
def test_host_output_writes_the_selection_to_host_memory_and_changes_nothing_else(kernel_impl):
  # The driver reads `node` and `rollout` after every call; with `host_output` the call itself writes them to
  # (pinned) host memory. Same searches either way: every selection, the trees and the descent steps agree.
  plain = _random_fused_search(3, [4, 2, 5])
  host = _random_fused_search(3, [4, 2, 5], host_output=True)
  assert plain[2] == ("device", "device", "device")
  assert host[2] == ("pinned_host", "pinned_host", "device")
  _assert_same_search(plain, host)


@BOTH_IMPLS
def test_select_reports_its_descent_steps(kernel_impl):
  # By hand (official preset): a fresh root is picked in one step; after the root gets two plain children the
  # continuing rollout moves to child 1 (ties go first) and stops there, one step; once child 1's only child is a
  # terminal answer, the next select marks child 1 terminal (all children terminal), ends that rollout, starts the
  # next at the root and moves to child 2: two steps.
  rule = SelectionRule("official", 2.0)
  tree = init_tree(1, N, A, np.array([4]), MAX_DEPTH, np.zeros(1, np.uint32))
  tree, out = select(tree, rule)
  assert (int(out.node[0]), int(out.steps)) == (0, 1)
  plain = [(Reason.NONE, 0.5, None), (Reason.NONE, 0.5, None)]
  tree, out = select(expand_and_backup(tree, _expansion([plain], [0])), rule)
  assert (int(out.node[0]), int(out.steps)) == (1, 1)
  tree, out = select(expand_and_backup(tree, _expansion([[(Reason.ANSWER, 1.0, "path")]], [1])), rule)
  assert (int(out.node[0]), int(out.steps)) == (2, 2)
  assert bool(tree.terminal[0, 1]) and int(tree.terminal_reason[0, 1]) == int(Reason.ALL_CHILDREN_TERMINAL)


@BOTH_IMPLS
def test_expansion_without_room_for_a_children_is_dropped(kernel_impl):
  # Selection reads a node's children as the window [first child, first child + A), so an expansion is written only
  # when A slots are free; select never returns a node without them, and a direct call asking anyway changes nothing
  # but the tree's out_of_nodes flag.
  rule = SelectionRule("official", 2.0)
  tree = init_tree(2, 1 + A + 2, A, 4, MAX_DEPTH)
  tree, out = select(tree, rule)
  plain = [(Reason.NONE, 0.5, "path")] * A
  tree = expand_and_backup(tree, _expansion([plain, plain], np.asarray(out.node)))
  before = jax.device_get(tree)
  # Tree 0 asks to expand child 1 (needs slots 1 + A .. 2A: only 2 are free); tree 1 asks nothing.
  tree = expand_and_backup(tree, _expansion([[(Reason.ANSWER, 1.0, "path")], []], [1, NO_NODE]))
  after = jax.device_get(tree)
  np.testing.assert_array_equal(after.out_of_nodes, [True, False])
  for name in ("node_info", "node_stats", "ppm_value", "children", "num_nodes"):
    np.testing.assert_array_equal(getattr(after, name), getattr(before, name), err_msg=name)


def test_node_fields_read_through_properties():
  rule = SelectionRule("official", 2.0)
  tree, out = select(init_tree(1, N, A, 4, MAX_DEPTH), rule)
  specs = [(Reason.NONE, 0.25, "self"), (Reason.ANSWER, -1.0, "path"), (Reason.UNPARSABLE, -1.0, None)]
  exp = _expansion([specs], np.asarray(out.node))
  exp = exp._replace(ppm_value=jnp.asarray([[0.25, np.nan, np.nan, np.nan]], jnp.float32),
                     consecutive_errors=jnp.asarray([[1, 0, 0, 0]], jnp.int32))
  tree = expand_and_backup(tree, exp)
  for t in (tree, jax.device_get(tree)):  # device arrays and fetched numpy arrays alike
    np.testing.assert_array_equal(t.parent[0, :5], [NO_PARENT, 0, 0, 0, NO_PARENT])
    np.testing.assert_array_equal(t.depth[0, :4], [0, 1, 1, 1])
    np.testing.assert_array_equal(t.terminal_reason[0, :4], [0, 0, int(Reason.ANSWER), int(Reason.UNPARSABLE)])
    np.testing.assert_array_equal(t.terminal[0, :4], [False, False, True, True])
    np.testing.assert_array_equal(t.consecutive_errors[0, :4], [0, 1, 0, 0])
    assert t.visits.dtype == np.int32
    np.testing.assert_array_equal(t.visits[0, :4], [1, 1, 1, 0])  # the answer's -1 reaches the root
    np.testing.assert_array_equal(t.value_sum[0, :4], [-1.0, 0.25, -1.0, 0.0])
    np.testing.assert_array_equal(np.isnan(t.ppm_value[0, :4]), [True, False, True, True])
    np.testing.assert_allclose(np.asarray(t.q())[0, :4], [-1.0, 0.25, -1.0, 0.0])


def test_init_tree_refuses_shapes_the_kernels_cannot_run():
  # No child slot: `select` reads a node's first child (it failed there with an IndexError about axis 1).
  with pytest.raises(ValueError, match=r"num_actions must be >= 1, got 0"):
    init_tree(2, 9, 0, 2, MAX_DEPTH)
  # A negative budget has no meaning (it ran as 0); a budget per tree must have one entry per tree.
  with pytest.raises(ValueError, match=r"rollout_budget must be >= 0 .*got \[ 2 -1\]"):
    init_tree(2, 9, 2, np.array([2, -1]), MAX_DEPTH)
  with pytest.raises(ValueError, match=r"rollout_budget must be a scalar or have shape \[2\], got shape \(3,\)"):
    init_tree(2, 9, 2, np.array([1, 2, 3]), MAX_DEPTH)


@pytest.mark.parametrize("c", [float("nan"), float("inf"), -float("inf")])
def test_selection_rule_refuses_a_non_finite_c(c):
  # A NaN score ties with nothing: the paper preset's pick then fell back to child slot 0 even when that child was
  # terminal (c = inf gives NaN too, as inf * sqrt(ln 1)); SearchConfig already refused these, the rule did not.
  with pytest.raises(ValueError, match=r"c must be finite"):
    SelectionRule("paper", c)


@pytest.mark.parametrize("preset", ["official", "paper"])
def test_a_c_too_large_for_float32_scores_is_refused_and_the_largest_allowed_stays_finite(preset):
  # Scores are float32. c = 1e39 passed the finiteness check (it is a finite Python float) but is inf in float32:
  # a visited child under a parent with N = 1 scored inf * sqrt(ln 1) = NaN (the paper pick then took slot 0, even a
  # terminal), and every visited child under a larger N scored +inf, tying with the unvisited ones. c = 3e38 fits
  # float32 yet c * sqrt(ln 3) overflows the same way.
  for c in (1e39, -1e39, 3e38):
    with pytest.raises(ValueError, match=rf"c must be at most 1e\+30 in magnitude .*float32.*got {re.escape(str(c))}"):
      SelectionRule(preset, c)
    with pytest.raises(ValueError, match=rf"c must be at most 1e\+30 in magnitude .*got {re.escape(str(c))}"):
      SearchConfig(preset=preset, c=c)
  # The bound keeps every score finite for any visit count float32 counts exactly (N < 2**24): the hand value of
  # q + c * sqrt(ln N / n) for q = 0.5, N = 2**24 - 1, n = 1 is 0.5 + 1e30 * sqrt(16.6355...) = 4.0787e30.
  scores = kernels.uct_scores(jnp.array([1, 1]), jnp.array([0.5, -1.0]), jnp.array([True, False]),
                              jnp.array(2**24 - 1), SelectionRule(preset, 1e30))
  assert np.isfinite(float(scores[0]))
  assert float(scores[0]) == pytest.approx(1e30 * math.sqrt(math.log(2**24 - 1)), rel=1e-6)


@pytest.mark.parametrize("c", ["2", None, [2.0], True])
def test_selection_rule_refuses_a_c_that_is_no_number_naming_it(c):
  # "2" and None failed as math.isfinite's "must be real number, not str", naming neither SelectionRule nor c, and True
  # was taken as c = 1 (SearchConfig refuses it; SelectionRule, a public jit static, did not).
  with pytest.raises(TypeError, match=rf"SelectionRule.c must be a number, got {re.escape(repr(c))}"):
    SelectionRule("official", c)
  assert SelectionRule("official", np.float32(0.5)).c == 0.5


@pytest.mark.parametrize("budget", [2**31, 2**32 + 3, [2, 2**32 + 3]])
def test_init_tree_refuses_a_rollout_budget_beyond_int32(budget):
  # It was cast to int32 and wrapped: 2**32 + 3 became 3 rollouts, 2**31 a negative budget (no rollout at all).
  with pytest.raises(ValueError, match=r"rollout_budget must be .*< 2\*\*31"):
    init_tree(np.asarray(budget).size, 10, 2, np.asarray(budget, np.int64), 3)


@BOTH_IMPLS
def test_a_packed_expansion_gives_the_same_trees_and_selections_as_its_fields(kernel_impl):
  # `pack_expansion` puts the eight fields in one int32 array (one transfer); unpacked inside the call it must give
  # exactly what the fields give, NaN PPM values (unscored children) and negative values included.
  plain = _random_fused_search(5, [5, 3, 6])
  packed = _random_fused_search(5, [5, 3, 6], pack=True)
  assert np.isnan(plain[1].ppm_value).any() and (plain[1].ppm_value < 0).any()
  _assert_same_search(plain, packed)


@BOTH_IMPLS
def test_a_packed_expansion_of_another_width_is_refused_naming_the_shape(kernel_impl):
  tree, _ = select(init_tree(2, N, A, 2, MAX_DEPTH), SelectionRule("official", 2.0))
  wrong = np.zeros([2, 2 + 6 * (A - 1)], np.int32)
  message = rf"int32 \[B, 2 \+ 6A\] = \[B, {2 + 6 * A}\] .* got int32 \[2, {2 + 6 * (A - 1)}\]"
  with pytest.raises(ValueError, match=message):
    kernels.expand_and_select(tree, wrong, SelectionRule("official", 2.0))


def test_transfer_form_packs_the_expansion_on_an_accelerator_only(monkeypatch):
  expansion = jax.device_get(_expansion([[(Reason.NONE, 0.5, "self")], []], [0, NO_NODE]))
  assert kernels.transfer_form(expansion) is expansion  # the CPU: the fields as they are
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  packed = kernels.transfer_form(expansion)
  np.testing.assert_array_equal(packed, kernels.pack_expansion(expansion))
  assert packed.dtype == np.int32 and packed.shape == (2, 2 + 6 * A)
