"""What a policy sees of one env after an epoch, and its fixed-size vector encoding for PPO.

The policy package stays pure (no model or trainer imports): it shares only the contracts'
vocabulary (``SeedStage``); ``STAGES`` is their lifecycle order, the order of the one-hot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from esper_engine.contracts import LIVE_SEED_STAGES, SeedStage

STAGES: tuple[SeedStage, ...] = tuple(SeedStage)

HISTORY_DELTAS = 4  # recent per-epoch changes of accuracy and loss in the vector
PLATEAU_WINDOW = 3  # epochs whose best accuracy is compared with the best before them
GLOBAL_FEATURES = 12 + 2 * HISTORY_DELTAS
SLOT_FEATURES = len(STAGES) + 8  # plus 2 per blueprint: its FLOP cost here, the one-hot
COST_LIMIT = 4.0  # a seed adding 4x the host's FLOPs or more (or none possible) reads as 4
# Contributions below this (a tenth of an accuracy point) are compressed linearly, above it
# logarithmically: see ``_symlog_contribution``.
CONTRIBUTION_UNIT = 0.001


@dataclass(frozen=True)
class SlotObservation:
    """One slot: lifecycle stage, blend, attribution and what its gates allow now."""

    stage: SeedStage  # its value ("TRAINING") is accepted and converted
    blueprint: str | None = None
    alpha: float = 0.0  # blend weight in [0, 1]
    epochs_in_stage: int = 0
    contribution: float | None = None  # Shapley value, a fraction of accuracy; None: not measured
    can_advance: bool = False
    can_prune: bool = False
    can_fossilize: bool = False
    # per blueprint (EnvObservation.blueprints' order): the training FLOPs a seed of it adds
    # here, over the bare host's (inf: it cannot grow here); () where not measured
    flop_costs: tuple[float, ...] = ()

    def cost(self, blueprint_index: int) -> float:
        """The FLOP cost of a seed of that blueprint here (0 where not measured)."""
        return self.flop_costs[blueprint_index] if self.flop_costs else 0.0

    def __post_init__(self) -> None:
        try:
            stage = SeedStage(self.stage)
        except ValueError:
            raise ValueError(
                f"unknown seed stage {self.stage!r}; expected one of {', '.join(SeedStage)}"
            ) from None
        object.__setattr__(self, "stage", stage)  # frozen: the member, whatever was passed

    @property
    def is_live(self) -> bool:
        return self.stage in LIVE_SEED_STAGES


@dataclass(frozen=True)
class EnvObservation:
    """One env after an epoch; accuracies are fractions in [0, 1], histories oldest first.

    ``acc_history`` and ``loss_history`` hold this episode's validation accuracy and loss per
    epoch, *including* the current epoch as the last element.
    """

    epoch: int
    max_epochs: int
    val_accuracy: float
    val_loss: float
    train_loss: float
    random_guess_loss: float
    acc_history: tuple[float, ...]
    loss_history: tuple[float, ...]
    slots: tuple[SlotObservation, ...]
    consecutive_panics: int = 0
    total_panics: int = 0
    rollbacks: int = 0
    host_params: int = 1
    seed_params: int = 0
    blueprints: tuple[str, ...] = ()  # the catalogue, in action order (the one-hot's order)
    flops_ratio: float = 1.0  # training FLOPs this episode / the bare host's on the same samples
    flops_budget_share: float = 0.0  # training FLOPs this episode / the bare host's whole budget

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    def live_count(self) -> int:
        return sum(slot.is_live for slot in self.slots)

    def to_vector(self) -> torch.Tensor:
        """Encode as a float32 vector of length ``obs_dim(n_slots, len(blueprints))``, every
        entry O(1)."""
        features = _global_features(self)
        for slot in self.slots:
            features.extend(_slot_features(slot))
            features.extend(_slot_cost_features(slot, self.blueprints))
        return torch.tensor(features, dtype=torch.float32)


def obs_dim(n_slots: int, n_blueprints: int = 0) -> int:
    """Length of ``EnvObservation.to_vector()`` for a host with ``n_slots`` slots and a
    catalogue of ``n_blueprints`` blueprints."""
    return GLOBAL_FEATURES + (SLOT_FEATURES + 2 * n_blueprints) * n_slots


def stack_observations(observations: Sequence[EnvObservation]) -> torch.Tensor:
    """Batch the vectors of several envs into ``[n_envs, obs_dim]``."""
    return torch.stack([obs.to_vector() for obs in observations])


def _finite(value: float, limit: float) -> float:
    """Clamp to [-limit, limit]; NaN (a diverged loss) maps to +limit, the worst case."""
    if math.isnan(value):
        return limit
    return max(-limit, min(limit, value))


def _recent_deltas(history: Sequence[float], scale: float, limit: float) -> list[float]:
    """The last ``HISTORY_DELTAS`` epoch-to-epoch changes, newest last, zero-padded in front."""
    deltas = [(b - a) * scale for a, b in zip(history[:-1], history[1:], strict=True)]
    deltas = [_finite(d, limit) for d in deltas[-HISTORY_DELTAS:]]
    return [0.0] * (HISTORY_DELTAS - len(deltas)) + deltas


def _global_features(obs: EnvObservation) -> list[float]:
    rgl = obs.random_guess_loss if obs.random_guess_loss > 0 else 1.0
    return [
        obs.epoch / max(obs.max_epochs, 1),
        _finite(obs.val_accuracy, 1.0),
        _finite(obs.val_loss / rgl, 5.0),  # 1.0 = random guessing
        _finite(obs.train_loss / rgl, 5.0),
        # Accuracy moves by a few hundredths per epoch: x10 brings the deltas near 0.1..1.
        *_recent_deltas(obs.acc_history, scale=10.0, limit=5.0),
        *_recent_deltas(obs.loss_history, scale=10.0 / rgl, limit=5.0),
        min(obs.consecutive_panics, 5) / 5.0,
        math.log1p(obs.total_panics) / 3.0,
        math.log1p(obs.rollbacks) / 3.0,
        math.log2(1.0 + obs.seed_params / max(obs.host_params, 1)),  # doublings of capacity
        # doublings of compute over the bare host so far (the compute price's argument)
        _finite(math.log2(obs.flops_ratio), 5.0) if obs.flops_ratio > 0 else 0.0,
        _finite(obs.flops_budget_share, 5.0),  # 1.0: the bare host's whole budget spent
        *_plateau_features(obs.acc_history),
    ]


def _plateau_features(history: Sequence[float]) -> list[float]:
    """Has accuracy stopped improving? The last deltas alone cannot tell: the best accuracy
    before the window may lie further back than ``HISTORY_DELTAS`` epochs.

    The best of the last ``PLATEAU_WINDOW`` epochs minus the best before them (x10, like the
    deltas; 1.0 while there is no "before" yet: still improving), and the epochs since the
    best accuracy so far was first reached (/10).
    """
    if len(history) > PLATEAU_WINDOW:
        gain = 10.0 * (max(history[-PLATEAU_WINDOW:]) - max(history[:-PLATEAU_WINDOW]))
    else:
        gain = 1.0
    best = max(history, default=0.0)
    since_best = len(history) - 1 - history.index(best) if history else 0
    return [_finite(gain, 5.0), min(since_best, 30) / 10.0]


def _symlog_contribution(value: float) -> float:
    """A contribution on a signed log scale: 0 stays 0, a tenth of a point is 0.23, one point
    0.8, ten points 1.5.

    The decisions that matter sit next to zero (is the seed worth more than nothing? than half a
    point?), where the linear feature (x10) is a few hundredths and a small network fitted to a
    handful of episodes learns no clean boundary: with this beside it, a behaviour clone
    reproduced the heuristic's op on unseen episodes clearly more often
    (tests/engine/test_kickstart.py).
    """
    return math.copysign(math.log1p(abs(value) / CONTRIBUTION_UNIT), value) / 3.0


def _slot_features(slot: SlotObservation) -> list[float]:
    one_hot = [1.0 if slot.stage is stage else 0.0 for stage in STAGES]
    measured = slot.contribution is not None
    return [
        *one_hot,
        _finite(slot.alpha, 1.0),
        min(slot.epochs_in_stage, 30) / 10.0,
        # a fraction x 10 (a tenth of the points): a seed worth a few points sits near 0.1..1
        _finite(slot.contribution * 10.0, 3.0) if measured else 0.0,
        _symlog_contribution(_finite(slot.contribution, 1.0)) if measured else 0.0,
        1.0 if measured else 0.0,  # tells "not measured" apart from "exactly zero"
        float(slot.can_advance),
        float(slot.can_prune),
        float(slot.can_fossilize),
    ]


def _slot_cost_features(slot: SlotObservation, blueprints: Sequence[str]) -> list[float]:
    """Per blueprint: what a seed of it adds here (a fraction of the host's FLOPs, capped at
    ``COST_LIMIT``; 0 where not measured), then the one-hot of the blueprint in the slot."""
    if slot.flop_costs and len(slot.flop_costs) != len(blueprints):
        raise ValueError(
            f"slot has {len(slot.flop_costs)} FLOP costs for {len(blueprints)} blueprints"
        )
    costs = [min(c, COST_LIMIT) if not math.isnan(c) else COST_LIMIT for c in slot.flop_costs]
    costs = costs or [0.0] * len(blueprints)
    return [*costs, *(1.0 if slot.blueprint == name else 0.0 for name in blueprints)]
