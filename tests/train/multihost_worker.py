"""One process of `multihost_test.py`: `python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES BASE OUT`.

Prints `RESULT ...` lines for the parent to read. With NUM_PROCESSES = 1 it is the single-process reference run.
"""

import os

from multihost_boot import start

pid, nproc, (base, out) = start()

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from rstar_jax import sharding  # pylint: disable=wrong-import-position
from rstar_jax.data import pipeline  # pylint: disable=wrong-import-position
from rstar_jax.train import config as config_lib  # pylint: disable=wrong-import-position
from rstar_jax.train import steps, trainer  # pylint: disable=wrong-import-position

# 1. A global batch from each process's own rows, over a mesh whose fsdp axis spans the processes.
mesh = sharding.make_mesh(1, -1, 1)
rows = np.arange(8, dtype=np.int32)[:, None] * np.ones((1, 3), np.int32)
per = 8 // nproc
batch = steps.put_batch({"tokens": rows[pid * per:(pid + 1) * per]}, mesh)["tokens"]
total = jax.jit(lambda x: x[:, 0].sum(), out_shardings=jax.NamedSharding(mesh, jax.P()))(batch)
print(f"RESULT batch {tuple(batch.shape)} {int(total)}", flush=True)


def config(mesh_shape):
  return config_lib.sft_config(
      data=pipeline.PipelineConfig(max_len=96, batch_size=8, num_epochs=1, seed=3),
      optimizer=config_lib.OptimizerConfig(learning_rate=2e-3), mesh=mesh_shape, accum_steps=2, max_steps=3,
      checkpoint_every=100, progress=False, tensorboard=False)


# 2. A mesh that does not split the rows over the processes is refused up front.
if nproc > 1:
  try:
    trainer.train_policy(base, os.path.join(base, "sft.json"), os.path.join(out, "tensor_only"),
                         config=config((1, 1, -1)))
    print("RESULT tensor_only accepted", flush=True)
  except ValueError as e:
    print(f"RESULT tensor_only refused: {e}", flush=True)

# 3. SFT with parameters split over the processes, exported (gathered) by process 0.
result = trainer.train_policy(base, os.path.join(base, "sft.json"), os.path.join(out, "work"),
                              config=config((1, -1, 1)))
files = sorted(os.listdir(result.export_dir))  # every process returns after the export is complete
print(f"RESULT exported steps={result.steps} files={','.join(files)}", flush=True)
