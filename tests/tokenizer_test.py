"""Tests of rstar_jax.tokenizer against transformers, sentencepiece and HF's embedding resize."""

import json
import pathlib
import re
import shutil

import numpy as np
import pytest

from rstar_jax import tokenizer as tk

QWEN_LEN = 151665  # 151643 BPE tokens + 22 special tokens (shared data README)
QWEN_EOS = 151643  # <|endoftext|>

# Varied texts: prose, LaTeX, unicode (NFC-sensitive "e" + combining accent, CJK, emoji), code, whitespace runs,
# chat markers, rStar tags glued to words, partial tags and the "\n<|assistant|>" / "<|assistant|>" overlap.
TEXTS = [
    "Hello world",
    "",
    " ",
    "What is $\\frac{3}{4} + \\sqrt{2}^{10}$? Answer: \\boxed{1024.75}",
    "Caf\u00e9 vs Cafe\u0301 \u2014 \u6570\u5b66\u95ee\u9898 \u00bd \u03c0\u2248 3.14159 "
    "\U0001F600\U0001F9EE \u00e9\u00e8\u00ea",
    "def f(x):\n\tif x > 0:\n        return x ** 2  # square\n    return -x\n\n\n",
    "<|im_start|>user\nSolve 2x+3=7<|im_end|>\n<|im_start|>assistant\n",
    "<code>\n# Step 1: compute\nx = 2 * 21\n<end_of_step>\n# Step 2\nprint(x)\n<end_of_code>\n"
    "<output>42<end_of_output>\n<answer>The answer is \\boxed{42}<end_of_answer>",
    "x<end_of_step>y<end_of_code>z<end_of_answer>",
    "  <end_of_step>  spaced  <end_of_code>\t",
    "<|user|>:\nWhat is 1+1?\n<|assistant|>: Let's think step by step and solve the problem with code.",
    "a\n<|assistant|>b\n\n<|assistant|><|assistant|>",
    "<end_of_ste <end_of_step <code <BACK><refine>r<end_of_refine><error_info>e<end_of_error_info>",
    "1234567890 12,345.678e-9 0x1F \u00a0nbsp\u2009thin",
]


def _shared_texts(shared_data: pathlib.Path) -> list[str]:
  """Real rStar prompts and solutions from the shared data."""
  sft = json.loads((shared_data / "formats" / "sft_data_examples.json").read_text())
  shots = json.loads((shared_data / "prompts" / "few_shots.json").read_text())
  texts = [r["query"] for r in sft] + [r["response"] for r in sft] + list(shots)
  assert len(texts) > 10 and all(isinstance(t, str) for t in texts)
  return texts


@pytest.fixture(scope="module")
def qwen_dir(shared_data: pathlib.Path) -> pathlib.Path:
  return shared_data / "qwen2.5-tokenizer"


@pytest.fixture(scope="module")
def hf_refs(qwen_dir: pathlib.Path):
  """transformers tokenizers: (plain, with the rStar tags added exactly as the official SFT code does)."""
  import transformers  # pylint: disable=g-import-not-at-top
  plain = transformers.AutoTokenizer.from_pretrained(str(qwen_dir))
  tagged = transformers.AutoTokenizer.from_pretrained(str(qwen_dir))
  tagged.add_special_tokens({"additional_special_tokens": list(tk.RSTAR_SPECIAL_TOKENS)})
  return plain, tagged


# --- HF (Rust tokenizers) backend ---------------------------------------------------------------------------------


def test_qwen_known_ids(qwen_dir):
  tok = tk.load_tokenizer(qwen_dir)
  assert isinstance(tok, tk.HFTokenizer)
  assert tok.encode("Hello world") == [9707, 1879]
  assert tok.encode("<|im_start|>user\n") == [151644, 872, 198]
  assert tok.encode("Hello world", add_special_tokens=True) == [9707, 1879]  # Qwen2 adds no BOS/EOS
  assert len(tok) == tok.vocab_size == QWEN_LEN
  assert tok.eos_id == QWEN_EOS and tok.pad_id == QWEN_EOS and tok.bos_id is None
  assert tok.token_to_id("<|im_end|>") == 151645 and tok.id_to_token(151645) == "<|im_end|>"
  assert tok.token_to_id("<end_of_step>") is None and tok.id_to_token(10**7) is None
  with pytest.raises(ValueError, match="out of range"):
    tok.decode([9707, QWEN_LEN])
  assert tok.decode(np.array([9707, 1879], np.int32)) == "Hello world"
  # A tokenizer.json path loads too.
  assert tk.load_tokenizer(qwen_dir / "tokenizer.json").encode("Hello world") == [9707, 1879]


def test_matches_transformers_before_and_after_tags(qwen_dir, hf_refs, shared_data):
  plain, tagged = hf_refs
  texts = TEXTS + _shared_texts(shared_data)
  tok = tk.load_tokenizer(qwen_dir)
  for ref, stage in ((plain, "before"), (tagged, "after")):
    if stage == "after":
      assert tk.add_rstar_tokens(tok) == len(tk.RSTAR_SPECIAL_TOKENS)
    assert len(tok) == len(ref), stage
    expected = [ref.encode(t, add_special_tokens=False) for t in texts]
    for text, ids in zip(texts, expected):
      assert tok.encode(text) == ids, (stage, text)
    assert tok.encode_batch(texts) == expected, stage
    for skip in (False, True):
      want = [ref.decode(ids, skip_special_tokens=skip) for ids in expected]
      assert [tok.decode(ids, skip_special_tokens=skip) for ids in expected] == want, (stage, skip)
      assert tok.decode_batch(expected, skip_special_tokens=skip) == want, (stage, skip)
  # The tags are ordinary text before they are added, single ids after: the two stages must differ.
  assert plain.encode(TEXTS[8]) != tagged.encode(TEXTS[8])


