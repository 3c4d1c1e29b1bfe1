"""Ctrl-Z in a real terminal: the console suspends like any curses tool, and `fg` brings it back.

A live run in an interactive shell in tmux (job control needs one), driven by keys.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from esper_engine.contracts import EpochSummary, RunFinished
from tests.console.test_tmux_e2e import Recording, tmux, wait_until

pytestmark = [
    pytest.mark.tmux,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


def process_state(pid: int) -> str:
    """The kernel's one-letter state of a process: R, S, T (stopped)..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_ctrl_z_suspends_the_live_console_and_fg_resumes_it(tmp_path: Path) -> None:
    session = f"ow-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "live.msgpack"
    pid_file = tmp_path / "pid"
    script = tmp_path / "run.sh"  # becomes the console (exec): the shell's job is the console
    script.write_text(
        f"echo $$ > {pid_file}\n"
        f"cd {shlex.quote(str(tmp_path))}\n"
        f"export PYTHONPATH={shlex.quote(os.environ.get('PYTHONPATH', ''))}\n"
        f"export XDG_STATE_HOME={shlex.quote(str(tmp_path / 'state'))}\n"
        f"exec {shlex.quote(sys.executable)} -m overwatch.cli run --n-envs 2 --episodes 1 "
        f"--epochs 500 --batches-per-epoch 4 --record {shlex.quote(str(record))}\n"
    )
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", "bash --norc -i")
    try:
        screen = lambda: tmux("capture-pane", "-p", "-t", session)  # noqa: E731
        tmux("send-keys", "-t", session, f"bash {shlex.quote(str(script))}", "Enter")
        rec = Recording(record)
        wait_until(lambda: rec.has(lambda e: isinstance(e, EpochSummary)), "a first epoch")
        wait_until(lambda: "LIVE" in screen(), "the console to show LIVE")
        pid = int(pid_file.read_text())

        tmux("send-keys", "-t", session, "C-z")
        wait_until(lambda: "Stopped" in screen(), "the shell to report the job stopped")
        assert process_state(pid) == "T"  # the whole process: console and trainer
        assert "LIVE" not in screen()  # the terminal is the shell's again

        tmux("send-keys", "-t", session, "fg", "Enter")
        wait_until(lambda: "LIVE" in screen() and process_state(pid) != "T", "the console back")
        epochs = len([e for e in rec.refresh() if isinstance(e, EpochSummary)])
        wait_until(
            lambda: len([e for e in rec.refresh() if isinstance(e, EpochSummary)]) > epochs,
            "training to go on after fg",
        )
        tmux("send-keys", "-t", session, "q")  # a live run's q asks first
        wait_until(lambda: "type stop then enter" in screen(), "the quit confirmation")
        tmux("send-keys", "-t", session, "stop", "Enter")
        wait_until(lambda: rec.has(lambda e: isinstance(e, RunFinished)), "the run to stop")
        wait_until(lambda: "recorded to" in screen(), "the console to end")
        tmux("send-keys", "-t", session, "echo rc=$?", "Enter")
        wait_until(lambda: "rc=0" in screen(), "the console to exit 0")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
