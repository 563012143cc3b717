"""One process of a `multihost_test.py` case: `python multihost_cases_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES
CASE OUT`.

Each case computes its reference on this process's own first device (a plain forward, no mesh) and prints
`RESULT ...` lines comparing with the multi-process call, for the parent to read.
"""

import math
import os

from multihost_boot import start

pid, nproc, (case, out) = start()

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from rstar_jax import sharding  # pylint: disable=wrong-import-position
from rstar_jax.models import PPM, ModelConfig, Qwen2, default_positions  # pylint: disable=wrong-import-position


def result(*parts):
  print("RESULT", *parts, flush=True)


def local_forward(model, prompts):
  """Each prompt alone as a `[1, T]` batch on this process's first device: `[T, V]` logits or a PPM value."""
  def forward(m, ids):
    mask = jnp.ones_like(ids, bool)
    out = m(ids, default_positions(mask), mask)
    return out if isinstance(m, PPM) else out.logits[0]
  fn = nnx.jit(forward)
  return [np.asarray(fn(model, jnp.asarray([p], jnp.int32))) for p in prompts]


def engine_case():
  """Engine generate / values / loglikelihood on a mesh over both processes, every process passing all requests."""
  from rstar_jax.generate.engine import Engine, Request  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(1, -1, 1)
  prompts = [[5, 6, 7], [9, 9], [4, 8, 15, 16, 23]]

  # Greedy reference: argmax of a full forward, one token at a time.
  policy = Qwen2(ModelConfig.tiny(), rngs=nnx.Rngs(0))
  want = []
  for p in prompts:
    ids = list(p)
    for _ in range(4):
      ids.append(int(np.argmax(local_forward(policy, [ids])[0][-1])))
    want.append(tuple(ids[len(p):]))
  engine = Engine(Qwen2(ModelConfig.tiny(), rngs=nnx.Rngs(0)), mesh=mesh, stop_check_interval=2)
  got = [r[0].token_ids for r in engine.generate([Request(p) for p in prompts], max_new_tokens=4)]
  result("generate", got == want, got, want)

  contexts, continuations = prompts, [[3, 4], [8], [42, 42, 1]]
  want = []
  for c, x in zip(contexts, continuations):
    logp = jax.nn.log_softmax(local_forward(policy, [c + x])[0], axis=-1)
    want.append(np.asarray([logp[len(c) - 1 + j, t] for j, t in enumerate(x)]))
  got = engine.loglikelihood(contexts, continuations)
  result("loglikelihood", all(np.allclose(g, w, atol=1e-5) for g, w in zip(got, want)))

  ppm = PPM(ModelConfig.tiny(), rngs=nnx.Rngs(1))
  want = np.asarray([v[0] for v in local_forward(ppm, prompts)])
  got = Engine(PPM(ModelConfig.tiny(), rngs=nnx.Rngs(1)), mesh=mesh).values(prompts)
  result("values", bool(np.allclose(got, want, atol=1e-5)), got.tolist(), want.tolist())


