"""README.md's code as a user runs it (the checkpoint, search and training snippets), and the public API's docstrings
against its signatures and code."""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from rstar_jax.search import read_trees

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _python_block(containing: str) -> str:
  blocks = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if containing in b]
  assert len(blocks) == 1, f"{len(blocks)} README python blocks contain {containing!r}"
  return blocks[0]


def _shrunk(code: str, changes: dict[str, str]) -> str:
  """`code` with its budgets cut to a CPU test's size (each literal must be there once: a README edit shows up)."""
  for old, new in changes.items():
    assert code.count(old) == 1, f"README snippet: {old!r} found {code.count(old)} times"
    code = code.replace(old, new)
  return code


def _tiny_checkpoints(tmp_path: pathlib.Path) -> tuple[str, str]:
  """A random tiny policy and PPM with a byte-level BPE tokenizer carrying the rStar tags -> (policy dir, PPM dir)."""
  from flax import nnx

  from rstar_jax.demo import build_tokenizer
  from rstar_jax.models import PPM, ModelConfig, Qwen2, convert
  tok_dir = tmp_path / "tokenizer"
  corpus = [(REPO / "rstar_jax" / "assets" / "gsm8k_demo.json").read_text(encoding="utf-8")]
  tok = build_tokenizer(str(tok_dir), corpus, vocab_size=400)
  config = ModelConfig.tiny(vocab_size=-(-len(tok) // 64) * 64, max_position_embeddings=512)
  policy_dir, ppm_dir = tmp_path / "policy", tmp_path / "ppm"
  convert.save_qwen2(Qwen2(config, rngs=nnx.Rngs(0)), policy_dir)
  convert.save_ppm(PPM(config, rngs=nnx.Rngs(1)), ppm_dir)
  for d in (policy_dir, ppm_dir):
    tok.save(d)
  return str(policy_dir), str(ppm_dir)


def test_the_search_snippet_runs_with_only_its_model_and_problem_placeholders_bound(tmp_path, monkeypatch,
                                                                                     shared_data):
  # The snippet called `prompt_fn=template.format` with `template` defined nowhere; rStar's own template string has an
  # `{input}` field, so its `str.format(question)` raised KeyError: 'input' (and `.format(input=question)` misses
  # the "\n" the official wrap puts after the question).
  from rstar_jax.models import convert
  from rstar_jax.search import Problem
  from rstar_jax.tokenizer import load_tokenizer
  snippet = _python_block("run_search(")
  code = _shrunk(snippet, {
      '"../shared/data/prompts"': repr(str(shared_data / "prompts")), "num_workers=8": "num_workers=1",
      "max_new_tokens=2048": "max_new_tokens=8", "num_rollouts=16": "num_rollouts=1",
      "num_candidates=8": "num_candidates=2", 'output_dir="trees/"': 'output_dir="trees/", progress=False'})
  policy_dir, ppm_dir = _tiny_checkpoints(tmp_path)
  question = "What is 6 * 7?"
  # The placeholders the README leaves to the reader (the text after the snippet says how to load the models).
  namespace = {"policy_dir": policy_dir, "tok": load_tokenizer(policy_dir),
               "policy_model": convert.load_qwen2(policy_dir, scan_layers=False),
               "ppm_model": convert.load_ppm(ppm_dir, scan_layers=False),
               "problems": [Problem("p0", question, "42")]}
  monkeypatch.chdir(tmp_path)
  exec(compile(code, "README.md (search snippet)", "exec"), namespace)  # pylint: disable=exec-used
  trees = namespace["trees"]
  # The official SFT-round prompt (DESIGN §1.1; sft_prompt.json filled by rstar_prompt_wrap: question + "\n").
  official = "<|user|>:\nWhat is 6 * 7?\n\n<|assistant|>: Let's think step by step and solve the problem with code."
  assert [t["prompt"] for t in trees] == [official]
  assert read_trees(str(tmp_path / "trees" / "trees-00000.jsonl")) == trees


def test_the_checkpoint_snippet_loads_a_policy_sharded_over_its_mesh(tmp_path, monkeypatch):
  # The "Checkpoints" snippet as written: a (1, -1, 2) mesh over the 8 test devices, and a policy dir loaded onto it.
  import jax
  from flax import nnx

  from rstar_jax.models import ModelConfig, Qwen2, convert
  code = _python_block("make_mesh(")
  saved = Qwen2(ModelConfig.tiny(), rngs=nnx.Rngs(0))
  convert.save_qwen2(saved, tmp_path / "Qwen2.5-Math-7B")
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(code, "README.md (checkpoint snippet)", "exec"), namespace)  # pylint: disable=exec-used
  assert dict(namespace["mesh"].shape) == {"data": 1, "fsdp": jax.device_count() // 2, "tensor": 2}
  expected = jax.tree.leaves(nnx.state(saved))
  loaded = jax.tree.leaves(nnx.state(namespace["policy"]))
  assert len(loaded) == len(expected)
  for want, got in zip(expected, loaded):
    assert np.array_equal(np.asarray(got), np.asarray(want))  # the tiny model's weights, bit for bit
  # "params placed by the logical rules": every device holds a part, and some weights are split over `tensor`.
  assert all(len(leaf.sharding.device_set) == jax.device_count() for leaf in loaded)
  assert any("tensor" in str(leaf.sharding.spec) for leaf in loaded)


@pytest.mark.slow
def test_the_training_snippet_runs_on_a_search_output_dir_and_resumes(tmp_path, monkeypatch):
  # The "Training entry points" snippet as written, on the trees of a real search (the demo's scripted teacher, so
  # some answers are right and some wrong), with the configs cut to a CPU test's size.
  from rstar_jax import grading
  from rstar_jax.data import PipelineConfig, formats
  from rstar_jax.demo import TeacherPolicy
  from rstar_jax.models import convert
  from rstar_jax.search import Problem, SearchConfig, run_search
  from sandbox import SandboxPool
  policy_dir, _ = _tiny_checkpoints(tmp_path)
  problems = [Problem("p0", "What is 6 * 7?", "42"), Problem("p1", "What is 10 - 3?", "7")]
  monkeypatch.chdir(tmp_path)
  with SandboxPool(num_workers=1, timeout_s=5) as pool:
    run_search(problems, TeacherPolicy({p.question: p.ground_truth for p in problems}), pool,
               SearchConfig(mode="terminal_guided", num_rollouts=4, num_candidates=3, max_depth=4, seed=0),
               prompt_fn=lambda q: q, output_dir="trees/", grader=grading.default_grader(), progress=False)
  small = "data=PipelineConfig(max_len=128, batch_size=2, num_epochs=1), max_steps=1, mesh=(1, 1, 1), progress=False"
  code = _shrunk(_python_block("train_policy("), {"sft_config()": f"sft_config({small})",
                                                   "ppm_config()": f"ppm_config({small})"})
  logs = []
  for run in range(2):  # the second run resumes both trainers from their last checkpoints: no step is trained again
    namespace = {"base_hf_dir": policy_dir, "PipelineConfig": PipelineConfig}
    exec(compile(code, "README.md (training snippet)", "exec"), namespace)  # pylint: disable=exec-used
    sft, ppm = namespace["sft"], namespace["ppm"]
    assert (sft.steps, ppm.steps) == (1, 1), run
    logs.append([(tmp_path / "work" / name / "metrics.jsonl").read_text() for name in ("sft", "ppm")])
  assert logs[1] == logs[0] and all(log.count("\n") == 1 for log in logs[0])
  assert formats.read_sft_records("sft.jsonl") and formats.read_ppm_pairs("pairs.jsonl")
  assert {"config.json", "model.safetensors", "value_head.bin", "tokenizer.json"} <= set(os.listdir(ppm.export_dir))
  convert.load_ppm(ppm.export_dir)  # "HF dir + value_head.bin", loadable as the search's PPM
  convert.load_qwen2(sft.export_dir)


# The public API's docstrings against the code: the signatures, fields and raise statements are the reference.

_ITEM = re.compile(r"(\*{0,2}[\w.]+(?:, \*{0,2}\w+)*)(?: \([^)]*\))?:(?:\s|$)")  # `name:`, `a, b:`, `mod.Error:`


def _public_api():
  """(qualified name, function or class) of every public module's public functions, classes and methods."""
  import importlib
  import inspect
  import pkgutil

  import rstar_jax
  import sandbox
  found = {}
  for package in (rstar_jax, sandbox):
    names = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    for module in map(importlib.import_module, (n for n in names if not n.endswith("__main__"))):
      for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
          continue
        qual = f"{module.__name__}.{name}"
        if inspect.isfunction(obj):
          found.setdefault(id(obj), (qual, obj))
        elif inspect.isclass(obj):
          found.setdefault(id(obj), (qual, obj))
          for attr, member in vars(obj).items():
            func = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
            if inspect.isfunction(func) and (attr == "__init__" or not attr.startswith("_")):
              found.setdefault(id(func), (f"{qual}.{attr}", getattr(obj, attr)))
  return sorted(found.values(), key=lambda item: item[0])


def _section(doc: str, header: str) -> dict[str, str] | None:
  """A Google-style section of `doc` (`Args:`, `Raises:`, ...) as {name: description}; None when it has none."""
  lines = doc.expandtabs().splitlines()
  starts = [i for i, line in enumerate(lines) if line.strip() == header]
  if not starts:
    return None
  indent = len(lines[starts[0]]) - len(lines[starts[0]].lstrip())
  items, item_indent, current = {}, None, []
  for line in lines[starts[0] + 1:]:
    if not line.strip():
      continue
    depth = len(line) - len(line.lstrip())
    if depth <= indent:
      break
    item_indent = depth if item_indent is None else item_indent
    match = _ITEM.match(line.strip()) if depth == item_indent else None
    if depth == item_indent:
      assert match, f"{header} item without `name:`: {line.strip()!r}"
      current = [n.lstrip("*") for n in match.group(1).split(", ")]
      items.update({n: line.strip()[match.end():] for n in current})
    else:
      items.update({n: items[n] + " " + line.strip() for n in current})
  return items


def _docstring(obj) -> str:
  import inspect
  return inspect.cleandoc(obj.__doc__ or "")


def test_every_documented_argument_list_is_the_signature():
  # An `Args:` section names every parameter once, in the signature's order, and no other; a dataclass's
  # `Attributes:` names its fields so. `search.host.to_record` documented 4 of its 12 arguments, out of order.
  import dataclasses
  import inspect
  wrong = []
  for qual, obj in _public_api():
    args = _section(_docstring(obj), "Args:")
    if args is not None:
      params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
      if list(args) != params:
        wrong.append(f"{qual}: Args {list(args)} != signature {params}")
    attributes = _section(_docstring(obj), "Attributes:") if dataclasses.is_dataclass(obj) else None
    if attributes is not None and list(attributes) != [f.name for f in dataclasses.fields(obj)]:
      wrong.append(f"{qual}: Attributes {list(attributes)} != fields {[f.name for f in dataclasses.fields(obj)]}")
  assert not wrong, "\n".join(wrong)


def test_documented_literal_defaults_are_the_signature_defaults():
  # "False (default) ...", "None (default) ..." in an argument's description: the value the signature gives it.
  import ast
  import dataclasses
  import inspect
  checked, wrong = 0, []
  for qual, obj in _public_api():
    doc = _docstring(obj)
    described = {**(_section(doc, "Args:") or {}),
                 **((_section(doc, "Attributes:") or {}) if dataclasses.is_dataclass(obj) else {})}
    if not described:
      continue
    params = inspect.signature(obj).parameters
    for name, text in described.items():
      for literal in re.findall(r"`?([-\w.'\"]+)`? \(default\)", text):
        checked += 1
        if name not in params or params[name].default != ast.literal_eval(literal):
          wrong.append(f"{qual}({name}): documented default {literal}, signature {params.get(name)}")
  assert not wrong, "\n".join(wrong)
  assert checked >= 3  # the parse still finds the phrases it is about


def _undocumented_raises(func, documented: set[str]) -> set[str]:
  """Exception names `func`'s own code raises (outside a `try` that catches them) that `documented` lacks."""
  import ast
  import builtins
  import inspect
  import textwrap
  tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
  found = set()

  def visit(node, caught: frozenset):
    if isinstance(node, ast.Raise) and node.exc is not None:
      exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
      name = exc.id if isinstance(exc, ast.Name) else exc.attr if isinstance(exc, ast.Attribute) else None
      if name and not caught & {name, "*"} and name != "AssertionError":  # AssertionError: marks unreachable code
        found.add(name)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and node is not tree.body[0]:
      return  # a nested function raises when it is called, not here
    if isinstance(node, ast.Try):
      names = set()
      for handler in node.handlers:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {"BaseException" if t is None else getattr(t, "id", getattr(t, "attr", "")) for t in types}
      inner = caught | {"*"} if names & {"Exception", "BaseException"} else caught | names
      for child in node.body:
        visit(child, frozenset(inner))
      for child in node.handlers + node.orelse + node.finalbody:
        visit(child, caught)
      return
    for child in ast.iter_child_nodes(node):
      visit(child, caught)

  visit(tree.body[0], frozenset())
  names = {**vars(builtins), **func.__globals__}
  bases = [names[n] for n in documented if isinstance(names.get(n), type)]
  # A subclass of a documented exception is documented by it (e.g. `TreeRecordError` under `ValueError`).
  return {n for n in found if n not in documented and not (isinstance(names.get(n), type) and
                                                           issubclass(names[n], tuple(bases)))}


def _implementation(func):
  """`func`, or the function of its module whose docstring it copies (`SandboxPool.__init__` is `_Pool.__init__`'s)."""
  import ast
  import inspect
  import sys
  import textwrap
  if ast.get_docstring(ast.parse(textwrap.dedent(inspect.getsource(func))).body[0]) is not None:
    return func  # its own docstring
  module = sys.modules[func.__module__]
  for cls in (c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__):
    for member in vars(cls).values():
      if inspect.isfunction(member) and member is not func and member.__doc__ is func.__doc__:
        return member
  raise AssertionError(f"{func.__qualname__}: its docstring is in no function of {module.__name__}")


def test_raises_sections_list_what_the_code_raises():
  # A `Raises:` section lists `Name: when` items, and each exception the function's own code raises (not one a
  # `try` of its own turns into another). `SandboxPool` and `EnginePolicy` raised TypeError for a wrong-typed
  # argument (preload, warmup, seccomp; a PPM engine) and documented only ValueError and RuntimeError.
  import inspect
  wrong = []
  for qual, obj in _public_api():
    if inspect.isclass(obj):
      continue  # its constructor is checked as `__init__`
    raises = _section(_docstring(obj), "Raises:")
    if raises is None:
      continue
    code = _implementation(inspect.unwrap(obj))
    source = inspect.getsource(code)
    raises = {name.rpartition(".")[2] for name in raises}  # `files.FolderInUseError` -> its class name
    wrong += [f"{qual}: documents {name}, which it never names" for name in raises if name not in source]
    missing = _undocumented_raises(code, raises)
    wrong += [f"{qual}: raises {name} (not in Raises: {sorted(raises)})" for name in sorted(missing)]
  assert not wrong, "\n".join(wrong)


def test_keyword_arguments_named_in_the_docs_exist():
  # README and the code's docstrings and comments name calls as `Class(kw=...)`, `Class.method(kw=...)` or
  # `function(kw=...)`; each keyword is a parameter of that constructor, method or function. generate/adapters.py
  # sent readers to an `Engine(max_context=)`, which is `Engine.generate`'s.
  import inspect
  classes, functions, methods = {}, {}, set()
  for qual, obj in _public_api():
    if inspect.isclass(obj):
      classes.setdefault(obj.__name__, []).append(obj)
    elif "." in qual.removeprefix(obj.__module__ + "."):
      methods.add(obj.__name__)
    else:
      functions.setdefault(obj.__name__, []).append(obj)
  # A function name cited with keywords (`make_mesh(data=1, ...)`), when no method or other function shares it.
  functions = {name: found[0] for name, found in functions.items() if len(found) == 1 and name not in methods}
  texts = {"README.md": README}
  for folder in ("rstar_jax", "sandbox"):
    texts.update({str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in (REPO / folder).rglob("*.py")})
  checked, wrong = 0, []
  for where, text in texts.items():
    spans = re.findall(r"`([^`\n]+)`", text) + re.findall(r"```python\n(.*?)```", text, re.S)
    spans += re.findall(r'"""(.*?)"""', text, re.S)  # docstrings' usage examples, as written
    for span in spans:
      for call in re.finditer(r"\b([A-Z]\w*)(?:\.(\w+))?\(([^()]*)\)", span):
        name, method, inner = call.groups()
        keywords = re.findall(r"(?:^|,)\s*(\w+)=", inner)
        for cls in classes.get(name, []) if keywords else []:
          target = getattr(cls, method or "__init__", None)
          if target is None:
            wrong.append(f"{where}: {call.group(0)}: {name} has no {method}")
            continue
          params = inspect.signature(target).parameters
          if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            continue
          checked += 1
          wrong += [f"{where}: {call.group(0)}: no parameter {k!r}" for k in keywords if k not in params]
      for call in re.finditer(r"(?<![\w.])(?:\w+\.)?([a-z_]\w*)\(([^()]*)\)", span):
        name, inner = call.groups()
        keywords = re.findall(r"(?:^|,)\s*(\w+)=", inner)
        params = inspect.signature(functions[name]).parameters if keywords and name in functions else {}
        if params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
          checked += 1
          wrong += [f"{where}: {call.group(0)}: no parameter {k!r}" for k in keywords if k not in params]
  assert not wrong, "\n".join(wrong)
  assert checked >= 10  # the scan still finds the calls it is about


def test_dotted_names_and_paths_in_the_docs_exist():
  # Every `rstar_jax.x.y` / `sandbox.x.y` that README and the code's docstrings and comments name resolves (a module,
  # then attributes), and every repository path README names exists: a rename leaves no stale pointer behind.
  import importlib
  texts = {"README.md": README, "configs/README.md": (REPO / "configs" / "README.md").read_text(encoding="utf-8")}
  for folder in ("rstar_jax", "sandbox"):
    texts.update({str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in (REPO / folder).rglob("*.py")})

  def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
      try:
        obj = importlib.import_module(".".join(parts[:i]))
      except ImportError:
        continue
      for attr in parts[i:]:
        if not hasattr(obj, attr):
          return False
        obj = getattr(obj, attr)
      return True
    return False

  names = {(where, m) for where, text in texts.items()
           for m in re.findall(r"\b((?:rstar_jax|sandbox)(?:\.\w+)+)(?![\w/])", text)  # not `rstar_jax.tree/1`
           if not m.endswith((".py", ".json", ".md"))}
  wrong = [f"{where}: {name}" for where, name in sorted(names) if not resolves(name)]
  paths = re.findall(r"`((?:rstar_jax|sandbox|benchmarks|configs|tests|\.ci)/[\w./-]*)`", README)
  wrong += [f"README.md: path {path}" for path in paths if not (REPO / path).exists()]
  assert not wrong, "\n".join(wrong)
  assert len(names) >= 50 and len(paths) >= 10


def test_command_lines_in_the_docs_use_flags_their_commands_have(capsys):
  # Each `python -m rstar_jax.X [sub] --flag ...` usage line of README and the modules' docstrings (a docstring line
  # may continue on the next, indented deeper) names only options the command's parser knows (its --help).
  import importlib
  texts = [README] + [p.read_text(encoding="utf-8") for p in (REPO / "rstar_jax").rglob("*.py")]
  usages = []
  for text in texts:
    for line in re.findall(r"python -m (rstar_jax[\w.]*)([^\n`]*(?:\n {5,}[^\n`]*)*)", text):
      usages.append((line[0], line[1].split("#")[0]))
  checked = 0
  for module, args in usages:
    words = args.split()
    sub = [words[0]] if words and not words[0].startswith(("-", "[")) and module.endswith("convert") else []
    main = importlib.import_module(module if module.endswith(("demo", "convert")) else module + ".__main__").main
    with pytest.raises(SystemExit):
      main(sub + ["--help"])
    helptext = capsys.readouterr().out
    for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", args):
      checked += 1
      assert re.search(rf"(?<![\w-]){flag}(?![\w-])", helptext), f"python -m {module} {' '.join(sub)}: no {flag}"
  assert checked >= 15


# Names of other code (vLLM, transformers, jax, the official rStar release) that class docstrings cite.
_EXTERNAL_NAMES = {"detokenize_incrementally", "dot_general", "llm_generate", "summary_dropout_prob"}


def test_names_a_class_docstring_cites_are_members_or_module_names():
  # A class's and its methods' docstrings cite `snake_case` names; each is a parameter, a member (method, property,
  # field, `self.` attribute) or a name of the class's module, or cited from other code. `train.Checkpointer` offered
  # a `restore_latest` it never had (resuming is `restore(latest_step(), ...)`).
  import dataclasses
  import inspect
  import sys
  api = _public_api()
  package = _EXTERNAL_NAMES | {qual.rpartition(".")[2] for qual, _ in api}  # names cited across modules
  for _, obj in api:
    package |= set(inspect.signature(obj).parameters) if inspect.isfunction(obj) else set()
  wrong = []
  for qual, cls in api:
    if not inspect.isclass(cls) or issubclass(cls, BaseException):
      continue
    module = sys.modules[cls.__module__]
    source = inspect.getsource(module)
    known = package | set(dir(cls)) | set(vars(module))
    known |= set(re.findall(r"\b(\w+)\s*[:=]", source))  # assigned or annotated anywhere there
    known |= set(re.findall(r"[\"'](\w+)[\"']", source))  # a key of a file format the module reads or writes
    known |= {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    texts = [cls.__doc__ or ""]
    for member in vars(cls).values():
      func = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
      func = func.fget if isinstance(func, property) else func
      if inspect.isfunction(func):
        texts.append(func.__doc__ or "")
        known |= set(inspect.signature(func).parameters)
    for name in {n for text in texts for n in re.findall(r"`([a-z]\w*_\w*)`", text)} - known:
      wrong.append(f"{qual}: cites `{name}`, which is no parameter, member or name of {module.__name__}")
  assert not wrong, "\n".join(sorted(wrong))


def test_readme_tree_section_names_every_record_field():
  # README's "Q-annotated trees" section is the schema as users read it: each top-level and node field of a record
  # as the search writes it (`search.host.to_record`), and the `terminal_reason` labels of `search.tree.Reason`.
  from rstar_jax.search import Reason, records
  from rstar_jax.search.host import HostNode, HostTree, to_record
  section = README[README.index("## Q-annotated trees"):README.index("## Training entry points")]
  assert f"`{records.SCHEMA}`" in section
  host = HostTree("prompt ")
  host.nodes.append(HostNode(parent=0, depth=1, text="x"))
  host.nodes[0].children.append(1)
  record = to_record(problem_id="p", question="q", ground_truth="1", prompt="prompt ", seed=0, mode="terminal_guided",
                     preset="official", host=host, visits=np.zeros(2, np.int32), value_sum=np.zeros(2, np.float32),
                     terminal_reason=np.zeros(2, np.int32))
  records.validate_tree(record)
  fields = [*record, *record["nodes"][1]]
  missing = [f for f in fields if f"`{f}`" not in section]
  assert not missing, f"README's tree section lacks {missing}"
  labels = [r.label for r in Reason if r.label is not None]
  assert f"`terminal_reason` (null / {' / '.join(f'`{label}`' for label in labels)})" in section


def test_readme_names_the_result_fields_the_code_has():
  # README's interface and sandbox sections spell out `StepCandidate(text, stop_reason)` and a sandbox result's
  # fields: they are the dataclasses' fields, in order.
  import dataclasses

  from rstar_jax.search import StepCandidate
  from sandbox import SandboxResult
  names = [f.name for f in dataclasses.fields(StepCandidate)]
  assert f"`StepCandidate({', '.join(names)})`" in README
  sandbox_section = README[README.index("## Sandbox"):]
  fields = [f.name for f in dataclasses.fields(SandboxResult)]
  listed = re.search(r"Each\s+result has (.*?)\. The observation", sandbox_section, re.S).group(1)
  assert re.findall(r"`(\w+)`", listed) == fields


# What a checkout holds beside its files: not part of any distribution.
_NOT_DISTRIBUTED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                          ".pytest_cache", ".venv", "runs", "out")


def test_the_wheel_and_sdist_carry_what_the_installed_package_and_the_readme_commands_read(tmp_path):
  """Every other test imports the checkout (`python -m pytest` puts it first on sys.path; subprocesses run in it),
  so a file left out of a distribution would pass them all. Built here as pip builds them (setuptools' PEP 517
  backend): the wheel holds every file of `rstar_jax/` and `sandbox/` (the demo's assets, rStar's prompt files) and
  nothing else, the installed demo reads its assets from it, and the sdist holds the whole checkout (the sdist had
  no tests, pytest.ini, benchmarks/RESULTS.md, configs/ or launch/: `python -m pytest` there collected nothing)."""
  src = tmp_path / "src"
  shutil.copytree(REPO, src, ignore=_NOT_DISTRIBUTED)
  checkout = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()} - {".gitignore"}
  build = ("from setuptools import build_meta\n"
           "print(build_meta.build_sdist('out'), build_meta.build_wheel('out'))")
  proc = subprocess.run([sys.executable, "-c", build], cwd=src, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  sdist_name, wheel_name = proc.stdout.split()[-2:]
  with tarfile.open(src / "out" / sdist_name) as f:
    top = sdist_name[:-len(".tar.gz")] + "/"
    in_sdist = {m.name[len(top):] for m in f.getmembers() if m.isfile()}
  assert not checkout - in_sdist, sorted(checkout - in_sdist)
  with zipfile.ZipFile(src / "out" / wheel_name) as f:
    in_wheel = {n for n in f.namelist() if ".dist-info/" not in n}
    metadata = f.read(next(n for n in f.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    f.extractall(tmp_path / "installed")
  assert in_wheel == {p for p in checkout if p.startswith(("rstar_jax/", "sandbox/"))}
  # README: Python >= 3.10, and torch a test dependency only.
  assert re.search(r"^Requires-Python: >=(\S+)$", metadata, re.M).group(1) == re.search(r"Python >= (\S+)\)",
                                                                                        README).group(1)
  torch = [l for l in metadata.splitlines() if l.startswith("Requires-Dist: torch")]
  assert torch and all(l.endswith('; extra == "test"') for l in torch), torch
  # The installed demo finds its problems in the wheel (it stops at the bad count after reading them).
  code = ("import sys; sys.path.insert(0, sys.argv[1]); from rstar_jax import demo, prompts\n"
          "print(demo._assets()); print(prompts.load_sft_template(demo._assets() + '/prompts').format('Q?'))\n"
          "demo.main(['--problems', '0'])")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "installed")], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120)
  assert proc.stdout.splitlines()[0] == str(tmp_path / "installed" / "rstar_jax" / "assets"), proc
  assert "Q?" in proc.stdout
  assert proc.returncode == 2 and "--problems must be in [1, 16], got 0" in proc.stderr, proc
