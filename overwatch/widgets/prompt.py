"""A one-line question: go to an env, go to an epoch, search the log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

T = TypeVar("T")


class PromptModal(ModalScreen[T | None], Generic[T]):
    """Dismisses with ``parse(text)`` on Enter (a ValueError is shown and the prompt stays), or
    None on Escape."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        title: str,
        parse: Callable[[str], T],
        *,
        detail: str = "",
        placeholder: str = "",
        value: str = "",
    ) -> None:
        super().__init__()
        self.title_text = title
        self.parse = parse
        self.detail = detail
        self.placeholder = placeholder
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog prompt-box"):
            yield Static(self.title_text, classes="dialog-title")
            if self.detail:
                yield Static(self.detail, classes="dialog-detail")
            yield Input(value=self.value, placeholder=self.placeholder, id="prompt-input")
            yield Static("", id="prompt-error", classes="dialog-error")
            yield Static("[b]enter[/b] go    [b]esc[/b] cancel", classes="dialog-keys")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            value = self.parse(event.value)
        except ValueError as exc:
            self.query_one("#prompt-error", Static).update(str(exc))
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


def parse_number(low: int, high: int, what: str) -> Callable[[str], int]:
    """A parser for a whole number within low..high, with a one-line reason otherwise."""

    def parse(text: str) -> int:
        stripped = text.strip()
        try:
            value = int(stripped)
        except ValueError:
            raise ValueError(f"enter {what} as a number, {low}..{high}") from None
        if not low <= value <= high:
            raise ValueError(f"{what} {value} is not within {low}..{high}")
        return value

    return parse
