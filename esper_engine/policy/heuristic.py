"""The baseline controller: grow a seed when accuracy plateaus, keep what helps, cut what hurts.

Stateless: every decision is a function of the observation alone, so rollbacks and new episodes
need no reset. Every action it returns is legal under ``action_masks`` (it consults the same
rules), which the tests check over many random observations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from esper_engine.config import HeuristicConfig
from esper_engine.contracts import Op, SeedStage
from esper_engine.policy.actions import Action, legal_in_slot
from esper_engine.policy.observation import EnvObservation, SlotObservation

CNN_PREFERENCE = HeuristicConfig().cnn_preference
TRANSFORMER_PREFERENCE = HeuristicConfig().transformer_preference
# Stages a slot can be in while the episode's early seeds are still going in (nothing judged yet).
_EARLY_STAGES = frozenset({SeedStage.DORMANT, SeedStage.GERMINATED, SeedStage.TRAINING})


def plateaued(history: Sequence[float], window: int, delta: float) -> bool:
    """True when the best of the last ``window`` values beats the best before them by <= delta.

    Comparing bests over a window (not single epochs) smooths the +-0.1 epoch-to-epoch swings
    of validation accuracy, so one lucky or unlucky epoch neither triggers nor blocks growth.
    """
    if len(history) <= window:
        return False
    return max(history[-window:]) <= max(history[:-window]) + delta


class HeuristicPolicy:
    """Germinate on plateau, advance through gates, prune losers, fossilize clear winners."""

    def __init__(
        self,
        n_slots: int,
        blueprints: Sequence[str],
        config: HeuristicConfig | None = None,
        *,
        preference: Sequence[str] | None = None,
    ) -> None:
        """The rules are ``config``'s (``HeuristicConfig``, which documents each); thresholds
        are fractions of accuracy, the unit of Shapley values and accuracies. ``preference``:
        the blueprints to germinate, the first available wins (default: the CNN's list)."""
        if not blueprints:
            raise ValueError("HeuristicPolicy needs at least one blueprint")
        self.config = config or HeuristicConfig()
        self.n_slots = n_slots
        self.blueprints = tuple(blueprints)
        chosen = self.config.cnn_preference if preference is None else preference
        self.blueprint_index = self._preferred_blueprint(chosen)

    def _preferred_blueprint(self, preference: Sequence[str]) -> int:
        for name in preference:
            if name in self.blueprints:
                return self.blueprints.index(name)
        return 0  # none of the preferred kinds exists for this host: take the first

    def act(self, obs: EnvObservation) -> Action:
        """One legal action for this epoch, in priority order: cut, keep, advance, grow, wait."""
        if obs.n_slots != self.n_slots:
            raise ValueError(f"observation has {obs.n_slots} slots, policy expects {self.n_slots}")
        for choose in (self._prune, self._fossilize, self._advance, self._germinate):
            action = choose(obs)
            if action is not None:
                return action
        return Action(Op.WAIT)

    def _first(
        self, obs: EnvObservation, op: Op, wanted: Callable[[SlotObservation], bool]
    ) -> Action | None:
        """The shallowest slot where ``op`` is legal and ``wanted(slot)`` holds."""
        for index, slot in enumerate(obs.slots):
            if legal_in_slot(op, slot) and wanted(slot):
                return Action(op, index)
        return None

    def _prune(self, obs: EnvObservation) -> Action | None:
        return self._first(obs, Op.PRUNE, self._should_prune)

    def _should_prune(self, slot: SlotObservation) -> bool:
        if slot.contribution is None:
            return False  # never judged: TRAINING seeds are not attributed (alpha is 0)
        if (
            slot.stage is SeedStage.BLENDING
            and slot.epochs_in_stage < self.config.min_blending_epochs
        ):
            return False  # too young: a seed at low alpha has barely had a chance to help
        if slot.contribution < self.config.prune_threshold:
            return True
        return (
            slot.stage is SeedStage.HOLDING
            and slot.epochs_in_stage >= self.config.holding_patience
            and slot.contribution <= self.config.fossilize_threshold
        )

    def _fossilize(self, obs: EnvObservation) -> Action | None:
        return self._first(
            obs,
            Op.FOSSILIZE,
            lambda s: (
                s.contribution is not None and s.contribution > self.config.fossilize_threshold
            ),
        )

    def _early_seed_due(self, obs: EnvObservation) -> bool:
        """The episode's first ``max_live`` seeds go in one per epoch from its start, not on a
        plateau.

        The default host is small by design and the episode's budget is fixed; a seed planted
        early has the most epochs to learn and blend. In the growth study (bench/growth.py) two
        seeds from the start ended clearly above one, and one from the start clearly above one
        planted on the plateau, which short episodes reach only near their end.
        """
        return (
            self.config.grow_from_start
            and obs.epoch < self.config.max_live
            and all(slot.stage in _EARLY_STAGES for slot in obs.slots)
        )

    def _late_seed_due(self, obs: EnvObservation) -> bool:
        """Later seeds answer a plateau, and only while one can still be blended in and judged.

        The early seeds are exempt from ``min_epochs_left``: in a short episode (the 4-epoch
        smoke run) they are the only ones that can grow at all.
        """
        if obs.max_epochs - 1 - obs.epoch < self.config.min_epochs_left:
            return False
        return plateaued(obs.acc_history, self.config.plateau_window, self.config.plateau_delta)

    def _advance(self, obs: EnvObservation) -> Action | None:
        # HOLDING is left alone: leaving it is FOSSILIZE or PRUNE, which need the contribution.
        return self._first(obs, Op.ADVANCE, lambda s: s.stage is not SeedStage.HOLDING)

    def _germinate(self, obs: EnvObservation) -> Action | None:
        if obs.live_count() >= self.config.max_live:
            return None
        if not (self._early_seed_due(obs) or self._late_seed_due(obs)):
            return None
        if self.config.cost_aware:
            return self._cheapest_germination(obs)
        action = self._first(obs, Op.GERMINATE, lambda s: True)
        if action is None:
            return None
        return Action(Op.GERMINATE, action.slot_index, self.blueprint_index)

    def _cheapest_germination(self, obs: EnvObservation) -> Action | None:
        """Cost-aware: the legal slot where the chosen blueprint adds the fewest training FLOPs
        (ties: the shallowest); a slot where it cannot grow (infinite cost) is never chosen."""
        legal = [
            (slot.cost(self.blueprint_index), index)
            for index, slot in enumerate(obs.slots)
            if legal_in_slot(Op.GERMINATE, slot) and math.isfinite(slot.cost(self.blueprint_index))
        ]
        if not legal:
            return None
        return Action(Op.GERMINATE, min(legal)[1], self.blueprint_index)
