"""Training throughput: the engine's trainer against a bare PyTorch loop doing the same work.

Both sides train the same host networks (same initial weights), on the same batches drawn by the
same ``SharedBatchIterator``, with the same optimizers (SGD, momentum 0.9, the task's host lr) and
the same global gradient clip, and both validate every env on the same fixed validation set every
epoch. Both sides also build their models and batches inside the timed window. What the trainer
does on top (governor snapshots, observations, telemetry, recording, per-batch bookkeeping) is
the overhead being measured.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from _timing import Timed, stopwatch
from torch import Tensor

from esper_engine.batching import SharedBatchIterator
from esper_engine.config import HostConfig, TrainingConfig
from esper_engine.contracts import Event, RunStatus
from esper_engine.model import create_model, run_host_spec
from esper_engine.recording import Recorder
from esper_engine.report import report_batches
from esper_engine.session import TrainingSession
from esper_engine.tasks import Task


@dataclass(frozen=True)
class RunShape:
    """The size of one measured run (one episode, so no host is re-created mid-run)."""

    epochs: int
    batches_per_epoch: int
    n_envs: int = 4
    batch_size: int = 64
    val_batches: int = 8
    seed: int = 0
    host: str = "tiny"  # the host preset (host.preset): tiny or base

    @property
    def label(self) -> str:
        return (
            f"{self.epochs} epochs x {self.batches_per_epoch} batches x {self.n_envs} envs, "
            f"{self.host} host"
        )

    @property
    def train_samples(self) -> int:
        return self.epochs * self.batches_per_epoch * self.n_envs * self.batch_size


def trainer_config(shape: RunShape) -> TrainingConfig:
    """Static policy (no seed ever grows, so both sides do the same work every run) and no
    attribution (it has its own figure); the governor, telemetry and batch stats stay on.
    Checkpoints are off: ``checkpoint_overhead`` turns them on for its own side."""
    return TrainingConfig(
        n_envs=shape.n_envs,
        episodes=1,
        epochs=shape.epochs,
        batches_per_epoch=shape.batches_per_epoch,
        batch_size=shape.batch_size,
        val_batches=shape.val_batches,
        seed=shape.seed,
        policy="static",
        attribution_every=0,
        checkpoint_every=0,
        host=HostConfig(preset=shape.host),
    )


def fixed_val_batches(task: Task, config: TrainingConfig) -> list[tuple[Tensor, Tensor]]:
    """The validation set the trainer uses: ``val_batches`` batches of 2 x batch_size."""
    size = config.batch_size * 2
    n = min(len(task.val_x), size * config.val_batches)
    return [
        (task.prepare(task.val_x[start : start + size]), task.val_y[start : start + size])
        for start in range(0, n, size)
    ]


def trainer_seconds(
    config: TrainingConfig, task: Task, record: bool, events: list[Event] | None = None
) -> Timed:
    """Wall time of one run through ``TrainingSession``, the path ``overwatch run`` uses.

    Its event queue is drained by nobody (the console's cost is ``console_overhead``); it is far
    larger than the events of one run, so nothing is dropped either. The run's events are added
    to ``events`` when given (after the timed window).
    """
    with tempfile.TemporaryDirectory(prefix="overwatch-bench-") as tmp:
        path = Path(tmp) / "run.msgpack" if record else None
        session = TrainingSession(config, task, run_id="bench", record_path=path)
        with stopwatch() as watch:  # closing the recorder (flush, fsync) is inside
            session.start()
            session.wait()
    if events is not None:
        events += session.poll()
    finished = session.finished
    if finished is None or finished.status != RunStatus.COMPLETED:
        error = "no RunFinished" if finished is None else f"{finished.status}: {finished.error}"
        raise RuntimeError(f"benchmark run did not complete ({error})")
    return watch.result


def recorder_seconds(events: list[Event]) -> Timed:
    """What a run's recorder does, alone: encode and write ``events``, then close (fsync)."""
    with tempfile.TemporaryDirectory(prefix="overwatch-bench-") as tmp:
        with stopwatch() as watch:
            recorder = Recorder(Path(tmp) / "run.msgpack")
            for event in events:
                recorder.emit(event)
            recorder.close()
    return watch.result


def bare_loop_seconds(config: TrainingConfig, task: Task) -> Timed:
    """Time of the minimal loop doing the trainer's work with plain PyTorch."""
    with stopwatch() as watch:
        _bare_loop(config, task)
    return watch.result


def _bare_loop(config: TrainingConfig, task: Task) -> None:
    hosts = []
    for index in range(config.n_envs):
        torch.manual_seed(config.seed * 1000 + index)  # the trainer's per-env initial weights
        # the plain host, no slot wrappers, of the run's size
        hosts.append(create_model(task, config.device, spec=run_host_spec(config, task)).host)
    lr = config.host_lr or task.host_lr
    optimizers = [torch.optim.SGD(h.parameters(), lr=lr, momentum=0.9) for h in hosts]
    batches = SharedBatchIterator(
        task.train_x,
        task.train_y,
        config.n_envs,
        config.batch_size,
        seed=config.seed,
        device=config.device,
        prepare=task.prepare,
    )
    val = fixed_val_batches(task, config)
    # The held-out report split, evaluated where the trainer evaluates it (the episode's last
    # epoch at least): work the trainer does since issue 24, so the bare loop does it too.
    report = report_batches(task, config, torch.device(config.device))
    for _ in range(config.episodes):
        for epoch in range(config.epochs):
            for _ in range(config.batches_per_epoch):
                for host, optimizer, (x, y) in zip(hosts, optimizers, next(batches), strict=True):
                    optimizer.zero_grad(set_to_none=True)
                    loss = task.loss(host(x), y)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(host.parameters(), config.max_grad_norm)
                    optimizer.step()
            _validate(hosts, val, task)
            if report and config.report_due(epoch):
                _validate(hosts, report, task)


def _validate(hosts: list[torch.nn.Module], val: list[tuple[Tensor, Tensor]], task: Task) -> None:
    """Loss and correct counts of every host on the fixed set, one host sync for the epoch."""
    sums = []
    for host in hosts:
        host.eval()
        with torch.inference_mode():
            for x, y in val:
                logits = host(x)
                sums += [task.loss(logits, y) * len(y), task.correct(logits, y).float()]
        host.train()
    torch.stack(sums).tolist()
