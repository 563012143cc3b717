"""The code-augmented step protocol (DESIGN §1.1): candidate handling, program building, and real
snippets through the real sandbox (accumulated code, error threshold, output wrapping)."""

import pytest

from rstar_jax.search.host import HostTree
from rstar_jax.search.interfaces import StepCandidate
from rstar_jax.search.scripted import FakeResult, to_candidate
from rstar_jax.search.step import (ParentState, StepConfig, code_history, dedupe_candidates,
                                   extract_program, finish_child, plan_child)
from rstar_jax.search.tree import Reason

ROOT = ParentState(depth=0, consecutive_errors=0, code_history="")


def test_dedupe_and_first_answer_rule():
  steps = ["a\n<end_of_step>", "b\n<end_of_step>", "a\n<end_of_step>", "\\boxed{1}<end_of_answer>",
           "c\n<end_of_step>", "\\boxed{2}<end_of_answer>", "\\boxed{1}<end_of_answer>"]
  cands = [to_candidate(s) for s in steps]
  # The official llm_generate: with an <end_of_answer> candidate, the expansion keeps that first answer only.
  kept = [c.step_text for c in dedupe_candidates(cands, first_answer_only=True)]
  assert kept == ["\\boxed{1}<end_of_answer>"]
  kept = [c.step_text for c in dedupe_candidates(cands, first_answer_only=False)]
  assert kept == ["a\n<end_of_step>", "b\n<end_of_step>", "\\boxed{1}<end_of_answer>",
                  "c\n<end_of_step>", "\\boxed{2}<end_of_answer>"]
  no_answer = [c.step_text for c in dedupe_candidates(cands[:3] + cands[4:5])]
  assert no_answer == ["a\n<end_of_step>", "b\n<end_of_step>", "c\n<end_of_step>"]
  # Duplicates are judged on the text without its stop string (vLLM's `out.text`), first kept.
  two = [StepCandidate("x", "<end_of_step>"), StepCandidate("x", "<end_of_code>")]
  assert dedupe_candidates(two) == two[:1]


def test_first_answer_rule_reads_the_stop_reason():
  # The official `llm_generate` keeps only the first answer when a candidate's vLLM `stop_reason` is
  # "<end_of_answer>"; a candidate that ended otherwise (eos, length: the config's stop strings lack the tag) is no
  # such candidate even when its text ends with the tag, and every candidate stays.
  cands = [StepCandidate("a\n", "<end_of_step>"), StepCandidate("The answer is 3<end_of_answer>", "eos"),
           StepCandidate("\\boxed{1}<end_of_answer>\n", "eos"), StepCandidate("b\n", "<end_of_code>"),
           StepCandidate("\\boxed{2}<end_of_answer>", "length")]
  assert dedupe_candidates(cands, first_answer_only=True) == cands
  # With one that stopped at the tag, that one alone is kept.
  assert dedupe_candidates(cands + [StepCandidate("\\boxed{4}", "<end_of_answer>")]) == [
      StepCandidate("\\boxed{4}", "<end_of_answer>")]


def test_extract_program_follows_the_official_rules():
  text = "<code>\nimport math\n<end_of_step>\n# Step 2\nx = 1\n<end_of_step>\nprint(x)\n<end_of_code>"
  assert extract_program(text) == "# ========\nimport math\n\n# Step 2\nx = 1\n\nprint(x)"
  # No <code> line: the whole text (without <end_of_step>) is the program.
  assert extract_program("x = 1\n<end_of_step>") == "x = 1"
  # Two blocks are joined with the separator line; text after <end_of_code> is not code.
  two = "<code>\na = 1\n<end_of_code>\n<output>1<end_of_output>\n<code>\nb = 2\n<end_of_code>"
  assert extract_program(two) == "# ========\na = 1\n\n# ========\nb = 2"


def test_code_history_stops_at_the_last_finished_block():
  texts = ["", "<code>\na = 1\n<end_of_step>", "print(a)\n<end_of_code>\n<output>1<end_of_output>",
           "<code>\nb = 2\n<end_of_step>", "c = 3\n<end_of_step>"]
  assert code_history(texts) == "<code>\nb = 2\n<end_of_step>c = 3\n<end_of_step>"
  assert code_history(texts[:3]) == ""
  assert code_history(texts[:2]) == "<code>\na = 1\n<end_of_step>"


