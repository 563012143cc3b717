"""What a program's run shows the policy: the "rstar" and "plain" output modes (stdlib only).

This module runs inside the sandbox executors; it is also imported by the host for post-processing.

"rstar" mode: the observation rules of the official rStar-Math interpreter
-------------------------------------------------------------------------
An rStar-trained policy reads back `<output>{observation}<end_of_output>`, so the observation must be built exactly as
the official code builds it (DESIGN.md §1.1). Given the program text (the code of the path, already joined by the
search; see `strip_program` for the clean-up applied here):

1. Clean-up, the official `sanitize_input`: leading whitespace and backticks, then a leading `python` in any case
   (a ```python fence tag; the official regex takes it even off `python_x = 1`), then whitespace are removed; so are
   trailing whitespace and backticks.
2. Parse. A parse error gives the error observation (rule 6) and runs nothing.
3. "Print points" are top-level statements that are a bare `print(...)` call, or an `if`/`for`/`while`/`def` block
   whose body (not `else`/`elif`) holds one, directly or inside nested `if`/`for`/`while`/`def` bodies (the official
   `__is_print_node` recurses: `for i in r:\n    if c:\n        print(i)` is a print point).
4. Zero or one print point: the whole program is one piece, run by rStar's `_sub_run`: every statement but the last
   runs with its stdout discarded; then the last statement runs: if it is an expression whose value is not None, the
   result is that value (the echo: `f"{value}"`, as the official code shows it; `format` differs from `str` for
   numpy's float32); otherwise it is what that last statement printed. So `x = 2; print(x); y = 3`
   observes "" (a quirk kept in this mode only). The result is post-processed (rule 7).
5. Several print points: the program is cut after each print point and each piece runs by rule 4 in one namespace
   (so only the print point's own output counts; what earlier statements of the piece print is discarded), is
   post-processed on its own (rule 7) and contributes `f"{label} {result}"`; the contributions are concatenated.
   The label joins, with spaces, the text between `print(` and the first `)` on the same line of every print call in
   the print-point statement (the official `extract_content` regex), then adds `:`; with no match the label is empty.
   `print(a)` -> "a: 5\n"; `print(round(x, 2))` -> "round(x, 2: 3.14\n"; `x = 2 / 3; print(x); print(x)` ->
   "x: 0.6667\nx: 0.6667\n". Statements after the last print point never run. The concatenation itself is not cut
   at `max_chars` (each piece is); only past `MULTI_PRINT_LIMIT * max_chars` characters is it cut the same way, a
   bound the official code does not have.
6. Any exception (parse, compile or run time; `SystemExit` and `KeyboardInterrupt` included) replaces the whole
   observation with `f"{type(e).__name__}: {e}"`, not post-processed (the official `_base_run` returns it from its
   `except` as is): only past `MULTI_PRINT_LIMIT * max_chars` characters is it cut, as rule 5's text is. Syntax
   errors name the file `<unknown>`, as the official `ast.parse` does (`IndentationError: unexpected indent
   (<unknown>, line 20)` in rStar's published data); an error the parser lets through and the compiler finds
   (`'return' outside function`) names `<string>` and its line in the text of `ast.unparse` of the piece's statements
   (all but the last, or the last alone), which the official code `exec`s.
7. Post-processing (`postprocess`) of a piece's result: printed text, or an echoed value that is a `str` (the official
   `truncate_string` rounds any `str`), that parses as a Python float becomes `str(round(value, 4)) + "\n"` unless the
   text is shorter (`8.94427190999916\n` -> `8.9443\n`; `5\n` stays; at equal lengths the rounded form wins, as the
   official test is `len(text) < len(rounded)`: `print(3.14159, end='')` -> `3.1416\n`; the echo of `math.sqrt(2)`,
   a float, stays `1.4142135623730951`; the echo of `str(math.sqrt(80))` becomes `8.9443\n`). Then a result longer
   than `max_chars` (1024 by default) becomes its first `max_chars // 2` characters + `...` + its last
   `max_chars - max_chars // 2`. An echoed value that is not a `str` is cut so when its `str` is longer, and is
   otherwise its `format`, whole (numpy's `float32(0.1)` echoes `0.10000000149011612` even at `max_chars=10`).

Differences from the official interpreter, on purpose: every program gets a fresh namespace (the official one
shares one across all programs of a process), and the time limit covers the whole program once (the official one
re-runs a timed-out last statement with no timer). A piece's last statement runs once: the official code `exec`s
it again whenever evaluating it as an expression (or taking the value's `str`) raised, so one that fails once and
not twice (`l = []` then `l.append(1) or l[1]`) observes what that second run printed ("") there, and its error
here. Sandbox outcomes have fixed texts: a timeout is `TimeoutError: execution exceeded {timeout_s}s`, a
memory-limit hit (`MemoryError` or `ENOMEM`) is `MemoryError: execution exceeded the memory limit ({memory_mb} MB)`,
a death by signal is `RuntimeError: execution killed by signal {SIGNAME}`, and a process exit (`os._exit`) is
`SystemExit: process exited with status {code}`. Lone surrogates in any text are replaced by U+FFFD so results
always encode as UTF-8. A program runs as a script does, with `__name__ == "__main__"` (the official interpreter
runs it in its own module's globals, where an `if __name__ == "__main__":` block never runs). Output is captured up
to `max(4 * max_chars, 4096)` characters, so a printed number longer than that is cut (rule 7), where the official
code, reading all of it, rounds it to `inf` (as any number of over 308 digits: a printed int of 4,097 to 4,300
digits, Python's limit for printing an int, or a longer text of digits, `print('1' * 5000)`, differ).

"plain" mode
------------
The whole program runs once with stdout captured; the observation is the printed text, or, when nothing was printed
and the last statement is an expression whose value is not None, `str(value)`. Errors and post-processing as above.
"""

