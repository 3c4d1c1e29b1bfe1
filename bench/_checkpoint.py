"""Checkpoint cost: a recorded run with a checkpoint every epoch against the same run without.

``checkpoint_overhead`` (in ``run.py``) is the ratio of the two runs' throughputs, measured side by
side in the same rounds as the engine's other figures. A run-to-run spread of a few percent can
hide a cost this size, so ``checkpoint_work`` also times the checkpoint alone: assembling the
state, sharing equal tensors and writing it (temporary file, fsync, rename), with the file's
size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from statistics import median

import msgspec
from _timing import Timed, stopwatch, walls

from esper_engine.checkpoint import share_equal_tensors, write_checkpoint
from esper_engine.config import TrainingConfig
from esper_engine.tasks import Task
from esper_engine.telemetry import ListSink
from esper_engine.trainer import VectorizedTrainer


def with_checkpoints(config: TrainingConfig, every: int) -> TrainingConfig:
    """``config`` checkpointing every ``every`` epochs (0: never)."""
    return msgspec.structs.replace(config, checkpoint_every=every)


def checkpoint_work(config: TrainingConfig, task: Task, run_s: float, rounds: int = 5) -> dict:
    """One checkpoint of the run's state after it finished, timed alone ``rounds`` times."""
    trainer = VectorizedTrainer(with_checkpoints(config, 0), ListSink(), run_id="bench", task=task)
    trainer.run()
    times: list[Timed] = []
    with tempfile.TemporaryDirectory(prefix="overwatch-bench-") as tmp:
        path = Path(tmp) / "run.ckpt"
        for _ in range(rounds):
            with stopwatch() as watch:
                state = trainer.checkpoint_state(0, config.epochs, 0)
                write_checkpoint(path, share_equal_tensors(state))  # as CheckpointWriter does
            times.append(watch.result)
        size = path.stat().st_size
    seconds = median(walls(times))
    per_run = seconds * max(config.episodes * config.epochs - 1, 0)  # none after the last epoch
    return {
        "bytes": size,
        "seconds_each": seconds,
        "checkpoints_per_run": config.episodes * config.epochs - 1,
        "share_of_run": per_run / run_s,
    }
