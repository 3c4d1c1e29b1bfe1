"""The console's tests read wall-clock times off the screen (the event log's): in UTC, so that
snapshots and expectations do not depend on the machine's time zone."""

from __future__ import annotations

import itertools
import os
import time

import pytest

import overwatch.keys

os.environ["TZ"] = "UTC"
time.tzset()


@pytest.fixture(autouse=True)
def keys_pressed_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pilot posts its keys in the same instant; the console would take them for typing
    (``overwatch.keys``). Here each reading of the key clock is a second after the last: keys
    pressed one at a time, as an operator presses single commands. The typing tests give the
    app a clock of their own."""
    seconds = itertools.count(1000.0)
    monkeypatch.setattr(overwatch.keys, "default_clock", lambda: float(next(seconds)))
