"""A running trainer's checkpoints (SPEC 12): when one is due, what goes in, the one in flight,
and how a resumed run is put back.

``checkpoint.py`` owns the file (its format, the atomic write, the writer thread) and the resume
plan; this is the run's side of it. A checkpoint is the run's header (where it goes on, what
``plan_resume`` checks) and its parts' own states (``checkpoint.Stateful``: the envs, the loader,
the policy), taken at an epoch boundary, between the last batch of one epoch and the first of the
next. The trainer asks at each boundary (``write_if_due``) and once more as the run ends
(``wait_for_last``); the operator's ``CheckpointNow`` sets ``asked``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from esper_engine.checkpoint import (
    CheckpointWriter,
    Each,
    Stateful,
    assemble,
    check_checkpoint_host,
    restore,
)
from esper_engine.contracts import RunStatus
from esper_engine.reports import describe_crash
from esper_engine.training_step import join_env_streams

if TYPE_CHECKING:
    from esper_engine.trainer import VectorizedTrainer


class RunCheckpoints:
    """When a run writes its checkpoint (every ``config.checkpoint_every`` epochs, ``path``
    None: never) and the one in flight. ``recording_bytes`` flushes the recording and returns
    its length, which is stored with each checkpoint (the recording is cut back to it on
    resume)."""

    def __init__(
        self,
        run: VectorizedTrainer,
        path: Path | None,
        recording_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.run = run
        self.path = path
        self.writer = None if path is None else CheckpointWriter(path)
        self.enabled = path is not None  # sharded: the leader's answer, on every rank
        self.asked = False  # CheckpointNow: one at the next epoch boundary
        self._every, self._epochs = run.config.checkpoint_every, run.config.epochs
        self._recording_bytes = recording_bytes

    def due(self, next_episode: int, next_epoch: int) -> bool:
        done = next_episode * self._epochs + next_epoch  # epochs finished so far
        return self.enabled and bool(self._every) and not done % self._every

    def recording_length(self) -> int:
        return self._recording_bytes() if self._recording_bytes is not None else 0

    def write_if_due(self, next_episode: int, next_epoch: int) -> None:
        """Every ``checkpoint_every`` epochs: the state from which ``(next_episode, next_epoch)``
        starts, with the recording's length at this point (its events are all written)."""
        asked, self.asked = self.asked, False
        if not (asked and self.enabled) and not self.due(next_episode, next_epoch):
            return
        run = self.run
        join_env_streams(env.state for env in run.envs)
        # Sharded: the leader writes every env's state; a worker's go to it.
        envs = run.exchange.gather_env_states([env.state_dict() for env in run.envs])
        self.submit(lambda length: self.state(next_episode, next_epoch, length, envs))

    def submit(self, state_at: Callable[[int], dict[str, Any]]) -> None:
        """Write ``state_at(recording length)`` in the background (a worker writes none)."""
        if self.writer is not None:
            self.writer.submit(state_at(self.recording_length()))

    def wait(self) -> None:
        if self.writer is not None:
            self.writer.wait()

    def wait_for_last(self, status: RunStatus, error: str | None) -> tuple[RunStatus, str | None]:
        """Wait for the checkpoint in flight, so a stopped run resumes from its latest one; the
        run's ending, a crash if writing it failed."""
        try:
            self.wait()
        except Exception as exc:  # noqa: BLE001 - reported as the run's crash
            if status is not RunStatus.CRASHED:
                return RunStatus.CRASHED, describe_crash(exc)
        return status, error

    def state(
        self, episode: int, epoch: int, recording_bytes: int, envs: list[dict] | None = None
    ) -> dict[str, Any]:
        """Everything needed to continue exactly at ``(episode, epoch)`` (SPEC 12); ``envs``:
        every env's state when they are not all here (a sharded run's leader). No global random
        stream: every env's generator is in its state, the loader's and the policy's in theirs."""
        run = self.run
        header = {
            "run_id": run.run_id,
            # as the recording's RunStarted holds it (lists, not tuples), so the two compare
            "config": msgspec.msgpack.decode(msgspec.msgpack.encode(run.config)),
            "episode": episode,
            "epoch": epoch,
            "updates": run.policy_updates,
            "recording_bytes": recording_bytes,
            "host": msgspec.to_builtins(run.host_spec),  # checked on resume (plan_resume)
            "run_flops": None if run.run_flops is None else run.run_flops.state_dict(),
        }
        return assemble(header, self._parts(), **({} if envs is None else {"envs": envs}))

    def restore(self, state: dict[str, Any]) -> tuple[int, int, int]:
        """Load a checkpoint onto the freshly set-up run: (episode, epoch, policy updates) it
        goes on from."""
        run = self.run
        check_checkpoint_host(state, run.host_spec, "checkpoint")
        restore(state, self._parts())
        updates = int(state["updates"])
        if run.run_flops is not None:  # a checkpoint older than it has none: counts from 0
            run.run_flops.load_state_dict(state.get("run_flops"))
        return int(state["episode"]), int(state["epoch"]), updates

    def _parts(self) -> dict[str, Stateful]:
        run = self.run
        envs = Each(run.envs, "envs", before=lambda: run.desk.stop_point(setup=True))
        return {"envs": envs, "batches": run.batches, "policy": run.policy}
