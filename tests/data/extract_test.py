"""Extraction of SFT records and PPM pairs from hand-built trees, against hand-applied rStar rules."""

import json
import random
import string

import pytest

from rstar_jax.data import extract, formats, trees
from rstar_jax.search import records as search_records


def _step(name: str) -> str:
  # Step texts drawn from a per-name random stream so any two are far more than 20 edits apart.
  rng = random.Random(name)
  words = " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(5)) for _ in range(8))
  return f"\n# {name}: {words}\nx = {rng.randint(0, 10**6)}\n<end_of_step>"


def _output(observation):
  """The output block a step that closes a code block carries in its text (none without an observation)."""
  return f"\n<output>{observation}<end_of_output>" if observation else ""


def build_tree(spec, problem_id="p/0", prompt="<|user|>:\nQ?\n<|assistant|>: go.", question="Q?"):
  """Builds a schema-1 record from a nested spec: (name, q, kind, [children]) with
  kind in {None, "correct", "wrong", "invalid"} and optional observation via a 5th field.
  Nodes are numbered depth-first; returns (record, {name: id})."""
  nodes, ids = [], {}

  def add(item, parent, tag, depth):
    name, q, kind, children = item[:4]
    obs = item[4] if len(item) > 4 else ""
    nid = len(nodes)
    ids[name] = nid
    node = {"id": nid, "tag": tag, "parent": parent, "children": [], "depth": depth,
            "text": "" if parent == -1 else _step(name) + _output(obs), "code": "", "observation": obs,
            "final_answer": None, "terminal": kind is not None,
            "terminal_reason": None, "correct": None, "visits": 4, "value_sum": 4 * q, "q": q,
            "ppm_value": None}
    if kind in ("correct", "wrong"):
      node["terminal_reason"] = "answer"
      node["correct"] = kind == "correct"
      node["final_answer"] = "18" if kind == "correct" else "17"
    elif kind == "invalid":
      node["terminal_reason"] = "too_many_errors"
    nodes.append(node)
    for i, child in enumerate(children, start=1):
      node["children"].append(add(child, nid, f"{tag}.{i}", depth + 1))
    return nid

  add(spec, -1, "0", 0)
  record = {"schema": trees.SCHEMA, "problem_id": problem_id, "question": question,
            "ground_truth": "18", "prompt": prompt, "seed": 0, "mode": "terminal_guided",
            "preset": "official", "nodes": nodes}
  return record, ids


# Tree 1 (q values chosen so each rule decides something):
#   A (0.6) -> A1 correct (1.0), A2 wrong (-1.0)      mixed child
#   B (-0.7) -> B1 wrong (-1.0)
#   C (0.9, its output block shows an error) -> C1 correct (1.0)
#   D (-1.0) invalid terminal
#   E (0.8) -> E1 correct (0.8)
C_ERROR = "NameError: name 'x' is not defined"
C_TEXT = _step("C") + _output(C_ERROR)
TREE1 = ("root", 0.0, None, [
    ("A", 0.6, None, [("A1", 1.0, "correct", []), ("A2", -1.0, "wrong", [])]),
    ("B", -0.7, None, [("B1", -1.0, "wrong", [])]),
    ("C", 0.9, None, [("C1", 1.0, "correct", [])], C_ERROR),
    ("D", -1.0, "invalid", []),
    ("E", 0.8, None, [("E1", 0.8, "correct", [])]),
])


@pytest.fixture()
def tree1(tmp_path):
  record, ids = build_tree(TREE1)
  path = tmp_path / "trees.jsonl"
  # Written by the search's own (validating) writer: our hand-built trees are valid schema-1 records.
  search_records.write_trees(path, [record])
  return trees.read_trees(path)[0], ids


def test_sft_top2_by_mean_q_ties_by_min_q_errors_dropped(tree1):
  tree, _ = tree1
  got = extract.sft_records([tree])
  # Correct trajectories: A-A1 (mean 0.8, min 0.6), C-C1 (mean 0.95 but an error: dropped),
  # E-E1 (mean 0.8, min 0.8). Tie on mean -> higher min first: E then A.
  assert got == [
      formats.SftRecord(query="Q?", response=_step("E") + _step("E1")),
      formats.SftRecord(query="Q?", response=_step("A") + _step("A1")),
  ]


