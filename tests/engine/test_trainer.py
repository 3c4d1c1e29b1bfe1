from __future__ import annotations

import math
import queue
import threading

import msgspec
import pytest
import torch

from esper_engine.config import PPOConfig, TrainingConfig
from esper_engine.contracts import (
    Attribution,
    BatchStats,
    CommandAck,
    EpochSummary,
    ForceRollback,
    GovernorRollback,
    Initiator,
    Op,
    Pause,
    PolicyUpdate,
    Resume,
    RunFinished,
    RunStarted,
    RunStatus,
    SeedStage,
    SeedTransition,
    SetClipThreshold,
    Stop,
)
from esper_engine.tasks import load_task
from esper_engine.telemetry import ListSink
from esper_engine.trainer import VectorizedTrainer


@pytest.fixture(scope="module")
def images():
    return load_task("synthetic-images", seed=0, scale="small")


@pytest.fixture(scope="module")
def stories():
    return load_task("synthetic-stories", seed=0, scale="small")


def small_config(**overrides) -> TrainingConfig:
    base = dict(n_envs=2, episodes=1, epochs=3, batches_per_epoch=3, batch_size=16, val_batches=1)
    base.update(overrides)
    return TrainingConfig(**base)


class HookSink(ListSink):
    """Records events and lets a test act when a given event passes (synchronously)."""

    def __init__(self, hook=None) -> None:
        super().__init__()
        self.hook = hook

    def emit(self, event) -> None:
        super().emit(event)
        if self.hook is not None:
            self.hook(event)


def run(task, config, commands=None, hook=None):
    sink = HookSink(hook)
    trainer = VectorizedTrainer(config, sink, commands=commands, run_id="t", task=task)
    if hook is not None:
        hook.trainer = trainer
    finished = trainer.run()
    return trainer, sink.events, finished


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def test_run_reports_every_env_and_epoch(images):
    _, events, finished = run(images, small_config())
    assert finished.status == "completed", finished.error
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    summaries = of(events, EpochSummary)
    assert sorted((s.env, s.epoch) for s in summaries) == [(e, k) for e in (0, 1) for k in range(3)]
    for s in summaries:
        assert s.clip_threshold == 1.0
        assert s.grad_norm_post_clip <= s.clip_threshold + 1e-6
        assert s.grad_norm_post_clip <= s.grad_norm_pre_clip + 1e-6
        assert 0.0 <= s.clipped_fraction <= 1.0 and 0.0 <= s.val_accuracy <= 1.0
        assert s.perplexity is None


def test_same_seed_same_metrics(images):
    def metrics(events):
        return [
            (
                s.env,
                s.epoch,
                s.train_loss,
                s.val_loss,
                s.val_accuracy,
                s.grad_norm_pre_clip,
                s.last_action,
            )
            for s in of(events, EpochSummary)
        ]

    config = small_config(epochs=4)
    first, second = run(images, config)[1], run(images, config)[1]
    assert metrics(first) == metrics(second)
    third = run(images, small_config(epochs=4, seed=1))[1]
    assert metrics(first) != metrics(third)


def test_clip_threshold_command_changes_later_summaries_and_clipping(images):
    commands: queue.Queue = queue.Queue()

    def hook(event):
        if isinstance(event, EpochSummary) and event.epoch == 0 and event.env == 1:
            commands.put(SetClipThreshold(value=0.05, command_id=7))

    _, events, finished = run(images, small_config(), commands, hook)
    assert finished.status == "completed"
    ack = of(events, CommandAck)[0]
    assert (ack.command, ack.accepted, ack.value, ack.command_id) == (
        "SetClipThreshold",
        True,
        0.05,
        7,
    )
    later = [s for s in of(events, EpochSummary) if s.epoch >= 1]
    assert later and all(s.clip_threshold == 0.05 for s in later)
    assert all(s.grad_norm_post_clip <= 0.05 + 1e-6 for s in later)
    assert all(s.clipped_fraction > 0 for s in later)


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (SetClipThreshold(value=math.nan), "finite"),
        (SetClipThreshold(value=math.inf), "finite"),
        (SetClipThreshold(value=0.0), "positive"),
        (SetClipThreshold(value=-1.0), "positive"),
        (SetClipThreshold(value=1e40), "at most"),  # crashed the trainer: a float32 overflow
        (SetClipThreshold(value=1.25e6), "at most"),
        (SetClipThreshold(value=2.0, env=5), "unknown env"),
        (ForceRollback(env=9), "unknown env"),
        (Resume(), "not paused"),
    ],
)
def test_invalid_commands_are_rejected_with_a_reason(images, command, reason):
    commands: queue.Queue = queue.Queue()
    commands.put(command)
    _, events, finished = run(images, small_config(epochs=1), commands)
    acks = of(events, CommandAck)
    assert len(acks) == 1 and not acks[0].accepted and reason in acks[0].reason
    assert all(s.clip_threshold == 1.0 for s in of(events, EpochSummary))
    assert not of(events, GovernorRollback)


