"""`EnginePolicy` / `PPMScorer` (the search's Policy / Scorer) and the command line, on text prompts."""

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from generate_helpers import (TEST_BUCKETS, VOCAB, hf_values, load_tiny, tiny_hf, tiny_ppm_dir, tiny_tokenizer,
                              tiny_tokenizer_dir)

from rstar_jax.generate import Engine, EnginePolicy, Greedy, PPMScorer, Request, Sampling, checkpoint_eos_ids
from rstar_jax.generate.__main__ import main
from rstar_jax.models import convert
from rstar_jax.search.interfaces import Policy, Scorer, StepCandidate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TEXTS = ["Question: what is 6 * 7?\n<|assistant|>: Let's think step by step.\n",
         "Question: a train leaves at noon.\n<|assistant|>: ",
         "x = 1\nprint(x)<end_of_step>"]


def test_engine_policy_returns_step_candidates_matching_the_engine():
  tok = tiny_tokenizer()
  engine = Engine(load_tiny(), tokenizer=tok, buckets=TEST_BUCKETS)
  policy = EnginePolicy(engine, temperature=0.7, top_k=30, top_p=0.85, max_new_tokens=16)
  assert isinstance(policy, Policy)
  stop = ["<end_of_step>", "<end_of_code>", "e"]
  out = policy.generate(TEXTS, n=3, seeds=[5, 6, 7], stop=stop)
  assert [len(row) for row in out] == [3, 3, 3]
  assert all(isinstance(c, StepCandidate) for row in out for c in row)
  direct = engine.generate([Request(tok.encode(t), n=3, seed=s) for t, s in zip(TEXTS, (5, 6, 7))],
                           Sampling(0.7, top_k=30, top_p=0.85), max_new_tokens=16, stop=stop)
  assert [[(c.text, c.stop_reason) for c in row] for row in out] == [[(r.text, r.stop_reason) for r in row]
                                                                     for row in direct]
  assert any(c.stopped_at_string for row in out for c in row)
  with pytest.raises(ValueError, match="seeds"):
    policy.generate(TEXTS, n=1, seeds=[1], stop=stop)
  with pytest.raises(TypeError, match="takes a sequence of prompts, got one string"):  # was "5 prompts but 1 seeds"
    policy.generate("hello", n=1, seeds=[1], stop=stop)


@pytest.mark.parametrize("seed", [1.5, 1.0, "1", None, True])
def test_engine_policy_refuses_a_seed_that_is_no_integer_as_the_engine_does(seed):
  # `int(seed)` ran first: 1.5 and 1.2 both drew with seed 1 (two search seeds, one set of candidates), "1" was read
  # as 1, None failed as int()'s bare TypeError; the engine itself refuses a Request(seed=1.5).
  tok = tiny_tokenizer()
  engine = Engine(load_tiny(), tokenizer=tok, buckets=TEST_BUCKETS)
  with pytest.raises(TypeError, match=r"request 0: seed must be an integer"):
    engine.generate([Request(tok.encode("a"), seed=seed)], Greedy(), max_new_tokens=2)
  policy = EnginePolicy(engine, temperature=1.0, max_new_tokens=2)
  with pytest.raises(TypeError, match=rf"seeds\[1\] must be an integer, got {re.escape(repr(seed))}"):
    policy.generate(["a", "b"], n=1, seeds=[3, seed], stop=[])
  assert policy.generate(["a"], n=2, seeds=np.array([2**63 + 5], np.uint64), stop=[]) == policy.generate(
      ["a"], n=2, seeds=[2**63 + 5], stop=[])


def test_checkpoint_eos_ids_are_the_tokenizer_eos_and_what_transformers_reads_from_generation_config(tmp_path):
  """An instruct checkpoint ends turns with ids listed only in generation_config.json (vLLM stops on those too)."""
  import transformers  # pylint: disable=g-import-not-at-top
  tok = tiny_tokenizer()
  assert tok.eos_id is not None
  assert checkpoint_eos_ids(tmp_path, tok) == [tok.eos_id]  # no generation_config.json
  assert checkpoint_eos_ids(tmp_path) == []
  for eos in (7, [9, 7, tok.eos_id]):
    transformers.GenerationConfig(eos_token_id=eos).save_pretrained(tmp_path)
    theirs = transformers.GenerationConfig.from_pretrained(tmp_path).eos_token_id
    assert checkpoint_eos_ids(tmp_path, tok) == sorted({tok.eos_id, *np.atleast_1d(theirs).tolist()})
  (tmp_path / "generation_config.json").write_text('{"eos_token_id": [1, true]}')
  with pytest.raises(ValueError, match=r"generation_config.json: eos_token_id must be a token id"):
    checkpoint_eos_ids(tmp_path, tok)
  # The tokenizer's folder in place of the tokenizer was read as one without an EOS: its id was silently left out.
  with pytest.raises(TypeError, match=r"tokenizer must be a loaded tokenizer .* or None, got str"):
    checkpoint_eos_ids(tmp_path, str(tiny_tokenizer_dir()))


