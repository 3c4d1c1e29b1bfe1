"""Issue 25's operator commands through the real trainer: lr scale, governor sensitivity,
germinate / prune / fossilize under the policy's own gates, checkpoint now, notes."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from esper_engine.checkpoint import read_checkpoint
from esper_engine.commands import MAX_NOTE_CHARS, rejection
from esper_engine.config import MAX_LR_SCALE
from esper_engine.contracts import (
    AddNote,
    CheckpointNow,
    CommandAck,
    EpochSummary,
    FossilizeSeed,
    GerminateSeed,
    Initiator,
    OperatorNote,
    PruneSeed,
    SeedStage,
    SeedTransition,
    SetGovernorSensitivity,
    SetLrScale,
)
from esper_engine.tasks import load_task
from esper_engine.telemetry import ListSink
from esper_engine.trainer import VectorizedTrainer
from tests.engine.test_trainer import of, run, small_config


@pytest.fixture(scope="module")
def images():
    return load_task("synthetic-images", seed=0, scale="small")


def _at(epoch: int, env: int, *commands):
    """A hook that queues ``commands`` when env ``env``'s EpochSummary of ``epoch`` passes."""
    pending: queue.Queue = queue.Queue()

    def hook(event):
        if isinstance(event, EpochSummary) and (event.epoch, event.env) == (epoch, env):
            for command in commands:
                pending.put(command)

    return pending, hook


def _acks(events, command: str) -> list[CommandAck]:
    return [a for a in of(events, CommandAck) if a.command == command]


def test_lr_scale_of_one_env_shows_in_its_host_lr(images):
    pending, hook = _at(0, 1, SetLrScale(value=0.5, env=0), SetLrScale(value=0.0, env=1))
    _, events, finished = run(images, small_config(policy="static"), pending, hook)
    assert finished.status == "completed", finished.error
    ok, refused = _acks(events, "SetLrScale")
    assert ok.accepted and ok.env == 0 and ok.value == 0.5
    assert not refused.accepted and "positive" in refused.reason
    by = {(s.env, s.epoch): s for s in of(events, EpochSummary)}
    assert by[0, 0].host_lr == by[1, 0].host_lr and by[0, 0].lr_scale == 1.0  # before it
    for epoch in (1, 2):  # after it: env 1 follows the schedule alone, env 0 at half of it
        assert by[0, epoch].host_lr == pytest.approx(by[1, epoch].host_lr * 0.5)
        assert (by[0, epoch].lr_scale, by[1, epoch].lr_scale) == (0.5, 1.0)
    # the schedule moves the host lr: now recorded where everyone can see it
    assert by[1, 0].host_lr != by[1, 2].host_lr


def test_governor_sensitivity_is_applied_to_every_env(images):
    pending, hook = _at(0, 1, SetGovernorSensitivity(value=3.5))
    _, events, _ = run(images, small_config(policy="static"), pending, hook)
    assert _acks(events, "SetGovernorSensitivity")[0].accepted
    sensitivities = {(s.env, s.epoch): s.governor_sensitivity for s in of(events, EpochSummary)}
    assert sensitivities[0, 0] == 6.0 and sensitivities[0, 1] == sensitivities[1, 2] == 3.5


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (SetLrScale(value=MAX_LR_SCALE * 2), "at most 100"),
        (SetGovernorSensitivity(value=float("nan")), "finite"),
        (GerminateSeed(env=0, slot_id="", blueprint="conv_light"), "slot must be"),
        (PruneSeed(env=7, slot_id="block1"), "unknown env 8"),
        (AddNote(text="   "), "needs some text"),
        (AddNote(text="x" * (MAX_NOTE_CHARS + 1)), "at most 500"),
    ],
)
def test_malformed_commands_are_refused_before_the_trainer(command, reason):
    found = rejection(command, 2, paused=False)
    assert found is not None and reason in found


def test_operator_germinate_is_recorded_as_the_operators_and_refused_when_occupied(images):
    pending, hook = _at(
        0,
        1,
        GerminateSeed(env=1, slot_id="block1", blueprint="conv_light", command_id=1),
        GerminateSeed(env=1, slot_id="block1", blueprint="attention", command_id=2),
        GerminateSeed(env=0, slot_id="nowhere", blueprint="conv_light", command_id=3),
        GerminateSeed(env=0, slot_id="block1", blueprint="nothing", command_id=4),
    )
    _, events, finished = run(images, small_config(policy="static"), pending, hook)
    assert finished.status == "completed", finished.error
    acks = {a.command_id: a for a in _acks(events, "GerminateSeed")}
    assert acks[1].accepted and acks[1].env == 1
    assert not acks[2].accepted and "block1 is GERMINATED, not DORMANT" in acks[2].reason
    assert not acks[3].accepted and "unknown slot 'nowhere'" in acks[3].reason
    assert not acks[4].accepted and "unknown blueprint 'nothing'" in acks[4].reason
    germinated = [t for t in of(events, SeedTransition) if t.to_stage is SeedStage.GERMINATED]
    assert [(t.env, t.slot_id, t.blueprint, t.initiator) for t in germinated] == [
        (1, "block1", "conv_light", Initiator.OPERATOR)
    ]
    # the seed lives on: env 1's summaries carry it, env 0's never do
    last = {s.env: s for s in of(events, EpochSummary) if s.epoch == 2}
    assert {s.slot_id: s.stage for s in last[1].slots}["block1"] is SeedStage.TRAINING
    assert all(s.stage is SeedStage.DORMANT for s in last[0].slots)