def test_operator_rollback_is_recorded_without_penalty(images):
    commands: queue.Queue = queue.Queue()
    captured = {}

    def hook(event):
        if isinstance(event, EpochSummary) and event.epoch == 1 and event.env == 1:
            commands.put(ForceRollback(env=1))
        if isinstance(event, EpochSummary) and event.epoch == 2 and event.env == 1:
            captured["steps"] = hook.trainer.policy.buffer.transitions(1)

    _, events, finished = run(images, small_config(policy="ppo"), commands, hook)
    assert finished.status == "completed", finished.error
    rollbacks = of(events, GovernorRollback)
    assert len(rollbacks) == 1
    rb = rollbacks[0]
    assert (rb.env, rb.initiator, rb.penalty, rb.epoch) == (1, "operator", 0.0, 2)
    ack = of(events, CommandAck)[0]
    assert ack.accepted and ack.command == "ForceRollback" and ack.env == 1
    assert events.index(rb) < events.index(ack)
    assert [s.rollbacks for s in of(events, EpochSummary) if s.env == 1] == [0, 0, 1]
    # the policy sees a truncation (bootstrapped), never a penalty or a terminal step
    last = captured["steps"][-1]
    assert last.truncated and not last.terminal and last.penalty == 0.0
    assert last.reward == 0.0


def test_the_episode_end_is_terminal_for_ppo(images):
    # The host is discarded when the episode ends: no bootstrap from a state that has no future
    # (SPEC 8). Only an operator's rollback is a truncation.
    captured = {}

    def hook(event):
        if isinstance(event, RunStarted):
            policy = hook.trainer.policy
            update = policy.update

            def capture():
                captured["steps"] = [list(policy.buffer.transitions(e)) for e in (0, 1)]
                return update()

            policy.update = capture

    _, _, finished = run(images, small_config(policy="ppo", epochs=4), hook=hook)
    assert finished.status == "completed", finished.error
    for steps in captured["steps"]:
        assert len(steps) == 3  # actions after epochs 0..2; none after the last epoch
        assert steps[-1].episode_end and steps[-1].terminal and not steps[-1].truncated
        assert steps[-1].bootstrap_value == 0.0
        assert not any(step.terminal or step.truncated for step in steps[:-1])


def test_batch_stats_are_read_after_the_env_stream_is_joined(images, monkeypatch):
    # On CUDA an env's figures are made on its own stream; reading them on the default stream
    # before joining it races. CPU has no streams, so the order of the calls is what is checked.
    import esper_engine.trainer as trainer_module

    calls: list[str] = []
    join = trainer_module.join_env_streams
    stack = trainer_module.batch_stats_tensor

    def joined(envs):
        calls.append("join")
        return join(envs)

    class Recorded(torch.Tensor):
        def tolist(self):
            calls.append("read")
            return super().tolist()

    monkeypatch.setattr(trainer_module, "join_env_streams", joined)
    monkeypatch.setattr(
        trainer_module, "batch_stats_tensor", lambda result: stack(result).as_subclass(Recorded)
    )
    _, events, finished = run(images, small_config(n_envs=1, epochs=1, batch_stats_every=1))
    assert finished.status == "completed", finished.error
    reads = [i for i, call in enumerate(calls) if call == "read"]
    assert len(reads) == len(of(events, BatchStats)) == 3
    assert all(calls[i - 1] == "join" for i in reads)


