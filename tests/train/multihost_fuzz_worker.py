"""One process of `multihost_test.py`'s seeded fuzz: `python multihost_fuzz_worker.py PROCESS_ID NUM_PROCESSES PORT
DEVICES SEED OUT PHASE COUNT ENGINE`.

The COUNT cases depend only on SEED and the total device count (NUM_PROCESSES x DEVICES), so a two-process launch and a
one-process launch on as many devices run the same ones. PHASE "a" trains each case in `OUT/a<i>` (a resumed case:
stops it in `OUT/r<i>` after a step), PHASE "b" trains it in `OUT/b<i>` (a resumed case: first finishes `OUT/r<i>`).
With ENGINE = 1 each also generates greedily and scores with the Engine on a mesh over every process. RESULT lines for
the parent.
"""

import os
import random

from multihost_boot import start

pid, nproc, (seed, out, phase, count, engine) = start()

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from rstar_jax import sharding  # pylint: disable=wrong-import-position
from rstar_jax.data import pipeline  # pylint: disable=wrong-import-position
from rstar_jax.models import convert  # pylint: disable=wrong-import-position
from rstar_jax.generate.engine import Engine, Request  # pylint: disable=wrong-import-position
from rstar_jax.train import config as config_lib, trainer  # pylint: disable=wrong-import-position


def result(*parts):
  print("RESULT", *parts, flush=True)


def meshes(total):
  """Every (data, fsdp, tensor) over `total` devices whose data x fsdp splits over 2 processes."""
  return [(d, f, total // (d * f)) for d in range(1, total + 1) for f in range(1, total + 1)
          if total % (d * f) == 0 and (d * f) % 2 == 0]


def cases(seed_value, total, count):
  """`count` random training cases (the same for every launch with this seed and device total)."""
  rng = random.Random(seed_value * 1000 + total)
  out_cases = []
  for _ in range(count):
    mesh = rng.choice(meshes(total))
    shards = mesh[0] * mesh[1]
    accum = rng.choice([1, 2])
    case = dict(kind=rng.choice(["sft", "ppm"]), mesh=mesh, accum=accum, batch=accum * shards * rng.choice([1, 2]),
                max_len=rng.choice([64, 96, 128]), buckets=rng.choice([(), (48,)]),
                max_steps=rng.choice([1, 2, 3]), log_every=rng.choice([1, 2]), dropout=rng.choice([0.0, 0.1]),
                head=rng.choice(["raw", "tanh"]), uneven=rng.random() < 0.25)
    if case["uneven"]:  # rows per micro-batch that do not divide over data x fsdp (nor, then, over the processes)
      case["batch"] += accum
    case["stop_at"] = rng.randint(1, case["max_steps"] - 1) if case["max_steps"] > 1 and rng.random() < 0.5 else None
    out_cases.append(case)
  return out_cases


def train(case, workdir, stop_at=None):
  """Trains `case` in OUT/`workdir`; the result line: steps and exported files, the error, or the stop."""
  base = os.path.join(out, "base")
  common = dict(data=pipeline.PipelineConfig(max_len=case["max_len"], batch_size=case["batch"], num_epochs=1, seed=5,
                                             buckets=case["buckets"] and case["buckets"] + (case["max_len"],)),
                optimizer=config_lib.OptimizerConfig(learning_rate=2e-3), mesh=case["mesh"],
                accum_steps=case["accum"], max_steps=case["max_steps"], checkpoint_every=1,
                log_every=case["log_every"], progress=False, tensorboard=False)

  def callback(step, _):
    if step == stop_at:
      raise KeyboardInterrupt(f"stopped at {step}")
  try:
    if case["kind"] == "sft":
      got = trainer.train_policy(base, os.path.join(base, "sft.json"), os.path.join(out, workdir),
                                 config=config_lib.sft_config(**common), step_callback=callback)
    else:
      got = trainer.train_ppm(base, os.path.join(base, "pairs.json"), os.path.join(out, workdir),
                              config=config_lib.ppm_config(ppm_head=case["head"], value_head_dropout=case["dropout"],
                                                           **common), step_callback=callback)
    return f"trained {got.steps} {','.join(sorted(os.listdir(got.export_dir)))}"
  except KeyboardInterrupt as e:
    return str(e)
  except ValueError as e:
    return f"refused {str(e).replace(out, 'OUT')}"


def engine_check(total):
  """Greedy tokens and PPM values on a mesh over every process (fsdp over all devices)."""
  mesh = sharding.make_mesh(1, -1, 1)
  base = os.path.join(out, "base")
  policy = convert.load_qwen2(base)
  prompts = [[5, 6, 7], [9, 9, 31, 2], [4, 8, 15, 16, 23]][:max(2, min(3, total))]
  got = Engine(policy, mesh=mesh, stop_check_interval=3).generate([Request(p) for p in prompts], max_new_tokens=5)
  result("engine generate", [r[0].token_ids for r in got])
  values = Engine(trainer._initial_ppm(base, policy.config, config_lib.ppm_config(), mesh),  # pylint: disable=protected-access
                  mesh=mesh).values(prompts)
  result("engine values", np.asarray(values).tolist())


total = jax.device_count()
for i, case in enumerate(cases(int(seed), total, int(count))):
  if phase == "a":
    line = train(case, f"r{i}" if case["stop_at"] else f"a{i}", stop_at=case["stop_at"])
  else:
    line = train(case, f"r{i}") if case["stop_at"] else "-"
    line += " | " + train(case, f"b{i}")
  result(f"case{i}", case, "=>", line)
if engine == "1":
  engine_check(total)