def test_step_tags_are_single_consecutive_tokens(qwen_dir):
  tok = tk.load_tokenizer(qwen_dir)
  assert all(len(tok.encode(s)) > 1 for s in tk.STEP_STOP_STRINGS)  # split before adding
  n = len(tk.RSTAR_SPECIAL_TOKENS)
  assert n == 15 and tk.PPM_SPECIAL_TOKENS == tk.RSTAR_SPECIAL_TOKENS[:12]
  assert tk.add_rstar_tokens(tok, "policy") == n
  assert tk.add_rstar_tokens(tok, "policy") == 0  # idempotent
  assert len(tok) == QWEN_LEN + n
  ids = [tok.token_to_id(t) for t in tk.RSTAR_SPECIAL_TOKENS]
  assert ids == list(range(QWEN_LEN, QWEN_LEN + n))
  for token, token_id in zip(tk.RSTAR_SPECIAL_TOKENS, ids):
    assert tok.encode(token) == [token_id], token
    assert tok.decode([token_id]) == token and tok.id_to_token(token_id) == token
  for stop in tk.STEP_STOP_STRINGS:
    ids = tok.encode(f"x = 1{stop}\n")
    assert ids.count(tok.token_to_id(stop)) == 1
    assert tok.decode(ids) == f"x = 1{stop}\n"
    assert tok.decode(ids, skip_special_tokens=True) == "x = 1\n"
  # The longer "\n<|assistant|>" wins over "\n" + "<|assistant|>".
  assert tok.encode("\n<|assistant|>") == [tok.token_to_id("\n<|assistant|>")]


def test_ppm_tags_then_policy_tags(qwen_dir):
  tok = tk.load_tokenizer(qwen_dir)
  assert tk.add_rstar_tokens(tok, "ppm") == 12
  assert tk.add_rstar_tokens(tok, "policy") == 3
  assert [tok.token_to_id(t) for t in tk.RSTAR_SPECIAL_TOKENS] == list(range(QWEN_LEN, QWEN_LEN + 15))
  with pytest.raises(ValueError, match="policy"):
    tk.add_rstar_tokens(tok, "value")
  with pytest.raises(TypeError):
    tok.add_special_tokens("<code>")


# --- embedding resize ---------------------------------------------------------------------------------------------


def _table(rows: int, dim: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
  return (np.random.default_rng(seed).normal(0.3, 1.5, (rows, dim))).astype(dtype)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_resize_keeps_rows_and_mean_init(backend):
  table = _table(300, 48)
  if backend == "jax":
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    table_in = jnp.asarray(table)
  else:
    table_in = table
  for init in ("random", "mean"):
    out = tk.resize_embedding(table_in, 315, init=init, seed=3)
    assert type(out) is type(table_in) or backend == "jax"
    out = np.asarray(out)
    assert out.shape == (315, 48) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:300], table)  # bit-exact
    if init == "mean":
      want = np.mean(table.astype(np.float64), axis=0)
      np.testing.assert_allclose(out[300:], np.broadcast_to(want, (15, 48)), rtol=0, atol=2e-6)
  # Vocabulary on axis 1 (a Flax [D, V] LM-head kernel): the same rows, transposed.
  out_t = np.asarray(tk.resize_embedding(table_in.T, 315, init="mean", axis=1))
  assert out_t.shape == (48, 315)
  np.testing.assert_array_equal(out_t[:, :300], table.T)
  np.testing.assert_allclose(out_t[:, 300:].T, np.broadcast_to(want, (15, 48)), rtol=0, atol=2e-6)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_resize_random_init_std(backend):
  std = 0.02
  rows, dim, new = 64, 128, 1024
  table = _table(rows, dim)
  if backend == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    out = np.asarray(tk.resize_embedding(jax.numpy.asarray(table), rows + new, rng=jax.random.PRNGKey(7), std=std))
  else:
    out = tk.resize_embedding(table, rows + new, rng=np.random.default_rng(7), std=std)
  np.testing.assert_array_equal(out[:rows], table)
  fresh = out[rows:].astype(np.float64)
  n = fresh.size  # 131072 i.i.d. normal(0, std) draws
  # Sample std of n normal draws has relative standard error 1/sqrt(2n) (0.2%); sample mean has std/sqrt(n).
  # Allow 6 standard errors: a false failure has probability < 1e-8.
  assert abs(fresh.std() / std - 1) < 6 / np.sqrt(2 * n)
  assert abs(fresh.mean()) < 6 * std / np.sqrt(n)
  # Different seeds give different rows; the same seed the same rows.
  grow = lambda seed: tk.resize_embedding(table, rows + 4, seed=seed)
  assert not np.array_equal(grow(1), grow(2))
  np.testing.assert_array_equal(grow(1), grow(1))


def test_resize_rng_of_the_wrong_kind_is_refused():
  """`rng` overrides `seed`: one the table's backend cannot draw from (a jax key for a numpy table, a legacy
  RandomState, an int) gave the `seed` rows silently, so two "different" keys drew the same new rows."""
  import jax  # pylint: disable=g-import-not-at-top
  table = _table(6, 4)
  got = tk.resize_embedding(table, 9, rng=np.random.default_rng(7), std=0.5)
  np.testing.assert_array_equal(got[6:], np.random.default_rng(7).normal(0.0, 0.5, (3, 4)).astype(np.float32))
  for rng in (jax.random.PRNGKey(5), np.random.RandomState(5), 5):
    with pytest.raises(TypeError, match="rng"):
      tk.resize_embedding(table, 9, rng=rng)
  with pytest.raises(TypeError, match="rng"):
    tk.resize_embedding(jax.numpy.asarray(table), 9, rng=np.random.default_rng(5))


