"""Command line: generate from (or score with) an HF checkpoint dir, one JSON line per result on stdout.

  python -m rstar_jax.generate --hf-dir DIR --prompts prompts.jsonl [--n 4 --temperature 0.7 --top-p 0.95
      --max-new-tokens 256 --stop '<end_of_step>' --stop '<end_of_code>' --seed 0 --mesh 1,1,1]
  python -m rstar_jax.generate --ppm-dir DIR --prompts texts.jsonl [--transform tanh5]      # PPM values

Prompts file: JSON lines, each a string or an object `{"prompt": str, "n": int?, "seed": int?}` (defaults from the
flags; without a seed, prompt i gets `--seed + i`); a .json file may instead hold one JSON array of those; a file not
ending in .json/.jsonl holds one prompt per line.
Generation prints `{"prompt_index", "sample", "text", "stop_reason", "token_ids", "logprob"}` per sample; a row stops
("length") at the model's context, `max_position_embeddings` tokens with the prompt (`--max-context` sets a smaller
limit) as vLLM's `max_model_len` and the search's `EnginePolicy` stop it: once the prompt and the sample exceed it
(one token past it at most; a longer prompt gets no tokens). Scoring prints `{"prompt_index", "value"}` per prompt: the
value head's raw output unless `--transform` (the search's `PPMScorer` applies tanh5 by default), of the text cut as
`PPMScorer` cuts it (past the model's context, to its first `max_position_embeddings - 1` tokens).
"""

from __future__ import annotations

import argparse
import bisect
import codecs
import itertools
import json
import os
import sys
from typing import Any, Sequence

from rstar_jax import cli, files


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m rstar_jax.generate", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  model = p.add_mutually_exclusive_group(required=True)
  model.add_argument("--hf-dir", help="HF Qwen2 checkpoint dir (generation)")
  model.add_argument("--ppm-dir", help="PPM dir: HF backbone + value_head.bin (scoring)")
  p.add_argument("--prompts", required=True, help="JSONL (or plain text, one prompt per line) file of prompts")
  p.add_argument("--tokenizer", help="tokenizer dir or file (default: the model dir)")
  p.add_argument("--add-rstar-tokens", action="store_true", help="add rStar's step tags as special tokens first")
  p.add_argument("--n", type=int, default=1, help="samples per prompt (default: %(default)s)")
  p.add_argument("--seed", type=int, default=0,
                 help="seed of prompt 0 (prompt i: seed + i) unless a line sets it (default: %(default)s)")
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
  p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 = off (default: %(default)s)")
  p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest; 0 = off (default: %(default)s)")
  p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per sample (default: %(default)s)")
  p.add_argument("--max-context", type=int, default=None,
                 help="vLLM's max_model_len: a row stops once prompt + generated tokens exceed it (default and "
                      "most: the model's max_position_embeddings)")
  p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
  p.add_argument("--rstar-stops", action="store_true", help="stop on rStar's step tags (<end_of_step>, ...)")
  p.add_argument("--eos-id", type=int, action="append", default=None,
                 help="EOS id (repeatable; default: the tokenizer's and generation_config.json's, else config.json's)")
  p.add_argument("--transform", default="raw", choices=("raw", "tanh", "tanh5"),
                 help="PPM value transform (default: raw; the search's PPMScorer uses tanh5)")
  p.add_argument("--dtype", default=None, help="compute dtype override (float32, bfloat16)")
  p.add_argument("--mesh", default=None, help="data,fsdp,tensor mesh sizes (one may be -1), e.g. 1,1,8")
  p.add_argument("--max-rows", type=int, default=None, help="most rows per device batch")
  p.add_argument("--progress", action="store_true", help="progress bar on stderr")
  return p


