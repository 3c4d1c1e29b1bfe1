"""The vectorized morphogenetic trainer: n envs in lockstep, one shared loader, one policy.

Read ``VectorizedTrainer.run`` top to bottom: a run is rounds of episodes; an episode is E
epochs; an epoch trains every env on B batches, validates, lets the governor judge, attributes
the seeds, lets the policy act and reports. Commands from the operator are applied between
batches (the safe points). The trainer never blocks on its consumers: the sink it is given
must not block (``QueueSink`` drops, the recorder writes to a file).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import torch

from esper_engine.batching import SharedBatchIterator, check_samples
from esper_engine.blueprints import blueprint_names
from esper_engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointWriter,
    check_checkpoint_host,
    hold_point,
)
from esper_engine.commands import acknowledge, rejection
from esper_engine.config import TrainingConfig
from esper_engine.contracts import (
    BatchStats,
    EpochProgress,
    EpochSummary,
    Event,
    ForceRollback,
    Initiator,
    OperatorCommand,
    Pause,
    PolicyUpdate,
    Resume,
    RunFinished,
    RunResumed,
    RunStarted,
    RunStatus,
    SetClipThreshold,
    Stop,
)
from esper_engine.distributed import (
    Exchange,
    LeaderPolicy,
    Shard,
    WorkerPolicy,
    agree,
    forward_events,
    gather_env_states,
    report_crash,
    send_commands,
    share_resume_state,
    watch,
)
from esper_engine.env_runtime import EnvRuntime, EpochFigures, TensorTotals
from esper_engine.faults import DIVERGE_FACTOR, FaultKind, InjectedCrash, check_faults
from esper_engine.footprint import (
    RunEstimate,
    check_memory,
    estimate_memory,
    estimate_run,
    host_cost,
    time_epoch,
)
from esper_engine.lifecycle import SeedStage
from esper_engine.model import create_model, resolve_device, run_host_spec
from esper_engine.policy.driver import PolicyDriver
from esper_engine.policy.observation import EnvObservation
from esper_engine.policy.policy_file import (
    policy_path,
    read_policy_file,
    write_policy_file,
)
from esper_engine.policy.rewards import capacity_rent, compute_reward
from esper_engine.shapley import CounterfactualEngine, attribution_seed
from esper_engine.tasks import Task, load_task
from esper_engine.telemetry import TelemetrySink
from esper_engine.training_step import (
    TrainStepResult,
    env_stream,
    join_env_streams,
    perplexity,
    process_train_batch,
    process_val_batch,
)

# EpochProgress at most this often per env: a clock read per batch, never a device sync.
PROGRESS_PERIOD_S = 0.5


class StopRequested(Exception):
    """Raised at a safe point when the operator (or a signal) asked the run to stop."""


def validate_run(config: TrainingConfig, task: Task, *, timed: bool = True) -> RunEstimate:
    """Check what only the task can tell (device, slot ids, memory) before a thread starts;
    the run's estimate (``timed``: with one timed batch for the epoch time)."""
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
        driver = PolicyDriver(
            "ppo",
            n_envs=config.n_envs,
            slot_ids=model.slot_ids,
            blueprints=tuple(blueprint_names(task.host_kind)),
            host_kind=task.host_kind,
            heuristic=config.heuristic,
            ppo=msgspec.structs.replace(config.ppo, seed=config.ppo_seed()),
        )
        state = read_policy_file(config.ppo.init_file, host=spec)
        driver.load_policy_state(state, config.ppo.init_file)
    epoch_s = time_epoch(config, task, spec, config.n_envs) if timed else 0.0
    return RunEstimate(spec, host_cost(task, spec), memory, epoch_s)


