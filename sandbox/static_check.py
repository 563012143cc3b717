"""A conservative static check: may a program run in a reused executor? (stdlib only)

Executors that are reused across programs give fresh globals and a fresh copy of the builtins dict to every program,
reset the global generators of `random`, `numpy.random` and sympy, and are recycled after any error, any timeout and
every N programs. What they cannot undo is a program that changes state shared through modules (monkey-patching `sympy`,
`math`, builtins, `sys.modules`, tracing hooks, RNG seeds, print options, decimal/mpmath contexts, files, threads,
finalizers). This check says `True` only for programs that cannot plausibly do any of that; everything else runs in a
fresh single-use executor forked from the pristine warm worker. A `False` costs speed (~10 ms), never correctness, so
the rules err towards `False`:

- imports only of the pure math stack (`REUSABLE_MODULES`, submodules included), no relative imports;
- no names that reach dynamic evaluation, reflection, files or the interpreter (`FORBIDDEN_NAMES`), and no name or
  attribute starting with `__`; no attribute (nor `from m import name`, nor a `case C(name=...)` pattern) starting
  with `_`;
- no attribute assignment or deletion (`a.b = ...`, `del a.b`, `a.b += ...`); no item assignment or deletion through
  an attribute or an imported name (`a.b[k] = ...`, `a.b[i][j] = ...`, `from m import d; d[k] = ...`), no augmented
  assignment to an imported name (`d |= ...`), and no in-place method (`IN_PLACE_METHODS`) called on an attribute or
  an imported name (`sympy.sieve.extend(...)`, `p.window.fill(7)`, `d.update(...)`): these change objects that
  library modules share;
- no attribute names that change library-global state or re-export system modules (`FORBIDDEN_ATTRIBUTES`,
  `FORBIDDEN_ATTRIBUTE_PREFIXES`), whether reached as `m.name`, `from m import name`, a class pattern's keyword
  (`case object(seed=f)`) or a plain name (star imports);
- no generator with a `try/finally` or `with` (its cleanup could run during a later program);
- at most `max_chars` characters (long programs are not parsed twice).

Security never rests on this check: every executor runs under the same rlimits and seccomp filter. Nor is it sound
against a determined program: library functions with global side effects that are not listed here, a module object
reached through a call result and a local alias (`w = Polynomial([1]).window; w.fill(7)`), or an `out=` argument
still change what later programs in the same executor see; sympy's `Dummy` counter always advances. Only
`reuse_limit=1` (a fresh executor for every program) excludes that.
"""

from __future__ import annotations

import ast

REUSABLE_MODULES = frozenset({
    "math", "cmath", "fractions", "decimal", "numbers", "itertools", "functools", "operator", "collections",
    "statistics", "heapq", "bisect", "string", "re", "random", "datetime", "calendar", "copy", "typing",
    "dataclasses", "enum", "time", "numpy", "sympy", "scipy", "mpmath",
})

FORBIDDEN_NAMES = frozenset({
    "exec", "eval", "compile", "open", "input", "breakpoint", "help", "exit", "quit", "globals", "locals", "vars",
    "getattr", "setattr", "delattr", "memoryview", "copyright", "credits", "license",
})

FORBIDDEN_ATTRIBUTES = frozenset({
    # System modules that library modules re-export (`np.os`, `sympy.sys`...), and what they hold.
    "os", "sys", "builtins", "subprocess", "importlib", "gc", "ctypes", "ctypeslib", "shutil", "io", "threading",
    "multiprocessing", "signal", "resource", "socket", "inspect", "types", "warnings", "atexit", "pickle",
    "marshal", "environ", "modules", "system", "popen", "tzset",
    # Library-global settings and RNG state.
    "seed", "setstate", "set_state", "seterr", "seterrcall", "setbufsize", "set_printoptions", "init_printing",
    "init_session", "setcontext", "getcontext", "DefaultContext", "BasicContext", "ExtendedContext", "mp", "fp",
    "setrecursionlimit", "settrace", "setprofile", "setswitchinterval", "setfirstweekday", "global_parameters",
    "typecodes", "sctypeDict", "sctypes", "clear_cache", "attrgetter", "methodcaller", "as_strided",
    "stride_tricks", "memmap", "tofile", "fromfile",
    # Library-global containers a program can change through a method or an item write on a local alias
    # (`d = sc.physical_constants; d[k] = v`), which the assignment rules cannot see.
    "global_assumptions", "physical_constants",
    # Library-global state a function or method changes: sympy's printing precedences, polys configuration, pretty
    # printer unicode switch, prime sieve and multiple-dispatch registry; numpy polynomial class defaults.
    "PRECEDENCE", "PRECEDENCE_VALUES", "PRECEDENCE_FUNCTIONS", "PRECEDENCE_TRADITIONAL", "polyconfig",
    "pretty_use_unicode", "pretty_try_use_unicode", "sieve", "multipledispatch", "dispatch", "window", "domain",
})

# Methods that change their receiver in place (list, dict, set, deque, ndarray, sympy's mutable matrices and sieve).
IN_PLACE_METHODS = frozenset({
    "append", "extend", "insert", "remove", "pop", "popitem", "clear", "update", "setdefault", "add", "discard",
    "difference_update", "intersection_update", "symmetric_difference_update", "sort", "reverse", "appendleft",
    "extendleft", "popleft", "rotate", "fill", "put", "itemset", "resize", "partition", "byteswap", "setflags",
    "row_del", "col_del", "row_swap", "col_swap", "row_op", "col_op", "zip_row_op", "copyin_list", "copyin_matrix",
})

