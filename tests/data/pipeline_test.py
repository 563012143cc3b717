"""grain pipelines: rStar files load, masking is right, shuffling is deterministic, iterator state resumes."""

import collections
import fractions
import json
import re

import numpy as np
import pytest

from rstar_jax import prompts
from rstar_jax import tokenizer as tokenizer_lib
from rstar_jax.data import formats, pipeline


@pytest.fixture(scope="module")
def qwen_tokenizer(shared_data):
  tok = tokenizer_lib.load_tokenizer(shared_data / "qwen2.5-tokenizer")
  tokenizer_lib.add_rstar_tokens(tok)
  return tok


@pytest.fixture(scope="module")
def rstar_sft(shared_data):
  return formats.read_sft_records(shared_data / "formats" / "sft_data_examples.json")


@pytest.fixture(scope="module")
def rstar_pairs(shared_data):
  return formats.read_ppm_pairs(shared_data / "formats" / "rm_data_examples.json")


def test_rstar_formats_load_and_roundtrip(shared_data, rstar_sft, rstar_pairs, tmp_path):
  raw_sft = json.loads((shared_data / "formats" / "sft_data_examples.json").read_text())
  raw_rm = json.loads((shared_data / "formats" / "rm_data_examples.json").read_text())
  assert [(r.query, r.response) for r in rstar_sft] == [(o["query"], o["response"]) for o in raw_sft]
  assert [(p.prompt, p.pos, p.neg, p.pos_count, p.neg_count) for p in rstar_pairs] == [
      (o["prompt"], o["pos"], o["neg"], o["pos_count"], o["neg_count"]) for o in raw_rm]
  for suffix in (".json", ".jsonl"):
    formats.write_sft_records(tmp_path / f"sft{suffix}", rstar_sft)
    formats.write_ppm_pairs(tmp_path / f"rm{suffix}", rstar_pairs)
    assert formats.read_sft_records(tmp_path / f"sft{suffix}") == rstar_sft
    assert formats.read_ppm_pairs(tmp_path / f"rm{suffix}") == rstar_pairs
  # Our JSON files have exactly rStar's keys, so rStar's loaders read them too.
  ours = json.loads((tmp_path / "rm.json").read_text())
  assert [set(o) for o in ours] == [set(o) for o in raw_rm]
  assert [set(o) for o in json.loads((tmp_path / "sft.json").read_text())] == [set(o) for o in raw_sft]


def test_sft_prompt_is_the_search_prompt(shared_data):
  prompt_file = json.loads((shared_data / "prompts" / "sft_prompt.json").read_text())
  assert formats.SFT_PROMPT_TEMPLATE == prompt_file["pot_suffix"]
  # Training sees exactly the text the search prompts the policy with from round 2 on.
  question = "What is ${x}^2$ if {x} = 3?"
  assert formats.sft_prompt(question) == prompts.sft_prompt(question, shared_data / "prompts")
  assert formats.sft_prompt(question, "Q: {input}\nA:") == f"Q: {question}\nA:"


def test_format_errors_name_file_and_field(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"query": "q", "response": "r"}\n{"query": "q"}\n')
  with pytest.raises(formats.DataFormatError, match=r"bad.jsonl:2: missing field 'response'"):
    formats.read_sft_records(path)
  path.write_text(json.dumps([{"prompt": "p", "pos": "a", "neg": "b", "pos_count": 0, "neg_count": 1}]))
  with pytest.raises(formats.DataFormatError, match=r"record 0: field 'pos_count' must be a positive integer"):
    formats.read_ppm_pairs(path)


@pytest.mark.parametrize("name, line", [("sft.jsonl", 2), ("sft.json", 3)])
def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path, name, line):
  # A Latin-1 "é" (0xE9) in the second record: the bare UnicodeDecodeError named neither the file nor the line.
  records = [{"query": "q", "response": "r"}, {"query": "caf\u00e9", "response": "r"}]
  text = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n"
  if name.endswith(".json"):
    text = "[\n" + text.replace("}\n{", "},\n{") + "]\n"
  (tmp_path / name).write_bytes(text.encode("latin-1"))
  with pytest.raises(formats.DataFormatError, match=rf"{name}:{line}: not valid UTF-8"):
    formats.read_sft_records(tmp_path / name)