def test_resize_no_shrink_and_dtype():
  # Qwen2.5 checkpoints carry 152064 rows for 151665 + 15 tokens: nothing to do (scaled down here).
  table = _table(152, 8)
  assert tk.resize_embedding(table, 150) is table
  assert tk.resize_embedding(table, 152) is table
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  bf16 = _table(40, 16).astype(ml_dtypes.bfloat16)
  for init in ("random", "mean"):
    out = tk.resize_embedding(bf16, 45, init=init)
    assert out.dtype == bf16.dtype and out.shape == (45, 16)
    np.testing.assert_array_equal(out[:40].view(np.uint16), bf16.view(np.uint16))
  with pytest.raises(ValueError, match="init"):
    tk.resize_embedding(table, 200, init="zeros")
  with pytest.raises(ValueError, match="2-D"):
    tk.resize_embedding(table[0], 200)
  with pytest.raises(ValueError, match="axis"):
    tk.resize_embedding(table, 200, axis=2)


def test_resize_matches_transformers_resize_token_embeddings():
  """HF's own resize on an untied tiny Qwen2: old rows kept, new rows ~ normal(0, initializer_range) (official
  setting, mean_resizing=False) or ~ the old mean (HF's default mean_resizing=True, noise 1e-9 x covariance)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  init_range, vocab, hidden, new = 0.05, 128, 32, 2048
  cfg = transformers.Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                                 initializer_range=init_range)
  torch.manual_seed(0)
  for mean_resizing in (False, True):
    model = transformers.Qwen2ForCausalLM(cfg)
    emb = model.get_input_embeddings().weight.detach().numpy().copy()  # [V, D]
    head = model.get_output_embeddings().weight.detach().numpy().copy()  # [V, D]
    model.resize_token_embeddings(vocab + new, mean_resizing=mean_resizing)
    hf_emb = model.get_input_embeddings().weight.detach().numpy()
    hf_head = model.get_output_embeddings().weight.detach().numpy()
    init = "mean" if mean_resizing else "random"
    for old, hf_new, axis in ((emb, hf_emb, 0), (head, hf_head, 0), (head.T, hf_head.T, 1)):
      ours = tk.resize_embedding(old, vocab + new, init=init, std=init_range, axis=axis)
      assert ours.shape == hf_new.shape
      np.testing.assert_array_equal(ours, np.where(_new_mask(ours.shape, vocab, axis), ours, hf_new))
      ours_new, hf_fresh = _new_part(ours, vocab, axis), _new_part(hf_new, vocab, axis)
      if mean_resizing:
        # HF noise per entry: sqrt(1e-9 * var(old)) ~ 1e-6 here.
        np.testing.assert_allclose(ours_new, hf_fresh, rtol=0, atol=2e-5)
      else:
        n = hf_fresh.size  # both should be normal(0, init_range): 6-standard-error bounds as above
        for sample in (ours_new, hf_fresh):
          assert abs(sample.std() / init_range - 1) < 6 / np.sqrt(2 * n)
          assert abs(sample.mean()) < 6 * init_range / np.sqrt(n)


def _new_mask(shape, old_rows, axis):
  idx = np.arange(shape[axis]) >= old_rows
  return idx[:, None] if axis == 0 else idx[None, :]


def _new_part(table, old_rows, axis):
  return table[old_rows:] if axis == 0 else table[:, old_rows:].T


# --- sentencepiece backend ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory) -> pathlib.Path:
  """A tiny Llama-style sentencepiece model (BPE, byte fallback, identity normalisation) trained on generated text."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("sp")
  rng = np.random.default_rng(0)
  words = ("the answer is of and to compute total number step value print def return if for in x y z sum "
           "Question solve equation each times cost dollars").split()
  lines = []
  for _ in range(2000):
    k = rng.integers(3, 14)
    lines.append(" ".join(rng.choice(words, k)) + f" {rng.integers(0, 10**6)} = x**2 + {rng.random():.3f}")
  (root / "corpus.txt").write_text("\n".join(lines))
  spm.SentencePieceTrainer.train(
      input=str(root / "corpus.txt"), model_prefix=str(root / "m"), vocab_size=300, model_type="bpe",
      byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
      character_coverage=1.0, minloglevel=2, pad_id=3)
  model_dir = root / "model"
  model_dir.mkdir()
  shutil.copy(root / "m.model", model_dir / "tokenizer.model")
  return model_dir


