"""A trained policy as a file: ``RUN.policy.pt`` next to the recording, rewritten every round.

One ``torch.save`` file of tensors and plain values only: the agent's weights, its Adam state,
its sampling generator, the kickstarting schedule's position (rounds done, recorded heuristic
episodes not yet cloned), the PPO config it was trained with, and the scaling it learned under
(``normalisation``: the reward scale; the observation encoding is fixed by ``observation.py``,
so there is no running statistic to carry). Written atomically (temporary file, fsync, rename);
read with ``torch.load(weights_only=True)``, so a file that would run code when unpickled is
refused before any of it runs, with a one-line ``PolicyFileError``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from esper_engine.host_presets import HostSpec
from esper_engine.state_file import read_state_file

POLICY_FORMAT = "esper-policy/1"
SUFFIX = ".policy.pt"


class PolicyFileError(ValueError):
    """A policy file that cannot be used; the message is one line naming the file."""


def policy_path(recording: str | os.PathLike[str]) -> Path:
    """Where a recording's policy lives: ``RUN.msgpack`` (or ``RUN.ckpt``) -> ``RUN.policy.pt``."""
    path = Path(recording)
    return path.with_name(path.name.removesuffix(path.suffix) + SUFFIX)


def write_policy_file(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (``PolicyDriver.policy_state()``) atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            torch.save({"format": POLICY_FORMAT, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_policy_file(path: str | os.PathLike[str], host: HostSpec | None = None) -> dict[str, Any]:
    """The file's state; ``PolicyFileError`` for a missing, foreign or unsafe file, or one
    trained on another kind of host than ``host`` (when given)."""
    path = Path(path)
    if not path.is_file():
        raise PolicyFileError(f"{path}: no such policy file")
    state = read_state_file(path, PolicyFileError, "policy file", POLICY_FORMAT)
    if host is not None:
        check_policy_host(state, host, path)
    return state


def check_policy_host(state: dict[str, Any], spec: HostSpec, source: object) -> None:
    """A policy trained on another kind of host is refused (one line); another size of the same
    kind loads where its observation and action spaces match (the driver checks those)."""
    host = state.get("host")
    if isinstance(host, dict) and host.get("kind") != spec.kind:
        raise PolicyFileError(
            f"{source}: trained on a {host.get('kind')} host, this run trains {spec.label()}"
        )
