"""The vectorized morphogenetic trainer: n envs in lockstep, one shared loader, one policy.

Read ``VectorizedTrainer.run`` top to bottom: a run is rounds of episodes; an episode is E
epochs; an epoch trains every env on B batches, validates, lets the governor judge, attributes
the seeds, lets the policy act and reports. Commands from the operator are applied between
batches (the safe points). The trainer never blocks on its consumers: the sink it is given
must not block (``QueueSink`` drops, the recorder writes to a file).

The process model stays behind two objects: the exchange (``distributed.NullExchange`` in one
process, a torchrun rank's ``Exchange`` otherwise) and the policy it hands out (the driver
itself, or the leader's and workers' relays). Commands go through one ``CommandDesk``; what
is reported is ``reports.Reporter``'s; ``run_checkpoints.RunCheckpoints`` says when a checkpoint
is due, assembles it from the parts' own states and puts a resumed run back.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import torch

from esper_engine.batching import SharedBatchIterator, fixed_val_batches
from esper_engine.blueprints import blueprint_names
from esper_engine.checkpoint import hold_point
from esper_engine.commands import CommandDesk, StopRequested
from esper_engine.config import TrainingConfig
from esper_engine.contracts import (
    Initiator,
    OperatorCommand,
    RunFinished,
    RunStatus,
)
from esper_engine.distributed import Shard, exchange_for
from esper_engine.env_runtime import EnvRuntime
from esper_engine.epoch_figures import EpochFigures, TensorTotals, batch_stats_tensor, synchronise
from esper_engine.faults import check_faults, inject
from esper_engine.flops import RunFlops
from esper_engine.footprint import RunEstimate, estimate_run
from esper_engine.model import run_host_spec
from esper_engine.policy.driver import PolicyDriver, build_policy
from esper_engine.policy.observation import EnvObservation
from esper_engine.policy.policy_file import policy_path, write_policy_file
from esper_engine.policy.rewards import capacity_rent, compute_reward
from esper_engine.report import evaluate_report, report_batches
from esper_engine.reports import Reporter, describe_crash
from esper_engine.resources import ResourceSampler
from esper_engine.run_checkpoints import RunCheckpoints
from esper_engine.run_controls import RunControls
from esper_engine.shapley import attribute_env
from esper_engine.tasks import Task, load_task
from esper_engine.telemetry import TelemetrySink
from esper_engine.training_step import (
    env_stream,
    evaluating,
    join_env_streams,
    process_train_batch,
    process_val_batch,
)

__all__ = ["StopRequested", "VectorizedTrainer"]

EnvFactory = Callable[[int, TrainingConfig, Task], EnvRuntime]


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
        policy: PolicyDriver | None = None,
        env_factory: EnvFactory | None = None,
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
        untimed). ``policy``: the run's policy (None: built from the config; sharded, on the
        leader only). ``env_factory(index, config, task)``: each env (None: ``EnvRuntime``)."""
        config.validate()
        self.config = config
        self.sink = sink
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.task = task
        self.episode = 0
        self.epoch = 0
        self.envs: list[EnvRuntime] = []
        self.checkpoint = checkpoint
        self.checkpoints = RunCheckpoints(self, checkpoint, recording_bytes)
        self._resume_from = resume_from
        self._start = (0, 0)  # (episode, epoch) the loop starts at; a resume moves it
        self.shard = shard or Shard(0, 1, config.n_envs)
        self.exchange = exchange_for(self.shard)
        self.setup_status = "starting"  # what _setup is doing, for a view's first frames; "" after
        self._estimate = estimate
        self._given_policy = policy
        self._env_factory = env_factory
        self.driver: PolicyDriver | None = None  # the policy itself (None on a sharded worker)
        # The leader's sink sums the FLOPs its EpochSummary events report (RunFinished's total).
        self.run_flops = RunFlops(sink) if self.shard.is_leader else None
        self.sink = self.run_flops or sink  # forwarded worker events pass through it too
        self.report = Reporter(
            self.sink,
            lambda: (self.episode, self.epoch),
            paused_s=lambda: self.desk.paused_s,
            batch_size=config.batch_size,
            progress=self.shard.is_leader,  # a worker's events reach the leader at epoch end
            resources=ResourceSampler(config.device, self.shard.rank),
        )
        self.desk = CommandDesk(
            commands or queue.Queue(),
            config.n_envs,
            RunControls(self),
            self.report.emit_for_own_env,
            stop=stop or threading.Event(),
            acknowledges=self.shard.is_leader,
            between_envs=not self.shard.distributed,  # sharded ranks stop together
        )

    @property
    def paused(self) -> bool:
        return self.desk.paused

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
            status, error = RunStatus.CRASHED, describe_crash(exc)
        finally:
            self.exchange.stop_watch()
        status, error = self.checkpoints.wait_for_last(status, error)
        if error is not None:
            self.exchange.report_crash(error)  # a worker's: the leader names it in RunFinished
        total = 0 if self.run_flops is None else self.run_flops.total
        return self.report.finished(status, error, self.shard.world, self.exchange.cost_s, total)

    def _run_episode(self, episode: int, first_epoch: int = 0) -> None:
        """The episode's epochs from ``first_epoch`` (0 unless resumed in the middle of it)."""
        self.episode = episode
        last_epoch = self.config.epochs - 1
        if episode > 0 and first_epoch == 0:
            for env in self.envs:
                env.reset_episode()
        for env in self.envs:
            env.flops.start_episode(episode)
        if first_epoch == 0 and self.config.lifecycle.plant:  # seeds planted from epoch 0
            self.epoch = 0
            for env in self.envs:
                env.plant_at_start()
        for epoch in range(first_epoch, self.config.epochs):
            self.epoch = epoch
            self._run_epoch(epoch)
            if epoch < last_epoch:
                self.checkpoints.write_if_due(episode, epoch + 1)
        for env in self.envs:  # the host is discarded: terminal, nothing to bootstrap from
            self.policy.end_episode(env.index)
        self._update_policy()
        if episode < self.config.episodes - 1:  # after the update, before the next host
            self.checkpoints.write_if_due(episode + 1, 0)

    def _run_epoch(self, epoch: int) -> None:
        started = time.perf_counter()
        self.desk.paused_s = 0.0
        self.report.start_epoch(started)
        for env in self.envs:
            env.state.set_lr_scale(self.config.lr_scale(epoch))
        self._inject_faults(epoch)
        self.exchange.take_commands(self.desk)  # sharded: the ranks take them together
        totals = self._train_epoch()
        self._validate(totals)
        self._report_split(epoch)
        measured = synchronise(totals, self.config.batch_size)
        figures = {env.index: fig for env, fig in zip(self.envs, measured, strict=True)}
        elapsed = time.perf_counter() - started - self.desk.paused_s
        healthy = [env for env in self.envs if not self._govern(env, figures[env.index])]
        for env in healthy:
            self.desk.stop_point()
            env.prune_failed_seeds()
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
        # An action after the last epoch could never pay off; the rewards still go to the
        # policy (sharded: with the epoch's exchange).
        self._act(clean if epoch < self.config.epochs - 1 else [], observations)
        for env in clean:
            env.governor.snapshot()
        lm = self.task.kind == "language_model"
        for env in self.envs:
            split = self._reports.get(env.index, {})
            self.report.epoch_summary(env, figures[env.index], elapsed, lm, split)
        self.exchange.forward_events(self.sink)

    # --- the epoch's parts --------------------------------------------------------------------

    def _train_epoch(self) -> list[TensorTotals]:
        totals = [TensorTotals(torch.device(self.config.device)) for _ in self.envs]
        every = self.config.batch_stats_every
        self.report.start_training()  # BatchStats' throughput counts from here
        for batch in range(self.config.batches_per_epoch):
            hold_point("train-batch")
            self.exchange.safe_point(self.desk)  # one process: the commands, the pause
            # Every rank draws the whole batch as one process would and keeps its envs' slices.
            for env, total, (x, y) in zip(self.envs, totals, next(self.batches), strict=True):
                self.desk.stop_point()
                result = process_train_batch(env.state, x, y, self.task)
                env.flops.add_train(env.model, len(x))  # a cached count: no counter runs here
                due = every and (batch + 1) % every == 0
                with env_stream(env.state):  # sum where the step ran: no cross-stream race
                    total.add_train(result)
                    stats = batch_stats_tensor(result) if due else None
                if stats is not None:  # made on the env's stream: join it before reading them
                    join_env_streams([env.state])
                    self.report.batch_stats(env, batch, stats.tolist())  # every k: one sync
            self.report.progress("train", self.envs, batch + 1, self.config.batches_per_epoch)
        self.exchange.safe_point(self.desk)  # one process: the commands, the pause
        join_env_streams(env.state for env in self.envs)
        return totals

    def _validate(self, totals: list[TensorTotals]) -> None:
        for env, total in zip(self.envs, totals, strict=True):
            self.desk.stop_point()
            started = time.perf_counter()
            with evaluating(env.model):  # one switch of modes for the pass, not per batch
                for done, (x, y) in enumerate(self.val_batches, start=1):
                    total.add_val(process_val_batch(env.model, x, y, self.task))
                    self.report.progress("validate", [env], done, len(self.val_batches))
            env.val_pass_s = time.perf_counter() - started  # the unit of attribution cost (CPU)
            env.flops.add_validation(env.model, sum(len(x) for x, _ in self.val_batches))

    def _report_split(self, epoch: int) -> None:
        """The held-out report split, on the epochs that report it (``report_every``, always
        the episode's last): its figures go to EpochSummary only, never to a decision."""
        self._reports: dict[int, dict[str, float | None]] = {}
        if not self.report_batches or not self.config.report_due(epoch):
            return
        for env in self.envs:
            self.desk.stop_point()
            self._reports[env.index] = evaluate_report(env, self.report_batches, self.task)

    def _govern(self, env: EnvRuntime, figures: EpochFigures) -> bool:
        """The governor's verdict on this epoch; True when it rolled the env back."""
        rollback_due = env.governor.check_vital_signs(figures.val_loss)
        panic = env.governor.last_panic
        if panic is not None and env.governor.consecutive_panics > 0:
            self.report.emit(panic, env.index)
        if rollback_due:
            self.rollback(env, initiator=Initiator.GOVERNOR)
            return True
        env.record(figures)
        return False

    def _attribute(self, env: EnvRuntime, epoch: int) -> None:
        args = (self.task, self.config, self.val_batches, self.episode, epoch)
        attribution = attribute_env(env, *args)
        if attribution is not None:  # an epoch that attributes, with seeds to attribute
            self.report.emit(attribution, env.index)

    def _reward(self, env: EnvRuntime, fig: EpochFigures, obs: EnvObservation) -> None:
        """Pay the env's previous action now that its effect is measured."""
        rent = capacity_rent(obs.host_params, obs.seed_params, self.config.param_rent)
        price = env.price_so_far(self.config.compute_price)
        if env.cut_by_operator:  # the operator's rollback, not the action, shaped this epoch
            self.policy.truncate(env.index, obs)
            env.cut_by_operator, env.last_reward = False, 0.0
        else:
            reward = compute_reward(
                env.prev_val_acc, fig.val_accuracy, env.prev_rent, rent, env.prev_price, price
            )
            self.policy.reward(env.index, reward)
            env.last_reward = reward
        env.prev_val_acc, env.prev_rent, env.prev_price = fig.val_accuracy, rent, price

    def _act(self, envs: list[EnvRuntime], observations: dict[int, EnvObservation]) -> None:
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
        driver = self.driver
        if driver is not None and driver.agent is not None and self.checkpoint:
            if self.config.ppo.learn:  # the agent after this round, next to the recording
                state = {**driver.policy_state(), "host": msgspec.to_builtins(self.host_spec)}
                write_policy_file(policy_path(self.checkpoint), state)
        if stats is None:
            return
        self.policy_updates += 1
        self.report.policy_update(self.policy_updates, stats)

    # --- what the operator's commands reach ---------------------------------------------------

    def own_env(self, env: int) -> EnvRuntime | None:
        """Global env ``env`` if this process trains it."""
        envs = self.shard.envs
        return self.envs[env - envs.start] if env in envs else None

    # --- checkpoints (``run_checkpoints``: when, what goes in, the resume) ----------------------

    def checkpoint_state(
        self, episode: int, epoch: int, recording_bytes: int, envs: list[dict] | None = None
    ) -> dict[str, Any]:
        """Everything needed to continue exactly at ``(episode, epoch)`` (SPEC 12)."""
        return self.checkpoints.state(episode, epoch, recording_bytes, envs)

    # --- governor and faults ------------------------------------------------------------------

    def rollback(self, env: EnvRuntime, initiator: Initiator) -> None:
        report = env.governor.execute_rollback(initiator=initiator)
        env.state.after_rollback()
        self.report.emit(report, env.index)
        if initiator is Initiator.GOVERNOR:
            self.policy.penalize(env.index, -report.penalty)
            env.last_reward = -report.penalty
        else:  # the operator's call: a truncation without blame, once the epoch is measured
            env.cut_by_operator = True
        if report.episode_ended:
            env.reset_episode()

    def _inject_faults(self, epoch: int) -> None:
        """SPEC 11: the run's ``--fault`` schedule (first episode), before the epoch trains;
        another rank's env is that rank's to break."""
        for fault in self.faults if self.episode == 0 else ():
            env = self.own_env(fault.env)
            if fault.epoch == epoch and env is not None:
                inject(fault, env)

    # --- setup and reporting ------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.config
        self.run_id = self.report.run_id = self.exchange.start(self.run_id)  # the leader's id
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
        x, y, size = self.task.val_x, self.task.val_y, cfg.batch_size * 2
        self.val_batches = fixed_val_batches(x, y, size, cfg.val_batches, device, self.task.prepare)
        self.report_batches = report_batches(self.task, cfg, device)
        self._reports = {}
        self.faults = check_faults(cfg.faults, cfg.n_envs, cfg.epochs)
        self.host_spec = run_host_spec(cfg, self.task)
        self.envs = []
        for k, i in enumerate(self.shard.envs, 1):
            self.desk.stop_point(setup=True)
            self.setup_status = f"building env {k}/{len(self.shard.envs)}"
            env = (self._env_factory or EnvRuntime)(i, cfg, self.task)
            # a function, not a partial: deepcopy (a rollback snapshot) shares it, never the sink
            env.model.on_transition = lambda event, i=i: self.report.emit(event, i)
            self.envs.append(env)
        for env in self.envs:
            env.flops.share(self.envs[0].flops)  # same host: each architecture measured once
        self.setup_status = "building the policy"
        self.blueprints = tuple(blueprint_names(self.task.host_kind))
        self.policy = self.exchange.relay(self._build_policy)
        self.policy_updates = 0
        resume_from, self._resume_from = self._resume_from, None  # the run will hold its tensors
        self.checkpoints.enabled = self.exchange.agree(self.checkpoints.enabled)
        resume_from = self.exchange.share_resume_state(resume_from)  # each rank gets its part
        if resume_from is not None:
            self.setup_status = "restoring the checkpoint"
            self.episode, self.epoch, self.policy_updates = self.checkpoints.restore(resume_from)
            self._start = (self.episode, self.epoch)
            if self.shard.is_leader:
                length = self.checkpoints.recording_length()
                self.report.run_resumed(self.episode, self.epoch, length)
        elif self.shard.is_leader:
            estimate = self._estimate or estimate_run(cfg, self.task)
            self.report.run_started(cfg, self.task, self.envs[0], self.blueprints, estimate)

    def _build_policy(self) -> PolicyDriver:
        slot_ids, kind = self.envs[0].model.slot_ids, self.task.host_kind
        self.driver = self._given_policy or build_policy(
            self.config, slot_ids, kind, self.host_spec
        )
        return self.driver