from __future__ import annotations

import ast
import io
import re
import sys
from typing import Any

OUTPUT_MODES = ("rstar", "plain")
# The concatenated pieces of a program with several print points are cut (head + '...' + tail) only past this many
# times `max_chars` (rule 5): each piece is already cut at `max_chars`, the official code bounds nothing more.
MULTI_PRINT_LIMIT = 16
# The official `extract_content` regex: `.` stops at a newline, so a print call whose `)` is on a later line gives
# no label text.
_PRINT_LABEL_RE = re.compile(r"print\(([^)\n]*)\)")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_LEADING_RE = re.compile(r"[\s`]*(?i:python)?\s*")


def clean_text(text: str) -> str:
  """Replaces lone surrogates (unencodable in UTF-8) with U+FFFD."""
  return _SURROGATE_RE.sub("\ufffd", text)


def truncate(text: str, max_chars: int) -> str:
  """rStar's cut: longer than `max_chars` -> head `max_chars // 2` + '...' + tail `max_chars - max_chars // 2`."""
  if len(text) <= max_chars:
    return text
  half = max_chars // 2
  return text[:half] + "..." + text[half - max_chars:]  # the official `[-max_length//2:]`: 513 of 1025


def round_float_text(text: str) -> str:
  """rStar's float rule for printed text: `round(float(text), 4)` + newline unless the text is shorter."""
  try:
    value = float(text)
  except (ValueError, OverflowError):
    return text
  rounded = f"{round(value, 4)}\n"
  return text if len(text) < len(rounded) else rounded  # a tie goes to the rounded form, as in the official code


def observation_limit(max_chars: int, final: bool) -> int:
  """How long an observation may be: `max_chars`, or for several print points' pieces or an error (`final`) rule 5's
  bound."""
  return MULTI_PRINT_LIMIT * max_chars if final else max_chars


def postprocess(text: str, *, printed: bool, max_chars: int, final: bool = False) -> str:
  """Float rounding (`printed` text only), then truncation; see the module docstring, rule 7.

  `final` marks the concatenated pieces of several print points, post-processed piece by piece already, or an error
  text (rule 6): they are only cut at `observation_limit`.
  """
  if final:
    return truncate(clean_text(text), observation_limit(max_chars, final))
  if printed:
    text = round_float_text(text)
  return truncate(clean_text(text), max_chars)


def strip_program(code: str) -> str:
  """rStar's clean-up of a program (`sanitize_input`): see the module docstring, rule 1."""
  code = code[_LEADING_RE.match(code).end():]
  end = len(code)
  while end and (code[end - 1].isspace() or code[end - 1] == "`"):  # the official `(\s|`)*$`, in linear time
    end -= 1
  return code[:end]


