"""SeedSlot: one place in the host where a seed can grow, with its lifecycle, gates and blending.

Forward semantics (``h`` is the host activation arriving at the slot):
- no seed, or GERMINATED: identity (a germinated seed has not trained yet);
- TRAINING: straight-through, ``h + (s - s.detach())`` with ``s = seed(h.detach())``: the output
  equals the host's exactly while the seed gets the gradient it would get fully blended;
- BLENDING / HOLDING: ``lerp(h, seed(h.detach()), alpha)``;
- FOSSILIZED: ``seed(h)``, fully on and reading ``h`` directly: it is part of the host now, so the
  host's gradient flows through it and it keeps learning with the host (a seed frozen after its
  few epochs of probation held the host back: in the growth study freezing cost 1-4 points);
- an alpha override (float or per-sample ``[B]`` tensor) forces ``lerp(h, seed(h.detach()), a)``
  for TRAINING/BLENDING/HOLDING seeds; fossilized seeds ignore it, and a germinated seed (still
  exactly the identity) returns ``h``, which is the same value.

Timing (each ``end_epoch`` call is one epoch boundary):
- GERMINATED -> TRAINING at the first boundary after germination;
- TRAINING -> BLENDING (``advance``) once ``min_training_epochs`` boundaries passed in TRAINING and
  the seed's gradients were finite in the current (or, if none recorded yet, the last) epoch;
- BLENDING sets alpha to the schedule's first step at once, steps it at each boundary, and moves to
  HOLDING at the boundary after alpha reached its target (so BLENDING lasts ``blend_epochs``);
- PRUNED -> EMBARGOED at the next boundary; after ``embargo_epochs`` more boundaries
  EMBARGOED -> RESETTING -> DORMANT.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from esper_engine.blueprints import get_blueprint
from esper_engine.contracts import SeedTransition, SlotState
from esper_engine.lifecycle import (
    LIVE_STAGES,
    GateError,
    LifecycleError,
    SeedStage,
    check_transition,
    is_allowed,
)

INITIATORS = ("policy", "gate", "governor", "operator")
SCHEDULES = ("linear", "cosine")
# Who may prune a seed before its minimum age: safety mechanisms, not the policy.
_PRUNE_OVERRIDES = ("governor", "operator")

Alpha = float | Tensor
TransitionCallback = Callable[[SeedTransition], None]


class SeedSlot(nn.Module):
    """At most one seed, walked through the lifecycle; every step emits one SeedTransition."""

    def __init__(
        self,
        slot_id: str,
        dim: int,
        host_kind: str,
        *,
        embargo_epochs: int = 2,
        min_training_epochs: int = 2,
        min_prune_age: int = 1,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        super().__init__()
        if embargo_epochs < 1:
            raise ValueError(f"embargo_epochs must be >= 1, got {embargo_epochs}")
        self.slot_id = slot_id
        self.dim = dim
        self.host_kind = host_kind
        self.embargo_epochs = embargo_epochs
        self.min_training_epochs = min_training_epochs
        self.min_prune_age = min_prune_age
        self.on_transition = on_transition
        self.register_module("seed", None)
        self.blueprint: str | None = None
        self.stage = SeedStage.DORMANT
        self.alpha = 0.0
        self.epochs_in_stage = 0
        self.age = 0  # epoch boundaries since germination
        self.contribution: float | None = None  # set by the trainer from Shapley attribution
        self.forced_alpha: float | None = None  # set by MorphogeneticModel.force_alpha
        self.schedule = "linear"
        self.blend_epochs = 3
        self._ramp_from = 0.0
        self._ramp_to = 1.0
        self._ramp_step = 0
        # Gradient health: None = nothing recorded. Kept lazily as a tensor so the trainer never
        # synchronises per batch; resolved to a bool once per epoch.
        self._grad_now: bool | Tensor | None = None
        self._grad_last: bool | None = None

    # --- queries ------------------------------------------------------------------------------

    @property
    def is_live(self) -> bool:
        return self.stage in LIVE_STAGES

    @property
    def is_active(self) -> bool:
        """Contributes to the output with a blend weight: what Shapley attributes."""
        return self.stage in (SeedStage.BLENDING, SeedStage.HOLDING) and self.alpha > 0

    def effective_alpha(self) -> float:
        """The blend weight an unforced forward applies (0 in TRAINING: STE output is the host)."""
        if self.stage is SeedStage.FOSSILIZED:
            return 1.0
        if self.forced_alpha is not None and self.is_live:
            return self.forced_alpha
        if self.stage in (SeedStage.BLENDING, SeedStage.HOLDING):
            return self.alpha
        return 0.0

    def param_count(self) -> int:
        return 0 if self.seed is None else sum(p.numel() for p in self.seed.parameters())

    def state(self) -> SlotState:
        return SlotState(
            slot_id=self.slot_id,
            stage=self.stage.value,
            blueprint=self.blueprint,
            alpha=float(self.alpha),
            epochs_in_stage=self.epochs_in_stage,
            params=self.param_count(),
        )

    # --- gates (ok, reason): used by the actions below and by the policy's action masks ---------

    def can_germinate(self) -> tuple[bool, str]:
        if self.stage is not SeedStage.DORMANT:
            return False, f"slot {self.slot_id} is {self.stage}, not DORMANT"
        return True, "ok"

    def can_advance(self) -> tuple[bool, str]:
        if self.stage is SeedStage.GERMINATED:
            return False, "GERMINATED moves to TRAINING automatically at the end of the epoch"
        if self.stage is SeedStage.BLENDING:
            return False, "BLENDING moves to HOLDING automatically when alpha reaches its target"
        if self.stage is not SeedStage.TRAINING:
            return False, f"nothing to advance in {self.stage}"
        if self.epochs_in_stage < self.min_training_epochs:
            return False, (
                f"{self.epochs_in_stage} epochs in TRAINING, need {self.min_training_epochs}"
            )
        healthy = self._grad_healthy()
        if healthy is None:
            return False, "no seed gradient recorded yet"
        if not healthy:
            return False, "non-finite seed gradients"
        return True, "ok"

    def can_ramp_down(self) -> tuple[bool, str]:
        if self.stage is not SeedStage.HOLDING:
            return False, f"ramp-down starts from HOLDING, slot is {self.stage}"
        if self.alpha <= 0:
            return False, "alpha is already 0"
        return True, "ok"

    def can_prune(self, initiator: str = "policy") -> tuple[bool, str]:
        if not self.is_live:
            return False, f"nothing to prune in {self.stage}"
        if initiator not in _PRUNE_OVERRIDES and self.age < self.min_prune_age:
            return False, f"seed age {self.age} epochs, minimum {self.min_prune_age} to prune"
        return True, "ok"

    def can_fossilize(self) -> tuple[bool, str]:
        if self.stage is not SeedStage.HOLDING:
            return False, f"fossilize needs HOLDING, slot is {self.stage}"
        if self.alpha < 1.0:
            return False, f"alpha {self.alpha:.2f} is below 1 (ramped down)"
        if self.contribution is None:
            return False, "no counterfactual contribution measured"
        if not self.contribution > 0:
            return False, f"contribution {self.contribution:.4f} is not positive"
        return True, "ok"

    # --- actions ------------------------------------------------------------------------------

    def germinate(
        self,
        blueprint: str,
        initiator: str = "policy",
        *,
        device: torch.device | str | None = None,
        blend_epochs: int = 3,
        schedule: str = "linear",
    ) -> None:
        """Plant a new seed (exactly the identity) built from ``blueprint``."""
        _check_initiator(initiator)
        self._require(self.can_germinate(), SeedStage.GERMINATED)
        _check_schedule(schedule, blend_epochs)
        seed = get_blueprint(self.host_kind, blueprint).build(self.dim)
        self.seed = seed if device is None else seed.to(device)
        self.blueprint = blueprint
        self.alpha = 0.0
        self.age = 0
        self.contribution = None
        self.schedule = schedule
        self.blend_epochs = blend_epochs
        self._transition(SeedStage.GERMINATED, initiator)

    def advance(self, initiator: str = "policy", *, blend_epochs: int | None = None) -> None:
        """TRAINING -> BLENDING: start ramping alpha up to 1."""
        _check_initiator(initiator)
        self._require(self.can_advance(), self._advance_target())
        if blend_epochs is not None:
            _check_schedule(self.schedule, blend_epochs)
            self.blend_epochs = blend_epochs
        self._transition(SeedStage.BLENDING, initiator)
        self._start_ramp(1.0)

    def ramp_down(self, initiator: str = "policy", *, blend_epochs: int | None = None) -> None:
        """HOLDING -> BLENDING with alpha ramping to 0, so a later prune does not jolt the host."""
        _check_initiator(initiator)
        self._require(self.can_ramp_down(), SeedStage.BLENDING)
        if blend_epochs is not None:
            _check_schedule(self.schedule, blend_epochs)
            self.blend_epochs = blend_epochs
        self._transition(SeedStage.BLENDING, initiator)
        self._start_ramp(0.0)

    def prune(self, initiator: str = "policy") -> None:
        """Remove the seed: its module (and state-dict keys) are deleted at once."""
        _check_initiator(initiator)
        self._require(self.can_prune(initiator), SeedStage.PRUNED)
        self._transition(SeedStage.PRUNED, initiator)
        self.seed = None
        self.alpha = 0.0
        self.contribution = None
        self._grad_now = self._grad_last = None

    def fossilize(self, initiator: str = "policy") -> None:
        """HOLDING -> FOSSILIZED: the seed becomes a permanent part of the host, still learning."""
        _check_initiator(initiator)
        self._require(self.can_fossilize(), SeedStage.FOSSILIZED)
        self._transition(SeedStage.FOSSILIZED, initiator)

    def record_seed_grad_health(self, finite: bool | Tensor) -> None:
        """The trainer reports if this batch's seed gradients were finite (a tensor is fine)."""
        if isinstance(finite, Tensor):
            finite = finite.detach().to(torch.bool)
        self._grad_now = finite if self._grad_now is None else self._grad_now & finite

    def end_epoch(self) -> None:
        """An epoch boundary: age counters, alpha schedule and the automatic transitions."""
        self.epochs_in_stage += 1
        if self.is_live:
            self.age += 1
        self._grad_last = None if self._grad_now is None else bool(self._grad_now)
        self._grad_now = None
        if self.stage is SeedStage.GERMINATED:
            self._transition(SeedStage.TRAINING, "gate")
            self._grad_last = None
        elif self.stage is SeedStage.BLENDING:
            self._tick_ramp()
        elif self.stage is SeedStage.PRUNED:
            self._transition(SeedStage.EMBARGOED, "gate")
        elif self.stage is SeedStage.EMBARGOED and self.epochs_in_stage >= self.embargo_epochs:
            self._transition(SeedStage.RESETTING, "gate")
            self._transition(SeedStage.DORMANT, "gate")
            self.blueprint = None
            self.age = 0

    # --- forward ------------------------------------------------------------------------------

    def forward(self, h: Tensor, alpha: Alpha | None = None) -> Tensor:
        seed = self.seed
        if seed is None or self.stage is SeedStage.GERMINATED:
            return h  # an untrained germinated seed is the identity: skip its compute
        if self.stage is SeedStage.FOSSILIZED:
            return seed(h).to(h.dtype)
        if alpha is None:
            alpha = self.forced_alpha
        # Cast back to h's dtype: under autocast a seed's norm layer may return float32.
        s = seed(h.detach()).to(h.dtype)
        if alpha is not None:
            return torch.lerp(h, s, _weight(alpha, h))
        if self.stage is SeedStage.TRAINING:
            return h + (s - s.detach())
        return torch.lerp(h, s, self.alpha)

    # --- internals ----------------------------------------------------------------------------

    def _require(self, gate: tuple[bool, str], to: SeedStage) -> None:
        ok, reason = gate
        if ok:
            return
        if is_allowed(self.stage, to):
            raise GateError(self.stage, to, reason)
        raise LifecycleError(self.stage, to, reason)

    def _advance_target(self) -> SeedStage:
        if self.stage is SeedStage.GERMINATED:
            return SeedStage.TRAINING
        if self.stage is SeedStage.BLENDING:
            return SeedStage.HOLDING
        return SeedStage.BLENDING

    def _transition(self, to: SeedStage, initiator: str) -> None:
        """Change stage and emit one SeedTransition (alpha and epochs describe the stage left)."""
        check_transition(self.stage, to)
        event = SeedTransition(
            slot_id=self.slot_id,
            blueprint=self.blueprint,
            from_stage=self.stage.value,
            to_stage=to.value,
            alpha=float(self.alpha),
            epochs_in_stage=self.epochs_in_stage,
            initiator=initiator,
        )
        self.stage = to
        self.epochs_in_stage = 0
        if self.on_transition is not None:
            self.on_transition(event)

    def _start_ramp(self, target: float) -> None:
        self._ramp_from = self.alpha
        self._ramp_to = target
        self._ramp_step = 1
        self.alpha = self._ramp_alpha()

    def _tick_ramp(self) -> None:
        if self._ramp_step >= self.blend_epochs:
            self._transition(SeedStage.HOLDING, "gate")
            return
        self._ramp_step += 1
        self.alpha = self._ramp_alpha()

    def _ramp_alpha(self) -> float:
        t = min(1.0, self._ramp_step / self.blend_epochs)
        if t >= 1.0:
            return self._ramp_to  # land exactly on the target
        shape = t if self.schedule == "linear" else (1.0 - math.cos(math.pi * t)) / 2.0
        return self._ramp_from + (self._ramp_to - self._ramp_from) * shape

    def _grad_healthy(self) -> bool | None:
        if self._grad_now is not None:
            return bool(self._grad_now)
        return self._grad_last


def _weight(alpha: Alpha, h: Tensor) -> float | Tensor:
    """A float, or a per-sample ``[B]`` tensor shaped to broadcast over ``h``."""
    if isinstance(alpha, Tensor):
        if alpha.dim() != 1 or alpha.shape[0] != h.shape[0]:
            raise ValueError(
                f"per-sample alpha must have shape [{h.shape[0]}], got {list(alpha.shape)}"
            )
        return alpha.to(device=h.device, dtype=h.dtype).view(-1, *([1] * (h.dim() - 1)))
    return float(alpha)


def _check_initiator(initiator: str) -> None:
    if initiator not in INITIATORS:
        raise ValueError(
            f"unknown initiator {initiator!r}; expected one of {', '.join(INITIATORS)}"
        )


def _check_schedule(schedule: str, blend_epochs: int) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown alpha schedule {schedule!r}; expected linear or cosine")
    if blend_epochs < 1:
        raise ValueError(f"blend_epochs must be >= 1, got {blend_epochs}")
