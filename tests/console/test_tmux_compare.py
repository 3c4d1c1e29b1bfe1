"""`overwatch compare` and the end-of-run summary in a real terminal (tmux), at 80x24."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid

import pytest

from esper_engine.contracts import EpochSummary
from overwatch.run_summary import run_summary, summary_lines
from overwatch.state import ConsoleState, reduce_many
from tests.console.fixtures import FIXTURES, REAL_RUN, real_events
from tests.console.test_tmux_e2e import tmux, wait_until

pytestmark = [
    pytest.mark.tmux,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

A = FIXTURES / "compare_a.msgpack"
B = FIXTURES / "compare_b.msgpack"


class Pane:
    """``overwatch ARGS`` in a tmux pane of 80x24; the pane says DONE rc=N when it exits."""

    def __init__(self, *args: str, size: tuple[int, int] = (80, 24)) -> None:
        self.session = f"ow-{uuid.uuid4().hex[:8]}"
        argv = " ".join(args)
        command = (
            f"env -u COLORTERM -u COLUMNS -u LINES TERM=xterm-256color {sys.executable} "
            f"-m overwatch.cli {argv}; echo DONE rc=$?; sleep 60"
        )
        width, height = size
        new = ["tmux", "new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height)]
        wait_until(lambda: subprocess.run(new, capture_output=True).returncode == 0, "tmux", 10)
        tmux("set-option", "-t", self.session, "window-size", "manual")
        tmux("resize-window", "-t", self.session, "-x", str(width), "-y", str(height))
        tmux("respawn-pane", "-k", "-t", self.session, command)

    def screen(self) -> str:
        return tmux("capture-pane", "-p", "-J", "-t", self.session)

    def keys(self, *keys: str) -> None:
        tmux("send-keys", "-t", self.session, *keys)

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        wait_until(lambda: text in self.screen(), f"{text!r} on screen", timeout)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.session], capture_output=True)


def final_mean_accuracy(path) -> float:
    last = {e.env: e for e in real_events(path) if type(e) is EpochSummary}
    return 100 * sum(s.val_accuracy for s in last.values()) / len(last)


def test_compare_two_real_recordings_at_80x24_keyboard_only() -> None:
    pane = Pane("compare", str(A), str(B))
    try:
        pane.wait_for("Δacc pp")
        pane.wait_for("m Metric")  # the footer says the keys
        screen = pane.screen()
        a, b = final_mean_accuracy(A), final_mean_accuracy(B)
        rows = {line.split()[0]: line.split() for line in screen.splitlines() if line.strip()}
        assert rows["compare_a.msgpack"][2:4] == [f"{a:.1f}", "ref"]
        assert rows["compare_b.msgpack"][2:4] == [f"{b:.1f}", f"{b - a:+.1f}"]
        assert "val accuracy % · run mean" in screen
        assert "per-env views leave out env 3 of compare_a.msgpack" in screen
        assert "e Env" in screen
        assert all(len(line) <= 80 for line in screen.splitlines())
        pane.keys("m")
        pane.wait_for("val loss · run mean")
        pane.keys("e")
        pane.wait_for("val loss · env 1")
        pane.keys("q")
        pane.wait_for("DONE rc=0")
    finally:
        pane.close()


def test_a_replay_at_its_end_toasts_the_summary_and_prints_it_on_exit() -> None:
    pane = Pane("replay", str(REAL_RUN), "--speed", "max")
    try:
        pane.wait_for("u: run summary · best env")
        lines = summary_lines(run_summary(reduce_many(ConsoleState(), real_events())))
        pane.keys("u")
        pane.wait_for("Run summary")
        assert lines[4] in pane.screen()  # the table's first (best) row
        pane.keys("Escape")
        wait_until(lambda: "Run summary" not in pane.screen(), "the summary closed", 30)
        pane.keys("q")
        pane.wait_for("DONE rc=0")
        screen = pane.screen()
        for line in lines:
            assert line in screen, line
    finally:
        pane.close()
