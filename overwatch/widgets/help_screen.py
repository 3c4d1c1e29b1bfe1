"""Every key the console answers to, and whether it works in this mode."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from esper_engine.contracts import SeedStage
from overwatch.widgets.formatting import STAGE_GLYPHS

# The compact row, field by field: what an operator sees without a panel.
ROW_LEGEND = (
    ("▶", "the focused env"),
    ("62.5% ▂▄▆", "val accuracy, and its sparkline per epoch"),
    ("L", "val loss"),
    ("g 0.84/1.00", "post-clip grad norm / clip threshold (mean of the epoch in progress)"),
    ("P 1/3", "governor panics in a row / in total"),
    ("R", "rollbacks"),
)


class HelpScreen(ModalScreen[None]):
    """A table of (keys, what they do, available here?) and the compact row's glyphs; any of
    ? F1 Esc q closes it."""

    BINDINGS = [
        Binding("escape,question_mark,f1,q", "dismiss", "Close help"),
    ]

    def __init__(self, rows: Sequence[tuple[str, str, bool]], mode: str) -> None:
        super().__init__()
        self.rows = rows
        self.mode = mode

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box", classes="dialog"):
            yield Static(f"Overwatch keys ({self.mode})", classes="dialog-title")
            if not all(usable for _, _, usable in self.rows):
                yield Static("dimmed keys do nothing in this mode", classes="dialog-detail")
            with VerticalScroll(id="help-keys"):
                yield Static(self._table())
                yield Static("One line per env (t, or a small terminal)", classes="dialog-title")
                yield Static(self._legend())
            yield Static(
                "[b]↑↓ PgUp PgDn[/b] scroll    [b]?[/b] [b]f1[/b] [b]esc[/b] close",
                classes="dialog-keys",
            )

    def _table(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right", style="bold")  # keys
        table.add_column()
        for keys, description, usable in self.rows:
            style = "" if usable else "dim"
            table.add_row(Text(keys, style=style), Text(description, style=style))
        return table

    def _legend(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right", style="bold")
        table.add_column()
        for glyph, meaning in ROW_LEGEND:
            table.add_row(glyph, meaning)
        stages = "  ".join(f"{STAGE_GLYPHS[stage]} {stage.lower()}" for stage in SeedStage)
        table.add_row("slots", Text(f"one glyph per slot: {stages}"))
        return table