def test_sft_error_filter_reads_the_response_text_as_the_official_sampler():
  # DESIGN §1.3 and sample_sft_data.py drop a trajectory whose *text* contains "error" (any case). An error seen only
  # while a code block was still open (its observation never reaches the text) does not drop it; we used to read the
  # observations, which dropped such trajectories and kept texts that report an error in words.
  spec = ("root", 0.0, None, [
      ("P", 0.9, None, [("P1", 0.9, "correct", [])]),
      ("R", 0.5, None, [("R1", 0.5, "correct", [])]),
      ("S", 0.2, None, [("S1", 0.2, "correct", [])]),
  ])
  record, ids = build_tree(spec)
  record["nodes"][ids["P"]]["observation"] = "SyntaxError: unexpected EOF (<unknown>, line 2)"  # block still open
  record["nodes"][ids["R1"]]["text"] += "\n# the relative Error is below 1%"
  got = extract.sft_records([trees.tree_from_dict(record)])
  assert got == [formats.SftRecord("Q?", _step("P") + _step("P1")), formats.SftRecord("Q?", _step("S") + _step("S1"))]


def test_sft_per_problem_zero_keeps_none(tree1):
  # The limit was checked only after a record was added, so 0 (or less) kept every trajectory.
  tree, _ = tree1
  assert extract.sft_records([tree], extract.SftConfig(per_problem=0)) == []
  assert len(extract.sft_records([tree], extract.SftConfig(per_problem=1))) == 1


@pytest.mark.parametrize("make,settings,message", [
    # An empty marker, meant as "no error filter", is in every text: every trajectory was dropped, no record written.
    (extract.SftConfig, dict(error_marker=""), r"SftConfig.error_marker must be a non-empty string, got ''"),
    (extract.SftConfig, dict(error_marker=None), r"SftConfig.error_marker must be a non-empty string, got None"),
    (extract.SftConfig, dict(per_problem=2.5), r"SftConfig.per_problem must be an integer >= 0, got 2.5"),  # kept 3
    # per_side=-1 ("no limit") sliced pos[:-1]: every candidate but the last, without an error.
    (extract.PairConfig, dict(per_side=-1), r"PairConfig.per_side must be an integer >= 0, got -1"),
    (extract.PairConfig, dict(per_side_vs_single=-1), r"PairConfig.per_side_vs_single must be an integer >= 0"),
    (extract.PairConfig, dict(per_side=2.5), r"PairConfig.per_side must be an integer >= 0, got 2.5"),  # slice error
    (extract.PairConfig, dict(min_edit_distance=None), r"PairConfig.min_edit_distance must be an integer >= 0"),
    # A NaN margin compares false: no pair passed the filter and the pairs file came out empty.
    (extract.PairConfig, dict(min_q_margin=float("nan")), r"PairConfig.min_q_margin must be a finite number, got nan"),
])
def test_a_bad_extraction_setting_is_refused_on_construction(make, settings, message):
  with pytest.raises(ValueError, match=message):
    make(**settings)


def test_sft_pools_trees_of_one_problem_and_dedups():
  rec1, _ = build_tree(("root", 0.0, None, [("X", 0.2, None, [("X1", 0.2, "correct", [])])]))
  rec2, _ = build_tree(("root", 0.0, None, [("X", 0.2, None, [("X1", 0.2, "correct", [])]),
                                            ("Y", 0.5, None, [("Y1", 0.5, "correct", [])]),
                                            ("Z", 0.1, None, [("Z1", 0.1, "correct", [])])]))
  rec3, _ = build_tree(("root", 0.0, None, [("W", 0.3, "correct", [])]), problem_id="p/1",
                       question="Other?")
  ts = [trees.tree_from_dict(r) for r in (rec1, rec2, rec3)]
  got = extract.sft_records(ts)
  assert got == [
      formats.SftRecord("Q?", _step("Y") + _step("Y1")),
      formats.SftRecord("Q?", _step("X") + _step("X1")),   # the duplicate X in tree 2 counted once
      formats.SftRecord("Other?", _step("W")),
  ]


