"""Exact resume: a run stopped or killed anywhere, then resumed, records the events an
uninterrupted run records, value for value (timing fields aside), for every policy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec
import pytest

from esper_engine.checkpoint import HOLD_ENV, checkpoint_path, plan_resume, read_checkpoint
from esper_engine.config import LifecycleConfig, TrainingConfig
from esper_engine.contracts import (
    EpochProgress,
    EpochSummary,
    Event,
    ForceRollback,
    ResourceSample,
    RunFinished,
    RunResumed,
    RunStatus,
    SetClipThreshold,
    Stop,
)
from esper_engine.recording import read_recording
from esper_engine.session import TrainingSession
from esper_engine.tasks import load_task

ROOT = Path(__file__).resolve().parents[2]
TIMING = ("wall_time", "samples_per_s", "cost_ratio", "epoch_s_estimate")
POLICIES = ("heuristic", "static", "ppo")
# Long enough for seeds to germinate, train and blend, and for PPO to update between episodes.
SMALL = TrainingConfig(
    n_envs=2,
    episodes=2,
    epochs=5,
    batches_per_epoch=3,
    batch_size=16,
    val_batches=2,
    batch_stats_every=1,
)


@pytest.fixture(scope="module")
def task():
    return load_task("synthetic-images", seed=0, scale="small")


def comparable(path: Path, *ignored: str) -> list[str]:
    """The recording's events as ``comparable_events`` gives them."""
    return comparable_events(read_recording(path).events, *ignored)


def comparable_events(events: Iterable[Event], *ignored: str) -> list[str]:
    """The events without RunResumed, EpochProgress and ResourceSample (how many of those there
    are depends on the wall clock) and without the fields that measure time (and the
    ``ignored`` ones), as JSON text: a NaN loss then equals the same NaN loss."""
    out = []
    for event in events:
        if isinstance(event, RunResumed | EpochProgress | ResourceSample):
            continue
        fields = msgspec.to_builtins(event)
        for name in (*TIMING, *ignored):
            fields.pop(name, None)
        out.append(msgspec.json.encode(fields).decode())
    return out


def _stop_after(
    session: TrainingSession, summaries: int | None, commands: dict | None = None
) -> TrainingSession:
    """The operator stops the run once it has recorded that many more epoch summaries, and
    sends ``commands[n]`` after the n-th (from the trainer's thread: at a fixed safe point)."""
    emit, seen = session.recorder.emit, [0]

    def emit_and_stop(event) -> None:
        emit(event)
        if isinstance(event, EpochSummary):
            seen[0] += 1
            if seen[0] in (commands or {}):
                session.send(commands[seen[0]])
            if seen[0] == summaries:
                session.send(Stop())

    session.recorder.emit = emit_and_stop
    return session


def _finish(session: TrainingSession) -> TrainingSession:
    session.start()
    assert session.wait(120)
    assert session.finished is not None
    return session


def _run(
    config: TrainingConfig,
    task,
    path: Path,
    stop_after: int | None = None,
    commands: dict | None = None,
) -> None:
    session = TrainingSession(config, task, run_id="run", record_path=path)
    _finish(_stop_after(session, stop_after, commands))


def _resumed(path: Path, task) -> TrainingSession:
    plan = plan_resume(path)
    return TrainingSession(
        plan.config, task, run_id=plan.run_id, record_path=plan.recording, resume=plan
    )


@pytest.mark.parametrize("policy", POLICIES)
def test_stopped_then_resumed_equals_uninterrupted(tmp_path: Path, task, policy: str) -> None:
    config = msgspec.structs.replace(SMALL, policy=policy)
    reference = tmp_path / "reference.msgpack"
    _run(config, task, reference)
    # Stopped mid-episode, at an episode's end (before the PPO update's checkpoint), and
    # resumed twice in a row: every cut continues exactly.
    for stops in ((3,), (10,), (4, 13)):
        path = tmp_path / f"cut-{'-'.join(map(str, stops))}.msgpack"
        _run(config, task, path, stop_after=stops[0])
        for later in stops[1:]:
            session = _finish(_stop_after(_resumed(path, task), later - len(_summaries(path))))
            assert session.finished.status == RunStatus.STOPPED
        assert _finish(_resumed(path, task)).finished.status == RunStatus.COMPLETED
        assert comparable(path) == comparable(reference), f"{policy} stopped at {stops}"


