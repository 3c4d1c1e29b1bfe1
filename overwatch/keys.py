"""Telling a deliberate key from text typed into the wrong window.

An operator presses single commands (`r`, `p`, `]`) a good fraction of a second apart at the
quickest; a typed word or a pasted line arrives much faster (a paste in one write, typing at
50-150 ms a key for a practised typist). Printable keys closer together than ``TYPING_GAP_S``
form a burst; the console treats a burst as text that was meant for another window and lets
no key in it act. To know that a key does not start a burst, the first printable key is held
for ``TYPING_GAP_S`` and acts only if nothing follows it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Textual stamps each key event with this clock when the terminal's bytes are parsed (on the
# driver's input thread), so a busy UI thread does not squeeze keys pressed apart together.
from textual._time import get_time

# Below this gap between keys it is typing or a paste. A paste, tmux send-keys and key
# auto-repeat deliver keys 0-40 ms apart; a practised typist's letters come 60-150 ms apart; a
# person pressing two single commands in a row (focus an env, then `r`) takes about 200 ms or
# more (the keystroke-level model's 0.2 s per deliberate key). Slow typing is not caught by the
# gap alone: that is what the destructive dialogs' own confirmation is for.
TYPING_GAP_S = 0.15
# A destructive dialog ignores keys for this long after it opens: the rest of a word whose
# letter opened it (`history` -> `r`, then `y`) cannot answer it.
DIALOG_GUARD_S = 0.3


@dataclass(frozen=True)
class Stroke:
    """One key as it arrived: Textual's key name, its character (None for a non-printable key)
    and when it arrived."""

    key: str
    character: str | None
    time: float

    @property
    def printable(self) -> bool:
        character = self.character
        return character is not None and len(character) == 1 and character.isprintable()


@dataclass
class Burst:
    """Keys that arrived too close together to be single commands."""

    strokes: list[Stroke]

    @property
    def text(self) -> str:
        """The printable keys as typed (what the terminal would have echoed)."""
        return "".join(s.character or "" for s in self.strokes if s.printable)

    def prompt_text(self) -> tuple[str, bool] | None:
        """For a burst that opens a prompt (its first key): the rest typed into that prompt and
        whether it ended with Enter; None when it holds anything but text and one final Enter."""
        rest = self.strokes[1:]
        submit = bool(rest) and rest[-1].key == "enter"
        if submit:
            rest = rest[:-1]
        if not all(s.printable for s in rest):
            return None
        return "".join(s.character or "" for s in rest), submit


@dataclass
class KeyGuard:
    """Sorts keys into single commands and bursts, by their arrival times alone.

    ``feed`` takes each key as it arrives and returns what is decided by then: single keys
    (``Stroke``) to act on and bursts (``Burst``) to set aside. ``settle`` decides a held key
    or a burst once ``gap`` has passed with nothing after it; call it when that time is up.
    """

    gap: float = TYPING_GAP_S
    pending: list[Stroke] = field(default_factory=list)

    def feed(self, stroke: Stroke) -> list[Stroke | Burst]:
        decided: list[Stroke | Burst] = []
        if self.pending and stroke.time - self.pending[-1].time >= self.gap:
            decided.append(self._close())
        if self.pending:
            self.pending.append(stroke)  # anything inside a burst is part of it: Enter too
        elif stroke.printable:
            self.pending.append(stroke)  # held: it may be the first letter of a word
        else:
            decided.append(stroke)  # arrows, Enter, Esc, F1 on their own act at once
        return decided

    def settle(self, now: float) -> Stroke | Burst | None:
        """What was held, once ``gap`` has passed since its last key; None before then."""
        if self.pending and now - self.pending[-1].time >= self.gap:
            return self._close()
        return None

    def drop(self) -> int:
        """Forget what is held (a paste came, or a dialog opened); how many keys it was."""
        count = len(self.pending)
        self.pending = []
        return count

    def _close(self) -> Stroke | Burst:
        strokes, self.pending = self.pending, []
        return strokes[0] if len(strokes) == 1 else Burst(strokes)


# The clock a KeyClock reads when none is given: None, the terminal's timestamps. The console's
# Pilot tests install one that moves a second per reading (tests/console/conftest.py): keys
# pressed one by one, as a person presses single commands.
default_clock: Callable[[], float] | None = None


class KeyClock:
    """When keys arrive: the time Textual stamped on each key event, or, for tests, an injected
    clock read as each key reaches the app (a test's keys are all posted in the same instant)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock if clock is not None else default_clock

    @property
    def injected(self) -> bool:
        return self.clock is not None

    def now(self) -> float:
        return self.clock() if self.clock is not None else get_time()

    def stamp(self, event_time: float) -> float:
        return self.clock() if self.clock is not None else event_time