def test_checkpoint_eos_ids_fall_back_to_config_json_without_a_generation_config(tmp_path):
  """vLLM (`try_get_generation_config`) and transformers build the generation config from config.json when a
  checkpoint has no generation_config.json: its `eos_token_id` then ends rows too (it was left out here)."""
  import transformers  # pylint: disable=g-import-not-at-top
  tok = tiny_tokenizer()
  transformers.Qwen2Config(vocab_size=VOCAB, eos_token_id=[7, 9]).save_pretrained(tmp_path)
  assert not (tmp_path / "generation_config.json").exists()
  theirs = transformers.GenerationConfig.from_model_config(transformers.AutoConfig.from_pretrained(tmp_path))
  assert checkpoint_eos_ids(tmp_path, tok) == sorted({tok.eos_id, *theirs.eos_token_id}) == [7, 9, tok.eos_id]
  assert checkpoint_eos_ids(tmp_path) == [7, 9]
  # With a generation_config.json, that file alone counts (config.json's ids are not added), as for both readers.
  transformers.GenerationConfig(eos_token_id=11).save_pretrained(tmp_path)
  assert transformers.GenerationConfig.from_pretrained(tmp_path).eos_token_id == 11
  assert checkpoint_eos_ids(tmp_path, tok) == [11, tok.eos_id]
  (tmp_path / "generation_config.json").unlink()
  (tmp_path / "config.json").write_text('{"eos_token_id": "7"}')
  with pytest.raises(ValueError, match=r"config.json: eos_token_id must be a token id"):
    checkpoint_eos_ids(tmp_path, tok)


def test_checkpoint_eos_ids_refuses_a_model_dir_that_does_not_exist(tmp_path):
  # A mistyped dir read as "no generation_config.json": an instruct model's <|im_end|> was silently dropped, and its
  # rows ran on to max_new_tokens (vLLM and transformers fail on a missing model dir).
  import transformers  # pylint: disable=g-import-not-at-top
  missing = tmp_path / "Qwen2.5-Math-7B-Instrcut"
  with pytest.raises(OSError):
    transformers.GenerationConfig.from_pretrained(missing)
  with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(missing))}: no such checkpoint directory"):
    checkpoint_eos_ids(missing, tiny_tokenizer())
  (tmp_path / "file").write_text("")
  with pytest.raises(FileNotFoundError, match=r"file: no such checkpoint directory"):
    checkpoint_eos_ids(tmp_path / "file")


def test_ppm_scorer_values_with_transform():
  tok = tiny_tokenizer()
  scorer = PPMScorer(Engine(convert.load_ppm(tiny_ppm_dir()[0]), tokenizer=tok, buckets=TEST_BUCKETS),
                     transform="tanh5")
  assert isinstance(scorer, Scorer)
  values = scorer.score(TEXTS)
  assert values.dtype == np.float32
  np.testing.assert_allclose(values, np.tanh(hf_values(tok.encode_batch(TEXTS)) / 5), atol=1e-4)



def test_threads_sharing_a_policy_a_scorer_and_their_engines_get_what_each_call_gets_alone():
  """A server or a thread pool driving several searches shares these objects. Each engine call kept its bookkeeping
  in the engine (`stats`, reset at the start of every call): a `loglikelihood` started while a `generate` ran left
  it a dict without its counters, and the generate failed with KeyError 'prefill_s' once its tokens were done."""
  tok = tiny_tokenizer()
  engine = Engine(load_tiny(), tokenizer=tok, buckets=TEST_BUCKETS)  # the programs of the tests above
  policy = EnginePolicy(engine, temperature=0.7, top_k=30, top_p=0.85, max_new_tokens=16)
  scorer = PPMScorer(Engine(convert.load_ppm(tiny_ppm_dir()[0]), tokenizer=tok, buckets=TEST_BUCKETS))
  stop = ["<end_of_step>", "<end_of_code>", "e"]
  calls = []
  for i in range(6):  # one shape per kind (compiled once), other seeds and texts
    calls.append(lambda i=i: policy.generate(TEXTS, n=3, seeds=[i, i + 10, i + 20], stop=stop))
    calls.append(lambda i=i: scorer.score(TEXTS[i % 3:] + TEXTS[:i % 3]).tolist())
    calls.append(lambda i=i: [x.tolist() for x in engine.loglikelihood([tok.encode(TEXTS[0])], [[i + 1, 7]])])
  serial = [call() for call in calls]
  # The scorer's serial values are the transformers PPM's (the independent reference for one of the three kinds).
  np.testing.assert_allclose(serial[1], np.tanh(hf_values(tok.encode_batch(TEXTS)) / 5), atol=1e-4)
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    futures = [pool.submit(call) for call in calls]
    assert [f.result(timeout=120) for f in futures] == serial
  # The stats are one call's own: a generate's are whole, each batch of one call's shape.
  policy.generate(TEXTS, n=3, seeds=[1, 2, 3], stop=stop)
  assert {"prefill_s", "decode_s", "steps"} <= set(engine.stats)
  assert sum(b["num_rows"] for b in engine.stats["batches"]) == 9

def test_ppm_scorer_keeps_a_bfloat16_checkpoints_value_head_in_float32(tmp_path):
  # The official rm_engine loads value_head.bin into a float32 ValueHead whatever the backbone dtype: a bf16 PPM
  # checkpoint's head must not be rounded to bf16 (that shifted every value by ~0.4% of the head's weights).
  import shutil  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  src, weight, bias = tiny_ppm_dir()
  transformers.Qwen2ForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(tmp_path)
  shutil.copy(src / "value_head.bin", tmp_path / "value_head.bin")
  ppm = convert.load_ppm(tmp_path, scan_layers=False)
  assert ppm.config.param_dtype == "bfloat16"
  np.testing.assert_array_equal(np.asarray(ppm.value_head.kernel[...]), weight.T)
  np.testing.assert_array_equal(np.asarray(ppm.value_head.bias[...]), bias)
  tok = tiny_tokenizer()
  scorer = PPMScorer(Engine(ppm, tokenizer=tok, buckets=TEST_BUCKETS), transform="raw")
  ids = tok.encode_batch(TEXTS)
  hidden = [np.asarray(ppm.model(np.asarray([i]), np.arange(len(i))[None], np.ones([1, len(i)], bool))[0][0, -1],
                       np.float32) for i in ids]
  np.testing.assert_allclose(scorer.score(TEXTS), [h @ weight[0] + bias[0] for h in hidden], rtol=1e-5, atol=1e-5)