_DEEP, _BIG_INT = "[" * 100_000 + "]" * 100_000, "7" * 5000


@pytest.mark.parametrize("name, line", [("sft.jsonl", 2), ("sft.json", 3)])
@pytest.mark.parametrize("value, message", [(_DEEP, "nested too deeply"),
                                            (_BIG_INT, "Exceeds the limit (4300 digits)")], ids=["deep", "big int"])
def test_a_record_json_cannot_read_is_named_with_its_line(tmp_path, name, line, value, message):
  # A corrupted record json.loads refuses with a RecursionError or a plain ValueError (an int of over 4300 digits),
  # not a JSONDecodeError: both were raised bare, naming neither the file nor the line.
  lines = ['{"query": "q", "response": "r"}', '{"query": "q", "response": "r", "n": ' + value + "}"]
  text = "\n".join(lines) if name.endswith(".jsonl") else "[\n" + ",\n".join(lines) + "\n]"
  (tmp_path / name).write_text(text)
  with pytest.raises(formats.DataFormatError, match=re.escape(f"{name}:{line}: invalid JSON ({message}")):
    formats.read_sft_records(tmp_path / name)


def test_a_lone_surrogate_is_named_with_file_line_and_field(tmp_path):
  # A "\\ud83d" escape (a truncated emoji) is valid JSON but no Unicode text (Python's UTF-8 codec refuses it); the
  # tokenizer then failed on "text 1 ... at position 22" of the formatted prompt, naming neither file nor field.
  path = tmp_path / "sft.jsonl"
  path.write_text('{"query": "q", "response": "r"}\n{"query": "What is 1+1?\\ud83d", "response": "r"}\n')
  with pytest.raises(UnicodeEncodeError):
    json.loads('"\\ud83d"').encode("utf-8")
  with pytest.raises(formats.DataFormatError, match=r"sft.jsonl:2: field 'query' holds a lone surrogate '\\ud83d' "
                     r"at position 12"):
    formats.read_sft_records(path)
  path.write_text(json.dumps([{"prompt": "p", "pos": "a\ud800b", "neg": "b", "pos_count": 1, "neg_count": 1}]))
  with pytest.raises(formats.DataFormatError, match=r"record 0: field 'pos' holds a lone surrogate '\\ud800'"):
    formats.read_ppm_pairs(path)


@pytest.mark.parametrize("count", ["NaN", "Infinity", "-Infinity",
                                   pytest.param("1" + "0" * 400, id="int-beyond-float")])
def test_non_finite_pair_counts_name_file_line_and_field(tmp_path, count):
  # Python's json reads (and writes) these; int() of them raised OverflowError/ValueError naming nothing. An integer
  # beyond the float range (valid JSON, under the 4300-digit limit) made the finiteness check raise OverflowError.
  path = tmp_path / "pairs.jsonl"
  path.write_text('{"prompt": "p", "pos": "a", "neg": "b", "pos_count": 1, "neg_count": 1}\n'
                  f'{{"prompt": "p", "pos": "a", "neg": "b", "pos_count": 2, "neg_count": {count}}}\n')
  with pytest.raises(formats.DataFormatError, match=r"pairs.jsonl:2: field 'neg_count' must be a positive integer"):
    formats.read_ppm_pairs(path)


def test_sft_batches_mask_prompt_and_append_eos(rstar_sft, qwen_tokenizer):
  config = pipeline.PipelineConfig(max_len=1024, batch_size=3, num_epochs=1, seed=0)
  pipe = pipeline.sft_pipeline(rstar_sft, qwen_tokenizer, config)
  assert pipe.num_examples == len(rstar_sft) and pipe.num_batches == 3  # 8 rows -> 3 + 3 + 2 (padded)
  seen = []
  for batch in pipe.iterator():
    assert batch["tokens"].shape == (3, 1024)
    for row in range(3):
      n = int(batch["input_mask"][row].sum())
      if n == 0:  # the padding row of the last batch
        assert batch["loss_mask"][row].sum() == 0
        continue
      tokens, targets, mask = batch["tokens"][row], batch["targets"][row], batch["loss_mask"][row] > 0
      np.testing.assert_array_equal(tokens[1:n], targets[:n - 1])  # targets are inputs shifted by one
      query = qwen_tokenizer.decode(tokens[:int(np.argmax(mask)) + 1])
      record = next(r for r in rstar_sft if formats.sft_prompt(r.query) == query)
      assert targets[mask][-1] == qwen_tokenizer.eos_id
      assert qwen_tokenizer.decode(targets[mask][:-1]) == record.response
      seen.append(record)
  assert collections.Counter(r.query for r in seen) == collections.Counter(r.query for r in rstar_sft)


