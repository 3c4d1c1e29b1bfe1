"""Console states compared by value: what ``==`` would say, but with NaN equal to NaN (a real
run's losses are NaN at times, and two decodings of one recording are different objects)."""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import msgspec

from esper_engine.contracts import Event
from overwatch.state import ConsoleState, reduce_many


def canonical(value: object) -> object:
    """``value`` as plain data: dataclass fields that take part in ``==`` (revisions do not),
    events as their fields, NaN as the string "nan"."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else value
    if isinstance(value, msgspec.Struct):
        return (type(value).__name__, canonical(msgspec.structs.asdict(value)))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return (
            type(value).__name__,
            {f.name: canonical(getattr(value, f.name)) for f in fields if f.compare},
        )
    if isinstance(value, (list, tuple, deque)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    return value


def replayed(events: list[Event]) -> object:
    """The canonical state of ``events`` reduced into a fresh state: a replay from the start."""
    return canonical(reduce_many(ConsoleState(), events))


def polled_state(polled: object, state: ConsoleState | None = None) -> ConsoleState:
    """The state the app holds after a poll, as its tick builds it (``state``: the one it held
    before; none: the empty state it starts with)."""
    if polled.reset:  # type: ignore[attr-defined]
        state = polled.state or ConsoleState()  # type: ignore[attr-defined]
    elif state is None:
        state = ConsoleState()
    return reduce_many(state, polled.events)  # type: ignore[attr-defined]