def program_text(code: str, mode: str) -> str:
  """The text `run_program` parses and runs: `strip_program(code)` in rstar mode, `code` itself in plain mode.

  Whatever judges a program before it runs (`static_check.is_reusable`) must judge this text: a ```python fence or
  leading indentation does not parse as sent, but runs once cleaned up.
  """
  return strip_program(code) if mode == "rstar" else code


class _TextSink(io.TextIOBase):
  """A writable, non-tty UTF-8 text stream (what `print` and code probing `sys.stdout` expect)."""

  def writable(self) -> bool:
    return True

  @property
  def encoding(self) -> str:  # type: ignore[override]
    return "utf-8"

  def isatty(self) -> bool:
    return False

  def __del__(self) -> None:
    # Not `IOBase`'s close at collection: there is nothing to release, and a run's tee and sinks hold each other (a
    # cycle) whose members Python 3.13's collector finalized in any order: a sink or the tee's pending buffer was
    # closed first, and the tee's `close` wrote into it ("Exception ignored ... I/O operation on closed file").
    pass


class BoundedText(_TextSink):
  """A write-only text sink that keeps the head and tail of what it receives, never more.

  Memory stays bounded whatever a snippet prints; `value(max_chars)` gives the text with rStar's truncation applied,
  exactly as if the whole text had been kept (the head holds `keep` characters, enough to parse a long float).
  The tail is a list of the last pieces (under `3 * keep` characters), cut back to `keep` only when it passes
  `2 * keep`: rebuilding it on every write cost `keep` characters a `print`.

  A `_Tee` writes here in batches; `upstream` is that tee, whose pending text is moved in before any read.
  """

  def __init__(self, keep: int):
    super().__init__()
    self._keep = max(int(keep), 1)
    self._head: list[str] = []
    self._head_len = 0
    self._tail: list[str] = []
    self._tail_len = 0
    self._total = 0
    self.upstream: _Tee | None = None
    self.buffer = _BytesToText(self)

  @property
  def keep(self) -> int:
    return self._keep

  @property
  def total(self) -> int:
    """How many characters were written."""
    self._settle()
    return self._total

  def _settle(self) -> None:
    if self.upstream is not None:
      self.upstream.settle()

  def write(self, s: str) -> int:
    if self.closed:
      raise ValueError("I/O operation on closed file.")
    if not isinstance(s, str):
      raise TypeError(f"write() argument must be str, not {type(s).__name__}")
    if type(s) is not str:
      s = str.__str__(s)  # its characters, as a real stdout writes them: a subclass's `len` and slices may lie
    n = len(s)
    if not n:
      return 0
    if self._head_len < self._keep:
      piece = s[:self._keep - self._head_len]
      self._head.append(piece)
      self._head_len += len(piece)
    piece = s[-self._keep:]
    self._tail.append(piece)
    self._tail_len += len(piece)
    if self._tail_len > 2 * self._keep:  # amortized: at least `keep` characters came in since the last cut
      self._tail = ["".join(self._tail)[-self._keep:]]
      self._tail_len = self._keep
    self._total += n
    return n

  def value(self, max_chars: int) -> str:
    """The received text, cut to `max_chars` by rStar's rule when longer."""
    self._settle()
    head = "".join(self._head)
    if self._total <= self._keep:
      return truncate(head, max_chars)
    half = max_chars // 2
    tail = "".join(self._tail)[-self._keep:]
    return head[:half] + "..." + tail[half - max_chars:]

  def full_if_short(self, limit: int) -> str | None:
    """The exact text when at most `limit` (<= keep) characters were written, else None."""
    self._settle()
    return "".join(self._head) if self._total <= min(limit, self._keep) else None


class _BytesToText:
  """`sys.stdout.buffer` stand-in: bytes are decoded as UTF-8 (invalid bytes -> U+FFFD), each write on its own.

  It takes what a real stdout's `BufferedWriter` takes, a bytes-like object: `bytes(b)` would also take an int (that
  many NUL bytes) or a list of ints.
  """

  def __init__(self, sink: BoundedText | _Tee):
    self._sink = sink

  def write(self, b: Any) -> int:
    try:
      data = memoryview(b).tobytes()
    except TypeError:
      raise TypeError(f"a bytes-like object is required, not '{type(b).__name__}'") from None
    self._sink.write(data.decode("utf-8", errors="replace"))
    return len(data)

  def flush(self) -> None:
    pass