@pytest.mark.parametrize("candidate,kind,answer", [
    (StepCandidate("So \\boxed{\\frac{1}{2}} is it.\n", "<end_of_answer>"), "answer", "\\frac{1}{2}"),
    (StepCandidate("\\boxed{3} and \\boxed{4}", "eos"), "answer", "4"),
    (StepCandidate("\\boxed{3", "<end_of_answer>"), "unparsable", None),
    # Official: "boxed" in the text makes it an answer, and `extract_boxed_answer` reads the last `\\boxed{`, here a
    # closed one before the bare `\\boxed` the token limit cut off.
    (StepCandidate("So it is \\boxed{5}. So the answer is \\boxed", "length"), "answer", "5"),
    # A box without braces (`\\boxed 3`, read as "3") ends at the stop string: that tag is not part of the answer.
    (StepCandidate("So the answer is \\boxed 3", "<end_of_answer>"), "answer", "3"),
    (StepCandidate("  \n", "<end_of_step>"), "unparsable", None),
    (StepCandidate("x = 1\n", "length"), "unparsable", None),
    (StepCandidate("x = 1\n", "eos"), "unparsable", None),
    (StepCandidate("x = 1\n", "<end_of_step>"), "code", None),
])
def test_plan_child_classification(candidate, kind, answer):
  planned = plan_child(candidate, ROOT)
  assert planned.kind == kind
  assert planned.final_answer == answer
  assert (planned.program is not None) == (kind == "code")
  assert planned.depth == 1


def test_finish_child_errors_output_and_depth():
  cfg = StepConfig(errors_threshold=2, max_depth=3)
  close = plan_child(StepCandidate("print(1)\n", "<end_of_code>"), ROOT)
  child = finish_child(close, FakeResult("1\n"), ROOT, cfg)
  assert child.text == "print(1)\n<end_of_code>\n<output>1<end_of_output>"
  assert (child.reason, child.consecutive_errors, child.observation) == (Reason.NONE, 0, "1")
  err = plan_child(StepCandidate("y = z\n", "<end_of_step>"), ROOT)
  child = finish_child(err, FakeResult("NameError: name 'z' is not defined"), ROOT, cfg)
  assert child.text == "y = z\n<end_of_step>"  # not closing: no output appended
  assert (child.reason, child.consecutive_errors) == (Reason.NONE, 1)
  one_error = ParentState(depth=1, consecutive_errors=1, code_history="y = z\n<end_of_step>")
  err2 = plan_child(StepCandidate("w = 1/0\n", "<end_of_step>"), one_error)
  child = finish_child(err2, FakeResult("ZeroDivisionError: division by zero"), one_error, cfg)
  assert child.reason == Reason.TOO_MANY_ERRORS and child.consecutive_errors == 2
  assert child.text == ("w = 1/0\n<end_of_step><end_of_code>\n"
                        "<output>ZeroDivisionError: division by zero<end_of_output>")
  ok = finish_child(err2, FakeResult("fine"), one_error, cfg)
  assert (ok.reason, ok.consecutive_errors) == (Reason.NONE, 0)  # an error-free step resets it
  deep = ParentState(depth=3, consecutive_errors=0, code_history="")
  assert finish_child(plan_child(StepCandidate("a = 1\n", "<end_of_step>"), deep), FakeResult(""),
                      deep, cfg).reason == Reason.MAX_DEPTH
  answer = plan_child(StepCandidate("\\boxed{1}", "<end_of_answer>"), deep)
  assert finish_child(answer, None, deep, cfg).reason == Reason.ANSWER  # answers stay answers


@pytest.fixture(scope="module")
def pool():
  import sandbox  # pylint: disable=import-outside-toplevel
  with sandbox.SandboxPool(num_workers=2, timeout_s=2.0, memory_mb=512) as p:
    yield p


def _expand(host, pool, parent, steps, cfg):
  """Runs the protocol for candidate `steps` below `parent` through the real sandbox."""
  state = host.parent_state(parent)
  planned = [plan_child(to_candidate(s), state) for s in steps]
  programs = [p.program for p in planned if p.program is not None]
  results = iter(pool.run(programs))
  ids = []
  for p in planned:
    child = finish_child(p, next(results) if p.program is not None else None, state, cfg)
    ids.append(host.add_child(parent, child))
  return ids


