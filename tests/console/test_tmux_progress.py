"""Life inside an epoch and across a resume, in a real terminal: a slow first epoch shows its
progress and never reads STALE; a run resumed after minutes down says so and leaves them out."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from esper_engine.contracts import EpochProgress, EpochSummary, RunResumed, RunStarted
from esper_engine.recording import read_recording
from overwatch.state import STALE_AFTER_S
from tests.console.test_tmux_e2e import Recording, tmux, wait_until

pytestmark = [
    pytest.mark.tmux,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

# One env, many batches: a first epoch far longer than the 10 s after which silence is STALE
# (about 36 batches/s on a loaded 2-core machine, about 100 on a free one: 6000 is a minute).
SLOW_EPOCH = "--n-envs 1 --episodes 1 --epochs 2 --batches-per-epoch 6000"
WATCH_S = STALE_AFTER_S + 5.0  # watched inside the first epoch, longer than STALE's silence
DOWN_S = 20.0  # how long the resumed run stays dead


def command(tmp_path: Path, args: str) -> str:
    """The console in the pane, with its own state directory and one intra-op thread."""
    state = tempfile.mkdtemp(prefix="ow-state-")
    return (
        f"cd {tmp_path} && exec env XDG_STATE_HOME={state} OMP_NUM_THREADS=1 "
        f"{sys.executable} -m overwatch.cli {args}"
    )


def kill_session(session: str) -> None:
    pane = subprocess.run(
        ["tmux", "display-message", "-p", "-t", session, "#{pane_pid}"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    if pane.isdigit():
        subprocess.run(["kill", "-9", pane], capture_output=True)  # never leave a run behind


def test_a_slow_first_epoch_shows_its_progress_and_never_reads_stale(tmp_path: Path) -> None:
    session = f"ow-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "slow.msgpack"
    tmux(
        "new-session", "-d", "-s", session, "-x", "120", "-y", "40",
        command(tmp_path, f"run {SLOW_EPOCH} --record {record}"),
    )  # fmt: skip
    rec = Recording(record)
    screen = lambda: tmux("capture-pane", "-p", "-t", session)  # noqa: E731
    labels: list[str] = []
    try:
        wait_until(lambda: rec.has(lambda e: isinstance(e, EpochProgress)), "a progress event")
        watched_from = time.monotonic()
        while time.monotonic() - watched_from < WATCH_S:
            shown = screen()
            assert "STALE" not in shown, shown
            labels += re.findall(r"first epoch \S+ (\d+)/6000", shown)
            assert not rec.has(lambda e: isinstance(e, EpochSummary)), (
                "the first epoch ended before STALE's silence was over: make it slower"
            )
            time.sleep(0.2)  # polling another process's screen; the watch length is the limit
    finally:
        kill_session(session)
    done = [int(label) for label in labels]
    assert len(set(done)) >= 3, labels  # the bar moved, screen after screen
    assert done == sorted(done)
    events = rec.refresh()
    started = next(e for e in events if isinstance(e, RunStarted))
    progress = [e for e in events if isinstance(e, EpochProgress)]
    assert progress[-1].wall_time - started.wall_time > STALE_AFTER_S
    # At most a few per second, and never a silence STALE would read as stuck.
    gaps = [b.wall_time - a.wall_time for a, b in zip(progress, progress[1:], strict=False)]
    assert min(gaps) >= 0.45 and max(gaps) < STALE_AFTER_S


def elapsed_seconds(screen: str) -> int | None:
    """The header's ``elapsed 1m07s`` (or ``42s``) in seconds; at 80 columns the header drops the
    word: ``│ 1m07s ETA 12s``."""
    match = re.search(r"(?:elapsed |│ )(?:(\d+)m)?(\d+)s(?= · ETA| ETA)", screen)
    if match is None:
        return None
    return int(match.group(1) or 0) * 60 + int(match.group(2))


def test_a_resumed_run_says_so_and_leaves_its_dead_time_out(tmp_path: Path) -> None:
    record = tmp_path / "resume.msgpack"
    args = "--n-envs 1 --episodes 1 --epochs 40 --batches-per-epoch 60"
    env = dict(os.environ, OMP_NUM_THREADS="1", XDG_STATE_HOME=tempfile.mkdtemp())
    with open(tmp_path / "headless.log", "w") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "overwatch.cli", "run", "--headless", *args.split(),
             "--record", str(record)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    rec = Recording(record)
    session = f"ow-{uuid.uuid4().hex[:8]}"
    try:
        wait_until(
            lambda: (
                sum(isinstance(e, EpochSummary) for e in rec.refresh()) >= 2
                and record.with_suffix(".ckpt").exists()
            ),
            "two epochs and a checkpoint",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        killed = time.time()
        time.sleep(DOWN_S)  # the dead time itself is what this test measures
        tmux(
            "new-session", "-d", "-s", session, "-x", "120", "-y", "40",
            command(tmp_path, f"run --resume {record}"),
        )  # fmt: skip
        screen = lambda: tmux("capture-pane", "-p", "-t", session)  # noqa: E731
        wait_until(lambda: "run resumed at" in screen(), "the resume in the log")
        wait_until(lambda: elapsed_seconds(screen()) is not None, "the header's elapsed")
        shown = screen()
        now = time.time()
    finally:
        kill_session(session)
        if first.poll() is None:
            first.kill()
    events = read_recording(record).events  # read afresh: the resume cut the file back
    started = next(e for e in events if isinstance(e, RunStarted))
    resumed = next(e for e in events if isinstance(e, RunResumed))
    down = re.search(r"run resumed at episode 1 epoch (\d+) after (?:(\d+)m)?(\d+)s down", shown)
    assert down is not None, shown
    assert int(down.group(1)) == resumed.from_epoch + 1  # counted from 1, as on screen
    down_s = int(down.group(2) or 0) * 60 + int(down.group(3))
    assert down_s >= DOWN_S - 1  # at least the time it was dead
    assert resumed.wall_time - killed >= DOWN_S
    elapsed = elapsed_seconds(shown)
    wall = now - started.wall_time
    assert elapsed is not None and elapsed <= wall - DOWN_S + 1, (elapsed, wall, shown)
    assert elapsed >= wall - down_s - 5  # and only that is left out
