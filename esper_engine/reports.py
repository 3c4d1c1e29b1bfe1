"""What the trainer tells its sink: every event stamped with the run's common fields.

The loop (``trainer.py``) decides when; this module says what each report holds, so the story
stays free of field lists. Nothing here waits for the device: figures arrive as plain numbers.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import msgspec

from esper_engine.contracts import (
    BatchStats,
    EpochProgress,
    EpochSummary,
    Event,
    PolicyUpdate,
    RunFinished,
    RunResumed,
    RunStarted,
    RunStatus,
)
from esper_engine.resources import ResourceSampler
from esper_engine.telemetry import TelemetrySink
from esper_engine.training_step import perplexity

if TYPE_CHECKING:
    from esper_engine.config import TrainingConfig
    from esper_engine.env_runtime import EnvRuntime
    from esper_engine.epoch_figures import EpochFigures
    from esper_engine.footprint import RunEstimate
    from esper_engine.tasks import Task

# EpochProgress at most this often per env: a clock read per batch, never a device sync.
PROGRESS_PERIOD_S = 0.5


class Reporter:
    """The run's events, each stamped with the run id, the env and where the run is."""

    def __init__(
        self,
        sink: TelemetrySink,
        position: Callable[[], tuple[int, int]],
        *,
        paused_s: Callable[[], float],
        batch_size: int,
        progress: bool = True,
        resources: ResourceSampler | None = None,
    ) -> None:
        """``position``: (episode, epoch) now; ``paused_s``: the epoch's time paused so far
        (throughput excludes it); ``progress``: whether this process sends EpochProgress (a
        sharded run's workers do not: their events reach the leader at the epoch's end);
        ``resources``: the process's sampler (every rank has one; None: no ResourceSample)."""
        self.sink = sink
        self.run_id = ""
        self._position = position
        self._paused_s = paused_s
        self._batch_size = batch_size
        self._progress = progress
        self._resources = resources
        self._progress_due = self._epoch_started = self._train_started = 0.0

    def common(self, env: int | None) -> dict:
        episode, epoch = self._position()
        return {
            "run_id": self.run_id,
            "env": env,
            "episode": episode,
            "epoch": epoch,
            "wall_time": time.time(),
        }

    def emit(self, event: Event, env: int | None = None) -> None:
        """``event`` (made without the common fields) for ``env`` (None: the run's)."""
        self.sink.emit(msgspec.structs.replace(event, **self.common(env)))

    def emit_for_own_env(self, event: Event) -> None:
        """``event`` with the run's fields, keeping the env it names (acks, transitions)."""
        self.sink.emit(msgspec.structs.replace(event, **{**self.common(None), "env": event.env}))

    def run_started(
        self,
        config: TrainingConfig,
        task: Task,
        env: EnvRuntime,
        blueprints: Sequence[str],
        estimate: RunEstimate,
    ) -> None:
        """RunStarted, the host and seed sizes read from ``env`` (the first, as built)."""
        model = env.model
        self.emit(
            RunStarted(
                task=task.name,
                task_kind=task.kind,
                n_envs=config.n_envs,
                slot_ids=list(model.slot_ids),
                policy=config.policy,
                episodes=config.episodes,
                epochs=config.epochs,
                batches_per_epoch=config.batches_per_epoch,
                random_guess_loss=task.random_guess_loss,
                blueprints=list(blueprints),
                device=config.device,
                config=msgspec.to_builtins(config),  # the effective config, groups nested
                host_params=model.host_param_count(),
                seed_params=model.seed_param_count(),
                host_kind=estimate.spec.kind,
                host_preset=estimate.spec.preset,
                host_sizes=estimate.spec.sizes(),
                host_flops=estimate.cost.flops_per_sample,
                memory_estimate=estimate.memory.needed,
                epoch_s_estimate=estimate.epoch_s,
            )
        )

    def run_resumed(self, episode: int, epoch: int, recording_bytes: int) -> None:
        self.emit(
            RunResumed(
                from_episode=episode,
                from_epoch=epoch,
                recording_bytes=recording_bytes,
                pid=os.getpid(),
            )
        )

    def start_epoch(self, now: float) -> None:
        self._epoch_started = self._progress_due = now

    def start_training(self) -> None:
        self._train_started = time.perf_counter()

    def batch_stats(self, env: EnvRuntime, batch: int, stats: list[float]) -> None:
        """BatchStats from ``epoch_figures.batch_stats_tensor``'s figures, read back."""
        loss, pre, post, clipped, skipped = stats
        elapsed = time.perf_counter() - self._train_started - self._paused_s()
        samples = (batch + 1) * self._batch_size
        self.emit(
            BatchStats(
                batch=batch,
                loss=loss,
                grad_norm_pre_clip=pre,
                grad_norm_post_clip=post,
                clip_threshold=env.clip_threshold,
                clipped=clipped > 0,
                skipped=skipped > 0,
                samples_per_s=samples / elapsed if elapsed > 0 else 0.0,
            ),
            env.index,
        )

    def progress(self, phase: str, envs: Sequence[EnvRuntime], done: int, batches: int) -> None:
        """EpochProgress for ``envs`` when PROGRESS_PERIOD_S has passed since the last: the
        batch counter and the clock only, so the loop never waits for the device."""
        now = time.perf_counter()
        if self._resources is not None and self._resources.due(now):
            self.emit(self._resources.sample())  # a worker's is forwarded with its other events
        if now < self._progress_due or not self._progress:
            return
        self._progress_due = now + PROGRESS_PERIOD_S
        elapsed = now - self._epoch_started - self._paused_s()
        # One time for the whole report: stamped per env, an env's stamp would move with how
        # long the emits before it took (a flush each), and its reports could come closer
        # together than PROGRESS_PERIOD_S.
        stamp = time.time()
        for env in envs:
            self.sink.emit(
                EpochProgress(
                    **{**self.common(env.index), "wall_time": stamp},
                    phase=phase,
                    batch=done,
                    batches=batches,
                    elapsed_s=elapsed,
                )
            )

    def epoch_summary(
        self, env: EnvRuntime, fig: EpochFigures, elapsed: float, lm: bool, report: dict
    ) -> None:
        """``report``: the held-out report split's figures on the epochs that measure it."""
        gov = env.governor
        panic = gov.last_panic
        self.emit(
            EpochSummary(
                **fig.values,  # training_step.EPOCH_FIGURES: the figures made on the device
                perplexity=perplexity(fig.val_loss) if lm else None,
                clip_threshold=env.clip_threshold,
                slots=env.model.slot_states(),
                consecutive_panics=gov.consecutive_panics,
                total_panics=gov.total_panics,
                rollbacks=gov.rollbacks,
                last_panic_reason=None if panic is None else panic.reason,
                last_action=env.last_action,
                last_op=env.last_op,
                reward=env.last_reward,
                samples_per_s=fig.samples / elapsed if elapsed > 0 else 0.0,
                host_params=env.model.host_param_count(),
                seed_params=env.model.seed_param_count(),
                **env.flops.summary_fields(),
                **report,
                host_lr=env.state.host_optimizer.param_groups[0]["lr"],
                lr_scale=env.state.operator_lr_scale,
                governor_sensitivity=gov.sensitivity,
            ),
            env.index,
        )

    def policy_update(self, update: int, stats: dict) -> None:
        self.emit(PolicyUpdate(update=update, **stats))

    def finished(
        self, status: RunStatus, error: str | None, ranks: int, exchange_s: float, flops: int
    ) -> RunFinished:
        finished = RunFinished(
            **self.common(None),
            status=status,
            error=error,
            ranks=ranks,
            exchange_s=exchange_s,
            total_flops=flops,
        )
        self.sink.emit(finished)
        return finished


def describe_crash(exc: BaseException) -> str:
    """RunFinished's error: one line that says what failed, then the tail of the traceback."""
    head = f"{type(exc).__name__}: {exc}"
    tail = "".join(traceback.format_exception(exc)[-6:]).rstrip()
    return f"{head}\n{tail}"