def test_governor_rollback_on_nan_penalises_the_policy(images):
    captured = {}

    def hook(event):
        trainer = hook.trainer
        if isinstance(event, EpochSummary) and event.epoch == 1 and event.env == 0:
            with torch.no_grad():
                for p in trainer.envs[0].model.host_parameters():
                    p.fill_(math.nan)
        if isinstance(event, EpochSummary) and event.epoch == 2 and event.env == 0:
            captured["steps"] = trainer.policy.buffer.transitions(0)

    _, events, finished = run(images, small_config(policy="ppo", epochs=4), hook=hook)
    assert finished.status == "completed", finished.error
    rollbacks = of(events, GovernorRollback)
    assert len(rollbacks) == 1
    rb = rollbacks[0]
    assert (rb.env, rb.initiator, rb.reason, rb.penalty) == (0, "governor", "nan", 10.0)
    steps = captured["steps"]
    assert len(steps) == 2  # actions after epochs 0 and 1 are kept
    assert steps[-1].penalty == -10.0 and steps[-1].terminal
    assert steps[0].penalty == 0.0 and not steps[0].terminal
    summary = [s for s in of(events, EpochSummary) if s.env == 0 and s.epoch == 2][0]
    assert summary.reward == -10.0 and summary.rollbacks == 1
    # the env trains on after the rollback with finite losses again
    after = [s for s in of(events, EpochSummary) if s.env == 0 and s.epoch == 3]
    assert math.isfinite(after[0].val_loss)
    untouched = [s for s in of(events, EpochSummary) if s.env == 1]
    assert all(s.rollbacks == 0 and math.isfinite(s.val_loss) for s in untouched)


def test_attributions_are_efficient(images):
    _, events, finished = run(images, small_config(n_envs=1, epochs=10, batches_per_epoch=4))
    assert finished.status == "completed", finished.error
    attributions = of(events, Attribution)
    assert attributions, "the heuristic should have blended a seed within 10 epochs"
    summaries = {(s.env, s.epoch): s for s in of(events, EpochSummary)}
    for a in attributions:
        assert a.exact
        total = sum(a.shapley.values())
        assert total == pytest.approx(a.full_value - a.empty_value, abs=1e-9)
        # SPEC 9: fractions, like the accuracies; v(all) is the model as it is, so it is the
        # epoch's validation accuracy on the same fixed batches (points were 100x this).
        assert 0.0 <= a.empty_value <= 1.0 and all(-1.0 <= v <= 1.0 for v in a.shapley.values())
        assert a.full_value == pytest.approx(summaries[a.env, a.epoch].val_accuracy, abs=1e-9)


def test_language_model_reports_perplexity(stories):
    _, events, finished = run(stories, small_config(epochs=2, batch_size=8))
    assert finished.status == "completed", finished.error
    for s in of(events, EpochSummary):
        assert s.perplexity == pytest.approx(math.exp(s.val_loss), rel=1e-9)


def test_ppo_emits_policy_updates_with_finite_losses(images):
    # One demonstration round, then the clone (update 1) and one PPO update (update 2).
    config = small_config(policy="ppo", episodes=2, ppo=PPOConfig(demo_rounds=1))
    _, events, finished = run(images, config)
    assert finished.status == "completed", finished.error
    updates = of(events, PolicyUpdate)
    assert [u.update for u in updates] == [1, 2]
    for u in updates:
        fields = msgspec.structs.asdict(u)
        for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm"):
            assert math.isfinite(fields[key]), key


def test_stop_and_pause_are_acknowledged_and_stop_ends_the_run(images):
    commands: queue.Queue = queue.Queue()
    for command in (Pause(command_id=1), Resume(command_id=2), Stop(command_id=3)):
        commands.put(command)
    _, events, finished = run(images, small_config(), commands)
    assert finished.status == "stopped"
    acks = of(events, CommandAck)
    assert [(a.command, a.accepted) for a in acks] == [
        ("Pause", True),
        ("Resume", True),
        ("Stop", True),
    ]
    assert isinstance(events[-1], RunFinished) and not of(events, EpochSummary)


