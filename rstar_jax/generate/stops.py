"""Stop strings, matched on decoded text (so a stop that spans token boundaries is caught), on the host.

Semantics (vLLM's): generation of a row ends at the first token after which the generated text contains a stop
string; the result text is everything before that occurrence, the stop reason is the stop string itself (so
`text + stop` rebuilds the step), the token ids are the tokens up to and including that token, and later tokens are
discarded. When that token completes several stop strings, the one that starts first in the text wins, ties to the
longer one (vLLM instead takes the first of its `stop` list that occurs; e.g. with "step" and "<end_of_step>", a
single "<end_of_step>" token stops here on the whole tag whatever the list order). Only generated text is searched: a
stop string spanning the prompt/continuation boundary does not count. Reasons on one token rank as vLLM 0.6's
`StopChecker` (the version the official rStar-Math search ran): an EOS token gives "eos" (its text is never searched),
then a completed stop string, then "length": a stop completed by the last allowed token reports the stop string.

Text is decoded with a few prompt tokens in front and their text removed (as vLLM's incremental detokenizer), so
tokenizers that render a token differently at the start of a text (sentencepiece's leading space) give the same
continuation text as decoding the whole sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Protocol, Sequence

import numpy as np

CONTEXT_TOKENS = 4  # prompt tokens decoded in front of a continuation


class Detokenizer(Protocol):
  """What the engine needs from a tokenizer (`rstar_jax.tokenizer.Tokenizer` fits)."""

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    ...

  def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
    ...


def first_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
  """The occurrence of any of `stops` in `text` that starts first (ties: the longer stop), or None."""
  best = None
  for stop in stops:
    i = text.find(stop)
    if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(stop) > len(best[1]))):
      best = (i, stop)
  return best


@dataclasses.dataclass(frozen=True)
class StopMatch:
  text: str  # the continuation text before the stop string
  stop: str  # the matched stop string
  num_tokens: int  # tokens up to and including the one that completed the stop string


class RowText:
  """Decodes the continuation of one row: `decode(context + tokens)` minus the text of the context."""

  def __init__(self, tokenizer: Detokenizer, prompt: Sequence[int]):
    self._tok = tokenizer
    self._context = [int(t) for t in prompt[-CONTEXT_TOKENS:]]
    self._context_text = tokenizer.decode(self._context) if self._context else ""

  def of(self, tokens: Sequence[int]) -> str:
    """Text of the continuation `tokens`, as vLLM's incremental detokenizer has emitted it after the last of them.

    vLLM (`detokenize_incrementally`) holds a token's text back while the text ends in U+FFFD (bytes of a character
    the next token may finish), so its `output.text` of a row cut there (length, or an EOS next: the EOS step's
    text, held bytes included, is removed) ends before those bytes: here too, the text is that of the longest
    prefix of `tokens` whose text does not end in U+FFFD.
    """
    tokens = [int(t) for t in tokens]
    text = self._decoded(tokens)
    end = len(tokens)
    while text.endswith("\ufffd") and end > 0:  # a few tokens at most, but for a row of garbage bytes
      end -= 1
      text = self._decoded(tokens[:end])
    return text

  def _decoded(self, tokens: list[int]) -> str:
    """`decode(context + tokens)` minus the text of the context."""
    if not tokens:
      return ""
    if not self._context:
      return self._tok.decode(tokens)
    full = self._tok.decode(self._context + tokens)
    if full.startswith(self._context_text):
      return full[len(self._context_text):]
    # The context ended inside a multi-byte character that the continuation completes: decode it alone.
    return self._tok.decode(tokens)

  def find_stop(self, tokens: Sequence[int], stops: Sequence[str]) -> StopMatch | None:
    """The first stop string in the text of `tokens`, with the token that completed it, or None.

    The number of tokens is found by bisection over prefixes (the presence of a stop string is monotone in the
    prefix length), so a long continuation costs O(log T) decodes.
    """
    if not stops or first_stop(self.of(tokens), stops) is None:
      return None
    low, high = 1, len(tokens)  # the answer is in [low, high]
    while low < high:
      mid = (low + high) // 2
      if first_stop(self.of(tokens[:mid]), stops) is not None:
        high = mid
      else:
        low = mid + 1
    text = self.of(tokens[:low])
    start, stop = first_stop(text, stops)
    return StopMatch(text=text[:start], stop=stop, num_tokens=low)


def tail_contains_stop(tokenizer: Detokenizer, rows: Sequence[Sequence[int]], starts: Sequence[int],
                       stops: Sequence[str]) -> list[bool]:
  """Cheap trigger: whether the decoded tail `rows[i][starts[i]:]` of each row contains a stop string.

  Used between decode chunks to end rows early. It may err (a tail decoded out of context), so a hit is confirmed
  with `RowText.find_stop` before a row is ended, and the final results always come from `find_stop`.
  """
  texts = tokenizer.decode_batch([list(map(int, r[s:])) for r, s in zip(rows, starts)])
  return [any(stop in t for stop in stops) for t in texts]


def tail_start(num_old: int, stops: Sequence[str]) -> int:
  """First token worth decoding when tokens after `num_old` are new: a stop of c characters spans at most 4c
  byte-level tokens, so a stop completed by a new token starts within that many tokens before it."""
  longest = max((len(s) for s in stops), default=0)
  return max(0, num_old - 4 * longest - 4)


def validate_stops(stops: Sequence[str] | None) -> tuple[str, ...]:
  """The stop strings as a tuple; None is no stop strings (vLLM's `SamplingParams(stop=None)`)."""
  if stops is None:
    return ()
  if isinstance(stops, str):
    raise TypeError(f"stop must be a sequence of strings, got the string {stops!r}")
  if not isinstance(stops, Iterable):  # tuple() failed as "'int' object is not iterable", naming no argument
    raise TypeError(f"stop must be a sequence of strings, got {type(stops).__name__} {stops!r:.40}")
  stops = tuple(stops)
  for s in stops:
    if not isinstance(s, str) or not s:
      raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
  return stops


def as_int_list(tokens: np.ndarray | Sequence[int]) -> list[int]:
  return [int(t) for t in np.asarray(tokens).reshape(-1)]
