"""The end-of-run summary as a dialog: opens once when the run ends, and on ``u`` any time."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from overwatch.run_summary import RunSummary, summary_lines


class SummaryScreen(ModalScreen[None]):
    """The ranked summary (``overwatch.run_summary``); Esc, u or Enter closes it."""

    BINDINGS = [
        Binding("escape,u,enter", "dismiss", "Close summary"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, summary: RunSummary) -> None:
        super().__init__()
        self.summary = summary

    def compose(self) -> ComposeResult:
        lines = summary_lines(self.summary)
        ended = self.summary.status in ("completed", "stopped", "crashed")
        title = "Run summary" if ended else "Run summary so far"
        with Vertical(id="summary-box", classes="dialog"):
            yield Static(title, classes="dialog-title")
            with VerticalScroll(id="summary-text"):
                yield Static(Text("\n".join(lines)), id="summary-lines")  # run ids are text
            yield Static("[b]esc[/b] close    [b]q[/b] quit", classes="dialog-keys")
