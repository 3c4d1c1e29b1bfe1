"""Every key the console answers to, and whether it works in this mode."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from esper_engine.contracts import SeedStage
from overwatch.screens.bindings import (
    APP_BINDINGS,
    HELP_ORDER,
    HELP_PAIRS,
    QUIT_HELP_ATTACHED,
    QUIT_HELP_REPLAY,
    action_name,
)
from overwatch.widgets.formatting import STAGE_GLYPHS

if TYPE_CHECKING:
    from overwatch.app import OverwatchApp

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


def help_rows(app: OverwatchApp, screen: Screen) -> list[tuple[str, str, bool]]:
    """(keys, description, usable now) for every binding of the app and its main ``screen``;
    paired keys share a row, digits fold into one, and the keys usable in this mode come first."""
    caps = app.source.capabilities
    rows: dict[str, tuple[list[str], bool]] = {}
    for binding in HELP_ORDER:
        name = action_name(binding)
        if name == "focus_env" and binding.key != "1":
            continue
        keys = "? f1" if name == "help" else binding.key_display or binding.key
        description = HELP_PAIRS.get(name) or binding.tooltip or binding.description
        if name in ("quit", "quit_now") and caps.attached:
            description = QUIT_HELP_ATTACHED
        elif name in ("quit", "quit_now") and not caps.controls:
            description = QUIT_HELP_REPLAY
        owner = app if binding in APP_BINDINGS or binding.action.startswith("app.") else screen
        usable = owner.check_action(name, ()) is True or name in ("pause", "resume")
        if name in ("pause", "resume"):
            usable = screen.check_action("pause" if app.paused() else "resume", ()) is not None
        if description not in rows:
            rows[description] = ([], usable)
        if keys not in rows[description][0]:
            rows[description][0].append(keys)
    table = [(" ".join(keys), text, usable) for text, (keys, usable) in rows.items()]
    # Textual's own key: the console's actions by name (screens/palette.py), and themes
    table.append(("ctrl+p", "Command palette: every action here by name, and themes", True))
    return sorted(table, key=lambda row: not row[2])