def test_real_sandbox_accumulated_code_errors_and_output(pool):
  cfg = StepConfig(errors_threshold=2, max_depth=8)
  host = HostTree("Question: q\n")
  (s1,) = _expand(host, pool, 0, ["<code>\nimport math\nx = 3\n<end_of_step>"], cfg)
  assert host.nodes[s1].code == "# ========\nimport math\nx = 3"
  assert host.nodes[s1].observation == "" and host.nodes[s1].reason == Reason.NONE
  (s2,) = _expand(host, pool, s1, ["y = x * 2\n<end_of_step>"], cfg)
  # The program of every step re-runs the code of the open block (fresh namespace each time).
  s3, s3b = _expand(host, pool, s2, ["print(math.sqrt(y * 6))\n<end_of_code>",
                                     "print(8.94427190999916)\n<end_of_code>"], cfg)
  assert host.nodes[s3].code == "# ========\nimport math\nx = 3\ny = x * 2\nprint(math.sqrt(y * 6))"
  assert host.nodes[s3].text == "print(math.sqrt(y * 6))\n<end_of_code>\n<output>6.0<end_of_output>"
  assert host.nodes[s3b].observation == "8.9443"  # rStar's 4-decimal rounding of printed floats
  # A new block starts after the finished one: its variables are gone.
  (s4,) = _expand(host, pool, s3, ["<code>\nprint(x)\n<end_of_code>"], cfg)
  n4 = host.nodes[s4]
  assert n4.code == "# ========\nprint(x)"
  assert n4.observation == "NameError: name 'x' is not defined"
  assert n4.text.endswith("<output>NameError: name 'x' is not defined<end_of_output>")
  assert (n4.consecutive_errors, n4.reason) == (1, Reason.NONE)  # below errors_threshold = 2
  s5, s5b, s5c = _expand(host, pool, s4, ["<code>\nprint(1/0)\n<end_of_step>",
                                          "<code>\nwhile True:\n    pass\n<end_of_step>",
                                          "<code>\nprint(2)\n<end_of_code>"], cfg)
  n5 = host.nodes[s5]
  assert n5.reason == Reason.TOO_MANY_ERRORS and n5.consecutive_errors == 2
  assert n5.text == ("<code>\nprint(1/0)\n<end_of_step><end_of_code>\n"
                     "<output>ZeroDivisionError: division by zero<end_of_output>")
  assert host.nodes[s5b].reason == Reason.TOO_MANY_ERRORS  # a timeout is an error too
  assert host.nodes[s5b].observation.startswith("TimeoutError")
  assert (host.nodes[s5c].reason, host.nodes[s5c].consecutive_errors) == (Reason.NONE, 0)
  assert host.policy_prompt(s3).endswith("x = 3\n<end_of_step>y = x * 2\n<end_of_step>"
                                         "print(math.sqrt(y * 6))\n<end_of_code>\n"
                                         "<output>6.0<end_of_output>")


def test_real_sandbox_steps_an_imperfect_policy_writes(pool):
  """Hand-derived from the official `rstar_step_result_unwrap` + `MCTS.create_child`: without "boxed" a step is
  code whatever its tags or stop string, so its text runs as Python (here a SyntaxError, an error)."""
  closed = ParentState(depth=3, consecutive_errors=0, code_history="")  # the parent closed its code block
  steps = [StepCandidate("<answer>The answer is 5", "<end_of_answer>"),  # no box: not an answer
           StepCandidate("<answer>The answer is 5\n", "<end_of_step>"),
           StepCandidate("print(1)\n", "<end_of_code>")]  # closes a block never opened: the whole text is the program
  planned = [plan_child(c, closed) for c in steps]
  assert [p.kind for p in planned] == ["code"] * 3
  assert [p.program for p in planned] == ["<answer>The answer is 5<end_of_answer>", "<answer>The answer is 5",
                                          "print(1)\n<end_of_code>"]
  results = pool.run([p.program for p in planned])
  assert all(r.observation.startswith("SyntaxError: ") for r in results)
  # errors_threshold 1 (rounds after the bootstrap): the path ends, its text closed with the output block.
  ends = [finish_child(p, r, closed, StepConfig(errors_threshold=1)) for p, r in zip(planned, results)]
  assert [c.reason for c in ends] == [Reason.TOO_MANY_ERRORS] * 3
  assert ends[0].text == (f"<answer>The answer is 5<end_of_answer><end_of_code>\n<output>{results[0].observation}"
                          "<end_of_output>")
  assert ends[2].text == f"print(1)\n<end_of_code>\n<output>{results[2].observation}<end_of_output>"
  # errors_threshold 2 (bootstrap): one error is allowed; only the step that closed a block gets an output block.
  goes_on = [finish_child(p, r, closed, StepConfig(errors_threshold=2)) for p, r in zip(planned, results)]
  assert [(c.reason, c.consecutive_errors) for c in goes_on] == [(Reason.NONE, 1)] * 3
  assert [c.text for c in goes_on[:2]] == [s.step_text for s in steps[:2]]
  assert goes_on[2].text == ends[2].text
