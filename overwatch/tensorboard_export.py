"""Export a recording as TensorBoard event files: one TensorBoard run per env, one for the policy.

Layout under the output directory: ``env1/``, ``env2/``, ... (numbered from 1, as the console
shows them), ``policy/`` for the PPO updates and ``run/`` for the run's total FLOPs, so
TensorBoard overlays the envs on one chart per tag. Tags are namespaced (``val/accuracy``,
``grad_norm/post_clip``, ``governor/rollbacks``, ``shapley/<slot>``, ``ppo/approx_kl``,
``flops/train``, ``report/accuracy``) and every point carries the event's recorded wall time.

Steps count from 1, as the console counts epochs: epoch figures and Shapley values at the env's
epoch counted across episodes (``episode * epochs + epoch + 1``: a run's first epoch is step 1,
episode 2's first follows episode 1's last); per-batch figures at the batch counted across the run
(``(epoch_step - 1) * batches_per_epoch + batch + 1``); PPO figures at the update number (from 1).
A figure that is None (perplexity of an image task, the reward of an undecided epoch, a disabled
clip threshold) is left out; NaN and infinite values are written as they are.

The writer is tensorboardX (the optional ``[tensorboard]`` extra): it needs only protobuf, where
TensorBoard's own writer brings the whole server. TensorBoard itself is needed only to view.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from esper_engine.contracts import (
    Attribution,
    BatchStats,
    EpochSummary,
    Event,
    OperatorNote,
    PolicyUpdate,
    RunFinished,
    RunStarted,
)

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter

EXTRA_HINT = "pip install 'overwatch-esper[tensorboard]'"
POLICY_RUN = "policy"
RUN_RUN = "run"  # run-level figures: the FLOPs the whole run spent (RunFinished)
EVENT_FILE_GLOB = "events.out.tfevents.*"
COMMON_FIELDS = frozenset(f.name for f in msgspec.structs.fields(Event))

# EpochSummary field -> tag. A numeric field not named here is still exported, as
# ``epoch/<field>``, so a field added to the contract reaches TensorBoard with no change here.
EPOCH_TAGS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "perplexity": "val/perplexity",
    "grad_norm_pre_clip": "grad_norm/pre_clip",
    "grad_norm_post_clip": "grad_norm/post_clip",
    "clipped_fraction": "grad_norm/clipped_fraction",
    "clip_threshold": "grad_norm/clip_threshold",
    "consecutive_panics": "governor/consecutive_panics",
    "total_panics": "governor/total_panics",
    "rollbacks": "governor/rollbacks",
    "skipped_steps": "governor/skipped_steps",
    "reward": "policy/reward",
    "samples_per_s": "perf/samples_per_s",
    "host_params": "params/host",
    "seed_params": "params/seed",
    # issue 24: this episode's FLOPs by kind so far, and the held-out report split's figures
    "train_flops": "flops/train",
    "val_flops": "flops/val",
    "attribution_flops": "flops/attribution",
    "report_flops": "flops/report",
    "report_accuracy": "report/accuracy",
    "report_loss": "report/loss",
    "report_perplexity": "report/perplexity",
    # issue 25: the host's lr as it ran (schedule x operator factor), the operator's knobs
    "host_lr": "lr/host",
    "lr_scale": "lr/operator_scale",
    "governor_sensitivity": "governor/sensitivity",
}
NOTES_TAG = "notes/operator"  # OperatorNote as TensorBoard text, on its env's run (or run/)
BATCH_TAGS = {
    "loss": "batch/loss",
    "grad_norm_pre_clip": "batch/grad_norm_pre_clip",
    "grad_norm_post_clip": "batch/grad_norm_post_clip",
}


class MissingExtra(Exception):
    """tensorboardX is not installed; the message says how to install it."""


class OutputNotEmpty(Exception):
    """The output directory already holds event files (TensorBoard would show both runs)."""


def load_writer_class() -> type[SummaryWriter]:
    try:
        from tensorboardX import SummaryWriter  # an optional extra
    except ImportError:
        message = f"--format tensorboard needs the tensorboard extra: {EXTRA_HINT}"
        raise MissingExtra(message) from None
    return SummaryWriter


def write_tensorboard(events: Iterable[Event], output: str | os.PathLike[str]) -> int:
    """Write the events' figures under the directory ``output``; returns the points written."""
    writer_class = load_writer_class()
    # It warns on every NaN or infinite value; a panicking env's NaN loss is the point here.
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
    root = Path(output)
    if root.exists() and not root.is_dir():
        raise OutputNotEmpty(f"--output {root} is a file; TensorBoard needs a directory")
    if root.is_dir() and next(root.rglob(EVENT_FILE_GLOB), None) is not None:
        raise OutputNotEmpty(
            f"--output {root} already holds TensorBoard event files; "
            "choose an empty or new directory"
        )
    count = 0
    with ExitStack() as stack:
        writers: dict[str, SummaryWriter] = {}

        def writer(run: str) -> SummaryWriter:
            if run not in writers:
                writers[run] = writer_class(logdir=str(root / run), flush_secs=3600)
                stack.callback(writers[run].close)
            return writers[run]

        events = list(events)
        for run, tag, value, step, wall_time in scalars(events):
            writer(run).add_scalar(tag, value, global_step=step, walltime=wall_time)
            count += 1
        for run, text, step, wall_time in notes(events):
            writer(run).add_text(NOTES_TAG, text, global_step=step, walltime=wall_time)
            count += 1
    return count