def test_texts_past_the_model_context_are_cut_as_the_official_search():
  # The tiny model has 1024 positions: the policy never goes past them (a prompt longer than them gets an empty
  # "length" step), and the PPM scores a text's first 1023 tokens (the official scorer: context length minus one).
  tok = tiny_tokenizer()
  long_text = " ".join(f"word{i} = {i * 7}" for i in range(600))
  ids = tok.encode(long_text)
  assert len(ids) > 1100
  policy = EnginePolicy(Engine(load_tiny(), tokenizer=tok, buckets=TEST_BUCKETS), temperature=0, max_new_tokens=8)
  assert policy.max_context == 1024
  assert policy.generate([long_text], n=1, seeds=[0], stop=["<end_of_step>"]) == [[StepCandidate("", "length")]]
  scorer = PPMScorer(Engine(convert.load_ppm(tiny_ppm_dir()[0]), tokenizer=tok, buckets=TEST_BUCKETS),
                     transform="raw")
  np.testing.assert_allclose(scorer.score([long_text]), hf_values([ids[:1023]]), atol=1e-4)


def _vllm_temperature(temperature):
  """The temperature vLLM 0.6.6 samples at, None for greedy: `sampling_params.py` `SamplingParams.__post_init__`
  raises `0 < temperature < _MAX_TEMP` (1e-2) to _MAX_TEMP, then `temperature < _SAMPLING_EPS` (1e-5) is greedy."""
  if 0 < temperature < 1e-2:
    temperature = 1e-2
  return None if temperature < 1e-5 else temperature


def test_engine_policy_samples_at_the_temperature_vllm_samples_at():
  # vLLM raises a temperature in (0, 0.01) to 0.01 (so 1e-6 is no greedy decoding there); the policy sampled at the
  # tiny temperature itself, near-greedy: its n candidates were far less diverse than vLLM's.
  tok = tiny_tokenizer()
  engine = Engine(load_tiny(), tokenizer=tok, buckets=TEST_BUCKETS)
  for temperature in (0, 1e-7, 1e-5, 1e-3, 0.01, 0.7, 1.3):
    sampler = EnginePolicy(engine, temperature=temperature, top_p=0.9, max_new_tokens=8).sampler
    expected = _vllm_temperature(temperature)
    assert sampler == (Greedy() if expected is None else Sampling(expected, 0.9, 0)), temperature
  policy = EnginePolicy(engine, temperature=1e-4, max_new_tokens=8)
  direct = engine.generate([Request(tok.encode(TEXTS[0]), n=4, seed=3)], Sampling(0.01), max_new_tokens=8)
  assert policy.generate(TEXTS[:1], n=4, seeds=[3], stop=[]) == [[StepCandidate(r.text, r.stop_reason)
                                                                    for r in direct[0]]]


def _vllm_output_len(prompt_len, max_tokens, max_model_len):
  """How many tokens vLLM 0.6.6 generates for a prompt when neither EOS nor a stop string ends it (rStar's engine:
  `enforce_eager=True`, so no async output processor). Transcribed from `core/scheduler.py`
  `Scheduler._schedule_prefills` (a prompt longer than `_get_prompt_limit` (max_model_len) is FINISHED_IGNORED: no
  tokens, finish_reason "length") and `engine/output_processor/stop_checker.py` `StopChecker.maybe_stop_sequence`
  (after each appended token: `seq.get_len() > max_model_len`, then `get_output_len() == max_tokens`)."""
  if prompt_len > max_model_len:
    return 0
  out = 0
  while True:
    out += 1
    if prompt_len + out > max_model_len or out == max_tokens:
      return out


def _text_of_length(tok, ids, length):
  """A text that encodes to exactly `length` tokens: a round-tripping prefix of `ids`, found at or above `length`."""
  for cut in range(length, len(ids)):
    text = tok.decode(ids[:cut])
    if len(tok.encode(text)) == length:
      return text
  raise AssertionError(f"no text of {length} tokens")


def test_engine_policy_stops_at_the_model_context_as_vllm():
  # vLLM 0.6.6 checks `seq.get_len() > max_model_len` after appending a token: a step may end one token past the
  # context (that token is sampled, never fed), and a prompt of exactly max_model_len tokens still gets one token.
  # Only longer prompts are ignored (""). The policy stopped one token earlier, so a prompt filling the context got
  # ("", "length") where vLLM gives a one-token step.
  tok = tiny_tokenizer()
  ids = tok.encode(" ".join(f"w{i % 89}" for i in range(900)))
  assert len(ids) > 1040
  engine = Engine(load_tiny(), tokenizer=tok, eos_ids=(), buckets=TEST_BUCKETS)
  policy = EnginePolicy(engine, temperature=0, max_new_tokens=8)
  assert policy.max_context == 1024
  for length in (1019, 1020, 1023, 1024, 1025):
    text = _text_of_length(tok, ids, length)
    expected = _vllm_output_len(length, 8, 1024)
    (got,) = policy.generate([text], n=1, seeds=[0], stop=[])
    if expected == 0:
      assert got == [StepCandidate("", "length")], length
      continue
    (ref,) = engine.generate([Request(tok.encode(text))], Greedy(), max_new_tokens=expected)[0]
    assert len(ref.token_ids) == expected
    assert got == [StepCandidate(ref.text, "length")], length


