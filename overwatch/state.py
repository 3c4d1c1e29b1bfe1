"""The console's view state, built by a pure reducer: telemetry events in, view state out.

Live mode and replay feed the same ``reduce``, so what the operator sees during a run is exactly
what a replay of its recording shows. No Textual here: the reducer is unit-tested on its own and
must ingest a 100k-event recording in well under two seconds, so ``reduce`` mutates the state in
place (and returns it) instead of copying it per event.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from esper_engine.contracts import (
    Attribution,
    BatchStats,
    CommandAck,
    EpochSummary,
    Event,
    GovernorPanic,
    GovernorRollback,
    PolicyUpdate,
    RunFinished,
    RunStarted,
    SeedTransition,
)

HISTORY = 120  # points kept per sparkline; wider than any panel shows
LOG_SIZE = 500  # event log entries kept; older ones fall off
STALE_AFTER_S = 10.0  # live mode: no event for this long means the trainer looks stuck

# Revision stamps, unique across every state in the process, so a widget can tell "unchanged"
# from "rebuilt after a replay seek" by comparing one integer.
_revisions = itertools.count(1)

# Slots whose seed no longer exists: their last attribution is meaningless.
_GONE_STAGES = frozenset({"PRUNED", "EMBARGOED", "RESETTING", "DORMANT"})


@dataclass
class SlotView:
    """One slot of one env: its seed's stage and the latest attribution of its contribution."""

    slot_id: str
    stage: str = "DORMANT"
    blueprint: str | None = None
    alpha: float = 0.0
    epochs_in_stage: int = 0
    shapley: float | None = None
    shapley_std: float | None = None


@dataclass
class GovernorView:
    consecutive_panics: int = 0
    total_panics: int = 0
    rollbacks: int = 0
    skipped_steps: int = 0  # the latest epoch's fp16 overflow steps (no optimizer moved)
    last_reason: str | None = None


@dataclass
class EnvView:
    """Everything one env panel shows; histories are per epoch except the batch-level grad norm."""

    env: int
    revision: int = field(default=0, compare=False)  # restamped when an event touches this env
    episode: int = 0
    epoch: int = 0
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    perplexity: float | None = None
    val_acc_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    val_loss_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    # Post-clip grad norm: from BatchStats when the trainer sends them (finer), else per epoch.
    grad_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    grad_from_batches: bool = False
    grad_norm_pre: float | None = None
    grad_norm_post: float | None = None
    clipped_fraction: float | None = None
    clip_threshold: float | None = None
    batch_loss: float | None = None
    slots: dict[str, SlotView] = field(default_factory=dict)
    governor: GovernorView = field(default_factory=GovernorView)
    last_action: str = "-"
    reward: float | None = None
    samples_per_s: float = 0.0
    host_params: int = 0
    seed_params: int = 0
    attribution: Attribution | None = None  # the latest, for its exact flag and v(all)/v(none)


@dataclass
class Note:
    """A console-side log line (a command the operator sent), shown beside the events."""

    text: str
    episode: int = 0
    epoch: int = 0
    env: int | None = None


LogEntry = Event | Note


@dataclass
class ConsoleState:
    """The whole console view: run-level fields, one ``EnvView`` per env, and the event log."""

    run_id: str = ""
    task: str = ""
    task_kind: str = ""
    policy: str = ""
    device: str = ""
    n_envs: int = 0
    slot_ids: list[str] = field(default_factory=list)
    episodes: int = 0  # planned totals from RunStarted
    epochs: int = 0
    random_guess_loss: float | None = None
    episode: int = 0  # latest epoch summarised (envs run in lockstep)
    epoch: int = 0
    epochs_done: int = 0  # epochs summarised, counted across episodes (for the progress bar)
    samples_per_s: float = 0.0  # sum over envs of their latest throughput
    policy_update: PolicyUpdate | None = None
    trainer_state: str = "waiting"  # waiting | running | paused | stopping | completed | ...
    finished_status: str | None = None  # completed | stopped | crashed
    error: str | None = None
    clip_threshold: float | None = None  # the run-wide threshold last reported
    dropped: int = 0  # set by the app from its source: events the queue had to drop
    last_wall_time: float | None = None
    events_seen: int = 0
    revision: int = field(default=0, compare=False)  # restamped on every event
    log_revision: int = field(default=0, compare=False)  # restamped on every log entry
    envs: list[EnvView] = field(default_factory=list)
    log: deque[LogEntry] = field(default_factory=lambda: deque(maxlen=LOG_SIZE))

    @property
    def is_language_model(self) -> bool:
        return self.task_kind == "language_model"

    @property
    def finished(self) -> bool:
        return self.finished_status is not None


