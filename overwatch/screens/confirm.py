"""A question that ordinary typing cannot answer, asked before anything irreversible is sent.

A yes/no key is too easy to hit by accident: `history` typed into the wrong window opened the
rollback dialog with its `r` and confirmed it with its `y`. Here the answer is a word the
operator types on purpose (the env's number, or `stop`) and Enter; keys arriving in the first
``DIALOG_GUARD_S`` after the dialog opens are ignored (the rest of a word that opened it), and
any other key cancels.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from overwatch.keys import DIALOG_GUARD_S, KeyClock


class ConfirmModal(ModalScreen[bool]):
    """Dismisses with True when ``answer`` is typed and Enter pressed; False on any other key.

    The question and the detail are shown as text, never as markup.
    """

    def __init__(
        self, question: str, detail: str, answer: str, *, clock: KeyClock | None = None
    ) -> None:
        super().__init__()
        self.question = question
        self.detail = detail
        self.answer = answer
        self.clock = clock or KeyClock()
        self.typed = ""
        self.opened_at: float | None = None
        self._echo = Static("", id="confirm-typed", classes="dialog-input")
        self._keys = Static(Text("…"), classes="dialog-keys")

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="dialog"):
            yield Static(Text(self.question), classes="dialog-title")
            if self.detail:
                yield Static(Text(self.detail), classes="dialog-detail")
            yield self._echo
            yield self._keys

    def on_mount(self) -> None:
        self.opened_at = self.clock.now()
        self._show()
        # The hint appears once keys count: until then it would invite keys that are ignored.
        self.set_timer(DIALOG_GUARD_S, self._show)

    def _show(self) -> None:
        self._echo.update(Text(f"> {self.typed}▏"))
        if self.opened_at is not None and self.clock.now() - self.opened_at >= DIALOG_GUARD_S:
            self._keys.update(
                Text.assemble(
                    "type ", (self.answer, "bold"), " then ", ("enter", "bold"),
                    " to confirm    any other key cancels",
                )
            )  # fmt: skip

    def on_key(self, event: events.Key) -> None:
        event.stop()
        event.prevent_default()
        arrived = self.clock.stamp(event.time)
        if self.opened_at is None or arrived - self.opened_at < DIALOG_GUARD_S:
            return  # typed before the question could be read
        if event.key == "enter":
            self.dismiss(self.typed == self.answer)
        elif event.key == "backspace":
            self.typed = self.typed[:-1]
            self._show()
        elif event.character and self.answer.startswith(self.typed + event.character):
            self.typed += event.character
            self._show()
        else:
            self.dismiss(False)
