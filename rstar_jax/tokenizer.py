"""Tokenizers for rstar-jax: one interface over HF `tokenizer.json` and sentencepiece `tokenizer.model`.

Two backends sit behind the `Tokenizer` interface:

- `HFTokenizer`: a Hugging Face fast tokenizer (`tokenizer.json`), run by the Rust `tokenizers` library. This is
  what `transformers.AutoTokenizer` uses for Qwen2/Qwen2.5, Llama-3 and Phi-3 directories, so ids match it exactly;
  batch calls go through the Rust batch encoder.
- `SentencePieceTokenizer`: a bare sentencepiece `tokenizer.model` (Llama-2 / Phi-3 style directories without a
  `tokenizer.json`). Added tokens become real sentencepiece pieces of type USER_DEFINED, so sentencepiece itself
  matches them in text and they always encode as one id. Ids and texts follow transformers' `LlamaTokenizer` on the
  same directory: text is split at special strings (added tokens, and the BOS/EOS/pad/unk piece strings), the dummy
  prefix "▁" goes only on a segment that starts the text (on every segment with `"legacy": true`), so a text that
  starts with a tag gets no lone "▁" before it; decode writes BOS/EOS/unk as their strings unless
  `skip_special_tokens`. Known differences, inherent to transformers v5 (which converts the model to a `tokenizers`
  Metaspace pre-tokenizer): (1) a segment that already starts with a space gets no extra "▁" there (" hi" is
  "▁" "hi" in transformers v5, "▁▁hi"-style in sentencepiece, transformers v4 and here); (2) decoding stops inside
  a byte-fallback character gives one U+FFFD per byte there, one here (whole texts decode the same).

rStar-Math adds its step tags as special tokens before SFT (DESIGN §1.1): `add_rstar_tokens(tok)` does the same,
after which every step stop string (`STEP_STOP_STRINGS`) encodes as a single token. The model's embedding table (and
an untied LM head) then needs a row for every id: `resize_embedding` grows a table on plain numpy / jax arrays,
keeping the old rows bit-exactly.

Typical use:

  tok = load_tokenizer("path/to/Qwen2.5-Math-7B")
  add_rstar_tokens(tok)                                      # 15 tags, ids 151665..151679 for Qwen2.5
  table = resize_embedding(table, len(tok), init="random")   # no-op for Qwen2.5 (152064 rows already)
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
import json
import numbers
import os
import re
import struct
from typing import Any, Literal

import numpy as np

from rstar_jax import files

# The tags the official rStar-Math SFT code adds as special tokens, in its order (DESIGN §1.1): 15 strings. Order
# matters: it fixes the ids the tags get (consecutive after the existing vocabulary).
RSTAR_SPECIAL_TOKENS: tuple[str, ...] = (
    "<code>",
    "<end_of_step>",
    "<end_of_code>",
    "<output>",
    "<end_of_output>",
    "<answer>",
    "<end_of_answer>",
    "<|user|>",
    "<|assistant|>",
    "<refine>",
    "<end_of_refine>",
    "\n<|assistant|>",
    "<error_info>",
    "<end_of_error_info>",
    "<BACK>",
)
# The official PPM trainer adds only the first 12 (up to and including "\n<|assistant|>").
PPM_SPECIAL_TOKENS: tuple[str, ...] = RSTAR_SPECIAL_TOKENS[:12]
# Strings that end one generated step (the bootstrap round also stops on "<end_of_output>").
STEP_STOP_STRINGS: tuple[str, ...] = ("<end_of_step>", "<end_of_code>", "<end_of_answer>")

# HF `PretrainedConfig.initializer_range` default: the std of HF's random init of new embedding rows.
DEFAULT_INIT_STD = 0.02

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
ADDED_TOKENS = "added_tokens.json"


class Tokenizer(abc.ABC):
  """Common interface of the tokenizer backends.

  Ids are plain Python ints. `len(tok)` / `tok.vocab_size` count every id the tokenizer can produce, added tokens
  included: that is the minimum number of embedding rows a model needs (checkpoints may carry more, e.g. Qwen2.5's
  152064 rows for 151665 tokens).
  """

  def __init__(self, *, eos_token: str | None, pad_token: str | None, bos_token: str | None,
               clean_up_tokenization_spaces: bool, source: str, config: dict[str, Any] | None = None):
    self._config = dict(config or {})  # tokenizer_config.json as loaded; `save` writes it back updated
    self._eos_token = eos_token
    self._pad_token = pad_token
    self._bos_token = bos_token
    self._clean_up_spaces = clean_up_tokenization_spaces
    self.source = source  # where it was loaded from, for error messages and repr

  # --- backend-specific ---------------------------------------------------------------------------------------------

  @abc.abstractmethod
  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Encodes one text.

    Args:
      text: the text. Special tokens written in it (e.g. `<end_of_step>` once added) are recognised as single ids.
      add_special_tokens: whether to add the template tokens of the tokenizer (e.g. a BOS for Llama); Qwen2 adds
        none. rStar prompts carry their own tags, so the default is False.

    Returns:
      The token ids.
    """

  @abc.abstractmethod
  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
    """Encodes many texts at once (multithreaded in the backend); same ids as `encode` on each."""

  @abc.abstractmethod
  def _decode_raw(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
    """Decodes without the optional clean-up of spaces."""

  def _decode_batch_raw(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool) -> list[str]:
    return [self._decode_raw(ids, skip_special_tokens) for ids in batch]

  @abc.abstractmethod
  def __len__(self) -> int:
    """Number of ids the tokenizer can produce, added tokens included."""

  @abc.abstractmethod
  def token_to_id(self, token: str) -> int | None:
    """The id of a vocabulary token (backend spelling, e.g. "Ġworld" / "▁world"), or None if absent."""

  @abc.abstractmethod
  def id_to_token(self, token_id: int) -> str | None:
    """The vocabulary token of an id, or None if the id is out of range."""

  @abc.abstractmethod
  def add_special_tokens(self, tokens: Iterable[str]) -> int:
    """Adds special tokens; new ones get consecutive ids after the existing ones, in the given order.

    A special token is matched verbatim in text (never split, never normalised) and dropped by
    `decode(..., skip_special_tokens=True)`. Tokens already present are not added again.

    Args:
      tokens: the token strings.

    Returns:
      How many tokens were added (the growth of `len(self)`).
    """

  @abc.abstractmethod
  def save(self, directory: str | os.PathLike[str]) -> None:
    """Writes the tokenizer (added tokens included) to `directory` so `load_tokenizer` and transformers load it.

    Files are written atomically (temporary file + rename); other files in the directory are left alone.
    """

  # --- shared ---------------------------------------------------------------------------------------------------------

  def _updated_config(self, added: dict[int, dict[str, Any]], loaded: Iterable[int] = ()) -> dict[str, Any]:
    """tokenizer_config.json contents: the loaded config with the current special tokens and added tokens.

    Args:
      added: id -> serialised AddedToken ({"content", "special", "lstrip", "rstrip", "normalized", "single_word"}).
      loaded: ids of the added tokens the tokenizer had when loaded (listed already, or deliberately not, in the
        config's special-token list even when the config has no `added_tokens_decoder`, as transformers v5 writes).
    """
    cfg = dict(self._config)
    # special_tokens_map.json (merged into the config) holds serialised AddedTokens when transformers v4 wrote it;
    # transformers reads only strings in tokenizer_config.json (the flags live in added_tokens_decoder).
    for key, value in list(cfg.items()):
      if key.endswith("_token") and isinstance(value, dict) and isinstance(value.get("content"), str):
        cfg[key] = value["content"]
    for key, value in (("eos_token", self._eos_token), ("pad_token", self._pad_token),
                       ("bos_token", self._bos_token)):
      if value is not None:
        cfg[key] = value
    cfg["clean_up_tokenization_spaces"] = self._clean_up_spaces
    decoder = dict(cfg.get("added_tokens_decoder") or {})
    loaded = set(loaded)
    new_ids = [i for i in sorted(added) if str(i) not in decoder and i not in loaded]
    for token_id, entry in sorted(added.items()):
      decoder[str(token_id)] = entry
    cfg["added_tokens_decoder"] = decoder
    # transformers lists user-added special tokens here: "additional_special_tokens" (v4), "extra_special_tokens" (v5,
    # which reads the v4 name only when its own is absent or empty; a dict there holds named tokens instead).
    key = "extra_special_tokens" if isinstance(cfg.get("extra_special_tokens"), list) else "additional_special_tokens"
    known = [t.get("content") if isinstance(t, dict) else t for t in cfg.get(key) or []]
    extra = [added[i]["content"] for i in new_ids if added[i]["special"] and added[i]["content"] not in known]
    if known or extra:
      cfg[key] = known + extra
    return cfg

  def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
    """Decodes ids to text.

    Args:
      ids: [T] token ids (list or integer array).
      skip_special_tokens: drop special tokens (e.g. EOS, the rStar tags) from the text.

    Returns:
      The text.
    """
    return self._clean(self._decode_raw(self._checked(ids), skip_special_tokens))

  def decode_batch(self, batch: Sequence[Sequence[int]] | np.ndarray,
                   skip_special_tokens: bool = False) -> list[str]:
    """Decodes a batch of id sequences ([B, T] array or list of lists); same texts as `decode` on each."""
    texts = self._decode_batch_raw([self._checked(ids) for ids in batch], skip_special_tokens)
    return [self._clean(t) for t in texts]

  @property
  def vocab_size(self) -> int:
    """Same as `len(self)`: ids the tokenizer can produce, added tokens included."""
    return len(self)

  @property
  def eos_id(self) -> int | None:
    """End-of-sequence id (from `tokenizer_config.json` when given), or None."""
    return self._lookup(self._eos_token)

  @property
  def pad_id(self) -> int | None:
    """Padding id: the configured pad token, else the EOS id (HF practice for decoder-only models), else None."""
    pad = self._lookup(self._pad_token)
    return self.eos_id if pad is None else pad

  @property
  def bos_id(self) -> int | None:
    """Beginning-of-sequence id, or None (Qwen2 has none)."""
    return self._lookup(self._bos_token)

  def _checked(self, ids: Sequence[int] | np.ndarray) -> list[int]:
    """ids as a list of ints; out-of-range ids are an error (the Rust decoder would drop them silently)."""
    ids = _as_int_list(ids)
    if ids and (min(ids) < 0 or max(ids) >= len(self)):
      bad = [i for i in ids if not 0 <= i < len(self)]
      raise ValueError(f"token ids out of range [0, {len(self)}) for the tokenizer {self.source}: {bad[:8]}")
    return ids

  def _lookup(self, token: str | None) -> int | None:
    return None if token is None else self.token_to_id(token)

  def _clean(self, text: str) -> str:
    return _clean_up_tokenization(text) if self._clean_up_spaces and self._clean_up_applies() else text

  def _clean_up_applies(self) -> bool:
    """Whether `clean_up_tokenization_spaces` (when set) is applied by this backend."""
    return True

  def __repr__(self) -> str:
    return f"{type(self).__name__}(source={self.source!r}, len={len(self)}, eos_id={self.eos_id})"


class HFTokenizer(Tokenizer):
  """A Hugging Face fast tokenizer (`tokenizer.json`) run by the Rust `tokenizers` library.

  Encoding and decoding are the library's, exactly as `transformers` fast tokenizers call them, so ids equal
  `transformers.AutoTokenizer(...).encode(text, add_special_tokens=...)`.
  """

  def __init__(self, backend: Any, **kwargs: Any):
    """Wraps a `tokenizers.Tokenizer`; use `load_tokenizer` to build one from files."""
    super().__init__(**kwargs)
    # A tokenizer.json may carry padding/truncation settings; ids must be raw (transformers disables them too).
    backend.no_padding()
    backend.no_truncation()
    self._tok = backend
    self._loaded_added = frozenset(backend.get_added_tokens_decoder())  # see `_updated_config`

  @property
  def backend(self) -> Any:
    """The underlying `tokenizers.Tokenizer` (e.g. to `save` it)."""
    return self._tok

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    try:
      return self._tok.encode(text, add_special_tokens=add_special_tokens).ids
    except TypeError:
      _check_texts([text])
      raise

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
    texts = _text_list(texts)
    # encode_batch_fast skips offset tracking (tokenizers >= 0.20.2); ids are the same.
    encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
    try:
      return [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)]
    except TypeError:
      _check_texts(texts)
      raise

  def _clean_up_applies(self) -> bool:
    # transformers (v5) ignores clean_up_tokenization_spaces for BPE models (Qwen2, Llama-3, ...: Llama-3's config
    # sets it): the clean-up would strip real spaces before punctuation ("from . import" -> "from. import").
    return (type(self._tok.model).__name__ != "BPE"
            or bool(self._config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")))

  def _decode_raw(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
    return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

  def _decode_batch_raw(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool) -> list[str]:
    return self._tok.decode_batch(batch, skip_special_tokens=skip_special_tokens)

  def __len__(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self._tok.id_to_token(int(token_id))

  def save(self, directory: str | os.PathLike[str]) -> None:
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    files.atomic_write(os.path.join(directory, TOKENIZER_JSON), self._tok.to_str(pretty=False))
    added = {i: _added_token_entry(t.content, t.special, lstrip=t.lstrip, rstrip=t.rstrip, normalized=t.normalized,
                                   single_word=t.single_word)
             for i, t in self._tok.get_added_tokens_decoder().items()}
    cfg = self._updated_config(added, self._loaded_added)
    cfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    files.atomic_write(os.path.join(directory, TOKENIZER_CONFIG), json.dumps(cfg, indent=2, ensure_ascii=False))

  def add_special_tokens(self, tokens: Iterable[str]) -> int:
    import tokenizers  # pylint: disable=g-import-not-at-top

    # The flags transformers gives `additional_special_tokens`: matched verbatim, no whitespace stripping.
    added = [tokenizers.AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False,
                                   single_word=False) for t in _check_tokens(tokens)]
    before = len(self)
    self._tok.add_special_tokens(added)
    return len(self) - before


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model (`tokenizer.model`, Llama-2 / Phi-3 style).

  Added tokens are appended to the model as USER_DEFINED pieces and the processor is rebuilt, so sentencepiece
  itself finds them in text (one id each, never split) and decodes them verbatim.
  """

  # sentencepiece.ModelProto.SentencePiece.Type.USER_DEFINED
  _USER_DEFINED = 4

  def __init__(self, model_proto: bytes, *, add_bos: bool, add_eos: bool, legacy: bool = False, **kwargs: Any):
    """Wraps a serialised sentencepiece `ModelProto`; use `load_tokenizer` to build one from files."""
    super().__init__(**kwargs)
    self._proto = model_proto
    self._sp = _load_sentencepiece(model_proto, self.source)
    self._add_bos = add_bos
    self._add_eos = add_eos
    self._legacy = legacy
    self._special_ids: set[int] = set()
    self._base_size = self._sp.get_piece_size()  # pieces of the model as loaded; later ones are added tokens
    self._pattern: Any = None
    self._pattern_key: tuple[int, int] | None = None
    self._sp_no_prefix: Any = None  # the model without its dummy prefix (built on first use)

  @property
  def processor(self) -> Any:
    """The underlying `sentencepiece.SentencePieceProcessor` (added tokens included)."""
    return self._sp

  @property
  def model_proto(self) -> bytes:
    """The serialised model, added pieces included (write it out as a `tokenizer.model`)."""
    return self._proto

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    return self.encode_batch([text], add_special_tokens)[0]

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
    texts = _text_list(texts)
    try:
      out = self._sp.encode(texts, out_type=int)
    except TypeError:  # "List elements must be str or bytes", said of a str holding a lone surrogate
      _check_texts(texts)
      raise
    pattern = self._special_pattern()
    for i, text in enumerate(texts):
      if pattern is not None and pattern.search(text):
        out[i] = self._encode_split(text, pattern)
    if add_special_tokens:
      bos = [self._sp.bos_id()] if self._add_bos and self._sp.bos_id() >= 0 else []
      eos = [self._sp.eos_id()] if self._add_eos and self._sp.eos_id() >= 0 else []
      out = [bos + ids + eos for ids in out]
    return out

  def _special_pattern(self) -> Any:
    """A regex of the special strings matched in text as transformers does (longest first), or None."""
    if self._pattern_key != (len(self), len(self._special_ids)):
      sp = self._sp
      ids = set(self._special_ids) | {i for i in range(len(self)) if sp.is_control(i) or sp.is_unknown(i)}
      ids |= set(range(self._base_size, len(self)))  # added pieces (USER_DEFINED)
      pieces = sorted({sp.id_to_piece(i) for i in ids} - {""}, key=len, reverse=True)
      self._pattern = re.compile("|".join(map(re.escape, pieces))) if pieces else None
      self._pattern_key = (len(self), len(self._special_ids))
    return self._pattern

  def _encode_split(self, text: str, pattern: Any) -> list[int]:
    """Encodes text around its special strings: each segment alone, the dummy prefix only on a leading segment
    (legacy: on every segment), so a special string at the start of the text gets no "▁" before it."""
    ids: list[int] = []
    pos = 0
    for match in pattern.finditer(text):
      ids += self._encode_segment(text[pos:match.start()], first=pos == 0)
      ids.append(self.token_to_id(match.group()))
      pos = match.end()
    return ids + self._encode_segment(text[pos:], first=pos == 0)

  def _encode_segment(self, segment: str, *, first: bool) -> list[int]:
    if not segment:
      return []
    if first or self._legacy:
      return self._sp.encode(segment, out_type=int)
    return self._no_prefix().encode(segment, out_type=int)

  def _no_prefix(self) -> Any:
    """The processor with the model's dummy prefix switched off (no "▁" added in front, none removed in decode)."""
    if self._sp_no_prefix is None:
      # NormalizerSpec (ModelProto field 3) is a singular message: a second occurrence merges into the first, so
      # appending {3: add_dummy_prefix = false} switches the dummy prefix off.
      self._sp_no_prefix = _load_sentencepiece(self._proto + _proto_field(3, _varint(3 << 3 | 0) + _varint(0)),
                                               self.source)
    return self._sp_no_prefix

  def _is_skipped(self, token_id: int) -> bool:
    # transformers' skip_special_tokens drops all special tokens: bos/eos/pad/unk and the added special ones.
    return (token_id in self._special_ids or self._sp.is_control(token_id) or self._sp.is_unknown(token_id))

  def _decode_raw(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
    if skip_special_tokens:
      ids = [i for i in ids if not self._is_skipped(i)]
    ids = list(ids)
    sp = self._sp
    if not any(sp.is_control(i) or sp.is_unknown(i) for i in ids):
      return sp.decode(ids)
    # sentencepiece writes control pieces (BOS/EOS/pad) as "" and unk as " ⁇ "; transformers writes their text, and
    # drops the dummy-prefix space only at the start of the whole text (not after such a token).
    parts: list[str] = []
    run: list[int] = []
    for i in ids + [None]:
      if i is not None and not (sp.is_control(i) or sp.is_unknown(i)):
        run.append(i)
        continue
      if run:
        parts.append((sp if not parts else self._no_prefix()).decode(run))
        run = []
      if i is not None:
        parts.append(sp.id_to_piece(i))
    return "".join(parts)

  def __len__(self) -> int:
    return self._sp.get_piece_size()

  def token_to_id(self, token: str) -> int | None:
    token_id = self._sp.piece_to_id(token)
    # sentencepiece answers unk_id for unknown pieces.
    if self._sp.is_unknown(token_id) and self._sp.id_to_piece(token_id) != token:
      return None
    return token_id

  def id_to_token(self, token_id: int) -> str | None:
    token_id = int(token_id)
    return self._sp.id_to_piece(token_id) if 0 <= token_id < len(self) else None

  def save(self, directory: str | os.PathLike[str]) -> None:
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    files.atomic_write(os.path.join(directory, SENTENCEPIECE_MODEL), self._proto)
    # Added pieces live in the model itself; the config records which of them are special.
    added = {i: _added_token_entry(self._sp.id_to_piece(i), True) for i in sorted(self._special_ids)
             if not self._sp.is_control(i)}
    cfg = self._updated_config(added)
    cfg.update(add_bos_token=self._add_bos, add_eos_token=self._add_eos, legacy=self._legacy)
    files.atomic_write(os.path.join(directory, TOKENIZER_CONFIG), json.dumps(cfg, indent=2, ensure_ascii=False))

  def add_special_tokens(self, tokens: Iterable[str]) -> int:
    return self._add_tokens(tokens, special=True)

  def _add_tokens(self, tokens: Iterable[str], *, special: bool) -> int:
    """Appends new pieces (USER_DEFINED, score 0) to the model proto and reloads the processor."""
    new, extra = [], b""
    for t in _check_tokens(tokens):
      existing = self.token_to_id(t)
      if existing is not None:
        if special:
          self._special_ids.add(existing)
        continue
      if t in new:
        continue
      new.append(t)
      extra += _proto_field(1, _sentencepiece_piece(t, 0.0, self._USER_DEFINED))
    if not new:
      return 0
    first = len(self)
    # A protobuf repeated field may continue anywhere in the message: appending `pieces` entries (field 1 of
    # ModelProto) to the serialised model adds pieces at the end of the vocabulary, without a protobuf dependency.
    self._proto = self._proto + extra
    self._sp = _load_sentencepiece(self._proto, self.source)
    self._sp_no_prefix = None
    ids = [self._sp.piece_to_id(t) for t in new]
    if ids != list(range(first, first + len(new))):
      raise RuntimeError(f"sentencepiece gave added tokens {new} ids {ids}, expected {first}.. ({self.source})")
    if special:
      self._special_ids.update(ids)
    return len(new)


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
  """Loads a tokenizer, picking the backend from the files present.

  Args:
    path: a directory holding `tokenizer.json` (HF fast tokenizer: preferred when present) or `tokenizer.model`
      (sentencepiece), optionally with `tokenizer_config.json` / `special_tokens_map.json` (EOS, pad, BOS tokens,
      BOS/EOS insertion, clean-up of spaces) and, for sentencepiece, `added_tokens.json`; or one such file directly.

  Returns:
    An `HFTokenizer` or a `SentencePieceTokenizer`.

  Raises:
    FileNotFoundError: the path does not exist, or the directory holds neither tokenizer file (the message names
      the directory).
    ValueError: a tokenizer file cannot be parsed (the message names the file).
  """
  path = os.fspath(path)
  if os.path.isfile(path):
    directory, name = os.path.split(path)
    # Config files beside a file apply only when it has the standard name (they describe that tokenizer).
    directory = (directory or ".") if name in (TOKENIZER_JSON, SENTENCEPIECE_MODEL) else None
    if name.endswith(".json"):
      return _load_hf(path, directory)
    if name.endswith(".model"):
      return _load_sentencepiece_dir(path, directory)
    raise ValueError(f"unknown tokenizer file {path}: expected a *.json (HF tokenizers) or *.model (sentencepiece)")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer directory not found: {path}")
  if os.path.isfile(os.path.join(path, TOKENIZER_JSON)):
    return _load_hf(os.path.join(path, TOKENIZER_JSON), path)
  if os.path.isfile(os.path.join(path, SENTENCEPIECE_MODEL)):
    return _load_sentencepiece_dir(os.path.join(path, SENTENCEPIECE_MODEL), path)
  for name in (TOKENIZER_JSON, SENTENCEPIECE_MODEL):  # else listed as found below, beside "expected" that name
    if os.path.exists(os.path.join(path, name)):
      raise FileNotFoundError(f"{os.path.join(path, name)} is not a file (a folder?): no tokenizer in {path}")
  present = sorted(os.listdir(path))
  raise FileNotFoundError(
      f"no tokenizer in {path}: expected {TOKENIZER_JSON} (Hugging Face tokenizers) or {SENTENCEPIECE_MODEL} "
      f"(sentencepiece); found {present[:20] if present else 'an empty directory'}. A directory with only "
      f"vocab.json/merges.txt can be converted once with transformers: "
      f"AutoTokenizer.from_pretrained(dir).save_pretrained(dir).")


def add_rstar_tokens(tokenizer: Tokenizer, which: Literal["policy", "ppm"] = "policy") -> int:
  """Adds rStar-Math's step tags as special tokens, as the official trainers do before fine-tuning.

  Args:
    tokenizer: the tokenizer to extend (in place).
    which: "policy" adds all of `RSTAR_SPECIAL_TOKENS` (the SFT trainer), "ppm" the first 12 (`PPM_SPECIAL_TOKENS`,
      the PPM trainer).

  Returns:
    How many tokens were added (0 when already present). Afterwards each of `STEP_STOP_STRINGS` encodes as one id.
  """
  if which == "policy":
    tokens = RSTAR_SPECIAL_TOKENS
  elif which == "ppm":
    tokens = PPM_SPECIAL_TOKENS
  else:
    raise ValueError(f"which must be 'policy' or 'ppm', got {which!r}")
  return tokenizer.add_special_tokens(tokens)


def resize_embedding(table: Any, new_rows: int, *, init: Literal["random", "mean"] = "random",
                     std: float = DEFAULT_INIT_STD, seed: int = 0, rng: Any = None, axis: int = 0) -> Any:
  """Grows a vocabulary table to `new_rows` entries, keeping the old entries bit-exactly.

  Use the same function for the input embedding and for an untied LM head: HF stores both as [V, D]
  (`embed_tokens.weight`, `lm_head.weight`: axis=0); a Flax Dense kernel of the LM head is [D, V]: pass axis=1.
  Tied models need only the embedding resized.

  If `new_rows` <= the current number of entries the table is returned unchanged (no shrinking): Qwen2.5
  checkpoints carry 152064 rows for 151665 tokens, so the 15 rStar tags (ids 151665..151679) already have rows.
  (HF's `resize_token_embeddings(len(tokenizer))`, which the official code calls, would cut the table to 151680 rows;
  the rows of every id are the same either way.)

  Args:
    table: [V_old, D] (axis=0) or [D, V_old] (axis=1) numpy or jax array.
    new_rows: V_new, the number of vocabulary entries wanted (usually `len(tokenizer)`).
    init: how new entries are filled. "random": i.i.d. normal(0, std), as HF `resize_token_embeddings` with its
      `_init_weights` on new rows (std = `initializer_range`, 0.02 for Qwen2; the official rStar setting).
      "mean": every new entry is the mean of the old ones (computed in float64 for numpy, float32 for jax). (Since
      transformers 4.46 HF's default, `mean_resizing=True`, samples around that mean with 1e-9 x the old covariance,
      i.e. the mean to within ~1e-4 of the old spread.)
    std: standard deviation of the "random" init.
    seed: seed of the "random" init when `rng` is not given.
    rng: a `np.random.Generator` (numpy tables) or a jax PRNG key (jax tables); overrides `seed`. Another kind
      is a TypeError.
    axis: the vocabulary axis of `table`: 0 or 1 (negative values count from the end).

  Returns:
    [V_new, D] (or [D, V_new]) array of the same kind and dtype as `table`; `table` itself when nothing is added.
  """
  ndim = getattr(table, "ndim", None)
  if ndim != 2:
    raise ValueError(f"resize_embedding expects a 2-D [V, D] table, got shape {getattr(table, 'shape', None)}")
  if axis not in (0, 1, -1, -2):
    raise ValueError(f"axis must be 0 or 1 for a 2-D table, got {axis}")
  axis %= 2
  if init not in ("random", "mean"):
    raise ValueError(f"init must be 'random' or 'mean', got {init!r}")
  if not std >= 0:
    raise ValueError(f"std must be >= 0, got {std}")
  new_rows = int(new_rows)
  old_rows, dim = table.shape[axis], table.shape[1 - axis]
  if new_rows <= old_rows:
    return table
  n_new = new_rows - old_rows

  if isinstance(table, np.ndarray):
    # Any other kind of rng (a jax key, a legacy RandomState) was ignored: the `seed` rows came back silently.
    if rng is not None and not isinstance(rng, np.random.Generator):
      raise TypeError(f"rng for a numpy table must be a np.random.Generator (or None: use `seed`), got "
                      f"{type(rng).__name__}")
    if init == "random":
      gen = np.random.default_rng(seed) if rng is None else rng
      block = gen.normal(0.0, std, size=(n_new, dim))
    else:
      block = np.broadcast_to(np.mean(table, axis=axis, dtype=np.float64), (n_new, dim))
    block = block.astype(table.dtype)
    return np.concatenate([table, block if axis == 0 else block.T], axis=axis)

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  if rng is not None and not isinstance(rng, jax.Array):
    raise TypeError(f"rng for a jax table must be a jax PRNG key (or None: use `seed`), got {type(rng).__name__}")
  if init == "random":
    key = jax.random.PRNGKey(seed) if rng is None else rng
    block = std * jax.random.normal(key, (n_new, dim), jnp.float32)
  else:
    block = jnp.broadcast_to(jnp.mean(table, axis=axis, dtype=jnp.float32), (n_new, dim))
  block = block.astype(table.dtype)
  return jnp.concatenate([table, block if axis == 0 else block.T], axis=axis)


# --- loading helpers ------------------------------------------------------------------------------------------------


def _load_hf(file: str, directory: str | None) -> HFTokenizer:
  import tokenizers  # pylint: disable=g-import-not-at-top

  try:
    backend = tokenizers.Tokenizer.from_file(file)
  except Exception as e:  # the Rust side raises a bare Exception on malformed JSON
    raise ValueError(f"cannot parse the HF tokenizer file {file}: {e}") from e
  cfg = _read_config(directory)
  return HFTokenizer(backend, **_special_kwargs(cfg), source=file, config=cfg)


def _load_sentencepiece_dir(file: str, directory: str | None) -> SentencePieceTokenizer:
  with open(file, "rb") as f:
    proto = f.read()
  cfg = _read_config(directory)
  kwargs = _special_kwargs(cfg)
  tok = SentencePieceTokenizer(proto, add_bos=bool(cfg.get("add_bos_token", True)),
                               add_eos=bool(cfg.get("add_eos_token", False)), legacy=cfg.get("legacy") is True,
                               source=file, config=cfg, **kwargs)
  # Fill in the special tokens sentencepiece itself knows when the config does not name them.
  sp = tok.processor
  if kwargs["eos_token"] is None and sp.eos_id() >= 0:
    tok._eos_token = sp.id_to_piece(sp.eos_id())  # pylint: disable=protected-access
  if kwargs["bos_token"] is None and "bos_token" not in cfg and sp.bos_id() >= 0:
    tok._bos_token = sp.id_to_piece(sp.bos_id())  # pylint: disable=protected-access
  if kwargs["pad_token"] is None and sp.pad_id() >= 0:
    tok._pad_token = sp.id_to_piece(sp.pad_id())  # pylint: disable=protected-access
  if directory is not None:
    _add_saved_tokens(tok, directory, cfg)
  return tok


def _add_saved_tokens(tok: SentencePieceTokenizer, directory: str, cfg: dict[str, Any]) -> None:
  """Re-adds the tokens a slow HF tokenizer saved beside its `tokenizer.model` (ids past the model's pieces)."""
  by_id: dict[int, tuple[str, bool]] = {}
  where = os.path.join(directory, ADDED_TOKENS)
  if os.path.isfile(where):
    saved = _read_json(where)
    # A list, or an id that is no integer, failed in `.items()` / `int()` naming no file (and `true` was id 1).
    if not isinstance(saved, dict) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                              for i in saved.values()):
      raise ValueError(f"{where}: must map each added token to its integer id, got {str(saved)[:80]}")
    for content, token_id in saved.items():
      by_id[token_id] = (content, True)
  for token_id, entry in (cfg.get("added_tokens_decoder") or {}).items():
    content = entry["content"] if isinstance(entry, dict) else str(entry)
    by_id[int(token_id)] = (content, bool(entry.get("special", True)) if isinstance(entry, dict) else True)
  first = len(tok)
  for token_id, (content, special) in by_id.items():
    # Pieces already in the model (e.g. tokens added and saved by us): only their special flag is needed.
    if token_id < first and special and tok.token_to_id(content) == token_id:
      tok._special_ids.add(token_id)  # pylint: disable=protected-access
  extra = sorted(i for i in by_id if i >= first)
  if extra != list(range(first, first + len(extra))):
    raise ValueError(f"added tokens in {directory} ({ADDED_TOKENS} / {TOKENIZER_CONFIG}) have ids {extra[:8]}..., "
                     f"not consecutive from the sentencepiece model's {first} pieces")
  for token_id in extra:
    content, special = by_id[token_id]
    tok._add_tokens([content], special=special)  # pylint: disable=protected-access
    if tok.token_to_id(content) != token_id:
      raise ValueError(f"added token {content!r} of {directory} should have id {token_id}, "
                       f"got {tok.token_to_id(content)} (it may duplicate a sentencepiece piece)")


def _read_json(file: str) -> Any:
  try:
    with open(file, encoding="utf-8") as f:
      return files.json_loads(f.read())
  except json.JSONDecodeError as e:
    raise ValueError(f"cannot parse {file}: {e}") from e
  except UnicodeDecodeError as e:  # its message names no file
    raise ValueError(f"cannot parse {file}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _check_config(file: str, data: dict[str, Any]) -> None:
  """Raises a `ValueError` naming `file` and the field unless its special tokens are strings or serialised
  AddedTokens (transformers refuses others; an `"eos_token": 5` was read as no eos token) and its
  `added_tokens_decoder` maps ids to AddedTokens (a list failed at `save` with a TypeError naming nothing)."""
  def is_token(value):
    return isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("content"), str))
  for key in _SPECIAL_TOKEN_KEYS:
    if data.get(key) is not None and not is_token(data[key]):
      raise ValueError(f"{file}: field {key!r} must be a token string or an AddedToken object, got {data[key]!r}")
  decoder = data.get("added_tokens_decoder")
  if decoder is None:
    return
  if not isinstance(decoder, dict):
    raise ValueError(f"{file}: field 'added_tokens_decoder' must be an object of id -> AddedToken, got {decoder!r}")
  for token_id, entry in decoder.items():
    if not token_id.isdecimal() or not is_token(entry):
      raise ValueError(f"{file}: added_tokens_decoder entry {token_id!r}: {entry!r} is not a token id -> AddedToken "
                       "object")


def _read_config(directory: str | None) -> dict[str, Any]:
  """tokenizer_config.json merged with special_tokens_map.json as transformers merges them ({} for None).

  transformers reads special_tokens_map.json only when tokenizer_config.json has no `added_tokens_decoder` (a config
  written before transformers 4.34), and then the map's values win; a newer config is complete without it.
  """
  cfg: dict[str, Any] = {}
  if directory is None:
    return cfg
  for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
    file = os.path.join(directory, name)
    if not os.path.isfile(file) or (name == SPECIAL_TOKENS_MAP and "added_tokens_decoder" in cfg):
      continue
    data = _read_json(file)
    if not isinstance(data, dict):
      raise ValueError(f"{file} must hold a JSON object, got {type(data).__name__}")
    _check_config(file, data)
    cfg.update(data)
  return cfg


def _special_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
  def token(key: str) -> str | None:
    value = cfg.get(key)
    if isinstance(value, dict):  # serialised AddedToken
      value = value.get("content")
    return value if isinstance(value, str) else None

  return dict(eos_token=token("eos_token"), pad_token=token("pad_token"), bos_token=token("bos_token"),
              clean_up_tokenization_spaces=bool(cfg.get("clean_up_tokenization_spaces", False)))


def _load_sentencepiece(proto: bytes, source: str) -> Any:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  sp = spm.SentencePieceProcessor()
  try:
    sp.LoadFromSerializedProto(proto)
  except Exception as e:  # sentencepiece raises RuntimeError/OSError with its own message
    raise ValueError(f"cannot parse the sentencepiece model {source}: {e}") from e
  return sp


def _added_token_entry(content: str, special: bool, *, lstrip: bool = False, rstrip: bool = False,
                       normalized: bool = False, single_word: bool = False) -> dict[str, Any]:
  """An `added_tokens_decoder` entry of tokenizer_config.json (transformers' serialised AddedToken)."""
  return {"content": content, "lstrip": lstrip, "normalized": normalized, "rstrip": rstrip,
          "single_word": single_word, "special": special}


def _check_tokens(tokens: Iterable[str]) -> list[str]:
  if isinstance(tokens, str):
    raise TypeError(f"expected a list of token strings, got the string {tokens!r}")
  tokens = list(tokens)
  for t in tokens:
    if not isinstance(t, str) or not t:
      raise ValueError(f"special tokens must be non-empty strings, got {t!r}")
  return tokens


def _check_texts(texts: Sequence[Any]) -> None:
  """Names the text a backend refused with a bare TypeError (the Rust tokenizer's "TextInputSequence must be str",
  sentencepiece's "List elements must be str or bytes", both said even of a str): one that is not a str, or a str
  holding a lone surrogate (no UTF-8 for it; json.loads gives one for a "\\ud83d" escape, as in a truncated
  emoji)."""
  _check_str_entries(texts, "text")
  for i, text in enumerate(texts):
    problem = files.lone_surrogate(text)
    if problem:
      raise ValueError(f"text {i} {problem} (no UTF-8 for it): replace it (e.g. by U+FFFD) before tokenizing")


def _text_list(texts: Sequence[str]) -> list[str]:
  """`encode_batch`'s texts as a list; one string is refused (it was encoded character by character, one row each)
  as is a non-string entry (the HF backend's "TextEncodeInput must be Union[...]" named no entry)."""
  if isinstance(texts, str):
    raise TypeError(f"encode_batch takes a sequence of texts, got one string {texts[:40]!r} (use encode for one text)")
  texts = list(texts)
  _check_str_entries(texts, "encode_batch: text")
  return texts


def _check_str_entries(texts: Sequence[Any], label: str) -> None:
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(f"{label} {i} must be a str, got {type(text).__name__}")


def _as_int_list(ids: Sequence[int] | np.ndarray) -> list[int]:
  """[T] ids as Python ints. Only integers are ids, as transformers takes them: `int()` / `astype` read a float 1.7
  as id 1 (and a string "9707" as 9707) and decoded a text nobody asked for."""
  if isinstance(ids, numbers.Integral):  # iterating it failed with "'int' object is not iterable"
    raise TypeError(f"expected a sequence of token ids, got the single id {int(ids)}: pass [{int(ids)}]")
  if isinstance(ids, np.ndarray) or hasattr(ids, "__array__"):
    ids = np.asarray(ids)
    if ids.ndim != 1:
      raise ValueError(f"expected a 1-D sequence of ids, got shape {ids.shape}")
    if ids.dtype.kind not in "iub":
      raise TypeError(f"token ids must be integers, got an array of {ids.dtype}")
    return ids.astype(np.int64).tolist()
  ids = list(ids)
  for position, token_id in enumerate(ids):
    if not isinstance(token_id, numbers.Integral):
      raise TypeError(f"token ids must be integers, got {token_id!r} ({type(token_id).__name__}) at position "
                      f"{position}")
  return [int(i) for i in ids]


def _clean_up_tokenization(text: str) -> str:
  """transformers' `clean_up_tokenization` (applied when tokenizer_config.json asks for it, except to BPE models)."""
  return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",").replace(" ' ", "'")
          .replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s").replace(" 've", "'ve")
          .replace(" 're", "'re"))


# --- protobuf wire format (just enough to append sentencepiece pieces) ----------------------------------------------


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _proto_field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _sentencepiece_piece(piece: str, score: float, piece_type: int) -> bytes:
  """A serialised `ModelProto.SentencePiece` {1: piece, 2: score (float), 3: type (enum)}."""
  return (_proto_field(1, piece.encode("utf-8")) + _varint(2 << 3 | 5) + struct.pack("<f", score)
          + _varint(3 << 3 | 0) + _varint(piece_type))
