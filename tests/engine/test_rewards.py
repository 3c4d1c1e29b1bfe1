"""The per-step reward, in accuracy points."""

from __future__ import annotations

import math

import pytest

from esper_engine.policy.rewards import compute_reward, parameter_rent


def test_accuracy_change_is_counted_in_points() -> None:
    reward = compute_reward(0.50, 0.53, {}, host_params=1000, seed_params=0, param_rent=0.02)
    assert reward == pytest.approx(3.0)
    assert compute_reward(0.53, 0.50, {}, 1000, 0, 0.02) == pytest.approx(-3.0)


def test_first_epoch_has_no_accuracy_change() -> None:
    assert compute_reward(None, 0.4, {}, 1000, 0, 0.02) == 0.0


def test_contributions_add_a_small_weighted_credit_in_points() -> None:
    # Contributions arrive as fractions (Shapley values of accuracy): 0.02 is 2 points.
    contributions = {"block0": 0.02, "block1": -0.005}
    reward = compute_reward(0.5, 0.5, contributions, 1000, 0, 0.0, contribution_weight=0.1)
    assert reward == pytest.approx(0.15)


def test_parameter_rent_is_charged_per_doubling() -> None:
    # A seed as large as the host doubles the parameters: exactly one unit of rent.
    assert parameter_rent(1000, 1000, 0.02) == pytest.approx(0.02)
    assert parameter_rent(1000, 3000, 0.02) == pytest.approx(0.04)
    assert parameter_rent(1000, 0, 0.02) == 0.0
    with_seed = compute_reward(0.5, 0.5, {}, 1000, 1000, param_rent=0.5)
    assert with_seed == pytest.approx(-0.5)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="must be finite"):
        compute_reward(0.5, math.nan, {}, 1000, 0, 0.02)
    with pytest.raises(ValueError, match="must be finite"):
        compute_reward(0.5, 0.6, {"block0": math.inf}, 1000, 0, 0.02)
    with pytest.raises(ValueError, match="host_params must be positive, got 0"):
        compute_reward(0.5, 0.6, {}, 0, 10, 0.02)