def test_step_pairs_two_vs_two_margin_and_walk(tree1):
  tree, _ = tree1
  got = extract.step_pairs(tree)
  prompt = tree.prompt
  # Root: positives (correct below) by Q desc: C 0.9, E 0.8, A 0.6 -> C, E; negatives by Q asc:
  # B -0.7, A 0.6 -> B, A. (C,A) and (E,A) fail the 0.5 margin. Then the walk enters mixed A:
  # 1 positive (A1) vs 1 negative (A2).
  assert got == [
      formats.PpmPair(prompt, C_TEXT, _step("B"), 2, 2),
      formats.PpmPair(prompt, _step("E"), _step("B"), 2, 2),
      formats.PpmPair(prompt + _step("A"), _step("A1"), _step("A2"), 1, 1),
  ]
  assert [p.weight for p in got] == [0.25, 0.25, 1.0]


def test_step_pairs_invalid_terminals_as_wrong(tree1):
  tree, _ = tree1
  got = extract.step_pairs(tree, extract.PairConfig(invalid_as_wrong=True))
  # Negatives by Q asc now: D -1.0, B -0.7 (A 0.6 not selected); the walk into A adds one more pair.
  assert [(p.pos, p.neg, p.pos_count, p.neg_count) for p in got[:4]] == [
      (C_TEXT, _step("D"), 2, 2), (C_TEXT, _step("B"), 2, 2),
      (_step("E"), _step("D"), 2, 2), (_step("E"), _step("B"), 2, 2)]
  assert len(got) == 5


def test_one_vs_four_rule_and_edit_distance():
  near = _step("P")[:-14] + "# tiny\n<end_of_step>"   # < 20 edits from P's text
  spec = ("root", 0.0, None, [
      ("P", 0.8, "correct", []),
      ("N1", -0.9, "wrong", []), ("N2", -0.8, "wrong", []), ("N3", -0.7, "wrong", []),
      ("N4", -0.6, "wrong", []), ("N5", -0.5, "wrong", [])])
  record, ids = build_tree(spec)
  record["nodes"][ids["N2"]]["text"] = near
  assert extract.edit_distance(_step("P"), near) < 20
  got = extract.step_pairs(trees.tree_from_dict(record))
  # One positive -> up to 4 negatives, lowest Q first: N1..N4 (N5 not selected); N2 dropped by edit
  # distance; every pair keeps neg_count = 4 (the number selected).
  assert [(p.pos, p.neg, p.pos_count, p.neg_count) for p in got] == [
      (_step("P"), _step("N1"), 1, 4), (_step("P"), _step("N3"), 1, 4), (_step("P"), _step("N4"), 1, 4)]


def test_four_vs_one_rule():
  spec = ("root", 0.0, None, [
      ("P1", 0.9, "correct", []), ("P2", 0.8, "correct", []), ("P3", 0.7, "correct", []),
      ("P4", 0.6, "correct", []), ("P5", 1.0, "correct", []), ("N", -0.5, "wrong", [])])
  got = extract.step_pairs(trees.tree_from_dict(build_tree(spec)[0]))
  assert [(p.pos, p.pos_count, p.neg_count) for p in got] == [
      (_step("P5"), 4, 1), (_step("P1"), 4, 1), (_step("P2"), 4, 1), (_step("P3"), 4, 1)]


def test_best_continuation_must_beat_negative():
  # X has the higher Q but its continuation to the correct leaf averages
  # (0.5 - 0.9 - 0.9) / 3 = -0.433 < Y's (-0.5 + 0.0) / 2 = -0.25: no pair at the root.
  spec = ("root", 0.0, None, [
      ("X", 0.5, None, [("X1", -0.9, None, [("X2", -0.9, "correct", [])])]),
      ("Y", -0.5, None, [("Y1", 0.0, "wrong", [])])])
  assert extract.step_pairs(trees.tree_from_dict(build_tree(spec)[0])) == []
  # Raising X2 flips the continuation comparison: (0.5 - 0.9 + 0.9) / 3 = 0.167 > -0.25.
  spec[3][0][3][0][3][0] = ("X2", 0.9, "correct", [])
  got = extract.step_pairs(trees.tree_from_dict(build_tree(spec)[0]))
  assert [(p.pos, p.neg) for p in got] == [(_step("X"), _step("Y"))]