FORBIDDEN_ATTRIBUTE_PREFIXES = ("_", "save", "load", "dump", "register", "install", "set_", "write", "to_file")


def _bad_module(name: str) -> bool:
  # A submodule is an attribute of its package: `from sympy.polys.polyconfig import setup` as `...polyconfig.setup`.
  parts = name.split(".")
  return parts[0] not in REUSABLE_MODULES or any(
      part in FORBIDDEN_ATTRIBUTES or part.startswith("_") for part in parts[1:])


def _bad_import(node: ast.AST) -> bool:
  if isinstance(node, ast.Import):
    return any(_bad_module(alias.name) for alias in node.names)
  if isinstance(node, ast.ImportFrom):
    return bool(node.level) or not node.module or _bad_module(node.module)
  return False


def _bad_name(name: str) -> bool:
  # Star imports bring library functions in as plain names (`from sympy import *; init_printing()`).
  return name in FORBIDDEN_NAMES or name in FORBIDDEN_ATTRIBUTES or name.startswith("__")


def _bad_attribute_name(attr: str) -> bool:
  return attr in FORBIDDEN_ATTRIBUTES or attr.startswith(FORBIDDEN_ATTRIBUTE_PREFIXES)


def _bad_attribute(node: ast.Attribute) -> bool:
  return not isinstance(node.ctx, ast.Load) or _bad_attribute_name(node.attr)


def _chain_root(node: ast.AST) -> tuple[ast.AST, bool]:
  """The innermost node of `a.b[k].c...` and whether the chain holds an attribute."""
  through_attribute = False
  while isinstance(node, (ast.Attribute, ast.Subscript)):
    through_attribute = through_attribute or isinstance(node, ast.Attribute)
    node = node.value
  return node, through_attribute


def _mutation_target(node: ast.AST) -> ast.AST | None:
  """What an item write, augmented assignment or in-place method call changes (None for other nodes)."""
  if isinstance(node, ast.Subscript) and not isinstance(node.ctx, ast.Load):
    return node.value
  if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
    return node.target
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in IN_PLACE_METHODS:
    return node.func.value
  return None


def _is_shared(target: ast.AST, imported: set[str]) -> bool:
  """Whether `target` may be an object a library module shares: reached through an attribute or an imported name."""
  root, through_attribute = _chain_root(target)
  return through_attribute or (isinstance(root, ast.Name) and root.id in imported)


# `try` statements: `except*` (Python 3.11+) parses as `ast.TryStar`, whose `finally` runs at a generator's close as
# a plain `try`'s does (a generator left suspended in a cycle printed into a later program when collected there).
_TRY_NODES = tuple(getattr(ast, name) for name in ("Try", "TryStar") if hasattr(ast, name))


def _has_finalizing_generator(tree: ast.AST) -> bool:
  has_yield = has_cleanup = False
  for node in ast.walk(tree):
    if isinstance(node, (ast.Yield, ast.YieldFrom, ast.Await)):
      has_yield = True
    elif isinstance(node, (ast.With, ast.AsyncWith)) or (isinstance(node, _TRY_NODES) and node.finalbody):
      has_cleanup = True
  return has_yield and has_cleanup


def is_reusable(code: str, max_chars: int = 65536) -> bool:
  """True when `code` may run in a reused executor (see the module docstring).

  A program that does not parse is reusable: nothing of it runs.
  """
  if len(code) > max_chars:
    return False
  try:
    tree = ast.parse(code)
  except BaseException:  # SyntaxError, ValueError (null bytes), MemoryError/RecursionError (deep nesting)
    return True
  imported: set[str] = set()
  mutated: list[ast.AST] = []
  for node in ast.walk(tree):
    target = _mutation_target(node)
    if target is not None:
      mutated.append(target)
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      if _bad_import(node):
        return False
      for alias in node.names:
        imported.add(alias.asname or alias.name.split(".")[0])
        if alias.name.startswith("__") or (alias.asname or "").startswith("__"):
          return False
        # `from numpy import typecodes` is an attribute access in disguise.
        if isinstance(node, ast.ImportFrom) and alias.name != "*" and (
            alias.name in FORBIDDEN_ATTRIBUTES or alias.name.startswith(FORBIDDEN_ATTRIBUTE_PREFIXES)):
          return False
    elif isinstance(node, ast.Name):
      if _bad_name(node.id):
        return False
    elif isinstance(node, ast.Attribute):
      if _bad_attribute(node):
        return False
    elif isinstance(node, ast.MatchClass):
      # `case object(__globals__=g)` reads an attribute as `getattr` does, with no `ast.Attribute` in sight.
      if any(_bad_attribute_name(attr) for attr in node.kwd_attrs):
        return False
    elif isinstance(node, ast.Starred):
      if not isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Attribute):
        return False
    elif isinstance(node, (ast.Global, ast.Nonlocal)):
      if any(name.startswith("__") for name in node.names):
        return False
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      if node.name.startswith("__"):
        return False
    elif isinstance(node, ast.arg):
      if node.arg.startswith("__"):
        return False
    elif isinstance(node, ast.keyword):
      if node.arg is not None and node.arg.startswith("__"):
        return False
  if any(_is_shared(target, imported) for target in mutated):
    return False
  return not _has_finalizing_generator(tree)
