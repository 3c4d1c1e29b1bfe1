"""The checks a run passes before any thread starts, and what it is expected to cost."""

from __future__ import annotations

import torch

from esper_engine.batching import check_samples
from esper_engine.config import TrainingConfig
from esper_engine.footprint import (
    RunEstimate,
    check_memory,
    estimate_memory,
    host_cost,
    time_epoch,
)
from esper_engine.model import create_model, resolve_device, run_host_spec
from esper_engine.policy.driver import build_policy
from esper_engine.tasks import Task


def validate_run(config: TrainingConfig, task: Task, *, timed: bool = True) -> RunEstimate:
    """Check what only the task can tell (device, slot ids, memory, the policy file) before a
    thread starts; the run's estimate (``timed``: with one timed batch for the epoch time)."""
    config.validate()
    check_samples("training set", task.train_x, task.train_y)
    check_samples("validation set", task.val_x, task.val_y)
    resolve_device(config.device)
    spec = run_host_spec(config, task)
    memory = estimate_memory(config, task, spec, config.n_envs)
    check_memory(memory, config.device)  # before any weight is allocated
    with torch.random.fork_rng(devices=[]):  # a check: it must not move the run's streams
        model = create_model(task, config.device, slots=config.slots, spec=spec)
    model.check_plan(config.lifecycle.plant)  # lifecycle.plant names this host's slots
    if config.policy == "ppo" and config.ppo.init_file is not None:  # refused before it starts
        build_policy(config, model.slot_ids, task.host_kind, spec)
    epoch_s = time_epoch(config, task, spec, config.n_envs) if timed else 0.0
    return RunEstimate(spec, host_cost(task, spec), memory, epoch_s)
