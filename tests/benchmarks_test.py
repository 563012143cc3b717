"""The benchmarks against independent figures: counting helpers against hand counts (the figures in
benchmarks/RESULTS.md come from them), selections against the object tree, and the scripts' argument checks."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

_BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load(script: str):
  """benchmarks/<script>.py as a module (the scripts are no package)."""
  spec = importlib.util.spec_from_file_location(f"{script}_benchmark", _BENCHMARKS / f"{script}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def search_bench():
  return _load("search")


# A compiled module in XLA's text form, cut down: a while loop whose state is a tuple (its type holds spaces and an
# `/*index=5*/` comment), a condition with two operations, and a body with a multi-output fusion (tuple-typed too).
_HLO = """HloModule jit_f, entry_computation_layout={(s32[4]{0})->s32[4]{0}}

%fused_a (p: s32[4]) -> s32[4] {
  %p = s32[4]{0} parameter(0)
  ROOT %n = s32[4]{0} negate(%p)
}

%cond (arg_tuple.1: (s32[], s32[4])) -> pred[] {
  %arg_tuple.1 = (s32[], s32[4]{0}) parameter(0)
  %get-tuple-element.1 = s32[] get-tuple-element(%arg_tuple.1), index=0
  %constant.1 = s32[] constant(3)
  %compare_fusion = pred[] fusion(%get-tuple-element.1, %constant.1), kind=kLoop, calls=%fused_a
  ROOT %and_fusion = pred[] fusion(%compare_fusion), kind=kLoop, calls=%fused_a
}

%body (arg_tuple.2: (s32[], s32[4])) -> (s32[], s32[4]) {
  %arg_tuple.2 = (s32[], s32[4]{0}) parameter(0)
  %get-tuple-element.2 = s32[] get-tuple-element(%arg_tuple.2), index=0
  %get-tuple-element.3 = s32[4]{0} get-tuple-element(%arg_tuple.2), index=1
  %iota_reduce_fusion = (f32[4]{0}, s32[4]{0}) fusion(%get-tuple-element.3), kind=kLoop, calls=%fused_a
  %get-tuple-element.4 = s32[4]{0} get-tuple-element(%iota_reduce_fusion), index=1
  %add_fusion = s32[] fusion(%get-tuple-element.2), kind=kLoop, calls=%fused_a
  %copy.1 = s32[4]{0} copy(%get-tuple-element.4)
  ROOT %tuple.2 = (s32[], s32[4]{0}) tuple(%add_fusion, %copy.1)
}

