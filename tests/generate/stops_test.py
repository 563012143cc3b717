"""Stop strings on decoded text (host only), with the byte-level tiny tokenizer cut from Qwen2.5."""

from generate_helpers import tiny_tokenizer

from rstar_jax.generate import stops


def test_first_stop_is_the_earliest_occurrence():
  assert stops.first_stop("a <b> c <d>", ["<d>", "<b>"]) == (2, "<b>")
  assert stops.first_stop("xx<end_of_step>", ["<end", "<end_of_step>"]) == (2, "<end_of_step>")
  assert stops.first_stop("nothing", ["<b>"]) is None


def _brute_force(tok, prompt, tokens, stop_list):
  """The first prefix of `tokens` whose text (decoded with the prompt, prompt text removed) holds a stop."""
  prompt_text = tok.decode(prompt)
  for k in range(1, len(tokens) + 1):
    text = tok.decode(prompt + tokens[:k])[len(prompt_text):]
    found = [(text.find(s), s) for s in stop_list if s in text]
    if found:
      start, stop = min(found)
      return text[:start], stop, k
  return None


def test_stop_spanning_several_tokens_and_special_token_stops():
  tok = tiny_tokenizer()
  prompt = tok.encode("Question: what is six times seven?\n")
  tokens = tok.encode("The answer is 42, then<end_of_step> more text here")
  assert len(tokens) > 12
  row = stops.RowText(tok, prompt)
  for stop_list in (["answer is 4"], ["<end_of_step>"], ["<end_of_step>", "then"], ["s 42,"], ["absent"]):
    match = row.find_stop(tokens, stop_list)
    expected = _brute_force(tok, prompt, tokens, stop_list)
    if expected is None:
      assert match is None
      continue
    assert (match.text, match.stop, match.num_tokens) == expected, stop_list
  # "answer is 4" spans several tokens, starting inside the token " answer"
  match = row.find_stop(tokens, ["answer is 4"])
  assert match.text == "The " and match.num_tokens == len(tok.encode("The answer is 4"))
  assert match.num_tokens - len(tok.encode("The")) >= 3


def test_tail_trigger():
  tok = tiny_tokenizer()
  rows = [tok.encode("abc<end_of_code>def"), tok.encode("no stop here at all")]
  assert stops.tail_contains_stop(tok, rows, [0, 3], ["<end_of_code>"]) == [True, False]
  assert stops.tail_start(100, ["<end_of_code>"]) == 100 - 4 * len("<end_of_code>") - 4