def test_command_line_prints_one_json_line_per_result(tmp_path, capsys):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("\n".join([json.dumps(TEXTS[0]), json.dumps({"prompt": TEXTS[1], "n": 2, "seed": 9})]) + "\n")
  from generate_helpers import tiny_hf  # pylint: disable=g-import-not-at-top
  assert main(["--hf-dir", str(tiny_hf()[0]), "--tokenizer", str(tiny_tokenizer_dir()), "--prompts", str(prompts),
               "--max-new-tokens", "6", "--stop", "e"]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(x["prompt_index"], x["sample"]) for x in lines] == [(0, 0), (1, 0), (1, 1)]
  engine = Engine(load_tiny(), tokenizer=tiny_tokenizer())
  tok = tiny_tokenizer()
  expected = engine.generate([Request(tok.encode(TEXTS[0])), Request(tok.encode(TEXTS[1]), n=2, seed=9)], Greedy(),
                             max_new_tokens=6, stop=["e"])
  for line, r in zip(lines, [expected[0][0], *expected[1]]):
    assert (line["text"], line["stop_reason"], tuple(line["token_ids"])) == (r.text, r.stop_reason, r.token_ids)
    assert line["logprob"] == pytest.approx(r.logprob, abs=1e-5)


def _assert_usage_error(capsys, argv, message):
  """A message on stderr and exit 2, as argparse's own usage errors (and the other CLIs'); not a traceback."""
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2, argv
  err = capsys.readouterr().err
  assert err.startswith("usage: python -m rstar_jax.generate") and re.search(message, err), err


def test_command_line_reports_bad_input(tmp_path, capsys):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('"fine"\n{"prompt": 3}\n')
  good = tmp_path / "good.jsonl"
  good.write_text('"fine"\n')
  for argv, message in [
      (["--prompts", str(bad)], r"error: .*bad.jsonl:2: expected a JSON string or an object"),
      (["--prompts", str(tmp_path / "missing.jsonl")], r"error: prompts file not found: .*missing.jsonl"),
      (["--prompts", str(good), "--temperature", "0.7", "--top-p", "0"], r"error: --top-p: top_p must be in \(0, 1\]"),
      (["--prompts", str(good), "--stop", ""], r"error: --stop must not be empty"),
      (["--prompts", str(good)], r"error: --hf-dir .*: no config.json in it"),
  ]:
    _assert_usage_error(capsys, ["--hf-dir", str(tmp_path)] + argv, message)  # no model is loaded first
  model = tmp_path / "model"
  model.mkdir()
  from generate_helpers import tiny_hf  # pylint: disable=g-import-not-at-top
  config = json.loads((tiny_hf()[0] / "config.json").read_text())
  (model / "config.json").write_text(json.dumps(config))
  capsys.readouterr()  # transformers' progress bars, if tiny_hf() wrote the model just now
  for argv, message in [
      (["--hf-dir", str(tmp_path / "missing")], r"error: --hf-dir .*missing: no such directory"),
      (["--ppm-dir", str(model)], r"error: --ppm-dir .*model: no value_head.bin or value_head.safetensors"),
      (["--hf-dir", str(model), "--tokenizer", str(tmp_path / "tok")], r"error: --tokenizer .*tok: no such file"),
      (["--hf-dir", str(model), "--dtype", "float99"], r"error: unknown dtype 'float99'; expected one of"),
      (["--hf-dir", str(model), "--mesh", "1,x,1"], r"error: --mesh must be three comma-separated sizes"),
      # These were tracebacks: the mesh's ValueError, the tokenizer loader's FileNotFoundError.
      (["--hf-dir", str(model), "--mesh", "4,4,4"], r"error: --mesh 4,4,4: mesh data=4 x fsdp=4 x tensor=4 needs 64"),
      (["--hf-dir", str(model), "--mesh", "0,1,1"], r"error: --mesh must be three comma-separated sizes"),
      (["--hf-dir", str(model), "--tokenizer", str(model)], r"error: no tokenizer in .*model"),
  ]:
    _assert_usage_error(capsys, ["--prompts", str(good)] + argv, message)
  # A PPM dir given as the policy (load_qwen2 refuses it): a usage error before the model loads.
  (model / "value_head.bin").write_bytes(b"")
  _assert_usage_error(capsys, ["--prompts", str(good), "--hf-dir", str(model)],
                      r"error: --hf-dir .*model holds a PPM \(value_head.bin\): score with --ppm-dir")
  # A broken config.json was a traceback (a TypeError naming no file for a non-object) once loading began.
  for content, message in [("[]", r"config.json: expected a JSON object, got list"),
                           (json.dumps(dict(config, hidden_size="64")),
                            r"config.json: field 'hidden_size' must be an integer >= 1, got '64'"),
                           (json.dumps({k: v for k, v in config.items() if k != "vocab_size"}),
                            r"config.json: missing field 'vocab_size'")]:
    (model / "config.json").write_text(content)
    _assert_usage_error(capsys, ["--prompts", str(good), "--hf-dir", str(model)], message)
  # So was a broken generation_config.json (a JSONDecodeError or AttributeError), after the model had loaded.
  hf_dir = tmp_path / "hf"
  shutil.copytree(tiny_hf()[0], hf_dir)
  capsys.readouterr()
  for content, message in [("{", r"generation_config.json: not valid JSON"),
                           ("[2]", r"generation_config.json: expected a JSON object, got list"),
                           ('{"eos_token_id": "2"}', r"generation_config.json: eos_token_id must be a token id")]:
    (hf_dir / "generation_config.json").write_text(content)
    _assert_usage_error(capsys, ["--prompts", str(good), "--hf-dir", str(hf_dir), "--tokenizer",
                                 str(tiny_tokenizer_dir())], message)