def evaluate_ppm_case():
  """evaluate_ppm over both processes with a batch size the process count does not divide, and on a tensor-only
  mesh; the reference scores each pair's two texts alone and applies the Bradley-Terry loss by hand."""
  from rstar_jax.data import formats, pipeline  # pylint: disable=g-import-not-at-top
  from rstar_jax.train import trainer  # pylint: disable=g-import-not-at-top

  class CharTokenizer:
    eos_id, pad_id = 1, 0

    def encode(self, text):
      return [3 + ord(c) % 200 for c in text]

  tok = CharTokenizer()
  sides = [("a" * (i % 3 + 1), "b" * (i % 4 + 2)) for i in range(7)]
  pairs = [formats.PpmPair(prompt="q" * i + "?", pos=s[i % 2], neg=s[1 - i % 2], pos_count=1, neg_count=1 + i % 3)
           for i, s in enumerate(sides)]
  ppm = PPM(ModelConfig.tiny(), rngs=nnx.Rngs(0))
  ppm.value_head.kernel[...] = ppm.value_head.kernel[...] * 300.0  # scores that differ visibly between sides
  scores = local_forward(ppm, [tok.encode(p.prompt + side) for p in pairs for side in (p.pos, p.neg)])
  margins = np.asarray([scores[2 * i][0] - scores[2 * i + 1][0] for i in range(len(pairs))])
  loss = sum(p.weight * math.log1p(math.exp(-m)) for p, m in zip(pairs, margins)) / len(pairs)
  got = trainer.evaluate_ppm(ppm, pairs, tok, data=pipeline.PipelineConfig(max_len=64, batch_size=3))
  result("batch3", got["num_pairs"] == 7 and math.isclose(got["loss"], loss, rel_tol=1e-5)
         and got["pair_accuracy"] == np.mean(margins > 0), got, loss)
  try:
    got = trainer.evaluate_ppm(ppm, pairs, tok, data=pipeline.PipelineConfig(max_len=64, batch_size=4),
                               mesh_shape=(1, 1, -1))
    result("tensor_only", got)
  except ValueError as e:
    result("tensor_only", str(e))


def config_mismatch_case():
  """train_policy where process 1 splits the batch into 1 micro-batch and process 0 into 2 (a setting a resumed run
  may change, so it is not in run.json): every process must raise, naming it, before any step."""
  try:
    _train("work", accum_steps=2 - pid)
    result("config_mismatch none")
  except ValueError as e:
    result("config_mismatch", str(e).replace(out, "OUT").split(" (")[0])


def _sft_config(**changes):
  """The SFT config of the training cases: batches of 8 rows of up to 96 tokens, one epoch, fsdp over every device."""
  from rstar_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from rstar_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.sft_config(
      data=pipeline.PipelineConfig(max_len=96, batch_size=8, num_epochs=1, seed=3),
      optimizer=config_lib.OptimizerConfig(learning_rate=2e-3), mesh=(1, -1, 1), progress=False, tensorboard=False,
      **changes)


def _train_on_own_file():
  """train_policy on this process's own copy of the SFT file (OUT/base/sft{pid}.json); returns the result."""
  from rstar_jax.train import trainer  # pylint: disable=g-import-not-at-top
  base = os.path.join(out, "base")
  return trainer.train_policy(base, os.path.join(base, f"sft{pid}.json"), os.path.join(out, "work"),
                              config=_sft_config(checkpoint_every=100))


def _train(workdir, stop_at=None, accum_steps=2):
  """train_policy on OUT/base's sft0.json (3 steps of 8 rows, fsdp over every device), stopped by an exception in
  the step callback at `stop_at` (steps before it are checkpointed); prints the exported files."""
  from rstar_jax.train import trainer  # pylint: disable=g-import-not-at-top
  base = os.path.join(out, "base")
  config = _sft_config(accum_steps=accum_steps, checkpoint_every=1, log_every=1)

  def callback(step, _):
    if step == stop_at:
      raise KeyboardInterrupt(f"stopped at {step}")
  try:
    got = trainer.train_policy(base, os.path.join(base, "sft0.json"), os.path.join(out, workdir), config=config,
                               step_callback=callback)
    result("train", got.steps, ",".join(sorted(os.listdir(got.export_dir))))
  except KeyboardInterrupt as e:
    result("train", str(e))


def trainer_write_error_case():
  """train_policy where process 0 cannot write run.json, then a run where it cannot write the tokenizer beside the
  exported weights: every process raises, each time."""
  import shutil  # pylint: disable=g-import-not-at-top
  from rstar_jax import files  # pylint: disable=g-import-not-at-top
  original = files.atomic_write
  for target in ("run.json", "tokenizer.json"):
    if pid == 0:
      files.atomic_write = lambda path, *args, **kwargs: (
          original(path, *args, **kwargs) if not str(path).endswith(target)
          else (_ for _ in ()).throw(PermissionError(13, "Permission denied", target)))
    try:
      _train(f"work_{target}")
    except OSError as e:
      result(target, type(e).__name__, str(e).replace(out, "OUT"))
    files.atomic_write = original
  shutil.rmtree(os.path.join(out, "work_tokenizer.json"), ignore_errors=True)