ENTRY %main.9 (x.1: s32[4]) -> s32[4] {
  %x.1 = s32[4]{0} parameter(0)
  %negate_fusion = s32[4]{0} fusion(%x.1), kind=kLoop, calls=%fused_a, metadata={op_name="jit(f)/neg"}
  %constant.2 = s32[] constant(0)
  %tuple.1 = (s32[], s32[4]{0}) tuple(%constant.2, %negate_fusion)
  %while.1 = (s32[], /*index=1*/s32[4]{0}) while(%tuple.1), condition=%cond, body=%body
  %get-tuple-element.5 = s32[4]{0} get-tuple-element(%while.1), index=1
  ROOT %copy.2 = s32[4]{0} copy(%get-tuple-element.5)
}
"""


def test_hlo_op_counts_by_hand(search_bench):
  # By hand. Outside the loop: negate_fusion and copy.2, plus the condition's last run (2 fusions) that ends the
  # loop: 4. Per step: the body's iota_reduce_fusion, add_fusion and copy.1, and the condition's 2 fusions: 5.
  assert search_bench.hlo_op_counts(_HLO) == (4, 5)


@pytest.fixture(scope="module")
def sandbox_bench():
  return _load("sandbox")


def test_sandbox_quick_counts_are_checked_after_they_are_filled_in(sandbox_bench):
  # `--quick` set 6 busy loops after the checks: with 8 workers, 6 // 8 = 0 batches ran and the run crashed at its
  # end (IndexError on an empty list). Its default now grows to one batch of workers; explicit counts win.
  args = sandbox_bench.parse_args(["--quick", "--workers", "8"])
  assert (args.n, args.subprocess_n, args.timeout_samples) == (200, 6, 8)
  assert sandbox_bench.parse_args(["--quick", "--n", "50"]).n == 50
  assert sandbox_bench.parse_args([]).n == 800
  with pytest.raises(SystemExit):
    sandbox_bench.parse_args(["--quick", "--workers", "3", "--timeout-samples", "2"])


class _Clock:
  """A clock the fake pool moves on."""

  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


def test_sandbox_timeout_delay_is_host_result_time_minus_deadline(sandbox_bench):
  # A fake pool whose busy loops report 10 ms past the deadline in the jail (`duration_s`) and reach the host
  # 100 ms past it. The delay is the host's: 100 ms for every loop. Before, per batch, the two in-jail figures
  # (10 ms) and the batch's wall time (100 ms) went into one list: p50 10 ms over 6 "loops" for 4 busy loops.
  import concurrent.futures
  import types
  clock, timeout = _Clock(), 0.5

  class FakePool:
    def __init__(self, num_workers, timeout_s):
      self.workers = num_workers

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def run(self, programs):
      return []

    def submit(self, programs):
      futures = [concurrent.futures.Future() for _ in programs]
      clock.now += timeout + 0.1
      for f in futures:
        f.set_result(types.SimpleNamespace(timed_out=True, duration_s=timeout + 0.01))
      return futures

  out = sandbox_bench.bench_timeouts(2, 4, timeout, make_pool=FakePool, clock=clock)
  assert out["loops"] == 4
  assert out["p50_ms"] == pytest.approx(100.0) and out["p99_ms"] == pytest.approx(100.0)
  assert out["max_ms"] == pytest.approx(100.0)


def _object_tree_selections(search_bench, workload, trees, actions, rollouts):
  """Every simulation's `[B]` selection of the plain-Python object tree on the benchmark's workload."""
  objs = [search_bench.ObjectTree("official", 2.0, rollouts, float32=False, num_actions=actions)
          for _ in range(trees)]
  out = []
  for count, reason, value, scope in workload:
    picked = []
    for b, t in enumerate(objs):
      node = t.select()
      picked.append(search_bench.NO_NODE if node is None else node.id)
      if node is not None:
        t.expand(node, [(int(reason[b, j]), float(value[b, j]), "self" if scope[b, j] == 1 else "path")
                        for j in range(count[b])])
    out.append(picked)
  return np.array(out)


def test_replay_returns_every_selection_so_a_diverged_search_is_caught(search_bench):
  # `search_ab.py` checks that both kernel versions ran the same search by comparing what a replay returns. It
  # returned the last `[B]` selection only; the last expansion's children get the same ids whichever node it
  # expanded, so a replay that expanded another node two simulations before the end still returned the same last
  # selection. A replay now returns every simulation's selection, checked here against the object tree.
  trees, nodes, actions, rollouts, iters = 16, 64, 8, 4, 8
  workload = search_bench.make_workload(0, trees, actions, iters)
  objects = _object_tree_selections(search_bench, workload, trees, actions, rollouts)
  _, selections = search_bench.replay_kernels(workload, trees, nodes, actions, rollouts)
  # The object tree's selection i precedes expansion i; the replay's row i follows it (row i - 1 precedes it).
  np.testing.assert_array_equal(selections[:-1], objects[1:])
  calls = []

  def expand_a_sibling(picked, spec):
    calls.append(None)
    picked = np.array(picked)
    if len(calls) == iters - 2:
      picked[0] += 1  # tree 0 expands the next child of the same expansion (ids are consecutive)
    return search_bench._expansion(picked, spec)  # pylint: disable=protected-access

  _, diverged = search_bench.replay_kernels(workload, trees, nodes, actions, rollouts, make_expansion=expand_a_sibling)
  assert not np.array_equal(selections, diverged)


@pytest.fixture(scope="module")
def train_bench():
  return _load("train")


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_train_torch_side_computes_in_the_asked_dtype(train_bench, tmp_path, compute_dtype):
  # `--compute-dtype bfloat16` ran our step in bf16 and torch's in fp32, and reported the ratio as the speed-up.
  # The torch side now runs under bf16 autocast too: its projections' outputs are bf16 (weights stay fp32).
  import torch
  shape = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
               num_key_value_heads=2, tie_word_embeddings=True)
  model = train_bench.make_checkpoint(shape, tmp_path)
  seen = []
  model.model.layers[0].mlp.down_proj.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
  train_bench.torch_runner(model, train_bench.make_batch(64, 2, 8), compute_dtype)
  assert seen == [getattr(torch, compute_dtype)]
  assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.float32


def test_search_refuses_a_node_count_the_workload_can_fill(search_bench, capsys):
  # With N = 16 slots, 6 simulations of up to 8 children filled the kernel trees, which then dropped expansions
  # while the object trees kept growing: the speed-up compared two different searches (selections agreed 29%).
  with pytest.raises(SystemExit):
    search_bench.main(["--trees", "4", "--nodes", "16", "--iters", "6", "--rollouts", "2", "--driver-rollouts", "1"])
  assert "--nodes 16 can run out" in capsys.readouterr().err


@pytest.mark.parametrize("impl", ["native", "xla"])
def test_search_runs_its_kernels_the_same_search_as_the_object_tree(search_bench, capsys, impl):
  # The whole benchmark on small shapes: the kernels' selections agree with the object tree's in every simulation
  # (the speed-up compares the same search), and every figure RESULTS.md quotes is reported.
  if impl == "native" and not search_bench.search_kernels.native.available():
    pytest.fail(f"the native tree kernels did not build: {search_bench.search_kernels.native.unavailable_reason()}")
  search_bench.main(["--trees", "8", "--nodes", "64", "--iters", "6", "--rollouts", "2", "--driver-rollouts", "1",
                     "--impl", impl, "--json"])
  result = json.loads(capsys.readouterr().out)
  assert result["impl"] == impl and result["simulations"] == 6
  assert result["selection_agreement"] == 1.0
  assert result["driver"]["iterations"] > 0
  for key in ("kernel_ms_per_simulation", "object_tree_ms_per_simulation", "kernel_alone_ms_per_simulation",
              "floor_build_ms", "floor_call_ms", "floor_call_warm_ms"):
    assert result[key] > 0, key


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_train_mfu_ceiling_is_measured_in_the_compute_dtype(train_bench, monkeypatch, compute_dtype):
  # The MFU's ceiling was an fp32 matmul whatever --compute-dtype said: a bf16 step's MFU came out against the
  # fp32 peak. The ceiling's operands now take the compute dtype (checked on what reaches the jitted matmul).
  import jax
  seen = []

  def spy(fn):
    def run(*args):
      seen.append(args[0].dtype)
      return fn(*args)
    return run

  monkeypatch.setattr(jax, "jit", spy)
  train_bench.matmul_ceiling(n=8, repeats=1, dtype=compute_dtype)
  assert seen and set(seen) == {jax.numpy.dtype(compute_dtype)}


@pytest.fixture(scope="module")
def generate_bench():
  return _load("generate")


@pytest.mark.parametrize("flags, message", [(["--shapes", "tiny,0.5bb"], "--shapes: unknown '0.5bb'"),
                                            (["--batches", "1,x"], "--batches must be comma-separated"),
                                            (["--batches", "1,0"], "--batches must be >= 1")])
def test_generate_checks_shapes_and_batches_before_running(generate_bench, capsys, flags, message):
  # `--shapes tiny,0.5bb` ran the tiny shape in full, then failed with KeyError: '0.5bb' and wrote no JSON.
  small = ["--batches", "1", "--prompt-len", "4", "--new-tokens", "2", "--repeats", "1", "--json", "/dev/null"]
  with pytest.raises(SystemExit):
    generate_bench.main(small + flags)
  err = capsys.readouterr().err
  assert message in err


def test_generate_decode_bytes_by_hand(generate_bench):
  # Tiny shape: per layer q/o 64x64 each, k/v 64x32 each, gate/up/down 64x128 each = 36,864 parameters; 2 layers
  # + the tied 512x64 embedding = 106,496 fp32 = 425,984 bytes. KV: decode steps 1..63 attend over 129..191
  # positions (mean 160), 2 layers x (k, v) x 32 wide x 4 bytes = 512 bytes per position and row.
  tiny = generate_bench.SHAPES["tiny"]
  assert generate_bench.decode_bytes_per_step(tiny, 1, 128, 64) == 425_984 + 160 * 512
  assert generate_bench.decode_bytes_per_step(tiny, 8, 128, 64) == 425_984 + 8 * 160 * 512


def test_generate_hardware_floor_by_hand(generate_bench):
  # Tiny shape, one row, prompt 2, 3 new tokens, 1 GFLOP/s and 1 MB/s. Prefill: 2 x 2 tokens x 73,728 layer
  # parameters + attention 2 layers x 2 x 2^2 x 64 + LM head 2 x 512 x 64 = 361,472 FLOPs. Decode steps attend over
  # 3 and 4 positions and are bound by their reads: 4 x (106,496 + 2 x 2 x 32 x positions) bytes.
  floor = generate_bench.hardware_floor(generate_bench.SHAPES["tiny"], 1, 2, 3, 1e9, 1e6)
  assert floor == pytest.approx(361_472 / 1e9 + (4 * (106_496 + 128 * 3) + 4 * (106_496 + 128 * 4)) / 1e6, rel=1e-12)


@pytest.mark.parametrize("flags, message", [(["--configs", "60m,1b"], "--configs: unknown '1b'"),
                                            (["--repeats", "0"], "--repeats must be >= 1")])
def test_forward_checks_its_flags_before_running(capsys, flags, message):
  # `--configs 60m,1b` ran the 60M config, then failed with KeyError: '1b'; `--repeats 0` printed NaN rates.
  module = _load("forward")
  with pytest.raises(SystemExit):
    module.main(["--batch", "1", "--length", "4"] + flags)
  assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--replays", "--iters"])
def test_search_ab_checks_its_counts_before_running(search_bench, monkeypatch, capsys, flag):
  # `--replays 0` compiled both sides, then failed with StatisticsError ("no median for empty data").
  monkeypatch.setitem(__import__("sys").modules, "search", search_bench)  # search_ab imports its sibling
  module = _load("search_ab")
  with pytest.raises(SystemExit):
    module.main(["--baseline", "HEAD", "--trees", "2", "--nodes", "64", "--iters", "2", "--replays", "1", flag, "0"])
  assert f"{flag} must be >= 1, got 0" in capsys.readouterr().err


def test_search_ab_runs_a_baseline_with_its_own_native_kernels(search_bench, monkeypatch, tmp_path):
  # From the revision that added them, a baseline's kernels call its own native library (its source, under another
  # FFI target name, so both sides' libraries are registered in one process). HEAD is such a revision.
  monkeypatch.setitem(__import__("sys").modules, "search", search_bench)
  module = _load("search_ab")
  tree_lib, kernels = module.load_baseline("HEAD", tmp_path)
  assert kernels.native.TARGET == "baseline_tree_expand_and_select"
  assert kernels.resolved_impl(kernels.SelectionRule()) == "native"
  workload = search_bench.make_workload(0, 8, 4, 6)
  _, baseline = search_bench.replay_kernels(workload, 8, 32, 4, 3, kernels=kernels, tree_lib=tree_lib,
                                            make_expansion=module.baseline_expansion(kernels))
  _, current = search_bench.replay_kernels(workload, 8, 32, 4, 3)
  np.testing.assert_array_equal(baseline, current)