def test_prune_under_the_minimum_age_is_refused_then_allowed(images):
    config = small_config(policy="static", epochs=5, n_envs=1)
    pending: queue.Queue = queue.Queue()

    def hook(event):
        if isinstance(event, EpochSummary) and event.epoch == 0:
            pending.put(GerminateSeed(env=0, slot_id="block1", blueprint="conv_light"))
        if isinstance(event, EpochSummary) and event.epoch in (1, 3):
            pending.put(PruneSeed(env=0, slot_id="block1", command_id=event.epoch))
            pending.put(FossilizeSeed(env=0, slot_id="block1", command_id=10 + event.epoch))

    _, events, finished = run(images, config, pending, hook)
    assert finished.status == "completed", finished.error
    prunes = {a.command_id: a for a in _acks(events, "PruneSeed")}
    assert not prunes[1].accepted and "minimum 3 to prune" in prunes[1].reason
    assert prunes[3].accepted
    fossils = _acks(events, "FossilizeSeed")
    assert [a.accepted for a in fossils] == [False, False]
    assert "fossilize needs HOLDING" in fossils[0].reason
    assert "nothing" in fossils[1].reason or "HOLDING" in fossils[1].reason  # pruned by then
    pruned = [t for t in of(events, SeedTransition) if t.to_stage is SeedStage.PRUNED]
    assert [(t.slot_id, t.initiator) for t in pruned] == [("block1", Initiator.OPERATOR)]


def test_the_policy_learns_nothing_from_an_operators_seed_command(images):
    """The epoch an operator's germinate changed ends the PPO segment as a truncation with no
    reward: neither credit nor blame for the policy's own action of that epoch."""
    pending: queue.Queue = queue.Queue()
    captured = {}

    def hook(event):
        if isinstance(event, EpochSummary) and (event.epoch, event.env) == (0, 1):
            pending.put(GerminateSeed(env=1, slot_id="block2", blueprint="norm"))
        if isinstance(event, EpochSummary) and (event.epoch, event.env) == (1, 1):
            captured["steps"] = list(hook.trainer.policy.buffer.transitions(1))
            captured["other"] = list(hook.trainer.policy.buffer.transitions(0))

    hook.trainer = None
    _, events, finished = run(images, small_config(policy="ppo"), pending, hook)
    assert finished.status == "completed", finished.error
    assert _acks(events, "GerminateSeed")[0].accepted
    # epoch 0's action (the step the operator changed), then epoch 1's, not yet paid
    cut, after = captured["steps"]
    assert cut.truncated and not cut.terminal and cut.reward == 0.0 and cut.penalty == 0.0
    assert not after.truncated
    assert not captured["other"][0].truncated  # the env nobody touched learns as usual


def test_checkpoint_now_writes_one_when_none_is_due(images, tmp_path: Path):
    path = tmp_path / "run.ckpt"
    pending, hook = _at(0, 1, CheckpointNow(command_id=5))
    sink = _HookSink(hook)
    trainer = VectorizedTrainer(
        small_config(policy="static", checkpoint_every=0),
        sink,
        commands=pending,
        run_id="t",
        task=images,
        checkpoint=path,
    )
    finished = trainer.run()
    assert finished.status == "completed", finished.error
    assert _acks(sink.events, "CheckpointNow")[0].accepted
    state = read_checkpoint(path)
    assert (state["episode"], state["epoch"]) == (0, 2)  # the boundary after the ask


def test_checkpoint_now_is_refused_without_a_recording(images):
    pending, hook = _at(0, 0, CheckpointNow())
    _, events, _ = run(images, small_config(policy="static"), pending, hook)
    ack = _acks(events, "CheckpointNow")[0]
    assert not ack.accepted and "no checkpoints" in ack.reason


def test_a_note_is_recorded_as_an_event_with_its_env_and_console(images):
    text = "[bold]lr looks[/] high — watch env 2"
    pending, hook = _at(
        1, 0, AddNote(text=text, env=1, console="attach-3", command_id=4), AddNote(text="run")
    )
    _, events, _ = run(images, small_config(policy="static"), pending, hook)
    notes = of(events, OperatorNote)
    assert [(n.text, n.env, n.console, n.command_id) for n in notes] == [
        (text, 1, "attach-3", 4),
        ("run", None, "", 0),
    ]
    assert all(n.epoch == 2 and n.wall_time > 0 for n in notes)  # applied in the next epoch
    assert [a.accepted for a in _acks(events, "AddNote")] == [True, True]


class _HookSink(ListSink):
    def __init__(self, hook) -> None:
        super().__init__()
        self.hook = hook

    def emit(self, event) -> None:
        super().emit(event)
        self.hook(event)


def test_the_operators_lr_factor_and_sensitivity_survive_a_checkpoint_and_an_episode(images):
    from esper_engine.env_runtime import EnvRuntime

    config = small_config(policy="static")
    env = EnvRuntime(0, config, images)
    env.set_operator_lr_scale(0.25)
    env.governor.sensitivity = 2.5
    base = env.state.host_optimizer.param_groups[0]["initial_lr"]
    assert env.state.host_optimizer.param_groups[0]["lr"] == pytest.approx(base * 0.25)
    restored = EnvRuntime(0, config, images)
    restored.load_state_dict(env.state_dict())
    assert restored.state.operator_lr_scale == 0.25 and restored.governor.sensitivity == 2.5
    restored.reset_episode()  # a new host keeps the operator's settings, like the threshold
    restored.state.set_lr_scale(1.0)
    assert restored.state.host_optimizer.param_groups[0]["lr"] == pytest.approx(base * 0.25)
    assert restored.governor.sensitivity == 2.5
