"""The per-step reward: accuracy gained, credit for seeds that help, rent for added capacity.

Units: the reward is in accuracy **points** (1 point = 0.01 of accuracy); its inputs are
fractions, as telemetry carries them, converted here (``POINTS_PER_FRACTION``). A useful epoch
moves validation accuracy by a few points, so per-step rewards are O(1) and the governor's death
penalty (10 by default) weighs like losing ten points, which is a catastrophe but not one that
drowns every other signal after advantage normalisation. The death penalty itself is applied by
``RolloutBuffer.add_penalty_to_last``, not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

DEFAULT_CONTRIBUTION_WEIGHT = 0.1
POINTS_PER_FRACTION = 100.0  # accuracy points in an accuracy of 1.0


def parameter_rent(host_params: int, seed_params: int, param_rent: float) -> float:
    """Cost of the added capacity: ``param_rent`` per doubling of the bare host's parameters."""
    if host_params <= 0:
        raise ValueError(f"host_params must be positive, got {host_params}")
    return param_rent * math.log2(1.0 + seed_params / host_params)


def compute_reward(
    prev_val_acc: float | None,
    val_acc: float,
    contributions: Mapping[str, float],
    host_params: int,
    seed_params: int,
    param_rent: float,
    contribution_weight: float = DEFAULT_CONTRIBUTION_WEIGHT,
) -> float:
    """Reward for the action taken one epoch earlier, in accuracy points.

    ``prev_val_acc`` / ``val_acc`` are fractions in [0, 1] (None before the first epoch: no
    change counted); ``contributions`` are Shapley values per slot, fractions too. The
    contribution term is a small shaping bonus: the accuracy delta already contains a blended
    seed's effect once, this credits the seed for keeping it every epoch it is kept.
    """
    values = [val_acc, *contributions.values()]
    if prev_val_acc is not None:
        values.append(prev_val_acc)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"reward inputs must be finite: acc {prev_val_acc} -> {val_acc}, "
            f"contributions {dict(contributions)}"
        )
    delta = 0.0 if prev_val_acc is None else val_acc - prev_val_acc
    delta_points = POINTS_PER_FRACTION * delta
    credit = contribution_weight * POINTS_PER_FRACTION * sum(contributions.values())
    return delta_points + credit - parameter_rent(host_params, seed_params, param_rent)
