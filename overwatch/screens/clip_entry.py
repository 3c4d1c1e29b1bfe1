"""Typing an exact gradient-clip threshold.

Only text that is not a finite number is refused here: a command needs a number, and `inf` and
`nan` (which Python's float() reads) are refused alike, in the prompt. Whether the trainer can use
a finite number (positive, within esper_engine.config.MAX_CLIP_THRESHOLD) is the trainer's call,
answered with a CommandAck the console shows, so that rule lives in one place and every refusal
is in the recording.
"""

from __future__ import annotations

import math

from overwatch.screens.prompt import PromptModal
from overwatch.widgets.formatting import num


def parse_clip_value(text: str) -> float:
    """The number typed, or ValueError with the one-line reason it is not one."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("enter a number, e.g. 0.5")
    try:
        value = float(stripped)
    except ValueError:
        raise ValueError(f"not a number: {stripped!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {stripped!r}")
    return value


class ClipEntryModal(PromptModal[float]):
    """Dismisses with the number typed on Enter, or None on Escape. ``value`` and ``submit``:
    text typed with the `c` that opened it (and its Enter), as for ``PromptModal``."""

    AUTO_FOCUS = "#clip-input"
    NAME = "clip"
    BOX_CLASSES = "dialog"
    GO = "apply"

    def __init__(
        self,
        current: float | None,
        value: str = "",
        submit: bool = False,
        *,
        target: str = "every env",
    ) -> None:
        super().__init__(
            f"Set the gradient-clip threshold for {target}",
            parse_clip_value,
            detail=f"current: {num(current, 4)}",
            placeholder="e.g. 0.5",
            value=value,
            submit=submit,
        )
        self.current = current