# The official trainer's SFT prompt (train_SFT.py's PROMPT_DICT, `{instruction}` written `{input}`).
OFFICIAL_SFT_TEMPLATE = "<|user|>:\n{input}\n<|assistant|>: Let's think step by step and solve the problem with code."


@pytest.mark.parametrize("response,want_ids,num_masked", [
    # Expected ids computed by a transcription of rStar's train_SFT.py (`preprocess`: tokenizer(source + target) with
    # target = response + eos_token, labels[:len(tokenizer(source))] = -100) run under transformers 4.45.2 /
    # tokenizers 0.20.3 on the real Qwen2.5 tokenizer with the 15 rStar tags added. "code." + "\n" is one BPE token
    # (624, ".\n") when prompt and response are tokenized as one text, and the official mask covers it.
    ("\n<code>\nprint(1 + 1)\n<end_of_code>\n<output>2<end_of_output>\n<answer>\\boxed{2}<end_of_answer>",
     [151672, 510, 3838, 374, 400, 16, 10, 16, 3, 30, 151676, 25, 6771, 594, 1744, 3019, 553, 3019, 323, 11625, 279,
      3491, 448, 2038, 624, 151665, 198, 1350, 7, 16, 488, 220, 16, 340, 151667, 198, 151668, 17, 151669, 198, 151670,
      59, 79075, 90, 17, 92, 151671, 151643], 25),
    # "." + "Sure" tokenizes as ".S" (808) "ure" (552); the official mask covers ".S", so "ure" is the first target.
    ("Sure.<code>\nprint(2)\n<end_of_code><answer>\\boxed{2}<end_of_answer>",
     [151672, 510, 3838, 374, 400, 16, 10, 16, 3, 30, 151676, 25, 6771, 594, 1744, 3019, 553, 3019, 323, 11625, 279,
      3491, 448, 2038, 808, 552, 13, 151665, 198, 1350, 7, 17, 340, 151667, 151670, 59, 79075, 90, 17, 92, 151671,
      151643], 25),
])
def test_sft_ids_and_targets_match_the_official_trainer_across_the_prompt_boundary(qwen_tokenizer, response, want_ids,
                                                                                  num_masked):
  config = pipeline.PipelineConfig(prompt_template=OFFICIAL_SFT_TEMPLATE)
  data = pipeline.tokenize_sft([formats.SftRecord("What is $1+1$?", response)], qwen_tokenizer, config)
  assert data.arrays[0]["ids"].tolist() == want_ids
  # The official labels are -100 on the first `num_masked` positions; position 0 is never a target (no prediction).
  assert data.arrays[0]["is_target"][1:].tolist() == [i >= num_masked for i in range(1, len(want_ids))]

def test_sft_record_with_an_empty_query_is_trained_without_a_prompt_as_the_official_trainer(qwen_tokenizer):
  # Expected ids from the transcription of rStar's train_SFT.py under transformers 4.45.2 (Qwen2.5 tokenizer, 15 rStar
  # tags): a record whose query is "" gets source "" (`if example['instruction'] == ''`), so every id is a target.
  want = [151665, 198, 1350, 7, 17, 340, 151667, 198, 151670, 59, 79075, 90, 17, 92, 151671, 151643]
  record = formats.SftRecord("", "<code>\nprint(2)\n<end_of_code>\n<answer>\\boxed{2}<end_of_answer>")
  for template in (None, OFFICIAL_SFT_TEMPLATE):
    data = pipeline.tokenize_sft([record], qwen_tokenizer, pipeline.PipelineConfig(prompt_template=template))
    assert data.arrays[0]["ids"].tolist() == want
    assert data.arrays[0]["is_target"].all()