def read_prompts(path: str, default_n: int, default_seed: int) -> list[dict[str, Any]]:
  """Reads the prompts file -> `[{"prompt", "n", "seed", "line"}]` (`line`: 1-based); errors name the file and line.

  The file is UTF-8 (a leading byte order mark is dropped, as Windows editors write one); lines end with LF, CRLF
  or CR. A name ending in .jsonl (any case) is JSON lines; one ending in .json is a JSON array of prompts (its items'
  `line` is where each starts) or, if the whole file is not one JSON value, JSON lines. A named pipe (`<(...)`,
  /dev/stdin) is read as a plain text file, one prompt per line.
  """
  # Not `isfile`: a pipe (`--prompts <(jq ...)`, /dev/stdin) is read as a file; it was "not found", as a folder was.
  if os.path.isdir(path):
    raise IsADirectoryError(f"prompts file {path} is a folder")
  if not os.path.exists(path):
    raise FileNotFoundError(f"prompts file not found: {path}")
  suffix = os.path.splitext(path)[1].lower()  # `prompts.JSONL` was read as plain text, its JSON as the prompts
  with open(path, "rb") as f:
    data = f.read()
  if data.startswith(codecs.BOM_UTF8):
    data = data[len(codecs.BOM_UTF8):]
  lines = []
  for line_no, raw in enumerate(data.splitlines(), 1):
    try:
      lines.append((line_no, raw.decode("utf-8")))
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}:{line_no}: not valid UTF-8 ({e})") from e
  if suffix not in (".json", ".jsonl"):
    return [dict(prompt=line, n=default_n, seed=default_seed + i, line=line_no)
            for i, (line_no, line) in enumerate((l for l in lines if l[1].strip()))]
  items = _json_array_items(lines) if suffix == ".json" else None
  if items is None:  # JSON lines
    items = []
    for line_no, line in lines:
      if not line.strip():
        continue
      try:
        items.append((line_no, json.loads(line)))
      except (ValueError, RecursionError) as e:  # also a line nested too deeply, an int of over 4300 digits
        raise ValueError(f"{path}:{line_no}: not valid JSON ({e})") from None
  out = []
  for line_no, item in items:
    if isinstance(item, str):
      item = {"prompt": item}
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
      raise ValueError(f"{path}:{line_no}: expected a JSON string or an object with a string field 'prompt'")
    problem = files.lone_surrogate(item["prompt"])  # no tokenizer takes it
    if problem:
      raise ValueError(f"{path}:{line_no}: 'prompt' {problem}")
    n, seed = item.get("n", default_n), item.get("seed", default_seed + len(out))
    if not _is_int(n) or n < 0 or not _is_int(seed):
      raise ValueError(f"{path}:{line_no}: 'n' must be an int >= 0 and 'seed' an int, got n={n!r} seed={seed!r}")
    out.append(dict(prompt=item["prompt"], n=n, seed=seed, line=line_no))
  return out


def _json_array_items(lines: list[tuple[int, str]]) -> list[tuple[int, Any]] | None:
  """A .json file's values `[(line where the value starts, value)]`: the items of the one JSON array the file holds,
  or the one value it holds; None if the file is not one JSON value (then it is read as JSON lines).

  A .json file holding an array was read line by line: `["a", "b"]` on one line failed as "expected a JSON string or
  an object", and an array over several lines as "not valid JSON".
  """
  text = "\n".join(line for _, line in lines)
  try:
    value = json.loads(text)
  except (ValueError, RecursionError):
    return None
  line_starts = list(itertools.accumulate((len(line) + 1 for _, line in lines[:-1]), initial=0))

  def line_at(pos: int) -> int:
    return lines[bisect.bisect_right(line_starts, pos) - 1][0]

  def skip(pos: int, chars: str) -> int:
    while text[pos] in chars:
      pos += 1
    return pos

  if not isinstance(value, list):
    return [(line_at(skip(0, _JSON_WHITESPACE)), value)]
  items, pos, decoder = [], skip(0, _JSON_WHITESPACE) + 1, json.JSONDecoder()
  for _ in value:  # decoded again one by one, for the line each starts on
    start = skip(pos, _JSON_WHITESPACE + ",")
    item, pos = decoder.raw_decode(text, start)
    items.append((line_at(start), item))
  return items


_JSON_WHITESPACE = " \t\n\r"


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _sampler(args: argparse.Namespace):
  """`--temperature 0` is greedy decoding, anything else `Sampling`.

  The flags are checked as `Sampling` checks them (at temperature 1 under greedy decoding, where a `--top-p 5` was
  otherwise ignored unnoticed), and the message names the flag rather than the dataclass field.
  """
  from rstar_jax.generate.sampling import Greedy, Sampling  # pylint: disable=g-import-not-at-top
  try:
    sampling = Sampling(args.temperature or 1.0, args.top_p, args.top_k)
  except ValueError as e:
    field = str(e).split(" ", 1)[0]  # Sampling's messages start with the field's name
    message = str(e).replace("use Greedy() for greedy decoding", "0 for greedy decoding")
    raise ValueError(f"--{field.replace('_', '-')}: {message}") from None
  return Greedy() if args.temperature == 0 else sampling


