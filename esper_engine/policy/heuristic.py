"""The baseline controller: grow a seed when accuracy plateaus, keep what helps, cut what hurts.

Stateless: every decision is a function of the observation alone, so rollbacks and new episodes
need no reset. Every action it returns is legal under ``action_masks`` (it consults the same
rules), which the tests check over many random observations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from esper_engine.contracts import Op, SeedStage
from esper_engine.policy.actions import Action, legal_in_slot
from esper_engine.policy.observation import EnvObservation, SlotObservation

CNN_PREFERENCE = ("conv_light", "depthwise", "attention", "conv_heavy", "norm")
TRANSFORMER_PREFERENCE = ("lora", "mlp_small", "attention", "norm")
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
        *,
        preference: Sequence[str] = CNN_PREFERENCE,
        plateau_window: int = 3,
        plateau_delta: float = 0.005,
        fossilize_threshold: float = 0.005,
        prune_threshold: float = 0.0,
        min_prune_age: int = 2,
        holding_patience: int = 3,
        max_live: int = 2,
        grow_from_start: bool = True,
        min_epochs_left: int = 5,
    ) -> None:
        """Every threshold is a fraction of accuracy, the unit of Shapley values and accuracies:
        ``fossilize_threshold`` 0.005 is half an accuracy point.

        ``holding_patience``: epochs a HOLDING seed may stay below ``fossilize_threshold``
        before it is pruned, so a lukewarm seed cannot block its slot (and ``max_live``) forever.
        ``min_epochs_left``: no germination on a plateau with fewer epochs left in the episode:
        a seed spends one germinated, one training and three blending before it can be judged,
        and one planted later only costs compute and perturbs the host's gradients.
        """
        if not blueprints:
            raise ValueError("HeuristicPolicy needs at least one blueprint")
        self.n_slots = n_slots
        self.blueprints = tuple(blueprints)
        self.blueprint_index = self._preferred_blueprint(preference)
        self.plateau_window = plateau_window
        self.plateau_delta = plateau_delta
        self.fossilize_threshold = fossilize_threshold
        self.prune_threshold = prune_threshold
        self.min_prune_age = min_prune_age
        self.holding_patience = holding_patience
        self.max_live = max_live
        self.grow_from_start = grow_from_start
        self.min_epochs_left = min_epochs_left

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
        if slot.stage is SeedStage.BLENDING and slot.epochs_in_stage < self.min_prune_age:
            return False  # too young: a seed at low alpha has barely had a chance to help
        if slot.contribution < self.prune_threshold:
            return True
        return (
            slot.stage is SeedStage.HOLDING
            and slot.epochs_in_stage >= self.holding_patience
            and slot.contribution <= self.fossilize_threshold
        )

    def _fossilize(self, obs: EnvObservation) -> Action | None:
        return self._first(
            obs,
            Op.FOSSILIZE,
            lambda s: s.contribution is not None and s.contribution > self.fossilize_threshold,
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
            self.grow_from_start
            and obs.epoch < self.max_live
            and all(slot.stage in _EARLY_STAGES for slot in obs.slots)
        )

    def _late_seed_due(self, obs: EnvObservation) -> bool:
        """Later seeds answer a plateau, and only while one can still be blended in and judged.

        The early seeds are exempt from ``min_epochs_left``: in a short episode (the 4-epoch
        smoke run) they are the only ones that can grow at all.
        """
        if obs.max_epochs - 1 - obs.epoch < self.min_epochs_left:
            return False
        return plateaued(obs.acc_history, self.plateau_window, self.plateau_delta)

    def _advance(self, obs: EnvObservation) -> Action | None:
        # HOLDING is left alone: leaving it is FOSSILIZE or PRUNE, which need the contribution.
        return self._first(obs, Op.ADVANCE, lambda s: s.stage is not SeedStage.HOLDING)

    def _germinate(self, obs: EnvObservation) -> Action | None:
        if obs.live_count() >= self.max_live:
            return None
        if not (self._early_seed_due(obs) or self._late_seed_due(obs)):
            return None
        action = self._first(obs, Op.GERMINATE, lambda s: True)
        if action is None:
            return None
        return Action(Op.GERMINATE, action.slot_index, self.blueprint_index)