# A `_Tee` moves its pending text into the sinks once this many characters wait; a longer write goes there directly.
_PENDING_CHARS = 1 << 16


class _Tee(_TextSink):
  """stdout during a run: everything goes to `raw`; to `obs` only while `recording`.

  A `print` is two writes (the text, then `end`); going through the sinks' Python code for each one made printing
  ~7x slower than the official `redirect_stdout(io.StringIO())`. So writes of up to `_PENDING_CHARS` characters go
  to a C-level `io.StringIO`, which is moved into the sinks (`settle`) once over `_PENDING_CHARS` characters wait,
  when `obs` or `recording` changes, on `close`, and before a sink is read: memory stays bounded (under
  `2 * _PENDING_CHARS` characters wait), and the sinks see the same text in larger pieces, which does not change what
  they give. A longer write, or anything but an exact `str`, goes to the sinks at once (after the pending text).
  """

  def __init__(self, raw: BoundedText, obs: BoundedText):
    super().__init__()
    self._pending_io = io.StringIO()
    self._pending_write = self._pending_io.write
    self._pending = 0
    self._raw = raw
    self._obs = obs
    self._recording = True
    raw.upstream = obs.upstream = self
    self.buffer = _BytesToText(self)

  @property
  def raw(self) -> BoundedText:
    return self._raw

  @property
  def obs(self) -> BoundedText:
    return self._obs

  @obs.setter
  def obs(self, sink: BoundedText) -> None:
    self.settle()  # the pending text belongs to the previous sink
    self._obs = sink
    sink.upstream = self

  @property
  def recording(self) -> bool:
    return self._recording

  @recording.setter
  def recording(self, on: bool) -> None:
    self.settle()  # the pending text was written under the previous setting
    self._recording = on

  def write(self, s: str) -> int:
    if type(s) is str:  # a subclass goes to the sinks, which take its characters
      n = len(s)
      if n <= _PENDING_CHARS:
        self._pending_write(s)  # `_closed_write` once closed
        self._pending += n
        if self._pending > _PENDING_CHARS:
          self.settle()
        return n
    if self.closed:
      raise ValueError("I/O operation on closed file.")
    self.settle()  # keeps the order: what waits was written first
    n = self._raw.write(s)  # a long text is never copied whole; a non-str raises the sinks' TypeError
    if self._recording:
      self._obs.write(s)
    return n

  def settle(self) -> None:
    """Moves the pending text into `raw` (and `obs` while recording)."""
    pending = self._pending_io
    if not pending.tell():  # not `_pending`: a write interrupted (KeyboardInterrupt) may not have counted
      return
    # A fresh StringIO (emptying this one with `seek` and `truncate` would take it out of its fast append-only mode),
    # swapped in first: what the sinks' writes below may trigger (a `__del__` that prints) waits in it.
    self._pending_io = io.StringIO()
    self._pending_write = self._pending_io.write
    self._pending = 0
    text = pending.getvalue()
    self._raw.write(text)
    if self._recording:
      self._obs.write(text)

  def close(self) -> None:
    if not self.closed:
      self.settle()
      self._pending_write = _closed_write  # StringIO's own error lacks the final '.' that the sinks' message has
    super().close()


def _closed_write(s: str) -> int:
  raise ValueError("I/O operation on closed file.")


def format_exception(exc: BaseException, max_chars: int) -> str:
  """`"{ExceptionType}: {message}"`, each part cut at `max_chars` (a class made with `type(...)` may have any name).

  Cutting the parts keeps the head and tail of the whole text that `truncate(text, max_chars)` shows.
  """
  try:
    message = str(exc)
  except BaseException:  # a snippet-defined __str__ may raise anything
    message = "<unprintable message>"
  return clean_text(f"{truncate(type(exc).__name__, max_chars)}: {truncate(message, max_chars)}")


def _is_print_call(stmt: ast.stmt) -> bool:
  return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
          and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "print")


def is_print_point(stmt: ast.stmt) -> bool:
  """A print call, or an if/for/while/def whose body holds a print point (the official check recurses)."""
  stack = [stmt]
  while stack:  # iterative: a deeply nested program must not overflow the host's stack here
    node = stack.pop()
    if _is_print_call(node):
      return True
    if isinstance(node, (ast.If, ast.For, ast.While, ast.FunctionDef)):
      stack.extend(node.body)
  return False


