"""Compute in the telemetry (issue 24): FLOPs per env by kind, and the run's total."""

from __future__ import annotations

import copy
from itertools import pairwise

import msgspec
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from esper_engine.config import LifecycleConfig, TrainingConfig
from esper_engine.contracts import (
    Attribution,
    EpochSummary,
    RunFinished,
    SeedStage,
    decode_event,
    encode,
)
from esper_engine.flops import EnvFlops, RunFlops, architecture, train_step_flops
from esper_engine.model import create_model
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
    base = dict(n_envs=2, episodes=2, epochs=4, batches_per_epoch=3, batch_size=16, val_batches=2)
    base.update(overrides)
    return TrainingConfig(**base)


def run(task, config):
    sink = ListSink()
    trainer = VectorizedTrainer(config, sink, run_id="t", task=task)
    finished = trainer.run()
    return trainer, sink.events, finished


def hand_count_tiny_cnn_train_step(samples: int) -> int:
    """The tiny CNN host (widths 3-6-12, 3x32x32 in, 10 classes), written out by hand.

    Convolutions and linears cost 2 FLOPs per multiply-accumulate (MAC). A conv's MACs are
    out_channels x out_height x out_width x (in_channels x 3 x 3); each block's max-pool halves
    the side before the next conv. The backward pass costs 2x the forward per layer (a grad for
    the input and one for the weights), except the first conv, whose input (the data) needs no
    gradient: 1x. BatchNorm, ReLU, pooling and the loss are not counted (FlopCounterMode counts
    only convolutions and matrix products)."""
    conv1 = 2 * (3 * 32 * 32) * (3 * 3 * 3)  # 3 -> 3 channels at 32x32
    conv2 = 2 * (6 * 16 * 16) * (3 * 3 * 3)  # 3 -> 6 at 16x16
    conv3 = 2 * (12 * 8 * 8) * (6 * 3 * 3)  # 6 -> 12 at 8x8
    head = 2 * 12 * 10  # pooled 12 features -> 10 classes
    forward = conv1 + conv2 + conv3 + head
    backward = conv1 + 2 * (conv2 + conv3 + head)
    return samples * (forward + backward)


def test_train_step_flops_match_a_hand_count_for_the_tiny_cnn(images):
    model = create_model(images, "cpu")
    x, y = images.prepare(images.train_x[:16]), images.train_y[:16]
    assert train_step_flops(model, images, x, y) == hand_count_tiny_cnn_train_step(16)
    assert hand_count_tiny_cnn_train_step(1) == 830_160  # the figure, for the README


def test_train_flops_match_flop_counter_mode_on_a_real_batch(images):
    """The cached per-sample count times the batch equals FlopCounterMode around one real
    training step (forward + loss + backward) at the run's batch size, a partial batch too."""
    model = create_model(images, "cpu")
    meter = EnvFlops(images, "cpu")
    for n in (16, 7):  # a full batch and a last, partial one
        x, y = images.prepare(images.train_x[:n]), images.train_y[:n]
        twin = copy.deepcopy(model).train()
        with FlopCounterMode(display=False) as counter:
            images.loss(twin(x), y).backward()
        assert n * meter.train_per_sample(model) == counter.get_total_flops() > 0
    assert meter.measurements == 1  # measured once for the architecture, then cached


def test_measuring_moves_no_weight_statistic_or_random_stream(images):
    model = create_model(images, "cpu")
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    EnvFlops(images, "cpu").train_per_sample(model)
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats included
    assert all(p.grad is None for p in model.parameters())


def test_the_count_follows_the_architecture(images):
    """A germinated seed is skipped by the forward (its compute is not spent yet); once it
    trains the per-step count grows by its compute, and a prune brings it back."""
    model = create_model(images, "cpu", min_prune_age=0)
    meter = EnvFlops(images, "cpu")
    host = meter.train_per_sample(model)
    model.germinate("block1", "conv_light")
    assert meter.train_per_sample(model) == host
    model.end_epoch()  # GERMINATED moves to TRAINING at the end of the epoch
    assert model.slots["block1"].stage is SeedStage.TRAINING
    seeded = meter.train_per_sample(model)
    assert seeded > host
    x = images.prepare(images.val_x[:1])
    with FlopCounterMode(display=False) as counter:
        images.loss(copy.deepcopy(model).train()(x), images.val_y[:1]).backward()
    assert seeded == counter.get_total_flops()
    model.prune("block1")
    assert meter.train_per_sample(model) == host
    assert meter.measurements == 2  # the host's count was cached: not measured again