def _train_ppm(workdir):
  """train_ppm from OUT/base (a policy: a fresh value head is added) on OUT/base/pairs.json, fsdp over every device;
  prints the exported files."""
  from rstar_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from rstar_jax.train import config as config_lib, trainer  # pylint: disable=g-import-not-at-top
  base = os.path.join(out, "base")
  config = config_lib.ppm_config(
      data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1, seed=3),
      optimizer=config_lib.OptimizerConfig(learning_rate=2e-3), mesh=(1, -1, 1), checkpoint_every=100,
      progress=False, tensorboard=False)
  got = trainer.train_ppm(base, os.path.join(base, "pairs.json"), os.path.join(out, workdir), config=config)
  result("train_ppm", got.steps, ",".join(sorted(os.listdir(got.export_dir))))


def evaluate_ppm_mismatch_case():
  """evaluate_ppm where process 1 passes fewer pairs than process 0 (7 pairs are 4 batches of 2, 4 pairs 2): every
  process must raise, naming what differs (the process with fewer batches returned while the other waited in its next
  batch's collectives)."""
  from rstar_jax.data import formats, pipeline  # pylint: disable=g-import-not-at-top
  from rstar_jax.train import trainer  # pylint: disable=g-import-not-at-top

  class CharTokenizer:
    eos_id, pad_id = 1, 0

    def encode(self, text):
      return [3 + ord(c) % 200 for c in text]

  pairs = [formats.PpmPair(prompt="q" * i + "?", pos="a" * (i + 1), neg="b", pos_count=1, neg_count=1)
           for i in range(7 if pid == 0 else 4)]
  try:
    got = trainer.evaluate_ppm(PPM(ModelConfig.tiny(), rngs=nnx.Rngs(0)), pairs, CharTokenizer(),
                               data=pipeline.PipelineConfig(max_len=64, batch_size=2))
    result("evaluate_ppm_mismatch none", got)
  except ValueError as e:
    result("evaluate_ppm_mismatch", str(e))


def save_model_case():
  """save_model from a mesh over both processes, then load_model on every process at once: the same weights."""
  import time  # pylint: disable=g-import-not-at-top
  from rstar_jax import files  # pylint: disable=g-import-not-at-top
  from rstar_jax.models import checkpoint  # pylint: disable=g-import-not-at-top
  if pid == 0:  # a slow shared file system: process 0's config.json lands late
    write = files.atomic_write
    files.atomic_write = lambda *args, **kwargs: (time.sleep(3), write(*args, **kwargs))[1]
  want = jax.tree.leaves(nnx.state(Qwen2(ModelConfig.tiny(), rngs=nnx.Rngs(0))))
  model = sharding.shard_model(Qwen2(ModelConfig.tiny(), rngs=nnx.Rngs(0)), sharding.make_mesh(1, -1, 1))
  checkpoint.save_model(model, os.path.join(out, "saved"))
  got = jax.tree.leaves(nnx.state(checkpoint.load_model(os.path.join(out, "saved"))))
  result("save_model", len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want)))


def save_model_error_case():
  """save_model from a mesh over both processes where process 0 cannot write config.json: every process raises."""
  from rstar_jax import files  # pylint: disable=g-import-not-at-top
  from rstar_jax.models import checkpoint  # pylint: disable=g-import-not-at-top
  if pid == 0:
    def fail(path, *args, **kwargs):
      raise PermissionError(13, "Permission denied", os.path.basename(path))
    files.atomic_write = fail
  model = sharding.shard_model(Qwen2(ModelConfig.tiny(), rngs=nnx.Rngs(0)), sharding.make_mesh(1, -1, 1))
  try:
    checkpoint.save_model(model, os.path.join(out, "saved"))
    result("save_model_error none")
  except OSError as e:
    result("save_model_error", type(e).__name__, str(e).replace(out, "OUT"))


