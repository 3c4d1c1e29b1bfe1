"""A deterministic, plausible telemetry stream for console tests (no torch, no training).

Four envs run ``episodes`` x ``epochs`` in lockstep. Every episode tells the same story:
env 0 grows a seed all the way to FOSSILIZED, env 1 grows one and prunes it, env 2 diverges twice
and the governor rolls it back, env 3 just trains. Episode 0 also has an operator-forced rollback
on env 3 and an accepted clip change; episode 1 a pause/resume and a rejected clip value. A
PolicyUpdate follows every episode and a RunFinished ends the run.

Episodes and epochs count from 0, as the trainer numbers them.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
from collections.abc import Callable, Coroutine
from typing import Any

from esper_engine.contracts import (
    Attribution,
    BatchStats,
    CommandAck,
    EpochSummary,
    Event,
    GovernorPanic,
    GovernorRollback,
    PolicyUpdate,
    RunFinished,
    RunStarted,
    SeedTransition,
    SlotState,
)
from overwatch.sources import Polled

RUN_ID = "20250101-120000-ab12"
T0 = 1_700_000_000.0
SLOT_IDS = ["block1", "block2", "block3"]
BLUEPRINTS = ["conv_light", "conv_heavy", "attention", "depthwise", "norm"]
N_ENVS = 4
BATCHES_PER_EPOCH = 40
BATCH_STATS_EVERY = 10
CRASH_ERROR = "RuntimeError: CUDA out of memory while allocating 2.00 GiB (env 2, epoch 3)"

# env -> {epoch: (slot, blueprint, from_stage, to_stage, initiator, action)}: the seed stories.
_STORIES: dict[int, dict[int, tuple[str, str, str, str, str, str]]] = {
    0: {
        1: (
            "block2",
            "conv_light",
            "DORMANT",
            "GERMINATED",
            "policy",
            "GERMINATE block2 conv_light",
        ),
        2: ("block2", "conv_light", "GERMINATED", "TRAINING", "gate", "WAIT"),
        3: ("block2", "conv_light", "TRAINING", "BLENDING", "policy", "ADVANCE block2"),
        4: ("block2", "conv_light", "BLENDING", "HOLDING", "gate", "WAIT"),
        5: ("block2", "conv_light", "HOLDING", "FOSSILIZED", "policy", "FOSSILIZE block2"),
    },
    1: {
        1: ("block1", "attention", "DORMANT", "GERMINATED", "policy", "GERMINATE block1 attention"),
        2: ("block1", "attention", "GERMINATED", "TRAINING", "gate", "WAIT"),
        3: ("block1", "attention", "TRAINING", "BLENDING", "policy", "ADVANCE block1"),
        4: ("block1", "attention", "BLENDING", "PRUNED", "policy", "PRUNE block1"),
        5: ("block1", "attention", "PRUNED", "EMBARGOED", "gate", "WAIT"),
    },
    2: {
        2: ("block3", "depthwise", "DORMANT", "GERMINATED", "policy", "GERMINATE block3 depthwise"),
        3: ("block3", "depthwise", "GERMINATED", "TRAINING", "gate", "WAIT"),
    },
}
_DIVERGING = {3: 14.2, 4: 17.9}  # env 2: epoch -> val loss (two panics, then a rollback)
_ALPHA = {"GERMINATED": 0.0, "TRAINING": 0.0, "BLENDING": 0.5, "HOLDING": 1.0, "FOSSILIZED": 1.0}


class _Clock:
    """Recorded wall time: advances a fixed step per event so replay timing is deterministic."""

    def __init__(self) -> None:
        self.t = T0

    def tick(self, dt: float) -> float:
        self.t += dt
        return round(self.t, 3)


def fixture_events(
    *, episodes: int = 2, epochs: int = 6, crash: bool = False, seed: int = 0
) -> list[Event]:
    """The whole run as a list of events, identical on every call with the same arguments."""
    rng = random.Random(seed)
    clock = _Clock()
    events: list[Event] = [_run_started(episodes, epochs, clock)]
    threshold = 1.0
    for episode in range(episodes):
        slots = [{sid: _dormant(sid) for sid in SLOT_IDS} for _ in range(N_ENVS)]
        counters = [[0, 0, 0] for _ in range(N_ENVS)]  # consecutive, total panics, rollbacks
        for epoch in range(epochs):
            common = {"run_id": RUN_ID, "episode": episode, "epoch": epoch}
            if crash and episode == 0 and epoch == 3:
                events.append(
                    RunFinished(
                        **common, wall_time=clock.tick(0.1), status="crashed", error=CRASH_ERROR
                    )
                )
                return events
            events += _operator_events(episode, epoch, common, clock)
            if episode == 0 and epoch == 1:
                threshold = 1.25
            events += _batches(common, threshold, rng, clock)
            for env in range(N_ENVS):
                events += _env_epoch(env, common, slots[env], counters[env], threshold, rng, clock)
        events.append(_policy_update(episode, epochs, rng, clock))
    events.append(
        RunFinished(
            run_id=RUN_ID,
            episode=episodes - 1,
            epoch=epochs - 1,
            wall_time=clock.tick(0.1),
            status="completed",
        )
    )
    return events


def _run_started(episodes: int, epochs: int, clock: _Clock) -> RunStarted:
    return RunStarted(
        run_id=RUN_ID,
        wall_time=clock.tick(0.0),
        task="synthetic-images",
        task_kind="classification",
        n_envs=N_ENVS,
        slot_ids=SLOT_IDS,
        policy="heuristic",
        episodes=episodes,
        epochs=epochs,
        batches_per_epoch=BATCHES_PER_EPOCH,
        random_guess_loss=math.log(10),
        blueprints=BLUEPRINTS,
        device="cpu",
        config={"max_grad_norm": 1.0, "n_envs": N_ENVS, "seed": 0},
    )


def _dormant(slot_id: str) -> SlotState:
    return SlotState(slot_id=slot_id, stage="DORMANT")


def _operator_events(episode: int, epoch: int, common: dict, clock: _Clock) -> list[Event]:
    """Acks for what an operator did at this point of the story (commands arrive before batches)."""
    acks: list[tuple[str, bool, str, float | None, int]] = []
    if episode == 0 and epoch == 1:
        acks.append(("SetClipThreshold", True, "", 1.25, 1))
    if episode == 1 and epoch == 1:
        acks += [("Pause", True, "", None, 3), ("Resume", True, "", None, 4)]
    if episode == 1 and epoch == 2:
        acks.append(("SetClipThreshold", False, "threshold must be finite and > 0", -1.0, 5))
    return [
        CommandAck(
            **common,
            wall_time=clock.tick(0.05),
            command=command,
            accepted=accepted,
            reason=reason,
            value=value,
            command_id=command_id,
        )
        for command, accepted, reason, value, command_id in acks
    ]


def _batches(common: dict, threshold: float, rng: random.Random, clock: _Clock) -> list[Event]:
    events: list[Event] = []
    for batch in range(BATCH_STATS_EVERY, BATCHES_PER_EPOCH + 1, BATCH_STATS_EVERY):
        for env in range(N_ENVS):
            spike = env == 2 and common["epoch"] in _DIVERGING
            pre = rng.uniform(0.4, 1.6) * (6.0 if spike else 1.0)
            events.append(
                BatchStats(
                    **common,
                    env=env,
                    wall_time=clock.tick(0.04),
                    batch=batch,
                    loss=round(2.3 - 0.1 * common["epoch"] + rng.uniform(-0.1, 0.1), 4),
                    grad_norm_pre_clip=round(pre, 4),
                    grad_norm_post_clip=round(min(pre, threshold), 4),
                    clip_threshold=threshold,
                    clipped=pre > threshold,
                )
            )
    return events


def _env_epoch(
    env: int,
    common: dict,
    slots: dict[str, SlotState],
    counters: list[int],
    threshold: float,
    rng: random.Random,
    clock: _Clock,
) -> list[Event]:
    """One env's end of epoch: attribution, governor, summary, then the policy's action."""
    epoch = common["epoch"]
    events: list[Event] = []
    live = [s for s in slots.values() if s.stage in ("BLENDING", "HOLDING")]
    val_acc = round(
        min(0.95, 0.3 + 0.07 * epoch + (0.04 if live else 0.0) + rng.uniform(-0.02, 0.02)), 4
    )
    val_loss = round(2.2 * (1.0 - val_acc) + 0.3, 4)
    reason = None
    if env == 2 and epoch in _DIVERGING:
        val_acc, val_loss, reason = 0.1, _DIVERGING[epoch], "divergence"
        events += _governor(common, env, epoch, val_loss, slots, counters, clock)
    if env == 3 and common["episode"] == 0 and epoch == 3:
        events += _operator_rollback(common, counters, clock)
    if live:
        shapley = {s.slot_id: round(0.031 if env == 0 else -0.012, 4) for s in live}
        events.append(
            Attribution(
                **common,
                env=env,
                wall_time=clock.tick(0.02),
                shapley=shapley,
                std=None,
                full_value=val_acc,
                empty_value=round(val_acc - sum(shapley.values()), 4),
                exact=True,
                coalitions=2 ** len(live),
                cost_ratio=1.5,
            )
        )
    story = _STORIES.get(env, {}).get(epoch)
    action = story[5] if story else "WAIT"
    events.append(
        EpochSummary(
            **common,
            env=env,
            wall_time=clock.tick(0.05),
            train_loss=round(val_loss * 0.9, 4),
            train_accuracy=round(min(val_acc + 0.03, 1.0), 4),
            val_loss=val_loss,
            val_accuracy=val_acc,
            perplexity=None,
            grad_norm_pre_clip=round(rng.uniform(0.6, 1.4), 4),
            grad_norm_post_clip=round(min(rng.uniform(0.6, 1.4), threshold), 4),
            clipped_fraction=round(rng.uniform(0.0, 0.4), 3),
            clip_threshold=threshold,
            slots=list(slots.values()),
            consecutive_panics=counters[0],
            total_panics=counters[1],
            rollbacks=counters[2],
            last_panic_reason=reason,
            last_action=action,
            reward=round(rng.uniform(-0.05, 0.08), 4),
            samples_per_s=round(2400 + 50 * env + rng.uniform(-20, 20), 1),
            host_params=2_938,
            seed_params=1_184 if live else 0,
        )
    )
    if story:
        slot_id, blueprint, from_stage, to_stage, initiator, _ = story
        events.append(
            SeedTransition(
                **common,
                env=env,
                wall_time=clock.tick(0.01),
                slot_id=slot_id,
                blueprint=blueprint,
                from_stage=from_stage,
                to_stage=to_stage,
                alpha=_ALPHA.get(to_stage, 0.0),
                epochs_in_stage=1,
                initiator=initiator,
            )
        )
        slots[slot_id] = SlotState(
            slot_id=slot_id,
            stage=to_stage,
            blueprint=blueprint,
            alpha=_ALPHA.get(to_stage, 0.0),
            params=1_184,
        )
    return events


def _governor(
    common: dict,
    env: int,
    epoch: int,
    loss: float,
    slots: dict[str, SlotState],
    counters: list[int],
    clock: _Clock,
) -> list[Event]:
    counters[0] += 1
    counters[1] += 1
    due = counters[0] >= 2
    events: list[Event] = [
        GovernorPanic(
            **common,
            env=env,
            wall_time=clock.tick(0.01),
            reason="divergence",
            loss=loss,
            threshold=10.0,
            consecutive_panics=counters[0],
            rollback_due=due,
        )
    ]
    if due:
        pruned = [s.slot_id for s in slots.values() if s.stage not in ("DORMANT", "FOSSILIZED")]
        events.append(
            GovernorRollback(
                **common,
                env=env,
                wall_time=clock.tick(0.01),
                reason="divergence",
                initiator="governor",
                loss_at_panic=loss,
                consecutive_panics=counters[0],
                seeds_pruned=pruned,
                penalty=-10.0,
                threshold=10.0,
            )
        )
        for slot_id in pruned:
            old = slots[slot_id]
            events.append(
                SeedTransition(
                    **common,
                    env=env,
                    wall_time=clock.tick(0.01),
                    slot_id=slot_id,
                    blueprint=old.blueprint,
                    from_stage=old.stage,
                    to_stage="PRUNED",
                    alpha=0.0,
                    epochs_in_stage=1,
                    initiator="governor",
                )
            )
            slots[slot_id] = SlotState(slot_id=slot_id, stage="PRUNED", blueprint=old.blueprint)
        counters[0] = 0
        counters[2] += 1
    return events


def _operator_rollback(common: dict, counters: list[int], clock: _Clock) -> list[Event]:
    counters[2] += 1
    return [
        CommandAck(
            **common,
            wall_time=clock.tick(0.01),
            command="ForceRollback",
            accepted=True,
            command_id=2,
        ),
        GovernorRollback(
            **common,
            env=3,
            wall_time=clock.tick(0.01),
            reason="operator",
            initiator="operator",
            loss_at_panic=None,
            consecutive_panics=0,
            seeds_pruned=[],
            penalty=0.0,
            episode_ended=True,
        ),
    ]


def _policy_update(episode: int, epochs: int, rng: random.Random, clock: _Clock) -> PolicyUpdate:
    return PolicyUpdate(
        run_id=RUN_ID,
        episode=episode,
        epoch=epochs - 1,
        wall_time=clock.tick(0.2),
        update=episode + 1,
        policy_loss=round(rng.uniform(-0.03, 0.01), 4),
        value_loss=round(rng.uniform(0.1, 0.5), 4),
        entropy=round(1.6 - 0.1 * episode, 3),
        approx_kl=round(rng.uniform(0.001, 0.01), 4),
        clip_fraction=round(rng.uniform(0.05, 0.2), 3),
        explained_variance=round(rng.uniform(0.1, 0.6), 3),
        grad_norm=round(rng.uniform(0.2, 0.5), 3),
        mean_episode_reward=round(rng.uniform(-0.1, 0.4), 3),
    )


class FakeLiveSource:
    """A live source without a trainer: hands out queued events, records the commands sent."""

    is_live = True
    read_only = False
    warning = None

    def __init__(self, events: list[Event], expected_envs: int | None = None) -> None:
        self.expected_envs = expected_envs
        self.pending = list(events)
        self.sent: list = []
        self.started = False
        self.stopped = False
        self.dropped = 0
        self.thread_state = "running"

    def push(self, *events: Event) -> None:
        self.pending.extend(events)

    def start(self) -> None:
        self.started = True

    def poll(self) -> Polled:
        events, self.pending = self.pending, []
        return Polled(events)

    def send(self, command) -> int:
        self.sent.append(command)
        return len(self.sent)

    def stop(self, timeout: float | None = None) -> bool:
        self.stopped = True
        return True

    def position(self) -> None:
        return None


def frozen_clock(events: list[Event], after: float = 1.0):
    """A wall clock stopped ``after`` seconds past the last event (LIVE, never STALE)."""
    now = events[-1].wall_time + after
    return lambda: now


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async Pilot test with asyncio.run (no pytest async plugin is installed)."""

    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    # Not functools.wraps: pytest would follow __wrapped__ and see a coroutine function again.
    wrapper.__name__, wrapper.__doc__ = test.__name__, test.__doc__
    wrapper.__signature__ = inspect.signature(test)  # type: ignore[attr-defined]
    return wrapper
