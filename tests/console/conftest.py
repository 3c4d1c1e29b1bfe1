"""The console's tests read wall-clock times off the screen (the event log's): in UTC, so that
snapshots and expectations do not depend on the machine's time zone.

The terminal tests share one private tmux server that lives for the whole test process. With the
default server, each test's last ``kill-session`` made the server exit, and the next test's
``new-session`` could reach its socket while it was going: "server exited unexpectedly" (a CI
failure). The private socket also keeps the tests off an operator's own tmux."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

import overwatch.keys

os.environ["TZ"] = "UTC"
time.tzset()

# Before any test runs tmux: every tmux command of this process and its children uses this
# directory's socket (and none from a tmux the suite itself runs in).
os.environ["TMUX_TMPDIR"] = tempfile.mkdtemp(prefix="ow-tmux-")
os.environ.pop("TMUX", None)


@pytest.fixture(scope="session", autouse=True)
def one_tmux_server_for_the_whole_run() -> Iterator[None]:
    """Start the private server once and keep it up when its last session ends."""
    if shutil.which("tmux") is None:
        yield
        return
    subprocess.run(
        ["tmux", "start-server", ";", "set-option", "-s", "exit-empty", "off"],
        capture_output=True,
        check=True,
    )
    yield
    subprocess.run(["tmux", "kill-server"], capture_output=True)
    shutil.rmtree(os.environ["TMUX_TMPDIR"], ignore_errors=True)


@pytest.fixture(autouse=True)
def keys_pressed_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pilot posts its keys in the same instant; the console would take them for typing
    (``overwatch.keys``). Here each reading of the key clock is a second after the last: keys
    pressed one at a time, as an operator presses single commands. The typing tests give the
    app a clock of their own."""
    seconds = itertools.count(1000.0)
    monkeypatch.setattr(overwatch.keys, "default_clock", lambda: float(next(seconds)))
