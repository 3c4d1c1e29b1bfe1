"""Typing an exact gradient-clip threshold.

Only text that is not a number is refused here: a command needs a number. Whether the trainer
can use it (finite, positive, within esper_engine.config.MAX_CLIP_THRESHOLD) is the trainer's
call, answered with a CommandAck the console shows, so the rule lives in one place and every
refusal is in the recording.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from overwatch.widgets.formatting import num


def parse_clip_value(text: str) -> float:
    """The number typed, or ValueError with the one-line reason it is not one."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("enter a number, e.g. 0.5")
    try:
        return float(stripped)
    except ValueError:
        raise ValueError(f"not a number: {stripped!r}") from None


class ClipEntryModal(ModalScreen[float | None]):
    """Dismisses with the number typed on Enter, or None on Escape."""

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
