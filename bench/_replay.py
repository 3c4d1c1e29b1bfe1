"""Replay speed: decoding a 100k-event recording, and the console's reducer consuming it.

The recording imitates a 4-env run on a 3-slot CNN with the default telemetry settings: per env
and epoch, 4 BatchStats (every 10 of 40 batches) and one EpochSummary with 3 slot states, plus
seed transitions, attributions of live seeds, an occasional governor panic or operator command,
and a PolicyUpdate per episode of 12 epochs. It is written with the real ``Recorder``.
"""

from __future__ import annotations

import random
from pathlib import Path

from _timing import Timed, stopwatch

from esper_engine.contracts import (
    Attribution,
    BatchStats,
    CommandAck,
    EpochSummary,
    Event,
    GovernorPanic,
    Initiator,
    Op,
    PanicReason,
    PolicyUpdate,
    RunFinished,
    RunStarted,
    RunStatus,
    SeedStage,
    SeedTransition,
    SlotState,
)
from esper_engine.recording import Recorder, read_recording
from overwatch.state import ConsoleState, reduce_many

N_ENVS, EPOCHS, BATCHES, BATCH_STATS_EVERY = 4, 12, 40, 10
# Declared in RunStarted, within the decoder's bounds (episodes <= MAX_EPISODES): an episode has at
# least 12 epochs x 4 envs x 5 events, so 100k events span fewer than 420 episodes.
EPISODES = 1_000
SLOT_IDS = ("block1", "block2", "block3")
S = SeedStage
STAGES = (S.DORMANT, S.TRAINING, S.BLENDING, S.HOLDING, S.FOSSILIZED)


def build_recording(path: Path, n_events: int = 100_000, seed: int = 0) -> int:
    """Write exactly ``n_events`` events (RunStarted first, RunFinished last); returns bytes."""
    rng = random.Random(seed)
    with Recorder(path) as recorder:
        written = 0
        for event in _events(rng):
            if written == n_events - 1:
                break
            recorder.emit(event)
            written += 1
        finished = RunFinished(run_id="bench", wall_time=1e9 + written, status=RunStatus.COMPLETED)
        recorder.emit(finished)
    return path.stat().st_size


def decode_seconds(path: Path, expected: int) -> tuple[Timed, list[Event]]:
    """Time of ``read_recording`` (file read and decode of every frame), and its events."""
    with stopwatch() as watch:
        events = read_recording(path).events
    if len(events) != expected:
        raise RuntimeError(f"{path}: decoded {len(events)} events, expected {expected}")
    return watch.result, events


def ingest_seconds(events: list[Event]) -> Timed:
    """Time of the console's reducer consuming every event into a fresh state."""
    with stopwatch() as watch:
        reduce_many(ConsoleState(), events)
    return watch.result


def _events(rng: random.Random):
    """An endless, deterministic run: episodes of epochs of per-env events."""
    clock = 1e9
    common = {"run_id": "bench"}
    yield RunStarted(
        **common,
        wall_time=clock,
        task="synthetic-images",
        task_kind="classification",
        n_envs=N_ENVS,
        slot_ids=list(SLOT_IDS),
        policy="heuristic",
        episodes=EPISODES,
        epochs=EPOCHS,
        batches_per_epoch=BATCHES,
        random_guess_loss=2.302585,
        blueprints=["conv_light", "conv_heavy", "attention", "depthwise", "norm"],
        host_params=3000,
    )
    stages = [[S.DORMANT] * len(SLOT_IDS) for _ in range(N_ENVS)]
    episode = 0
    while True:
        for epoch in range(EPOCHS):
            at = {**common, "episode": episode, "epoch": epoch}
            for batch in range(BATCH_STATS_EVERY - 1, BATCHES, BATCH_STATS_EVERY):
                for env in range(N_ENVS):
                    clock += 0.01
                    yield _batch_stats(rng, at, env, batch, clock)
            for env in range(N_ENVS):
                clock += 0.01
                yield from _env_epoch(rng, at, env, stages[env], clock)
            if rng.random() < 0.02:
                yield CommandAck(
                    **at,
                    wall_time=clock,
                    command="SetClipThreshold",
                    accepted=True,
                    value=0.8,
                    command_id=1,
                )
        clock += 0.01
        yield _policy_update(rng, common, episode, clock)
        episode += 1
        if episode == EPISODES:
            raise RuntimeError(
                f"the synthetic run declares {EPISODES} episodes: ask for fewer events"
            )
        stages = [[S.DORMANT] * len(SLOT_IDS) for _ in range(N_ENVS)]