def reduce(state: ConsoleState, event: Event) -> ConsoleState:
    """Apply one event to ``state`` in place and return it (events of unknown type only count)."""
    state.events_seen += 1
    state.last_wall_time = event.wall_time
    state.revision = revision = next(_revisions)
    if not state.run_id:
        state.run_id = event.run_id
    handler = _HANDLERS.get(type(event))
    if handler is not None:
        handler(state, event)
    if event.env is not None and event.env < len(state.envs):
        state.envs[event.env].revision = revision
    return state


def reduce_many(state: ConsoleState, events: Iterable[Event]) -> ConsoleState:
    """Apply events in order; the fast path for replay seeks and big batches."""
    for event in events:
        reduce(state, event)
    return state


def log_note(state: ConsoleState, text: str, env: int | None = None) -> None:
    """Record something the console did (a command sent) in the event log."""
    _log(state, Note(text, state.episode, state.epoch, env))


def _log(state: ConsoleState, entry: LogEntry) -> None:
    state.log.append(entry)
    state.log_revision = next(_revisions)


def liveness(state: ConsoleState, now: float, *, is_live: bool, read_only: bool) -> str:
    """The header's data indicator: REPLAY, WAITING, LIVE, STALE or ENDED."""
    if state.finished:
        return "ENDED"
    if read_only and not is_live:
        return "REPLAY"
    if state.last_wall_time is None:
        return "WAITING"
    # A paused trainer is silent on purpose; only a running one can look stuck.
    if state.trainer_state == "running" and now - state.last_wall_time > STALE_AFTER_S:
        return "STALE"
    return "LIVE"


# --- handlers: one per event type --------------------------------------------------------------


def env_view(state: ConsoleState, env: int) -> EnvView:
    """The view of ``env``, created on demand (a follower may start without RunStarted)."""
    while len(state.envs) <= env:
        view = EnvView(len(state.envs), revision=next(_revisions))
        view.slots = {slot_id: SlotView(slot_id) for slot_id in state.slot_ids}
        view.clip_threshold = state.clip_threshold
        state.envs.append(view)
    return state.envs[env]


def _run_started(state: ConsoleState, ev: RunStarted) -> None:
    state.run_id = ev.run_id
    state.task = ev.task
    state.task_kind = ev.task_kind
    state.policy = ev.policy
    state.device = ev.device
    state.n_envs = ev.n_envs
    state.slot_ids = list(ev.slot_ids)
    state.episodes = ev.episodes
    state.epochs = ev.epochs
    state.random_guess_loss = ev.random_guess_loss
    state.trainer_state = "running"
    threshold = ev.config.get("max_grad_norm")
    state.clip_threshold = float(threshold) if threshold else None
    state.envs = []
    for env in range(ev.n_envs):
        env_view(state, env)
    _log(state, ev)


def _batch_stats(state: ConsoleState, ev: BatchStats) -> None:
    view = env_view(state, ev.env or 0)
    view.batch_loss = ev.loss
    view.grad_norm_pre = ev.grad_norm_pre_clip
    view.grad_norm_post = ev.grad_norm_post_clip
    view.clip_threshold = ev.clip_threshold
    view.grad_from_batches = True
    view.grad_history.append(ev.grad_norm_post_clip)
    state.clip_threshold = ev.clip_threshold


