"""What an operator's command does to a run: the ``CommandDesk``'s target (``commands.py``
validates and orders the commands; this applies them to the envs this process trains)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper_engine.commands import SEED_COMMANDS
from esper_engine.contracts import (
    AddNote,
    CheckpointNow,
    GerminateSeed,
    Initiator,
    Op,
    OperatorCommand,
    OperatorNote,
    PruneSeed,
)

if TYPE_CHECKING:
    from esper_engine.env_runtime import EnvRuntime
    from esper_engine.trainer import VectorizedTrainer


class RunControls:
    """The trainer's envs, rollback and checkpoints as the operator's commands reach them;
    another rank's env is that rank's to change."""

    def __init__(self, run: VectorizedTrainer) -> None:
        self.run = run

    def _envs(self, env: int | None) -> list[EnvRuntime]:
        """Global env ``env`` if this process trains it (None: every env it trains)."""
        if env is None:
            return list(self.run.envs)
        own = self.run.own_env(env)
        return [] if own is None else [own]

    def rollback_by_operator(self, env: int) -> None:
        own = self.run.own_env(env)
        if own is not None:  # another rank's env: that rank rolls it back
            self.run.rollback(own, initiator=Initiator.OPERATOR)

    def set_clip_threshold(self, env: int | None, value: float) -> None:
        for own in self._envs(env):
            own.set_clip_threshold(value)

    def set_lr_scale(self, env: int | None, value: float) -> None:
        for own in self._envs(env):
            own.set_operator_lr_scale(value)

    def set_governor_sensitivity(self, env: int | None, value: float) -> None:
        for own in self._envs(env):
            own.governor.sensitivity = float(value)

    def refusal(self, command: OperatorCommand) -> str | None:
        if isinstance(command, CheckpointNow) and not self.run.checkpoints.enabled:
            return "this run writes no checkpoints (it has no recording)"
        if not isinstance(command, SEED_COMMANDS):
            return None
        own = self.run.own_env(command.env)
        if own is None:  # the leader checks; another rank's env is out of its sight
            return f"env {command.env + 1} is trained by another rank: seed commands reach rank 0's"
        return own.seed_command_refusal(*_seed_op(command))

    def apply_command(self, command: OperatorCommand) -> None:
        if isinstance(command, CheckpointNow):
            self.run.checkpoints.asked = True
        elif isinstance(command, AddNote):
            if self.run.shard.is_leader:
                note = OperatorNote(
                    text=command.text, console=command.console, command_id=command.command_id
                )
                self.run.report.emit(note, command.env)
        elif (own := self.run.own_env(command.env)) is not None:
            own.apply_operator(*_seed_op(command))


def _seed_op(command: OperatorCommand) -> tuple[Op, str, str | None]:
    """(op, slot, blueprint) of a seed command."""
    if isinstance(command, GerminateSeed):
        return Op.GERMINATE, command.slot_id, command.blueprint
    op = Op.PRUNE if isinstance(command, PruneSeed) else Op.FOSSILIZE
    return op, command.slot_id, None