def _sp_reference(model_file: pathlib.Path, tokens):
  """sentencepiece with the tokens added through its official ModelProto as USER_DEFINED pieces."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=g-import-not-at-top

  proto = pb.ModelProto()
  proto.ParseFromString(model_file.read_bytes())
  for t in tokens:
    piece = proto.pieces.add()
    piece.piece, piece.score, piece.type = t, 0.0, pb.ModelProto.SentencePiece.USER_DEFINED
  return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def test_sentencepiece_matches_processor(sp_dir):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  ref = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
  tok = tk.load_tokenizer(sp_dir)
  assert isinstance(tok, tk.SentencePieceTokenizer)
  assert len(tok) == tok.vocab_size == ref.get_piece_size() == 300
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ref.bos_id(), ref.eos_id(), ref.pad_id()) == (1, 2, 3)
  expected = [ref.encode(t) for t in TEXTS]
  assert [tok.encode(t) for t in TEXTS] == expected
  assert tok.encode_batch(TEXTS) == expected
  assert tok.encode("the answer", add_special_tokens=True) == [ref.bos_id()] + ref.encode("the answer")
  assert [tok.decode(ids) for ids in expected] == [ref.decode(ids) for ids in expected]
  assert tok.decode_batch(expected) == [ref.decode(ids) for ids in expected]
  piece = ref.id_to_piece(260)
  assert tok.token_to_id(piece) == 260 and tok.id_to_token(260) == piece and tok.id_to_token(300) is None
  assert tok.token_to_id("<end_of_step>") is None and tok.token_to_id("<unk>") == ref.unk_id()
  # The model file itself loads too (any *.model name).
  assert tk.load_tokenizer(sp_dir / "tokenizer.model").encode_batch(TEXTS) == expected
  assert tk.load_tokenizer(sp_dir.parent / "m.model").encode_batch(TEXTS) == expected


def test_sentencepiece_special_tokens(sp_dir):
  tok = tk.load_tokenizer(sp_dir)
  ref = _sp_reference(sp_dir / "tokenizer.model", tk.RSTAR_SPECIAL_TOKENS)
  assert [len(tok.encode(s)) for s in tk.STEP_STOP_STRINGS] != [1, 1, 1]
  assert tk.add_rstar_tokens(tok) == 15 and tk.add_rstar_tokens(tok) == 0
  assert len(tok) == ref.get_piece_size() == 315
  assert [tok.token_to_id(t) for t in tk.RSTAR_SPECIAL_TOKENS] == list(range(300, 315))
  # As transformers, a text that starts with a tag gets no lone dummy-prefix "▁" before it (sentencepiece adds one).
  lone = ref.piece_to_id("\u2581")
  expected = [ref.encode(t) for t in TEXTS]
  expected = [ids[1:] if t.startswith(tk.RSTAR_SPECIAL_TOKENS) and ids[0] == lone else ids
              for t, ids in zip(TEXTS, expected)]
  assert [tok.encode(t) for t in TEXTS] == expected
  assert tok.encode_batch(TEXTS) == expected
  assert [tok.decode(ids) for ids in expected] == [ref.decode(ids) for ids in expected]
  for stop in tk.STEP_STOP_STRINGS:
    assert tok.encode(stop) == [tok.token_to_id(stop)]
    ids = tok.encode(f"x = 1{stop}y")
    assert ids.count(tok.token_to_id(stop)) == 1 and tok.decode(ids) == f"x = 1{stop}y"
    assert tok.decode(ids, skip_special_tokens=True) == "x = 1y"
  assert tok.decode([tok.bos_id, tok.token_to_id("<code>"), tok.eos_id], skip_special_tokens=True) == ""
  # The extended model round-trips through its bytes.
  again = tk.SentencePieceTokenizer(tok.model_proto, add_bos=True, add_eos=False, eos_token="</s>", pad_token=None,
                                    bos_token="<s>", clean_up_tokenization_spaces=False, source="bytes")
  # (Bare bytes carry no record of which pieces were added: sentencepiece's own encoding, "▁" before a leading tag.)
  assert [again.encode(t) for t in TEXTS] == [ref.encode(t) for t in TEXTS]
  with pytest.raises(ValueError, match="out of range"):
    tok.decode([len(tok)])


def test_sentencepiece_dir_with_saved_added_tokens(sp_dir, tmp_path):
  """A slow-tokenizer HF directory: tokenizer.model + added tokens recorded in tokenizer_config.json."""
  shutil.copy(sp_dir / "tokenizer.model", tmp_path / "tokenizer.model")
  cfg = {"add_bos_token": False, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
         "added_tokens_decoder": {"0": {"content": "<unk>", "special": True},
                                  "300": {"content": "<|endoftext|>", "special": True},
                                  "301": {"content": "<|user|>", "special": True}}}
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
  tok = tk.load_tokenizer(tmp_path)
  assert len(tok) == 302 and tok.eos_id == tok.pad_id == 300 and tok.token_to_id("<|user|>") == 301
  assert tok.encode("the", add_special_tokens=True) == tok.encode("the")  # add_bos_token false
  assert tok.decode(tok.encode("the<|endoftext|>"), skip_special_tokens=True) == "the"
  cfg["added_tokens_decoder"]["305"] = {"content": "<gap>", "special": True}
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="consecutive"):
    tk.load_tokenizer(tmp_path)


def _llama_dir(sp_dir: pathlib.Path, root: pathlib.Path, legacy: bool | None) -> pathlib.Path:
  """A Llama-2 style directory: tokenizer.model + tokenizer_config.json, no tokenizer.json."""
  root.mkdir()
  shutil.copy(sp_dir / "tokenizer.model", root / "tokenizer.model")
  cfg = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
         "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "clean_up_tokenization_spaces": False}
  if legacy is not None:
    cfg["legacy"] = legacy
  (root / "tokenizer_config.json").write_text(json.dumps(cfg))
  return root


# Texts on which transformers' Llama tokenizer and sentencepiece agree about spaces (neither starts a segment between
# special tokens with a space: there transformers v5 omits the dummy prefix, see the module docstring).
LLAMA_TEXTS = [t for t in TEXTS if t != " " and " <end_of_step>" not in t and "> " not in t] + [
    "<|user|>:\nWhat is 1+1?\n<|assistant|>: x", "<end_of_step>", "<code>x", "\n<|assistant|>x", "x<end_of_step>y",
    "x <end_of_step>y", "a\tb\n\n c  d", "</s>x<s>", "x</s>", "\u6570\u5b66 \U0001F600 e\u0301", "<unk>x"]


@pytest.mark.parametrize("legacy", [None, False, True])
def test_sentencepiece_matches_transformers_llama(sp_dir, tmp_path, legacy):
  """Ids and texts as transformers' LlamaTokenizer on the same directory, before and after the rStar tags."""
  import transformers  # pylint: disable=g-import-not-at-top

  directory = _llama_dir(sp_dir, tmp_path / "llama", legacy)
  hf = transformers.AutoTokenizer.from_pretrained(str(directory))
  tok = tk.load_tokenizer(directory)
  for step in ("plain", "tagged"):
    if step == "tagged":
      hf.add_special_tokens({"additional_special_tokens": list(tk.RSTAR_SPECIAL_TOKENS)})
      tk.add_rstar_tokens(tok)
    assert len(tok) == len(hf)
    for add in (False, True):
      want = [hf.encode(t, add_special_tokens=add) for t in LLAMA_TEXTS]
      assert tok.encode_batch(LLAMA_TEXTS, add_special_tokens=add) == want
      for ids in want:
        for skip in (False, True):
          assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids
  # Saved with the tags, the directory loads in transformers with the same ids.
  tok.save(tmp_path / "saved")
  again = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
  assert len(again) == len(tok)
  assert [again.encode(t, add_special_tokens=True) for t in LLAMA_TEXTS] == tok.encode_batch(LLAMA_TEXTS, True)
  assert tk.load_tokenizer(tmp_path / "saved").encode_batch(LLAMA_TEXTS) == tok.encode_batch(LLAMA_TEXTS)