@pytest.mark.parametrize("policy", ("heuristic", "ppo"))
def test_rollbacks_commands_and_fossils_resume_exactly(tmp_path: Path, task, policy: str) -> None:
    """Governor rollbacks (NaN and divergence faults), an operator rollback and clip change,
    seeds fossilized, pruned and embargoed: all of it survives a checkpoint."""
    config = msgspec.structs.replace(
        SMALL,
        policy=policy,
        epochs=8,
        batch_stats_every=2,
        faults=("nan:1:3", "diverge:2:5"),
        lifecycle=LifecycleConfig(blend_epochs=1),
    )
    commands = {2: SetClipThreshold(value=0.5, env=1), 6: ForceRollback(env=0)}
    reference = tmp_path / "reference.msgpack"
    _run(config, task, reference, commands=commands)
    kinds = {event.split('"type":"')[1].split('"')[0] for event in comparable(reference)}
    assert {"GovernorRollback", "CommandAck", "Attribution"} <= kinds
    for stop in (9, 20):
        path = tmp_path / f"cut-{stop}.msgpack"
        _run(config, task, path, stop_after=stop, commands=commands)
        assert _finish(_resumed(path, task)).finished.status == RunStatus.COMPLETED
        assert comparable(path) == comparable(reference), f"{policy} stopped at {stop}"


def _summaries(path: Path) -> list[EpochSummary]:
    return [e for e in read_recording(path).events if isinstance(e, EpochSummary)]


def test_resumed_recording_keeps_its_history_and_says_where_it_resumed(
    tmp_path: Path, task
) -> None:
    path = tmp_path / "run.msgpack"
    _run(SMALL, task, path, stop_after=5)
    cut = read_checkpoint(checkpoint_path(path))["recording_bytes"]
    session = _resumed(path, task)
    history = session.history
    assert history and not isinstance(history[-1], RunFinished)  # the stop was cut off
    assert path.stat().st_size == cut
    assert session.poll(3) == history[:3]  # every view sees the history first
    _finish(session)
    events = read_recording(path).events
    assert events[: len(history)] == history
    resumed = events[len(history)]
    assert isinstance(resumed, RunResumed)
    assert (resumed.run_id, resumed.recording_bytes) == ("run", cut)
    assert (resumed.from_episode, resumed.from_epoch) == (0, 3)
    assert [type(e) for e in events].count(RunResumed) == 1
    assert isinstance(events[-1], RunFinished) and events[-1].status == RunStatus.COMPLETED


# --- kill -9 of the real CLI ------------------------------------------------------------------

CLI_FLAGS = [
    "--n-envs",
    "2",
    "--episodes",
    "2",
    "--epochs",
    "3",
    "--batches-per-epoch",
    "3",
    "--set",
    "batch_size=16",
    "--set",
    "val_batches=2",
]


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "overwatch.cli", "run", "--headless", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 60) -> None:
    """Poll (bounded) until ``path`` exists; fail with the process's stderr if it ended."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {path.name}: {process.stderr.read()}")
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("policy", "hold"),
    [
        ("heuristic", "train-batch:5"),  # mid-epoch: the second epoch's second batch
        ("static", "checkpoint-write:2"),  # the second checkpoint written, not yet renamed
        ("ppo", "policy-update:1"),  # inside the first PPO update
    ],
)
def test_kill_9_then_resume_equals_uninterrupted(tmp_path: Path, policy: str, hold: str) -> None:
    reference = tmp_path / "reference.msgpack"
    killed = tmp_path / "killed.msgpack"
    marker = tmp_path / "held"
    flags = [*CLI_FLAGS, "--policy", policy]
    uninterrupted = _cli([*flags, "--record", str(reference)])
    victim = _cli([*flags, "--record", str(killed)], {HOLD_ENV: f"{hold}:{marker}"})
    _wait_for(marker, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    if hold.startswith("checkpoint-write"):  # the half-written checkpoint is left behind
        assert list(tmp_path.glob(".killed.ckpt.*.tmp"))
    resumed = _cli(["--resume", str(killed)])
    assert resumed.wait(120) == 0, resumed.stderr.read()
    assert uninterrupted.wait(120) == 0, uninterrupted.stderr.read()
    # Two processes started apart get two run ids; the resumed one keeps the killed one's.
    assert comparable(killed, "run_id") == comparable(reference, "run_id")
    events = read_recording(killed).events
    assert len({e.run_id for e in events}) == 1
    assert [type(e) for e in events].count(RunResumed) == 1
    assert not list(tmp_path.glob(".*.tmp"))  # the resumed writer removed the killed one's