def export_error_case():
  """save_qwen2 of a model split over both processes into a folder under a file: every process raises."""
  from rstar_jax.models import convert  # pylint: disable=g-import-not-at-top
  model = sharding.shard_model(Qwen2(ModelConfig.tiny(), rngs=nnx.Rngs(0)), sharding.make_mesh(1, -1, 1))
  blocker = os.path.join(out, "a_file")
  if pid == 0:
    os.makedirs(out, exist_ok=True)
    with open(blocker, "w", encoding="utf-8") as f:
      f.write("not a folder")
  try:
    convert.save_qwen2(model, os.path.join(blocker, "export"))
    result("export_error none")
  except OSError as e:
    result("export_error", type(e).__name__, str(e).replace(out, "OUT"))


def data_mismatch_case():
  """train_policy where process 1 reads an SFT file with fewer records than process 0's (a stale copy on its own
  disk): every process must raise, naming what differs, before any step (a step count that differs left one process
  in the next step's collectives while the other exported)."""
  try:
    _train_on_own_file()
    result("data_mismatch none")
  except ValueError as e:
    result("data_mismatch", str(e).replace(out, "OUT"))


def export_write_error_case():
  """save_qwen2 of a model split over both processes where process 0's weight file write fails (a full disk): every
  process raises."""
  from rstar_jax.models import convert  # pylint: disable=g-import-not-at-top
  model = sharding.shard_model(Qwen2(ModelConfig.tiny(), rngs=nnx.Rngs(0)), sharding.make_mesh(1, -1, 1))
  if pid == 0:
    def full_disk(path, tensors):
      raise OSError(28, "No space left on device", path)
    convert.write_safetensors = full_disk
  try:
    convert.save_qwen2(model, os.path.join(out, "export"))
    result("export_write_error none")
  except OSError as e:
    result("export_write_error", type(e).__name__, str(e).replace(out, "OUT"))


def bad_data_one_process_case():
  """train_policy where process 1's SFT file is not valid JSON (a copy cut short on its own disk) and process 0's is
  fine: every process must raise (process 0 waited for process 1 in its next collective until the distributed
  shutdown's deadline, 5 minutes, then both aborted without process 0's error)."""
  try:
    _train_on_own_file()
    result("bad_data none")
  except Exception as e:  # pylint: disable=broad-except
    result("bad_data", type(e).__name__, str(e).replace(out, "OUT"))


def metrics_write_error_case():
  """train_policy where process 0 cannot append step 2's line to metrics.jsonl (a full disk), mid-run: every process
  must raise (process 1 went on into step 3's collectives, process 0 waited in the closing checkpoint barrier; both
  aborted at the distributed shutdown's deadline, 5 minutes later)."""
  from rstar_jax.train import metrics_log  # pylint: disable=g-import-not-at-top
  original = metrics_log.MetricsLog.write

  def write(self, step, scalars):
    if step == 2 and pid == 0:
      raise OSError(28, "No space left on device", self.path)
    original(self, step, scalars)
  metrics_log.MetricsLog.write = write
  try:
    _train("work")
  except OSError as e:
    result("metrics_write_error", type(e).__name__, str(e).replace(out, "OUT"))


CASES = {"engine": engine_case, "evaluate_ppm": evaluate_ppm_case, "save_model": save_model_case,
         "export_error": export_error_case,
         "data_mismatch": data_mismatch_case,
         "evaluate_ppm_mismatch": evaluate_ppm_mismatch_case,
         "train_stop": lambda: _train("work", stop_at=2), "train_finish": lambda: _train("work"),
         "train_reference": lambda: _train("reference"), "train_ppm": lambda: _train_ppm(f"ppm{nproc}"),
         "export_write_error": export_write_error_case, "trainer_write_error": trainer_write_error_case,
         "save_model_error": save_model_error_case,
         "config_mismatch": config_mismatch_case, "bad_data_one_process": bad_data_one_process_case,
         "metrics_write_error": metrics_write_error_case}
CASES[case]()
