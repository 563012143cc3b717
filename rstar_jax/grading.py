"""Final-answer extraction and equivalence (DESIGN §1.1, §1.2: terminal rewards).

`extract_boxed(text)` returns the content of the last `\\boxed{...}` (nested braces). `Grader` decides
whether a predicted answer equals the ground truth, in three layers, cheapest first:

1. String: both answers normalised (`$`/`\\(` wrappers, several `\\boxed{}` joined as a list, spacing, braces
   around a one-character superscript or subscript (`c_{1}` is `c_1`), `\\left`/`\\right`, `\\dfrac`/`\\tfrac`,
   unit words after a number (`5 \\text{ cm}`; not `\\text{ or }`, `\\text{ million}`), degree signs (`^\\circ`,
   `°`, `\\degree`) and percent signs, a leading `x =`, thousands separators in `1,234` form (`0,245` and `1, 234`
   are lists), a trailing period, the case of plain words only) and compared. Two assignments to different
   variables (`y = 3/2` against `x = 3/2`) skip to layer 3.
2. Numbers: when both sides read as plain numbers (integers, decimals, `a/b`, `\\frac{a}{b}`,
   percentages), their exact values are compared, so `1000001` is not `1000000` however large the
   numbers. The one allowance: a decimal written for a value whose decimal expansion never ends
   matches when it is that value rounded or truncated to the places it shows, with at least 6
   significant digits (`0.666667` for `\\frac{2}{3}`; not `0.3333`). Two numbers that differ are *not*
   handed on (that is a fast, certain "no").
3. math-verify: the bare LaTeX is wrapped in `$...$`, parsed as LaTeX only (not with its fallback that takes a
   number out of what the LaTeX parser cannot read) and verified (gold first, as the library expects). Its "equal"
   is confirmed exactly where its checks are loose (`_differ_exactly`): rational values, alone, in lists, tuples and
   sets or assigned (its 15-digit numeric check took `\\frac{1}{2^{1008}}` for `\\frac{1}{2^{1007}}`), and
   polynomial equations without real roots (it compares real solution sets: `x^2+1=0` was `x^2+121=0`). Two
   equations holding a vector or matrix (`\\mathbf{y} = c_1 [6,-3,3]^T e^{8t} + ...`), or one without a free
   symbol (`\\log 100 = 2`), or one that is a contradiction or an identity (`x = x+1`, a binomial expansion), skip
   its equation rules: they are the same when math-verify equates their sides, left with left and right with right
   (or swapped). Its `sympy.solve` finds no solution for either, and it read two empty solution lists as the same
   answer (`2+2=4` was `3+3=7`, `x=x+1` was `y=y+2`); two identities both have `lhs - rhs` = 0. A predicted equation
   is read as its right side against a gold value (math-verify's rule) only when its left side names that value:
   symbols only (`x`, `a+b`, `f(x)`), a derivative, or no free symbol (`f(2)`, a limit); the hyperbola
   `\\frac{x^2}{2}-\\frac{y^2}{2}=1` is not the value 1 (`_equation_for_a_value`). Its rule that drops a trailing
   `\\text{...}` unit is skipped for an answer where it would drop more than units: it started at the first text
   command, so `2\\mathbf{i}-5\\mathbf{j}` read as 2 (`_extraction_config`). Not guarded: a ground truth written as
   prose with inline math and no box (80 of Omni-MATH's, `There are 4 possible values of \\( P \\).`) is read by
   math-verify as its last piece of math (`P`), so an answer equal to that piece matches it (and `4` does not);
   which piece states the answer is a matter of reading the sentence.
   math-verify's own timeouts use `signal.alarm`, which only works in the main thread, so
   we call it with its timeouts disabled inside a separate worker process and enforce our own
   deadline: a call that overruns gets its worker killed (and replaced) and counts as "not equal". The ground
   truth is parsed first, under a deadline of its own, and each worker keeps its golds' parses: a search grades
   every candidate against one gold, and a long gold's parse (seconds) no longer eats the comparison's deadline.
   That makes `Grader` safe to use from any thread, and an answer like `10^{10^{10}}` (which sends
   sympy into an endless evaluation) cannot stall a search.

Before the layers, a few other spellings are rewritten: a whole answer that is a number word (`five`,
`\\text{twenty-one}`) becomes digits and a Python complex literal (`(3+4j)`) takes `i`, as the official grader's
`strip_string` does; Python's `**`, `sqrt(...)` and `pi` become LaTeX (`2**10` -> `2^{10}`), as the official grader's
sympy `parse_expr` reads them; `\\varnothing` becomes `\\emptyset` (the official grader has no rule for it).

Differences from the official grader (rStar-Math `rstar_deepthink/agents/utils.py` `math_equiv`, which says "equal"
when any of `utils/math_equal.py`, `math_evaluation.is_equiv` or `utils/checker.py` does, either way round and again
after `strip_string`). It is looser on purpose; we keep the stricter rule and say "not equal" to each of:
- Numeric tolerance: `1000001` for `1000000` (`isclose`, `rel_tol=1e-4`); `3.14` for `3.1416`, `1.414` for
  `\\sqrt{2}` (the Xwin check, `rel_tol=1e-3`). We compare exactly, with only the rounded-decimal allowance above.
- Percentages (`include_percentage`: the gold, x100 and /100): `0.44` for `44\\%`, `4400` for `44`, `0.072` for
  `7.2\\%`. We drop a `%` sign (`44` is `44\\%`) and never rescale.
- Brackets: tuples and intervals compared element by element whatever the brackets: `(1, 3)` for `[1, 3]`,
  `[0,\\infty)` for `(0,\\infty)`.
- Assignments: any left side of at most two characters is dropped: `y = \\frac{3}{2}` for `x = \\frac{3}{2}`,
  `2x = 6` for `6`.
- Case: both answers are first compared lowercased: `\\Phi(x)` for `\\phi(x)`.
- Commas: dropped from numbers (`parse_digits`) and, with spaces, from any answer (Xwin's literal check): `245` for
  `0,245`, `1234` for `1, 234`.
- Choice letters: the last standalone A-E of the answer (`The answer is C` for `C`), and the A-E letters of an
  answer for a gold of several (`B, E, E` for `BEE`, an Omni-MATH word).

Results are cached per (prediction, gold) pair: a search grades the same few answers many times.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from fractions import Fraction
from typing import Sequence

_LOG = logging.getLogger(__name__)

_BOXED_COMMANDS = ("\\boxed", "\\fbox")
_BOX_COMMAND_RE = re.compile(r"\\boxed|\\fbox")
_BRACE_AFTER_RE = re.compile(r"(?:\\boxed|\\fbox) *\{")  # spaces as `_box_at` skips them


def extract_boxed(text: str | None) -> str | None:
  """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced.

  `\\boxed 5` (no braces) gives "5" when no box of `text` has braces: a braced box wins over a later bare `\\boxed`
  (a word, or a repeat cut off by the token limit), as rStar's `extract_boxed_answer` reads the last `\\boxed{`.
  Returns None when there is no box or the chosen box's braces never close.
  """
  if not text:
    return None
  starts = [m.start() for m in _BOX_COMMAND_RE.finditer(text)]
  if not starts:
    return None
  braced = [s for s in starts if _BRACE_AFTER_RE.match(text, s)]
  box = _box_at(text, (braced or starts)[-1])
  return None if box is None else box[0]


def boxed_contents(text: str | None) -> list[str]:
  """The contents of the outermost `\\boxed{...}` / `\\fbox{...}` of `text`, left to right (unclosed ones
  skipped; a box inside a box is part of the outer one's content)."""
  out, end = [], 0
  for match in re.finditer(r"\\boxed|\\fbox", text or ""):
    if match.start() < end:
      continue
    box = _box_at(text, match.start())
    if box is not None:
      out.append(box[0])
      end = box[1]
  return out


def _box_at(text: str, start: int) -> tuple[str, int] | None:
  """`(content, end)` of the box command at `text[start:]`."""
  i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
  while i < len(text) and text[i] == " ":
    i += 1
  if i < len(text) and text[i] == "{":
    depth = 0
    for j in range(i, len(text)):
      if text[j - 1] == "\\" and j > i:  # `\{` and `\}` are literal braces, not grouping
        continue
      if text[j] == "{":
        depth += 1
      elif text[j] == "}":
        depth -= 1
        if depth == 0:
          return text[i + 1:j].strip(), j + 1
    return None
  match = re.match(r"[^\s$]+", text[i:])  # `\boxed 5`: a single token
  return (match.group(0).rstrip("."), i + match.end()) if match else None


# ----------------------------------------------------------------------------------------------
# Layer 1: string normalisation.

_UNIT_WORDS = (
    "degrees", "degree", "cm", "centimeters", "meters", "meter", "m", "km", "inches", "inch", "feet",
    "ft", "units", "unit", "square", "sq", "dollars", "dollar", "cents", "hours", "hour", "minutes",
    "minute", "seconds", "second", "days", "day", "years", "year", "mph", "pounds", "pound", "miles",
    "mile", "kg", "g", "liters", "liter", "ml")
# Spellings of the degree sign, longest first: a model writes `30°` or `30\\degree` as often as `30^\\circ`.
_DEGREE_SIGNS = ("^{\\circ}", "^\\circ", "\\circ", "^{\u00b0}", "^\u00b0", "\u00b0", "\\degree")
_NUMBER_RE = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_THOUSANDS_RE = re.compile(r"^[-+]?[1-9]\d{0,2}(,\d{3})+(\.\d+)?$")
_SIMPLE_FRAC_RE = re.compile(r"^([-+]?)\\frac\{([^{}]+)\}\{([^{}]+)\}$")
_SHORT_FRAC_RE = re.compile(r"^([-+]?)\\frac(\d)(\d)$")
_SLASH_FRAC_RE = re.compile(r"^([-+]?[\d.]+)/([\d.]+)$")
# `x = 3`, `x_1 = 3`, `x_{12} = 3`; not `\sum_{i=1}^n` (the `=` inside braces).
_ASSIGNMENT_RE = re.compile(r"^(\\?[a-zA-Z]+(_\{\w+\}|_\w)?)\s*=\s*(?!.*=)")
# A unit written as text after a number: `5 \text{ cm}`, `15\mbox{ cm}^3` (the text is checked by `_text_unit_number`).
_TEXT_UNIT_RE = re.compile(r"^([-+]?[\d.,/]+)\s*\\(?:text|mbox|mathrm)\{([^{}]*)\}(\^\{?\d\}?)?$")
# A unit word after a number: `5 cm`. The words start at a letter, so `\s+` and the words never compete for a run of
# spaces (`\s+([a-zA-Z ]+)$` backtracked over such a run in quadratic time: minutes for a model's answer padded with
# spaces, which Qwen2.5 writes 128 to a token).
_BARE_UNIT_RE = re.compile(r"^([-+]?[\d.,]+)\s+([a-zA-Z][a-zA-Z ]*)$")


_SMALL_NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS_WORDS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# A Python complex literal, as a program prints it: `(3+4j)`, `-2j`.
_PY_COMPLEX_RE = re.compile(r"^\(?([-+]?(?:\d+(?:\.\d+)?[-+])?\d+(?:\.\d+)?)j\)?$")


def _respell(answer: str) -> str:
  """Other spellings of one answer, rewritten before any layer (see the module docstring): a whole answer that is a
  number word (`five`, `\\text{twenty-one}`: 0 to 99) becomes its digits, a Python complex literal (`(3+4j)`) is
  written with `i`, another Python expression in LaTeX (`_python_to_latex`), and `\\varnothing` is `\\emptyset`."""
  s = answer.replace("\\varnothing", "\\emptyset")
  bare = _unwrap_text_commands(s).strip().strip("$").strip().rstrip(".").strip().lower()
  words = re.split(r"[- ]+", bare)
  if len(words) == 1 and words[0] in _SMALL_NUMBER_WORDS:
    return str(_SMALL_NUMBER_WORDS.index(words[0]))
  if 1 <= len(words) <= 2 and words[0] in _TENS_WORDS and (len(words) == 1 or words[1] in _SMALL_NUMBER_WORDS[1:10]):
    return str(20 + 10 * _TENS_WORDS.index(words[0]) + (_SMALL_NUMBER_WORDS.index(words[1]) if len(words) == 2 else 0))
  match = _PY_COMPLEX_RE.match(re.sub(r"\s+", "", s))
  return match.group(1) + "i" if match else _python_to_latex(s)


# Python's spellings of a power, a square root and pi (not `\sqrt(`, `\pi`, `\sqrtx` or `pix`).
_PY_POWER_RE = re.compile(r"\*\*\s*")
_PY_SQRT_RE = re.compile(r"(?<![\\a-zA-Z])sqrt\s*\(")
_PY_PI_RE = re.compile(r"(?<![\\a-zA-Z])pi(?![a-zA-Z])")


def _python_to_latex(s: str) -> str:
  """A Python expression, as a program prints it or a model writes it in its box (`2**10`, `3 + sqrt(2)`, `2*pi`),
  in LaTeX (`2^{10}`, `3 + \\sqrt{2}`, `2*\\pi`); any other answer unchanged.

  math-verify reads the Python spellings as the number before them: `2**10` as 2, `3 + sqrt(2)` as 3 (so both
  matched a gold of 2 or 3), `2*pi` as 2ip. The official grader's sympy `parse_expr` reads them as Python.
  """
  if "**" not in s and not _PY_SQRT_RE.search(s) and not _PY_PI_RE.search(s):
    return s
  out: list[str] = []
  closers: list[str] = []  # what each open parenthesis becomes when it closes: `)`, `)}` (a power's) or `}` (sqrt's)
  i = 0
  while i < len(s):
    power = _PY_POWER_RE.match(s, i)
    sqrt = _PY_SQRT_RE.match(s, i) if s.startswith("sqrt", i) else None
    pi = _PY_PI_RE.match(s, i) if s.startswith("pi", i) else None
    if power:
      i = power.end()
      if s.startswith("(", i):  # `2**(1/2)` -> `2^{(1/2)}`
        out.append("^{(")
        closers.append(")}")
        i += 1
      else:  # a signed number or name: `2**-1`, `x**n`, `10**3.5`
        operand = re.match(r"[-+]?[\w.]+", s[i:i + 1000])
        if operand is None:
          return s
        out.append("^{%s}" % operand.group(0))
        i += operand.end()
    elif sqrt:
      out.append("\\sqrt{")
      closers.append("}")
      i = sqrt.end()
    elif pi:
      out.append("\\pi ")
      i = pi.end()
    elif s[i] == "(":
      out.append("(")
      closers.append(")")
      i += 1
    elif s[i] == ")":  # an interval's `)` may close a `[`: `[0, 2pi)`
      out.append(closers.pop() if closers else ")")
      i += 1
    else:
      out.append(s[i])
      i += 1
  return s if set(closers) - {")"} else "".join(out).strip()  # a power's or sqrt's `(` never closed: not Python


def _unwrap_text_commands(s: str) -> str:
  """`\\text{abc}` -> `abc` (also `\\textbf`, `\\mathrm`, `\\mbox`), innermost first."""
  pattern = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
  while True:
    new = pattern.sub(r"\1", s)
    if new == s:
      return s
    s = new


def normalize_answer(answer: str | None) -> str:
  """Canonical string form of an answer for string comparison (see module docstring)."""
  return _normalize(answer)[1]


def _normalize(answer: str | None) -> tuple[str | None, str, str]:
  """`(the variable a single assignment names, e.g. "x" of "x = 3", or None; the normalised answer; the same with
  every comma kept)`. The last form compares `110, 880` with a `110,880` that lists two answers."""
  if answer is None:
    return None, "", ""
  s = str(answer).strip()
  for _ in range(3):  # "$$x$.$" and the like: peel wrappers and trailing periods until stable
    before = s
    if s.endswith(".") and s[:-1].rstrip().endswith(("$", "\\)", "\\]")):
      s = s[:-1].rstrip()  # "$x$." -> "$x$"
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
      if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
        s = s[len(left):len(s) - len(right)].strip()
    if s == before:
      break
  for _ in range(3):  # `\boxed{\boxed{x}}`; several boxes (a ground truth listing its answers): all, not the last
    boxes = boxed_contents(s) if s.startswith(_BOXED_COMMANDS) else []
    if not boxes:
      break
    s = ", ".join(boxes)
  s = s.replace("\\left", "").replace("\\right", "")
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  for space in ("\\!", "\\,", "\\;", "\\:", "\\ ", "~"):
    s = s.replace(space, " ")
  for degree in _DEGREE_SIGNS:
    s = s.replace(degree, "")
  s = s.replace("\\%", "").replace("%", "").replace("\\$", "")
  s = s.strip().rstrip(".").rstrip()  # the sentence's period before the unit rules: `5\text{ cm}.` is `5 cm`
  # Units written as text after a number: "5 \text{ cm}" -> "5" (not "5\text{ or }7", "5\text{ million}").
  number = _text_unit_number(s)
  if number is not None:
    s = number
  s = _unwrap_text_commands(s)
  s = s.strip()
  # A bare unit word after a number: "5 cm" -> "5".
  match = _BARE_UNIT_RE.match(s)
  if match and all(w.lower() in _UNIT_WORDS for w in match.group(2).split()):
    s = match.group(1)
  # A single assignment "x = 3" -> "3" (not for equations with several "="); the variable is returned beside it.
  variable = None
  match = _ASSIGNMENT_RE.match(s) if s.count("=") == 1 else None
  if match:
    variable, s = _BRACED_SCRIPT_RE.sub(r"\1\2", match.group(1)), s[match.end():]  # `x_{1} = 3` names `x_1`
  s = s.rstrip(".").strip()
  # Commas are thousands separators only in `1,234` form: `0,245`, `1, 234` or `98, 118, 122` are lists.
  as_list = _finish(s)
  if _THOUSANDS_RE.match(s):
    s = s.replace(",", "")
  return variable, _finish(s), as_list


def _text_unit_number(s: str) -> str | None:
  """The number of `5 \\text{ cm}`-like answers (`_TEXT_UNIT_RE`) whose text is words of `_UNIT_WORDS`; else None.

  The text must read as `\\s*[a-zA-Z ]+?\\s*` (letters and spaces, any whitespace around them). It is checked here,
  not inside the regex: that pattern's overlapping runs of spaces backtracked in cubic time on a long run of spaces
  that does not end the answer (a degenerate model answer stalled the search for minutes, outside any deadline).
  """
  match = _TEXT_UNIT_RE.match(s)
  if not match:
    return None
  text = match.group(2)
  core = text.strip()  # str.strip and the regex `\\s` strip the same (Unicode) whitespace
  if not (core or " " in text) or not re.fullmatch(r"[a-zA-Z ]*", core):
    return None
  return match.group(1) if all(w.lower() in _UNIT_WORDS for w in core.split()) else None


# A superscript or subscript of one letter or digit in braces: `c_{1}` is `c_1`, `x^{2}` is `x^2`, as TeX reads them.
_BRACED_SCRIPT_RE = re.compile(r"([_^])\{([A-Za-z0-9])\}")


def _finish(s: str) -> str:
  s = re.sub(r"\s+", "", s)
  # Spelled either way as often (`y = c_{1}e^{2x}`, `y = c_1 e^{2x}`): without this the string layer missed them and
  # math-verify, whose parse of a long answer takes seconds, decided under the deadline.
  s = _BRACED_SCRIPT_RE.sub(r"\1\2", s)
  s = _SHORT_FRAC_RE.sub(r"\1\\frac{\2}{\3}", s)
  # Case matters in mathematics (`\Phi` vs `\phi`, `2N` vs `2n`); only words are compared case-insensitively.
  return s.lower() if re.fullmatch(r"[A-Za-z]+", s) else s


# ----------------------------------------------------------------------------------------------
# Layer 2: plain numbers.

def parse_number(answer: str | None) -> Fraction | None:
  """The exact value of an answer that is a plain number, `a/b`, `\\frac{a}{b}` or a percentage; else None.

  Numbers with an exponent past +-`_MAX_EXPONENT` (or more digits than Python converts) give None: math-verify, in
  its worker under a deadline, decides those.
  """
  return _number_of(normalize_answer(answer))


def _number_of(s: str) -> Fraction | None:
  """`parse_number` of an already normalised answer."""
  if not s:
    return None
  try:
    if _NUMBER_RE.match(s):
      return _exact(s)
    for regex in (_SIMPLE_FRAC_RE, _SLASH_FRAC_RE):
      match = regex.match(s)
      if match:
        groups = match.groups()
        sign = -1 if groups[0].startswith("-") else 1
        num_text = groups[1] if len(groups) == 3 else groups[0].lstrip("+-")
        den_text = groups[2] if len(groups) == 3 else groups[1]
        if not (_NUMBER_RE.match(num_text) and _NUMBER_RE.match(den_text)):
          return None
        num, den = _exact(num_text), _exact(den_text)
        return None if num is None or den is None or den == 0 else sign * num / den
  except (ValueError, OverflowError, ZeroDivisionError):
    return None
  return None


_MAX_EXPONENT = 400


def _exact(number: str) -> Fraction | None:
  """`number` matches `_NUMBER_RE`."""
  exponent = re.search(r"[eE]([-+]?\d+)$", number)
  if exponent and abs(int(exponent.group(1))) > _MAX_EXPONENT:
    return None  # `Fraction` would build 10**exponent
  return Fraction(number)


def _decimal_places(s: str) -> int | None:
  """For a normalised plain number written as a decimal (`0.666667`, `.5`, `6.7e-1`): the decimal places it shows;
  else None."""
  if not _NUMBER_RE.match(s) or not re.search(r"[.e]", s.lower()):
    return None
  mantissa, _, exponent = s.lower().partition("e")
  places = len(mantissa.partition(".")[2]) - (int(exponent) if exponent else 0)
  return max(places, 0)


def _terminates(x: Fraction) -> bool:
  """Whether `x` has a finite decimal expansion (its denominator has no prime factors but 2 and 5)."""
  den = x.denominator
  for p in (2, 5):
    while den % p == 0:
      den //= p
  return den == 1


_MIN_ROUNDED_DIGITS = 6


def _numbers_equal(a: Fraction, a_places: int | None, b: Fraction, b_places: int | None) -> bool:
  """Exact equality, except that a decimal may round a value whose expansion never ends.

  The decimal (`*_places`: the places it shows, None when not written as a decimal) must then be that value rounded
  or truncated to those places, with at least `_MIN_ROUNDED_DIGITS` significant digits: `0.666667` and `0.666666`
  match 2/3; `0.3333` (too short) and `333333.4` (333333.3 rounded) do not match what they approximate.
  """
  if a == b:
    return True
  for decimal, places, value in ((a, a_places, b), (b, b_places, a)):
    if places is None or _terminates(value):
      continue
    scale = 10 ** places
    if len(str(abs(int(decimal * scale)))) < _MIN_ROUNDED_DIGITS:
      continue
    if decimal in (Fraction(round(value * scale), scale), Fraction(math.trunc(value * scale), scale)):
      return True
  return False


def _choice_letters(answer: str) -> str | None:
  """"(C)", "C", "\\text{(C)}" -> "C"; None unless the answer is a bare choice letter."""
  s = _unwrap_text_commands(str(answer)).strip().strip("$").strip()
  match = re.match(r"\(([A-E])\)", s)  # "(C) 12": the letter, then the option's value
  if match:
    return match.group(1)
  s = s.strip("().: ")
  return s if re.fullmatch(r"[A-E]", s) else None


# ----------------------------------------------------------------------------------------------
# Layer 3: math-verify in a killable worker process.

def _wrap_latex(answer: str) -> str:
  s = answer.strip()
  if "$" in s or "\\(" in s or "\\[" in s:
    return s
  return f"${s}$"


def math_verify_parse(answer: str) -> list:
  """math-verify's parse of one answer (a list of sympy objects and their strings; empty when it reads nothing),
  computed in *this* process without any timeout."""
  from math_verify import parse  # pylint: disable=import-outside-toplevel
  return parse(_wrap_latex(answer), extraction_config=_extraction_config(answer), parsing_timeout=None)


def math_verify_equal(pred: str, gold: str, gold_parsed: list | None = None) -> bool:
  """math-verify's verdict, computed in *this* process without any timeout (workers call this).

  `gold_parsed`: `math_verify_parse(gold)` when already done (a worker keeps its golds' parses); None parses it here.
  """
  from math_verify import verify  # pylint: disable=import-outside-toplevel
  if gold_parsed is None:
    gold_parsed = math_verify_parse(gold)
  pred_parsed = math_verify_parse(pred)
  if not gold_parsed or not pred_parsed:
    return False
  if _equations_compared_by_sides(gold_parsed[0], pred_parsed[0]):
    return _same_sides(gold_parsed[0], pred_parsed[0])
  if _equation_for_a_value(gold_parsed[0], pred_parsed[0]):
    return False
  if not verify(gold_parsed, pred_parsed, timeout_seconds=None):
    return False
  return not _differ_exactly(gold_parsed[0], pred_parsed[0])


# What math-verify's unit rule may remove: text commands, joined as units are (`\text{ m}/\text{s}^2`).
_UNITS_ONLY_RE = re.compile(r"(?:\\(?:text|mbox)\{[^{}]*\}|\^\{?\d\}?|\\cdot|[\s/*])+")


def _extraction_config(answer: str) -> list:
  """math-verify's LaTeX extraction for `answer`, without its unit rule where that rule drops more than a unit.

  LaTeX only: the default's second extractor (`ExprExtractionConfig`) takes a number out of an answer the LaTeX
  parser cannot read, so `(1, n) \\text{ for } n \\ge 1` was 1 and `t = \\max \\{ 2q, q - 1 + 2M \\}` was 2.
  Its unit rule removes `\\text{...}` (its spelling of `\\mathrm`, `\\mathbf`, `\\mbox`, ...) at the end with a lazy
  `.*?` anchored at the end: from the *first* text command on, so `2\\mathbf{i}-5\\mathbf{j}` read as 2 (equal to
  `2\\mathbf{i}+7\\mathbf{j}`), `9\\text{ dimes}, 12\\text{ quarters}` as 9, `3 \\text{ if } n \\text{ even}` as 3.
  Where the rule would remove more than text commands joined as units are (`\\text{ m}/\\text{s}`), the answer is
  read without it.
  """
  # pylint: disable=import-outside-toplevel
  from latex2sympy2_extended.math_normalization import normalize_latex, unit_superscript_regex
  from math_verify import LatexExtractionConfig
  config = LatexExtractionConfig()
  before_units = normalize_latex(_wrap_latex(answer), dataclasses.replace(config.normalization_config, units=False))
  for text in re.findall(r"\$([^$]*)\$", before_units) or [before_units]:
    match = unit_superscript_regex.search(text.strip())
    if match and text.strip()[:match.start()].strip() and not _UNITS_ONLY_RE.fullmatch(match.group(0)):
      config = LatexExtractionConfig(
          normalization_config=dataclasses.replace(config.normalization_config, units=False))
  return [config]


def _differ_exactly(gold, pred) -> bool:
  """Whether math-verify's "equal" for two parsed answers is one of its numeric checks misreading two different
  rational numbers (`\\frac{1}{2^{1007}}`, `\\binom{4}{2}-2`): alone, as the elements of two tuples or sets, or as the
  values of assignments (`x = ...`).

  math-verify compares such expressions by `(a - b).evalf(chop=True, n=15) == 0`, which reads a difference below its
  chop threshold (`1/2^{1008}` against `1/2^{1007}`), or one lost to cancellation between huge terms
  (`2013^{2015}/(2013^{2013}-1)` against `2013^{2014}/(...)`), as 0. Computed (`doit`: its trees are unevaluated),
  they are exact fractions. Only rationals: sympy's `is_zero` on those trees depended on its caches (the same pair
  answered both ways from run to run), and anything else (a decimal, a root, a variable, a relation between
  expressions) keeps math-verify's own rules.
  """
  import sympy  # pylint: disable=import-outside-toplevel
  if isinstance(gold, sympy.Eq) and isinstance(pred, sympy.Eq):
    if gold.lhs == pred.lhs and _differ_exactly(gold.rhs, pred.rhs):  # `x = a` against `x = b`
      return True
    return _differ_without_real_roots(gold, pred)
  for assignment, value in ((gold, pred), (pred, gold)):  # `x = a` against `b`: math-verify compares a with b
    if isinstance(assignment, sympy.Eq) and isinstance(assignment.lhs, sympy.Symbol):
      return _differ_exactly(assignment.rhs, value)
  if isinstance(gold, sympy.Tuple) and isinstance(pred, sympy.Tuple):
    return len(gold) == len(pred) and any(_differ_exactly(g, p) for g, p in zip(gold.args, pred.args))
  if isinstance(gold, sympy.FiniteSet) and isinstance(pred, sympy.FiniteSet):
    gold_values, pred_values = [_rational_value(e) for e in gold.args], [_rational_value(e) for e in pred.args]
    return None not in gold_values + pred_values and set(gold_values) != set(pred_values)
  gold_value, pred_value = _rational_value(gold), _rational_value(pred)
  return gold_value is not None and pred_value is not None and gold_value != pred_value


def _equations_compared_by_sides(gold, pred) -> bool:
  """Whether two parsed answers are equations that math-verify's equation rules cannot tell apart: one holds a
  matrix or vector (`\\begin{array}`, `\\begin{bmatrix}`, ...), one has no free symbol (`\\log 100 = 2`), or one is
  a contradiction or an identity (`x = x+1`, `(a+b)^2 = a^2+2ab+b^2`: its expanded `lhs - rhs` has no free symbol).

  math-verify compares equations as `lhs - rhs` (sympy refuses a scalar symbol minus a matrix; every true statement
  is 0) and then by the solutions of `sympy.solve` for all their symbols, which are none for such equations: two
  empty lists, which it read as the same solutions. So every pair of CollegeMath's vector ODE solutions with free
  constants was "equal" (2517 against 2518, after a `solve` of up to 20 s), and so were `2+2=4` and `3+3=7`, or
  any two true statements (`\\log\\frac{1}{1000000}=-6` and `\\log \\sqrt[3]{10^5}=\\frac{5}{3}`: 1106 and 1109), or a
  true statement and an identity (`\\log_{36}(36)=1` and 1335's `(\\frac{1}{3}x+y^{2})^{3}=\\frac{1}{27}x^{3}+...`).
  With free symbols the same held for any two contradictions (`x=x+1` and `y=y+2`: no solutions either) and any two
  identities (`x=x` and `y=y`, or two binomial expansions: `lhs - rhs` both 0). An identity that only `simplify`
  shows (`\\sin^2 x+\\cos^2 x=1`) keeps math-verify's rules: `simplify` on every equation costs seconds.
  """
  import sympy  # pylint: disable=import-outside-toplevel
  if not (isinstance(gold, sympy.Eq) and isinstance(pred, sympy.Eq)):
    return False
  matrix = (sympy.MatrixBase, sympy.MatrixExpr)
  if any(isinstance(node, matrix) for expr in (gold, pred) for node in sympy.preorder_traversal(expr)):
    return True
  if not gold.free_symbols or not pred.free_symbols:
    return True
  try:
    return any(not sympy.expand(eq.lhs - eq.rhs).free_symbols for eq in (gold, pred))
  except Exception:  # pylint: disable=broad-except  # sides sympy cannot subtract or expand: math-verify's rules
    return False


def _equation_for_a_value(gold, pred) -> bool:
  """Whether `pred` is an equation whose left side names no value and `gold` is no equation (a value).

  math-verify reads such a prediction as its right side ("1 and 9=1 -> 1,1"), so the hyperbola
  `\\frac{x^2}{2}-\\frac{y^2}{2}=1` (gaokao 6's answer) equalled gaokao 7's gold 1, and `x^2+y^2=2` equalled 2. The
  other way round it already asks the gold to be an assignment ("not 2x + z = 1 and 1"); so does this check, with
  math-verify's own test of one: a left side made of symbols only (`x`, `a+b`, `|z|`, `f(x)`, `\\sin A`) names the
  value its right side gives. So does a derivative (`\\frac{dy}{dx}`) and a left side without a free symbol (`f(2)`,
  `f^{-1}(7)`, a limit, an integral with bounds). A left side with a free symbol and a number (`x^2+y^2`,
  `\\sigma^2`, `2x`) does not: nor does the official grader read one as its right side (it drops only a left side
  of at most 2 characters: `2x = 6` is 6 there).
  """
  # pylint: disable=import-outside-toplevel
  import sympy
  from math_verify.grader import is_assignment_relation, is_equation, take_first_relation
  if not is_equation(pred) or is_equation(gold) or is_assignment_relation(pred):
    return False
  lhs = take_first_relation(pred).lhs
  return not isinstance(lhs, sympy.Derivative) and bool(getattr(lhs, "free_symbols", True))


def _same_sides(gold, pred) -> bool:
  """Whether two `_equations_compared_by_sides` have sides math-verify equates: left with left and right with right,
  or swapped (`4 = 2+2` for `2+2 = 4`)."""
  from math_verify import verify  # pylint: disable=import-outside-toplevel
  def same(a, b):
    return verify([a], [b], timeout_seconds=None)
  return ((same(gold.lhs, pred.lhs) and same(gold.rhs, pred.rhs))
          or (same(gold.lhs, pred.rhs) and same(gold.rhs, pred.lhs)))


def _differ_without_real_roots(gold, pred) -> bool:
  """Whether two polynomial equations in one variable, neither with a real root, have different complex roots.

  math-verify compares equations by their real solution sets: both empty here, so it equated `x^2+121=0` with
  `x^2+1=0`. Their squarefree monic polynomials are equal exactly when their complex roots are.
  """
  import sympy  # pylint: disable=import-outside-toplevel
  symbols = gold.free_symbols | pred.free_symbols
  if len(symbols) != 1:
    return False
  x = symbols.pop()
  try:
    polys = [sympy.Poly(sympy.expand(eq.lhs - eq.rhs), x) for eq in (gold, pred)]
    if any(poly.degree() < 1 or sympy.real_roots(poly) for poly in polys):
      return False  # a real root: math-verify's solution sets decide
    return polys[0].sqf_part().monic() != polys[1].sqf_part().monic()
  except Exception:  # pylint: disable=broad-except  # not a polynomial (`\\sin x = 2`): math-verify's verdict
    return False


def _rational_value(expr):
  """The exact value (a sympy `Rational`) of an expression built of rationals only; else None."""
  import sympy  # pylint: disable=import-outside-toplevel
  rational_nodes = (sympy.Add, sympy.Mul, sympy.Pow, sympy.Rational, sympy.binomial, sympy.factorial)
  if not isinstance(expr, sympy.Expr) or not all(isinstance(n, rational_nodes) for n in sympy.preorder_traversal(expr)):
    return None
  try:
    value = expr.doit()
  except Exception:  # pylint: disable=broad-except
    return None
  return value if value.is_Rational else None


def _die_with_host() -> None:
  """Arms SIGKILL for when the host's thread that started this worker ends (see `_Spawner`), and exits at once if
  the host is already gone. EOF on stdin ends an idle worker, but one in a comparison that never returns (sympy on
  10^(10^10)) only had the host's deadline to stop it: a host SIGKILLed (OOM, preemption) left it computing."""
  host = os.environ.get(_HOST_PID_ENV)
  if not sys.platform.startswith("linux") or not host:
    return
  import ctypes  # pylint: disable=import-outside-toplevel
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
  except (OSError, AttributeError):
    return
  if os.getppid() != int(host):  # the host died before the signal was armed
    os._exit(1)


# Comparisons a worker runs before it says it is ready, one of each kind whose first run imports more of sympy (or
# numpy and scipy): "1" against "1" alone left those imports to the first real comparison of each kind, inside its
# deadline: an equation (sympy.combinatorics and sympy.tensor: 2.5 s on a busy 2-core machine), a polynomial
# identity (sympy.physics.units), an interval, a trigonometric identity, a sum evaluated numerically (lambdify:
# numpy and scipy, 2.9 s). A right answer could then time out against the 5 s default, and did so only as the first
# of its kind after a worker (re)start, which depends on the grading history, so a search did not replay.
_WARM_UP_PAIRS = (
    ("1", "1"),
    ("y=\\frac{c_{2}}{x^{2}}+c_{1}x^{3}", "y=c_{1}x^{3}+\\frac{c_{2}}{x^{2}}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("(0,\\infty)", "(0,\\infty)"),
    ("\\sin^2 x+\\cos^2 x", "1"),
    ("\\sum_{n=0}^{\\infty}\\frac{x^{n}}{2^n},R=1", "x<1,R=1"),
)


def _warm_up() -> None:
  """Imports sympy / math-verify and what their checks import lazily (`_WARM_UP_PAIRS`), in this process."""
  for pred, gold in _WARM_UP_PAIRS:
    try:
      math_verify_equal(pred, gold)
    except Exception:  # pylint: disable=broad-except
      pass


# Ground truths a worker keeps parsed. A search grades every candidate of a problem against one gold; 256 covers the
# problems a worker serves at once (a batched search's) with room to spare.
_GOLD_CACHE_SIZE = 256


def _worker_main() -> None:
  """Worker loop over stdin/stdout, "1"/"0" out per JSON line in; EOF ends it.

  `{"gold": gold}` parses a ground truth and keeps its parse (the host sends it before each comparison, under a
  deadline of its own); `[pred, gold]` compares, with the kept parse of `gold` when there is one. A parse depends on
  its text only (math-verify keeps parses too, in a cache of 20 shared by predictions and golds), so keeping it
  changes the time of a comparison, never its verdict.
  """
  _die_with_host()
  # The replies go to a private copy of stdout, and stdout itself to /dev/null: a line some library printed (from
  # Python or C) would otherwise be read by the host as the reply to the request in flight, and the real reply as the
  # next one's (after a gold's parse, a "1" that reads as a verdict of "equal").
  replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="ascii")
  sys.stdout.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, sys.stdout.fileno())
  os.close(devnull)
  logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" warnings
  _warm_up()
  replies.write(_READY + "\n")  # the parent's comparison deadlines start after this line
  replies.flush()
  golds: collections.OrderedDict[str, list] = collections.OrderedDict()
  for line in sys.stdin:
    try:
      request = json.loads(line)
      if isinstance(request, dict):
        gold = request["gold"]
        if gold not in golds:
          try:
            golds[gold] = math_verify_parse(gold)
          except Exception:  # pylint: disable=broad-except  # as an exception in the comparison: "not equal"
            golds[gold] = []
          if len(golds) > _GOLD_CACHE_SIZE:
            golds.popitem(last=False)
        golds.move_to_end(gold)
        result = True
      else:
        pred, gold = request
        result = math_verify_equal(pred, gold, golds.get(gold))
    except Exception:  # pylint: disable=broad-except
      result = False
    sys.stdout.flush()  # what a library printed goes to /dev/null now, not later amid the replies
    replies.write("1\n" if result else "0\n")
    replies.flush()