def test_ppm_batches(rstar_pairs, qwen_tokenizer):
  config = pipeline.PipelineConfig(max_len=2048, batch_size=2, num_epochs=1, shuffle=False)
  batches = list(pipeline.ppm_pipeline(rstar_pairs, qwen_tokenizer, config).iterator())
  assert len(batches) == 3
  for k, pair in enumerate(rstar_pairs):
    batch, row = batches[k // 2], k % 2
    for side, text in (("pos", pair.pos), ("neg", pair.neg)):
      ids = batch[f"{side}_tokens"][row][batch[f"{side}_mask"][row]]
      assert qwen_tokenizer.decode(ids) == pair.prompt + text
    assert batch["weights"][row] == np.float32(1 / (pair.pos_count * pair.neg_count))
    assert batch["pair_mask"][row] == 1
  assert batches[-1]["pair_mask"].tolist() == [1, 0]


def test_examples_given_as_an_iterator_are_all_batched(shared_data, rstar_sft, rstar_pairs, qwen_tokenizer):
  # Prompts and responses (pos and neg texts) were read in two passes: an iterator's second pass was empty, so the 8
  # published records (5 pairs) came out as "no training examples".
  raw_sft = json.loads((shared_data / "formats" / "sft_data_examples.json").read_text())
  raw_rm = json.loads((shared_data / "formats" / "rm_data_examples.json").read_text())
  config = pipeline.PipelineConfig(max_len=1024, batch_size=4, num_epochs=1, shuffle=False)
  sft = pipeline.sft_pipeline(iter(rstar_sft), qwen_tokenizer, config)
  assert (sft.num_examples, sft.num_dropped) == (len(raw_sft), 0)
  rows = [(t[m > 0], r) for b in sft.iterator() for t, m, r in zip(b["targets"], b["loss_mask"], b["input_mask"])]
  assert [qwen_tokenizer.decode(t[:-1]) for t, r in rows if r.any()] == [o["response"] for o in raw_sft]
  ppm = pipeline.ppm_pipeline((p for p in rstar_pairs), qwen_tokenizer, config)
  assert (ppm.num_examples, ppm.num_dropped) == (len(raw_rm), 0)
  sides = [(qwen_tokenizer.decode(t[m]), qwen_tokenizer.decode(u[n])) for b in ppm.iterator()
           for t, m, u, n in zip(b["pos_tokens"], b["pos_mask"], b["neg_tokens"], b["neg_mask"]) if m.any()]
  assert sides == [(o["prompt"] + o["pos"], o["prompt"] + o["neg"]) for o in raw_rm]


def test_ppm_overlong_keeps_the_head_like_the_scorer(rstar_pairs, qwen_tokenizer):
  # 150 tokens: past where pos and neg part in the first four published pairs (72-140), not in the fifth (316),
  # which the cut leaves the same on both sides, so it is dropped.
  config = pipeline.PipelineConfig(max_len=150, batch_size=5, num_epochs=1, shuffle=False)
  pipe = pipeline.ppm_pipeline(rstar_pairs, qwen_tokenizer, config)
  assert (pipe.num_examples, pipe.num_dropped) == (4, 1)
  batch = next(pipe.iterator())
  full = qwen_tokenizer.encode(rstar_pairs[0].prompt + rstar_pairs[0].pos)
  np.testing.assert_array_equal(batch["pos_tokens"][0], full[:150])
  lengths = sorted(max(len(qwen_tokenizer.encode(p.prompt + p.pos)), len(qwen_tokenizer.encode(p.prompt + p.neg)))
                   for p in rstar_pairs)
  drop = dataclass_replace(config, max_len=lengths[2], overlong="drop")
  dropped = pipeline.ppm_pipeline(rstar_pairs, qwen_tokenizer, drop)
  assert (dropped.num_examples, dropped.num_dropped) == (3, 2)
  with pytest.raises(ValueError, match=r"no training examples: tokenization dropped all 5 \(longer than max_len=8"):
    pipeline.ppm_pipeline(rstar_pairs, qwen_tokenizer, dataclass_replace(drop, max_len=8))


def test_ppm_pair_whose_prompt_fills_max_len_is_dropped():
  pairs = [formats.PpmPair("p" * 10, "good step", "bad step!", 1, 1), formats.PpmPair("ab", "good", "bad", 1, 2)]
  config = pipeline.PipelineConfig(max_len=8, batch_size=2, num_epochs=1, shuffle=False)
  data = pipeline.tokenize_ppm(pairs, CharTokenizer(), config)
  # Cut to 8 tokens, the first pair is its prompt on both sides: it used to stay, adding log 2 and no gradient.
  assert (len(data.arrays), data.num_dropped) == (1, 1)
  assert data.arrays[0]["pos"].tolist() == CharTokenizer().encode("abgood")


class CharTokenizer:
  """One id per character (ids 2..), EOS 1, pad 0: makes lengths easy to reason about."""
  eos_id, pad_id = 1, 0

  def encode(self, text):
    return [2 + (ord(c) % 200) for c in text]


def _records(n):
  return [formats.SftRecord(query=f"q{i}", response="r" * (1 + (i * 7) % 23)) for i in range(n)]


def test_every_process_pads_a_global_batch_to_the_same_bucket(monkeypatch):
  import jax  # pylint: disable=import-outside-toplevel
  # Two processes of one job: process 0 collates the rows of lengths ~400 and ~300, process 1 ~100 and ~20. Both
  # must build T = 512 (the bucket of the batch's longest row), or the global array has no single shape.
  config = pipeline.PipelineConfig(max_len=512, batch_size=4, num_epochs=1, buckets=(64, 128, 256), shuffle=False,
                                   prompt_template="{input}")
  records = [formats.SftRecord("q", "r" * n) for n in (400, 300, 100, 20)]
  pairs = [formats.PpmPair("p", "x" * n, "y", 1, 1) for n in (400, 300, 100, 20)]
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  for pipe in (pipeline.sft_pipeline(records, CharTokenizer(), config),
               pipeline.ppm_pipeline(pairs, CharTokenizer(), config)):
    shapes = []
    for index in range(2):
      monkeypatch.setattr(jax, "process_index", lambda index=index: index)
      shapes.append({k: v.shape for k, v in pipe.dataset[0].items()})
    assert shapes[0] == shapes[1]
    assert {shape[1] for shape in shapes[0].values() if len(shape) == 2} == {512}


def test_unicode_line_separators_inside_strings_round_trip(tmp_path):
  # JSON leaves U+2028 / U+2029 / U+0085 raw inside strings (we write ensure_ascii=False); they must not end a line.
  text = "a\u2028b\u2029c\x85d"
  for suffix in (".jsonl", ".json"):
    formats.write_sft_records(tmp_path / f"sft{suffix}", [formats.SftRecord(text, text)])
    assert formats.read_sft_records(tmp_path / f"sft{suffix}") == [formats.SftRecord(text, text)]
    formats.write_ppm_pairs(tmp_path / f"pairs{suffix}", [formats.PpmPair(text, text, text, 1, 2)])
    assert formats.read_ppm_pairs(tmp_path / f"pairs{suffix}") == [formats.PpmPair(text, text, text, 1, 2)]


def test_shuffle_is_deterministic_and_covers_each_epoch():
  config = pipeline.PipelineConfig(max_len=128, batch_size=4, num_epochs=3, seed=7, prompt_template="{input}")
  plan = pipeline.batch_plan(pipeline.tokenize_sft(_records(10), CharTokenizer(), config).lengths, config)
  again = pipeline.batch_plan(pipeline.tokenize_sft(_records(10), CharTokenizer(), config).lengths, config)
  other = pipeline.batch_plan(pipeline.tokenize_sft(_records(10), CharTokenizer(), config).lengths,
                              dataclass_replace(config, seed=8))
  np.testing.assert_array_equal(plan, again)
  assert not np.array_equal(plan, other)
  # As the official trainer's per-epoch data loader: ceil(10 / 4) = 3 batches an epoch, the last one padded, so no
  # batch mixes two epochs or holds an example twice (the epochs used to run on across batch boundaries).
  assert plan.shape == (9, 4)
  for epoch in range(3):
    rows = plan[3 * epoch:3 * (epoch + 1)].reshape(-1)
    assert sorted(rows[rows >= 0]) == list(range(10)) and (rows[10:] == -1).all()
  assert not np.array_equal(plan[:3], plan[3:6])  # reshuffled per epoch


def dataclass_replace(config, **kw):
  import dataclasses
  return dataclasses.replace(config, **kw)


def test_length_window_groups_lengths_and_buckets():
  config = pipeline.PipelineConfig(max_len=64, batch_size=4, num_epochs=1, buckets=(8, 16, 32), length_window=4,
                                   prompt_template="{input}")
  records = _records(16)
  pipe = pipeline.sft_pipeline(records, CharTokenizer(), config)
  shapes = [b["tokens"].shape[1] for b in pipe.iterator()]
  plain = [b["tokens"].shape[1] for b in pipeline.sft_pipeline(
      records, CharTokenizer(), dataclass_replace(config, length_window=0)).iterator()]
  assert set(shapes) <= {8, 16, 32, 64} and sum(shapes) < sum(plain)
  lengths = pipeline.tokenize_sft(records, CharTokenizer(), config).lengths
  plan = pipeline.batch_plan(lengths, config)
  assert sorted(plan.reshape(-1)) == list(range(16))
  # 14 rows, 2 epochs: each epoch ends on a batch boundary, so every batch holds rows of one epoch.
  plan = pipeline.batch_plan(lengths[:14], dataclass_replace(config, num_epochs=2))
  assert plan.shape == (8, 4)
  for epoch in range(2):
    rows = plan[4 * epoch:4 * (epoch + 1)].reshape(-1)
    assert sorted(rows[rows >= 0]) == list(range(14)) and (rows < 0).sum() == 2


def test_iterator_state_resumes_exactly():
  config = pipeline.PipelineConfig(max_len=64, batch_size=3, num_epochs=2, seed=1, prompt_template="{input}")
  pipe = pipeline.sft_pipeline(_records(11), CharTokenizer(), config)
  reference = [b["tokens"] for b in pipe.iterator()]
  it = pipe.iterator()
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # it must survive a JSON round trip (checkpoint file)
  resumed = pipe.iterator()
  resumed.set_state(state)
  rest = [b["tokens"] for b in resumed]
  assert len(rest) == len(reference) - 3
  for got, want in zip(rest, reference[3:]):
    np.testing.assert_array_equal(got, want)


def test_sft_truncates_head_or_drops():
  records = [formats.SftRecord("abc", "x" * 20), formats.SftRecord("a" * 40, "y")]
  config = pipeline.PipelineConfig(max_len=10, batch_size=2, num_epochs=1, prompt_template="{input}")
  data = pipeline.tokenize_sft(records, CharTokenizer(), config)
  # Record 0 keeps its first 11 ids (10 inputs); record 1's prompt fills the row: nothing to learn, dropped.
  assert len(data.arrays) == 1 and data.num_dropped == 1
  np.testing.assert_array_equal(data.arrays[0]["ids"], CharTokenizer().encode("abc" + "x" * 8))
  drop = pipeline.tokenize_sft(records, CharTokenizer(), dataclass_replace(config, overlong="drop"))
  assert len(drop.arrays) == 0 and drop.num_dropped == 2


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("batch_size", -2), ("num_epochs", 0), ("max_len", 0),
                                         ("length_window", -1), ("batch_size", 2.5), ("overlong", "cut")])
