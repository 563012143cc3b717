"""`rstar_jax.cli.run`: the command lines' exit when the reader of their stdout leaves early."""

import argparse
import os
import re
import subprocess
import sys

import pytest

from rstar_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_with_stdout(stdout, body: str) -> subprocess.CompletedProcess:
  code = ("import sys\n"
          "from rstar_jax import cli\n"
          "def main():\n" + "".join(f"  {line}\n" for line in body.splitlines()) +
          "sys.exit(cli.run(main))\n")
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True,
                        timeout=60, check=False)


def test_a_closed_stdout_ends_quietly_with_sigpipes_status_and_other_broken_pipes_fail():
  read_end, write_end = os.pipe()
  os.close(read_end)  # `| true`: the reader left before the first line
  try:
    # Buffered lines (no flush until exit) and a flushed line: either way no traceback, no "Exception ignored".
    buffered = _run_with_stdout(write_end, "print('x' * 100)\nreturn 0")
    flushed = _run_with_stdout(write_end, "print('x', flush=True)\nprint('never')\nreturn 0")
    # A BrokenPipeError of another pipe (a worker's, say) with stdout closed too is still stdout's reader leaving;
    other = _run_with_stdout(write_end, "raise BrokenPipeError(32, 'Broken pipe')")
  finally:
    os.close(write_end)
  for proc in (buffered, flushed, other):
    assert (proc.returncode, proc.stderr) == (141, ""), proc.stderr[-2000:]
  # ... but with stdout read, it is a real failure: a traceback and exit 1.
  proc = _run_with_stdout(subprocess.PIPE, "print('fine', flush=True)\nraise BrokenPipeError(32, 'Broken pipe')")
  assert (proc.returncode, proc.stdout) == (1, "fine\n") and "BrokenPipeError" in proc.stderr, proc.stderr
  proc = _run_with_stdout(subprocess.PIPE, "print('fine')\nreturn 3")
  assert (proc.returncode, proc.stdout, proc.stderr) == (3, "fine\n", "")


def test_without_a_real_stdout_a_broken_pipe_propagates(capsys):
  def main():
    raise BrokenPipeError(32, "Broken pipe")
  with pytest.raises(BrokenPipeError):  # pytest's capture has no file descriptor: not a pipe whose reader left
    cli.run(main)
  assert cli.run(lambda: 0) == 0 and capsys.readouterr().out == ""



def _parsers():
  """(name, parser) of every command and subcommand."""
  from rstar_jax import convert  # pylint: disable=g-import-not-at-top
  from rstar_jax.generate import __main__ as generate  # pylint: disable=g-import-not-at-top
  yield "generate", generate._parser()  # pylint: disable=protected-access
  subparsers = next(a for a in convert._parser()._actions if a.choices)  # pylint: disable=protected-access
  for command, parser in subparsers.choices.items():
    yield f"convert {command}", parser


def test_every_flag_with_a_default_names_it_in_the_help():
  # `generate --help` said nothing of --n, --seed, --top-p, --top-k, --max-new-tokens (or --temperature's 0), nor
  # `convert verify --help` of --batch, --length, --seed: a user had to read the source to learn 256 tokens per sample.
  names = set()
  for name, parser in _parsers():
    names.add(name)
    help_text = parser.format_help()
    for action in parser._actions:  # pylint: disable=protected-access
      if action.default in (None, False, [], argparse.SUPPRESS):  # unset, a switch, repeatable, or --help
        continue
      # The help as printed (argparse fills %(default)s), on the flag's own lines.
      entry = re.search(rf"^  {re.escape(action.option_strings[-1])} .*?(?=^  -|\Z)", help_text, re.M | re.S)
      assert entry and re.search(rf"default: {re.escape(str(action.default))}\b", " ".join(entry.group().split())), (
          name, action.option_strings, entry and entry.group())
  assert names == {"generate", "convert verify", "convert import", "convert export"}
