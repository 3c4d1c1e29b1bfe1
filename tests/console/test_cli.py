from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from esper_engine.config import MAX_CLIP_THRESHOLD
from esper_engine.contracts import CommandAck, EpochSummary, RunFinished, RunStarted
from esper_engine.recording import read_recording
from overwatch.cli import build_parser, config_from_args, main

PROGRESS = re.compile(r"^env (?P<env>\d+)  episode \S+  epoch (?P<epoch>\S+)  acc ")
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
        pytest.param(
            ["run", "--device", "cuda", "--headless"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
        (["run", "--task", "cifar10", "--data-dir", "/nonexistent", "--headless"], "cifar10"),
        (["run", "--headless", "--record", "/proc/nope/x.msgpack"], "cannot record to"),
        (["replay", "/nonexistent.msgpack"], "no such recording"),
        (["replay", "x.msgpack", "--speed", "16"], "0.25..8"),
        (["replay", "x.msgpack", "--speed", "nan"], "finite"),
        (["replay", "x.msgpack", "--refresh-hz", "0"], "0.1..60"),
        (["replay", "x.msgpack", "--refresh-hz", "1e9"], "0.1..60"),
        # every numeric flag of run: one line, exit 2, never a traceback
        (["run", "--max-grad-norm", "1e40"], "0..1e+06 (0 disables), got 1e40"),
        (["run", "--max-grad-norm", "1250000"], "0..1e+06"),
        (["run", "--max-grad-norm", "-1"], "0..1e+06"),
        (["run", "--max-grad-norm", "inf"], "finite"),
        (["run", "--max-grad-norm", "x"], "expected a number"),
        (["run", "--seed", "-1"], "seed within 0..4294967295, got -1"),
        (["run", "--seed", str(2**64)], "seed within"),
        (["run", "--seed", "1.5"], "expected an integer"),
        (["run", "--n-envs", "-3"], "positive integer"),
        (["run", "--episodes", str(2**64)], "below 2**63"),
        (["run", "--epochs", "0"], "positive integer"),
        (["run", "--batches-per-epoch", "many"], "positive integer"),
        (["run", "--refresh-hz", "0"], "0.1..60"),
        (["run", "--refresh-hz", "-4"], "0.1..60"),
        (["run", "--refresh-hz", "61"], "0.1..60"),
        (["run", "--refresh-hz", "nan"], "finite"),
        # faults: the syntax at parse time, the env and epoch against the run's shape
        (["run", "--fault", "nan:1"], "must be KIND:ENV:EPOCH"),
        (["run", "--fault", "melt:1:1"], "unknown kind 'melt'; expected one of nan, diverge"),
        (["run", "--fault", "nan:0:1"], "ENV is counted from 1"),
        (["run", "--fault", "nan:one:1"], "ENV must be an integer"),
        (["run", "--n-envs", "2", "--fault", "nan:3:1"], "env 3 of a run with 2 envs"),
        (["run", "--epochs", "3", "--fault", "crash:1:4"], "epoch 4 of episodes with 3 epochs"),
        (["run", "--fault", "nan:1:1", "--fault", "diverge:9:1"], "'diverge:9:1': env 9"),
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


def test_faults_go_into_the_config_normalised_in_the_order_given():
    args = build_parser().parse_args(
        ["run", "--fault", " NaN:2:03 ", "--fault", "seed-nan:1:1", "--fault", "CRASH:4:12"]
    )
    assert config_from_args(args).faults == ("nan:2:3", "seed-nan:1:1", "crash:4:12")
    assert config_from_args(build_parser().parse_args(["run"])).faults == ()


def test_max_grad_norm_accepts_the_bound_and_zero_disables():
    args = build_parser().parse_args(["run", "--max-grad-norm", "1e6"])
    assert config_from_args(args).max_grad_norm == MAX_CLIP_THRESHOLD
    args = build_parser().parse_args(["run", "--max-grad-norm", "0"])
    assert config_from_args(args).max_grad_norm is None


def test_run_help_explains_fault(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "--fault KIND:ENV:EPOCH" in help_text
    assert "nan, diverge, seed-nan, crash" in help_text
    assert "ENV and EPOCH count from 1, as the console shows them" in help_text
    assert "fire in the first episode" in help_text
    assert "repeatable" in help_text


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
    summaries = [e for e in events if isinstance(e, EpochSummary)]
    assert len(summaries) == 4
    # stderr is a pipe here: one plain progress line per env and epoch, then the status alone.
    progress = [PROGRESS.match(line) for line in result.stderr.splitlines()]
    seen = sorted((int(m["env"]), m["epoch"]) for m in progress if m)
    assert seen == sorted((s.env + 1, f"{s.epoch + 1}/2") for s in summaries)
    assert "run completed" in result.stderr.splitlines()

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
    long_run = ["--n-envs", "1", "--epochs", "50", "--batches-per-epoch", "5"]
    long_run += ["--record", "long.msgpack"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "overwatch.cli", "run", "--headless", *long_run],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr: list[str] = []
    first_epoch = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:
            stderr.append(line)
            if PROGRESS.match(line):
                first_epoch.set()
        first_epoch.set()  # end of output: the asserts below say what went wrong

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert first_epoch.wait(timeout=120), "no progress line within 120 s"
        assert proc.poll() is None, "".join(stderr)  # still training: 50 epochs to go
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, "".join(stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    events = list(read_recording(tmp_path / "long.msgpack"))
    assert isinstance(events[-1], RunFinished) and events[-1].status == "stopped"
    assert sum(isinstance(e, EpochSummary) for e in events) < 50
    acks = [e for e in events if isinstance(e, CommandAck)]
    assert acks and acks[-1].command == "Stop" and acks[-1].accepted
    assert "run stopped" in "".join(stderr).splitlines()
