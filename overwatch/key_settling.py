"""The main screen's keys through the typing guard: held, settled, then acted on or set aside.

``overwatch.keys`` holds the rules (which keys form a burst); this is the console's side of them.
Every key and paste meant for the main screen passes here first: a lone key acts once the typing
gap has passed with nothing after it, a burst that starts with a prompt's key goes into that
prompt, and any other burst or paste is set aside with one toast. Dialogs get their keys as typed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from textual import events
from textual.timer import Timer

from overwatch.keys import Burst, KeyClock, KeyGuard, Stroke
from overwatch.screens.bindings import MAIN_BINDINGS, PROMPT_ACTIONS, action_name

if TYPE_CHECKING:
    from overwatch.app import OverwatchApp

# Keys that act at once even inside a burst of typing.
UNGUARDED_KEYS = frozenset({"ctrl+c"})
BURST_SHOWN = 24  # characters of an ignored burst quoted in its toast


class KeySettler:
    """Sorts the app's keys into single commands and bursts (``KeyGuard``) and acts on them.

    ``forward`` is the app's own event handling (Textual's ``App.on_event``): a key decided to be
    a single command goes there, as if it had just arrived.
    """

    def __init__(
        self,
        app: OverwatchApp,
        clock: KeyClock,
        forward: Callable[[events.Event], Awaitable[None]],
    ) -> None:
        self.app = app
        self.clock = clock
        self.forward = forward
        self._guard = KeyGuard()
        self._timer: Timer | None = None

    async def intercept(self, event: events.Event) -> bool:
        """Take ``event`` if it is a key or a paste for the main screen; whether it was taken
        (the caller handles any other event as usual)."""
        app = self.app
        guarded = (
            isinstance(event, (events.Key, events.Paste))
            and not event.is_forwarded
            and bool(app.screen_stack)
            and not app.screen.is_modal
        )
        if guarded and isinstance(event, events.Key) and event.key not in UNGUARDED_KEYS:
            stroke = Stroke(event.key, event.character, self.clock.stamp(event.time))
            for decided in self._guard.feed(stroke):
                await self._decide(decided)
            if self._guard.pending:
                # Only a timer: it lands behind any key already queued (a busy console reads
                # keys late, and a word must still be one burst). An injected clock (tests) is
                # read, not waited for: it may have moved on already.
                if self.clock.injected:
                    app.call_next(self.settle)
                self._settle_after(self._guard.gap)
            return True
        if guarded and isinstance(event, events.Paste):
            held = self._guard.drop()
            self._ignored(event.text, len(event.text) + held, "pasted")
            return True
        return False

    async def settle(self) -> None:
        """Act on a held key, or set a burst aside, once the typing gap has passed after it."""
        guard = self._guard
        if not guard.pending:
            return
        if self.app.screen.is_modal:  # a dialog opened meanwhile: held keys were not meant for it
            guard.drop()
            return
        decided = guard.settle(self.clock.now())
        if decided is None:
            remaining = guard.gap - (self.clock.now() - guard.pending[-1].time)
            self._settle_after(max(remaining, 0.01))
            return
        await self._decide(decided)

    def _settle_after(self, seconds: float) -> None:
        """One timer for the held keys, restarted by each key: a word is one wait, not many."""
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.app.set_timer(seconds, self.settle)

    async def _decide(self, decided: Stroke | Burst) -> None:
        if isinstance(decided, Stroke):
            await self.forward(events.Key(decided.key, decided.character))
            return
        first = decided.strokes[0]
        action = self._prompt_action(first.key)
        typed = decided.prompt_text()
        if action is not None and typed is not None:
            text, submit = typed
            getattr(self.app.main, f"action_{action}")(text, submit)
            return
        self._ignored(decided.text, len(decided.strokes), "typed")

    def _prompt_action(self, key: str) -> str | None:
        """The prompt ``key`` opens here and now, if it opens one."""
        for binding in MAIN_BINDINGS:
            name = action_name(binding)
            if key in binding.key.split(",") and name in PROMPT_ACTIONS:
                return name if self.app.main.check_action(name, ()) is True else None
        return None

    def _ignored(self, text: str, keys: int, how: str) -> None:
        shown = text if len(text) <= BURST_SHOWN else text[: BURST_SHOWN - 1] + "…"
        self.app.notify(
            f"ignored {keys} keys {how} at once ({shown!r}): this console takes single keys, "
            "pressed one at a time",
            severity="warning",
        )
