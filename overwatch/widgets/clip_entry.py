"""Typing an exact gradient-clip threshold; bad values are refused here, before any command."""

from __future__ import annotations

import math

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from overwatch.widgets.formatting import num


def parse_clip_value(text: str) -> float:
    """The threshold typed, or ValueError with the one-line reason it is refused."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("enter a number, e.g. 0.5")
    try:
        value = float(stripped)
    except ValueError:
        raise ValueError(f"not a number: {stripped!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be finite, got {stripped}")
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {stripped}")
    return value


class ClipEntryModal(ModalScreen[float | None]):
    """Dismisses with the new threshold on Enter (when valid), or None on Escape."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: float | None) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="clip-box", classes="dialog"):
            yield Static("Set the gradient-clip threshold for every env", classes="dialog-title")
            yield Static(f"current: {num(self.current, 4)}", classes="dialog-detail")
            yield Input(placeholder="e.g. 0.5", id="clip-input")
            yield Static("", id="clip-error", classes="dialog-error")
            yield Static("[b]enter[/b] apply    [b]esc[/b] cancel", classes="dialog-keys")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            value = parse_clip_value(event.value)
        except ValueError as exc:
            self.query_one("#clip-error", Static).update(str(exc))
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)
