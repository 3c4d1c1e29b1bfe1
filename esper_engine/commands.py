"""Operator commands: draining, validation, the pause wait, applying them and the
acknowledgement every command gets.

Commands arrive on a queue from the console (or a script). One ``CommandDesk`` takes them and
applies them, fed either by its own queue at each safe point (one process) or by the leader's
exchange at the epoch's start (torchrun: ``distributed.Exchange.take_commands``). Validation is
separate from application so a rejected command never touches the run.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any, Protocol

from esper_engine.config import MAX_CLIP_THRESHOLD, MAX_GOVERNOR_SENSITIVITY, MAX_LR_SCALE
from esper_engine.contracts import (
    AddNote,
    CheckpointNow,
    CommandAck,
    ForceRollback,
    FossilizeSeed,
    GerminateSeed,
    OperatorCommand,
    Pause,
    PruneSeed,
    Resume,
    SetClipThreshold,
    SetGovernorSensitivity,
    SetLrScale,
    Stop,
    event_type,
)

_KNOWN = (
    ForceRollback,
    SetClipThreshold,
    Pause,
    Resume,
    Stop,
    SetLrScale,
    SetGovernorSensitivity,
    GerminateSeed,
    PruneSeed,
    FossilizeSeed,
    CheckpointNow,
    AddNote,
)
SEED_COMMANDS = (GerminateSeed, PruneSeed, FossilizeSeed)
_ENV_REQUIRED = (ForceRollback, *SEED_COMMANDS)
_VALUED = (SetClipThreshold, SetLrScale, SetGovernorSensitivity)  # the ack records the value
MAX_NOTE_CHARS = 500  # a note is a line or two in the log, not a document


class StopRequested(Exception):
    """Raised at a safe point when the operator (or a signal) asked the run to stop."""


class CommandTarget(Protocol):
    """What a command acts on (run_controls.RunControls): the envs this process trains."""

    def rollback_by_operator(self, env: int) -> None:
        """Global env ``env``'s operator rollback (nothing when another process trains it)."""

    def set_clip_threshold(self, env: int | None, value: float) -> None:
        """The clip threshold of global env ``env`` (None: every env this process trains)."""

    def set_lr_scale(self, env: int | None, value: float) -> None:
        """The operator's lr factor of global env ``env`` (None: every env here)."""

    def set_governor_sensitivity(self, env: int | None, value: float) -> None:
        """The governor sensitivity of global env ``env`` (None: every env here)."""

    def refusal(self, command: OperatorCommand) -> str | None:
        """Why a command that depends on the run's state (a seed command, a checkpoint) cannot
        be applied now, or None."""

    def apply_command(self, command: OperatorCommand) -> None:
        """A checked seed command, a checkpoint request or a note."""


class CommandDesk:
    """The run's one command path: takes the operator's commands, refuses the invalid ones,
    applies the rest in order and answers every one (``acknowledges``: the process that holds
    the recording; a sharded run's workers apply what the leader sends them and stay silent).

    ``emit`` sends an event with the run's common fields filled in; ``stop`` is set by whoever
    queues a Stop, so the loops over envs end at the next env (``stop_point``) instead of the
    next batch; ``between_envs``: False where the ranks must stop together (torchrun)."""

    def __init__(
        self,
        commands: queue.Queue[OperatorCommand],
        n_envs: int,
        target: CommandTarget,
        emit: Callable[[CommandAck], None],
        *,
        stop: threading.Event,
        acknowledges: bool = True,
        between_envs: bool = True,
    ) -> None:
        self.queue, self.n_envs, self.target, self.emit = commands, n_envs, target, emit
        self.stop, self.acknowledges, self.between_envs = stop, acknowledges, between_envs
        self.paused = False
        self.paused_s = 0.0  # time spent paused since the caller last reset it

    def safe_point(self) -> None:
        """Apply every queued command; while paused, wait here for Resume or Stop."""
        self._apply_queued()
        if not self.paused:
            return
        paused_at = time.perf_counter()
        while self.paused:  # Stop arrives on this queue too, so blocking cannot hang the run
            self._take(self.queue.get())
        self.paused_s += time.perf_counter() - paused_at  # throughput excludes the pause

    def stop_point(self, *, setup: bool = False) -> None:
        """Between two envs: a queued Stop ends the run now (during set-up, with no env to
        apply anything to yet, without draining)."""
        if not self.stop.is_set() or not self.between_envs:
            return
        if not setup:
            self._apply_queued()  # acknowledges the Stop and raises StopRequested
        raise StopRequested  # during set-up, or no Stop queued

    def accepted(self, block: float | None = None) -> list[OperatorCommand]:
        """The queued commands that pass validation, in order (the others are answered now);
        ``block``: wait that long for the first. For a leader to send to every rank."""
        queued: list[OperatorCommand] = []
        if block is not None:
            try:
                queued.append(self.queue.get(timeout=block))
            except queue.Empty:
                pass
        queued += self._queued()
        accepted, paused = [], self.paused
        for command in queued:
            if self._valid(command, paused):
                accepted.append(command)
                if isinstance(command, Pause | Resume):
                    paused = isinstance(command, Pause)
        return accepted

    def apply(self, command: OperatorCommand) -> None:
        """An accepted command: this process does its part and answers it."""
        if isinstance(command, ForceRollback):
            self.target.rollback_by_operator(command.env)
        elif isinstance(command, SetClipThreshold):
            self.target.set_clip_threshold(command.env, command.value)
        elif isinstance(command, SetLrScale):
            self.target.set_lr_scale(command.env, command.value)
        elif isinstance(command, SetGovernorSensitivity):
            self.target.set_governor_sensitivity(command.env, command.value)
        elif isinstance(command, (*SEED_COMMANDS, CheckpointNow, AddNote)):
            self.target.apply_command(command)
        elif isinstance(command, Pause | Resume):
            self.paused = isinstance(command, Pause)
        if self.acknowledges:
            self.emit(acknowledge(command, accepted=True, n_envs=self.n_envs))
        if isinstance(command, Stop):
            raise StopRequested

    def _apply_queued(self) -> None:
        for command in self._queued():
            self._take(command)

    def _take(self, command: OperatorCommand) -> None:
        if self._valid(command, self.paused):
            self.apply(command)

    def _valid(self, command: OperatorCommand, paused: bool) -> bool:
        reason = rejection(command, self.n_envs, paused)
        if reason is None:
            reason = self.target.refusal(command)
        if reason is not None:
            self.emit(acknowledge(command, accepted=False, n_envs=self.n_envs, reason=reason))
        return reason is None

    def _queued(self) -> list[OperatorCommand]:
        queued = []
        while True:
            try:
                queued.append(self.queue.get_nowait())
            except queue.Empty:
                return queued