def test_sentencepiece_incremental_decode_as_full_decode(sp_dir, tmp_path):
  """stops.RowText (a few prompt tokens decoded in front) gives the text transformers' full decode gives."""
  import transformers  # pylint: disable=g-import-not-at-top
  from rstar_jax.generate import stops  # pylint: disable=g-import-not-at-top

  directory = _llama_dir(sp_dir, tmp_path / "llama", False)
  hf = transformers.AutoTokenizer.from_pretrained(str(directory))
  hf.add_special_tokens({"additional_special_tokens": list(tk.RSTAR_SPECIAL_TOKENS)})
  tok = tk.load_tokenizer(directory)
  tk.add_rstar_tokens(tok)
  ids = tok.encode("<|user|>:\nx = 2 * 21\n<|assistant|>: print(x)<end_of_step> 42 caf\u00e9", True)
  for k in range(1, len(ids)):
    full, prompt = hf.decode(ids), hf.decode(ids[:k])
    if prompt.endswith("\ufffd"):  # the prompt ends inside a byte-fallback character
      continue
    assert stops.RowText(tok, ids[:k]).of(ids[k:]) == full[len(prompt):], k


# --- bad input ----------------------------------------------------------------------------------------------------


def test_texts_the_tokenizer_cannot_take_are_named(qwen_dir, hf_refs):
  """A lone surrogate (json.loads of a "\\ud83d" escape, e.g. a truncated emoji in a problem) has no UTF-8: the
  Rust tokenizer refuses it with "TextInputSequence must be str", naming neither the text nor the character."""
  plain, _ = hf_refs
  tok = tk.load_tokenizer(qwen_dir)
  bad = json.loads('"x = 1\\ud83d"')
  assert bad == "x = 1\ud83d"
  with pytest.raises(UnicodeEncodeError):  # the reference: Python's UTF-8 codec, position 5
    bad.encode("utf-8")
  with pytest.raises(TypeError):  # transformers refuses it too
    plain.encode(bad)
  with pytest.raises(ValueError, match=r"text 1 holds a lone surrogate '\\ud83d' at position 5"):
    tok.encode_batch(["ok", bad])
  with pytest.raises(ValueError, match=r"text 0 holds a lone surrogate '\\ud83d' at position 5"):
    tok.encode(bad)
  with pytest.raises(TypeError, match="text 1 must be a str, got int"):
    tok.encode_batch(["ok", 3])
  assert tok.encode_batch(["x = 1\U0001F600"]) == [plain.encode("x = 1\U0001F600")]  # a whole emoji is fine


def test_sentencepiece_names_a_text_it_cannot_take(sp_dir):
  """The sentencepiece backend refused a lone surrogate with "List elements must be str or bytes" (of a str),
  naming neither the text nor the character; it names them as the HF backend does."""
  tok = tk.load_tokenizer(sp_dir)
  bad = json.loads('"x = 1\\ud83d"')
  with pytest.raises(UnicodeEncodeError):  # the reference: Python's UTF-8 codec, position 5
    bad.encode("utf-8")
  with pytest.raises(ValueError, match=r"text 1 holds a lone surrogate '\\ud83d' at position 5"):
    tok.encode_batch(["ok", bad])
  with pytest.raises(ValueError, match=r"text 0 holds a lone surrogate '\\ud83d' at position 5"):
    tok.encode(bad)
  tk.add_rstar_tokens(tok)  # texts with tags take the split path
  with pytest.raises(ValueError, match=r"text 0 holds a lone surrogate '\\ud83d' at position 25"):
    tok.encode("<code>\nx = 1<end_of_step>\ud83d")


