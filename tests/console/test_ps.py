"""`overwatch ps`: every run under the runs directory, its state, progress and what it allows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esper_engine.contracts import Pause, RunFinished
from esper_engine.recording import Recorder, read_recording
from overwatch.cli import main
from overwatch.runs import RunState, list_runs
from tests.console.test_control import tiny_session, wait_for

REAL_RUN = Path(__file__).parent / "fixtures" / "real_run.msgpack"


def copy_recording(path: Path, *, finished: bool) -> None:
    events = list(read_recording(REAL_RUN))
    if not finished:
        events = [e for e in events if type(e) is not RunFinished]
    with Recorder(path) as recorder:
        for event in events:
            recorder.emit(event)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_ps_tells_running_completed_and_crashed_runs_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy_recording(tmp_path / "done.msgpack", finished=True)
    copy_recording(tmp_path / "killed.msgpack", finished=False)
    (tmp_path / "killed.pid").write_text(json.dumps({"pid": dead_pid(), "socket": "/nowhere"}))
    (tmp_path / "killed.ckpt").write_bytes(b"checkpoint")
    (tmp_path / "done.ckpt").write_bytes(b"checkpoint")  # completed: nothing to resume
    session = tiny_session(tmp_path, epochs=400)
    session.start()
    try:
        session.send(Pause())
        wait_for(lambda: session.thread_state == "paused", "the run to pause")
        runs = {run.path.name: run for run in list_runs(tmp_path)}
        assert set(runs) == {"done.msgpack", "killed.msgpack", "ctl.msgpack"}
        live, done, killed = runs["ctl.msgpack"], runs["done.msgpack"], runs["killed.msgpack"]
        assert (live.state, live.pid, live.attachable, live.resumable) == (
            RunState.RUNNING,
            os.getpid(),
            True,
            False,
        )
        assert (live.episodes, live.epochs, live.run_id) == (1, 400, "ctl")
        assert (done.state, done.attachable, done.resumable) == (RunState.COMPLETED, False, False)
        assert (done.episode, done.epoch) == (done.episodes, done.epochs)  # the last summary
        assert (killed.state, killed.pid, killed.resumable) == (RunState.CRASHED, None, True)
        assert done.size == (tmp_path / "done.msgpack").stat().st_size and done.started

        assert main(["ps", "--dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out.splitlines()
        header = [
            *("RUN", "STATE", "PROGRESS", "STARTED", "SIZE", "HOST", "ATTACH", "RESUME"),
            "RECORDING",
        ]
        assert out[0].split() == header
        line = next(line for line in out if line.startswith("ctl "))
        assert f"running (pid {os.getpid()})" in line
        assert line.split()[-3:] == ["yes", "no", str(tmp_path / "ctl.msgpack")]
        assert " cnn 3-6-12 · 1.1k params " in line  # the host it trains
        assert (live.host, done.host) == ("cnn 3-6-12 · 1.1k params", "")  # an older recording
        assert sum("crashed" in line and line.split()[-2] == "yes" for line in out) == 1
    finally:
        assert session.stop(timeout=30)
    assert next(r for r in list_runs(tmp_path) if r.run_id == "ctl").state == RunState.STOPPED


def test_ps_of_a_missing_directory_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ps", "--dir", str(tmp_path / "nope")]) == 2
    assert "no runs directory" in capsys.readouterr().err
    assert main(["ps", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no runs\n"
