"""The per-step reward, in accuracy points: accuracy change minus the change in capacity rent."""

from __future__ import annotations

import math

import pytest

from esper_engine.policy.rewards import capacity_rent, compute_reward


def test_accuracy_change_is_counted_in_points() -> None:
    assert compute_reward(0.50, 0.53, 0.0, 0.0) == pytest.approx(3.0)
    assert compute_reward(0.53, 0.50, 0.0, 0.0) == pytest.approx(-3.0)


def test_first_epoch_has_no_accuracy_change() -> None:
    assert compute_reward(None, 0.4, 0.0, 0.0) == 0.0


def test_capacity_rent_is_charged_per_doubling() -> None:
    # A seed as large as the host doubles the parameters: exactly one unit of rent.
    assert capacity_rent(1000, 1000, 0.02) == pytest.approx(0.02)
    assert capacity_rent(1000, 3000, 0.02) == pytest.approx(0.04)
    assert capacity_rent(1000, 0, 0.02) == 0.0


def test_rent_is_paid_on_a_change_of_capacity_and_refunded_on_a_prune() -> None:
    rent = capacity_rent(1000, 1000, 1.0)
    assert compute_reward(0.5, 0.5, 0.0, rent) == pytest.approx(-1.0)  # a seed went in
    assert compute_reward(0.5, 0.5, rent, rent) == 0.0  # kept: no charge per epoch
    assert compute_reward(0.5, 0.5, rent, 0.0) == pytest.approx(1.0)  # pruned: refunded


def test_a_scripted_episode_earns_its_final_gain_minus_its_final_capacitys_rent() -> None:
    """Germinate, grow, germinate, prune one, keep one: the rewards telescope."""
    host, param_rent = 1063, 1.0
    accuracies = [0.31, 0.45, 0.52, 0.60, 0.58, 0.70, 0.74, 0.79, 0.81, 0.84, 0.85, 0.86]
    seed_params = [0, 0, 760, 760, 1513, 1513, 1513, 753, 753, 753, 753, 753]  # per epoch
    rents = [capacity_rent(host, p, param_rent) for p in seed_params]
    rewards = [
        compute_reward(accuracies[t - 1], accuracies[t], rents[t - 1], rents[t])
        for t in range(1, len(accuracies))
    ]
    final_gain = 100 * (accuracies[-1] - accuracies[0])
    final_rent = capacity_rent(host, seed_params[-1], param_rent)
    assert sum(rewards) == pytest.approx(final_gain - final_rent)
    assert final_rent == pytest.approx(math.log2(1 + 753 / 1063))


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="must be finite"):
        compute_reward(0.5, math.nan, 0.0, 0.0)
    with pytest.raises(ValueError, match="must be finite"):
        compute_reward(0.5, 0.6, 0.0, math.inf)
    with pytest.raises(ValueError, match="host_params must be positive, got 0"):
        capacity_rent(0, 10, 0.02)
