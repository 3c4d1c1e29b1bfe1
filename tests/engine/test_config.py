"""TrainingConfig: validation, bounds, faults and the learning-rate schedule."""

from __future__ import annotations

import math
import re

import msgspec
import pytest

from esper_engine.config import MAX_CLIP_THRESHOLD, MAX_SEED, TrainingConfig


def test_cosine_schedule_starts_at_the_base_lr_and_decays_within_the_episode() -> None:
    config = TrainingConfig(epochs=12)
    scales = [config.lr_scale(epoch) for epoch in range(12)]
    assert scales[0] == 1.0
    assert all(a > b for a, b in zip(scales[:-1], scales[1:], strict=True))  # strictly decreasing
    assert 0 < scales[-1] < 0.05  # the last epoch still learns, gently
    assert config.lr_scale(6) == pytest.approx(0.5)  # half way: half the lr


def test_constant_schedule_keeps_the_base_lr() -> None:
    config = TrainingConfig(epochs=12, lr_schedule="constant")
    assert {config.lr_scale(epoch) for epoch in range(12)} == {1.0}


def test_unknown_schedule_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="lr_schedule must be cosine or constant, got 'step'"):
        TrainingConfig(lr_schedule="step").validate()


def test_the_defaults_are_valid() -> None:
    TrainingConfig().validate()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_envs": 0}, "n_envs must be >= 1, got 0"),
        ({"epochs": 2**63}, "epochs must be <= 2**63 - 1"),
        ({"val_batches": 0}, "val_batches must be >= 1"),
        ({"seed": -1}, "seed must be within 0..4294967295, got -1"),
        ({"seed": MAX_SEED + 1}, "seed must be within"),
        ({"max_grad_norm": math.nan}, "max_grad_norm must be within 0..1e+06"),
        ({"max_grad_norm": math.inf}, "max_grad_norm must be within"),
        ({"max_grad_norm": -0.5}, "max_grad_norm must be within"),
        ({"max_grad_norm": 1e40}, "max_grad_norm must be within"),
        ({"max_grad_norm": MAX_CLIP_THRESHOLD * 1.25}, "max_grad_norm must be within"),
        ({"faults": ("nan:5:1",)}, "env 5 of a run with 4 envs"),
        ({"faults": ("crash:1:13",)}, "epoch 13 of episodes with 12 epochs"),
        ({"faults": ("melt:1:1",)}, "unknown kind 'melt'"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainingConfig(**overrides).validate()


@pytest.mark.parametrize("max_grad_norm", [None, 0.0, 1e-3, MAX_CLIP_THRESHOLD])
def test_clip_threshold_bounds_are_inclusive(max_grad_norm) -> None:
    TrainingConfig(max_grad_norm=max_grad_norm).validate()


def test_faults_are_recorded_with_the_config_and_old_configs_still_decode() -> None:
    config = TrainingConfig(faults=("nan:2:3", "crash:1:12"))
    config.validate()
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(config), type=TrainingConfig) == config
    old = msgspec.structs.asdict(TrainingConfig())
    del old["faults"]  # a config recorded before faults existed
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=TrainingConfig)
    assert decoded.faults == ()
