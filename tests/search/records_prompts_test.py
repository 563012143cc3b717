"""Tree JSONL records (schema, atomic shards, clear errors) and the rStar prompt templates."""

import json
import os
import re

import pytest

from rstar_jax import prompts
from rstar_jax.search import records


def _tree(**overrides):
  root = {"id": 0, "tag": "0", "parent": -1, "children": [1, 2], "depth": 0, "text": "", "code": "",
          "observation": "", "final_answer": None, "terminal": False, "terminal_reason": None,
          "correct": None, "visits": 2, "value_sum": 0.0, "q": 0.0, "ppm_value": None}
  code = dict(root, id=1, tag="0.1", parent=0, children=[], depth=1,
              text="<code>\nx = 1\n<end_of_step>", code="# ========\nx = 1", visits=1,
              value_sum=-1.0, q=-1.0, ppm_value=0.25)
  answer = dict(root, id=2, tag="0.2", parent=0, children=[], depth=1, text="\\boxed{2}<end_of_answer>",
                final_answer="2", terminal=True, terminal_reason="answer", correct=True, visits=1,
                value_sum=1.0, q=1.0)
  tree = {"schema": records.SCHEMA, "problem_id": "GSM8K_test/0", "question": "1+1?",
          "ground_truth": "2", "prompt": "Q: 1+1?\n", "seed": 7, "mode": "terminal_guided",
          "preset": "official", "nodes": [root, code, answer]}
  tree.update(overrides)
  return tree


def test_round_trip(tmp_path):
  path = tmp_path / "shard.jsonl"
  assert records.write_trees(path, [_tree(), _tree(problem_id="b")]) == 2
  assert records.read_trees(path) == [_tree(), _tree(problem_id="b")]
  assert [p.name for p in tmp_path.iterdir()] == ["shard.jsonl"]  # no temporary left behind


def test_consumer_reader_accepts_our_records(tmp_path):
  """The data-extraction side reads what the search writes."""
  from rstar_jax.data import trees  # pylint: disable=import-outside-toplevel
  path = tmp_path / "shard.jsonl"
  records.write_trees(path, [_tree()])
  (tree,) = trees.read_trees(path)
  assert tree.nodes[2].final_answer == "2" and tree.prefix_text(1) == "<code>\nx = 1\n<end_of_step>"


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.pop("prompt"), "missing field 'prompt'"),
    (lambda t: t.update(schema="other/1"), "field 'schema'"),
    (lambda t: t.update(mode="greedy"), "field 'mode'"),
    (lambda t: t["nodes"][1].update(visits=1.5), r"nodes\[1\].visits: expected int"),
    (lambda t: t["nodes"][1].update(terminal=1), r"nodes\[1\].terminal: expected bool"),
    (lambda t: t["nodes"][1].update(q=0.5), r"nodes\[1\].q"),
    (lambda t: t["nodes"][2].update(tag="0.3"), r"nodes\[2\].tag"),
    (lambda t: t["nodes"][2].update(terminal_reason="gave_up"), "unknown value"),
    (lambda t: t["nodes"][2].update(terminal=False), r"nodes\[2\].terminal"),
    (lambda t: t["nodes"][0].update(children=[1, 5]), "invalid child id 5"),
    (lambda t: t["nodes"][1].update(id=4), r"nodes\[1\].id"),
    # q = value_sum / visits holds for each of these, so only their own checks catch them.
    (lambda t: t["nodes"][1].update(visits=-1, value_sum=1.0, q=-1.0), r"nodes\[1\].visits: must be >= 0, got -1"),
    (lambda t: t["nodes"][1].update(ppm_value=float("nan")), r"nodes\[1\].ppm_value: must be finite, got nan"),
    (lambda t: t["nodes"][1].update(ppm_value=float("-inf")), r"nodes\[1\].ppm_value: must be finite"),
    (lambda t: t["nodes"][0].update(value_sum=float("inf"), q=float("inf")), r"nodes\[0\].value_sum: must be finite"),
    (lambda t: t["nodes"][1].update(value_sum=float("nan"), q=float("nan")), r"nodes\[1\].value_sum: must be finite"),
    # An integer beyond the float range is valid JSON (401 digits, under the 4300-digit limit): the finiteness check
    # converting it raised a bare OverflowError naming neither the field nor the line.
    (lambda t: t["nodes"][1].update(value_sum=10**400), r"nodes\[1\].value_sum: must be finite, got an integer of 401"),
    (lambda t: t["nodes"][1].update(ppm_value=-10**400), r"nodes\[1\].ppm_value: must be finite, got an integer of"),
    # A node that is no object, listed as a child of an earlier node.
    (lambda t: t["nodes"].__setitem__(2, [0]), r"nodes\[2\]: expected a JSON object"),
    # A lone surrogate (half an emoji, or an undecodable byte read with "surrogateescape") has no UTF-8: the shard's
    # write failed with a bare UnicodeEncodeError naming neither record nor field.
    (lambda t: t["nodes"][1].update(observation="caf\udce9"),
     r"nodes\[1\].observation: holds a lone surrogate '\\udce9' at position 3"),
    (lambda t: t.update(question="1+1? \ud83d"), r"field 'question': holds a lone surrogate '\\ud83d' at position 5"),
])
def test_invalid_records_name_the_field(mutate, message, tmp_path):
  bad = _tree()
  mutate(bad)
  with pytest.raises(records.TreeRecordError, match=message):
    records.validate_tree(bad)
  path = tmp_path / "bad.jsonl"
  with pytest.raises(records.TreeRecordError, match="record 1"):
    records.write_trees(path, [_tree(), bad])
  assert not path.exists() and not list(tmp_path.iterdir())  # nothing written, nothing left over