def test_invalid_pipeline_config_names_the_field(field, value):
  # These gave ZeroDivisionError / "need at least one array to concatenate" from deep inside batch_plan.
  with pytest.raises(ValueError, match=rf"PipelineConfig\.{field} must be"):
    pipeline.batch_plan(np.array([3, 4, 5]), pipeline.PipelineConfig(**{field: value}))


@pytest.mark.parametrize("field,value,message", [
    # numpy's "expected non-negative integer" / "seed must be integer" from the first shuffle, naming nothing.
    ("seed", -1, r"PipelineConfig.seed must be an integer >= 0, got -1"),
    ("seed", 1.5, r"PipelineConfig.seed must be an integer >= 0, got 1.5"),
    ("buckets", (300.5,), r"PipelineConfig.buckets must be a tuple of integer row lengths, got \(300.5,\)"),
    ("buckets", 256, r"PipelineConfig.buckets must be a tuple of integer row lengths, got 256"),  # 'int' not iterable
    ("buckets", (1024,), r"buckets must lie in \[1, max_len=512\], got \(1024,\)"),
])
def test_a_bad_seed_or_bucket_is_refused_before_anything_is_tokenized(field, value, message):
  # Each failed only once sft_pipeline / ppm_pipeline had tokenized the whole data set (minutes at rStar's scale).
  with pytest.raises(ValueError, match=message):
    pipeline.PipelineConfig(max_len=512, **{field: value})