def test_q_values_equal_as_fractions_compare_equal():
  # Q = value_sum / visits: -1/5 against -14/20 is a margin of exactly 0.5 (DESIGN: keep at >= 0.5), though the
  # float difference is 0.49999999999999994.
  assert -0.2 - (-14 / 20) < 0.5
  spec = ("root", 0.0, None, [("P", -1 / 5, "correct", []), ("N", -14 / 20, "wrong", [])])
  got = extract.step_pairs(trees.tree_from_dict(build_tree(spec)[0]))
  assert [(p.pos, p.neg) for p in got] == [(_step("P"), _step("N"))]
  # Mean Q 19/90 on both trajectories; the tie goes to the higher min Q (-5/9 > -2/3), which the float means
  # alone would rank the other way.
  low, high = [9 / 10, -2 / 3, 2 / 5], [8 / 9, -5 / 9, 3 / 10]
  assert sum(high) / 3 < sum(low) / 3
  spec = ("root", 0.0, None, [
      ("L1", low[0], None, [("L2", low[1], None, [("L3", low[2], "correct", [])])]),
      ("H1", high[0], None, [("H2", high[1], None, [("H3", high[2], "correct", [])])])])
  got = extract.sft_records([trees.tree_from_dict(build_tree(spec)[0])], extract.SftConfig(per_problem=1))
  assert got == [formats.SftRecord("Q?", _step("H1") + _step("H2") + _step("H3"))]


def test_no_pairs_without_both_outcomes():
  spec = ("root", 0.0, None, [("A", 0.9, "correct", []), ("B", 0.1, None, [])])
  assert extract.step_pairs(trees.tree_from_dict(build_tree(spec)[0])) == []


def test_final_answer_pairs(tree1):
  tree, _ = tree1
  got = extract.final_answer_pairs(tree)
  a1, a2, b, c = (_step("A") + _step("A1"), _step("A") + _step("A2"), _step("B") + _step("B1"),
                  C_TEXT + _step("C1"))
  # Correct by mean Q: C-C1 0.95, A-A1 0.8 (tie with E-E1 broken by leaf order); wrong by mean Q asc:
  # B-B1 -0.85, A-A2 -0.2.
  assert [(p.prompt, p.pos, p.neg, p.pos_count, p.neg_count) for p in got] == [
      (tree.prompt, c, b, 2, 2), (tree.prompt, c, a2, 2, 2), (tree.prompt, a1, b, 2, 2),
      (tree.prompt, a1, a2, 2, 2)]
  both = extract.ppm_pairs([tree], extract.PairConfig(final_answer_pairs=True))
  assert both == extract.step_pairs(tree) + got


def _reference_levenshtein(a, b):
  d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
  for i in range(1, len(a) + 1):
    for j in range(1, len(b) + 1):
      d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
  return d[-1][-1]


def test_edit_distance_matches_reference():
  rng = random.Random(0)
  for _ in range(200):
    a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
    b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
    ref = _reference_levenshtein(a, b)
    assert extract.edit_distance(a, b) == ref
    for limit in (1, 3, 8):
      banded = extract.edit_distance(a, b, limit)
      assert banded == ref if ref < limit else banded >= limit


