"""Typing an exact gradient-clip threshold.

Only text that is not a finite number is refused here: a command needs a number, and `inf` and
`nan` (which Python's float() reads) are refused alike, in the prompt. Whether the trainer can use
a finite number (positive, within esper_engine.config.MAX_CLIP_THRESHOLD) is the trainer's call,
answered with a CommandAck the console shows, so that rule lives in one place and every refusal
is in the recording.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from overwatch.screens.prompt import type_ahead
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


class ClipEntryModal(ModalScreen[float | None]):
    """Dismisses with the number typed on Enter, or None on Escape. ``value`` and ``submit``:
    text typed with the `c` that opened it (and its Enter), as for ``PromptModal``."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    AUTO_FOCUS = "#clip-input"

    def __init__(self, current: float | None, value: str = "", submit: bool = False) -> None:
        super().__init__()
        self.current = current
        self.value = value
        self.submit = submit

    def compose(self) -> ComposeResult:
        with Vertical(id="clip-box", classes="dialog"):
            yield Static("Set the gradient-clip threshold for every env", classes="dialog-title")
            yield Static(f"current: {num(self.current, 4)}", classes="dialog-detail")
            yield Input(value=self.value, placeholder="e.g. 0.5", id="clip-input")
            yield Static("", id="clip-error", classes="dialog-error")
            yield Static("[b]enter[/b] apply    [b]esc[/b] cancel", classes="dialog-keys")

    def on_mount(self) -> None:
        if self.submit:
            self._answer(self.value)

    def on_key(self, event: events.Key) -> None:
        type_ahead(self, event, "#clip-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._answer(event.value)

    def _answer(self, text: str) -> None:
        try:
            value = parse_clip_value(text)
        except ValueError as exc:
            self.query_one("#clip-error", Static).update(Text(str(exc)))
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)