def test_bucket_lists_from_config_files_are_kept_as_tuples():
  config = pipeline.PipelineConfig(max_len=512, buckets=[256, 128])
  assert config.buckets == (256, 128) and config.bucket_lengths() == (128, 256, 512)
  hash(config)


def test_prompt_template_without_input_is_refused(rstar_sft, qwen_tokenizer):
  # The official trainer's template names the field {instruction}; with it every row silently lost its question.
  official = "<|user|>:\n{instruction}\n<|assistant|>: Let's think step by step and solve the problem with code."
  config = pipeline.PipelineConfig(max_len=1024, batch_size=2, num_epochs=1, prompt_template=official)
  with pytest.raises(ValueError, match=r"no '\{input\}'"):
    pipeline.sft_pipeline(rstar_sft, qwen_tokenizer, config)
  ok = pipeline.PipelineConfig(max_len=1024, batch_size=2, num_epochs=1,
                               prompt_template=official.replace("instruction", "input"))
  assert pipeline.sft_pipeline(rstar_sft, qwen_tokenizer, ok).num_examples == len(rstar_sft)


@pytest.mark.parametrize("counts, name", [((0, 1), "pos_count"), ((2, -1), "neg_count"), ((1, 1.5), "neg_count"),
                                          ((True, 1), "pos_count")])
