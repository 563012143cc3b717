"""Which value a new child backs up, and how far (DESIGN §1.2), per search mode and preset.

| new child                  | terminal_guided      | ppm_augmented        | inference            |
| -------------------------- | -------------------- | -------------------- | -------------------- |
| valid terminal (answer)    | +1 / -1 to the root  | +1 / -1 to the root  | its PPM score, root  |
| invalid terminal           | -1 (scope: preset)   | -1 (scope: preset)   | -1 (scope: preset)   |
| non-terminal               | nothing              | PPM score, itself    | PPM score, itself    |

"+1 / -1": +1 when the answer matches the ground truth. "Itself": one visit and the value on the
child only, which initialises its Q. Invalid terminals (too many code errors, too deep, unparsable):
`official` puts -1 on the node itself only (the released code's `node.update`); `paper` backs the -1
up to the root like any failed trajectory (the paper scores every terminal that is not a correct
answer -1 and back-propagates it).
"""

from __future__ import annotations

from rstar_jax.search.tree import INVALID_TERMINALS, Reason

MODES = ("terminal_guided", "ppm_augmented", "inference")
SCOPE_NONE, SCOPE_SELF, SCOPE_PATH = None, "self", "path"


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  return mode


def needs_ppm(mode: str, reason: Reason) -> bool:
  """Whether a new child with this terminal reason is scored by the PPM in `mode`."""
  if mode == "terminal_guided":
    return False
  if reason == Reason.NONE:
    return True
  return mode == "inference" and reason == Reason.ANSWER


def leaf_update(mode: str, preset: str, reason: Reason, correct: bool | None, ppm: float | None,
                positive_reward: float = 1.0, negative_reward: float = -1.0
                ) -> tuple[float, str | None]:
  """`(value, scope)` of a new child; scope is None (no update), "self" or "path".

  Args:
    mode: one of MODES.
    preset: "official" or "paper".
    reason: the child's terminal reason (`Reason.NONE` for a non-terminal child).
    correct: for an answer, whether it matches the ground truth (unused in inference).
    ppm: the child's PPM score when `needs_ppm`, else ignored.
    positive_reward: value of a correct answer.
    negative_reward: value of a wrong answer or an invalid terminal.
  """
  if reason == Reason.ANSWER:
    if mode == "inference":
      return float(ppm), SCOPE_PATH
    return (positive_reward if correct else negative_reward), SCOPE_PATH
  if reason in INVALID_TERMINALS:
    return negative_reward, (SCOPE_SELF if preset == "official" else SCOPE_PATH)
  if reason == Reason.NONE and mode != "terminal_guided":
    return float(ppm), SCOPE_SELF
  return 0.0, SCOPE_NONE
