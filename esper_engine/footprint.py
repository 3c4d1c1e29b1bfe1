"""What a run costs, told before it is spent: the host's size and compute, the run's memory and
an epoch's time.

- ``host_cost``: parameters and forward FLOPs per sample (``FlopCounterMode`` on one sample).
- ``estimate_memory``: weights, gradients and SGD momentum of every env's host and of the seeds
  it may grow, and the activations of a batch (the tensors autograd saves, counted on the meta
  device, so nothing is computed), on the run's device; the governor's snapshots and a
  checkpoint's copies in CPU memory. ``check_memory`` checks each against what is free there
  (one line when it cannot fit).
- ``time_epoch``: one real training step at the run's batch size, scaled to an epoch.

Every figure is an estimate from the host as built: the seeds a policy grows and the
attribution's coalitions come on top of the epoch time, and the memory counts the largest seed
in every slot the policy may fill.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from esper_engine.blueprints import blueprint_names
from esper_engine.host_presets import HostSpec, resolve_host
from esper_engine.hosts import CNNHost, TransformerHost
from esper_engine.model import MorphogeneticModel, create_model

FLOAT_BYTES = 4  # weights, grads and optimizer state are float32 (AMP casts activations only)
# Per parameter, every env holds: weights, gradients and SGD momentum on the device; the
# governor's snapshot of weights and momentum in CPU memory; and at a checkpoint the detached
# copy of weights, momentum and snapshot (4 more, in CPU memory).
DEVICE_COPIES = 3
SNAPSHOT_COPIES = 2
CHECKPOINT_COPIES = 4
# Timed steps after the warm-up: up to 5, while they take under a second in all (the fastest
# counts; on a loaded machine single steps of the same batch vary 10x).
TIMED_STEPS = 5
TIMING_BUDGET_S = 1.0


@dataclass(frozen=True)
class HostCost:
    params: int
    flops_per_sample: int  # forward pass, as FlopCounterMode counts it


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes; ``needed`` is what the run adds to what the process already holds."""

    models: int  # hosts + largest seeds x (weights, grads, momentum), on the device
    snapshots: int  # the governor's snapshots (weights, momentum), in CPU memory
    checkpoints: int  # the detached copies one checkpoint holds while it is written (CPU)
    activations: int  # one training batch per env (saved for backward), on the device
    available: int  # free memory on the run's device (CPU: MemAvailable)
    cpu_available: int  # MemAvailable (the same as ``available`` for a CPU run)

    @property
    def on_device(self) -> int:
        return self.models + self.activations

    @property
    def in_cpu_memory(self) -> int:
        return self.snapshots + self.checkpoints

    @property
    def needed(self) -> int:
        return self.on_device + self.in_cpu_memory


@dataclass(frozen=True)
class RunEstimate:
    """What ``RunStarted`` tells of the run before it trains."""

    spec: HostSpec
    cost: HostCost
    memory: MemoryEstimate
    epoch_s: float  # seconds per epoch, all envs; 0.0 when not timed


def estimate_run(config: Any, task: Any) -> RunEstimate:
    """The host's cost and the run's memory, untimed (``trainer.validate_run`` times a batch)."""
    spec = resolve_host(config.host, task.name, task.host_kind)
    memory = estimate_memory(config, task, spec, config.n_envs)
    return RunEstimate(spec, host_cost(task, spec), memory, 0.0)


def host_cost(task: Any, spec: HostSpec) -> HostCost:
    """A fresh host (CPU, its own RNG state) measured on one validation sample."""
    with torch.random.fork_rng(devices=[]):
        host = create_model(task, "cpu", spec=spec).host.eval()
    sample = task.prepare(task.val_x[:1])
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        host(sample)
    return HostCost(sum(p.numel() for p in host.parameters()), counter.get_total_flops())


def estimate_memory(config: Any, task: Any, spec: HostSpec, n_envs: int) -> MemoryEstimate:
    """The memory ``n_envs`` envs of this run need on ``config.device`` (see the module doc)."""
    model = _meta_model(task, spec)
    host_params = sum(p.numel() for p in model.host.parameters())
    seed_params = _largest_seeds(model, config)
    per_env = (host_params + seed_params) * FLOAT_BYTES
    x = torch.empty((config.batch_size, *task.train_x.shape[1:]), device="meta")
    activations = _saved_bytes(model, task.prepare(x.to(task.train_x.dtype)))
    cpu_available = available_memory("cpu")
    on_cuda = torch.device(config.device).type == "cuda"
    return MemoryEstimate(
        models=n_envs * per_env * DEVICE_COPIES,
        snapshots=n_envs * per_env * SNAPSHOT_COPIES,
        checkpoints=n_envs * per_env * CHECKPOINT_COPIES if config.checkpoint_every else 0,
        activations=n_envs * activations,
        available=available_memory(config.device) if on_cuda else cpu_available,
        cpu_available=cpu_available,
    )