def test_validation_and_attribution_counts(images):
    model = create_model(images, "cpu")
    meter = EnvFlops(images, "cpu")
    x = images.prepare(images.val_x[:5])
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.eval()(x)
    assert 5 * meter.forward_per_sample(model) == counter.get_total_flops()
    # the attribution with one player evaluates two coalitions: the host twice after block1
    full = frozenset({0})
    both = meter.attribution_per_sample(model, ["block1"], [frozenset(), full])
    one = meter.attribution_per_sample(model, ["block1"], [full])
    assert one < both < 2 * one


def test_a_real_run_reports_flops_that_add_up(images):
    """Every EpochSummary's FLOPs grow within an episode by the epoch's figures, restart with
    the next episode, and RunFinished's total is the sum of each episode's last summary."""
    config = small_config(lifecycle=LifecycleConfig(min_training_epochs=1))
    trainer, events, finished = run(images, config)
    assert finished.status == "completed"
    summaries = [e for e in events if isinstance(e, EpochSummary)]
    val_samples = sum(len(x) for x, _ in trainer.val_batches)
    report_samples = sum(len(x) for x, _ in trainer.report_batches)
    assert report_samples > 0
    total = 0
    for env in range(config.n_envs):
        for episode in range(config.episodes):
            mine = [s for s in summaries if s.env == env and s.episode == episode]
            assert [s.epoch for s in mine] == list(range(config.epochs))
            previous = None
            for s in mine:
                assert s.train_flops > 0 and s.val_flops > 0
                if previous is not None:
                    trained = s.train_flops - previous.train_flops
                    validated = s.val_flops - previous.val_flops
                    assert trained > 0 and validated > 0
                    # every epoch trains batches_per_epoch x batch_size samples and validates
                    # the fixed set: the per-sample figures are whole numbers
                    assert trained % (config.batches_per_epoch * config.batch_size) == 0
                    assert validated % val_samples == 0
                    assert s.report_flops >= previous.report_flops
                    assert s.attribution_flops >= previous.attribution_flops
                previous = s
            last = mine[-1]
            assert last.report_flops > 0 and last.report_flops % report_samples == 0
            total += last.train_flops + last.val_flops + last.attribution_flops
            total += last.report_flops
    assert finished.total_flops == total > 0
    # the envs share one cache: each (kind, architecture) was measured once in the whole run
    cache = trainer.envs[0].flops.cache
    assert all(env.flops.cache is cache for env in trainer.envs)
    assert cache.measurements == len(cache.counts) >= 3