class _Source:
  """Source segments by AST position without re-splitting the program for every statement."""

  def __init__(self, code: str):
    # Lines as the parser counts them (\n, \r\n, \r): `str.splitlines` also breaks at \f, \x1c-\x1e, \x85,
    # U+2028/U+2029, which may sit inside string literals and would shift every later line.
    self._lines = re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", code)
    self._encoded: dict[int, bytes] = {}

  def _line(self, i: int) -> bytes:
    if i not in self._encoded:
      self._encoded[i] = self._lines[i].encode("utf-8", errors="surrogatepass")
    return self._encoded[i]

  def segment(self, node: ast.AST) -> str:
    first, last = node.lineno - 1, node.end_lineno - 1  # type: ignore[attr-defined]
    start, end = node.col_offset, node.end_col_offset  # type: ignore[attr-defined]
    if first == last:
      seg = self._line(first)[start:end]
    else:
      seg = self._line(first)[start:] + b"".join(self._line(i) for i in range(first + 1, last)) + (
          self._line(last)[:end])
    return seg.decode("utf-8", errors="surrogatepass")


def print_label(source_segment: str) -> str:
  """The rStar label of a print point: texts between `print(` and the first `)` on its line, space-joined, then `:`.

  With no such text (`print (x)`, a call spread over lines) the label is empty, as the official `extract_content`.
  """
  found = _PRINT_LABEL_RE.findall(source_segment)
  return " ".join(found) + ":" if found else ""


class Outcome:
  """What `run_program` saw: the observation before post-processing and the raw stdout sink."""

  __slots__ = ("observation", "printed", "final", "error", "exception", "stdout", "started")

  def __init__(self):
    self.started = False  # True once any statement began to run (parse/compile errors leave it False)
    self.observation = ""
    self.printed = True  # float rounding applies (printed text, or an echoed str in rstar mode)
    # Several print points (pieces post-processed already), an error (never cut at `max_chars`), or an echo that is
    # not a str (shown as the official code shows it): only cut at rule 5's bound (`postprocess(final=True)`).
    self.final = False
    self.error: str | None = None
    self.exception: BaseException | None = None
    self.stdout: BoundedText | None = None


# Programs compile as the official `exec` of a string does: `dont_inherit` keeps this module's
# `from __future__ import annotations` out of them (annotations were kept as strings, an undefined name passed).
def _compile_stmts(stmts: list[ast.stmt], filename: str):
  return compile(ast.Module(body=stmts, type_ignores=[]), filename, "exec", dont_inherit=True)


def _compile_piece(stmts: list[ast.stmt], filename: str):
  """`_compile_stmts` for a piece of rule 4, whose compile errors read as the official ones (rule 6).

  The official `_sub_run` `exec`s the text of `ast.unparse(statements)`: an error the parser lets through and the
  compiler finds (`'return' outside function`) names `<string>` and its line in that text. On such an error that
  text is compiled, to raise it.
  """
  try:
    return _compile_stmts(stmts, filename)
  except SyntaxError:
    compile(ast.unparse(ast.Module(body=stmts, type_ignores=[])), "<string>", "exec", dont_inherit=True)
    raise


