"""The reuse check: typical math steps may share an executor; anything that can leave shared state may not."""

import pytest

from sandbox.static_check import is_reusable

REUSABLE = [
    "print(1 + 1)",
    "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - 4, x))",
    "import numpy as np\na = np.arange(10)\nprint(a.mean())",
    "import math\nfrom fractions import Fraction\nprint(Fraction(1, 3) + math.floor(2.5))",
    "from itertools import permutations\nprint(len(list(permutations(range(4)))))",
    "def f(n):\n    return 1 if n < 2 else n * f(n - 1)\nprint(f(5))",
    "total = 0\nfor i in range(10):\n    total += i\nprint(total)",
    "from scipy.optimize import brentq\nprint(brentq(lambda t: t**2 - 2, 0, 2))",
    "import random\nprint(random.randint(1, 6))",
    "d = {}\nd.setdefault('a', []).append(1)\nprint(d)",
    "x = = 1",  # does not parse: nothing runs, nothing to leak
    "from fractions import Fraction\nmatch Fraction(1, 2):\n    case Fraction(numerator=n, denominator=d):\n"
    "        print(n, d)",
    # In-place changes of the program's own objects stay reusable.
    "import numpy as np\na = np.zeros(3)\na[0] = 1\na.fill(2)\nrows = [[0] * 3]\nrows[0][1] = 5\nprint(a, rows)",
    "from collections import deque\nq = deque([1])\nq.append(2)\ns = set()\ns.add(1)\nprint(q, s)",
    "import numpy as np\nv = np.array([3, 1, 2])\nv.sort()\nnp.array([2, 1]).sort()\nprint(v)",
]

NOT_REUSABLE = [
    "import os\nprint(os.getcwd())",
    "import sys\nsys.modules['math'] = None",
    "import builtins\nbuiltins.print = None",
    "import math\nmath.pi = 3",
    "import sympy\nsympy.solve = None",
    "import numpy as np\nnp.random.seed(0)",
    "import random\nrandom.seed(1)",
    "import numpy as np\nnp.set_printoptions(precision=2)",
    "from sympy import *\ninit_printing()",
    "from decimal import getcontext\ngetcontext().prec = 5",
    "from mpmath import mp\nmp.dps = 50",
    "from numpy import typecodes",
    "from sympy.assumptions import global_assumptions\nglobal_assumptions.clear()",
    "import scipy.constants as sc\nd = sc.physical_constants\nd['x'] = 1",
    "import numpy as np\nnp.os.environ['X'] = '1'",
    "x = [].__class__",
    "f = open('/tmp/x', 'w')",
    "exec('1')",
    "eval('1')",
    "getattr(print, '__self__')",
    "globals()['x'] = 1",
    "class A:\n    pass\nA.x = 1",
    "import numpy as np\nnp.x[0] = 1",
    "def g():\n    try:\n        yield 1\n    finally:\n        print('late')\nnext(g())",
    # `except*` (Python 3.11+): an `ast.TryStar`, whose `finally` runs at the generator's close all the same.
    "def g():\n    try:\n        yield 1\n    except* ValueError:\n        pass\n    finally:\n        print('late')\n"
    "l = [g()]\nl.append(l)\nnext(l[0])",
    # A class pattern's keywords read attributes (`getattr`): module globals to write, a global setting's setter.
    "import statistics\nmatch statistics.mean:\n    case object(__globals__=g):\n        g['leak'] = 1",
    "import random\nmatch random:\n    case object(seed=s):\n        s(1)",
    "import numpy as np\nmatch np:\n    case object(_core=c):\n        pass",
    "from . import x",
    "import threading",
    # Library objects changed in place (by an item write, an in-place method or a stateful library function).
    "from sympy.printing.precedence import PRECEDENCE\nPRECEDENCE['Mul'] = 1",
    "from sympy.printing import precedence\np = precedence.PRECEDENCE\np.update(Mul=1)",
    "import numpy as np\nnp.polynomial.Polynomial.window[:][0] = 7",
    "import numpy as np\np = np.polynomial.Polynomial([1])\np.window.fill(7)",
    "from sympy import sieve\nsieve.extend(10 ** 5)",
    "import sympy\nsympy.sieve.extend(10 ** 5)",
    "from sympy.polys.polyconfig import setup\nsetup('USE_IRREDUCIBLE_IN_FACTOR', True)",
    "from sympy.printing.pretty.pretty_symbology import pretty_use_unicode\npretty_use_unicode(False)",
    "from sympy.multipledispatch import dispatch",
    "from collections import defaultdict as d\nd.x = 1",
    "from string import ascii_letters as s\ns += 'x'",
    "print(1)\n" + "#" * 70000,
]


@pytest.mark.parametrize("code", REUSABLE)
def test_reusable(code):
  assert is_reusable(code)


@pytest.mark.parametrize("code", NOT_REUSABLE)
def test_not_reusable(code):
  assert not is_reusable(code)