def test_command_line_max_rows_splits_batches_and_refuses_a_count_below_one(tmp_path, capsys):
  prompts = tmp_path / "texts.jsonl"
  prompts.write_text("".join(json.dumps(t) + "\n" for t in TEXTS))
  argv = ["--ppm-dir", str(tiny_ppm_dir()[0]), "--tokenizer", str(tiny_tokenizer_dir()), "--prompts", str(prompts)]
  assert main(argv + ["--max-rows", "1"]) == 0
  values = [json.loads(line)["value"] for line in capsys.readouterr().out.splitlines()]
  np.testing.assert_allclose(values, hf_values(tiny_tokenizer().encode_batch(TEXTS)), atol=1e-4)
  # -1 cut no batch: every value printed was 0.0 (and generation crashed on results it never filled).
  for rows in ("0", "-1"):
    _assert_usage_error(capsys, argv + ["--max-rows", rows], rf"error: --max-rows must be >= 1, got {rows}")
  with pytest.raises(ValueError, match="max_rows must be an integer >= 1"):
    Engine(convert.load_ppm(tiny_ppm_dir()[0]), max_rows=-1)


def test_prompts_file_json_array_and_suffix_case(tmp_path):
  """A .json file may hold one JSON array (it was read as JSON lines: an error on line 1), each item named by the line
  it starts on; a .json of JSON lines still reads as before; `.JSONL` is JSON lines (it was read as plain text)."""
  from rstar_jax.generate.__main__ import read_prompts  # pylint: disable=g-import-not-at-top

  def read(name, text, default_seed=0):
    (tmp_path / name).write_text(text)
    return [(p["prompt"], p["n"], p["seed"], p["line"]) for p in read_prompts(str(tmp_path / name), 1, default_seed)]

  assert read("one_line.json", '["a", "b"]') == [("a", 1, 0, 1), ("b", 1, 1, 1)]
  assert read("array.json", '\n[\n  "a",\n  {"prompt": "b, \\"c\\"", "n": 3},\n\n  "d"]\n') == [
      ("a", 1, 0, 3), ('b, "c"', 3, 1, 4), ("d", 1, 2, 6)]
  assert read("object.json", '\n{"prompt": "x", "seed": 4}\n') == [("x", 1, 4, 2)]
  assert read("lines.json", '{"prompt": "x"}\n"y"\n', 5) == [("x", 1, 5, 1), ("y", 1, 6, 2)]
  assert read("upper.JSONL", '{"prompt": "x"}\n"y"\n') == [("x", 1, 0, 1), ("y", 1, 1, 2)]
  assert read("upper.JSON", '["x"]') == [("x", 1, 0, 1)]
  (tmp_path / "bad.json").write_text('[\n"a",\n5]')
  with pytest.raises(ValueError, match=r"bad.json:3: expected a JSON string or an object"):
    read_prompts(str(tmp_path / "bad.json"), 1, 0)
  assert read("plain.txt", '["a", "b"]') == [('["a", "b"]', 1, 0, 1)]  # other names: one prompt per line


def test_command_line_prompts_file_encoding_and_flags(tmp_path, capsys):
  """A byte order mark is not part of the first prompt; bad bytes, a boolean `n` and bad flags are named."""
  from rstar_jax.generate.__main__ import read_prompts  # pylint: disable=g-import-not-at-top
  text = tmp_path / "prompts.txt"
  text.write_bytes(b"\xef\xbb\xbfWhat is 6 * 7?\r\nsecond\n")
  assert [p["prompt"] for p in read_prompts(str(text), 1, 0)] == ["What is 6 * 7?", "second"]
  lines = tmp_path / "bom.jsonl"
  lines.write_bytes(b'\xef\xbb\xbf"first"\n{"prompt": "x", "n": 2}\n')
  assert [(p["prompt"], p["n"]) for p in read_prompts(str(lines), 1, 0)] == [("first", 1), ("x", 2)]
  latin = tmp_path / "latin.jsonl"
  latin.write_bytes(b'"fine"\n"caf\xe9"\n')
  boolean = tmp_path / "boolean.jsonl"
  boolean.write_text('{"prompt": "x", "n": true}\n')
  good = tmp_path / "good.jsonl"
  good.write_text('"fine"\n')
  # json reads a "\ud83d" escape (a cut emoji) as a lone surrogate: the tokenizer failed later on "text 1", naming
  # no file or line; a line nested too deeply was a bare RecursionError.
  surrogate = tmp_path / "surrogate.jsonl"
  surrogate.write_text('"fine"\n{"prompt": "cut \\ud83d"}\n')
  nested = tmp_path / "nested.jsonl"
  nested.write_text('"fine"\n' + "[" * 100000 + "\n")
  for argv, message in [
      (["--prompts", str(surrogate)], r"error: .*surrogate.jsonl:2: 'prompt' holds a lone surrogate '\\ud83d' at "
                                      r"position 4"),
      (["--prompts", str(nested)], r"error: .*nested.jsonl:2: not valid JSON"),
      (["--prompts", str(latin)], r"error: .*latin.jsonl:2: not valid UTF-8"),
      (["--prompts", str(boolean)], r"error: .*boolean.jsonl:1: 'n' must be an int"),
      (["--prompts", str(good), "--n", "-1"], r"error: --n must be >= 0"),
      (["--prompts", str(good), "--max-new-tokens", "0"], r"error: --max-new-tokens must be >= 1"),
      (["--prompts", str(good), "--max-rows", "0"], r"error: --max-rows must be >= 1"),
      # Every row came back "" with stop reason "length" (no room under the context limit), exit 0.
      (["--prompts", str(good), "--max-context", "0"], r"error: --max-context must be >= 1, got 0"),
      # The sampling errors named the dataclass field and told a command-line user to "use Greedy()"; with greedy
      # decoding (the default --temperature 0) a --top-p or --top-k out of range was ignored without a word.
      (["--prompts", str(good), "--temperature", "-1"],
       r"error: --temperature: temperature must be > 0 and finite \(0 for greedy decoding\), got -1.0"),
      (["--prompts", str(good), "--top-p", "5"], r"error: --top-p: top_p must be in \(0, 1\], got 5.0"),
      (["--prompts", str(good), "--top-k", "-5", "--temperature", "0.7"], r"error: --top-k: top_k must be a non-neg"),
  ]:
    _assert_usage_error(capsys, ["--hf-dir", str(tmp_path)] + argv, message)
  # An --eos-id no row can generate ended no row (they all ran to --max-new-tokens); the model has 512 ids.
  from generate_helpers import tiny_hf  # pylint: disable=g-import-not-at-top
  model_dir = str(tiny_hf()[0])
  capsys.readouterr()  # the first build of the tiny model writes a progress line to stderr
  for eos in ("512", "-1"):
    _assert_usage_error(capsys, ["--hf-dir", model_dir, "--tokenizer", str(tiny_tokenizer_dir()), "--prompts",
                                 str(good), "--eos-id", "502", "--eos-id", eos],
                        rf"error: --eos-id {eos}: not a token id of the model \(vocab_size 512\)")