def test_the_per_step_count_changes_after_a_seed_trains_in_a_real_run(images):
    """The heuristic germinates; the epochs a seed trains cost more per step than the bare
    host's, by the seed's measured compute (epochs without a live seed cost the host's)."""
    config = small_config(episodes=1, epochs=6, n_envs=1, lifecycle=LifecycleConfig())
    trainer, events, _ = run(images, config)
    summaries = [e for e in events if isinstance(e, EpochSummary)]
    germinated = [e for e in summaries if e.last_action.startswith("GERMINATE")]
    assert germinated, "the heuristic planted no seed in 6 epochs"
    steps = config.batches_per_epoch * config.batch_size
    per_sample = [(b.train_flops - a.train_flops) // steps for a, b in pairwise(summaries)]
    host = hand_count_tiny_cnn_train_step(1)
    assert summaries[0].train_flops == steps * host
    assert per_sample[0] == host  # nothing grows before the first action
    assert any(p > host for p in per_sample), per_sample


def test_flops_survive_a_round_trip_and_old_events_decode():
    summary = EpochSummary(
        train_loss=1.0,
        train_accuracy=0.5,
        val_loss=1.0,
        val_accuracy=0.5,
        perplexity=None,
        grad_norm_pre_clip=1.0,
        grad_norm_post_clip=1.0,
        clipped_fraction=0.0,
        clip_threshold=1.0,
        slots=[],
        consecutive_panics=0,
        total_panics=0,
        rollbacks=0,
        train_flops=3_200_000_000_000,
        report_accuracy=0.75,
    )
    assert decode_event(encode(summary)) == summary
    old = msgspec.structs.asdict(summary)
    for key in [k for k in old if "flops" in k or k.startswith("report_")]:
        del old[key]
    legacy = decode_event(msgspec.msgpack.encode({"type": "EpochSummary", **old}))
    assert legacy.train_flops == 0 and legacy.report_accuracy is None
    finished = decode_event(msgspec.msgpack.encode({"type": "RunFinished", "status": "completed"}))
    assert isinstance(finished, RunFinished) and finished.total_flops == 0


def test_run_flops_sums_each_envs_growth():
    sink = ListSink()
    tally = RunFlops(sink)

    def summary(env, episode, train):
        return EpochSummary(
            env=env,
            episode=episode,
            train_loss=1.0,
            train_accuracy=0.5,
            val_loss=1.0,
            val_accuracy=0.5,
            perplexity=None,
            grad_norm_pre_clip=1.0,
            grad_norm_post_clip=1.0,
            clipped_fraction=0.0,
            clip_threshold=1.0,
            slots=[],
            consecutive_panics=0,
            total_panics=0,
            rollbacks=0,
            train_flops=train,
            val_flops=1,
        )

    for event in (summary(0, 0, 10), summary(1, 0, 5), summary(0, 0, 30), summary(0, 1, 7)):
        tally.emit(event)
    assert tally.total == (30 + 1) + (5 + 1) + (7 + 1)
    assert len(sink.events) == 4
    restored = RunFlops(ListSink())
    restored.load_state_dict(tally.state_dict())
    restored.emit(summary(0, 1, 9))
    assert restored.total == tally.total + 2


def test_attribution_flops_follow_the_coalitions_evaluated(images):
    """A run whose seeds blend attributes them: the attribution FLOPs grow by the measured
    per-sample count of the coalitions it evaluated."""
    config = small_config(
        episodes=1,
        epochs=8,
        n_envs=1,
        lifecycle=LifecycleConfig(min_training_epochs=1, blend_epochs=1),
    )
    _, events, _ = run(images, config)
    summaries = [e for e in events if isinstance(e, EpochSummary)]
    attributed = {e.epoch for e in events if isinstance(e, Attribution)}
    for a, b in pairwise(summaries):
        grew = b.attribution_flops > a.attribution_flops
        assert grew == (b.epoch in attributed)
    assert architecture(create_model(images, "cpu")) == ()  # no seed runs in a bare host


def test_language_model_flops(stories):
    config = small_config(episodes=1, epochs=2, n_envs=1, task="synthetic-stories")
    _, events, finished = run(stories, config)
    last = [e for e in events if isinstance(e, EpochSummary)][-1]
    assert last.train_flops > 0 and last.report_perplexity is not None
    assert finished.total_flops == (
        last.train_flops + last.val_flops + last.attribution_flops + last.report_flops
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_counts_what_the_cpu_run_counts(images):
    """FLOPs do not depend on the device: a CUDA run (each env on its own stream, bf16) reports
    the same per-kind totals as the same run on the CPU, whose seeds act the same way."""
    config = small_config(episodes=1, epochs=3, n_envs=2, policy="static")
    _, cpu, cpu_finished = run(images, config)
    cuda_config = msgspec.structs.replace(config, device="cuda", amp="bf16")
    _, cuda, cuda_finished = run(images, cuda_config)

    def figures(events):
        return [
            (e.env, e.epoch, e.train_flops, e.val_flops, e.attribution_flops, e.report_flops)
            for e in events
            if isinstance(e, EpochSummary)
        ]

    assert figures(cuda) == figures(cpu)
    assert cuda_finished.total_flops == cpu_finished.total_flops > 0