_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_READY = "ready"
_HOST_PID_ENV = "RSTAR_GRADER_HOST_PID"
_PR_SET_PDEATHSIG = 1


class _Spawner:
  """Starts the math-verify workers from one thread that lasts as long as the process.

  A worker's death signal (`_die_with_host`) follows the thread that started it, not its process: started from a
  caller's short-lived thread, a worker would be killed when that thread ended, maybe in the middle of a comparison
  for another thread (read as a timeout: "not equal").
  """

  _lock = threading.Lock()
  _instance: "_Spawner | None" = None

  def __init__(self):
    self.pid = os.getpid()
    self._requests: queue.Queue = queue.Queue()
    threading.Thread(target=self._serve, name="grader-spawner", daemon=True).start()

  def _serve(self) -> None:
    while True:
      args, kwargs, future = self._requests.get()
      try:
        future.set_result(subprocess.Popen(*args, **kwargs))
      except BaseException as e:  # pylint: disable=broad-except  (handed to the caller)
        future.set_exception(e)
      del args, kwargs, future  # the worker's `Popen` is its caller's to keep alive, not this loop's

  @classmethod
  def popen(cls, *args, **kwargs) -> subprocess.Popen:
    """`subprocess.Popen(*args, **kwargs)`, run on the spawner thread (one per process: a forked child makes its
    own)."""
    with cls._lock:
      if cls._instance is None or cls._instance.pid != os.getpid():
        cls._instance = cls()
      spawner = cls._instance
    future: concurrent.futures.Future = concurrent.futures.Future()
    spawner._requests.put((args, kwargs, future))  # pylint: disable=protected-access
    try:
      return future.result()
    except BaseException:
      # Ctrl-C while the spawner starts it: nobody would stop the worker (a collected `Popen` of a running process
      # stays in subprocess's `_active` list with its pipes, so the worker never reads EOF).
      future.add_done_callback(_kill_unclaimed)
      raise