def test_tree_reader_errors_name_file_line_field(tmp_path):
  record, _ = build_tree(TREE1)
  record["nodes"][3]["q"] = "high"
  path = tmp_path / "bad.jsonl"
  path.write_text("\n" + json.dumps(record) + "\n")
  with pytest.raises(trees.TreeFormatError, match=r"bad.jsonl:2: nodes\[3\].q: expected int/float"):
    trees.read_trees(path)
  record, _ = build_tree(TREE1)
  record["nodes"][2]["parent"] = 0
  path.write_text(json.dumps(record) + "\n")
  with pytest.raises(trees.TreeFormatError, match=r"bad.jsonl:1: nodes\[2\].parent"):
    trees.read_trees(path)
  path.write_text("{not json\n")
  with pytest.raises(trees.TreeFormatError, match="bad.jsonl:1: invalid JSON"):
    trees.read_trees(path)
  # A Latin-1 byte on line 2 (the bare UnicodeDecodeError named neither the file nor the line).
  record, _ = build_tree(TREE1, question="caf\u00e9?")
  path.write_bytes(b"\n" + json.dumps(record, ensure_ascii=False).encode("latin-1") + b"\n")
  with pytest.raises(trees.TreeFormatError, match="bad.jsonl:2: not valid UTF-8"):
    trees.read_trees(path)


def test_extract_files_writes_rstar_files(tmp_path):
  rec1, _ = build_tree(TREE1)
  rec2, _ = build_tree(("root", 0.0, None, [("P", 0.8, "correct", []), ("N", -0.9, "wrong", [])]),
                       problem_id="p/1", question="Other?")
  (tmp_path / "a.jsonl").write_text(json.dumps(rec1) + "\n")
  (tmp_path / "b.jsonl").write_text(json.dumps(rec2) + "\n")
  shards = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
  stats = extract.extract_files(shards, str(tmp_path / "sft.json"), str(tmp_path / "rm.jsonl"))
  ts = trees.read_trees(shards)
  assert formats.read_sft_records(tmp_path / "sft.json") == extract.sft_records(ts)
  assert formats.read_ppm_pairs(tmp_path / "rm.jsonl") == extract.ppm_pairs(ts)
  assert (stats.num_trees, stats.num_problems, stats.num_sft_records, stats.num_pairs) == (2, 2, 3, 4)


def test_extract_files_reads_shards_given_as_a_glob(tmp_path):
  # `Path.glob` yields the shards once: the output check consumed the generator and the reader got none, so the
  # files were written empty (0 trees, no error).
  rec, _ = build_tree(TREE1)
  (tmp_path / "trees-00000.jsonl").write_text(json.dumps(rec) + "\n")
  stats = extract.extract_files(tmp_path.glob("trees-*.jsonl"), str(tmp_path / "sft.json"), str(tmp_path / "rm.json"))
  ts = [trees.tree_from_dict(rec)]
  assert (stats.num_trees, stats.num_sft_records, stats.num_pairs) == (1, 2, 3)
  assert formats.read_sft_records(tmp_path / "sft.json") == extract.sft_records(ts)
  assert formats.read_ppm_pairs(tmp_path / "rm.json") == extract.ppm_pairs(ts)


def test_extract_files_without_tree_files_keeps_the_outputs_there(tmp_path):
  # A glob that matched nothing (a typo in the folder) replaced the SFT and pair files of an earlier extraction with
  # empty ones, and said only num_trees=0.
  rec, _ = build_tree(TREE1)
  (tmp_path / "trees-00000.jsonl").write_text(json.dumps(rec) + "\n")
  sft, pairs = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"
  extract.extract_files(tmp_path.glob("trees-*.jsonl"), sft, pairs)
  before = sft.read_bytes(), pairs.read_bytes()
  assert len(formats.read_sft_records(sft)) == 2 and len(formats.read_ppm_pairs(pairs)) == 3
  with pytest.raises(ValueError, match=r"^extract_files: no tree files given \(an empty list, or a glob that matched "
                                       r"nothing\); nothing written$"):
    extract.extract_files(tmp_path.glob("tree-*.jsonl"), sft, pairs)
  assert (sft.read_bytes(), pairs.read_bytes()) == before


