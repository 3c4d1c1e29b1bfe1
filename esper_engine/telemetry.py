"""Telemetry transport: the trainer emits events into sinks and never waits for the console.

The trainer thread calls ``emit``; the console drains a bounded ``QueueSink`` on a timer. When the
console falls behind the queue drops the *newest* event (the one being emitted) and counts it, so
``emit`` never blocks. The recorder sits beside the queue in a ``FanOutSink`` and never drops.
"""

from __future__ import annotations

import queue
import threading
from typing import Protocol, runtime_checkable

from esper_engine.contracts import Event


@runtime_checkable
class TelemetrySink(Protocol):
    """Anything the trainer can hand events to."""

    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


class QueueSink:
    """Bounded hand-off from the trainer thread to the console; drops rather than blocks."""

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 1:
            raise ValueError(f"QueueSink maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._queue: queue.Queue[Event] = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self._dropped = 0
        self.closed = False

    @property
    def dropped(self) -> int:
        """Events dropped so far because the queue was full (the console shows this)."""
        with self._lock:
            return self._dropped

    def emit(self, event: Event) -> None:
        # Dropping the newest event is the only choice that needs no second queue operation
        # (dropping the oldest would race with the console's drain).
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            with self._lock:
                self._dropped += 1

    def drain(self, max_items: int | None = None) -> list[Event]:
        """Everything queued right now (at most ``max_items``), oldest first; never waits."""
        events: list[Event] = []
        while max_items is None or len(events) < max_items:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return events

    def close(self) -> None:
        """Mark the producer as finished; events already queued can still be drained."""
        self.closed = True


class FanOutSink:
    """Emits every event to each sink in turn; one failing sink never starves the others."""

    def __init__(self, *sinks: TelemetrySink) -> None:
        self.sinks = sinks

    def emit(self, event: Event) -> None:
        self._each("emit", event)

    def close(self) -> None:
        self._each("close")

    def _each(self, method: str, *args: Event) -> None:
        # Every sink is served before the first error is re-raised, so a broken console queue
        # can never cost the recording an event.
        first_error: BaseException | None = None
        for sink in self.sinks:
            try:
                getattr(sink, method)(*args)
            except Exception as exc:  # re-raised below once every sink is served
                first_error = first_error or exc
        if first_error is not None:
            raise first_error


class ListSink:
    """Keeps every event in memory: for tests and short in-process runs."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = False

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.closed = True
