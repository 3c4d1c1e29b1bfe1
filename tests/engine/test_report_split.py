"""The report split (issue 24): held out, read only by the report, never by a decision."""

from __future__ import annotations

import dataclasses
import math
from itertools import pairwise

import msgspec
import pytest
import torch

from esper_engine.config import LifecycleConfig, TrainingConfig
from esper_engine.contracts import EpochProgress, EpochSummary, ResourceSample, RunFinished
from esper_engine.tasks import load_task
from esper_engine.tasks.synthetic_images import SIZES, generate
from esper_engine.telemetry import ListSink
from esper_engine.trainer import VectorizedTrainer

# Fields that hold the report or that measure wall time: everything else must not move when
# the report split changes.
REPORT_ONLY = {"report_accuracy", "report_loss", "report_perplexity"}
CLOCK = {"wall_time", "samples_per_s", "cost_ratio", "elapsed_s", "exchange_s"}


@pytest.fixture(scope="module")
def images():
    return load_task("synthetic-images", seed=0, scale="small")


def small_config(**overrides) -> TrainingConfig:
    base = dict(n_envs=2, episodes=1, epochs=5, batches_per_epoch=3, batch_size=16, val_batches=2)
    base.update(overrides)
    return TrainingConfig(**base)


def run(task, config):
    sink = ListSink()
    VectorizedTrainer(config, sink, run_id="t", task=task).run()
    return sink.events


def summaries(events):
    return [e for e in events if isinstance(e, EpochSummary)]


@pytest.mark.parametrize(("every", "epochs"), [(0, [4]), (2, [1, 3, 4]), (1, [0, 1, 2, 3, 4])])
def test_the_report_is_computed_on_the_configured_epochs_only(images, every, epochs):
    events = run(images, small_config(report_every=every))
    for env in (0, 1):
        mine = [s for s in summaries(events) if s.env == env]
        reported = [s.epoch for s in mine if s.report_accuracy is not None]
        assert reported == epochs
        for s in mine:
            assert (s.report_loss is not None) == (s.epoch in epochs)
            assert s.report_perplexity is None  # classification
            if s.report_accuracy is not None:
                assert 0.0 <= s.report_accuracy <= 1.0 and math.isfinite(s.report_loss)
        # the report's FLOPs grow exactly on the reported epochs
        grew = [b.epoch for a, b in pairwise(mine) if b.report_flops > a.report_flops]
        assert grew == [e for e in epochs if e > 0]


def test_every_episode_reports_its_last_epoch(images):
    events = run(images, small_config(episodes=2, epochs=3, n_envs=1))
    reported = [(s.episode, s.epoch) for s in summaries(events) if s.report_accuracy is not None]
    assert reported == [(0, 2), (1, 2)]


def _decisions(events):
    """Every event with the report's own figures and the clocks left out (EpochProgress
    whole: how many there are depends on the wall clock)."""
    out = []
    for event in events:
        if isinstance(event, EpochProgress | ResourceSample):
            continue
        data = msgspec.structs.asdict(event)
        for key in REPORT_ONLY | CLOCK:
            data.pop(key, None)
        out.append((type(event).__name__, data))
    return out


@pytest.mark.parametrize("policy", ["heuristic", "ppo"])
def test_changing_the_report_split_changes_no_decision(images, policy):
    """Same seed, a different report split (scrambled labels, other images): every action,
    transition, attribution, reward, validation figure and PPO update is the same; only the
    report's figures differ."""
    config = small_config(
        policy=policy,
        episodes=2,
        epochs=5,
        report_every=1,
        lifecycle=LifecycleConfig(min_training_epochs=1, blend_epochs=1),
    )
    g = torch.Generator().manual_seed(123)
    other_x, _ = generate(len(images.report_x), g)
    other_y = torch.randint(0, images.num_classes, images.report_y.shape, generator=g)
    scrambled = dataclasses.replace(images, report_x=other_x, report_y=other_y)
    first, second = run(images, config), run(scrambled, config)
    assert _decisions(first) == _decisions(second)
    a = [s.report_accuracy for s in summaries(first)]
    b = [s.report_accuracy for s in summaries(second)]
    assert a != b  # the report did read its split
    acted = [s.last_action for s in summaries(first) if s.last_action != "WAIT"]
    assert acted  # the comparison covers real actions
    assert isinstance(first[-1], RunFinished) and first[-1].total_flops > 0


def test_a_task_without_a_report_split_reports_none(images):
    bare = dataclasses.replace(images, report_x=None, report_y=None)
    events = run(bare, small_config(episodes=1, epochs=2, n_envs=1))
    assert all(s.report_accuracy is None and s.report_flops == 0 for s in summaries(events))


def test_synthetic_images_report_is_generated_apart_from_validation():
    task = load_task("synthetic-images", seed=3, scale="small")
    n_train, n_val = SIZES["small"]
    g = torch.Generator().manual_seed(3)
    train_x, _ = generate(n_train, g)
    val_x, val_y = generate(n_val, g)
    # the train and validation sets are what they were before the report split existed
    assert torch.equal(task.train_x, train_x) and torch.equal(task.val_x, val_x)
    assert task.report_x.shape == task.val_x.shape and task.report_y.shape == val_y.shape
    assert not torch.equal(task.report_x, task.val_x)
    pixels = {bytes(img.flatten().tolist()) for img in torch.cat([task.train_x, task.val_x])}
    assert not any(bytes(img.flatten().tolist()) in pixels for img in task.report_x)
    other = load_task("synthetic-images", seed=4, scale="small")
    assert not torch.equal(other.report_x, task.report_x)  # per seed, reproducibly
    assert torch.equal(load_task("synthetic-images", seed=3, scale="small").report_x, task.report_x)


def test_synthetic_stories_report_is_generated_apart_from_validation():
    task = load_task("synthetic-stories", seed=0, scale="small")
    assert task.report_x is not None and task.report_x.shape[1] == task.val_x.shape[1]
    val = bytes(task.val_x.reshape(-1).tolist())
    report = bytes(task.report_x.reshape(-1).tolist())
    assert report != val and report[:200] not in val


def test_the_language_task_reports_perplexity():
    stories = load_task("synthetic-stories", seed=0, scale="small")
    events = run(stories, small_config(task="synthetic-stories", epochs=2, n_envs=1))
    last = summaries(events)[-1]
    assert last.report_loss is not None
    assert last.report_perplexity == pytest.approx(math.exp(last.report_loss))