def test_a_pair_built_with_a_count_that_is_no_positive_integer_is_refused_naming_the_field(counts, name):
  # The pair weight is 1 / (pos_count * neg_count): a count of 0 (which the official preprocessing accepts, weighting
  # such a pair 1 / (pos_count + neg_count)) reached evaluate_ppm/ppm_pipeline and failed there as a bare
  # "ZeroDivisionError: float division by zero"; 1.5 weighted the pair 1 / 1.5, which no pair file can hold.
  value = counts[name == "neg_count"]
  with pytest.raises(ValueError, match=rf"PpmPair\.{name} must be a positive integer, got {value!r}"):
    formats.PpmPair("p", "a", "b", *counts)
  assert formats.PpmPair("p", "a", "b", np.int64(2), 3).weight == 1 / 6  # numpy integers (counts from arrays) pass


def test_pair_counts_whose_product_passes_the_float_range_are_weighted_not_crashed(tmp_path):
  # Each count is a finite float, which read_ppm_pairs checks so that the weight cannot overflow; their product was
  # not: 1.0 / (pos_count * neg_count) raised a bare "OverflowError: int too large to convert to float" inside the
  # pipeline, naming neither file nor pair. The weight is the exact 1 / (pos_count * neg_count), rounded.
  path = tmp_path / "pairs.jsonl"
  path.write_text(json.dumps({"prompt": "p", "pos": "a", "neg": "b", "pos_count": 10**160, "neg_count": 10**160})
                  + "\n")
  pair, = formats.read_ppm_pairs(path)
  assert pair.weight == pytest.approx(float(fractions.Fraction(1, 10**320)), rel=1e-3, abs=0)
  config = pipeline.PipelineConfig(max_len=8, batch_size=1)
  batch = next(pipeline.ppm_pipeline([pair], CharTokenizer(), config).iterator())
  assert batch["weights"].tolist() == [0.0]  # 1e-320 is below float32's range


@pytest.mark.parametrize("template", [["{input}"], ("{input}",), 7, b"{input}"])
def test_a_prompt_template_that_is_no_string_is_refused_naming_the_field(template):
  # A list (as a config file gives it; TrainConfig.from_dict makes it a tuple) passed sft_prompt's "'{input}' in"
  # check and failed as "'tuple' object has no attribute 'replace'", and 7 as "argument of type 'int' is not
  # iterable", both while tokenizing, naming no setting.
  with pytest.raises(TypeError, match=r"PipelineConfig.prompt_template must be None or a str"):
    pipeline.PipelineConfig(prompt_template=template)
  assert pipeline.PipelineConfig(prompt_template="Q: {input}\nA:").prompt_template == "Q: {input}\nA:"
