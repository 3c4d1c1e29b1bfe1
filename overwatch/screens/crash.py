"""The trainer crashed: say so plainly, keep the run's data visible behind the notice."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class CrashModal(ModalScreen[None]):
    """Escape hides the notice (the data stays); q quits with a non-zero exit code."""

    BINDINGS = [
        Binding("q", "app.quit", "Quit"),
        Binding("escape", "dismiss", "Close notice"),
    ]

    def __init__(self, error: str | None, exit_code: int) -> None:
        super().__init__()
        self.error = error or "no error text was reported"
        self.exit_code = exit_code

    def compose(self) -> ComposeResult:
        with Vertical(id="crash-box", classes="dialog"):
            yield Static("✗ The trainer crashed", classes="dialog-title")
            with VerticalScroll(id="crash-error"):
                yield Static(Text(self.error))  # plain text: error messages may contain [brackets]
            yield Static(
                "The run's data up to the crash stays on screen; the recording ends with "
                f"RunFinished(crashed). Quitting exits with code {self.exit_code}.",
                classes="dialog-detail",
            )
            yield Static("[b]q[/b] quit    [b]esc[/b] close this notice", classes="dialog-keys")