def _kill_unclaimed(future: concurrent.futures.Future) -> None:
  """Kills and reaps the worker process of a `_Spawner.popen` call that was interrupted."""
  if future.exception() is None:
    proc = future.result()
    proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
      if stream is not None:
        stream.close()


class _Worker:
  """One math-verify subprocess; `call` enforces the deadline by killing it.

  A plain `subprocess` (not `multiprocessing`): no fork of a process that may run JAX threads, and no
  re-import of the caller's `__main__` module as the spawn start method would do. A fresh worker first
  imports sympy and math-verify (seconds) and then says it is ready; only after that does a comparison's
  deadline start, so a worker that replaced a killed one still gets the normal deadline. A worker killed
  for a timeout is restarted at once, so its imports overlap whatever the caller does next.
  """

  def __init__(self):
    self._proc: subprocess.Popen | None = None
    self._buffer = b""
    self._ready = False
    self.closed = False  # set by `Grader.close`: no process is started any more
    self.gold_overrun = False  # whether the last `call` gave None because the gold's parse overran

  def _start(self) -> None:
    if self.closed:
      raise RuntimeError("Grader is closed")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    env[_HOST_PID_ENV] = str(os.getpid())
    # sympy's hashes, and so its set and dict orders inside simplify and solve, follow the str hash seed: a host
    # without PYTHONHASHSEED gave each worker a random one, so a comparison's path and time (against the deadline)
    # could differ between runs and between a worker and its replacement. Fixed, as the sandbox's workers have it.
    env["PYTHONHASHSEED"] = "0"
    self._proc = _Spawner.popen(
        [sys.executable, "-c", "from rstar_jax.grading import _worker_main; _worker_main()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, bufsize=0)
    self._buffer = b""
    self._ready = False
    if self.closed:  # `Grader.close` ran meanwhile and may have looked for a process before this one was there
      self._proc.kill()

  @property
  def alive(self) -> bool:
    return self._proc is not None and self._proc.poll() is None

  def _read_line(self, timeout_s: float) -> bytes | None:
    """The worker's next output line, or None when none came within `timeout_s` (or it died)."""
    deadline = time.monotonic() + timeout_s
    fd = self._proc.stdout.fileno()
    # poll, not select: select refuses fds from 1024 on (ValueError, read as a timeout), and a server holding that
    # many files or sockets had every math-verify comparison graded "not equal".
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while b"\n" not in self._buffer:
      remaining = deadline - time.monotonic()
      if remaining <= 0 or not poller.poll(math.ceil(remaining * 1000)):
        return None
      chunk = os.read(fd, 64)
      if not chunk:
        return None
      self._buffer += chunk
    line, self._buffer = self._buffer.split(b"\n", 1)
    return line.strip()

  def call(self, pred: str, gold: str, timeout_s: float, startup_timeout_s: float,
           gold_timeout_s: float) -> bool | None:
    """math-verify's verdict, or None when it did not answer within `timeout_s`.

    `startup_timeout_s`: how long a fresh worker may take to get ready (not counted in `timeout_s`); a worker that
    does not get ready in time also gives None. `gold_timeout_s`: how long the worker may take to parse `gold`
    (not counted in `timeout_s` either; instant when it kept the parse); an overrun also gives None.

    Raises:
      RuntimeError: the worker was closed before the call (closed during it, it gives None and starts nothing).
    """
    self.gold_overrun = False
    try:
      if not self.alive:
        self._start()
      deadline = time.monotonic() + startup_timeout_s
      while not self._ready:  # lines before the ready line (a library printing on import) are skipped
        line = self._read_line(deadline - time.monotonic())
        if line is None:
          self.kill()
          return None
        self._ready = line == _READY.encode()
      self._proc.stdin.write((json.dumps({"gold": gold}) + "\n").encode())
      if self._read_line(gold_timeout_s) is not None:
        self._proc.stdin.write((json.dumps([pred, gold]) + "\n").encode())
        line = self._read_line(timeout_s)
      else:
        self.gold_overrun = True
        line = None
      if line is not None:
        return line == b"1"
    except (OSError, ValueError):
      pass
    except BaseException:  # Ctrl-C mid-comparison: its answer, still to come, would be read as the next one's
      self.kill()
      raise
    self.kill()
    if not self.closed:
      self._start()  # the replacement imports while the caller goes on
    return None

  def interrupt(self) -> None:
    """SIGKILLs the process from another thread (only sends a signal): the thread in `call` reads EOF and reaps it."""
    proc = self._proc
    if proc is not None:
      try:
        proc.kill()
      except OSError:
        pass

  def kill(self) -> None:
    proc = self._proc  # once: `close` in another thread may kill it too, setting `_proc` to None meanwhile
    if proc is not None:
      if proc.poll() is None:
        proc.kill()
      proc.wait()
      for stream in (proc.stdin, proc.stdout):
        try:
          stream.close()
        except OSError:
          pass
    self._proc = None
    self._buffer = b""
    self._ready = False

  def close(self) -> None:
    self.closed = True  # first: a call running in another thread must not start a replacement
    proc = self._proc  # once, as in `kill`
    if proc is not None and proc.poll() is None:
      try:
        proc.stdin.close()  # EOF ends the worker loop
        proc.wait(timeout=2.0)
      except (OSError, subprocess.TimeoutExpired):
        pass
    self.kill()


class Grader:
  """Thread-safe answer equivalence with a hard per-comparison deadline.

  Args:
    num_workers: math-verify worker processes (comparisons run in parallel up to this many).
    timeout_s: deadline of one math-verify comparison; an overrun counts as "not equal". The one verdict that
      depends on the machine: a pair math-verify calls equal only after more than `timeout_s` (an equation it
      solves for several symbols: seconds on a busy 2-core machine) reads "not equal" on a slower or busier one.
      To replay a search's Q values elsewhere, grade with a generous `timeout_s` on both (a pair that never ends,
      `10^{10^{10}}`, still costs only that deadline, once per distinct pair: verdicts are cached). The ground
      truth's parse is not part of it: see `gold_timeout_s`.
    startup_timeout_s: how long a fresh worker may take to import math-verify and get ready (before the
      deadline of its first comparison starts); a worker that does not get ready counts as an overrun.
    cache_size: verdicts kept for repeated (pred, gold) pairs, least recently used dropped first (a round grades
      millions of answers in one process; kept without a bound they would fill its memory).
    gold_timeout_s: deadline of parsing a ground truth, once per worker and gold (a worker keeps the parses of the
      last 256 golds it saw). math-verify's parse alone of a long gold took seconds (CollegeMath's series solution
      2635: 2 s, 7 s as a worker's first long answer on a busy 2-core machine), and the gold's parse and the
      prediction's, as long, shared `timeout_s`: an answer equal to such a gold read "not equal" depending on the
      machine's load and on what the worker had parsed before. A gold whose parse overruns makes every prediction
      against it "not equal" (one overrun per gold and grader: it is not parsed again).
  """

  def __init__(self, num_workers: int = 1, timeout_s: float = 5.0, startup_timeout_s: float = 60.0,
               cache_size: int = 1 << 16, gold_timeout_s: float = 30.0):
    for name, value in (("num_workers", num_workers), ("cache_size", cache_size)):
      if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if cache_size < 0:
      raise ValueError(f"cache_size must be >= 0, got {cache_size}")
    for name, value in (("timeout_s", timeout_s), ("startup_timeout_s", startup_timeout_s),
                        ("gold_timeout_s", gold_timeout_s)):
      # A deadline of 0, below 0 or NaN is over before math-verify answers: every pair that reaches it (e.g.
      # (x+1)^2 vs x^2+2x+1) was graded "not equal", a warning each, and the search backed up -1 for right answers.
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    self.cache_size = cache_size
    self.timeout_s = float(timeout_s)
    self.startup_timeout_s = float(startup_timeout_s)
    self.gold_timeout_s = float(gold_timeout_s)
    self._slow_golds: set[str] = set()  # golds whose parse overran `gold_timeout_s`
    self._workers = [_Worker() for _ in range(num_workers)]
    self._idle: queue.Queue[_Worker] = queue.Queue()
    for w in self._workers:
      self._idle.put(w)
    self._cache: collections.OrderedDict[tuple[str, str], bool] = collections.OrderedDict()
    self._lock = threading.Lock()
    self._pool = concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="grader")
    self._closed = False
    self.num_timeouts = 0
    # A grader dropped without `close` kept its workers running for good: a collected `Popen` whose process still
    # runs is kept in subprocess's `_active` list with its pipes, so the worker never read EOF (a process and two
    # fds per dropped grader). Not at exit: there the workers' EOF and death signal stop them.
    self._finalizer = weakref.finalize(self, _stop_workers, self._workers, self._pool)
    self._finalizer.atexit = False

  def __enter__(self) -> "Grader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Stops the worker processes (idempotent). Comparisons running in other threads meanwhile raise RuntimeError.

    A worker in use belongs to its caller's thread until it comes back: closing its pipes under that thread (the
    reading end of a comparison) made the thread start a replacement process, which outlived the grader.
    """
    with self._lock:  # two threads closing at once: one does it
      if self._closed:
        return
      self._closed = True
    for w in self._workers:
      w.closed = True
    idle = []
    while True:
      try:
        idle.append(self._idle.get_nowait())
      except queue.Empty:
        break
    for w in idle:
      w.close()
    for w in self._workers:
      if w not in idle:
        w.interrupt()  # its comparison ends at once; its thread reaps the process and gives the worker back
    for _ in range(len(self._workers) - len(idle)):
      self._idle.get().close()
    for w in self._workers:  # a caller that got past the closed check finds a worker, which refuses to start
      self._idle.put(w)
    self._pool.shutdown(wait=True)
    self._finalizer.detach()  # every worker is closed

  def _math_verify(self, pred: str, gold: str) -> bool:
    with self._lock:
      slow_gold = gold in self._slow_golds
    if slow_gold:
      result = None
    else:
      worker = self._idle.get()
      try:
        result = worker.call(pred, gold, self.timeout_s, self.startup_timeout_s, self.gold_timeout_s)
        slow_gold = worker.gold_overrun  # read while the worker is this thread's
      finally:
        self._idle.put(worker)
      if slow_gold and not self._closed:
        with self._lock:
          self._slow_golds.add(gold)
    if result is None and self._closed:  # `close` ended the comparison: no verdict, and no timeout either
      raise RuntimeError("Grader is closed")
    if result is None:
      with self._lock:
        self.num_timeouts += 1
      if slow_gold:
        _LOG.warning("math-verify's parse of gold=%r exceeded %.1fs; pred=%r counted as not equal",
                     gold[:80], self.gold_timeout_s, pred[:80])
      else:
        _LOG.warning("math-verify exceeded %.1fs on pred=%r gold=%r; counted as not equal",
                     self.timeout_s, pred[:80], gold[:80])
      return False
    return result

  def equivalent(self, pred: str | None, gold: str | Sequence[str] | None) -> bool:
    """Whether answer `pred` equals ground truth `gold` (a list: any of them; see module docstring)."""
    if self._closed:
      raise RuntimeError("Grader is closed")
    if pred is None or gold is None:
      return False
    if isinstance(gold, (list, tuple)):
      return any(self.equivalent(pred, g) for g in gold)
    if "boxed" in str(gold):  # a ground truth written as a sentence around its boxed answer(s)
      boxes = boxed_contents(str(gold))
      inner = ", ".join(boxes) if boxes else None  # several boxes: the answer is all of them, not the last
      if inner is not None and inner != str(gold).strip() and self.equivalent(pred, inner):
        return True
    pred, gold = str(pred), str(gold)
    key = (pred, gold)
    with self._lock:
      if key in self._cache:
        self._cache.move_to_end(key)
        return self._cache[key]
    result = self._equivalent_uncached(pred, gold)
    with self._lock:
      self._cache[key] = result
      while len(self._cache) > self.cache_size:
        self._cache.popitem(last=False)
    return result

  def _equivalent_uncached(self, pred: str, gold: str) -> bool:
    pred, gold = _respell(pred), _respell(gold)
    (pred_var, pred_norm, pred_list), (gold_var, gold_norm, gold_list) = _normalize(pred), _normalize(gold)
    if not pred_norm or not gold_norm:
      return False
    if pred_var is not None and gold_var is not None and pred_var != gold_var:
      return self._math_verify(pred, gold)  # `y = 3/2` is not `x = 3/2`: the layers below would drop the names
    if pred_norm == gold_norm or pred_list == gold_list:
      return True
    gold_choice = _choice_letters(gold)
    if gold_choice is not None:
      pred_choice = _choice_letters(pred)
      if pred_choice is not None:
        return pred_choice == gold_choice
    pred_num, gold_num = _number_of(pred_norm), _number_of(gold_norm)
    if pred_num is not None and gold_num is not None:
      return _numbers_equal(pred_num, _decimal_places(pred_norm), gold_num, _decimal_places(gold_norm))
    return self._math_verify(pred, gold)

  def equivalent_batch(self, pairs: Sequence[tuple[str | None, str | None]]) -> list[bool]:
    """`equivalent` over `(pred, gold)` pairs, up to `num_workers` math-verify calls at once."""
    return list(self._pool.map(lambda pg: self.equivalent(*pg), pairs))


def _stop_workers(workers: list[_Worker], pool: concurrent.futures.ThreadPoolExecutor) -> None:
  """Stops a grader's worker processes (its `close`, or its finalizer once it is collected: no call is running
  then, as each holds the grader)."""
  pool.shutdown(wait=False)
  for w in workers:
    w.close()


_DEFAULT: Grader | None = None
_DEFAULT_LOCK = threading.Lock()


def default_grader() -> Grader:
  """A process-wide `Grader` (one worker, 5 s deadline), created on first use."""
  global _DEFAULT
  with _DEFAULT_LOCK:
    if _DEFAULT is None or _DEFAULT._closed:  # pylint: disable=protected-access
      _DEFAULT = Grader()
      atexit.register(_DEFAULT.close)
    return _DEFAULT


def is_equivalent(pred: str | None, gold: str | None) -> bool:
  """`default_grader().equivalent(pred, gold)`."""
  return default_grader().equivalent(pred, gold)