def check_memory(estimate: MemoryEstimate, device: str) -> None:
    """ValueError (one line) when the run cannot fit the memory the machine has free."""
    if torch.device(device).type == "cpu":
        checks = [(estimate.needed, estimate.available, "cpu")]
    else:  # weights and activations on the device; snapshots and checkpoints in CPU memory
        checks = [
            (estimate.on_device, estimate.available, device),
            (estimate.in_cpu_memory, estimate.cpu_available, "cpu"),
        ]
    for needed, available, where in checks:
        if needed > available:
            raise ValueError(
                f"the run needs about {gib(needed)} on {where} ({describe_memory(estimate)}), "
                f"{where} has {gib(available)} free: use fewer envs (--n-envs), a smaller "
                "batch_size or a smaller host (host.preset)"
            )


def describe_memory(estimate: MemoryEstimate) -> str:
    return (
        f"models {gib(estimate.models)}, snapshots {gib(estimate.snapshots)}, checkpoint "
        f"{gib(estimate.checkpoints)}, activations {gib(estimate.activations)}"
    )


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def available_memory(device: str | torch.device) -> int:
    """Free bytes on the device: CUDA's free memory, else the system's MemAvailable."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def time_epoch(config: Any, task: Any, spec: HostSpec, n_envs: int) -> float:
    """Seconds one epoch of ``n_envs`` envs will take, from timed training steps.

    A throwaway model on the run's device (its own RNG state: the run's streams are untouched)
    takes a warm-up step, then up to five timed ones (the fastest counts: the machine's other
    load only slows a step), all on ``batch_size`` samples, in a thread of their own as the
    session's trainer runs (on a loaded CPU the main thread's OpenMP team ran the same step
    up to 30x slower); an epoch is ``batches_per_epoch`` steps and ``val_batches`` validation
    passes of twice the batch (a forward is about a third of a step) per env.
    """
    outcome: list[float | BaseException] = []

    def timed() -> None:
        try:
            outcome.append(_step_seconds(config, task, spec))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            outcome.append(exc)

    worker = threading.Thread(target=timed, name="esper-estimate")
    worker.start()
    worker.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    per_env = outcome[0] * (config.batches_per_epoch + config.val_batches * 2 / 3)
    return per_env * n_envs


def _step_seconds(config: Any, task: Any, spec: HostSpec) -> float:
    device = torch.device(config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = create_model(task, device, spec=spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = task.train_x[: config.batch_size], task.train_y[: config.batch_size]
    x, y = task.prepare(x.to(device)), y.to(device)
    _step(model, optimizer, task, x, y)  # the first step at a shape pays for its kernels' setup
    times: list[float] = []
    while len(times) < TIMED_STEPS and sum(times) < TIMING_BUDGET_S:  # the least loaded of a few
        _synchronize(device)
        start = time.perf_counter()
        _step(model, optimizer, task, x, y)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    # a task with fewer samples than a batch times a smaller one: scale it up
    return min(times) * config.batch_size / max(len(x), 1)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, task: Any, x: Any, y: Any) -> None:
    optimizer.zero_grad(set_to_none=True)
    task.loss(model(x), y).backward()
    optimizer.step()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _meta_model(task: Any, spec: HostSpec) -> MorphogeneticModel:
    """The run's model with meta tensors: shapes without memory or compute."""
    with torch.device("meta"):
        if spec.kind == "cnn":
            host: CNNHost | TransformerHost = CNNHost(
                num_classes=task.num_classes, **spec.host_kwargs()
            )
        else:
            host = TransformerHost(
                vocab=task.num_classes, seq_len=task.seq_len, **spec.host_kwargs()
            )
        return MorphogeneticModel(host)


def _largest_seeds(model: MorphogeneticModel, config: Any) -> int:
    """Parameters of the largest blueprint in every slot the policy may fill at once."""
    per_slot = [
        max(model.blueprint_param_count(sid, name) for name in blueprint_names(model.host_kind))
        for sid in model.slot_ids
    ]
    live = len(per_slot)
    if config.policy == "heuristic":
        live = min(live, config.heuristic.max_live)
    elif config.policy == "static":
        live = 0
    return sum(sorted(per_slot, reverse=True)[:live])


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one forward of ``x`` (meta tensors: counted only)."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return total