def notes(events: Iterable[Event]) -> Iterator[tuple[str, str, int, float]]:
    """(run, text, step, wall time) of every operator note: an env's on its run, the whole
    run's on ``run/``; the step is the epoch it was written in, counted as the scalars are."""
    epochs = 1
    for event in events:
        if isinstance(event, RunStarted):
            epochs = max(event.epochs, 1)
        elif isinstance(event, OperatorNote):
            run = RUN_RUN if event.env is None else env_run(event.env)
            who = f" ({event.console})" if event.console else ""
            step = event.episode * epochs + event.epoch + 1
            yield run, f"{event.text}{who}", step, event.wall_time


def scalars(events: Iterable[Event]) -> Iterator[tuple[str, str, float, int, float]]:
    """(run, tag, value, step, wall time) for every figure TensorBoard gets, in event order."""
    epochs, batches, last_step = 1, 1, 1
    for event in events:
        if isinstance(event, RunStarted):
            epochs, batches = max(event.epochs, 1), max(event.batches_per_epoch, 1)
            continue
        if isinstance(event, RunFinished):
            if event.total_flops:  # 0: a recording older than the figure
                flops = float(event.total_flops)
                yield RUN_RUN, "flops/total", flops, last_step, event.wall_time
            continue
        if isinstance(event, PolicyUpdate):
            for name, value in _numbers(event):
                if name != "update":
                    yield POLICY_RUN, f"ppo/{name}", value, event.update, event.wall_time
            continue
        if event.env is None:
            continue
        run = env_run(event.env)
        step = event.episode * epochs + event.epoch + 1  # from 1, as the console counts
        if isinstance(event, EpochSummary):
            last_step = max(last_step, step)
            for name, value in _numbers(event):
                yield run, EPOCH_TAGS.get(name, f"epoch/{name}"), value, step, event.wall_time
            for slot in event.slots:
                yield run, f"slot/{slot.slot_id}/alpha", slot.alpha, step, event.wall_time
        elif isinstance(event, BatchStats):
            batch_step = (step - 1) * batches + event.batch + 1
            for name, tag in BATCH_TAGS.items():
                yield run, tag, getattr(event, name), batch_step, event.wall_time
        elif isinstance(event, Attribution):
            for slot_id, value in event.shapley.items():
                yield run, f"shapley/{slot_id}", value, step, event.wall_time
            yield run, "shapley/v_all", event.full_value, step, event.wall_time
            yield run, "shapley/v_none", event.empty_value, step, event.wall_time


def env_run(env: int) -> str:
    """The TensorBoard run of an env: numbered from 1, as the console shows it."""
    return f"env{env + 1}"


def _numbers(event: Event) -> Iterator[tuple[str, float]]:
    """The event's own numeric fields (not the common ones, not None, bools as 0/1)."""
    for field in msgspec.structs.fields(event):
        if field.name in COMMON_FIELDS:
            continue
        value = getattr(event, field.name)
        if isinstance(value, int | float):
            yield field.name, float(value)
