"""Slow: hostile and benign programs interleaved at random on a 2-worker pool; every benign answer stays right."""

import random

import pytest

from sandbox import SandboxPool

HOSTILE = [
    "while True:\n    pass",
    "x = [0] * (10 ** 10)",
    "import os\nos.fork()",
    "import ctypes\nctypes.string_at(0)",
    "import os\nos._exit(1)",
    "import builtins\nbuiltins.print = None",
    "import sympy\nsympy.Rational = None",
    "open('/tmp/junk', 'w').write('x' * 1000)",
    "leaked = 1",
    "import sys\nsys.stdout.close()",
    "raise SystemExit(2)",
    "import random\nrandom.seed(7)",
]


def _benign(i):
  """(program, expected observation), the answer computed here independently of the sandbox."""
  kind = i % 4
  if kind == 0:
    return f"a = {i}\nprint(a * 3 + 1)", f"{i * 3 + 1}\n"
  if kind == 1:
    return (f"from sympy import Rational\nprint(Rational({i}, {i + 1}) + Rational(1, {i + 1}))", "1\n")
  if kind == 2:
    return f"import numpy as np\nprint(int(np.arange({i % 50 + 1}).sum()))", f"{sum(range(i % 50 + 1))}\n"
  return ("import os, random\nprint(os.path.exists('/tmp/junk'), 'leaked' in dir(), random.Random(0).random() == "
          "random.random())", "False False True\n")


@pytest.mark.slow
def test_interleaved_hostile_and_benign():
  rng = random.Random(1234)
  programs, expected = [], []
  for i in range(600):
    if rng.random() < 0.25:
      programs.append(rng.choice(HOSTILE))
      expected.append(None)
    else:
      code, want = _benign(i)
      programs.append(code)
      expected.append(want)
  with SandboxPool(num_workers=2, timeout_s=1.0, memory_mb=512) as pool:
    results = pool.run(programs)
  for code, want, r in zip(programs, expected, results):
    if want is not None:
      assert r.ok and r.observation == want, (code, r)
    else:
      assert r.observation is not None