def test_bad_paths(tmp_path):
  missing = tmp_path / "no_such_dir"
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    tk.load_tokenizer(missing)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=re.escape(str(empty))):
    tk.load_tokenizer(empty)
  other = tmp_path / "other"
  other.mkdir()
  (other / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*tokenizer\.model"):
    tk.load_tokenizer(other)
  with pytest.raises(ValueError, match=re.escape(str(other / "config.json"))):
    tk.load_tokenizer(other / "config.json")  # a JSON file that is no tokenizer
  (other / "vocab.txt").write_text("a\n")
  with pytest.raises(ValueError, match=re.escape(str(other / "vocab.txt"))):
    tk.load_tokenizer(other / "vocab.txt")
  # A tokenizer.json that is a folder: "expected tokenizer.json ...; found ['config.json', 'tokenizer.json', ...]".
  (other / "tokenizer.json").mkdir()
  with pytest.raises(FileNotFoundError, match=re.escape(str(other / "tokenizer.json")) + " is not a file"):
    tk.load_tokenizer(other)


@pytest.mark.parametrize("backend", ["hf", "sentencepiece"])
def test_encode_batch_refuses_one_string_and_non_strings(qwen_dir, sp_dir, hf_refs, backend):
  tok = tk.load_tokenizer(qwen_dir if backend == "hf" else sp_dir)
  if backend == "hf":  # the reference: transformers encodes a list of texts, one row per text
    assert tok.encode_batch(["x = 12", "print(x)"]) == hf_refs[0](["x = 12", "print(x)"])["input_ids"]
  # One string was encoded character by character (6 rows for "x = 12"), without an error.
  with pytest.raises(TypeError, match=r"encode_batch takes a sequence of texts, got one string 'x = 12'"):
    tok.encode_batch("x = 12")
  # HF: "TextEncodeInput must be Union[TextInputSequence, ...]"; sentencepiece: "List elements must be str or bytes".
  with pytest.raises(TypeError, match=r"encode_batch: text 1 must be a str, got NoneType"):
    tok.encode_batch(["x = 12", None])


@pytest.mark.parametrize("backend", ["hf", "sentencepiece"])
@pytest.mark.parametrize("ids", [[9707, 1.7], [9707.0], np.array([1.5, 2.0]), np.array([1.0], np.float32), ["9707"]])
def test_decode_refuses_ids_that_are_not_integers(qwen_dir, sp_dir, hf_refs, backend, ids):
  """transformers refuses a float (or string) id with a TypeError; `int()` here read 1.7 as id 1 and decoded it."""
  plain, _ = hf_refs
  with pytest.raises(TypeError):  # the reference
    plain.decode(ids)
  tok = tk.load_tokenizer(qwen_dir if backend == "hf" else sp_dir)
  with pytest.raises(TypeError, match="token ids must be integers"):
    tok.decode(ids)
  with pytest.raises(TypeError, match="token ids must be integers"):
    tok.decode_batch([[1, 2], ids])
  # Integer ids of any integer type still decode (numpy, and bool as transformers takes it).
  assert tok.decode(np.array([1, 2], np.uint16)) == tok.decode([np.int64(1), 2]) == tok.decode([True, 2])


@pytest.mark.parametrize("single", [9707, np.int64(9707)])
def test_decode_of_a_single_id_says_to_pass_a_sequence(qwen_dir, single):
  """A bare id failed with "'int' object is not iterable" (a numpy one with "got shape ()"), naming neither."""
  tok = tk.load_tokenizer(qwen_dir)
  with pytest.raises(TypeError, match=r"got the single id 9707: pass \[9707\]"):
    tok.decode(single)
  assert tok.decode([single]) == "Hello"


def test_corrupt_files(tmp_path, qwen_dir):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "tokenizer.json").write_text('{"model": ')
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "a" / "tokenizer.json"))):
    tk.load_tokenizer(tmp_path / "a")
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "tokenizer.model").write_bytes(b"\x00not a model\xff" * 3)
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "b" / "tokenizer.model"))):
    tk.load_tokenizer(tmp_path / "b")
  (tmp_path / "b" / "tokenizer.model").unlink()
  shutil.copy(qwen_dir / "tokenizer.json", tmp_path / "b" / "tokenizer.json")
  (tmp_path / "b" / "tokenizer_config.json").write_text("{bad")
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "b" / "tokenizer_config.json"))):
    tk.load_tokenizer(tmp_path / "b")


@pytest.mark.parametrize("content", [
    b'{"eos_token": "\xff"}',  # a bare UnicodeDecodeError naming no file
    b'{"eos_token": 5}',  # was loaded with no eos token (transformers: "has to be either str or AddedToken")
    b'{"pad_token": ["<|endoftext|>"]}',
    b'{"bos_token": {"content": 7}}',
    b'{"added_tokens_decoder": [1]}',  # a TypeError at save (transformers: AttributeError)
    b'{"added_tokens_decoder": {"x": {"content": "<|endoftext|>"}}}',
    b'{"eos_token": ' + b"[" * 100_000,  # a bare RecursionError
], ids=lambda content: content[:60].decode("latin-1"))
def test_a_tokenizer_config_with_a_field_of_the_wrong_type_is_refused_naming_the_file(tmp_path, qwen_dir, hf_refs,
                                                                                       content):
  import transformers  # pylint: disable=g-import-not-at-top

  shutil.copy(qwen_dir / "tokenizer.json", tmp_path / "tokenizer.json")
  (tmp_path / "tokenizer_config.json").write_bytes(content)
  with pytest.raises(Exception):  # the reference refuses each one
    transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "tokenizer_config.json"))):
    tk.load_tokenizer(tmp_path)


@pytest.mark.parametrize("content", ['["<tag>"]', '{"<tag>": "three hundred"}', '{"<tag>": [300]}', '{"<tag>": true}'])
def test_a_malformed_added_tokens_json_beside_a_sentencepiece_model_names_the_file(tmp_path, sp_dir, content):
  # A list was a bare AttributeError (as in transformers), an id that is no integer a bare ValueError / TypeError
  # from int(), and `true` was read as id 1: none named the file.
  shutil.copy(sp_dir / "tokenizer.model", tmp_path / "tokenizer.model")
  (tmp_path / "added_tokens.json").write_text(content)
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "added_tokens.json")) + ": must map"):
    tk.load_tokenizer(tmp_path)


# --- save ---------------------------------------------------------------------------------------------------------


def test_save_reload_and_transformers_load(qwen_dir, hf_refs, tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top

  _, tagged = hf_refs
  tok = tk.load_tokenizer(qwen_dir)
  tk.add_rstar_tokens(tok)
  tok.save(tmp_path / "out")
  again = tk.load_tokenizer(tmp_path / "out")
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  assert len(again) == len(hf) == len(tagged) == QWEN_LEN + 15
  assert again.eos_id == hf.eos_token_id == QWEN_EOS and again.pad_id == QWEN_EOS
  want = [tagged.encode(t) for t in TEXTS]
  assert again.encode_batch(TEXTS) == want
  assert [hf.encode(t, add_special_tokens=False) for t in TEXTS] == want
  assert [hf.decode(ids, skip_special_tokens=True) for ids in want] == again.decode_batch(want, True)
  assert set(tk.RSTAR_SPECIAL_TOKENS) <= set(hf.all_special_tokens)


def test_save_over_a_transformers_v5_config(qwen_dir, tmp_path):
  """A base directory written by transformers v5 lists its special tokens as `extra_special_tokens` (and has no
  `added_tokens_decoder`); v5 reads `additional_special_tokens` only without it. The tags were written to the
  latter, with all 22 Qwen tokens, so transformers loaded the export without the tags among its special tokens."""
  import transformers  # pylint: disable=g-import-not-at-top

  base = transformers.AutoTokenizer.from_pretrained(str(qwen_dir))
  base.add_special_tokens({"extra_special_tokens": ["<extra_a>"]})
  base.save_pretrained(str(tmp_path / "base"))
  # The reference: transformers itself adding the tags (extending the list, as the official trainer's
  # `replace_additional_special_tokens=False`).
  ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "base"))
  ref.add_special_tokens({"extra_special_tokens": list(tk.RSTAR_SPECIAL_TOKENS)}, replace_extra_special_tokens=False)
  tok = tk.load_tokenizer(tmp_path / "base")
  tk.add_rstar_tokens(tok)
  tok.save(tmp_path / "out")
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  assert hf.extra_special_tokens == ref.extra_special_tokens == ["<extra_a>", *tk.RSTAR_SPECIAL_TOKENS]
  assert hf.all_special_tokens == ref.all_special_tokens
  assert [hf.encode(t) for t in TEXTS] == [ref.encode(t) for t in TEXTS] == tok.encode_batch(TEXTS)