def test_schema_docstring_and_typed_view_carry_every_field():
  # The module docstring is the schema's written form (data.trees calls records its owner); README lists the same
  # fields. `out_of_nodes` was written by the search and listed in README, but missing from both.
  from rstar_jax.data import trees  # pylint: disable=import-outside-toplevel
  record = _tree(out_of_nodes=True)
  missing = [f for f in [*record, *record["nodes"][0]] if not re.search(rf"\b{f}\b", records.__doc__)]
  assert not missing, f"fields not in the records docstring: {missing}"
  assert trees.tree_from_dict(record).out_of_nodes is True
  assert trees.tree_from_dict(_tree()).out_of_nodes is False  # a shard written before the field existed


def test_reader_names_file_and_line(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text(json.dumps(_tree()) + "\n\n{not json\n")
  with pytest.raises(records.TreeRecordError, match=r"x.jsonl:3: invalid JSON"):
    records.read_trees(path)
  nan = _tree()
  nan["nodes"][1]["ppm_value"] = float("nan")  # json.dumps writes NaN, json.loads reads it back
  path.write_text(json.dumps(_tree()) + "\n" + json.dumps(nan) + "\n")
  with pytest.raises(records.TreeRecordError, match=r"x.jsonl:2: nodes\[1\].ppm_value: must be finite"):
    records.read_trees(path)
  # The escape of a lone surrogate is valid JSON, and json.loads gives the surrogate back; the tree used to be
  # accepted and fail later (the SFT file's write, the tokenizer) naming nothing.
  escaped = _tree()
  escaped["nodes"][2]["text"] = "\\boxed{2} \ud83d<end_of_answer>"
  path.write_text(json.dumps(_tree()) + "\n" + json.dumps(escaped) + "\n")
  with pytest.raises(records.TreeRecordError, match=r"x.jsonl:2: nodes\[2\].text: holds a lone surrogate"):
    records.read_trees(path)
  # Lines json.loads refuses with other errors than JSONDecodeError (a corrupted shard): a RecursionError and a bare
  # ValueError, both naming neither the file nor the line.
  path.write_text(json.dumps(_tree()) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
  with pytest.raises(records.TreeRecordError, match=r"x.jsonl:2: invalid JSON \(nested too deeply"):
    records.read_trees(path)
  path.write_text(json.dumps(_tree()).replace('"seed": 7', '"seed": ' + "7" * 5000) + "\n")
  with pytest.raises(records.TreeRecordError, match=r"x.jsonl:1: invalid JSON \(Exceeds the limit \(4300 digits\)"):
    records.read_trees(path)
  good = _tree()
  del good["nodes"][1]["code"]
  path.write_text(json.dumps(good) + "\n")
  with pytest.raises(records.TreeRecordError, match=r"x.jsonl:1: nodes\[1\]: missing field 'code'"):
    records.read_trees(path)


def test_existing_shard_replaced_atomically(tmp_path):
  path = tmp_path / "s.jsonl"
  records.write_trees(path, [_tree()])
  before = path.read_text()
  with pytest.raises(records.TreeRecordError):
    records.write_trees(path, [_tree(mode="x")])
  assert path.read_text() == before
  records.write_trees(path, [_tree(problem_id="new")])
  assert records.read_trees(path)[0]["problem_id"] == "new"


def test_run_config_guard(tmp_path):
  path = tmp_path / "trees.config.json"
  config = {"mode": "terminal_guided", "seed": 0, "stop": ("<end_of_step>",), "max_nodes": None}
  assert not records.check_run_config(path, config)  # a fresh folder
  records.write_run_config(path, config)
  assert json.loads(path.read_text()) == {"mode": "terminal_guided", "seed": 0, "stop": ["<end_of_step>"],
                                          "max_nodes": None}
  assert records.check_run_config(path, dict(config))  # same config: resumes
  with pytest.raises(ValueError, match=r"trees\.config\.json: .*seed: 0 there, 3 now; stop: \['<end_of_step>'\] "
                                       r"there, None now"):
    records.check_run_config(path, {"mode": "terminal_guided", "seed": 3, "max_nodes": None})
  path.write_text("[1, 2]")
  with pytest.raises(ValueError, match=r"trees\.config\.json: a run config must be a JSON object"):
    records.check_run_config(path, config)
  path.write_text("{not json")
  with pytest.raises(ValueError, match=r"trees\.config\.json: unreadable run config"):
    records.check_run_config(path, config)
  # Not UTF-8 (a corrupted file): the UnicodeDecodeError named neither the file nor what it was.
  path.write_bytes(b'{"mode": "terminal_guided\xff"}')
  with pytest.raises(ValueError, match=r"trees\.config\.json: unreadable run config \('utf-8' codec can't decode"):
    records.check_run_config(path, config)
  path.write_text('{"mode": ' + "[" * 100_000)  # a bare RecursionError
  with pytest.raises(ValueError, match=r"trees\.config\.json: unreadable run config \(nested too deeply"):
    records.check_run_config(path, config)


def test_bootstrap_prompt_matches_the_official_wrap(shared_data):
  d = shared_data / "prompts"
  shots = json.loads((d / "few_shots.json").read_text())
  spec = json.loads((d / "mcts_prompt.json").read_text())
  got = prompts.bootstrap_prompt("What is 2+3?", d)
  # rstar_prompt_wrap with step_delim "\n" and two examples, written out by hand:
  want = (spec["pot_format_instructions"] + "\n" + "The following are 2 demonstration examples.\n"
          + shots[0] + "\n" + shots[1] + "\n" + "\n" + "Now! It's your turn.\nQuestion: What is 2+3?\n")
  assert got == want
  one = prompts.load_bootstrap_template(d, num_few_shots=1).format("q")
  # The official `random_examples` returns `[few_examples[1]]` for one shot.
  assert "The following is a demonstration example.\n" + shots[1] + "\n\nNow!" in one
  zero = prompts.load_bootstrap_template(d, num_few_shots=0).format("q")
  assert zero == spec["pot_format_instructions"] + "\n\nNow! It's your turn.\nQuestion: q\n"


def test_sft_prompt(shared_data):
  got = prompts.sft_prompt("What is 2+3?", shared_data / "prompts")
  assert got == ("<|user|>:\nWhat is 2+3?\n\n<|assistant|>: Let's think step by step and solve the "
                 "problem with code.")


def test_prompt_file_errors(tmp_path):
  (tmp_path / "sft_prompt.json").write_text(json.dumps({"pot_format_instructions": ""}))
  with pytest.raises(prompts.PromptFileError, match="sft_prompt.json: field 'pot_suffix'"):
    prompts.load_sft_template(tmp_path)
  (tmp_path / "sft_prompt.json").write_text("{\n  bad")
  with pytest.raises(prompts.PromptFileError, match=r"sft_prompt.json:2: invalid JSON"):
    prompts.load_sft_template(tmp_path)
  with pytest.raises(prompts.PromptFileError, match="not found"):
    prompts.load_bootstrap_template(tmp_path)
  (tmp_path / "mcts_prompt.json").write_text(json.dumps({"pot_format_instructions": "", "pot_suffix": "Q"}))
  with pytest.raises(prompts.PromptFileError, match="placeholder"):
    prompts.load_bootstrap_template(tmp_path)
  assert os.path.exists(tmp_path / "mcts_prompt.json")
  # A Latin-1 file was a bare UnicodeDecodeError naming no file; a fractional or string count failed as a slice or a
  # comparison, a boolean one loaded as 1 example.
  (tmp_path / "sft_prompt.json").write_bytes(b'{"pot_format_instructions": "caf\xe9", "pot_suffix": "{input}"}')
  with pytest.raises(prompts.PromptFileError, match=r"sft_prompt.json: not valid UTF-8 \(invalid continuation byte"):
    prompts.load_sft_template(tmp_path)
  (tmp_path / "mcts_prompt.json").write_text(json.dumps({"pot_format_instructions": "", "pot_suffix": "{input}"}))
  (tmp_path / "few_shots.json").write_text(json.dumps(["a", "b"]))
  for count in (1.5, "1", True):
    with pytest.raises(ValueError, match=rf"num_few_shots must be an integer, got {count!r}"):
      prompts.load_bootstrap_template(tmp_path, num_few_shots=count)


def test_a_prompt_file_json_cannot_read_names_the_file_and_line(tmp_path):
  # A RecursionError and a plain ValueError (an int of over 4300 digits), both raised bare.
  (tmp_path / "sft_prompt.json").write_text('{"pot_format_instructions": "",\n"n": ' + "[" * 100_000 + "}")
  with pytest.raises(prompts.PromptFileError, match=r"sft_prompt.json:2: invalid JSON \(nested too deeply"):
    prompts.load_sft_template(tmp_path)
  (tmp_path / "sft_prompt.json").write_text('{"pot_format_instructions": "",\n\n"n": ' + "1" * 5000 + "}")
  with pytest.raises(prompts.PromptFileError, match=r"sft_prompt.json:3: invalid JSON \(Exceeds the limit"):
    prompts.load_sft_template(tmp_path)


def test_a_prompt_file_string_with_a_lone_surrogate_names_the_file_and_field(tmp_path):
  # A "\\ud83d" escape (a cut emoji) is valid JSON but no Unicode text: the template loaded, and the tokenizer failed
  # on "text 0 holds a lone surrogate" naming neither the prompt file nor its field.
  with pytest.raises(UnicodeEncodeError):
    json.loads('"\\ud83d"').encode("utf-8")
  (tmp_path / "mcts_prompt.json").write_text('{"pot_format_instructions": "Solve \\ud83d", "pot_suffix": "{input}"}')
  (tmp_path / "few_shots.json").write_text('["a", "b"]')
  with pytest.raises(prompts.PromptFileError, match=r"mcts_prompt.json: field 'pot_format_instructions' holds a lone"):
    prompts.load_bootstrap_template(tmp_path)
  (tmp_path / "mcts_prompt.json").write_text('{"pot_format_instructions": "", "pot_suffix": "{input}"}')
  (tmp_path / "few_shots.json").write_text('["a", "b \\udc00"]')
  with pytest.raises(prompts.PromptFileError, match=r"few_shots.json: example 1 holds a lone surrogate"):
    prompts.load_bootstrap_template(tmp_path)


def test_prompt_suffix_is_a_python_format_string(tmp_path):
  """The official wrap fills `pot_suffix` with `str.format(input=...)`: "{{" / "}}" are literal braces (a suffix
  asking for "\\boxed{{}}" shows "\\boxed{}"), and any other field is an error there (KeyError), not a silent
  "{x}" in every prompt."""
  suffix = "Put the answer in \\boxed{{}}.\nQuestion: {input}"
  (tmp_path / "sft_prompt.json").write_text(json.dumps({"pot_format_instructions": "", "pot_suffix": suffix}))
  # rstar_prompt_wrap with no examples and no instructions, written out by hand:
  assert prompts.sft_prompt("Is {a} < 1?", tmp_path) == "Put the answer in \\boxed{}.\nQuestion: Is {a} < 1?\n"
  for bad, what in (("{x} Question: {input}", "field {x}"), ("{input} }", "'}'"), ("{input} {", "'{'"),
                    ("{0}{input}", "field {0}")):
    (tmp_path / "sft_prompt.json").write_text(json.dumps({"pot_format_instructions": "", "pot_suffix": bad}))
    with pytest.raises(prompts.PromptFileError, match=rf"sft_prompt.json: field 'pot_suffix'.*{re.escape(what)}"):
      prompts.load_sft_template(tmp_path)
