"""The governor: one watchdog per env that catches catastrophic training failures and rolls back.

Tolaria's governor in the original design. Its defects are fixed here by construction: the
snapshot holds the host optimizer, every fossilized seed's optimizer and the GradScaler state, and
a rollback restores them (so no stale momentum pushes the weights back toward the crash); the
owner takes the snapshot when the epoch is judged clean *and* the policy has acted on it
(``snapshot()``), so a seed fossilized that epoch is in it and the next epoch, the riskiest one,
is protected like any other; and the death penalty is an API the trainer adds to the PPO buffer
(`GovernorReport.penalty`).

It watches a plain ``nn.Module`` (the snapshot is the whole state dict) or a
``MorphogeneticModel``, recognised by duck typing (``live_seed_key_prefixes``): then live seeds
are kept out of the snapshot and pruned on rollback, while fossilized seeds are part of the host.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import msgspec
import torch
from torch import nn

from esper_engine.config import GovernorConfig
from esper_engine.contracts import (
    GovernorPanic,
    GovernorRollback,
    Initiator,
    PanicReason,
    RollbackReason,
)

# The rollback report the SPEC names is the telemetry event itself: the governor fills what it
# knows and leaves the common fields (run id, env, episode, epoch, wall time) at their defaults
# for the trainer to set with ``msgspec.structs.replace``.
GovernorReport = GovernorRollback
ROLLBACK_INITIATORS = frozenset({Initiator.GOVERNOR, Initiator.OPERATOR})

LOBOTOMY_MIN_HISTORY = 10  # losses in history before a collapse to chance can be recognised
LOBOTOMY_MEAN_FRACTION = 0.6  # "was learning": history mean below 0.6 x the random-guess loss
LOBOTOMY_TOLERANCE = 0.065  # "collapsed": loss within 6.5 % of the random-guess loss
# SPEC sets no minimum for divergence; a standard deviation needs two samples, and the absolute
# and multiplier gates keep the first epochs of an episode safe from false alarms. Until the
# history holds this many losses the reference is the task's instead: a loss above
# max(absolute_threshold, multiplier x random_guess_loss) is a divergence from the first epoch
# (a fresh host starts near the random-guess loss), and one above absolute_threshold, the lowest
# threshold any history can give, is not kept as good (see ``check_vital_signs``).
DIVERGENCE_MIN_HISTORY = 2


@dataclass(frozen=True)
class _Snapshot:
    """Last known good state, entirely on CPU."""

    weights: dict[str, torch.Tensor]  # host + fossilized seeds; never live seeds
    optimizer: dict[str, Any] | None
    seed_optimizers: dict[str, dict[str, Any]]  # fossilized slot id -> its optimizer's state
    scaler: dict[str, Any] | None


class TolariaGovernor:
    """Per-env safety net: detects NaN, lobotomy and divergence, and rolls back to the snapshot.

    Call ``check_vital_signs`` once per epoch with the validation loss; when it returns True, call
    ``execute_rollback()``; when it returns False and ``last_check_clean`` is True, call
    ``snapshot()`` once the epoch's changes (the policy's action) are made. ``seed_optimizers``
    is the owner's live mapping of slot id -> seed optimizer: the snapshot keeps the fossils'
    state from it and a rollback restores it there. ``on_seed_pruned(slot_id)`` is called for
    every seed a rollback prunes so the owner drops that seed's optimizer.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: torch.amp.GradScaler | None = None,
        config: GovernorConfig | None = None,
        *,
        random_guess_loss: float = math.log(10),  # the default task's 10 classes
        on_seed_pruned: Callable[[str], None] | None = None,
        seed_optimizers: MutableMapping[str, torch.optim.Optimizer] | None = None,
    ) -> None:
        """The thresholds are ``config``'s (``GovernorConfig``, which documents each)."""
        config = config or GovernorConfig()
        _check_settings(
            config.history_window,
            config.min_panics_before_rollback,
            random_guess_loss,
            config.max_rollbacks_per_episode,
            config.death_penalty,
        )
        self.config = config
        self.sensitivity = config.sensitivity
        self.multiplier = config.multiplier
        self.absolute_threshold = config.absolute_threshold
        self.death_penalty = config.death_penalty
        self.random_guess_loss = random_guess_loss
        self.min_panics_before_rollback = config.min_panics_before_rollback
        self.max_rollbacks_per_episode = config.max_rollbacks_per_episode
        self.on_seed_pruned = on_seed_pruned
        self._history: deque[float] = deque(maxlen=config.history_window)
        self._consecutive_panics = 0
        self._total_panics = 0
        self._rollbacks = 0
        self._episode_rollbacks = 0
        self.last_panic: GovernorPanic | None = None  # common fields left at their defaults
        self.last_check_clean = True  # the latest check found nothing: the state may be kept
        self._attach(model, optimizer, scaler, seed_optimizers)

    # --- counters (sent every epoch) -------------------------------------------------------

    @property
    def consecutive_panics(self) -> int:
        return self._consecutive_panics

    @property
    def total_panics(self) -> int:
        return self._total_panics

    @property
    def rollbacks(self) -> int:
        return self._rollbacks

    @property
    def episode_rollbacks(self) -> int:
        """Governor-initiated rollbacks in the current episode (operator rollbacks don't count)."""
        return self._episode_rollbacks

    @property
    def loss_history(self) -> tuple[float, ...]:
        return tuple(self._history)

    # --- detection -------------------------------------------------------------------------

    def check_vital_signs(self, loss: float) -> bool:
        """Judge this epoch's validation loss; True means ``execute_rollback()`` is due now.

        A clean check (``last_check_clean``) makes the state the next known good one: the owner
        calls ``snapshot()`` after the epoch's last change (the policy's action).
        """
        loss = float(loss)
        found = self._detect(loss)
        if found is None and self._unproven(loss):
            # Not far enough above chance to panic without statistics, but above what a full
            # history would accept: neither kept as good (snapshot, history) nor a panic.
            self.last_check_clean = False
            return False
        self.last_check_clean = found is None
        if found is None:
            self._history.append(loss)
            self._consecutive_panics = 0
            return False
        reason, threshold = found
        # Panicking losses stay out of the history so they cannot inflate the baseline.
        self._total_panics += 1
        self._consecutive_panics += 1
        immediate = reason is not PanicReason.DIVERGENCE
        due = immediate or self._consecutive_panics >= self.min_panics_before_rollback
        self.last_panic = GovernorPanic(
            reason=reason,
            loss=loss,
            threshold=threshold,
            consecutive_panics=self._consecutive_panics,
            rollback_due=due,
        )
        return due

    def _detect(self, loss: float) -> tuple[PanicReason, float | None] | None:
        if not math.isfinite(loss):
            return PanicReason.NAN, None
        if self._is_lobotomy(loss):
            return PanicReason.LOBOTOMY, self.random_guess_loss
        threshold = self.divergence_threshold()
        if loss > threshold:
            return PanicReason.DIVERGENCE, threshold
        return None

    def _unproven(self, loss: float) -> bool:
        """A short history cannot vouch for a loss above the absolute gate."""
        return len(self._history) < DIVERGENCE_MIN_HISTORY and loss > self.absolute_threshold

    def _is_lobotomy(self, loss: float) -> bool:
        """Loss back at chance level after the run had clearly learned: outputs went uniform."""
        if len(self._history) < LOBOTOMY_MIN_HISTORY:
            return False
        guess = self.random_guess_loss
        was_learning = statistics.fmean(self._history) < LOBOTOMY_MEAN_FRACTION * guess
        return was_learning and abs(loss - guess) < LOBOTOMY_TOLERANCE * guess

    def divergence_threshold(self) -> float:
        """The loss must exceed all three gates, i.e. their maximum; until the history is long
        enough for statistics, the task's reference (``DIVERGENCE_MIN_HISTORY``)."""
        if len(self._history) < DIVERGENCE_MIN_HISTORY:
            return max(self.absolute_threshold, self.multiplier * self.random_guess_loss)
        mean = statistics.fmean(self._history)
        std = statistics.pstdev(self._history, mu=mean)
        return max(self.absolute_threshold, mean + self.sensitivity * std, self.multiplier * mean)

    # --- snapshot and rollback -------------------------------------------------------------

    def snapshot(self) -> None:
        """Record the last known good state on CPU: host and fossilized seeds with their
        optimizers, and the scaler.

        Call it on the stream that trains the model (or after synchronising that stream):
        device-to-host copies are queued there without blocking.
        """
        excluded = tuple(self._live_prefixes())
        weights = {
            key: _to_cpu(value)
            for key, value in self.model.state_dict().items()
            if not key.startswith(excluded)
        }
        self._snapshot = _Snapshot(
            weights=weights,
            optimizer=_to_cpu(self.optimizer.state_dict()) if self.optimizer is not None else None,
            seed_optimizers={
                slot_id: _to_cpu(self.seed_optimizers[slot_id].state_dict())
                for slot_id in self._fossilized()
                if slot_id in self.seed_optimizers
            },
            scaler=_to_cpu(self.scaler.state_dict()) if self._scaler_enabled() else None,
        )

    def execute_rollback(self, initiator: Initiator | str = Initiator.GOVERNOR) -> GovernorReport:
        """Prune live seeds; restore weights, optimizer and scaler; reset the panic state.

        The report is a ``GovernorRollback`` event with the common fields at their defaults. Its
        reason is the pending panic's for a governor rollback, else the initiator's.
        """
        if initiator not in ROLLBACK_INITIATORS:
            raise ValueError(
                f"rollback initiator must be 'governor' or 'operator', got {initiator!r}"
            )
        initiator = Initiator(initiator)
        by_governor = initiator is Initiator.GOVERNOR
        panic = self.last_panic if by_governor and self._consecutive_panics else None
        pruned = self._prune_live_seeds(initiator)
        self._restore()
        self._rollbacks += 1
        if by_governor:
            self._episode_rollbacks += 1
        report = GovernorReport(
            reason=RollbackReason(panic.reason if panic else initiator),
            initiator=initiator,
            loss_at_panic=panic.loss if panic else None,
            threshold=panic.threshold if panic else None,
            consecutive_panics=self._consecutive_panics,
            seeds_pruned=list(pruned),
            penalty=self.death_penalty if by_governor else 0.0,
            episode_ended=(
                by_governor and self._episode_rollbacks >= self.max_rollbacks_per_episode
            ),
        )
        self._consecutive_panics = 0
        return report

    def state_dict(self) -> dict[str, Any]:
        """History, counters, the pending panic and the snapshot, for a checkpoint."""
        snap = self._snapshot
        return {
            "history": list(self._history),
            "consecutive_panics": self._consecutive_panics,
            "total_panics": self._total_panics,
            "rollbacks": self._rollbacks,
            "episode_rollbacks": self._episode_rollbacks,
            "last_panic": None if self.last_panic is None else msgspec.to_builtins(self.last_panic),
            "last_check_clean": self.last_check_clean,
            "snapshot": {
                "weights": snap.weights,
                "optimizer": snap.optimizer,
                "seed_optimizers": snap.seed_optimizers,
                "scaler": snap.scaler,
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict`` onto the governor of the same (already restored) env."""
        self._history.clear()
        self._history.extend(float(loss) for loss in state["history"])
        self._consecutive_panics = int(state["consecutive_panics"])
        self._total_panics = int(state["total_panics"])
        self._rollbacks = int(state["rollbacks"])
        self._episode_rollbacks = int(state["episode_rollbacks"])
        panic = state["last_panic"]
        self.last_panic = None if panic is None else msgspec.convert(panic, GovernorPanic)
        self.last_check_clean = bool(state["last_check_clean"])
        snap = state["snapshot"]
        self._snapshot = _Snapshot(
            weights=dict(snap["weights"]),
            optimizer=snap["optimizer"],
            seed_optimizers=dict(snap["seed_optimizers"]),
            scaler=snap["scaler"],
        )

    def reset_episode(
        self,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: torch.amp.GradScaler | None = None,
        seed_optimizers: MutableMapping[str, torch.optim.Optimizer] | None = None,
    ) -> None:
        """Start a new episode, watching the re-created host if one is given; totals keep running.

        The loss history is cleared: a fresh host sits at the random-guess loss, which against
        the old history would look exactly like a lobotomy.
        """
        if model is not None:
            self._attach(model, optimizer, scaler, seed_optimizers)
        else:
            self.snapshot()
        self._history.clear()
        self._consecutive_panics = 0
        self._episode_rollbacks = 0

    def _attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scaler: torch.amp.GradScaler | None,
        seed_optimizers: MutableMapping[str, torch.optim.Optimizer] | None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.seed_optimizers = {} if seed_optimizers is None else seed_optimizers
        self._seeded = hasattr(model, "live_seed_key_prefixes")
        self.snapshot()

    def _scaler_enabled(self) -> bool:
        # A disabled GradScaler has an empty state dict, which load_state_dict refuses.
        return self.scaler is not None and self.scaler.is_enabled()

    def _live_prefixes(self) -> Iterable[str]:
        return self.model.live_seed_key_prefixes() if self._seeded else ()

    def _fossilized(self) -> Iterable[str]:
        return self.model.fossilized_slots() if self._seeded else ()

    def _prune_live_seeds(self, initiator: Initiator) -> tuple[str, ...]:
        if not self._seeded:
            return ()
        pruned = tuple(self.model.live_slots())
        for slot_id in pruned:
            self.model.prune(slot_id, initiator=initiator)  # the model emits the SeedTransition
            if self.on_seed_pruned is not None:
                self.on_seed_pruned(slot_id)
        return pruned

    def _restore(self) -> None:
        _synchronize(self._device())  # snapshot copies may still be in flight
        # Strict: the snapshot is taken after the epoch's last change, so the fossils it holds
        # are exactly the model's; any other mismatch is a bug the load reports.
        self.model.load_state_dict(self._snapshot.weights, strict=True)
        # Clone again: load_state_dict keeps same-device tensors by reference, and later steps
        # would then write into the snapshot, corrupting a second rollback.
        if self.optimizer is not None and self._snapshot.optimizer is not None:
            self.optimizer.load_state_dict(_to_cpu(self._snapshot.optimizer))
        self._restore_seed_optimizers()
        if self.scaler is not None and self._snapshot.scaler is not None:
            self.scaler.load_state_dict(_to_cpu(self._snapshot.scaler))

    def _restore_seed_optimizers(self) -> None:
        """Fossils get their snapshot momentum back; any other seed optimizer is dropped (its
        momentum belongs to the abandoned trajectory, and its seed was just pruned)."""
        saved = self._snapshot.seed_optimizers
        for slot_id in list(self.seed_optimizers):
            if slot_id in saved:
                self.seed_optimizers[slot_id].load_state_dict(_to_cpu(saved[slot_id]))
            else:
                del self.seed_optimizers[slot_id]
        missing = set(saved) - set(self.seed_optimizers)
        if missing:
            raise RuntimeError(
                f"rollback: fossilized seeds {sorted(missing)} lost their optimizers since the "
                "snapshot"
            )

    def _device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")


def _check_settings(
    history_window: int,
    min_panics: int,
    random_guess_loss: float,
    max_rollbacks: int,
    death_penalty: float,
) -> None:
    if history_window < LOBOTOMY_MIN_HISTORY:
        raise ValueError(
            f"history_window must be >= {LOBOTOMY_MIN_HISTORY} (lobotomy detection needs that "
            f"many losses), got {history_window}"
        )
    if min_panics < 1:
        raise ValueError(f"min_panics_before_rollback must be >= 1, got {min_panics}")
    if max_rollbacks < 1:
        raise ValueError(f"max_rollbacks_per_episode must be >= 1, got {max_rollbacks}")
    if not (math.isfinite(random_guess_loss) and random_guess_loss > 0):
        raise ValueError(f"random_guess_loss must be finite and > 0, got {random_guess_loss}")
    if not (math.isfinite(death_penalty) and death_penalty >= 0):
        raise ValueError(f"death_penalty must be finite and >= 0, got {death_penalty}")


def _to_cpu(value: Any) -> Any:
    """Copy a nested state dict with every tensor detached and on CPU (no autograd history)."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "cpu":
            return value.detach().clone()
        # Non-blocking device-to-host copy; `_synchronize` runs before any load reads it.
        return value.detach().to("cpu", non_blocking=True)
    if isinstance(value, Mapping):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(item) for item in value)
    return value  # numbers, strings, None: immutable


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