class VectorizedTrainer:
    def __init__(
        self,
        config: TrainingConfig,
        sink: TelemetrySink,
        commands: queue.Queue[OperatorCommand] | None = None,
        run_id: str | None = None,
        task: Task | None = None,
        *,
        checkpoint: Path | None = None,
        recording_bytes: Callable[[], int] | None = None,
        resume_from: dict[str, Any] | None = None,
        shard: Shard | None = None,
        stop: threading.Event | None = None,
        estimate: RunEstimate | None = None,
    ) -> None:
        """``checkpoint``: where to write one every ``config.checkpoint_every`` epochs;
        ``recording_bytes`` flushes the recording and returns its length (stored with each
        checkpoint). ``resume_from``: a checkpoint's state to continue from instead of starting
        (``checkpoint.plan_resume`` has checked it matches this config and run id).
        ``shard``: this process's block of envs when torchrun runs several (``distributed``);
        its rank 0 is given the run's sink, the others a ``ForwardingSink``.
        ``stop``: set by whoever queues a ``Stop`` (``TrainingSession.send``), so the set-up and
        the loops over envs end at the next env instead of the next batch, which with many envs
        is minutes away (a signal during set-up was ignored until the first batch).
        ``estimate``: what ``validate_run`` measured, told in RunStarted (None: estimated here,
        untimed)."""
        config.validate()
        self.config = config
        self.sink = sink
        self.commands: queue.Queue[OperatorCommand] = commands or queue.Queue()
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.task = task
        self.paused = False
        self.episode = 0
        self.epoch = 0
        self.envs: list[EnvRuntime] = []
        self._paused_s = 0.0
        self.checkpoint = checkpoint
        self._checkpoints = None if checkpoint is None else CheckpointWriter(checkpoint)
        self._recording_bytes = recording_bytes
        self._resume_from = resume_from
        self._start = (0, 0)  # (episode, epoch) the loop starts at; a resume moves it
        self.shard = shard or Shard(0, 1, config.n_envs)
        self.exchange = Exchange(self.shard) if self.shard.distributed else None
        self._watch = None  # sharded: the leader's watchdog or a worker's heartbeat
        self._stop = stop or threading.Event()
        self.setup_status = "starting"  # what _setup is doing, for a view's first frames; "" after
        self._checkpointing = checkpoint is not None  # sharded: the leader's, on every rank
        self._estimate = estimate

    # --- the story ----------------------------------------------------------------------------

    def run(self) -> RunFinished:
        """Train every episode; always ends with exactly one RunFinished event."""
        status, error = RunStatus.COMPLETED, None
        try:
            self._setup()
            self.setup_status = ""
            first_episode, first_epoch = self._start
            for episode in range(first_episode, self.config.episodes):
                self._run_episode(episode, first_epoch if episode == first_episode else 0)
        except StopRequested:
            status = RunStatus.STOPPED
        except Exception as exc:  # noqa: BLE001 - a crash is reported, not swallowed
            status, error = RunStatus.CRASHED, _describe(exc)
        finally:
            if self._watch is not None:
                self._watch.stop()
        status, error = self._last_checkpoint_written(status, error)
        if error is not None and not self.shard.is_leader:
            report_crash(self.shard.rank, error)  # the leader names it in its RunFinished
        finished = RunFinished(
            **self._common(None),
            status=status,
            error=error,
            ranks=self.shard.world,
            exchange_s=0.0 if self.exchange is None else self.exchange.cost_s,
        )
        self.sink.emit(finished)
        return finished

    def _run_episode(self, episode: int, first_epoch: int = 0) -> None:
        """The episode's epochs from ``first_epoch`` (0 unless resumed in the middle of it)."""
        self.episode = episode
        last_epoch = self.config.epochs - 1
        if episode > 0 and first_epoch == 0:
            for env in self.envs:
                env.reset_episode()
        if first_epoch == 0 and self.config.lifecycle.plant:  # seeds planted from epoch 0
            self.epoch = 0
            for env in self.envs:
                env.plant_at_start()
        for epoch in range(first_epoch, self.config.epochs):
            self.epoch = epoch
            self._run_epoch(epoch)
            if epoch < last_epoch:
                self._checkpoint_due(episode, epoch + 1)
        for env in self.envs:  # the host is discarded: terminal, nothing to bootstrap from
            self.policy.end_episode(env.index)
        self._update_policy()
        if episode < self.config.episodes - 1:  # after the update, before the next host
            self._checkpoint_due(episode + 1, 0)

    def _run_epoch(self, epoch: int) -> None:
        started, self._paused_s = time.perf_counter(), 0.0
        self._epoch_started = self._progress_due = started
        for env in self.envs:
            env.state.set_lr_scale(self.config.lr_scale(epoch))
        self._inject_faults(epoch)
        if self.exchange is not None:  # the ranks take the operator's commands together
            self._exchange_commands()
        train = self._train_epoch()
        val = self._validate()
        measured = self._synchronise(train, val)
        figures = {env.index: fig for env, fig in zip(self.envs, measured, strict=True)}
        elapsed = time.perf_counter() - started - self._paused_s
        healthy = [env for env in self.envs if not self._govern(env, figures[env.index])]
        for env in healthy:
            self._stop_point()
            self._prune_failed_seeds(env)
            self._attribute(env, epoch)
        for env in self.envs:  # the epoch is over: age the seeds before anyone looks at them
            env.model.end_epoch()
        observations = {env.index: env.observe(epoch, figures[env.index]) for env in self.envs}
        for env in healthy:
            self._reward(env, figures[env.index], observations[env.index])
        # Only a clean epoch is acted on and kept: a panicking env is left as it is until the
        # governor has decided, and the snapshot follows the action, so a seed fossilized now
        # is part of the state the next epoch (the riskiest) rolls back to.
        clean = [env for env in healthy if env.governor.last_check_clean]
        if epoch < self.config.epochs - 1:  # an action after the last epoch could never pay off
            self._act(clean, observations)
        elif self.exchange is not None:  # no action, but the rewards still go to the policy
            self._act([], observations)
        for env in clean:
            env.governor.snapshot()
        for env in self.envs:
            self._emit_summary(env, figures[env.index], elapsed)
        if self.exchange is not None:
            forward_events(self.exchange, self.sink)

    # --- the epoch's parts --------------------------------------------------------------------

    def _train_epoch(self) -> list[TensorTotals]:
        totals = [TensorTotals(torch.device(self.config.device)) for _ in self.envs]
        every = self.config.batch_stats_every
        self._train_started = time.perf_counter()  # BatchStats' throughput counts from here
        for batch in range(self.config.batches_per_epoch):
            hold_point("train-batch")
            self._safe_point()
            # Every rank draws the whole batch as one process would and keeps its envs' slices.
            for env, total, (x, y) in zip(self.envs, totals, next(self.batches), strict=True):
                self._stop_point()
                result = process_train_batch(env.state, x, y, self.task)
                due = every and (batch + 1) % every == 0
                with env_stream(env.state):  # sum where the step ran: no cross-stream race
                    total.add_train(result)
                    stats = _batch_stats_tensor(result) if due else None
                if stats is not None:
                    self._emit_batch_stats(env, batch, stats)
            self._progress("train", self.envs, batch + 1, self.config.batches_per_epoch)
        self._safe_point()
        join_env_streams(env.state for env in self.envs)
        return totals

    def _validate(self) -> list[TensorTotals]:
        totals = [TensorTotals(torch.device(self.config.device)) for _ in self.envs]
        for env, total in zip(self.envs, totals, strict=True):
            self._stop_point()
            started = time.perf_counter()
            for done, (x, y) in enumerate(self.val_batches, start=1):
                total.add_val(process_val_batch(env.model, x, y, self.task))
                self._progress("validate", [env], done, len(self.val_batches))
            env.val_pass_s = time.perf_counter() - started  # the unit of attribution cost (CPU)
        return totals

    def _synchronise(
        self, train: list[TensorTotals], val: list[TensorTotals]
    ) -> list[EpochFigures]:
        """The epoch's one device-to-host copy: every env's sums at once."""
        columns = [
            torch.stack(
                [
                    t.loss_sum,
                    t.correct,
                    t.count,
                    t.grad_pre,
                    t.grad_post,
                    t.finite_steps,
                    t.clipped,
                    t.skipped,
                    v.loss_sum,
                    v.correct,
                    v.count,
                ]
            )
            for t, v in zip(train, val, strict=True)
        ]
        figures = []
        for t, row in zip(train, torch.stack(columns).tolist(), strict=True):
            loss, correct, count, pre, post, finite, clipped, skipped, vloss, vcorrect, vcount = row
            steps = max(t.steps, 1)
            figures.append(
                EpochFigures(
                    train_loss=loss / max(count, 1),
                    train_accuracy=correct / max(count, 1),
                    val_loss=vloss / max(vcount, 1),
                    val_accuracy=vcorrect / max(vcount, 1),
                    grad_norm_pre_clip=pre / max(finite, 1),
                    grad_norm_post_clip=post / max(finite, 1),
                    clipped_fraction=clipped / steps,
                    skipped_steps=round(skipped),
                    samples=t.steps * self.config.batch_size,
                )
            )
        return figures

    def _govern(self, env: EnvRuntime, figures: EpochFigures) -> bool:
        """The governor's verdict on this epoch; True when it rolled the env back."""
        rollback_due = env.governor.check_vital_signs(figures.val_loss)
        panic = env.governor.last_panic
        if panic is not None and env.governor.consecutive_panics > 0:
            self.sink.emit(msgspec.structs.replace(panic, **self._common(env.index)))
        if rollback_due:
            self._rollback(env, initiator=Initiator.GOVERNOR)
            return True
        env.record(figures)
        return False

    def _prune_failed_seeds(self, env: EnvRuntime) -> None:
        """An incubating seed that failed its health gate (non-finite outputs or gradients) is
        pruned by the gate; the host, which never saw its output, trains on."""
        for slot_id in env.model.live_slots():
            slot = env.model.slots[slot_id]
            if slot.stage is SeedStage.TRAINING and slot.healthy() is False:
                env.model.prune(slot_id, initiator=Initiator.GATE)

    def _attribute(self, env: EnvRuntime, epoch: int) -> None:
        every = self.config.attribution_every
        if not every or epoch % every or not env.model.active_slots():
            return
        engine = CounterfactualEngine(
            env.model,
            self.task,
            exact_max=self.config.shapley_exact_max,
            permutations=self.config.shapley_permutations,
            seed=attribution_seed(self.config.seed, env.index, self.episode, epoch),
        )
        on_cpu = torch.device(self.config.device).type == "cpu"  # CUDA times need a sync
        batches = self.val_batches[: self.config.attribution_batches or None]  # 0: all
        attribution = engine.attribute(batches, env.val_pass_s if on_cpu else None)
        for slot_id, value in attribution.shapley.items():
            env.model.slots[slot_id].contribution = value
        self.sink.emit(msgspec.structs.replace(attribution, **self._common(env.index)))

    def _reward(self, env: EnvRuntime, fig: EpochFigures, obs: EnvObservation) -> None:
        """Pay the env's previous action now that its effect is measured."""
        rent = capacity_rent(obs.host_params, obs.seed_params, self.config.param_rent)
        if env.cut_by_operator:  # the operator's rollback, not the action, shaped this epoch
            self.policy.truncate(env.index, obs)
            env.cut_by_operator, env.last_reward = False, 0.0
        else:
            reward = compute_reward(env.prev_val_acc, fig.val_accuracy, env.prev_rent, rent)
            self.policy.reward(env.index, reward)
            env.last_reward = reward
        env.prev_val_acc, env.prev_rent = fig.val_accuracy, rent

    def _act(self, envs: list[EnvRuntime], observations: dict[int, EnvObservation]) -> None:
        if not envs and self.exchange is None:  # sharded: the exchange happens regardless
            return
        indices = [env.index for env in envs]
        actions = self.policy.choose(indices, [observations[i] for i in indices])
        for env, action in zip(envs, actions, strict=True):
            env.apply(action, self.blueprints)
            env.last_action = action.describe(env.model.slot_ids, self.blueprints)
            env.last_op = action.op

    def _update_policy(self) -> None:
        if self.policy.agent is not None:
            hold_point("policy-update")
        stats = self.policy.update()
        if self._driver is not None and self._driver.agent is not None and self.checkpoint:
            if self.config.ppo.learn:  # the agent after this round, next to the recording
                state = {**self._driver.policy_state(), "host": msgspec.to_builtins(self.host_spec)}
                write_policy_file(policy_path(self.checkpoint), state)
        if stats is None:
            return
        self._updates += 1
        self.sink.emit(PolicyUpdate(**self._common(None), update=self._updates, **stats))

    # --- checkpoints --------------------------------------------------------------------------

    def _last_checkpoint_written(
        self, status: RunStatus, error: str | None
    ) -> tuple[RunStatus, str | None]:
        """Wait for the checkpoint in flight, so a stopped run resumes from its latest one."""
        if self._checkpoints is None:
            return status, error
        try:
            self._checkpoints.wait()
        except Exception as exc:  # noqa: BLE001 - reported as the run's crash
            if status is not RunStatus.CRASHED:
                return RunStatus.CRASHED, _describe(exc)
        return status, error

    def _checkpoint_due(self, next_episode: int, next_epoch: int) -> None:
        """Every ``checkpoint_every`` epochs: the state from which ``(next_episode, next_epoch)``
        starts, with the recording's length at this point (its events are all written)."""
        every = self.config.checkpoint_every
        done = next_episode * self.config.epochs + next_epoch  # epochs finished so far
        if not self._checkpointing or not every or done % every:
            return
        join_env_streams(env.state for env in self.envs)
        envs = [env.state_dict() for env in self.envs]
        if self.exchange is not None:  # sharded: the leader writes every env's state
            envs = gather_env_states(self.exchange, envs)
        if self._checkpoints is None:  # a worker: its envs went to the leader
            return
        length = self._recording_bytes() if self._recording_bytes is not None else 0
        self._checkpoints.submit(self.checkpoint_state(next_episode, next_epoch, length, envs))

    def checkpoint_state(
        self, episode: int, epoch: int, recording_bytes: int, envs: list[dict] | None = None
    ) -> dict[str, Any]:
        """Everything needed to continue exactly at ``(episode, epoch)`` (SPEC 12); ``envs``:
        every env's state when they are not all here (a sharded run's leader)."""
        # No global random stream: every env's generator is in its state, the loader's and the
        # policy's in theirs.
        return {
            "format": CHECKPOINT_FORMAT,
            "run_id": self.run_id,
            # as the recording's RunStarted holds it (lists, not tuples), so the two compare
            "config": msgspec.msgpack.decode(msgspec.msgpack.encode(self.config)),
            "episode": episode,
            "epoch": epoch,
            "updates": self._updates,
            "recording_bytes": recording_bytes,
            "host": msgspec.to_builtins(self.host_spec),  # checked on resume (plan_resume)
            "batches": self.batches.state_dict(),
            "envs": [env.state_dict() for env in self.envs] if envs is None else envs,
            "policy": self.policy.state_dict(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint onto the freshly set-up run."""
        if len(state["envs"]) != len(self.envs):
            raise ValueError(f"checkpoint has {len(state['envs'])} envs, config {len(self.envs)}")
        check_checkpoint_host(state, self.host_spec, "checkpoint")
        for env, env_state in zip(self.envs, state["envs"], strict=True):
            self._stop_point(setup=True)
            env.load_state_dict(env_state)
        self.batches.load_state_dict(state["batches"])
        if "policy" in state:  # a worker's part has none: the policy lives on the leader
            self.policy.load_state_dict(state["policy"])
        self._updates = int(state["updates"])
        self.episode, self.epoch = int(state["episode"]), int(state["epoch"])
        self._start = (self.episode, self.epoch)

    # --- governor and operator ----------------------------------------------------------------

    def _rollback(self, env: EnvRuntime, initiator: Initiator) -> None:
        report = env.governor.execute_rollback(initiator=initiator)
        env.state.after_rollback()
        self.sink.emit(msgspec.structs.replace(report, **self._common(env.index)))
        if initiator is Initiator.GOVERNOR:
            self.policy.penalize(env.index, -report.penalty)
            env.last_reward = -report.penalty
        else:  # the operator's call: a truncation without blame, once the epoch is measured
            env.cut_by_operator = True
        if report.episode_ended:
            env.reset_episode()

    def _inject_faults(self, epoch: int) -> None:
        """SPEC 11: the run's ``--fault`` schedule (first episode), before the epoch trains."""
        if self.episode != 0:
            return
        for fault in self.faults:
            if fault.epoch != epoch:
                continue
            env = self._own_env(fault.env)
            if env is None:  # another rank's env: that rank injects it
                continue
            if fault.kind is FaultKind.CRASH:
                raise InjectedCrash(f"injected fault crash:{fault.env + 1}:{epoch + 1}")
            if fault.kind is FaultKind.DIVERGE:  # from now on: set_lr_scale keeps the factor
                env.state.lr_multiplier = DIVERGE_FACTOR
                env.state.set_lr_scale(env.state.lr_scale)
                continue
            if fault.kind is FaultKind.NAN:
                params = list(env.model.parameters())
            else:  # SEED_NAN: the incubating seeds only
                params = [
                    p
                    for sid in env.model.live_slots()
                    if env.model.slots[sid].stage is SeedStage.TRAINING
                    for p in env.model.seed_parameters(sid)
                ]
            with torch.no_grad():
                for p in params:
                    p.fill_(float("nan"))

    def _own_env(self, env: int) -> EnvRuntime | None:
        """Global env ``env`` if this process trains it."""
        envs = self.shard.envs
        return self.envs[env - envs.start] if env in envs else None

    def _exchange_commands(self) -> None:
        """Sharded runs: at the epoch's start the leader validates the queued commands against
        the global env range and sends the accepted ones to every rank, which applies those for
        its envs; while paused the leader goes on sending (so no exchange times out)."""
        assert self.exchange is not None
        keep_alive = max(0.05, min(1.0, self.shard.timeout_s / 4))
        while True:
            waited_from = time.perf_counter() if self.paused else None
            commands = self._accepted_commands(block=keep_alive if self.paused else None)
            for command in send_commands(self.exchange, commands):
                self._apply_everywhere(command)
            if waited_from is not None:  # throughput excludes the pause
                self._paused_s += time.perf_counter() - waited_from
            if not self.paused:
                return

    def _accepted_commands(self, block: float | None) -> list[OperatorCommand] | None:
        """Leader: the queued commands that pass validation (the others are answered now);
        ``block``: wait that long for the first. Worker: None (it receives them)."""
        if not self.shard.is_leader:
            return None
        queued: list[OperatorCommand] = []
        if block is not None:
            try:
                queued.append(self.commands.get(timeout=block))
            except queue.Empty:
                pass
        while True:
            try:
                queued.append(self.commands.get_nowait())
            except queue.Empty:
                break
        accepted = []
        paused = self.paused
        for command in queued:
            reason = rejection(command, self.config.n_envs, paused)
            if reason is not None:
                self.sink.emit(
                    acknowledge(
                        command,
                        accepted=False,
                        n_envs=self.config.n_envs,
                        reason=reason,
                        **self._common(None),
                    )
                )
                continue
            accepted.append(command)
            if isinstance(command, Pause | Resume):
                paused = isinstance(command, Pause)
        return accepted

    def _apply_everywhere(self, command: OperatorCommand) -> None:
        """An accepted command: each rank does its part, the leader acknowledges it."""
        if isinstance(command, ForceRollback):
            env = self._own_env(command.env)
            if env is not None:
                self._rollback(env, initiator=Initiator.OPERATOR)
        elif isinstance(command, SetClipThreshold):
            targets = self.envs if command.env is None else [self._own_env(command.env)]
            for env in targets:
                if env is not None:
                    env.set_clip_threshold(command.value)
        elif isinstance(command, Pause | Resume):
            self.paused = isinstance(command, Pause)
        if self.shard.is_leader:
            self.sink.emit(
                acknowledge(command, accepted=True, n_envs=self.config.n_envs, **self._common(None))
            )
        if isinstance(command, Stop):
            raise StopRequested

    def _safe_point(self) -> None:
        """Apply queued commands; while paused, wait here for Resume or Stop."""
        if self._watch is not None:  # sharded: commands are taken at the epoch's start
            self._watch.check()  # a lost rank ends the run now, not at the next exchange
            return
        self._drain_commands()
        if not self.paused:
            return
        paused_at = time.perf_counter()
        while self.paused:  # Stop arrives on this queue too, so blocking cannot hang the run
            self._apply(self.commands.get())
        self._paused_s += time.perf_counter() - paused_at  # throughput excludes the pause

    def _stop_point(self, *, setup: bool = False) -> None:
        """Between two envs: a queued Stop ends the run now (one process only: sharded ranks
        stop together at the epoch's exchange)."""
        if not self._stop.is_set() or self.exchange is not None:
            return
        if not setup:
            self._drain_commands()  # acknowledges the Stop and raises StopRequested
        raise StopRequested  # during set-up (no env to apply anything to yet), or no Stop queued

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            self._apply(command)

    def _apply(self, command: OperatorCommand) -> None:
        n_envs = len(self.envs)
        reason = rejection(command, n_envs, self.paused)
        if reason is not None:
            self.sink.emit(
                acknowledge(
                    command, accepted=False, n_envs=n_envs, reason=reason, **self._common(None)
                )
            )
            return
        if isinstance(command, ForceRollback):
            self._rollback(self.envs[command.env], initiator=Initiator.OPERATOR)
        elif isinstance(command, SetClipThreshold):
            targets = self.envs if command.env is None else [self.envs[command.env]]
            for env in targets:
                env.set_clip_threshold(command.value)
        elif isinstance(command, Pause | Resume):
            self.paused = isinstance(command, Pause)
        self.sink.emit(acknowledge(command, accepted=True, n_envs=n_envs, **self._common(None)))
        if isinstance(command, Stop):
            raise StopRequested

    # --- setup and reporting ------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.config
        if self.exchange is not None:  # every rank's events carry the leader's run id
            self.run_id = self.exchange.broadcast(self.run_id.encode()).decode()
            self._watch = watch(self.shard)
        if self.task is None:
            self.task = load_task(cfg.task, data_dir=cfg.data_dir, seed=cfg.seed)
        device = torch.device(cfg.device)
        self.setup_status = "preparing the batches"
        self.batches = SharedBatchIterator(
            self.task.train_x,
            self.task.train_y,
            cfg.n_envs,
            cfg.batch_size,
            seed=cfg.seed,
            device=device,
            prepare=self.task.prepare,
            keep=self.shard.envs,
        )
        self.val_batches = self._fixed_val_batches(device)
        self.faults = check_faults(cfg.faults, cfg.n_envs, cfg.epochs)
        self.host_spec = run_host_spec(cfg, self.task)
        self.envs = []
        for k, i in enumerate(self.shard.envs, 1):
            self._stop_point(setup=True)
            self.setup_status = f"building env {k}/{len(self.shard.envs)}"
            self.envs.append(EnvRuntime(i, cfg, self.task))
        self.setup_status = "building the policy"
        for env in self.envs:
            env.model.on_transition = self._transition_listener(env.index)
        slot_ids = self.envs[0].model.slot_ids
        self.blueprints = tuple(blueprint_names(self.task.host_kind))
        self.policy = self._policy(slot_ids)
        self._updates = 0
        resume_from, self._resume_from = self._resume_from, None  # the run will hold its tensors
        if self.exchange is not None:  # the leader read the checkpoint; each rank gets its part
            self._checkpointing = agree(self.exchange, self._checkpointing)
            resume_from = share_resume_state(self.exchange, resume_from)
        if resume_from is not None:
            self.setup_status = "restoring the checkpoint"
            self._restore(resume_from)
            if not self.shard.is_leader:
                return
            self.sink.emit(
                RunResumed(
                    **self._common(None),
                    from_episode=self.episode,
                    from_epoch=self.epoch,
                    recording_bytes=self._recording_bytes() if self._recording_bytes else 0,
                    pid=os.getpid(),
                )
            )
            return
        if not self.shard.is_leader:
            return
        estimate = self._estimate or estimate_run(cfg, self.task)
        self.sink.emit(
            RunStarted(
                **self._common(None),
                task=self.task.name,
                task_kind=self.task.kind,
                n_envs=cfg.n_envs,
                slot_ids=list(slot_ids),
                policy=cfg.policy,
                episodes=cfg.episodes,
                epochs=cfg.epochs,
                batches_per_epoch=cfg.batches_per_epoch,
                random_guess_loss=self.task.random_guess_loss,
                blueprints=list(self.blueprints),
                device=cfg.device,
                config=msgspec.to_builtins(cfg),  # the effective config, groups nested
                host_params=self.envs[0].model.host_param_count(),
                seed_params=self.envs[0].model.seed_param_count(),
                host_kind=estimate.spec.kind,
                host_preset=estimate.spec.preset,
                host_sizes=estimate.spec.sizes(),
                host_flops=estimate.cost.flops_per_sample,
                memory_estimate=estimate.memory.needed,
                epoch_s_estimate=estimate.epoch_s,
            )
        )

    def _policy(self, slot_ids: tuple[str, ...]) -> PolicyDriver | LeaderPolicy | WorkerPolicy:
        """The run's policy; sharded, it lives on the leader and the workers relay to it."""
        cfg = self.config
        self._driver: PolicyDriver | None = None
        if self.exchange is not None and not self.shard.is_leader:
            return WorkerPolicy(self.exchange)
        driver = self._driver = PolicyDriver(
            cfg.policy,
            n_envs=cfg.n_envs,
            slot_ids=slot_ids,
            blueprints=self.blueprints,
            host_kind=self.task.host_kind,
            heuristic=cfg.heuristic,
            ppo=msgspec.structs.replace(cfg.ppo, seed=cfg.ppo_seed()),
        )
        if cfg.policy == "ppo" and cfg.ppo.init_file is not None:  # --policy-file
            state = read_policy_file(cfg.ppo.init_file, host=self.host_spec)
            driver.load_policy_state(state, cfg.ppo.init_file)
        if self.exchange is None:
            return driver
        return LeaderPolicy(driver, self.exchange)

    def _fixed_val_batches(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same validation samples every epoch, for every env and every coalition."""
        size = self.config.batch_size * 2
        n = min(len(self.task.val_x), size * self.config.val_batches)
        batches = []
        for start in range(0, n, size):
            x = self.task.val_x[start : start + size].to(device)
            y = self.task.val_y[start : start + size].to(device)
            batches.append((self.task.prepare(x), y))
        return batches

    def _transition_listener(self, env_index: int):
        def emit(event: Event) -> None:
            self.sink.emit(msgspec.structs.replace(event, **self._common(env_index)))

        return emit

    def _emit_batch_stats(self, env: EnvRuntime, batch: int, stats: torch.Tensor) -> None:
        # The figures were made on the env's stream: join it before the host reads them.
        join_env_streams([env.state])
        # Every k batches only: the one sync BatchStats costs.
        loss, pre, post, clipped, skipped = stats.tolist()
        elapsed = time.perf_counter() - self._train_started - self._paused_s
        samples = (batch + 1) * self.config.batch_size
        self.sink.emit(
            BatchStats(
                **self._common(env.index),
                batch=batch,
                loss=loss,
                grad_norm_pre_clip=pre,
                grad_norm_post_clip=post,
                clip_threshold=env.clip_threshold,
                clipped=clipped > 0,
                skipped=skipped > 0,
                samples_per_s=samples / elapsed if elapsed > 0 else 0.0,
            )
        )

    def _progress(self, phase: str, envs: list[EnvRuntime], done: int, batches: int) -> None:
        """EpochProgress for ``envs`` when PROGRESS_PERIOD_S has passed since the last: the
        batch counter and the clock only, so the loop never waits for the device. A sharded
        run's workers send none (their events reach the leader only at the epoch's end)."""
        now = time.perf_counter()
        if now < self._progress_due or not self.shard.is_leader:
            return
        self._progress_due = now + PROGRESS_PERIOD_S
        elapsed = now - self._epoch_started - self._paused_s
        # One time for the whole report: stamped per env, an env's stamp would move with how
        # long the emits before it took (a flush each), and its reports could come closer
        # together than PROGRESS_PERIOD_S.
        stamp = time.time()
        for env in envs:
            self.sink.emit(
                EpochProgress(
                    **{**self._common(env.index), "wall_time": stamp},
                    phase=phase,
                    batch=done,
                    batches=batches,
                    elapsed_s=elapsed,
                )
            )

    def _emit_summary(self, env: EnvRuntime, fig: EpochFigures, elapsed: float) -> None:
        gov = env.governor
        panic = gov.last_panic
        is_lm = self.task.kind == "language_model"
        self.sink.emit(
            EpochSummary(
                **self._common(env.index),
                train_loss=fig.train_loss,
                train_accuracy=fig.train_accuracy,
                val_loss=fig.val_loss,
                val_accuracy=fig.val_accuracy,
                perplexity=perplexity(fig.val_loss) if is_lm else None,
                grad_norm_pre_clip=fig.grad_norm_pre_clip,
                grad_norm_post_clip=fig.grad_norm_post_clip,
                clipped_fraction=fig.clipped_fraction,
                skipped_steps=fig.skipped_steps,
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
            )
        )

    def _common(self, env: int | None) -> dict:
        return {
            "run_id": self.run_id,
            "env": env,
            "episode": self.episode,
            "epoch": self.epoch,
            "wall_time": time.time(),
        }


def _batch_stats_tensor(result: TrainStepResult) -> torch.Tensor:
    """BatchStats' figures in one tensor, stacked on the env's stream where they were made."""
    return torch.stack(
        [
            result.loss_sum / result.count,
            result.grad_norm_pre,
            result.grad_norm_post,
            result.clipped,
            result.skipped,
        ]
    )


def _describe(exc: BaseException) -> str:
    """One line that says what failed, then the tail of the traceback for the record."""
    head = f"{type(exc).__name__}: {exc}"
    tail = "".join(traceback.format_exception(exc)[-6:]).rstrip()
    return f"{head}\n{tail}"