def run_program(code: str, namespace: dict, *, mode: str = "rstar", max_chars: int = 1024,
                filename: str | None = None) -> Outcome:
  """Runs `code` in `namespace` under `mode` with `sys.stdout` captured; never raises `Exception`s of the code.

  `filename` (what syntax errors name) defaults to `<unknown>` in rstar mode, as the official interpreter's
  `ast.parse` gives it (rStar's published data reads `IndentationError: unexpected indent (<unknown>, line 20)`), and
  to `<string>` in plain mode, as `exec` of a string.

  The caller owns process-level concerns (time limits, memory limits, fresh namespaces). `sys.stdout` and
  `sys.stderr` are restored afterwards; stderr output is discarded (bounded).
  """
  if mode not in OUTPUT_MODES:
    raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {mode!r}")
  if filename is None:
    filename = "<unknown>" if mode == "rstar" else "<string>"
  keep = max(4 * max_chars, 4096)
  out = Outcome()
  raw = BoundedText(keep)
  obs = BoundedText(keep)
  out.stdout = raw
  tee = _Tee(raw, obs)
  saved = sys.stdout, sys.stderr
  sys.stdout, sys.stderr = tee, BoundedText(1)
  try:
    code = program_text(code, mode)
    tree = ast.parse(code, filename=filename)
    body = tree.body
    out.started = True
    if mode == "plain":
      _run_plain(body, namespace, tee, obs, out, filename, max_chars)
    else:
      points = [i for i, stmt in enumerate(body) if is_print_point(stmt)]
      if len(points) <= 1:
        out.observation, out.printed = _run_piece(body, namespace, tee, obs, filename, max_chars)
        out.final = not out.printed  # an echo shows as `_run_piece` gives it (only rule 5's bound cuts it)
      else:
        source = _Source(code)
        limit = observation_limit(max_chars, final=True)
        joined = BoundedText(limit)
        start = 0
        for i in points:
          label = print_label(source.segment(body[i]))
          text, printed = _run_piece(body[start:i + 1], namespace, tee, BoundedText(keep), filename, max_chars)
          joined.write(f"{label} {postprocess(text, printed=True, max_chars=max_chars) if printed else text}")
          start = i + 1
        out.observation, out.printed, out.final = joined.value(limit), False, True
  except BaseException as e:  # pylint: disable=broad-except
    out.exception = e
    out.error = truncate(format_exception(e, max_chars), max_chars)  # the result's `error` field, cut as `stdout`
    # The official `_base_run` returns the error text whole (no `truncate_string`): only rule 5's bound cuts it.
    out.observation = format_exception(e, observation_limit(max_chars, final=True))
    out.printed, out.final = False, True
  finally:
    sys.stdout, sys.stderr = saved
  return out


def _value_observation(value: Any, out: Outcome) -> None:
  out.observation = str(value)
  out.printed = False


def _printed(obs: BoundedText, keep_limit: int, max_chars: int) -> str:
  full = obs.full_if_short(keep_limit)
  return full if full is not None else obs.value(max_chars)


def _run_piece(body, namespace, tee: _Tee, obs: BoundedText, filename: str, max_chars: int) -> tuple[str, bool]:
  """rStar's `_sub_run` (rule 4): returns the piece's result and whether it is still to be post-processed (rule 7).

  An echoed value that is not a `str` comes back as the official code shows it: cut already, or shown by `format`.

  Everything but the last statement runs with its output discarded; the last one's output goes to `obs`.
  """
  tee.obs = obs
  if not body:
    return "", True
  tee.recording = False
  exec(_compile_piece(body[:-1], filename), namespace)  # pylint: disable=exec-used
  tee.recording = True
  last = body[-1]
  expression = None
  if isinstance(last, ast.Expr):
    try:
      expression = compile(ast.Expression(body=last.value), filename, "eval", dont_inherit=True)
    except SyntaxError:  # `await x`: the official `eval` fails too, and it `exec`s the statement instead
      pass
  if expression is not None:
    value = eval(expression, namespace)  # pylint: disable=eval-used
    if isinstance(value, str):
      return value, True  # the official `truncate_string` rounds any str it gets
    if value is not None:
      # The official code shows `f"{value}"` of a value its `truncate_string` left whole (`str` not past the cut), and
      # that cut of `str(value)` otherwise; `format` differs from `str` for numpy's float32 (`0.6666666865348816`),
      # and is not cut again, even past `max_chars`.
      text = str(value)
      return (format(value, "") if len(text) <= max_chars else truncate(text, max_chars)), False
  else:
    exec(_compile_piece([last], filename), namespace)  # pylint: disable=exec-used
  return _printed(obs, obs.keep, max_chars), True


def _run_plain(body, namespace, tee: _Tee, obs: BoundedText, out: Outcome, filename: str, max_chars: int) -> None:
  if not body:
    return
  tee.recording = True
  value = None
  if isinstance(body[-1], ast.Expr):
    exec(_compile_stmts(body[:-1], filename), namespace)  # pylint: disable=exec-used
    expression = compile(ast.Expression(body=body[-1].value), filename, "eval", dont_inherit=True)
    value = eval(expression, namespace)  # pylint: disable=eval-used
  else:
    exec(_compile_stmts(body, filename), namespace)  # pylint: disable=exec-used
  if obs.total == 0 and value is not None:
    _value_observation(value, out)
  else:
    out.observation = _printed(obs, obs.keep, max_chars)