def _check_paths(args: argparse.Namespace):
  """The model dir holds a readable config.json (and a PPM dir its value head), and the tokenizer path exists.

  Returns:
    The model's `ModelConfig`.
  """
  flag, path = ("--hf-dir", args.hf_dir) if args.hf_dir else ("--ppm-dir", args.ppm_dir)
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"{flag} {path}: {'no config.json in it' if os.path.isdir(path) else 'no such directory'}")
  from rstar_jax.models.config import ModelConfig  # pylint: disable=g-import-not-at-top
  try:  # a broken config.json (its message names the file and field)
    config = ModelConfig.from_hf_config(path)
  except KeyError as e:
    raise ValueError(e.args[0]) from None
  from rstar_jax.models.convert import value_head_files  # pylint: disable=g-import-not-at-top
  heads = value_head_files(path)
  if args.ppm_dir and not heads:
    raise FileNotFoundError(f"--ppm-dir {path}: no value_head.bin or value_head.safetensors in it")
  if args.hf_dir and heads:  # load_qwen2 refuses it too, but only once the prompts are read
    raise ValueError(f"--hf-dir {path} holds a PPM ({heads[0]}): score with --ppm-dir")
  if args.tokenizer and not os.path.exists(args.tokenizer):
    raise FileNotFoundError(f"--tokenizer {args.tokenizer}: no such file or directory")
  bad_eos = [i for i in args.eos_id or () if not 0 <= i < config.vocab_size]
  if bad_eos:  # the Engine refuses them too, but only once the weights have loaded
    raise ValueError(f"--eos-id {bad_eos[0]}: not a token id of the model (vocab_size {config.vocab_size})")
  return config


