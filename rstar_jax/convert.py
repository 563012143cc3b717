"""Command line for checkpoint conversion.

  python -m rstar_jax.convert verify --hf-dir DIR    # ours vs transformers on one random padded batch;
                                                     # last line: max_abs_logit_diff=<float>
  python -m rstar_jax.convert import --hf-dir DIR --out CKPT [--ppm]   # HF dir -> orbax checkpoint (+ config.json)
  python -m rstar_jax.convert export --ckpt CKPT --out DIR [--ppm] [--dtype bfloat16]   # orbax -> HF dir

`import` and `export` carry the dir's tokenizer files and `generation_config.json` (its EOS ids) along, and the token
ids of its config.json (`eos_token_id`: where generation stops when there is no generation_config.json).

`verify` needs torch + transformers (the test extra); rstar_jax itself never imports torch elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from rstar_jax import cli


def _verify(args) -> int:
  import jax.numpy as jnp

  from rstar_jax.models import convert, default_positions
  try:
    import torch  # the reference implementation; optional
    import transformers
  except ImportError:
    print("verify needs torch and transformers (pip install -e '.[test]')", file=sys.stderr)
    return 2
  ours = convert.load_qwen2(args.hf_dir)
  reference = transformers.AutoModelForCausalLM.from_pretrained(args.hf_dir, torch_dtype=torch.float32).eval()
  rng = np.random.default_rng(args.seed)
  vocab = ours.config.vocab_size
  tokens = rng.integers(0, vocab, (args.batch, args.length))
  mask = np.ones_like(tokens, dtype=bool)
  for b in range(1, args.batch):  # mixed left padding; row 0 is full length
    mask[b, :rng.integers(1, args.length // 2 + 1)] = False
  with torch.no_grad():
    ref = reference(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits
  mask_j = jnp.asarray(mask)
  logits = ours(jnp.asarray(tokens), default_positions(mask_j), mask_j).logits
  diff = float(np.max(np.abs(np.asarray(logits, np.float32)[mask] - ref.float().numpy()[mask])))
  print(f"checkpoint: {args.hf_dir}  layers={ours.config.num_layers} hidden={ours.config.hidden_size} "
        f"vocab={vocab}  batch={args.batch}x{args.length} (left-padded)")
  print(f"max_abs_logit_diff={diff:.3e}")
  return 0


def _import(args) -> int:
  from rstar_jax.models import checkpoint, convert
  model = convert.load_ppm(args.hf_dir) if args.ppm else convert.load_qwen2(args.hf_dir)
  checkpoint.save_model(model, args.out)
  convert.copy_side_files(args.hf_dir, args.out)  # carried to the export
  convert.copy_token_ids(args.hf_dir, args.out)
  print(f"imported {args.hf_dir} -> {args.out}")
  return 0


def _restore_stderr(saved_fd: int, held=None) -> None:
  """Points file descriptor 2 back at `saved_fd` (and closes that copy), then writes out what `held` caught."""
  sys.stderr.flush()
  os.dup2(saved_fd, 2)
  os.close(saved_fd)
  if held is not None:
    held.seek(0)
    sys.stderr.write(held.read().decode("utf-8", "replace"))
    sys.stderr.flush()


# True when run as `python -m rstar_jax.convert`: the process ends right after the command.
_AS_SCRIPT = False


def _export(args) -> int:
  from rstar_jax.models import checkpoint
  # A damaged checkpoint fails one of orbax's array reads while others are still in flight. Those report
  # themselves later, from TensorStore's threads and when collected, as up to hundreds of lines of tracebacks
  # ("Event loop is closed", "Exception ignored in: <coroutine object _read_array_index_and_device_put>", "Task
  # exception was never retrieved"), before or after our one-line error depending on timing. So file descriptor 2
  # (Python's and native code's output alike) goes to a temporary file during the load: written out after a load
  # that succeeds, dropped after one that fails.
  if sys.stderr is None:  # started with file descriptor 2 closed (`2>&-`): nothing to hold, and nowhere to say why
    try:
      model = checkpoint.load_model(args.ckpt, ppm=args.ppm)
    except ValueError:
      return 1
    return _write_export(args, model)
  sys.stderr.flush()
  stderr_fd = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      model = checkpoint.load_model(args.ckpt, ppm=args.ppm)
    except ValueError as e:  # a damaged checkpoint (the message names its folder and cause): not a traceback
      message = f"python -m rstar_jax.convert export: error: {e}"
      if not _AS_SCRIPT:  # in a caller's process fd 2 is theirs again (a straggler's late report may show there)
        _restore_stderr(stderr_fd)
        print(message, file=sys.stderr)
        return 1
      # The process ends now: the stragglers' reports until then go to /dev/null, ours to the real stderr.
      sys.stderr.flush()
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, 2)
      os.close(devnull)
      with os.fdopen(stderr_fd, "w", encoding="utf-8") as err:
        print(message, file=err)
      return 1
    except BaseException:
      _restore_stderr(stderr_fd, held)
      raise
    _restore_stderr(stderr_fd, held)
  return _write_export(args, model)


def _write_export(args, model) -> int:
  from rstar_jax.models import convert
  if args.ppm:
    convert.save_ppm(model, args.out, dtype=args.dtype)
  else:
    convert.save_qwen2(model, args.out, dtype=args.dtype)
  convert.copy_side_files(args.ckpt, args.out)
  convert.copy_token_ids(args.ckpt, args.out)
  print(f"exported {args.ckpt} -> {args.out}")
  return 0


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m rstar_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  verify = sub.add_parser("verify", help="compare logits with transformers on a random padded batch")
  verify.add_argument("--hf-dir", required=True)
  verify.add_argument("--batch", type=int, default=4,
                      help="rows (those after the first left-padded; default: %(default)s)")
  verify.add_argument("--length", type=int, default=32, help="tokens per row (default: %(default)s)")
  verify.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default: %(default)s)")
  imp = sub.add_parser("import", help="HF dir -> orbax checkpoint")
  imp.add_argument("--hf-dir", required=True)
  imp.add_argument("--out", required=True)
  imp.add_argument("--ppm", action="store_true", help="the dir is a PPM (backbone + value_head.bin)")
  exp = sub.add_parser("export", help="orbax checkpoint -> HF dir")
  exp.add_argument("--ckpt", required=True)
  exp.add_argument("--out", required=True)
  exp.add_argument("--ppm", action="store_true")
  exp.add_argument("--dtype", default=None, help="tensor dtype to write (default: the parameter dtype)")
  return parser


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  problem = _input_problem(args)
  if problem:
    parser.error(problem)
  return {"verify": _verify, "import": _import, "export": _export}[args.command](args)


def _input_problem(args) -> str | None:
  """What is wrong with the command's input paths, --out, dtype or verify batch (a user's mistake, reported without a
  traceback, before any model loads)."""
  from rstar_jax.models.config import ModelConfig, dtype_name  # pylint: disable=import-outside-toplevel
  if args.command == "verify":
    # A batch of 0 failed inside transformers; a padded row (rows 1..) of length 1 would be all padding.
    if args.batch < 1 or args.length < 1 or (args.batch > 1 and args.length < 2):
      return (f"--batch must be >= 1 and --length >= 1 (>= 2 when --batch > 1: rows after the first are "
              f"left-padded); got --batch {args.batch} --length {args.length}")
    if args.seed < 0:  # numpy's default_rng refused it, naming no flag, once both models had loaded
      return f"--seed must be >= 0, got {args.seed}"
  flag, path = ("--ckpt", args.ckpt) if args.command == "export" else ("--hf-dir", args.hf_dir)
  config_file = os.path.join(path, "config.json")
  if not os.path.isdir(path):
    return f"{flag} {path}: no such directory"
  if not os.path.isfile(config_file):
    return f"{flag} {path}: no config.json in it"
  try:  # a broken config.json (its message names the file and field), found before any weights load
    ModelConfig.from_hf_config(config_file)
  except (ValueError, KeyError) as e:
    return str(e.args[0])
  if args.command in ("verify", "import"):
    from rstar_jax.models.convert import HFCheckpoint  # pylint: disable=import-outside-toplevel
    try:  # weights this loader cannot read (a transformers 4 pytorch_model.bin, a missing shard) were a traceback
      HFCheckpoint(path).close()
    except (OSError, ValueError) as e:
      return f"{flag} {e.args[0] if len(e.args) == 1 else e}"  # our messages start with the path
  from rstar_jax.models.convert import value_head_files  # pylint: disable=import-outside-toplevel
  heads = value_head_files(path)
  if args.command == "verify" and heads:  # load_qwen2 refuses a PPM dir (a traceback here)
    return f"--hf-dir {path} holds a PPM ({heads[0]}): verify compares a policy's logits"
  if args.command == "import":
    if args.ppm and not heads:
      return f"--hf-dir {path}: no value_head.bin or value_head.safetensors in it (a PPM dir has one)"
    if heads and not args.ppm:  # imported as a policy, its value head would be dropped without a word
      return f"--hf-dir {path} holds a PPM ({heads[0]}): add --ppm"
  if args.command == "export":
    if not os.path.isdir(os.path.join(path, "params")):
      return f"--ckpt {path}: no orbax 'params' folder in it (write one with `convert import`)"
    try:
      with open(config_file, encoding="utf-8") as f:
        kind = json.load(f).get("rstar_jax_kind")
    except (OSError, ValueError, AttributeError) as e:
      return f"{config_file}: unreadable ({e})"
    if kind in ("ppm", "policy") and kind != ("ppm" if args.ppm else "policy"):
      return f"--ckpt {path} holds a {kind} checkpoint: {'add' if kind == 'ppm' else 'drop'} --ppm"
    if args.dtype is not None:
      try:
        dtype_name(args.dtype)
      except ValueError as e:
        return f"--dtype {args.dtype!r}: {e}"
  if args.command in ("import", "export"):
    # Found now, not by a traceback once the model is loaded: --out (or a folder above it) is a file.
    out = os.path.abspath(args.out)
    while not os.path.exists(out):
      out = os.path.dirname(out)
    if not os.path.isdir(out):
      return f"--out {args.out}: {'is' if out == os.path.abspath(args.out) else out + ' is'} a file, not a folder"
    # A read-only one failed after the model had loaded (minutes for a 7B), by a traceback from inside orbax (import).
    if not os.access(out, os.W_OK | os.X_OK):
      return f"--out {args.out}: {'' if out == os.path.abspath(args.out) else out + ' '}not writable"
    # Both write a config.json: over the input's own, it would lose fields the other format needs (the HF
    # config's eos_token_id and generation fields on import; the rstar_jax_* layout keys load_model reads on export).
    if os.path.realpath(args.out) == os.path.realpath(path):
      return f"--out {args.out} is the input folder ({flag} {path}): write to another folder"
  return None


if __name__ == "__main__":
  _AS_SCRIPT = True
  sys.exit(cli.run(main))