def test_command_line_names_the_line_of_a_prompt_that_encodes_to_nothing(tmp_path, capsys):
  # The message named "prompt 1" (0-based, blank lines skipped), not the line (3) the module docstring promises.
  from generate_helpers import tiny_hf  # pylint: disable=g-import-not-at-top
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('"fine"\n\n{"prompt": ""}\n')
  model_dir = tiny_hf()[0]
  capsys.readouterr()  # the first build of the tiny model writes a progress line to stderr
  _assert_usage_error(capsys, ["--hf-dir", str(model_dir), "--tokenizer", str(tiny_tokenizer_dir()), "--prompts",
                               str(prompts)], r"error: .*prompts.jsonl:3: the prompt encodes to no tokens")


def test_command_line_scores_a_text_past_the_model_context_as_the_search_scorer(tmp_path, capsys):
  # `--ppm-dir` printed the value at the text's last token even past the model's 1024 positions (RoPE beyond what it
  # was trained on); the search's PPMScorer, and the official rm_generate, score the first 1023 tokens.
  tok = tiny_tokenizer()
  long_text = " ".join(f"word{i} = {i * 7}" for i in range(600))
  ids = tok.encode(long_text)
  assert len(ids) > 1100
  prompts = tmp_path / "texts.jsonl"
  prompts.write_text(json.dumps(long_text) + "\n" + json.dumps(TEXTS[0]) + "\n")
  assert main(["--ppm-dir", str(tiny_ppm_dir()[0]), "--tokenizer", str(tiny_tokenizer_dir()), "--prompts",
               str(prompts), "--transform", "tanh5"]) == 0
  values = [json.loads(line)["value"] for line in capsys.readouterr().out.splitlines()]
  np.testing.assert_allclose(values, np.tanh(hf_values([ids[:1023], tok.encode(TEXTS[0])]) / 5), atol=1e-4)