def test_extract_files_refuses_a_tree_file_given_twice(tmp_path):
  # Overlapping globs (`*.jsonl` and `trees-*.jsonl`) read a shard twice: each of its pairs was written twice, so
  # its problems weighed double in the PPM loss.
  rec, _ = build_tree(TREE1)
  shard = tmp_path / "trees-00000.jsonl"
  shard.write_text(json.dumps(rec) + "\n")
  out = tmp_path / "pairs.jsonl"
  with pytest.raises(ValueError, match=rf"extract_files: tree file {tmp_path / '.' / shard.name} is also given as "
                                       rf"tree file {shard}"):
    extract.extract_files([shard, tmp_path / "." / shard.name], None, out)
  assert not out.exists()


def test_extract_files_refuses_to_write_over_its_trees_or_its_other_output(tmp_path):
  rec, _ = build_tree(TREE1)
  shard = tmp_path / "trees-00000.jsonl"
  shard.write_text(json.dumps(rec) + "\n")
  before = shard.read_bytes()
  # The SFT records replaced the search's tree shard (atomically, so nothing warned); the same file for both outputs
  # kept only the pairs.
  with pytest.raises(ValueError, match=rf"sft_file {shard} is the tree file {shard}: write to another file"):
    extract.extract_files([str(shard)], str(shard), None)
  with pytest.raises(ValueError, match=rf"pairs_file .*trees-00000.jsonl is the tree file {shard}"):
    extract.extract_files(str(shard), None, str(tmp_path / "." / "trees-00000.jsonl"))
  out = tmp_path / "out.jsonl"
  with pytest.raises(ValueError, match=rf"pairs_file {out} is the sft_file {out}"):
    extract.extract_files(shard, str(out), str(out))
  assert shard.read_bytes() == before and not out.exists()


def test_continuation_is_greedy_as_the_official_sampler():
  # Official `build_partial_solution`: from pos follow the highest-Q child with a correct leaf below, from neg the
  # lowest-Q child with a wrong leaf below. We used the best mean Q over all leaves below on both sides.
  # Negative side: N's greedy path N-N2-N2a averages (0 - 0.5 - 1) / 3 = -0.5 < P's (0.5 - 1 + 1) / 3 = 0.167: kept
  # (the best wrong continuation N-N1-N1a-N1b, 0.25, would have dropped it).
  spec = ("root", 0.0, None, [
      ("P", 0.5, None, [("P1", -1.0, None, [("P2", 1.0, "correct", [])])]),
      ("N", 0.0, None, [("N1", 1.0, None, [("N1a", 1.0, None, [("N1b", -1.0, "wrong", [])])]),
                        ("N2", -0.5, None, [("N2a", -1.0, "wrong", [])])])])
  got = extract.step_pairs(trees.tree_from_dict(build_tree(spec)[0]))
  assert [(p.pos, p.neg, p.pos_count, p.neg_count) for p in got] == [(_step("P"), _step("N"), 1, 1)]
  # Positive side: P's greedy path P-A-A1-A2 averages (0.6 + 0.9 - 1 + 1) / 4 = 0.375 < N's 0.4: dropped (the best
  # correct continuation P-B-B1, 0.533, would have kept it).
  spec = ("root", 0.0, None, [
      ("P", 0.6, None, [("A", 0.9, None, [("A1", -1.0, None, [("A2", 1.0, "correct", [])])]),
                        ("B", 0.0, None, [("B1", 1.0, "correct", [])])]),
      ("N", 0.1, None, [("N1", 1.0, None, [("N2", 1.0, None, [("N3", 0.9, None, [("N4", -1.0, "wrong", [])])])])])])
  assert extract.step_pairs(trees.tree_from_dict(build_tree(spec)[0])) == []


def test_sft_ties_keep_depth_first_order_not_node_ids():
  # Ids in creation order: Y (id 2) was expanded before X (id 1), so Y's answer has the lower id. The official
  # sampler lists trajectories depth-first and its stable sort keeps that order on ties: X-X1 first.
  record, ids = build_tree(("root", 0.0, None, [("X", 0.5, None, [("X1", 1.0, "correct", [])]),
                                                ("Y", 0.5, None, [("Y1", 1.0, "correct", [])])]))
  order = [ids[name] for name in ("root", "X", "Y", "Y1", "X1")]   # new id i <- old id order[i]
  new_id = {old: new for new, old in enumerate(order)}
  nodes = []
  for old in order:
    node = dict(record["nodes"][old], id=new_id[old])
    node["parent"] = -1 if node["parent"] == -1 else new_id[node["parent"]]
    node["children"] = [new_id[c] for c in node["children"]]
    nodes.append(node)
  tree = trees.tree_from_dict(dict(record, nodes=nodes))
  assert tree.nodes[3].text == _step("Y1")
  got = extract.sft_records([tree], extract.SftConfig(per_problem=1))
  assert got == [formats.SftRecord("Q?", _step("X") + _step("X1"))]