def rejection(command: OperatorCommand, n_envs: int, paused: bool) -> str | None:
    """Why the command must be refused, or None when it can be applied.

    Commands built in-process are not type-checked by msgspec, so a script's ``env="2"`` or
    ``value=None`` is refused here too rather than crashing the trainer that applies it.
    """
    if not isinstance(command, _KNOWN):
        return f"unknown command {type(command).__name__}"
    if isinstance(command, _ENV_REQUIRED) or getattr(command, "env", None) is not None:
        env = command.env
        if not _is_int(env) or not 0 <= env < n_envs:
            # said to people, who count envs from 1 (the console, headless, exports)
            shown = _show(env + 1) if _is_int(env) else _show(env)
            return f"unknown env {shown}; envs are 1..{n_envs}"
    if isinstance(command, SetClipThreshold):
        return _clip_rejection(command.value)
    if isinstance(command, SetLrScale):
        return _bounded_rejection("lr scale", command.value, MAX_LR_SCALE)
    if isinstance(command, SetGovernorSensitivity):
        return _bounded_rejection("governor sensitivity", command.value, MAX_GOVERNOR_SENSITIVITY)
    if isinstance(command, SEED_COMMANDS):
        return _seed_rejection(command)
    if isinstance(command, AddNote):
        return _note_rejection(command.text)
    if isinstance(command, Pause) and paused:
        return "already paused"
    if isinstance(command, Resume) and not paused:
        return "not paused"
    return None


def _clip_rejection(value: object) -> str | None:
    return _bounded_rejection("clip threshold", value, MAX_CLIP_THRESHOLD)


def _bounded_rejection(name: str, value: object, most: float) -> str | None:
    if not _is_number(value):
        return f"{name} must be a number, got {_show(value)}"
    if not isinstance(value, Integral) and not math.isfinite(value):  # a huge int has no inf
        return f"{name} must be finite, got {_show(value)}"
    if value <= 0:
        return f"{name} must be positive, got {_show(value)}"
    if value > most:  # exact for ints of any size too
        return f"{name} must be at most {most:g}, got {_show(value)}"
    return None


def _seed_rejection(command: GerminateSeed | PruneSeed | FossilizeSeed) -> str | None:
    if not isinstance(command.slot_id, str) or not command.slot_id:
        return f"slot must be a slot id, got {_show(command.slot_id)}"
    blueprint = getattr(command, "blueprint", "")
    if isinstance(command, GerminateSeed) and (not isinstance(blueprint, str) or not blueprint):
        return f"blueprint must be a blueprint name, got {_show(blueprint)}"
    return None


def _note_rejection(text: object) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return "a note needs some text"
    if len(text) > MAX_NOTE_CHARS:
        return f"a note is at most {MAX_NOTE_CHARS} characters, got {len(text)}"
    return None


def acknowledge(
    command: OperatorCommand, *, accepted: bool, n_envs: int, reason: str = "", **common: Any
) -> CommandAck:
    """The recorded answer to a command (the recording is the operator's audit trail).

    A rejected command's env and value are recorded only when they fit the ack's fields, and
    its env only when it is one of the run's ``n_envs`` (the reader refuses an event of an env
    outside the run, recording.DeclaredRange; the reason names what was asked), so a malformed
    command can never make the recording undecodable.
    """
    value = command.value if isinstance(command, _VALUED) else None
    env = getattr(command, "env", None)  # the env the command named
    command_id = getattr(command, "command_id", 0)
    console = getattr(command, "console", "")
    return CommandAck(
        command=event_type(command) if isinstance(command, _KNOWN) else type(command).__name__,
        accepted=accepted,
        reason=reason,
        value=_as_float(value),
        command_id=command_id if _is_int64(command_id) else 0,
        console=console if isinstance(console, str) else "",
        **{**common, "env": int(env) if _is_int(env) and 0 <= env < n_envs else None},
    )


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_int64(value: object) -> bool:
    return _is_int(value) and -(2**63) <= value < 2**63


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _as_float(value: object) -> float | None:
    if not _is_number(value):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range: the reason says what it was
        return None


def _show(value: object) -> str:
    """A short text for a reason: huge ints as floats (or not at all), long reprs cut."""
    if _is_int(value) and abs(value) >= 10**15:
        value = _as_float(value)
        return "a number beyond float's range" if value is None else f"{value:g}"
    if isinstance(value, float):
        return f"{value:g}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