def test_command_line_generation_stays_within_the_model_context_by_default(tmp_path, capsys):
  # Without --max-context a row ran to --max-new-tokens past the model's 1024 positions. vLLM stops a row once it
  # exceeds max_model_len (max_position_embeddings by default), as the search's EnginePolicy does.
  tok = tiny_tokenizer()
  words = []
  while len(tok.encode(" ".join(words))) < 1010:
    words.append(f"x{len(words) % 97}")
  text = " ".join(words)
  length = len(tok.encode(text))
  assert 1024 - 64 < length < 1024
  prompts = tmp_path / "texts.jsonl"
  prompts.write_text(json.dumps(text) + "\n")
  assert main(["--hf-dir", str(tiny_hf()[0]), "--tokenizer", str(tiny_tokenizer_dir()), "--prompts", str(prompts),
               "--n", "4", "--temperature", "1", "--max-new-tokens", "64"]) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert len(rows) == 4 and all(length + len(r["token_ids"]) <= 1025 for r in rows)
  assert any(r["stop_reason"] == "length" and length + len(r["token_ids"]) == 1025 for r in rows)
  assert main(["--hf-dir", str(tiny_hf()[0]), "--tokenizer", str(tiny_tokenizer_dir()), "--prompts", str(prompts),
               "--max-new-tokens", "64", "--max-context", str(length + 3)]) == 0
  (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert len(row["token_ids"]) <= 4


@pytest.mark.parametrize("max_tokens", [0, -1, 2.5, True])
def test_ppm_scorer_refuses_a_max_tokens_that_is_no_positive_count(max_tokens):
  # -1 cut every text's last token (`ids[:-1]`) and scored the token before it; 0 blamed every text for encoding
  # to no tokens.
  engine = Engine(convert.load_ppm(tiny_ppm_dir()[0]), tokenizer=tiny_tokenizer(), buckets=TEST_BUCKETS)
  with pytest.raises(ValueError, match=rf"max_tokens must be an integer >= 1 \(None: .*\), got {max_tokens!r}"):
    PPMScorer(engine, max_tokens=max_tokens)


@pytest.mark.parametrize("settings,message", [
    # A float step length reached the decode kernels as a shape (a jax error at the search's first expansion).
    (dict(max_new_tokens=16.0), r"max_new_tokens must be an integer >= 1, got 16.0"),
    (dict(max_new_tokens=None), r"max_new_tokens must be an integer >= 1, got None"),
    (dict(max_new_tokens=0), r"max_new_tokens must be an integer >= 1, got 0"),  # was found only in generate()
    # No room for any token: every candidate was ("", "length"), an unparsable terminal, and the search ran on.
    (dict(max_context=0), r"max_context must be an integer >= 1, got 0"),
    (dict(max_context=-5), r"max_context must be an integer >= 1, got -5"),
    (dict(max_context=64.5), r"max_context must be an integer >= 1, got 64.5"),
])
def test_engine_policy_refuses_step_limits_that_are_not_counts_when_built(settings, message):
  engine = Engine(load_tiny(), tokenizer=tiny_tokenizer(), buckets=TEST_BUCKETS)
  with pytest.raises(ValueError, match=message):
    EnginePolicy(engine, **settings)
  limits = dict(max_new_tokens=4) | settings
  with pytest.raises(ValueError, match=message):  # the engine's own call too
    engine.generate([Request([5, 6])], Greedy(), **limits)



@pytest.mark.parametrize("settings,message", [
    (dict(top_p=0), r"top_p must be in \(0, 1\], got 0"),
    (dict(top_p=95), r"top_p must be in \(0, 1\], got 95"),  # a percentage
    (dict(top_k=-3), r"top_k must be a non-negative integer .*, got -3"),
    (dict(top_k=2.5), r"top_k must be a non-negative integer .*, got 2.5"),
])
def test_engine_policy_refuses_bad_top_p_or_top_k_at_temperature_zero_too(settings, message):
  # vLLM's SamplingParams (the official search's) checks top_p and top_k whatever the temperature; here temperature 0
  # took Greedy() and dropped them unchecked, so the config failed only once a run set a temperature.
  engine = Engine(load_tiny(), tokenizer=tiny_tokenizer(), buckets=TEST_BUCKETS)
  with pytest.raises(ValueError, match=message):
    EnginePolicy(engine, temperature=0, **settings)
  assert isinstance(EnginePolicy(engine, temperature=0, top_p=0.95, top_k=-1).sampler, Greedy)


def test_ppm_scorer_refuses_a_tokenizer_that_splits_the_step_tags(tmp_path, capsys):
  # A PPM is trained on text whose step tags are single tokens (train_ppm adds them; so did the official trainer).
  # Scored through a tokenizer without them (the base model's, as the real Qwen2.5 one: "<end_of_step>" is 6 pieces
  # there), every value came from token ids the PPM never saw, without an error.
  from generate_helpers import QWEN_TOKENIZER  # pylint: disable=g-import-not-at-top
  from rstar_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  base = tokenizer_lib.load_tokenizer(QWEN_TOKENIZER)
  assert len(base.encode("<end_of_step>")) > 1
  engine = Engine(convert.load_ppm(tiny_ppm_dir()[0]), tokenizer=base)
  with pytest.raises(ValueError, match=r"PPMScorer: the tokenizer splits rStar's step tags \(<code>, <end_of_step>, "
                                       r".*\) into several tokens; the PPM was trained with each as one token: use "
                                       r"the PPM export's tokenizer"):
    PPMScorer(engine)
  tokenizer_lib.add_rstar_tokens(base, "ppm")  # what train_ppm does
  PPMScorer(engine)
  # The command line says so before the model loads, naming its flag.
  prompts = tmp_path / "p.jsonl"
  prompts.write_text('"<code>\\nx = 1\\n<end_of_step>"\n')
  _assert_usage_error(capsys, ["--ppm-dir", str(tiny_ppm_dir()[0]), "--tokenizer", str(QWEN_TOKENIZER), "--prompts",
                               str(prompts)], r"error: --ppm-dir: the tokenizer splits rStar's step tags \(<code>, "
                                              r".*add --add-rstar-tokens")


def test_command_line_refuses_a_step_length_beyond_int32_before_loading(tmp_path, capsys):
  # The engine refuses it (positions are int32), but only once the model had loaded: a traceback, not a usage error.
  good = tmp_path / "good.jsonl"
  good.write_text('"fine"\n')
  _assert_usage_error(capsys, ["--hf-dir", str(tmp_path), "--prompts", str(good), "--max-new-tokens", str(2**31)],
                      r"error: --max-new-tokens must be < 2\*\*31 \(token positions are int32\), got 2147483648")


def test_a_context_past_the_models_positions_is_refused_as_vllm_refuses_such_a_max_model_len(tmp_path, capsys):
  # vLLM 0.6.6 (`config.py` `_get_and_verify_max_len`) raises for a max_model_len above the model's
  # max_position_embeddings (default RoPE, no VLLM_ALLOW_LONG_MAX_MODEL_LEN). Here EnginePolicy(max_context=2048) on
  # the tiny 1024-position model, `--max-context 2048` and PPMScorer(max_tokens=2048) were taken: a 1020-token
  # prompt's 8-token step was fed at positions past 1023 (and a text's value was read at positions up to 2047),
  # extrapolated RoPE the model never saw, returned without a word.
  tok = tiny_tokenizer()
  engine = Engine(load_tiny(), tokenizer=tok, buckets=TEST_BUCKETS)
  for limit in (1025, 2048):
    with pytest.raises(ValueError, match=rf"max_context={limit} exceeds the model's max_position_embeddings=1024"):
      EnginePolicy(engine, max_new_tokens=8, max_context=limit)
  assert EnginePolicy(engine, max_new_tokens=8, max_context=1024).max_context == 1024  # the edge is the model's own
  ppm_engine = Engine(convert.load_ppm(tiny_ppm_dir()[0]), tokenizer=tok, buckets=TEST_BUCKETS)
  with pytest.raises(ValueError, match=r"max_tokens=1025 exceeds the model's max_position_embeddings=1024"):
    PPMScorer(ppm_engine, max_tokens=1025)
  assert PPMScorer(ppm_engine, max_tokens=1024).max_tokens == 1024
  good = tmp_path / "good.jsonl"
  good.write_text('"fine"\n')
  capsys.readouterr()
  _assert_usage_error(capsys, ["--hf-dir", str(tiny_hf()[0]), "--prompts", str(good), "--max-context", "2048"],
                      r"error: --max-context 2048 exceeds the model's max_position_embeddings=1024")


def test_command_line_ends_quietly_when_the_reader_of_its_stdout_has_left(tmp_path):
  # `python -m rstar_jax.generate ... | head -1`: once head had its line and left, the next line raised BrokenPipeError,
  # a traceback on stderr and exit 1. A Unix tool ends as SIGPIPE ends it: no word, exit 141 (128 + 13), as the shell
  # reports `yes | head -1`'s yes under `set -o pipefail`.
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text(json.dumps(TEXTS[0]) + "\n" + json.dumps(TEXTS[1]) + "\n")
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  read_end, write_end = os.pipe()
  os.close(read_end)  # the reader left before the first line (`| true`; `| head -1` once its line was read)
  try:
    proc = subprocess.run([sys.executable, "-m", "rstar_jax.generate", "--hf-dir", str(tiny_hf()[0]), "--tokenizer",
                           str(tiny_tokenizer_dir()), "--prompts", str(prompts), "--max-new-tokens", "1", "--n", "2"],
                          cwd=REPO, env=env, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300,
                          check=False)
  finally:
    os.close(write_end)
  assert proc.returncode == 141, (proc.returncode, proc.stderr[-2000:])
  assert not re.search(r"Traceback|BrokenPipe|Exception ignored", proc.stderr), proc.stderr[-2000:]


def test_help_imports_no_jax_and_shows_every_flag():
  # `python -m rstar_jax.generate` imports the package first, whose __init__ imported the engine and so jax: `--help`
  # took seconds although main() imports everything after parsing so that it stays instant.
  code = ("import runpy, sys\n"
          "sys.argv = ['generate', '--help']\n"
          "try:\n"
          "  runpy.run_module('rstar_jax.generate', run_name='__main__', alter_sys=True)\n"
          "except SystemExit as e:\n"
          "  print('exit', e.code, 'jax imported:', 'jax' in sys.modules, file=sys.stderr)\n")
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.stderr.strip().endswith("exit 0 jax imported: False"), proc.stderr[-2000:]
  from rstar_jax.generate.__main__ import _parser  # pylint: disable=g-import-not-at-top
  for action in _parser()._actions:  # pylint: disable=protected-access
    assert action.option_strings[-1] in proc.stdout, action.option_strings
  # The package's names still resolve, to what the submodules define.
  import rstar_jax.generate as package  # pylint: disable=g-import-not-at-top
  from rstar_jax.generate import engine, sampling  # pylint: disable=g-import-not-at-top
  assert (package.Engine, package.Sampling, package.engine) == (engine.Engine, sampling.Sampling, engine)
  assert set(package.__all__) <= set(dir(package))
  with pytest.raises(AttributeError, match="has no attribute 'Engin'"):
    package.Engin  # pylint: disable=pointless-statement


def test_command_line_names_weights_it_cannot_read_before_loading(tmp_path, capsys):
  # A model dir without weights (or with a PyTorch .bin, a cut safetensors file) was a traceback from the loader, exit
  # 1, once the prompts and tokenizer were read; `convert` reports the same dirs as a usage error naming the flag.
  good = tmp_path / "good.jsonl"
  good.write_text('"fine"\n')
  model = tmp_path / "model"
  model.mkdir()
  shutil.copyfile(tiny_hf()[0] / "config.json", model / "config.json")
  capsys.readouterr()  # the first build of the tiny model writes a progress line to stderr
  argv = ["--prompts", str(good), "--tokenizer", str(tiny_tokenizer_dir())]
  _assert_usage_error(capsys, argv + ["--hf-dir", str(model)],
                      r"error: --hf-dir .*model: no model.safetensors or model.safetensors.index.json")
  (model / "model.safetensors").write_bytes((tiny_hf()[0] / "model.safetensors").read_bytes()[:100])
  _assert_usage_error(capsys, argv + ["--hf-dir", str(model)],
                      r"error: --hf-dir .*model.safetensors: truncated safetensors file")
  ppm = tmp_path / "ppm"
  shutil.copytree(tiny_ppm_dir()[0], ppm)
  (ppm / "model.safetensors").unlink()
  _assert_usage_error(capsys, argv + ["--ppm-dir", str(ppm), "--add-rstar-tokens"],
                      r"error: --ppm-dir .*ppm: no model.safetensors or model.safetensors.index.json")


def test_prompts_from_a_pipe_are_read_and_a_folder_is_named(tmp_path, capsys):
  # `--prompts <(jq -r .question problems.jsonl)` (a /dev/fd/N pipe) or /dev/stdin: "prompts file not found", as was
  # a folder; both exist.
  from rstar_jax.generate.__main__ import read_prompts  # pylint: disable=g-import-not-at-top
  read_end, write_end = os.pipe()
  try:
    os.write(write_end, "What is 6 * 7?\r\nsecond \u00e9\n".encode())
    os.close(write_end)
    prompts = read_prompts(f"/dev/fd/{read_end}", 2, 5)
  finally:
    os.close(read_end)
  assert [(p["prompt"], p["n"], p["seed"], p["line"]) for p in prompts] == [("What is 6 * 7?", 2, 5, 1),
                                                                           ("second \u00e9", 2, 6, 2)]
  _assert_usage_error(capsys, ["--hf-dir", str(tmp_path), "--prompts", str(tmp_path)],
                      rf"error: prompts file {re.escape(str(tmp_path))} is a folder")
