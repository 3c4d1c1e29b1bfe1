"""The footer of the main screen: its keys, and "read-only" where they cannot steer a run."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterLabel


class ConsoleFooter(Footer):
    """Textual's footer, opening with "read-only" where the keys cannot steer a run."""

    def __init__(self, note: str = "", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.note = note

    def compose(self) -> ComposeResult:
        if self.note:
            yield FooterLabel(self.note, id="footer-note", markup=False)
        yield from super().compose()
