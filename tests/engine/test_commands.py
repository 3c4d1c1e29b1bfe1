"""Command validation: what the trainer refuses, and the ack every command gets."""

from __future__ import annotations

import math
import queue
import threading
from pathlib import Path

import msgspec
import pytest

from esper_engine.commands import acknowledge, rejection
from esper_engine.config import MAX_CLIP_THRESHOLD
from esper_engine.contracts import (
    CommandAck,
    ForceRollback,
    Pause,
    Resume,
    RunStarted,
    SetClipThreshold,
    Stop,
)
from esper_engine.recording import Recorder, read_recording
from tests.engine.test_contracts import EVENT_SAMPLES

N_ENVS = 4


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1e40, "at most 1e+06"),  # used to crash the trainer with a float overflow
        (MAX_CLIP_THRESHOLD * 1.25, "at most"),  # one `]` above the bound
        (10**400, "at most"),  # an int beyond float's range
        (math.inf, "finite"),
        (-math.inf, "finite"),
        (math.nan, "finite"),
        (0.0, "positive"),
        (-1.0, "positive"),
        ("0.5", "must be a number"),  # in-process commands are not type-checked
        (None, "must be a number"),
        (True, "must be a number"),
    ],
)
def test_unusable_clip_thresholds_are_rejected(value, reason) -> None:
    found = rejection(SetClipThreshold(value=value), N_ENVS, paused=False)
    assert found is not None and reason in found


@pytest.mark.parametrize("value", [MAX_CLIP_THRESHOLD, 1e-6, 0.5, 3])
def test_usable_clip_thresholds_are_accepted(value) -> None:
    assert rejection(SetClipThreshold(value=value), N_ENVS, paused=False) is None
    assert rejection(SetClipThreshold(value=value, env=N_ENVS - 1), N_ENVS, paused=False) is None


@pytest.mark.parametrize("env", [-1, N_ENVS, 10**30, "1", 1.0, True])
def test_unknown_envs_are_rejected(env) -> None:
    for command in (ForceRollback(env=env), SetClipThreshold(value=0.5, env=env)):
        found = rejection(command, N_ENVS, paused=False)
        assert found is not None and found.startswith("unknown env")


def test_an_unknown_env_is_named_as_people_count_envs() -> None:
    # env index N_ENVS is the (N_ENVS + 1)th env; the console and exports count from 1
    found = rejection(ForceRollback(env=N_ENVS), N_ENVS, paused=False)
    assert found == f"unknown env {N_ENVS + 1}; envs are 1..{N_ENVS}"


def test_pause_and_resume_follow_the_trainer_state() -> None:
    assert rejection(Pause(), N_ENVS, paused=False) is None
    assert rejection(Pause(), N_ENVS, paused=True) == "already paused"
    assert rejection(Resume(), N_ENVS, paused=True) is None
    assert rejection(Resume(), N_ENVS, paused=False) == "not paused"
    assert rejection(Stop(), N_ENVS, paused=True) is None
    assert rejection(ForceRollback(env=0), N_ENVS, paused=False) is None


def test_something_that_is_not_a_command_is_rejected() -> None:
    assert rejection(object(), N_ENVS, paused=False) == "unknown command object"  # type: ignore[arg-type]


def test_an_ack_names_the_command_its_value_and_env() -> None:
    command = SetClipThreshold(value=0.25, env=2, command_id=7)
    ack = acknowledge(command, accepted=True, n_envs=N_ENVS, run_id="r", episode=1, epoch=3)
    assert ack == CommandAck(
        command="SetClipThreshold",
        accepted=True,
        value=0.25,
        command_id=7,
        env=2,
        run_id="r",
        episode=1,
        epoch=3,
        wall_time=ack.wall_time,
    )


@pytest.mark.parametrize(
    "command",
    [
        SetClipThreshold(value=1e40, command_id=1),
        SetClipThreshold(value=math.nan, command_id=1),
        SetClipThreshold(value=10**400, env=10**30, command_id=1),
        SetClipThreshold(value="big", env="all", command_id=1),
        ForceRollback(env=-(2**70), command_id=1),
        ForceRollback(env=N_ENVS, command_id=1),  # one past the last env: a typo, not a forgery
        ForceRollback(env=-1, command_id=1),
    ],
)
def test_a_rejected_ack_always_records_and_decodes(tmp_path: Path, command) -> None:
    reason = rejection(command, N_ENVS, paused=False)
    assert reason is not None
    ack = acknowledge(command, accepted=False, n_envs=N_ENVS, reason=reason)
    # Read back as replay reads it: the reader refuses an env outside the run's declared range.
    started = msgspec.structs.replace(
        EVENT_SAMPLES[RunStarted], env=None, episode=0, epoch=0, n_envs=N_ENVS, episodes=1
    )
    ack = msgspec.structs.replace(ack, run_id=started.run_id)
    recorder = Recorder(tmp_path / "run.ovwrec")
    recorder.emit(started)
    recorder.emit(ack)
    recorder.close()
    decoded = read_recording(tmp_path / "run.ovwrec").events[-1]
    assert isinstance(decoded, CommandAck) and not decoded.accepted
    assert decoded.reason == reason and decoded.command_id == 1
    assert decoded.value is None or isinstance(decoded.value, float)
    assert decoded.env is None  # the reason names the env asked for; the field holds only real ones


class _Target:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def rollback_by_operator(self, env: int) -> None:
        self.calls.append(("rollback", env))

    def set_clip_threshold(self, env: int | None, value: float) -> None:
        self.calls.append(("clip", env, value))

    def refusal(self, command) -> str | None:
        return None


def _desk(*commands, acknowledges: bool = True):
    from esper_engine.commands import CommandDesk

    pending: queue.Queue = queue.Queue()
    for command in commands:
        pending.put(command)
    acks: list = []
    target = _Target()
    desk = CommandDesk(
        pending, 2, target, acks.append, stop=threading.Event(), acknowledges=acknowledges
    )
    return desk, target, acks


def test_the_desk_applies_queued_commands_in_order_and_answers_each():
    from esper_engine.contracts import ForceRollback, Pause, Resume, SetClipThreshold

    desk, target, acks = _desk(
        Pause(), Pause(), Resume(), ForceRollback(env=1), SetClipThreshold(value=2.0, env=5)
    )
    desk.safe_point()
    assert [(a.command, a.accepted, a.reason) for a in acks] == [
        ("Pause", True, ""),
        ("Pause", False, "already paused"),
        ("Resume", True, ""),
        ("ForceRollback", True, ""),
        ("SetClipThreshold", False, "unknown env 6; envs are 1..2"),
    ]
    assert target.calls == [("rollback", 1)] and not desk.paused


def test_a_leaders_desk_validates_then_every_rank_applies_what_it_was_sent():
    from esper_engine.commands import StopRequested
    from esper_engine.contracts import Pause, SetClipThreshold, Stop

    leader, _, acks = _desk(Pause(), Pause(), SetClipThreshold(value=0.5), Stop())
    accepted = leader.accepted()
    assert [type(c).__name__ for c in accepted] == ["Pause", "SetClipThreshold", "Stop"]
    assert [(a.command, a.accepted) for a in acks] == [("Pause", False)]  # answered at once
    assert not leader.paused  # nothing applied yet: the ranks apply it together
    worker, target, worker_acks = _desk(acknowledges=False)
    with pytest.raises(StopRequested):
        for command in accepted:
            worker.apply(command)
    assert worker.paused and target.calls == [("clip", None, 0.5)] and worker_acks == []
