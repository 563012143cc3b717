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


def _vllm_output_text(hf_tok, prompt, tokens):
  """`output.text` of vLLM 0.6.6 after `tokens` (skip_special_tokens=False, a fast tokenizer), transcribed from
  `transformers_utils/detokenizer.py` `Detokenizer.decode_sequence_inplace` and `detokenizer_utils.py`
  `convert_prompt_ids_to_tokens` / `detokenize_incrementally`: a token's text is held back while the text ends in
  U+FFFD (an unfinished UTF-8 character), and emitted with the token that finishes it."""
  prev = hf_tok.convert_ids_to_tokens(prompt[-5 - 2:])
  read_offset = len(prev)
  prefix_offset = max(read_offset - 5, 0)
  text = ""
  for token in tokens:
    output_tokens = prev + hf_tok.convert_ids_to_tokens([token])
    prefix_text = hf_tok.convert_tokens_to_string(output_tokens[prefix_offset:read_offset])
    new_text = hf_tok.convert_tokens_to_string(output_tokens[prefix_offset:])
    if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
      text += new_text[len(prefix_text):]
      prefix_offset, read_offset = read_offset, len(output_tokens)
    prev = output_tokens
  return text


def test_a_text_ending_inside_a_character_is_the_text_vllm_has_emitted():
  # A row cut (length, or an EOS next) after the first tokens of a multi-byte character: the text ended in U+FFFD
  # here, while vLLM's incremental detokenizer holds those bytes back, so its `output.text` (the step rStar appends
  # to the tree) ends before them.
  import transformers  # pylint: disable=g-import-not-at-top
  from generate_helpers import QWEN_TOKENIZER  # pylint: disable=g-import-not-at-top

  from rstar_jax.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
  hf_tok = transformers.AutoTokenizer.from_pretrained(QWEN_TOKENIZER)
  tok = load_tokenizer(QWEN_TOKENIZER)
  ids = hf_tok.encode("Let x = 3.<|im_end|> So \U0001F9FF\U0001F9FF done\U0001F9FF", add_special_tokens=False)
  prompt, tokens = ids[:4], ids[4:]
  row = stops.RowText(tok, prompt)
  cut_inside = 0
  for k in range(len(tokens) + 1):
    expected = _vllm_output_text(hf_tok, prompt, tokens[:k])
    cut_inside += tok.decode(prompt + tokens[:k]).endswith("\ufffd")
    assert row.of(tokens[:k]) == expected, k
  assert cut_inside >= 2  # " \U0001F9FF" is three tokens the first time
