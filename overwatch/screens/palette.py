"""The command palette's entries (ctrl+p): every action of the main screen, with its key.

Each entry runs the same action its key runs, so a destructive one (rollback, stop, quit) still
asks to be confirmed, and an action greyed out in this mode (a control in a replay) is not
listed. Titles are the help screen's wording, searchable by name; the key follows in brackets
of plain text (the palette never reads markup from them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from textual.app import SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from overwatch.screens.bindings import APP_BINDINGS, HELP_ORDER, action_name

if TYPE_CHECKING:
    from overwatch.app import OverwatchApp

# Textual's own entries that the console's keys already cover (q, ?): listed once, with the key.
TEXTUAL_SHADOWED = frozenset({"Quit", "Keys"})
# Digits 1-9 would be nine entries: "Go to env" (g) takes any number.
_SKIPPED = frozenset({"focus_env"})


def palette_commands(app: OverwatchApp, screen: Screen) -> Iterator[SystemCommand]:
    """One entry per action usable here and now, in the help screen's order."""
    seen: set[str] = set()
    for binding in HELP_ORDER:
        name = action_name(binding)
        if name in _SKIPPED or binding.action in seen:
            continue
        seen.add(binding.action)
        owner = app if binding in APP_BINDINGS or binding.action.startswith("app.") else screen
        if owner.check_action(name, ()) is not True:
            continue
        keys = binding.key_display or binding.key.split(",")[0]
        help_text = binding.tooltip or binding.description
        yield SystemCommand(f"{_title(binding, name)} ({keys})", help_text, _runner(owner, binding))


def _title(binding: Binding, name: str) -> str:
    """The footer's word, or for a key of a pair the direction it goes (its own description)."""
    if name in ("quit", "quit_now"):
        return "Quit" if name == "quit" else "Quit now"
    return binding.description


def _runner(owner: object, binding: Binding) -> Callable[[], Awaitable[None]]:
    action = binding.action.removeprefix("app.")

    async def run() -> None:
        await owner.run_action(action)  # type: ignore[attr-defined]

    return run