def _batch_stats(rng: random.Random, at: dict, env: int, batch: int, clock: float) -> BatchStats:
    pre = rng.uniform(0.3, 2.5)
    return BatchStats(
        **at,
        env=env,
        wall_time=clock,
        batch=batch,
        loss=rng.uniform(0.4, 2.3),
        grad_norm_pre_clip=pre,
        grad_norm_post_clip=min(pre, 1.0),
        clip_threshold=1.0,
        clipped=pre > 1.0,
        samples_per_s=2400.0,
    )


def _env_epoch(rng: random.Random, at: dict, env: int, stages: list[SeedStage], clock: float):
    """An env's end of epoch: maybe a transition and an attribution, then its summary."""
    if rng.random() < 0.15:
        k = rng.randrange(len(SLOT_IDS))
        to = STAGES[(STAGES.index(stages[k]) + 1) % len(STAGES)]
        yield SeedTransition(
            **at,
            env=env,
            wall_time=clock,
            slot_id=SLOT_IDS[k],
            blueprint="conv_light",
            from_stage=stages[k],
            to_stage=to,
            alpha=rng.random(),
            epochs_in_stage=2,
            initiator=Initiator.POLICY,
        )
        stages[k] = to
    live = (S.BLENDING, S.HOLDING)
    active = [sid for sid, st in zip(SLOT_IDS, stages, strict=True) if st in live]
    if active:
        yield Attribution(
            **at,
            env=env,
            wall_time=clock,
            shapley={s: rng.uniform(-0.02, 0.05) for s in active},
            std=None,
            full_value=0.80,
            empty_value=0.77,
            exact=True,
            coalitions=2 ** len(active),
            full_loss=0.6,
            empty_loss=0.7,
            cost_ratio=2.0,
        )
    if rng.random() < 0.01:
        yield GovernorPanic(
            **at,
            env=env,
            wall_time=clock,
            reason=PanicReason.DIVERGENCE,
            loss=12.0,
            threshold=10.0,
            consecutive_panics=1,
            rollback_due=False,
        )
    yield EpochSummary(
        **at,
        env=env,
        wall_time=clock,
        train_loss=rng.uniform(0.4, 2.3),
        train_accuracy=rng.random(),
        val_loss=rng.uniform(0.4, 2.3),
        val_accuracy=rng.random(),
        perplexity=None,
        grad_norm_pre_clip=rng.uniform(0.3, 2.5),
        grad_norm_post_clip=1.0,
        clipped_fraction=rng.random(),
        clip_threshold=1.0,
        slots=[
            SlotState(
                slot_id=sid,
                stage=st,
                blueprint=None if st is S.DORMANT else "conv_light",
                alpha=rng.random(),
                epochs_in_stage=rng.randrange(6),
                params=2500,
            )
            for sid, st in zip(SLOT_IDS, stages, strict=True)
        ],
        consecutive_panics=0,
        total_panics=rng.randrange(3),
        rollbacks=0,
        last_action="WAIT",
        last_op=Op.WAIT,
        reward=rng.uniform(-1, 1),
        samples_per_s=2400.0,
        host_params=3000,
        seed_params=2500,
    )


def _policy_update(rng: random.Random, common: dict, episode: int, clock: float) -> PolicyUpdate:
    return PolicyUpdate(
        **common,
        episode=episode,
        epoch=EPOCHS - 1,
        wall_time=clock,
        update=episode + 1,
        policy_loss=rng.uniform(-0.1, 0.1),
        value_loss=rng.random(),
        entropy=1.5,
        approx_kl=0.01,
        clip_fraction=0.1,
        explained_variance=0.3,
        grad_norm=0.4,
        mean_episode_reward=rng.uniform(-1, 3),
    )
