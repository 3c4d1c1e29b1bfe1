"""The run's cost told before it is spent: memory counted from the host's shapes (checked against
what autograd really saves), refused when it cannot fit, and an epoch's time from a timed batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec
import pytest
import torch

from esper_engine.config import HostConfig, TrainingConfig
from esper_engine.contracts import RunStarted
from esper_engine.footprint import (
    FLOAT_BYTES,
    MemoryEstimate,
    check_memory,
    estimate_memory,
    host_cost,
)
from esper_engine.model import create_model, run_host_spec
from esper_engine.preflight import validate_run
from esper_engine.tasks import load_task
from overwatch.cli import main

BASE_CNN = TrainingConfig(host=HostConfig(preset="base"), batch_size=8)


@pytest.fixture(scope="module")
def images():
    return load_task("synthetic-images", seed=0, scale="small")


@pytest.fixture(scope="module")
def stories():
    return load_task("synthetic-stories", seed=0, scale="small")


def _saved_on_cpu(model: torch.nn.Module, x: torch.Tensor) -> int:
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return total


def test_activations_are_what_autograd_saves_for_a_real_batch(images) -> None:
    spec = run_host_spec(BASE_CNN, images)
    estimate = estimate_memory(BASE_CNN, images, spec, n_envs=1)
    model = create_model(images, "cpu", spec=spec)
    x = images.prepare(images.train_x[: BASE_CNN.batch_size])
    assert estimate.activations == _saved_on_cpu(model, x) > 0


def test_memory_counts_every_env_and_the_checkpoint_only_when_written(images) -> None:
    spec = run_host_spec(BASE_CNN, images)
    one = estimate_memory(BASE_CNN, images, spec, n_envs=1)
    four = estimate_memory(BASE_CNN, images, spec, n_envs=4)
    assert (four.models, four.snapshots, four.checkpoints, four.activations) == (
        4 * one.models,
        4 * one.snapshots,
        4 * one.checkpoints,
        4 * one.activations,
    )
    # host 94,762 + the largest seed of the heuristic's 2 live ones (conv_heavy at 128 and 64)
    seeds = 590_464 + 147_776
    assert one.models == (94_762 + seeds) * FLOAT_BYTES * 3  # weights, grads, momentum
    assert one.snapshots == (94_762 + seeds) * FLOAT_BYTES * 2  # weights, momentum
    assert one.checkpoints == (94_762 + seeds) * FLOAT_BYTES * 4  # and the snapshot's
    quiet = msgspec.structs.replace(BASE_CNN, checkpoint_every=0)
    assert estimate_memory(quiet, images, spec, n_envs=1).checkpoints == 0
    static = msgspec.structs.replace(BASE_CNN, policy="static")
    assert estimate_memory(static, images, spec, n_envs=1).models == (94_762 * FLOAT_BYTES * 3)


def test_a_run_that_cannot_fit_is_one_line() -> None:
    fits = MemoryEstimate(
        models=10, snapshots=5, checkpoints=5, activations=10, available=30, cpu_available=30
    )
    check_memory(fits, "cpu")
    short = dataclasses.replace(fits, available=29, cpu_available=29)
    with pytest.raises(ValueError, match=r"needs about .* on cpu .* cpu has .* free") as caught:
        check_memory(short, "cpu")
    assert "\n" not in str(caught.value)
    # on a GPU: weights and activations against the device, snapshots and checkpoints the CPU
    check_memory(dataclasses.replace(fits, available=20, cpu_available=10), "cuda")
    with pytest.raises(ValueError, match="on cuda"):
        check_memory(dataclasses.replace(fits, available=19, cpu_available=10), "cuda")
    with pytest.raises(ValueError, match="on cpu"):
        check_memory(dataclasses.replace(fits, available=20, cpu_available=9), "cuda")


def test_the_cli_refuses_a_run_too_big_for_the_machine_before_allocating_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 5 blocks of 4096 channels: 604M parameters per env, far above any test machine's memory
    args = ["run", "--headless", "--no-record", "--set", "host.widths=4096,4096,4096,4096,4096"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("loading task")
    assert "the run needs about" in err[1] and "GiB free" in err[1]


def test_validate_run_times_a_batch_and_leaves_the_random_stream_alone(stories) -> None:
    config = TrainingConfig(task="synthetic-stories", n_envs=2, batch_size=4, batches_per_epoch=3)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    estimate = validate_run(config, stories)
    assert torch.equal(torch.rand(3), expected)
    assert estimate.epoch_s > 0
    assert estimate.spec.label() == "transformer 64x3 h4"
    assert (estimate.cost.params, estimate.cost.flops_per_sample) == (187_200, 20_971_520)
    assert validate_run(config, stories, timed=False).epoch_s == 0.0


def test_run_started_tells_the_host_and_the_estimate(tmp_path: Path, images) -> None:
    from esper_engine.session import prepare_session

    config = msgspec.structs.replace(
        BASE_CNN, n_envs=1, episodes=1, epochs=1, batches_per_epoch=2, val_batches=1
    )
    session = prepare_session(config, run_id="host", record_path=tmp_path / "r.msgpack")
    session.start()
    assert session.wait(120)
    started = next(e for e in session.poll() if isinstance(e, RunStarted))
    assert (started.host_kind, started.host_preset, started.host_sizes) == (
        "cnn",
        "base",
        "32-64-128",
    )
    assert (started.host_params, started.host_flops) == (94_762, 20_646_400)
    assert started.memory_estimate > 0 and started.epoch_s_estimate > 0
    assert host_cost(images, run_host_spec(config, images)).params == started.host_params
