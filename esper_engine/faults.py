"""Fault injection (SPEC 11): break a real run on purpose to watch the safety machinery work.

A fault is written ``KIND:ENV:EPOCH`` with ENV and EPOCH counted from 1, as the console shows
them, and fires in the run's first episode:
- ``nan``: every weight of that env's model becomes NaN just before that epoch trains;
- ``diverge``: that env's learning rates are multiplied by ``DIVERGE_FACTOR`` from that epoch on
  (until the episode ends);
- ``seed-nan``: every weight of that env's incubating (TRAINING) seeds becomes NaN just before the
  epoch trains: the seed must fail its own health gate while the host trains on;
- ``crash``: the trainer raises ``InjectedCrash`` at that epoch (the crash path).
The faults of a run are part of its recorded config (``TrainingConfig.faults``, as written).
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from esper_engine.contracts import SeedStage

DIVERGE_FACTOR = 1e4


class FaultKind(StrEnum):
    NAN = "nan"
    DIVERGE = "diverge"
    SEED_NAN = "seed-nan"
    CRASH = "crash"


class Fault(NamedTuple):
    """One scheduled fault; ``env`` and ``epoch`` are 0-based, as the trainer counts."""

    kind: FaultKind
    env: int
    epoch: int


class InjectedCrash(RuntimeError):
    """The exception a ``crash`` fault raises inside the training loop."""


def parse_fault(text: str) -> Fault:
    """``KIND:ENV:EPOCH`` (1-based) -> Fault; ValueError with one line naming what is wrong."""
    parts = text.strip().split(":")
    kinds = ", ".join(kind.value for kind in FaultKind)
    if len(parts) != 3:
        raise ValueError(f"fault {text!r} must be KIND:ENV:EPOCH, e.g. nan:1:3 (kinds: {kinds})")
    kind, env, epoch = parts
    try:
        fault_kind = FaultKind(kind.lower())
    except ValueError:
        raise ValueError(
            f"fault {text!r}: unknown kind {kind!r}; expected one of {kinds}"
        ) from None
    numbers = []
    for name, value in (("ENV", env), ("EPOCH", epoch)):
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"fault {text!r}: {name} must be an integer, got {value!r}") from None
        if number < 1:
            raise ValueError(f"fault {text!r}: {name} is counted from 1, got {number}")
        numbers.append(number)
    return Fault(fault_kind, numbers[0] - 1, numbers[1] - 1)


def check_faults(faults: tuple[str, ...], n_envs: int, epochs: int) -> tuple[Fault, ...]:
    """Parse every fault and check it names an env and an epoch the run has."""
    parsed = []
    for text in faults:
        fault = parse_fault(text)
        if fault.env >= n_envs:
            raise ValueError(f"fault {text!r}: env {fault.env + 1} of a run with {n_envs} envs")
        if fault.epoch >= epochs:
            raise ValueError(
                f"fault {text!r}: epoch {fault.epoch + 1} of episodes with {epochs} epochs"
            )
        parsed.append(fault)
    return tuple(parsed)


def inject(fault: Fault, env) -> None:
    """Break ``env`` (an ``env_runtime.EnvRuntime`` this process trains) as ``fault`` says,
    before the epoch trains (this module stays torch-free: the config reads it)."""
    if fault.kind is FaultKind.CRASH:
        raise InjectedCrash(f"injected fault crash:{fault.env + 1}:{fault.epoch + 1}")
    if fault.kind is FaultKind.DIVERGE:  # from now on: set_lr_scale keeps the factor
        env.state.lr_multiplier = DIVERGE_FACTOR
        env.state.set_lr_scale(env.state.lr_scale)
        return
    model = env.model
    if fault.kind is FaultKind.NAN:
        params = list(model.parameters())
    else:  # SEED_NAN: the incubating seeds only
        training = [
            sid for sid in model.live_slots() if model.slots[sid].stage is SeedStage.TRAINING
        ]
        params = [p for sid in training for p in model.seed_parameters(sid)]
    for p in params:
        p.detach().fill_(float("nan"))  # the weights themselves, outside autograd