def test_extract_files_reads_a_search_output_dir(tmp_path):
  # `run_search(output_dir=D)` writes D/trees-00000.jsonl, ... and D/trees.config.json; D itself, the next phase's
  # natural input, failed as IsADirectoryError, and a glob of D/* read the config as a tree file ("invalid JSON").
  rec1, _ = build_tree(TREE1)
  rec2, _ = build_tree(("root", 0.0, None, [("P", 0.8, "correct", []), ("N", -0.9, "wrong", [])]),
                       problem_id="p/1", question="Other?")
  out = tmp_path / "trees"
  out.mkdir()
  (out / "trees-00001.jsonl").write_text(json.dumps(rec2) + "\n")
  (out / "trees-00000.jsonl").write_text(json.dumps(rec1) + "\n")
  (out / "trees.config.json").write_text(json.dumps({"num_rollouts": 2}, indent=1))
  stats = extract.extract_files(out, str(tmp_path / "sft.json"), str(tmp_path / "rm.jsonl"))
  assert (stats.num_trees, stats.num_problems, stats.num_sft_records, stats.num_pairs) == (2, 2, 3, 4)
  ts = [trees.tree_from_dict(rec1), trees.tree_from_dict(rec2)]  # shard order
  assert formats.read_ppm_pairs(tmp_path / "rm.jsonl") == extract.ppm_pairs(ts)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match=rf"extract_files: {empty} holds no \.jsonl tree shards"):
    extract.extract_files(empty, None, str(tmp_path / "rm2.jsonl"))


def test_extract_files_refuses_a_dir_a_search_is_still_writing(tmp_path):
  # A search writes one shard per finished batch while it holds `{shard_prefix}.lock` in its output_dir: an extraction
  # of that folder then read the batches done so far and wrote their records and pairs as if they were the round's
  # (here 1 tree of the 2 the search will write), with no sign that data was missing.
  from rstar_jax import files  # pylint: disable=import-outside-toplevel
  rec1, _ = build_tree(TREE1)
  out = tmp_path / "trees"
  out.mkdir()
  (out / "trees-00000.jsonl").write_text(json.dumps(rec1) + "\n")
  with files.FolderLock(out, "trees.lock", "search"):  # as run_search(output_dir=out) holds it
    with pytest.raises(files.FolderInUseError, match=rf"{out}: a search is still writing tree shards here \(search "):
      extract.extract_files(out, str(tmp_path / "sft.json"), str(tmp_path / "rm.jsonl"))
  assert not (tmp_path / "sft.json").exists() and not (tmp_path / "rm.jsonl").exists()
  # Once the search is done (its lock file stays behind), the folder reads as before.
  stats = extract.extract_files(out, str(tmp_path / "sft.json"), str(tmp_path / "rm.jsonl"))
  assert stats.num_trees == 1 and stats.num_sft_records == len(extract.sft_records([trees.tree_from_dict(rec1)]))


@pytest.mark.parametrize("field", ["invalid_as_wrong", "final_answer_pairs"])
@pytest.mark.parametrize("value", ["false", None, 1])
def test_pair_switches_that_are_not_bools_are_named(field, value):
  # A config file's "false" is a non-empty str, so it ran as True: code-error terminals became wrong outcomes (other
  # pairs), or whole-trajectory pairs were added, without a word; None ran as False.
  assert bool("false")
  with pytest.raises(ValueError, match=rf"PairConfig.{field} must be a bool \(true or false\), got {value!r}"):
    extract.PairConfig(**{field: value})
