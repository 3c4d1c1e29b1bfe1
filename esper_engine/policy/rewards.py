"""The per-step reward: the change in validation accuracy, minus the changes in capacity rent
and in the compute price.

It pays for the outcome. Step t's reward is ``100 * (acc[t+1] - acc[t]) - (rent[t+1] - rent[t])``
in accuracy **points** (1 point = 0.01 of accuracy; the inputs are fractions, as telemetry carries
them), where ``rent`` is what the capacity present costs (``capacity_rent``). Both terms are
differences, so an episode's rewards telescope: they sum to its final accuracy gain (last epoch
minus first) minus the rent of its *final* capacity. A seed pruned before the end costs nothing
over the episode; a seed kept costs its rent once, not once per epoch (a per-epoch charge of half
a point per doubling added up to 6.4 points an episode, more than growth gains, so WAIT was
optimal).

The compute price is spent the same way: ``episode_price`` is ``compute_price`` per doubling of
the episode's training FLOPs so far over what the bare host would have spent on the same samples
(``TrainingConfig.compute_price``, lambda), and each step pays its change, so the episode pays
``lambda * log2(episode FLOPs / the static host's FLOPs)`` once, at its final ratio: a seed that
is pruned early costs only the FLOPs it spent.

No payment from Shapley attributions: once the host has co-adapted to a blended seed, switching
the seed off measures how much the host *depends* on it, not how much it helps (one seed
"contributed" 44-53 points in an episode that gained 4.6). The heuristic still reads them; the
reward does not. The governor's death penalty is applied by ``RolloutBuffer.add_penalty_to_last``,
not here; PPO scales points to unit-size returns (``PPOConfig.reward_scale``).
"""

from __future__ import annotations

import math

POINTS_PER_FRACTION = 100.0  # accuracy points in an accuracy of 1.0


def capacity_rent(host_params: int, seed_params: int, param_rent: float) -> float:
    """What the capacity added to the bare host costs, in points: ``param_rent`` per doubling."""
    if host_params <= 0:
        raise ValueError(f"host_params must be positive, got {host_params}")
    if seed_params < 0:
        raise ValueError(f"seed_params must be >= 0, got {seed_params}")
    return param_rent * math.log2(1.0 + seed_params / host_params)


def compute_reward(
    prev_val_acc: float | None,
    val_acc: float,
    prev_rent: float,
    rent: float,
    prev_price: float = 0.0,
    price: float = 0.0,
) -> float:
    """Reward for the action taken one epoch earlier, in accuracy points.

    ``prev_val_acc`` / ``val_acc``: validation accuracy (fractions) before and after the action's
    epoch (None before the first epoch: no change counted). ``prev_rent`` / ``rent``: the
    ``capacity_rent`` of the model then and now (points). ``prev_price`` / ``price``: the
    ``episode_price`` of the training FLOPs spent so far, then and now (points; 0 with
    ``compute_price`` 0, which leaves every reward as it was).
    """
    values = [val_acc, prev_rent, rent, prev_price, price]
    if prev_val_acc is not None:
        values.append(prev_val_acc)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"reward inputs must be finite: acc {prev_val_acc} -> {val_acc}, "
            f"rent {prev_rent} -> {rent}, compute price {prev_price} -> {price}"
        )
    delta = 0.0 if prev_val_acc is None else val_acc - prev_val_acc
    return POINTS_PER_FRACTION * delta - (rent - prev_rent) - (price - prev_price)


def compute_price(episode_flops: float, static_flops: float, price: float) -> float:
    """What the episode's compute costs, in points: ``price`` per doubling of its training FLOPs
    over the static host's on the same budget (negative when it spent less: pruning pays back).

    ``price`` is ``TrainingConfig.compute_price``; its default is the static frontier's exchange
    rate (accuracy points per doubling of FLOPs, bench/growth.py), so growth that merely buys
    accuracy at the frontier's going rate earns nothing."""
    if not static_flops > 0:
        raise ValueError(f"static_flops must be positive, got {static_flops}")
    if not episode_flops > 0:
        raise ValueError(f"episode_flops must be positive, got {episode_flops}")
    return price * math.log2(episode_flops / static_flops)


def episode_price(train_flops: float, static_flops: float, price: float) -> float:
    """The compute price of an episode so far: ``compute_price`` of its training FLOPs over the
    bare host's on the same samples; 0 with ``price`` 0 or before anything was trained."""
    if price == 0.0 or not static_flops > 0 or not train_flops > 0:
        return 0.0
    return compute_price(train_flops, static_flops, price)
