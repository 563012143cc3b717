"""One process of a `multihost_test.py` case: `python multihost_cases_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES
CASE OUT`.

Each case computes its reference on this process's own first device (a plain forward, no mesh) and prints
`RESULT ...` lines comparing with the multi-process call, for the parent to read.
"""

import os
import sys

pid, nproc, port, ndev = (int(v) for v in sys.argv[1:5])
case, out = sys.argv[5], sys.argv[6]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ndev}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # pylint: disable=wrong-import-position

if nproc > 1:
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)

import math  # pylint: disable=wrong-import-position

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


CASES = {"engine": engine_case}
CASES[case]()
