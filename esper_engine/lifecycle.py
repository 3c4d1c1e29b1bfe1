"""Seed lifecycle: the stages a seed passes through and the only transitions allowed between them.

DORMANT -> GERMINATED -> TRAINING -> BLENDING -> HOLDING -> FOSSILIZED (terminal)
GERMINATED | TRAINING | BLENDING | HOLDING -> PRUNED -> EMBARGOED -> RESETTING -> DORMANT
"""

from __future__ import annotations

from esper_engine.contracts import LIVE_SEED_STAGES, SeedStage

# SeedStage and LIVE_SEED_STAGES live in the contracts (telemetry carries them); re-exported here
# beside the transitions between them.
__all__ = [
    "ALLOWED_TRANSITIONS",
    "DEFAULT_MIN_PRUNE_AGE",
    "LIVE_SEED_STAGES",
    "GateError",
    "LifecycleError",
    "SeedStage",
    "check_transition",
    "is_allowed",
]

DEFAULT_MIN_PRUNE_AGE = 3  # epochs since germination before the policy may prune (SPEC 4)

ALLOWED_TRANSITIONS: dict[SeedStage, frozenset[SeedStage]] = {
    SeedStage.DORMANT: frozenset({SeedStage.GERMINATED}),
    SeedStage.GERMINATED: frozenset({SeedStage.TRAINING, SeedStage.PRUNED}),
    SeedStage.TRAINING: frozenset({SeedStage.BLENDING, SeedStage.PRUNED}),
    SeedStage.BLENDING: frozenset({SeedStage.HOLDING, SeedStage.PRUNED}),
    SeedStage.HOLDING: frozenset({SeedStage.FOSSILIZED, SeedStage.PRUNED}),
    SeedStage.FOSSILIZED: frozenset(),
    SeedStage.PRUNED: frozenset({SeedStage.EMBARGOED}),
    SeedStage.EMBARGOED: frozenset({SeedStage.RESETTING}),
    SeedStage.RESETTING: frozenset({SeedStage.DORMANT}),
}


class LifecycleError(Exception):
    """A transition the lifecycle does not allow (or a gate refused); names both stages."""

    def __init__(self, from_stage: SeedStage, to_stage: SeedStage, reason: str = "") -> None:
        self.from_stage = from_stage
        self.to_stage = to_stage
        self.reason = reason or "not an allowed transition"
        super().__init__(f"seed transition {from_stage} -> {to_stage} refused: {self.reason}")


class GateError(LifecycleError):
    """The transition is in the table but its gate is not satisfied yet."""


def is_allowed(from_stage: SeedStage, to_stage: SeedStage) -> bool:
    return to_stage in ALLOWED_TRANSITIONS[from_stage]


def check_transition(from_stage: SeedStage, to_stage: SeedStage) -> None:
    """Raise LifecycleError unless ``from_stage -> to_stage`` is in the table."""
    if not is_allowed(from_stage, to_stage):
        raise LifecycleError(from_stage, to_stage)
