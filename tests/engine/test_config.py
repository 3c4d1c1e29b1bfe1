"""TrainingConfig: validation and the learning-rate schedule."""

from __future__ import annotations

import pytest

from esper_engine.config import TrainingConfig


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