def test_sentencepiece_save_reload(sp_dir, tmp_path):
  tok = tk.load_tokenizer(sp_dir)
  tk.add_rstar_tokens(tok)
  tok.save(tmp_path)
  again = tk.load_tokenizer(tmp_path)
  assert len(again) == 315 and (again.bos_id, again.eos_id, again.pad_id) == (1, 2, 3)
  expected = tok.encode_batch(TEXTS)
  assert again.encode_batch(TEXTS) == expected
  assert again.decode_batch(expected, skip_special_tokens=True) == tok.decode_batch(expected, skip_special_tokens=True)
  assert again.decode([tok.token_to_id("<end_of_step>")], skip_special_tokens=True) == ""
  assert tk.add_rstar_tokens(again) == 0


def test_clean_up_spaces_as_transformers(qwen_dir, tmp_path):
  """clean_up_tokenization_spaces (set by e.g. Llama-3's config) is skipped for BPE models, as transformers does."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  code = "from . import x\nprint('a' , 'b')\nif x != y ? It 's done ."
  cfg = json.loads((qwen_dir / "tokenizer_config.json").read_text())
  cfg["clean_up_tokenization_spaces"] = True
  (tmp_path / "bpe").mkdir()
  shutil.copy(qwen_dir / "tokenizer.json", tmp_path / "bpe" / "tokenizer.json")
  (tmp_path / "bpe" / "tokenizer_config.json").write_text(json.dumps(cfg))
  # A WordPiece model (BERT style), for which transformers does clean up.
  wp = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token="[UNK]"))
  wp.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  wp.decoder = tokenizers.decoders.WordPiece()
  wp.train_from_iterator([code] * 4, tokenizers.trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]"],
                                                                          show_progress=False))
  (tmp_path / "wp").mkdir()
  wp.save(str(tmp_path / "wp" / "tokenizer.json"))
  (tmp_path / "wp" / "tokenizer_config.json").write_text(json.dumps(
      {"clean_up_tokenization_spaces": True, "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}))
  decoded = {}
  for name in ("bpe", "wp"):
    ours = tk.load_tokenizer(tmp_path / name)
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path / name))
    ids = ours.encode(code)
    decoded[name] = ours.decode(ids)
    assert decoded[name] == ref.decode(ids), name
    assert ours.decode_batch([ids]) == [ref.decode(ids)], name
  assert decoded["bpe"] == code  # generated code is never rewritten
  assert "from. import" in decoded["wp"]  # the clean-up did run


def test_save_with_a_transformers_v4_special_tokens_map(qwen_dir, hf_refs, tmp_path):
  """transformers v4 writes special_tokens_map.json with serialised AddedTokens (dicts), e.g. after the official SFT
  code adds the tags; a directory with one must save and reload in transformers."""
  import transformers  # pylint: disable=g-import-not-at-top

  def added(content):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

  _, tagged = hf_refs
  src = tmp_path / "src"
  src.mkdir()
  shutil.copy(qwen_dir / "tokenizer.json", src / "tokenizer.json")
  # A config without added_tokens_decoder (transformers < 4.34): transformers then reads the map.
  cfg = json.loads((qwen_dir / "tokenizer_config.json").read_text())
  del cfg["added_tokens_decoder"]
  (src / "tokenizer_config.json").write_text(json.dumps(cfg))
  (src / "special_tokens_map.json").write_text(json.dumps({
      "additional_special_tokens": [added("<|im_start|>"), added("<|im_end|>")], "eos_token": added("<|endoftext|>"),
      "pad_token": "<|endoftext|>", "unk_token": added("<|endoftext|>")}))
  tok = tk.load_tokenizer(src)
  assert tok.eos_id == QWEN_EOS
  tk.add_rstar_tokens(tok)
  tok.save(tmp_path / "out")
  cfg = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
  listed = cfg["additional_special_tokens"]
  assert listed[:2] == ["<|im_start|>", "<|im_end|>"] and len(set(listed)) == len(listed)
  assert all(isinstance(t, str) for t in listed) and set(tk.RSTAR_SPECIAL_TOKENS) <= set(listed)
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  want = [tagged.encode(t) for t in TEXTS]
  assert [hf.encode(t, add_special_tokens=False) for t in TEXTS] == want
  assert tk.load_tokenizer(tmp_path / "out").encode_batch(TEXTS) == want
  assert set(tk.RSTAR_SPECIAL_TOKENS) <= set(hf.all_special_tokens)


@pytest.mark.parametrize("legacy", [True, False])
def test_special_tokens_map_read_as_transformers(qwen_dir, tmp_path, legacy):
  """special_tokens_map.json wins over an old config (no added_tokens_decoder) and is ignored beside a newer one."""
  import transformers  # pylint: disable=g-import-not-at-top

  shutil.copy(qwen_dir / "tokenizer.json", tmp_path / "tokenizer.json")
  cfg = json.loads((qwen_dir / "tokenizer_config.json").read_text())
  if legacy:
    del cfg["added_tokens_decoder"]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))  # eos and pad: <|endoftext|>
  special_map = {"eos_token": "<|im_end|>", "pad_token": "<|im_start|>"}
  (tmp_path / "special_tokens_map.json").write_text(json.dumps(special_map))
  ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  tok = tk.load_tokenizer(tmp_path)
  assert (tok.eos_id, tok.pad_id) == (ref.eos_token_id, ref.pad_token_id)
  assert tok.eos_id == (151645 if legacy else QWEN_EOS)


# --- seeded differential fuzz against transformers ----------------------------------------------------------------

# Pieces random texts are glued from: rStar tags and Qwen chat tokens inside user text, whitespace runs and line
# ends, digit runs, LaTeX, CJK, emoji (a ZWJ family), combining marks (NFC-sensitive), RTL and bidi controls, the
# highest code points, NUL/DEL, a lone "▁" and fullwidth forms.
_FUZZ_PIECES = (list(tk.RSTAR_SPECIAL_TOKENS) + [
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|user|>:", "\n\n<|assistant|>:", "<end_of_ste", "<code",
    "\r\n", "\r", "\t", "    ", "  ", " ", "\n", "\n\n", "1234567890", "0", "3.14", "\\frac{a}{b}", "$x^2$",
    "\\boxed{42}", "Hello", " world", "\u6570\u5b66\u95ee\u9898", "\U0001F600", "\U0001F468\u200d\U0001F469",
    "\u00e9", "e\u0301", "\u0301", "\u05e9\u05dc\u05d5\u05dd", "\u0645\u0631\u062d\u0628\u0627", "\u202e",
    "\U0010FFFF", "\U000E0001", "\ufffd", "\u00a0", "\uff21", "\u2581", "\u2028", "\x00", "\x7f"])


def _fuzz_text(rng: np.random.Generator) -> str:
  parts = []
  for _ in range(rng.integers(0, 13)):
    kind = rng.random()
    if kind < 0.6:
      parts.append(_FUZZ_PIECES[rng.integers(len(_FUZZ_PIECES))])
    elif kind < 0.8:
      parts.append("".join(chr(c) for c in rng.integers(0x20, 0x7F, rng.integers(1, 7))))
    else:  # any code point outside the surrogates, from each UTF-8 length
      lo, hi = [(0x80, 0x800), (0x800, 0xD800), (0xE000, 0x10000), (0x10000, 0x110000)][rng.integers(4)]
      parts.append(chr(rng.integers(lo, hi)))
  return "".join(parts)


def test_fuzz_ids_texts_and_incremental_decode_match_transformers(qwen_dir, hf_refs):
  """Seeded random texts: ids (one by one and batched), decoded texts both ways, random id sequences (special ids and
  lone bytes of multi-byte characters among them), and the engine's incremental decode of a continuation cut at
  every token (`stops.RowText`, stop matching) all equal what transformers gives on the same files."""
  from rstar_jax.generate import stops  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(20241203)
  stop_strings = list(tk.STEP_STOP_STRINGS) + ["<end_of_output>", "= 1", "\u6570"]
  for ref, tagged in zip(hf_refs, (False, True)):
    tok = tk.load_tokenizer(qwen_dir)
    if tagged:
      tk.add_rstar_tokens(tok)
    assert len(tok) == len(ref)
    texts = [_fuzz_text(rng) for _ in range(300)]
    want = [ref.encode(t, add_special_tokens=False) for t in texts]
    assert tok.encode_batch(texts) == want
    assert [tok.encode(t) for t in texts] == want
    # Random ids: mostly bytes-level tokens (ids < 256 hold single bytes, so characters get split) and special ids.
    random_ids = [[int(i) if rng.random() < 0.5 else int(rng.integers(151643, len(tok)))
                   for i in rng.integers(0, 256, rng.integers(0, 12))] for _ in range(300)]
    for skip in (False, True):
      for batch in (want, random_ids):
        assert tok.decode_batch(batch, skip_special_tokens=skip) == ref.batch_decode(batch, skip_special_tokens=skip)
        assert [tok.decode(ids, skip_special_tokens=skip) for ids in batch] == [
            ref.decode(ids, skip_special_tokens=skip) for ids in batch]
    if not tagged:
      continue
    # Continuations: a prompt (encoded text: whole characters) and generated ids, decoded cut at every token.
    for k in range(120):
      prompt = ref.encode(_fuzz_text(rng) + "x", add_special_tokens=False)
      generated = want[k] if k % 3 else random_ids[k]
      prompt_text = ref.decode(prompt)
      row = stops.RowText(tok, prompt)
      for cut in range(len(generated) + 1):
        full = ref.decode(prompt + generated[:cut])
        assert full.startswith(prompt_text)
        # As vLLM's incremental detokenizer emits it: a text ending in U+FFFD (an unfinished character) is held back,
        # so the row's text is that of the longest prefix of the cut whose text does not end there.
        emitted = cut
        while emitted and ref.decode(prompt + generated[:emitted]).endswith("\ufffd"):
          emitted -= 1
        assert row.of(generated[:cut]) == ref.decode(prompt + generated[:emitted])[len(prompt_text):], (
            prompt, generated[:cut])
      # The first token after which the continuation's text holds a stop, by a linear scan of transformers' texts.
      first = next((n for n in range(1, len(generated) + 1)
                    if stops.first_stop(ref.decode(prompt + generated[:n])[len(prompt_text):], stop_strings)), None)
      match = row.find_stop(generated, stop_strings)
      assert (match and match.num_tokens) == first, generated
      if match is not None:
        text = ref.decode(prompt + generated[:first])[len(prompt_text):]
        start, stop = stops.first_stop(text, stop_strings)
        assert (match.text, match.stop) == (text[:start], stop)