def _eos_ids(args: argparse.Namespace, tokenizer, model_dir: str) -> list[int]:
  """`--eos-id`, else the tokenizer's EOS id and the checkpoint's `eos_token_id` (`checkpoint_eos_ids`)."""
  from rstar_jax.generate.adapters import checkpoint_eos_ids  # pylint: disable=g-import-not-at-top
  return list(args.eos_id) if args.eos_id is not None else checkpoint_eos_ids(model_dir, tokenizer)


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  # Imports after parsing: `--help` stays instant.
  from rstar_jax import sharding  # pylint: disable=g-import-not-at-top
  from rstar_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from rstar_jax.generate.adapters import STEP_TAGS, PPMScorer, vllm_row_limit  # pylint: disable=g-import-not-at-top
  from rstar_jax.generate.engine import Engine, Request  # pylint: disable=g-import-not-at-top
  from rstar_jax.models import convert  # pylint: disable=g-import-not-at-top
  from rstar_jax.models.config import dtype_name  # pylint: disable=g-import-not-at-top

  model_dir = args.hf_dir or args.ppm_dir
  # Bad input is a usage error, as argparse's own (exit 2, the message naming the file and line, or the flag), and
  # is found before any model loads.
  try:
    if args.n < 0:
      raise ValueError(f"--n must be >= 0, got {args.n}")
    if args.hf_dir and args.max_new_tokens < 1:
      raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.hf_dir and args.max_new_tokens >= 2**31:  # Engine.generate refuses it too, once the model has loaded
      raise ValueError(f"--max-new-tokens must be < 2**31 (token positions are int32), got {args.max_new_tokens}")
    if args.hf_dir and args.max_context is not None and args.max_context < 1:
      raise ValueError(f"--max-context must be >= 1, got {args.max_context}")
    if args.max_rows is not None and args.max_rows < 1:
      raise ValueError(f"--max-rows must be >= 1, got {args.max_rows}")
    prompts = read_prompts(args.prompts, args.n, args.seed)
    sampler = _sampler(args)
    if not all(args.stop):
      raise ValueError("--stop must not be empty")
    config = _check_paths(args)
    if args.hf_dir and args.max_context is not None and args.max_context > config.max_position_embeddings:
      # vLLM refuses such a max_model_len; the rows ran on past the positions the model was trained on.
      raise ValueError(f"--max-context {args.max_context} exceeds the model's max_position_embeddings="
                       f"{config.max_position_embeddings} (the positions it was trained on): use at most that")
    if args.dtype is not None:
      dtype_name(args.dtype)  # an unknown name raises, naming the known ones
    mesh = None
    if args.mesh:
      sizes = [x.strip() for x in args.mesh.split(",")]
      if len(sizes) != 3 or not all(x == "-1" or (x.isdigit() and int(x) >= 1) for x in sizes):
        raise ValueError(f"--mesh must be three comma-separated sizes data,fsdp,tensor (>= 1, or one -1); "
                         f"got {args.mesh!r}")
      try:
        mesh = sharding.make_mesh(*[int(x) for x in sizes])
      except ValueError as e:  # more devices than there are, say
        raise ValueError(f"--mesh {args.mesh}: {e}") from None
    tok = tokenizer_lib.load_tokenizer(args.tokenizer or model_dir)  # a folder without one names what it holds
    eos_ids = None if args.ppm_dir else _eos_ids(args, tok, model_dir)
    try:  # weights this loader cannot read (none, a PyTorch .bin, a cut file) were a traceback once loading began
      convert.HFCheckpoint(model_dir).close()
    except (OSError, ValueError) as e:  # the message starts with the path
      raise ValueError(f"{'--hf-dir' if args.hf_dir else '--ppm-dir'} {e.args[0] if len(e.args) == 1 else e}") from None
  except (OSError, ValueError) as e:
    parser.error(str(e))
  if args.add_rstar_tokens:
    tokenizer_lib.add_rstar_tokens(tok, "ppm" if args.ppm_dir else "policy")
  if args.ppm_dir:  # PPMScorer refuses it too, but only once the model has loaded
    split = [tag for tag in STEP_TAGS if len(tok.encode(tag)) != 1]
    if split:
      parser.error(f"--ppm-dir: the tokenizer splits rStar's step tags ({', '.join(split)}) into several tokens; the "
                   "PPM was trained with each as one token: use the PPM export's tokenizer, or add --add-rstar-tokens")
  overrides = {} if args.dtype is None else {"dtype": args.dtype}
  ids = tok.encode_batch([p["prompt"] for p in prompts])
  for p, prompt_ids in zip(prompts, ids):
    if not prompt_ids:
      parser.error(f"{args.prompts}:{p['line']}: the prompt encodes to no tokens")

  if args.ppm_dir:
    ppm = convert.load_ppm(args.ppm_dir, mesh=mesh, scan_layers=False, **overrides)
    # Through the search's scorer, so a text is cut to the model's context as the search (and official) cut it.
    scorer = PPMScorer(Engine(ppm, tokenizer=tok, mesh=mesh, max_rows=args.max_rows), transform=args.transform)
    values = scorer.score([p["prompt"] for p in prompts])
    for i, value in enumerate(values.tolist()):
      print(json.dumps({"prompt_index": i, "value": value}), flush=True)
    return 0

  # The model's context by default, as vLLM's max_model_len and the search's EnginePolicy: positions past it are
  # ones the model was never trained on.
  max_context = config.max_position_embeddings if args.max_context is None else args.max_context
  model = convert.load_qwen2(args.hf_dir, mesh=mesh, scan_layers=False, **overrides)
  engine = Engine(model, tokenizer=tok, eos_ids=eos_ids, mesh=mesh, max_rows=args.max_rows)
  stop = list(args.stop) + (list(tokenizer_lib.STEP_STOP_STRINGS) if args.rstar_stops else [])
  results = engine.generate([Request(i, n=p["n"], seed=p["seed"]) for i, p in zip(ids, prompts)], sampler,
                            max_new_tokens=args.max_new_tokens, stop=list(dict.fromkeys(stop)),
                            max_context=vllm_row_limit(max_context), progress=args.progress)
  for i, row in enumerate(results):
    for j, r in enumerate(row):
      print(json.dumps({"prompt_index": i, "sample": j, "text": r.text, "stop_reason": r.stop_reason,
                        "token_ids": list(r.token_ids), "logprob": r.logprob}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(cli.run(main))
