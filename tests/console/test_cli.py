from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from esper_engine.contracts import CommandAck, EpochSummary, RunFinished, RunStarted
from esper_engine.recording import read_recording
from overwatch.cli import main

SMALL_RUN = ["--n-envs", "2", "--episodes", "1", "--epochs", "2", "--batches-per-epoch", "2"]


def overwatch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "overwatch.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--n-envs", "0"], "positive integer"),
        (["run", "--task", "mnist"], "invalid choice"),
        (["run", "--max-grad-norm", "nan"], "finite"),
        (["run", "--amp", "fp8"], "invalid choice"),
        (["run", "--device", "cuda", "--headless"], "CUDA is not available"),
        (["run", "--task", "cifar10", "--data-dir", "/nonexistent", "--headless"], "cifar10"),
        (["replay", "/nonexistent.msgpack"], "no such recording"),
        (["replay", "x.msgpack", "--speed", "16"], "0.25..8"),
        (["export", "/nonexistent.msgpack"], "no such recording"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    # progress lines ("loading task ...") may come first; the error is one last line
    lines = err.splitlines()
    assert lines[-1].startswith("overwatch: error:"), err
    assert needle in lines[-1]
    assert "Traceback" not in err and not any("error" in line for line in lines[:-1])


def test_garbage_recording_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"this is not a recording at all")
    assert main(["export", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.msgpack" in err


def test_headless_run_records_and_exports(tmp_path):
    result = overwatch("run", "--headless", *SMALL_RUN, "--record", "run.msgpack", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "run.msgpack" in result.stderr
    events = list(read_recording(tmp_path / "run.msgpack"))
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    assert events[-1].status == "completed"
    assert len([e for e in events if isinstance(e, EpochSummary)]) == 4

    exported = overwatch("export", "run.msgpack", "--format", "jsonl", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [line["type"] for line in lines] == [type(e).__name__ for e in events]

    table = overwatch("export", "run.msgpack", "--format", "csv", "--output", "s.csv", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("run_id,env,episode,epoch")


def test_default_recording_path_is_printed(tmp_path):
    result = overwatch(
        "run",
        "--headless",
        *SMALL_RUN[:2],
        "--episodes",
        "1",
        "--epochs",
        "1",
        "--batches-per-epoch",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    recordings = list((tmp_path / "overwatch-runs").glob("*.msgpack"))
    assert len(recordings) == 1
    assert str(Path("overwatch-runs") / recordings[0].name) in result.stderr


def test_sigterm_stops_at_a_safe_point_and_closes_the_recording(tmp_path):
    import signal

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "overwatch.cli",
            "run",
            "--headless",
            "--n-envs",
            "1",
            "--epochs",
            "50",
            "--batches-per-epoch",
            "5",
            "--record",
            "long.msgpack",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait for the first epoch to be on disk (the recorder flushes every epoch), then signal.
    path = tmp_path / "long.msgpack"
    for _ in range(600):
        try:
            if any(isinstance(e, EpochSummary) for e in read_recording(path)):
                break
        except Exception:  # noqa: BLE001 - the file may not exist yet
            pass
        try:
            proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    events = list(read_recording(path))
    assert isinstance(events[-1], RunFinished) and events[-1].status == "stopped"
    acks = [e for e in events if isinstance(e, CommandAck)]
    assert acks and acks[-1].command == "Stop" and acks[-1].accepted
