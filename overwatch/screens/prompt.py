"""A one-line question: go to an env, go to an epoch, search the log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

T = TypeVar("T")


class PromptModal(ModalScreen[T | None], Generic[T]):
    """Dismisses with ``parse(text)`` on Enter (a ValueError is shown and the prompt stays), or
    None on Escape. ``submit``: the text was typed with its Enter before the prompt opened (a
    burst of keys that began with the prompt's key): validate it at once.

    Titles, details and errors are shown as text, never as markup (an error quotes what the
    operator typed)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    AUTO_FOCUS = "#prompt-input"
    NAME = "prompt"  # its parts' ids: #prompt-box, #prompt-input, #prompt-error
    BOX_CLASSES = "dialog prompt-box"
    GO = "go"  # what Enter does, in the key hint

    def __init__(
        self,
        title: str,
        parse: Callable[[str], T],
        *,
        detail: str = "",
        placeholder: str = "",
        value: str = "",
        submit: bool = False,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.parse = parse
        self.detail = detail
        self.placeholder = placeholder
        self.value = value
        self.submit = submit

    def compose(self) -> ComposeResult:
        with Vertical(id=f"{self.NAME}-box", classes=self.BOX_CLASSES):
            yield Static(Text(self.title_text), classes="dialog-title")
            if self.detail:
                yield Static(Text(self.detail), classes="dialog-detail")
            yield Input(value=self.value, placeholder=self.placeholder, id=f"{self.NAME}-input")
            yield Static("", id=f"{self.NAME}-error", classes="dialog-error")
            yield Static(f"[b]enter[/b] {self.GO}    [b]esc[/b] cancel", classes="dialog-keys")

    def on_mount(self) -> None:
        if self.submit:
            self._answer(self.value)

    def on_key(self, event: events.Key) -> None:
        type_ahead(self, event, f"#{self.NAME}-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._answer(event.value)

    def _answer(self, text: str) -> None:
        try:
            value = self.parse(text)
        except ValueError as exc:
            self.query_one(f"#{self.NAME}-error", Static).update(Text(str(exc)))
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


def parse_epoch(text: str, epochs: int) -> tuple[int, int]:
    """``EPISODE:EPOCH`` (both from 1, as on screen) or ``N`` (epochs across the run, from 1)
    as (episode, epoch) counted from 0, or ValueError with the reason."""
    stripped = text.strip()
    try:
        if ":" in stripped:
            episode_text, epoch_text = stripped.split(":", 1)
            episode, epoch = int(episode_text) - 1, int(epoch_text) - 1
        else:
            episode, epoch = divmod(int(stripped) - 1, epochs)
    except ValueError:
        raise ValueError(
            f"enter EPISODE:EPOCH (e.g. 2:3) or an epoch number, not {stripped!r}"
        ) from None
    if episode < 0 or not 0 <= epoch < epochs:
        raise ValueError(f"no epoch {stripped}: episodes count from 1, epochs 1..{epochs}")
    return episode, epoch


def type_ahead(screen: ModalScreen, event: events.Key, selector: str) -> None:
    """A key that reaches the dialog before its input has the focus (typed right after the key
    that opened it, on a busy console) goes into the input, not to the screen behind."""
    field = screen.query_one(selector, Input)
    if screen.focused is field:
        return
    if event.is_printable and event.character:
        event.stop()
        event.prevent_default()
        field.focus()
        field.insert_text_at_cursor(event.character)
    elif event.key == "enter":
        event.stop()
        event.prevent_default()
        field.focus()
        field.action_submit()
