"""The run's recorded config (RunStarted's), one ``key = value`` line each, searchable.

The config comes from the recording or the trainer, so every line is shown as text, never as
markup: a data directory or a fault spec may hold brackets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from esper_engine.contracts import RunStarted


def config_lines(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``group.key = value`` for every leaf of ``config``, in its recorded order."""
    lines: list[str] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            lines += config_lines(value, f"{name}.")
        else:
            lines.append(f"{name} = {_value(value)}")
    return lines


def _value(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def run_lines(started: RunStarted) -> list[str]:
    """The run's identity as RunStarted records it, ahead of its config."""
    host = " ".join(part for part in (started.host_kind, started.host_sizes) if part)
    lines = [
        f"run_id = {started.run_id}",
        f"task_kind = {started.task_kind}",
        f"slot_ids = [{', '.join(started.slot_ids)}]",
        f"blueprints = [{', '.join(started.blueprints)}]",
    ]
    if host:
        lines.append(f"host = {host}")
    return lines


class ConfigScreen(ModalScreen[None]):
    """Every line of the config that contains the typed text (any case); Esc closes, the arrows
    and PgUp/PgDn scroll while the search field has the keys."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("up", "scroll(-1)", "Up", show=False),
        Binding("down", "scroll(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
    ]
    AUTO_FOCUS = "#config-search"

    def __init__(self, started: RunStarted | None) -> None:
        super().__init__()
        self.lines = [] if started is None else run_lines(started) + config_lines(started.config)
        self.shown: list[str] = list(self.lines)

    def compose(self) -> ComposeResult:
        with Vertical(id="config-box", classes="dialog"):
            yield Static("Run config (as recorded)", classes="dialog-title")
            yield Input(placeholder="type to filter the lines", id="config-search")
            with VerticalScroll(id="config-lines", can_focus=False):
                yield Static(id="config-text")
            yield Static("", id="config-count", classes="dialog-detail")
            yield Static(
                "[b]type[/b] filter    [b]↑↓ PgUp PgDn[/b] scroll    [b]esc[/b] close",
                classes="dialog-keys",
            )

    def on_mount(self) -> None:
        self._show("")

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._show(event.value)

    def _show(self, search: str) -> None:
        needle = search.strip().lower()
        self.shown = [line for line in self.lines if needle in line.lower()]
        if not self.lines:
            body = Text("no RunStarted yet: the config shows once the run has started")
        elif not self.shown:
            body = Text(f"no line contains {search.strip()!r}")
        else:
            body = Text("\n".join(self.shown))
        self.query_one("#config-text", Static).update(body)
        self.query_one("#config-count", Static).update(
            Text(f"{len(self.shown)} of {len(self.lines)} lines")
        )
        self.query_one("#config-lines", VerticalScroll).scroll_home(animate=False)

    def action_scroll(self, lines: int) -> None:
        self.query_one("#config-lines", VerticalScroll).scroll_relative(y=lines, animate=False)

    def action_page(self, pages: int) -> None:
        box = self.query_one("#config-lines", VerticalScroll)
        if pages > 0:
            box.scroll_page_down(animate=False)
        else:
            box.scroll_page_up(animate=False)
