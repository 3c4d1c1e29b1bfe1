"""SeedSlot: one place in the host where a seed can grow, with its lifecycle, gates and blending.

Forward semantics (``h`` is the host activation arriving at the slot):
- no seed, or GERMINATED: identity (a germinated seed has not trained yet);
- TRAINING: straight-through, ``h + (s - s.detach())`` with ``s = seed(h.detach())``: the output
  equals the host's exactly while the seed gets the gradient it would get fully blended. An
  incubating seed whose output is not finite is replaced by ``d`` (so the host's forward stays
  finite) and fails its health gate: the trainer prunes it (initiator ``gate``);
- BLENDING / HOLDING: ``h + alpha * (seed(d) - d)`` with ``d = h.detach()``: the value of
  ``lerp(h, seed(h), alpha)``, but the host's own path keeps its identity gradient at every alpha
  (``lerp(h, seed(d), alpha)`` would scale the gradient of every host stage above the slot by
  ``1 - alpha``, to exactly 0 at alpha = 1: the host stopped learning while a seed blended);
- FOSSILIZED: ``seed(h)``, fully on and reading ``h`` directly: it is part of the host now, so the
  host's gradient flows through it and it keeps learning with the host (a seed frozen after its
  few epochs of probation held the host back: in the growth study freezing cost 1-4 points);
- an alpha override (float or per-sample ``[B]`` tensor) forces that blend with weight ``a``
  for TRAINING/BLENDING/HOLDING seeds; fossilized seeds ignore it, and a germinated seed (still
  exactly the identity) returns ``h``, which is the same value.

Timing (each ``end_epoch`` call is one epoch boundary):
- GERMINATED -> TRAINING at the first boundary after germination;
- TRAINING -> BLENDING (``advance``) once ``min_training_epochs`` boundaries passed in TRAINING and
  the seed was healthy in the current (or, if none recorded yet, the last) epoch: finite outputs
  and finite gradients in at least half of its steps (fp16 overflows now and then);
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

from esper_engine.blueprints import SeedSite, get_blueprint
from esper_engine.contracts import Initiator, SeedTransition, SlotState
from esper_engine.lifecycle import (
    DEFAULT_MIN_PRUNE_AGE,
    LIVE_SEED_STAGES,
    GateError,
    LifecycleError,
    SeedStage,
    check_transition,
    is_allowed,
)

SCHEDULES = ("linear", "cosine")
# Who may prune a seed before its minimum age: safety mechanisms, not the policy.
_PRUNE_OVERRIDES = frozenset({Initiator.GATE, Initiator.GOVERNOR, Initiator.OPERATOR})
DEFAULT_MIN_TRAINING_EPOCHS = 1  # epochs in TRAINING before the seed may start blending
DEFAULT_EMBARGO_EPOCHS = 2  # epochs a pruned slot stays embargoed before it can be reused
# A seed is healthy in an epoch when its gradients were finite in at least this share of steps.
HEALTHY_GRAD_SHARE = 0.5

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
        embargo_epochs: int = DEFAULT_EMBARGO_EPOCHS,
        min_training_epochs: int = DEFAULT_MIN_TRAINING_EPOCHS,
        min_prune_age: int = DEFAULT_MIN_PRUNE_AGE,
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
        # the latest Shapley value, a fraction of accuracy (set by the trainer's attribution)
        self.contribution: float | None = None
        self.forced_alpha: float | None = None  # set by MorphogeneticModel.force_alpha
        self.schedule = "linear"
        self.blend_epochs = 3
        self._ramp_step = 0
        # Health of the current epoch, kept as device tensors so the batch loop never
        # synchronises (resolved once per epoch): steps recorded, steps whose seed gradients were
        # not finite, and whether any incubating output was not finite.
        self._steps = 0
        self._bad_grad_steps: Tensor | None = None
        self._bad_output: Tensor | None = None
        self._healthy_last: bool | None = None  # the previous epoch's verdict
        # Set by a training forward in TRAINING: this step's output was not finite and was
        # dropped; the training step zeroes the seed's gradients of that step and clears it.
        self.step_dropped: Tensor | None = None

    # --- queries ------------------------------------------------------------------------------

    @property
    def is_live(self) -> bool:
        return self.stage in LIVE_SEED_STAGES

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

    @property
    def reads_block_input(self) -> bool:
        """The seed (a ``widen``) reads the input of the block before the slot as well."""
        return self.seed is not None and getattr(self.seed, "reads_block_input", False)

    @property
    def lr_source(self) -> str:
        """``"host"`` when the seed's optimizer runs at the host's lr (growth operators)."""
        if self.blueprint is None:
            return "seed"
        return get_blueprint(self.host_kind, self.blueprint).lr_source

    def state(self) -> SlotState:
        return SlotState(
            slot_id=self.slot_id,
            stage=self.stage,
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
        healthy = self.healthy()
        if healthy is None:
            return False, "no seed gradient recorded yet"
        if not healthy:
            return False, "non-finite seed outputs or gradients"
        return True, "ok"

    def can_prune(self, initiator: Initiator | str = Initiator.POLICY) -> tuple[bool, str]:
        if not self.is_live:
            return False, f"nothing to prune in {self.stage}"
        if _initiator(initiator) not in _PRUNE_OVERRIDES and self.age < self.min_prune_age:
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
        initiator: Initiator | str = Initiator.POLICY,
        *,
        device: torch.device | str | None = None,
        blend_epochs: int = 3,
        schedule: str = "linear",
        site: SeedSite | None = None,
    ) -> None:
        """Plant a new seed (exactly the identity) built from ``blueprint``; the growth operators
        need ``site`` (the model passes the host block the slot follows)."""
        initiator = _initiator(initiator)
        self._require(self.can_germinate(), SeedStage.GERMINATED)
        _check_schedule(schedule, blend_epochs)
        seed = get_blueprint(self.host_kind, blueprint).build(site or SeedSite(self.dim))
        self.seed = seed if device is None else seed.to(device)
        self.blueprint = blueprint
        self.alpha = 0.0
        self.age = 0
        self.contribution = None
        self.schedule = schedule
        self.blend_epochs = blend_epochs
        self._transition(SeedStage.GERMINATED, initiator)

    def begin_training(self) -> None:
        """GERMINATED -> TRAINING now rather than at the next boundary (initiator gate): a seed
        planted before an episode's first epoch (``lifecycle.plant``) trains in that epoch."""
        if self.stage is not SeedStage.GERMINATED:
            raise LifecycleError(self.stage, SeedStage.TRAINING, "begin_training needs GERMINATED")
        self._transition(SeedStage.TRAINING, Initiator.GATE)
        self._healthy_last = None

    def advance(
        self, initiator: Initiator | str = Initiator.POLICY, *, blend_epochs: int | None = None
    ) -> None:
        """TRAINING -> BLENDING: start ramping alpha up to 1."""
        initiator = _initiator(initiator)
        self._require(self.can_advance(), self._advance_target())
        if blend_epochs is not None:
            _check_schedule(self.schedule, blend_epochs)
            self.blend_epochs = blend_epochs
        self._transition(SeedStage.BLENDING, initiator)
        self._ramp_step = 1
        self.alpha = self._ramp_alpha()

    def prune(self, initiator: Initiator | str = Initiator.POLICY) -> None:
        """Remove the seed: its module (and state-dict keys) are deleted at once."""
        initiator = _initiator(initiator)
        self._require(self.can_prune(initiator), SeedStage.PRUNED)
        self._transition(SeedStage.PRUNED, initiator)
        self.seed = None
        self.alpha = 0.0
        self.contribution = None
        self._reset_health()
        self._healthy_last = None

    def fossilize(self, initiator: Initiator | str = Initiator.POLICY) -> None:
        """HOLDING -> FOSSILIZED: the seed becomes a permanent part of the host, still learning."""
        initiator = _initiator(initiator)
        self._require(self.can_fossilize(), SeedStage.FOSSILIZED)
        self._transition(SeedStage.FOSSILIZED, initiator)

    def record_seed_grad_health(self, finite: bool | Tensor) -> None:
        """One training step's verdict on this seed's gradients (a 0-dim bool tensor: no sync)."""
        finite = torch.as_tensor(finite).detach().to(torch.bool)
        bad = (~finite).to(torch.int32)
        self._bad_grad_steps = bad if self._bad_grad_steps is None else self._bad_grad_steps + bad
        self._steps += 1

    def healthy(self) -> bool | None:
        """This epoch's health so far, else the last epoch's; None when neither was recorded.

        Healthy: every incubating output finite, and finite gradients in at least
        ``HEALTHY_GRAD_SHARE`` of the steps (fp16 overflows now and then). Reading it syncs.
        """
        now = self._health_now()
        return self._healthy_last if now is None else now

    def _health_now(self) -> bool | None:
        if self._steps == 0 and self._bad_output is None:
            return None
        if self._bad_output is not None and bool(self._bad_output):
            return False
        if self._bad_grad_steps is None:
            return True
        return int(self._bad_grad_steps) <= (1.0 - HEALTHY_GRAD_SHARE) * self._steps

    def _reset_health(self) -> None:
        self._steps = 0
        self._bad_grad_steps = self._bad_output = None

    def end_epoch(self) -> None:
        """An epoch boundary: age counters, alpha schedule and the automatic transitions."""
        self.epochs_in_stage += 1
        if self.is_live:
            self.age += 1
        self._healthy_last = self._health_now()
        self._reset_health()
        if self.stage is SeedStage.GERMINATED:
            self._transition(SeedStage.TRAINING, Initiator.GATE)
            self._healthy_last = None
        elif self.stage is SeedStage.BLENDING:
            self._tick_ramp()
        elif self.stage is SeedStage.PRUNED:
            self._transition(SeedStage.EMBARGOED, Initiator.GATE)
        elif self.stage is SeedStage.EMBARGOED and self.epochs_in_stage >= self.embargo_epochs:
            self._transition(SeedStage.RESETTING, Initiator.GATE)
            self._transition(SeedStage.DORMANT, Initiator.GATE)
            self.blueprint = None
            self.age = 0

    # --- checkpoints --------------------------------------------------------------------------

    def lifecycle_state(self) -> dict[str, object]:
        """Everything but the seed's weights, as plain values (the model's state dict has those).

        Taken at an epoch boundary, where the epoch's health tensors have just been resolved.
        """
        return {
            "has_seed": self.seed is not None,
            "blueprint": self.blueprint,
            "stage": str(self.stage),
            "alpha": float(self.alpha),
            "epochs_in_stage": self.epochs_in_stage,
            "age": self.age,
            "contribution": self.contribution,
            "schedule": self.schedule,
            "blend_epochs": self.blend_epochs,
            "ramp_step": self._ramp_step,
            "healthy_last": self._healthy_last,
        }

    def load_lifecycle_state(
        self, state: dict, device: torch.device | str, site: SeedSite | None = None
    ) -> None:
        """Restore ``lifecycle_state``; a seed module is rebuilt empty (the caller loads its
        weights) without drawing from the global random stream."""
        self.seed = None
        if state["has_seed"]:
            blueprint = get_blueprint(self.host_kind, state["blueprint"])
            with torch.random.fork_rng(devices=[]):
                self.seed = blueprint.build(site or SeedSite(self.dim))
            self.seed.to(device)
        self.blueprint = state["blueprint"]
        self.stage = SeedStage(state["stage"])
        self.alpha = float(state["alpha"])
        self.epochs_in_stage = int(state["epochs_in_stage"])
        self.age = int(state["age"])
        self.contribution = state["contribution"]
        self.schedule = state["schedule"]
        self.blend_epochs = int(state["blend_epochs"])
        self._ramp_step = int(state["ramp_step"])
        self._healthy_last = state["healthy_last"]
        self.forced_alpha = None
        self.step_dropped = None
        self._reset_health()

    # --- forward ------------------------------------------------------------------------------

    def forward(
        self, h: Tensor, alpha: Alpha | None = None, block_input: Tensor | None = None
    ) -> Tensor:
        """``block_input``: the input of the block before the slot, for a seed that
        ``reads_block_input`` (a ``widen``: its new units read what the block reads)."""
        seed = self.seed
        if seed is None or self.stage is SeedStage.GERMINATED:
            return h  # an untrained germinated seed is the identity: skip its compute
        extra: tuple[Tensor, ...] = ()
        if getattr(seed, "reads_block_input", False):
            if block_input is None:
                raise ValueError(f"the {self.blueprint} seed in {self.slot_id} needs block_input")
            extra = (block_input,)
        if self.stage is SeedStage.FOSSILIZED:
            return seed(h, *extra).to(h.dtype)
        if alpha is None:
            alpha = self.forced_alpha
        d = h.detach()
        # Cast back to h's dtype: under autocast a seed's norm layer may return float32.
        s = seed(d, *(u.detach() for u in extra)).to(h.dtype)
        if alpha is not None:
            return h + _weight(alpha, h) * (s - d)
        if self.stage is SeedStage.TRAINING:
            return h + self._incubate(s, d)
        return h + self.alpha * (s - d)

    def _incubate(self, s: Tensor, d: Tensor) -> Tensor:
        """The straight-through term (value 0): a non-finite output is dropped and recorded."""
        finite = torch.isfinite(s).all()
        if self.training and torch.is_grad_enabled():  # a training step, not an evaluation
            bad = ~finite
            self._bad_output = bad if self._bad_output is None else self._bad_output | bad
            self.step_dropped = bad
        s = torch.where(finite, s, d)  # where() routes no gradient to the dropped branch
        return s - s.detach()

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

    def _transition(self, to: SeedStage, initiator: Initiator) -> None:
        """Change stage and emit one SeedTransition (alpha and epochs describe the stage left)."""
        check_transition(self.stage, to)
        event = SeedTransition(
            slot_id=self.slot_id,
            blueprint=self.blueprint,
            from_stage=self.stage,
            to_stage=to,
            alpha=float(self.alpha),
            epochs_in_stage=self.epochs_in_stage,
            initiator=initiator,
        )
        self.stage = to
        self.epochs_in_stage = 0
        if self.on_transition is not None:
            self.on_transition(event)

    def _tick_ramp(self) -> None:
        if self._ramp_step >= self.blend_epochs:
            self._transition(SeedStage.HOLDING, Initiator.GATE)
            return
        self._ramp_step += 1
        self.alpha = self._ramp_alpha()

    def _ramp_alpha(self) -> float:
        t = min(1.0, self._ramp_step / self.blend_epochs)
        if t >= 1.0:
            return 1.0  # land exactly on the target
        return t if self.schedule == "linear" else (1.0 - math.cos(math.pi * t)) / 2.0


def _weight(alpha: Alpha, h: Tensor) -> float | Tensor:
    """A float, or a per-sample ``[B]`` tensor shaped to broadcast over ``h``."""
    if isinstance(alpha, Tensor):
        if alpha.dim() != 1 or alpha.shape[0] != h.shape[0]:
            raise ValueError(
                f"per-sample alpha must have shape [{h.shape[0]}], got {list(alpha.shape)}"
            )
        return alpha.to(device=h.device, dtype=h.dtype).view(-1, *([1] * (h.dim() - 1)))
    return float(alpha)


def _initiator(initiator: Initiator | str) -> Initiator:
    """The member for ``initiator`` (callers may pass its value); ValueError when unknown."""
    try:
        return Initiator(initiator)
    except ValueError:
        raise ValueError(
            f"unknown initiator {initiator!r}; expected one of {', '.join(Initiator)}"
        ) from None


def _check_schedule(schedule: str, blend_epochs: int) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown alpha schedule {schedule!r}; expected linear or cosine")
    if blend_epochs < 1:
        raise ValueError(f"blend_epochs must be >= 1, got {blend_epochs}")
