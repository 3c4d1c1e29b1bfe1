"""Operator commands: validation and the acknowledgement every command gets.

Commands arrive on a queue from the console (or a script); the trainer drains it at safe points.
Validation is separate from application so a rejected command never touches the run.
"""

from __future__ import annotations

import math
from typing import Any

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


def rejection(command: OperatorCommand, n_envs: int, paused: bool) -> str | None:
    """Why the command must be refused, or None when it can be applied."""
    env = getattr(command, "env", None)
    if env is not None and not 0 <= env < n_envs:
        return f"unknown env {env}; envs are 0..{n_envs - 1}"
    if isinstance(command, SetClipThreshold):
        if not math.isfinite(command.value):
            return f"clip threshold must be finite, got {command.value}"
        if command.value <= 0:
            return f"clip threshold must be positive, got {command.value}"
    if isinstance(command, Pause) and paused:
        return "already paused"
    if isinstance(command, Resume) and not paused:
        return "not paused"
    if not isinstance(command, ForceRollback | SetClipThreshold | Pause | Resume | Stop):
        return f"unknown command {type(command).__name__}"
    return None


def acknowledge(
    command: OperatorCommand, *, accepted: bool, reason: str = "", **common: Any
) -> CommandAck:
    """The recorded answer to a command (the recording is the operator's audit trail)."""
    value = command.value if isinstance(command, SetClipThreshold) else None
    fields = {**common, "env": getattr(command, "env", None)}  # the env the command named
    return CommandAck(
        command=event_type(command),
        accepted=accepted,
        reason=reason,
        value=value,
        command_id=command.command_id,
        **fields,
    )
