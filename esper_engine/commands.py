"""Operator commands: validation and the acknowledgement every command gets.

Commands arrive on a queue from the console (or a script); the trainer drains it at safe points.
Validation is separate from application so a rejected command never touches the run.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from esper_engine.config import MAX_CLIP_THRESHOLD
from esper_engine.contracts import (
    CommandAck,
    ForceRollback,
    OperatorCommand,
    Pause,
    Resume,
    SetClipThreshold,
    Stop,
    event_type,
)

_KNOWN = (ForceRollback, SetClipThreshold, Pause, Resume, Stop)


def rejection(command: OperatorCommand, n_envs: int, paused: bool) -> str | None:
    """Why the command must be refused, or None when it can be applied.

    Commands built in-process are not type-checked by msgspec, so a script's ``env="2"`` or
    ``value=None`` is refused here too rather than crashing the trainer that applies it.
    """
    if not isinstance(command, _KNOWN):
        return f"unknown command {type(command).__name__}"
    if isinstance(command, ForceRollback) or getattr(command, "env", None) is not None:
        env = command.env
        if not _is_int(env) or not 0 <= env < n_envs:
            # said to people, who count envs from 1 (the console, headless, exports)
            shown = _show(env + 1) if _is_int(env) else _show(env)
            return f"unknown env {shown}; envs are 1..{n_envs}"
    if isinstance(command, SetClipThreshold):
        return _clip_rejection(command.value)
    if isinstance(command, Pause) and paused:
        return "already paused"
    if isinstance(command, Resume) and not paused:
        return "not paused"
    return None


def _clip_rejection(value: object) -> str | None:
    if not _is_number(value):
        return f"clip threshold must be a number, got {_show(value)}"
    if not isinstance(value, Integral) and not math.isfinite(value):  # a huge int has no inf
        return f"clip threshold must be finite, got {_show(value)}"
    if value <= 0:
        return f"clip threshold must be positive, got {_show(value)}"
    if value > MAX_CLIP_THRESHOLD:  # exact for ints of any size too
        return f"clip threshold must be at most {MAX_CLIP_THRESHOLD:g}, got {_show(value)}"
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
    value = command.value if isinstance(command, SetClipThreshold) else None
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
