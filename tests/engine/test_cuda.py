"""The CUDA path, run where a GPU is (``pytest -m cuda``; bench/gpu_check.sh): AMP with a
GradScaler per env, a CUDA stream per env, a base host on the device, and exact resume there.
Skipped on a machine without CUDA."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import torch

from esper_engine.config import HostConfig, TrainingConfig
from esper_engine.contracts import EpochSummary, RunStarted, RunStatus
from esper_engine.session import TrainingSession
from esper_engine.tasks import load_task
from esper_engine.trainer import VectorizedTrainer
from tests.engine.test_resume import _finish, _resumed, _run, comparable

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SMALL = TrainingConfig(
    n_envs=2,
    episodes=1,
    epochs=4,
    batches_per_epoch=5,
    batch_size=32,
    val_batches=2,
    device="cuda",
)


@pytest.fixture(scope="module")
def images():
    return load_task("synthetic-images", seed=0, scale="small")


class ListSink:
    def __init__(self) -> None:
        self.events: list = []

    def emit(self, event) -> None:
        self.events.append(event)


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_a_base_host_trains_on_cuda_with_each_amp_mode(images, amp: str) -> None:
    config = msgspec.structs.replace(SMALL, amp=amp, host=HostConfig(preset="base"))
    sink = ListSink()
    trainer = VectorizedTrainer(config, sink, run_id="cuda", task=images)
    finished = trainer.run()
    assert finished.status == RunStatus.COMPLETED, finished.error
    summaries = [e for e in sink.events if isinstance(e, EpochSummary)]
    assert len(summaries) == config.n_envs * config.epochs
    assert all(s.val_loss == s.val_loss for s in summaries)  # finite: not NaN
    assert summaries[-1].val_loss < summaries[0].val_loss + 0.5  # it trains, not diverges
    states = [env.state for env in trainer.envs]
    assert len({id(s.stream) for s in states}) == config.n_envs  # a stream per env
    if amp == "fp16":
        assert len({id(s.scaler) for s in states}) == config.n_envs  # a GradScaler per env
    started = next(e for e in sink.events if isinstance(e, RunStarted))
    assert started.host_sizes == "32-64-128" and started.memory_estimate > 0


def test_the_memory_estimate_bounds_what_the_device_holds(images) -> None:
    config = msgspec.structs.replace(SMALL, host=HostConfig(preset="base"))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    sink = ListSink()
    VectorizedTrainer(config, sink, run_id="cuda", task=images).run()
    peak = torch.cuda.max_memory_allocated() - before
    started = next(e for e in sink.events if isinstance(e, RunStarted))
    assert 0 < peak <= started.memory_estimate, (peak, started.memory_estimate)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_stopped_then_resumed_on_cuda_equals_uninterrupted(
    tmp_path: Path, images, amp: str
) -> None:
    config = msgspec.structs.replace(SMALL, amp=amp, epochs=5, batch_stats_every=1)
    reference = tmp_path / "reference.msgpack"
    _run(config, images, reference)
    path = tmp_path / "cut.msgpack"
    _run(config, images, path, stop_after=4)
    assert _finish(_resumed(path, images)).finished.status == RunStatus.COMPLETED
    assert comparable(path) == comparable(reference)


def test_a_cuda_session_reports_its_device(images) -> None:
    session = TrainingSession(msgspec.structs.replace(SMALL, epochs=1), images, run_id="dev")
    session.start()
    assert session.wait(120)
    started = next(e for e in session.poll() if isinstance(e, RunStarted))
    assert started.device == "cuda"
