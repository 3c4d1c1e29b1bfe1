"""Process scaling: the same run in one process and sharded over two ranks (``--nprocs 2``).

Each side is a whole ``overwatch run --headless`` process (torchrun and its two ranks for the
sharded side), one torch thread per process, the same envs in total. Its throughput is the run's
env samples over its training window, RunStarted to RunFinished in the recording (so process
start, imports and data generation are outside it on both sides). The sharded run's
RunFinished says what the per-epoch exchanges cost (per epoch, the exchange time of the rank
that waited least, i.e. without the waits for a slower rank); its share of the window is the
exchange share.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from esper_engine.contracts import RunFinished, RunStarted, RunStatus
from esper_engine.recording import read_recording


@dataclass(frozen=True)
class ScalingShape:
    n_envs: int = 4
    epochs: int = 4
    batches_per_epoch: int = 40
    batch_size: int = 64

    @property
    def train_samples(self) -> int:
        return self.n_envs * self.epochs * self.batches_per_epoch * self.batch_size


@dataclass(frozen=True)
class ScalingRun:
    samples_per_s: float
    window_s: float
    exchange_s: float

    def __str__(self) -> str:  # the bench's progress line
        return f"{self.samples_per_s:.4g} samples/s, exchanges {self.exchange_s:.3f} s"


def run_once(shape: ScalingShape, nprocs: int, directory: Path, name: str) -> ScalingRun:
    """One run of ``shape`` over ``nprocs`` processes (1: the plain one-process run)."""
    path = directory / f"{name}.msgpack"
    command = [
        sys.executable,
        "-m",
        "overwatch",
        "run",
        "--headless",
        "--policy",
        "static",
        "--n-envs",
        str(shape.n_envs),
        "--epochs",
        str(shape.epochs),
        "--episodes",
        "1",
        "--batches-per-epoch",
        str(shape.batches_per_epoch),
        "--set",
        f"batch_size={shape.batch_size}",
        "--set",
        "checkpoint_every=0",
        "--record",
        str(path),
        "--overwrite",  # each round replaces the last round's
    ] + (["--nprocs", str(nprocs)] if nprocs > 1 else [])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=directory)
    events = read_recording(path).events
    started, finished = events[0], events[-1]
    if not isinstance(finished, RunFinished) or finished.status is not RunStatus.COMPLETED:
        tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{name}: the run did not complete ({tail[0]})")
    assert isinstance(started, RunStarted)
    window = finished.wall_time - started.wall_time
    return ScalingRun(shape.train_samples / window, window, finished.exchange_s)