def test_a_paused_trainer_trains_nothing_but_still_obeys_commands(images):
    commands: queue.Queue = queue.Queue()
    paused, rolled_back = threading.Event(), threading.Event()

    def hook(event):
        if isinstance(event, CommandAck) and event.command == "Pause":
            paused.set()
        if isinstance(event, CommandAck) and event.command == "ForceRollback":
            rolled_back.set()

    sink = HookSink(hook)
    trainer = VectorizedTrainer(
        small_config(epochs=2, batch_stats_every=1), sink, commands=commands, task=images
    )
    thread = threading.Thread(target=trainer.run)
    thread.start()
    commands.put(Pause())
    assert paused.wait(timeout=120)
    commands.put(ForceRollback(env=0))
    assert rolled_back.wait(timeout=120)
    commands.put(Resume())
    commands.put(Stop())
    thread.join(timeout=120)
    assert not thread.is_alive()
    events = sink.events
    acks = of(events, CommandAck)
    between = events[events.index(acks[0]) : events.index(acks[1]) + 1]
    # while paused: the rollback is applied and acknowledged, no batch is trained
    assert not of(between, BatchStats) and len(of(between, GovernorRollback)) == 1
    assert [a.command for a in acks] == [
        "Pause",
        "ForceRollback",
        "Resume",
        "Stop",
    ]
    assert of(events, RunFinished)[0].status == "stopped"


def test_crash_is_reported_not_raised(images, monkeypatch):
    import esper_engine.trainer as trainer_module

    def broken(*args, **kwargs):
        raise RuntimeError("validation exploded")

    monkeypatch.setattr(trainer_module, "process_val_batch", broken)
    _, events, finished = run(images, small_config())
    assert finished.status == "crashed"
    assert finished.error.startswith("RuntimeError: validation exploded")
    assert events[-1] == finished


def test_learning_rates_follow_the_schedule_epoch_by_epoch(images):
    seen: dict[int, float] = {}

    def hook(event):
        if isinstance(event, EpochSummary) and event.env == 0:
            seen[event.epoch] = hook.trainer.envs[0].state.host_optimizer.param_groups[0]["lr"]

    for schedule in ("cosine", "constant"):
        config = small_config(epochs=4, lr_schedule=schedule, policy="static")
        _, _, finished = run(images, config, hook=hook)
        assert finished.status == "completed", finished.error
        expected = [images.host_lr * config.lr_scale(epoch) for epoch in range(4)]
        assert [seen[epoch] for epoch in range(4)] == pytest.approx(expected)
    assert len(set(expected)) == 1  # constant: the base lr throughout


def test_the_first_events_carry_params_and_throughput(images):
    config = small_config(batch_stats_every=1)
    trainer, events, finished = run(images, config)
    assert finished.status is RunStatus.COMPLETED, finished.error
    started = events[0]
    host = trainer.envs[0].model.host_param_count()  # one episode: the host as built
    assert (started.host_params, started.seed_params) == (host, 0) and host > 0
    stats = of(events, BatchStats)
    assert len(stats) == config.n_envs * config.epochs * config.batches_per_epoch
    assert all(math.isfinite(b.samples_per_s) and b.samples_per_s > 0 for b in stats)


def test_events_carry_the_contracts_vocabulary(images):
    _, events, finished = run(images, small_config(n_envs=1, epochs=6, batches_per_epoch=2))
    assert type(finished.status) is RunStatus
    transitions = of(events, SeedTransition)
    assert transitions, "the heuristic germinates from the first epoch"
    for t in transitions:
        assert type(t.from_stage) is SeedStage and type(t.to_stage) is SeedStage
        assert type(t.initiator) is Initiator
    summaries = of(events, EpochSummary)
    assert all(type(slot.stage) is SeedStage for s in summaries for slot in s.slots)
    assert [s.last_op for s in summaries] == [Op(s.last_action.split()[0]) for s in summaries]
    assert summaries[0].last_op is Op.GERMINATE


