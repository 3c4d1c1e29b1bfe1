"""Which envs the main screen lists: htop's F4 filter, for envs instead of processes.

An operator types a few words into the filter prompt (``\\`` or F4): ``panic`` keeps the envs the
governor has acted on this episode (a panic or a rollback), ``live`` the envs with a seed on
probation (germinated to holding), ``acc<50`` the envs whose latest val accuracy is below 50 %
(percent, as the screen shows it). Words combine: every one must hold. Pure: no Textual, so the
reducer's tests and the screen share it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from esper_engine.contracts import LIVE_SEED_STAGES
from overwatch.state import EnvView

FILTER_HELP = "panic (governor acted), live (a live seed), acc<50 (val accuracy below 50 %)"
_BELOW = re.compile(r"^(?:acc(?:uracy)?)?<(?P<value>[0-9.]+)%?$")


@dataclass(frozen=True)
class EnvFilter:
    """The conditions an env must meet to be listed; the empty filter lists every env."""

    panicking: bool = False
    live_seeds: bool = False
    accuracy_below: float | None = None  # a fraction: 0.5 for "acc<50"

    @property
    def active(self) -> bool:
        return self.panicking or self.live_seeds or self.accuracy_below is not None

    def matches(self, view: EnvView) -> bool:
        """Whether ``view`` passes every condition. An env with no epoch yet has no accuracy to
        compare; a NaN accuracy (a diverged epoch) counts as below any value: it is trouble."""
        if self.panicking:
            governor = view.governor
            if not (governor.total_panics or governor.rollbacks or governor.consecutive_panics):
                return False
        if self.live_seeds and not any(
            slot.state.stage in LIVE_SEED_STAGES for slot in view.slots.values()
        ):
            return False
        if self.accuracy_below is not None:
            if view.summary is None:
                return False
            accuracy = view.summary.val_accuracy
            if not math.isnan(accuracy) and accuracy >= self.accuracy_below:
                return False
        return True

    def describe(self) -> str:
        """The filter in the words it was typed in, for the header: ``panic live acc<50%``."""
        words = []
        if self.panicking:
            words.append("panic")
        if self.live_seeds:
            words.append("live")
        if self.accuracy_below is not None:
            words.append(f"acc<{self.accuracy_below * 100:g}%")
        return " ".join(words)


def parse_filter(text: str) -> EnvFilter:
    """The filter typed as ``text`` (words in any order, any case), or ValueError naming the word
    that is not understood. Empty text: no filter."""
    panicking = live = False
    below: float | None = None
    for word in text.lower().replace(",", " ").split():
        if word in ("panic", "panics", "panicking"):
            panicking = True
        elif word in ("live", "seeds", "live-seeds"):
            live = True
        elif (match := _BELOW.match(word)) is not None:
            try:
                percent = float(match["value"])
            except ValueError:
                raise ValueError(f"{word!r}: the accuracy is a percent, e.g. acc<50") from None
            if not 0 < percent <= 100:
                raise ValueError(f"{word!r}: the accuracy is a percent within 0..100")
            below = percent / 100
        else:
            raise ValueError(f"{word!r} is not a filter; use {FILTER_HELP}")
    return EnvFilter(panicking, live, below)
