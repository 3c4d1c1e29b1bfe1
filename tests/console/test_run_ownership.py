"""A run owns its files: real second runs and resumes on a live run's recording are refused with
the holder's pid, the first run completes whole, and kill -9 of the holder frees the path."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esper_engine.checkpoint import HOLD_ENV
from esper_engine.contracts import (
    EpochSummary,
    Pause,
    Resume,
    RunFinished,
    RunResumed,
    RunStarted,
    Stop,
)
from esper_engine.control import ControlClient, pid_path, read_pid_file
from esper_engine.recording import read_recording
from esper_engine.run_files import RunLock, RunLockedError, UnsafeFileError, lock_path

ROOT = Path(__file__).resolve().parents[2]
FLAGS = [
    "--n-envs",
    "2",
    "--episodes",
    "1",
    "--epochs",
    "3",
    "--batches-per-epoch",
    "3",
    "--set",
    "batch_size=16",
    "--set",
    "val_batches=1",
]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The runs' environment: a short socket directory and a registry of their own."""
    sockets = Path(f"/tmp/ow-own-{os.getpid()}-{time.monotonic_ns()}")
    yield {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "OVERWATCH_SOCKET_DIR": str(sockets),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    for path in sockets.glob("*") if sockets.exists() else ():
        path.unlink()
    if sockets.exists():
        sockets.rmdir()


def overwatch(args: list[str], env: dict[str, str], **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "overwatch.cli", *args],
        cwd=ROOT,
        env={**env, **extra},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def wait_until(condition, what: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}: {process.stderr.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # another process's progress: the deadline is the limit


def refused(process: subprocess.Popen[str], holder: int) -> str:
    code, err = finish(process)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert f"pid {holder}" in err, err
    return err


def test_a_second_run_and_a_resume_on_a_live_recording_are_refused(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / "shared.msgpack"
    first = overwatch(["run", "--headless", *FLAGS, "--record", str(path)], env)
    wait_until(lambda: (read_pid_file(path) or {}).get("socket"), "the control socket", first)
    client = ControlClient(str(read_pid_file(path)["socket"]), "test")
    client.send(Pause())  # the first run waits while the others try its path
    before = path.read_bytes()
    second = overwatch(["run", "--headless", *FLAGS, "--record", str(path)], env)
    resume = overwatch(["run", "--headless", "--resume", str(path)], env)
    refused(second, first.pid)
    assert "in use by a live run" in refused(resume, first.pid)
    assert path.read_bytes()[: len(before)] == before  # nothing of it was cut or rewritten
    assert read_pid_file(path)["pid"] == first.pid  # its pid file is still its own
    client.send(Resume())
    code, err = finish(first)
    assert code == 0, err
    events = read_recording(path).events
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    assert events[-1].status == "completed"
    assert sum(type(e) is RunStarted for e in events) == 1
    summaries = [(e.env, e.epoch) for e in events if type(e) is EpochSummary]
    assert sorted(summaries) == [(env, epoch) for env in range(2) for epoch in range(3)]
    assert not lock_path(path).exists() and not pid_path(path).exists()


def test_an_existing_recording_is_kept_unless_overwrite(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / "done.msgpack"
    code, err = finish(overwatch(["run", "--headless", *FLAGS, "--record", str(path)], env))
    assert code == 0, err
    kept = path.read_bytes()
    again = overwatch(["run", "--headless", *FLAGS, "--record", str(path)], env)
    code, err = finish(again)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "already holds a recording" in err and "--overwrite" in err
    assert path.read_bytes() == kept
    code, err = finish(
        overwatch(["run", "--headless", *FLAGS, "--record", str(path), "--overwrite"], env)
    )
    assert code == 0, err
    first_id = read_recording_ids(kept, tmp_path)
    assert read_recording(path).events[0].run_id != first_id  # a new run, whole
    assert read_recording(path).events[-1].status == "completed"


def read_recording_ids(data: bytes, tmp_path: Path) -> str:
    copy = tmp_path / "copy.msgpack"
    copy.write_bytes(data)
    return read_recording(copy).events[0].run_id


def test_kill_9_frees_the_path_and_two_resumes_at_once_are_one(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / "victim.msgpack"
    held = tmp_path / "held"
    victim = overwatch(
        ["run", "--headless", *FLAGS, "--record", str(path)],
        env,
        **{HOLD_ENV: f"train-batch:5:{held}"},  # mid second epoch: one checkpoint written
    )
    wait_until(held.exists, "the run to reach its fifth batch", victim)
    refused(overwatch(["run", "--headless", "--resume", str(path)], env), victim.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    assert lock_path(path).exists()  # left behind by kill -9, and held by nobody
    # Two resumes at once: one holds the path (blocked at its first batch), one is refused.
    marks = [tmp_path / "a", tmp_path / "b"]
    resumes = [
        overwatch(
            ["run", "--headless", "--resume", str(path)], env, **{HOLD_ENV: f"train-batch:1:{m}"}
        )
        for m in marks
    ]
    deadline = time.monotonic() + 120
    while not any(m.exists() for m in marks):
        assert time.monotonic() < deadline, [p.poll() for p in resumes]
        time.sleep(0.02)
    winner = resumes[0] if marks[0].exists() else resumes[1]
    loser = resumes[1] if winner is resumes[0] else resumes[0]
    refused(loser, winner.pid)
    winner.send_signal(signal.SIGKILL)
    winner.wait(30)
    code, err = finish(overwatch(["run", "--headless", "--resume", str(path)], env))
    assert code == 0, err
    events = read_recording(path).events
    assert events[-1].status == "completed"
    assert any(isinstance(e, RunResumed) for e in events)
    summaries = [(e.env, e.epoch) for e in events if type(e) is EpochSummary]
    assert sorted(summaries) == [(env, epoch) for env in range(2) for epoch in range(3)]


# --- the lock and the files, in this process -------------------------------------------------


def test_the_lock_names_its_holder_and_is_free_once_released(tmp_path: Path) -> None:
    record = tmp_path / "r.msgpack"
    lock = RunLock.acquire(record)
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock.acquire(record)
    lock.release()
    assert not lock_path(record).exists()
    RunLock.acquire(record).release()


def test_a_refusal_in_the_holders_first_instant_names_the_holder_not_a_killed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new holder writes its pid just after its flock: a refusal in between must wait for it,
    never name the killed run whose pid the file still holds (a race seen under load)."""
    record = tmp_path / "r.msgpack"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(record).write_text(f"{dead.pid}\n")  # what a kill -9 leaves behind
    holder = os.open(lock_path(record), os.O_RDWR)  # the new holder, before its pwrite
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    waits: list[float] = []

    def holder_writes_its_pid(seconds: float) -> None:  # the holder's pwrite, while we wait
        waits.append(seconds)
        os.pwrite(holder, f"{os.getpid()}\n".encode(), 0)

    monkeypatch.setattr(time, "sleep", holder_writes_its_pid)
    try:
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock.acquire(record)
        assert waits  # the dead pid was not taken at its word
    finally:
        os.close(holder)


def test_a_planted_lock_link_or_foreign_lock_is_refused(tmp_path: Path) -> None:
    record = tmp_path / "r.msgpack"
    target = tmp_path / "victim"
    target.write_text("keep")
    lock_path(record).symlink_to(target)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        RunLock.acquire(record)
    assert target.read_text() == "keep"
    lock_path(record).unlink()
    lock_path(record).write_text("")
    os.chown(lock_path(record), 65534, 65534)
    with pytest.raises(UnsafeFileError, match="owned by uid 65534"):
        RunLock.acquire(record)


@pytest.mark.distributed
def test_torchrun_rank_0_holds_the_recording(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "sharded.msgpack"
    args = [*FLAGS, "--epochs", "200", "--record", str(path)]  # the later --epochs wins
    sharded = overwatch(["run", "--nprocs", "2", "--headless", *args], env)
    wait_until(lambda: (read_pid_file(path) or {}).get("socket"), "rank 0's socket", sharded)
    rank_0 = read_pid_file(path)["pid"]
    assert rank_0 != sharded.pid  # the launcher's child's child: torchrun's rank 0
    refused(overwatch(["run", "--headless", *args], env), rank_0)
    refused(overwatch(["run", "--nprocs", "2", "--headless", *args], env), rank_0)
    ControlClient(str(read_pid_file(path)["socket"]), "test").send(Stop())
    code, err = finish(sharded)
    assert code == 0, err
    assert read_recording(path).events[-1].status == "stopped"
    assert not lock_path(path).exists()


def test_resume_of_a_missing_recording_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from overwatch.cli import main

    missing = tmp_path / "no" / "such.msgpack"
    assert main(["run", "--headless", "--resume", str(missing)]) == 2
    assert "no such recording" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_overwrite_keeps_the_old_recording_until_the_new_run_is_set_up(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from esper_engine.checkpoint import checkpoint_path
    from overwatch.cli import main

    path = tmp_path / "kept.msgpack"
    code, err = finish(overwatch(["run", "--headless", *FLAGS, "--record", str(path)], env))
    assert code == 0, err
    kept, ckpt = path.read_bytes(), checkpoint_path(path).read_bytes()
    # --overwrite with a device this machine lacks: refused in set-up, nothing of the old run lost
    args = ["run", "--headless", *FLAGS, "--record", str(path), "--overwrite"]
    assert main([*args, "--device", "cuda:99"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert path.read_bytes() == kept and checkpoint_path(path).read_bytes() == ckpt
    assert not lock_path(path).exists()


@pytest.mark.distributed
def test_a_sharded_overwrite_refused_in_set_up_fails_and_keeps_the_old_recording(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / "kept.msgpack"
    code, err = finish(overwatch(["run", "--headless", *FLAGS, "--record", str(path)], env))
    assert code == 0, err
    kept = path.read_bytes()
    args = [*FLAGS, "--record", str(path), "--overwrite", "--device", "cuda:99"]
    code, err = finish(overwatch(["run", "--nprocs", "2", "--headless", *args], env))
    assert code != 0, err  # not the old run's "completed"
    assert path.read_bytes() == kept


@pytest.mark.parametrize("suffix", [".lock", ".pid", ".ckpt"])
def test_a_recording_named_like_its_own_lock_pid_or_checkpoint_is_refused(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from overwatch.cli import main

    path = tmp_path / f"run{suffix}"  # its pid file or checkpoint would replace it
    assert main(["run", "--headless", *FLAGS, "--record", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and suffix in err, err
    assert list(tmp_path.iterdir()) == []