class StopOnFirst(ListSink):
    """Queues a Stop (and sets the stop flag, as ``TrainingSession.send`` does) when the first
    event of ``kind`` passes: the trainer is then in the middle of a loop over envs."""

    def __init__(self, kind: type, commands: queue.Queue, stop: threading.Event) -> None:
        super().__init__()
        self.kind, self.commands, self.stop = kind, commands, stop

    def emit(self, event) -> None:
        super().emit(event)
        if isinstance(event, self.kind) and not self.stop.is_set():
            self.commands.put(Stop(command_id=1))
            self.stop.set()


STOP_RUN = dict(n_envs=4, episodes=1, epochs=2, batches_per_epoch=3, batch_size=16,
                val_batches=1, batch_stats_every=1)  # fmt: skip


def test_a_stop_ends_the_run_at_the_next_env_not_the_next_batch(images) -> None:
    """issue 21: with many envs one batch lasts long; a Stop (a signal) is taken between two
    envs. Queued as env 1's first batch is reported, the other 3 envs never train it."""
    commands: queue.Queue = queue.Queue()
    stop = threading.Event()
    sink = StopOnFirst(BatchStats, commands, stop)
    cfg = TrainingConfig(**STOP_RUN)
    finished = VectorizedTrainer(cfg, sink, commands, run_id="stop", task=images, stop=stop).run()
    assert finished.status == RunStatus.STOPPED
    assert [(e.env, e.batch) for e in sink.events if isinstance(e, BatchStats)] == [(0, 0)]
    acks = [e for e in sink.events if isinstance(e, CommandAck)]
    assert [(a.command, a.accepted) for a in acks] == [("Stop", True)]
    assert isinstance(sink.events[-1], RunFinished)


def test_a_stop_during_set_up_ends_it_at_the_next_env(images, monkeypatch) -> None:
    """issue 21: SIGTERM while 100k envs were built waited for the first batch. Queued once
    env 2 of 4 is built, the set-up ends there: no RunStarted, RunFinished(stopped)."""
    import esper_engine.trainer as trainer_module

    commands: queue.Queue = queue.Queue()
    stop = threading.Event()
    built: list[int] = []
    build = trainer_module.EnvRuntime

    def build_and_stop_after_two(index, *args):
        built.append(index)
        if len(built) == 2:
            commands.put(Stop(command_id=1))
            stop.set()
        return build(index, *args)

    monkeypatch.setattr(trainer_module, "EnvRuntime", build_and_stop_after_two)
    sink = ListSink()
    cfg = TrainingConfig(**STOP_RUN)
    finished = VectorizedTrainer(cfg, sink, commands, run_id="stop", task=images, stop=stop).run()
    assert finished.status == RunStatus.STOPPED and built == [0, 1]
    assert [type(e) for e in sink.events] == [RunFinished]


def test_the_trainer_runs_the_policy_and_the_envs_it_is_given(images):
    """The public seam (bench/growth.py's): a policy built outside, an env factory."""
    from esper_engine.blueprints import blueprint_names
    from esper_engine.env_runtime import EnvRuntime
    from esper_engine.policy.driver import PolicyDriver

    config = small_config(policy="heuristic", epochs=4)
    built: list[int] = []

    def envs(index, cfg, task):
        built.append(index)
        return EnvRuntime(index, cfg, task)

    slot_ids = EnvRuntime(0, config, images).model.slot_ids
    static = PolicyDriver(
        "static",
        n_envs=config.n_envs,
        slot_ids=slot_ids,
        blueprints=blueprint_names(images.host_kind),
        host_kind=images.host_kind,
        heuristic=config.heuristic,
        ppo=config.ppo,
    )
    sink = ListSink()
    trainer = VectorizedTrainer(config, sink, task=images, policy=static, env_factory=envs)
    finished = trainer.run()
    assert finished.status == "completed", finished.error
    assert built == [0, 1] and trainer.driver is static and trainer.policy is static
    # the heuristic of the config grows from the first epoch; the given static policy never does
    assert {s.last_action for s in of(sink.events, EpochSummary)} == {"WAIT"}
    assert not of(sink.events, SeedTransition)
    _, events, _ = run(images, config)
    assert any(s.last_action != "WAIT" for s in of(events, EpochSummary))