def _epoch_summary(state: ConsoleState, ev: EpochSummary) -> None:
    view = env_view(state, ev.env or 0)
    view.episode, view.epoch = ev.episode, ev.epoch
    view.train_loss, view.train_accuracy = ev.train_loss, ev.train_accuracy
    view.val_loss, view.val_accuracy = ev.val_loss, ev.val_accuracy
    view.perplexity = ev.perplexity
    view.val_acc_history.append(ev.val_accuracy)
    view.val_loss_history.append(ev.val_loss)
    view.grad_norm_pre, view.grad_norm_post = ev.grad_norm_pre_clip, ev.grad_norm_post_clip
    view.clipped_fraction = ev.clipped_fraction
    view.clip_threshold = ev.clip_threshold
    if not view.grad_from_batches:
        view.grad_history.append(ev.grad_norm_post_clip)
    for slot in ev.slots:
        slot_view = view.slots.get(slot.slot_id)
        if slot_view is None:
            slot_view = view.slots[slot.slot_id] = SlotView(slot.slot_id)
        slot_view.stage = slot.stage
        slot_view.blueprint = slot.blueprint
        slot_view.alpha = slot.alpha
        slot_view.epochs_in_stage = slot.epochs_in_stage
        if slot.stage in _GONE_STAGES:
            slot_view.shapley = slot_view.shapley_std = None
    gov = view.governor
    gov.consecutive_panics, gov.total_panics = ev.consecutive_panics, ev.total_panics
    gov.rollbacks, gov.skipped_steps = ev.rollbacks, ev.skipped_steps
    if ev.last_panic_reason is not None:
        gov.last_reason = ev.last_panic_reason
    view.last_action = ev.last_action
    view.reward = ev.reward
    view.samples_per_s = ev.samples_per_s
    view.host_params, view.seed_params = ev.host_params, ev.seed_params
    state.clip_threshold = ev.clip_threshold
    if (ev.episode, ev.epoch) > (state.episode, state.epoch):
        state.episode, state.epoch = ev.episode, ev.epoch
    state.epochs_done = max(state.epochs_done, ev.episode * state.epochs + ev.epoch + 1)
    state.samples_per_s = sum(env.samples_per_s for env in state.envs)


def _seed_transition(state: ConsoleState, ev: SeedTransition) -> None:
    view = env_view(state, ev.env or 0)
    slot = view.slots.get(ev.slot_id)
    if slot is None:
        slot = view.slots[ev.slot_id] = SlotView(ev.slot_id)
    slot.stage = ev.to_stage
    slot.blueprint = ev.blueprint
    slot.alpha = ev.alpha
    slot.epochs_in_stage = 0
    if ev.to_stage in _GONE_STAGES:
        slot.shapley = slot.shapley_std = None
    _log(state, ev)


def _governor_panic(state: ConsoleState, ev: GovernorPanic) -> None:
    gov = env_view(state, ev.env or 0).governor
    gov.consecutive_panics = ev.consecutive_panics
    gov.total_panics += 1
    gov.last_reason = ev.reason
    _log(state, ev)


def _governor_rollback(state: ConsoleState, ev: GovernorRollback) -> None:
    gov = env_view(state, ev.env or 0).governor
    gov.rollbacks += 1
    gov.consecutive_panics = 0
    gov.last_reason = ev.reason
    _log(state, ev)


def _attribution(state: ConsoleState, ev: Attribution) -> None:
    view = env_view(state, ev.env or 0)
    view.attribution = ev
    for slot_id, slot in view.slots.items():
        value = ev.shapley.get(slot_id)
        if value is not None:
            slot.shapley = value
            slot.shapley_std = ev.std.get(slot_id) if ev.std else None
        elif slot.stage != "FOSSILIZED":
            # Not attributed this time: no longer active. A fossilized seed keeps its last word.
            slot.shapley = slot.shapley_std = None


def _policy_update(state: ConsoleState, ev: PolicyUpdate) -> None:
    state.policy_update = ev
    _log(state, ev)


def _command_ack(state: ConsoleState, ev: CommandAck) -> None:
    if ev.accepted:
        if ev.command == "Pause":
            state.trainer_state = "paused"
        elif ev.command == "Resume":
            state.trainer_state = "running"
        elif ev.command == "Stop":
            state.trainer_state = "stopping"
        elif ev.command == "SetClipThreshold" and ev.value is not None:
            targets = state.envs if ev.env is None else [env_view(state, ev.env)]
            for view in targets:
                view.clip_threshold = ev.value
            if ev.env is None:
                state.clip_threshold = ev.value
    _log(state, ev)


def _run_finished(state: ConsoleState, ev: RunFinished) -> None:
    state.trainer_state = ev.status
    state.finished_status = ev.status
    state.error = ev.error
    _log(state, ev)


_HANDLERS: dict[type[Event], Callable[[ConsoleState, Event], None]] = {
    RunStarted: _run_started,
    BatchStats: _batch_stats,
    EpochSummary: _epoch_summary,
    SeedTransition: _seed_transition,
    GovernorPanic: _governor_panic,
    GovernorRollback: _governor_rollback,
    Attribution: _attribution,
    PolicyUpdate: _policy_update,
    CommandAck: _command_ack,
    RunFinished: _run_finished,
}
