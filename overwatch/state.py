"""The console's view state, built by a pure reducer: telemetry events in, view state out.

Live mode and replay feed the same ``reduce``, so what the operator sees during a run is exactly
what a replay of its recording shows. No Textual here: the reducer is unit-tested on its own and
must ingest a 100k-event recording in well under two seconds, so ``reduce`` mutates the state in
place (and returns it) instead of copying it per event.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from esper_engine.config import MAX_ENVS
from esper_engine.contracts import (
    Attribution,
    BatchStats,
    CommandAck,
    EpochProgress,
    EpochSummary,
    Event,
    GovernorPanic,
    GovernorRollback,
    Initiator,
    OperatorNote,
    PolicyUpdate,
    ResourceSample,
    RunFinished,
    RunResumed,
    RunStarted,
    RunStatus,
    SeedStage,
    SeedTransition,
    SlotState,
)

HISTORY = 120  # points kept per sparkline; wider than any panel shows
PLOT_POINTS = 600  # points kept per plot series (the focused env's plot; ~5 screens wide)
# points kept per series of the plot's other metrics (m): every replay keyframe holds them, so
# fewer (a keyframe's memory stays within ENV_KEYFRAME_BYTES an env, sources.py)
METRIC_POINTS = 100
MARKS = 200  # rollback and seed-transition marks kept per env for its plot
LOG_SIZE = 2000  # event log entries kept (scrollable); older ones fall off
STALE_AFTER_S = 10.0  # live mode: no event for this long means the trainer looks stuck...
STALE_EPOCHS = 2.0  # ...unless the run's own epochs are slower: then this many epoch times
# Policies that never update themselves: no "last PPO update" figures for them.
STATIC_POLICIES = frozenset({"heuristic", "static"})

# Revision stamps, unique across every state in the process, so a widget can tell "unchanged"
# from "rebuilt after a replay seek" by comparing one integer.
_revisions = itertools.count(1)

# Stages of a slot with no measured seed: empty, or a seed too young to have been attributed
# (alpha is 0 until it blends). A slot entering one forgets its last value, which was another
# seed's. A pruned seed keeps its last value (why it was cut) until its slot is reused.
_UNMEASURED_STAGES = frozenset({SeedStage.DORMANT, SeedStage.GERMINATED, SeedStage.TRAINING})
_BLENDING_STAGES = frozenset({SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED})


@dataclass(frozen=True)
class RunPlan:
    """What a live source knows of its run before the first event (the command line's config),
    so the header says from the first frame what is starting."""

    run_id: str
    task: str
    policy: str
    n_envs: int
    episodes: int
    epochs: int
    device: str
    clip_threshold: float | None


@dataclass
class SlotView:
    """One slot of one env: its seed's state and the attribution that last measured that seed."""

    state: SlotState
    # The latest Attribution with a value for this slot's current seed (None: never measured).
    measured: Attribution | None = None

    @property
    def slot_id(self) -> str:
        return self.state.slot_id


@dataclass(frozen=True)
class ShapleyFigure:
    """A slot's Shapley value as the panel shows it: ``current`` when it comes from the env's
    latest attribution and that attribution belongs to the epoch on screen."""

    value: float  # fraction of accuracy
    episode: int
    epoch: int
    current: bool


@dataclass(frozen=True)
class GovernorFigures:
    """The governor line: the latest EpochSummary's counters, moved on by the panics and
    rollbacks reported since it (an operator's rollback lands mid-epoch)."""

    consecutive_panics: int = 0
    total_panics: int = 0
    rollbacks: int = 0
    skipped_steps: int = 0  # the latest epoch's fp16 overflow steps (no optimizer moved)
    last_reason: str | None = None


@dataclass
class EnvView:
    """One env panel's data: the latest events whole, plus the histories the sparklines draw.

    Figures are read from the events themselves (``summary.val_accuracy``, ...): adding a field
    to ``EpochSummary`` needs no change here.
    """

    env: int
    revision: int = field(default=0, compare=False)  # restamped when an event touches this env
    # ... except BatchStats, which restamp this instead: the console repaints their figures at
    # its live cadence (LIVE_PERIOD_S), not on every batch
    live_revision: int = field(default=0, compare=False)
    summary: EpochSummary | None = None  # the latest
    batch: BatchStats | None = None  # the latest since ``summary`` (None right after a summary)
    progress: EpochProgress | None = None  # the latest of an epoch not yet summarised
    attribution: Attribution | None = None  # the latest of the current episode
    governor_events: list[GovernorPanic | GovernorRollback] = field(default_factory=list)
    slots: dict[str, SlotView] = field(default_factory=dict)
    # The trainer's threshold for this env as last reported: by BatchStats, EpochSummary, or the
    # ack of a SetClipThreshold (which lands between them).
    clip_threshold: float | None = None
    val_acc_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    val_loss_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    # Post-clip grad norm: from BatchStats when the trainer sends them (finer), else per epoch.
    grad_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    grad_from_batches: bool = False
    # The plot's series, x in epochs counted across the run from 1 (see ``epoch_x``):
    # (x, val accuracy, val loss) per epoch, (x, post-clip grad norm) per batch, and the marks
    # (x, "rollback" | stage reached) drawn as vertical lines.
    epoch_points: deque[tuple[float, float, float]] = field(
        default_factory=lambda: deque(maxlen=PLOT_POINTS)
    )
    grad_points: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=PLOT_POINTS)
    )
    marks: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=MARKS))
    # The plot's other metrics (issue 25), x as above: (x, train accuracy, train loss, training
    # FLOPs of the episode so far) per epoch; each slot's Shapley value per attribution, by id.
    train_points: deque[tuple[float, float, float, float]] = field(
        default_factory=lambda: deque(maxlen=METRIC_POINTS)
    )
    shapley_points: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    # The epoch in progress, from its BatchStats: steps, clipped steps, post-clip norms summed
    # over the finite steps (as EpochSummary averages them).
    epoch_steps: int = 0
    epoch_clipped: int = 0
    epoch_grad_sum: float = 0.0
    epoch_grad_steps: int = 0
    # The run so far, for the end-of-run summary (overwatch.run_summary): the best val accuracy
    # and its (episode, epoch), seeds fossilized and pruned, rollbacks, FLOPs over episodes.
    best_val_accuracy: float | None = None
    best_at: tuple[int, int] | None = None
    fossilized: int = 0
    pruned: int = 0
    run_rollbacks: int = 0
    run_flops: int = 0

    @property
    def flops(self) -> int:
        """FLOPs this env spent in its current episode (the latest summary's, every kind)."""
        s = self.summary
        if s is None:
            return 0
        return s.train_flops + s.val_flops + s.attribution_flops + s.report_flops

    @property
    def latest(self) -> BatchStats | EpochSummary | None:
        """The newest of ``batch`` and ``summary``: the epoch in progress and its throughput."""
        return self.batch if self.batch is not None else self.summary

    @property
    def at(self) -> tuple[int, int] | None:
        """(episode, epoch) this env is in: the epoch in progress (its progress or batches),
        else the last one summarised; the panel's border and the header show the same."""
        events = (self.progress, self.batch, self.summary)
        return max(((e.episode, e.epoch) for e in events if e is not None), default=None)

    @property
    def grad_norm_post(self) -> float | None:
        latest = self.latest
        return None if latest is None else latest.grad_norm_post_clip

    @property
    def grad_period(self) -> tuple[float | None, float | None]:
        """(mean post-clip grad norm, clipped share) of one period, so the two read together:
        the epoch in progress when it has batches, else the last epoch summarised."""
        if self.batch is not None and self.epoch_steps:
            mean = self.epoch_grad_sum / self.epoch_grad_steps if self.epoch_grad_steps else None
            return mean, self.epoch_clipped / self.epoch_steps
        s = self.summary
        return (None, None) if s is None else (s.grad_norm_post_clip, s.clipped_fraction)

    @property
    def samples_per_s(self) -> float:
        """Throughput of the epoch in progress (BatchStats) or of the last one (EpochSummary);
        recordings older than ``BatchStats.samples_per_s`` carry 0.0 there."""
        if self.batch is not None and self.batch.samples_per_s > 0:
            return self.batch.samples_per_s
        return self.summary.samples_per_s if self.summary is not None else 0.0

    @property
    def governor(self) -> GovernorFigures:
        s = self.summary
        if s is None and not self.governor_events:
            return GovernorFigures()
        consecutive = s.consecutive_panics if s else 0
        total = s.total_panics if s else 0
        rollbacks = s.rollbacks if s else 0
        reason = s.last_panic_reason if s else None
        for event in self.governor_events:
            reason = event.reason
            if type(event) is GovernorPanic:
                consecutive, total = event.consecutive_panics, total + 1
            else:
                consecutive, rollbacks = 0, rollbacks + 1
        return GovernorFigures(consecutive, total, rollbacks, s.skipped_steps if s else 0, reason)

    @property
    def attribution_current(self) -> bool:
        """The latest attribution measured the epoch on screen. Not an earlier one, and not the
        next one either: its event comes just before that epoch's summary, and until the summary
        arrives its values would sit beside the previous epoch's accuracy."""
        a, s = self.attribution, self.summary
        return a is not None and (s is None or (a.episode, a.epoch) == (s.episode, s.epoch))

    def shapley(self, slot: SlotView) -> ShapleyFigure | None:
        measured = slot.measured
        if measured is None:
            return None
        current = measured is self.attribution and self.attribution_current
        value = measured.shapley[slot.slot_id]
        return ShapleyFigure(value, measured.episode, measured.epoch, current)


@dataclass
class Note:
    """A console-side log line (a command the operator sent), shown beside the events."""

    text: str
    episode: int = 0
    epoch: int = 0
    env: int | None = None
    wall_time: float = 0.0  # seconds since the Unix epoch, like an event's


@dataclass(frozen=True)
class Resumed:
    """A RunResumed in the log, with what only the events before it tell: how long the run
    was down (its last event kept to the resume; None when nothing came before)."""

    event: RunResumed
    down_s: float | None

    @property
    def episode(self) -> int:
        return self.event.episode

    @property
    def epoch(self) -> int:
        return self.event.epoch

    @property
    def env(self) -> None:
        return None

    @property
    def wall_time(self) -> float:
        return self.event.wall_time


LogEntry = Event | Note | Resumed


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
    host_params: int = 0  # env 0's model as built (RunStarted), before any EpochSummary
    seed_params: int = 0
    host_kind: str = ""  # RunStarted's host ("" in recordings older than the field)
    host_sizes: str = ""  # "32-64-128", "384x6 h6 /2"
    memory_estimate: int = 0  # bytes, RunStarted's estimate (0: none)
    epoch_s_estimate: float = 0.0  # seconds per epoch, RunStarted's estimate (0.0: none)
    episode: int = 0  # latest epoch summarised (envs run in lockstep)
    epoch: int = 0
    epochs_done: int = 0  # epochs summarised, counted across episodes (for the progress bar)
    policy_update: PolicyUpdate | None = None
    # starting (a live run before RunStarted) | running | paused | stopping | completed | stopped
    # | crashed | waiting (nothing known yet: a replay before its first event)
    trainer_state: str = "waiting"
    finished_status: str | None = None  # completed | stopped | crashed
    error: str | None = None
    clip_threshold: float | None = None  # the run-wide threshold last reported
    dropped: int = 0  # set by the app from its source: events the queue had to drop
    setup: str = ""  # set by the app from a live source: what the trainer sets up, before it runs
    last_wall_time: float | None = None
    started_wall_time: float | None = None  # RunStarted's
    epoch_wall_time: float | None = None  # when the latest epoch (of any env) was summarised
    # The trainer's pauses as its acks tell them: (paused, resumed) wall times, and the start
    # of the one in progress. Epoch time and ETA leave them out.
    pauses: list[tuple[float, float]] = field(default_factory=list)
    paused_at: float | None = None
    # A resumed run's dead time: (last event kept of the process that died, RunResumed) per
    # resume. Elapsed, epoch time and ETA leave these out like the pauses.
    down: list[tuple[float, float]] = field(default_factory=list)
    previous_wall_time: float | None = None  # the event before the latest one's
    batches_per_epoch: int = 0
    # Incidents so far (governor panics, rollbacks, epochs with a non-finite loss, a crash):
    # the header's alert count is this minus what the operator acknowledged.
    alerts: int = 0
    events_seen: int = 0
    # FLOPs the run spent: the growth of every env's episode totals, summed over the summaries
    # (as the trainer sums them for RunFinished, whose total replaces it); 0 in old recordings
    total_flops: int = 0
    flops_seen: dict[int, tuple[int, int]] = field(default_factory=dict)  # env -> (episode, total)
    # Each rank's latest ResourceSample (issue 25), by rank; empty in older recordings.
    resources: dict[int, ResourceSample] = field(default_factory=dict)
    # The policy's updates for the plot: (x, policy loss, value loss, entropy, approx KL).
    ppo_points: deque[tuple[float, float, float, float, float]] = field(
        default_factory=lambda: deque(maxlen=METRIC_POINTS)
    )
    revision: int = field(default=0, compare=False)  # restamped on every event but BatchStats
    live_revision: int = field(default=0, compare=False)  # restamped on every BatchStats
    log_revision: int = field(default=0, compare=False)  # restamped on every log entry
    envs: list[EnvView] = field(default_factory=list)
    log: deque[LogEntry] = field(default_factory=lambda: deque(maxlen=LOG_SIZE))
    run_started: RunStarted | None = None  # the latest, whole: its config for the config screen

    @classmethod
    def planned(cls, plan: RunPlan | None) -> ConsoleState:
        """The state before the first event: empty, or what the run's plan already says."""
        state = cls()
        if plan is not None:
            state.run_id, state.task, state.policy = plan.run_id, plan.task, plan.policy
            state.n_envs, state.episodes, state.epochs = plan.n_envs, plan.episodes, plan.epochs
            state.device, state.clip_threshold = plan.device, plan.clip_threshold
            state.trainer_state = "starting"
        return state

    @property
    def is_language_model(self) -> bool:
        return self.task_kind == "language_model"

    @property
    def finished(self) -> bool:
        return self.finished_status is not None

    @property
    def samples_per_s(self) -> float:
        """The run's live throughput, the sum over envs of their latest; 0 (none) while the
        trainer is not running: a paused or ended run moves no samples."""
        if self.trainer_state != "running":
            return 0.0
        return sum(view.samples_per_s for view in self.envs)

    @property
    def at(self) -> tuple[int, int] | None:
        """(episode, epoch) the run is in: the newest of its envs' (``EnvView.at``)."""
        return max((a for view in self.envs if (a := view.at) is not None), default=None)

    def epoch_fraction(self) -> float:
        """The share of the run's epochs done, the epoch in progress counted by its batches."""
        total = self.episodes * self.epochs
        if not total:
            return 0.0
        done = float(self.epochs_done)
        progress = [view.progress for view in self.envs]
        fractions = [progress_fraction(p) for p in progress if p is not None]
        at = self.at
        if fractions and at is not None and at[0] * self.epochs + at[1] == self.epochs_done:
            done += min(fractions)  # lockstep envs: the run is as far as its slowest
        return min(done / total, 1.0)

    def left_out(self, start: float, end: float) -> float:
        """Seconds of [start, end] the run was paused or its process dead."""
        spans = [*self.pauses, *self.down]
        if self.paused_at is not None:
            spans.append((self.paused_at, end))
        return sum(max(min(b, end) - max(a, start), 0.0) for a, b in spans)

    @property
    def policy_updates(self) -> bool:
        """The policy learns (PPO): the header has figures of its last update to show."""
        return self.policy not in STATIC_POLICIES

    @property
    def epoch_seconds(self) -> float | None:
        """The run's mean wall time per epoch so far, its pauses left out (None before its
        first epoch)."""
        if self.started_wall_time is None or self.epoch_wall_time is None or not self.epochs_done:
            return None
        span = self.epoch_wall_time - self.started_wall_time
        left_out = self.left_out(self.started_wall_time, self.epoch_wall_time)
        return max(span - left_out, 0.0) / self.epochs_done

    def elapsed(self, now: float) -> float | None:
        """Seconds of training since RunStarted: to ``now`` while it runs, to its last event
        once ended; pauses and a resumed run's dead time left out."""
        if self.started_wall_time is None:
            return None
        end = self.last_wall_time if self.finished or self.last_wall_time is None else now
        span = end - self.started_wall_time
        return max(span - self.left_out(self.started_wall_time, end), 0.0)

    def eta(self) -> float | None:
        """Seconds left at the mean epoch time so far (None: not known yet, or finished)."""
        per_epoch = self.epoch_seconds
        total = self.episodes * self.epochs
        if per_epoch is None or self.finished or not total:
            return None
        return per_epoch * max(total - self.epochs_done, 0)

    def epoch_x(self, episode: int, epoch: int, batch: int | None = None) -> float:
        """A plot's x for the end of (episode, epoch), or for a batch within it: epochs counted
        across the run from 1, so episode 2's first epoch follows episode 1's last."""
        x = float(episode * max(self.epochs, 1) + epoch + 1)
        if batch is None or self.batches_per_epoch <= 0:
            return x
        return x - 1 + (batch + 1) / self.batches_per_epoch

    def copy(self, log: Iterable[LogEntry] | None = None) -> ConsoleState:
        """A state equal to this one that reduces on independently of it (a replay keyframe,
        and what a seek starts from): every container is copied, down to the env views and
        their slots, while the events and tuples they hold, all immutable, are shared. Every
        revision is restamped, so widgets repaint from it as from a rebuilt state. ``log``
        replaces the event log (a keyframe keeps none: the replay rebuilds it from the file).
        """
        state = _copied(self) if log is None else _copied(self, skip="log")
        if log is not None:
            state.log = deque(log, maxlen=LOG_SIZE)
        return state

    def keyframe(self) -> ConsoleState:
        """A compact copy to keep (a replay keyframe): no event log, and the plot and sparkline
        series packed into arrays of doubles (8 bytes a figure instead of a float object and a
        tuple slot). Only ``copy`` of it is a state to reduce into or show."""
        state = _copied(self, skip="log", pack=True)
        state.log = deque(maxlen=LOG_SIZE)
        return state


_REVISION_FIELDS = frozenset({"revision", "live_revision", "log_revision"})
_SHARED = (int, float, str, bool, type(None), tuple, msgspec.Struct)


class _Packed:
    """A deque of floats, or of same-width tuples of floats, packed into doubles (``keyframe``)."""

    __slots__ = ("data", "maxlen", "width")

    def __init__(self, values: deque, width: int) -> None:
        self.maxlen, self.width = values.maxlen, width
        self.data = array("d", values if width == 0 else itertools.chain.from_iterable(values))

    @staticmethod
    def width_of(values: deque) -> int | None:
        """0 for floats, n for n-tuples of floats, None when the deque holds anything else."""
        if not values:
            return None
        first = values[0]
        width = 0 if type(first) is float else len(first) if type(first) is tuple else None
        if width is None:
            return None
        for v in values:
            if width == 0:
                if type(v) is not float:
                    return None
            elif type(v) is not tuple or len(v) != width or any(type(x) is not float for x in v):
                return None
        return width

    def unpack(self) -> deque:
        data, width = self.data, self.width
        if width == 0:
            return deque(data, self.maxlen)
        return deque((tuple(data[i : i + width]) for i in range(0, len(data), width)), self.maxlen)


def _copied(value: object, skip: str = "", pack: bool = False) -> object:
    """``value`` with every mutable container and mutable dataclass copied (fields named in
    ``_REVISION_FIELDS`` restamped); immutable values (scalars, tuples, frozen events, frozen
    dataclasses) are shared. Generic over the fields, so a field added later is copied too.
    ``pack``: float series become ``_Packed`` (a keyframe); a ``_Packed`` copies back to one."""
    if isinstance(value, _SHARED):
        return value
    if isinstance(value, deque):
        if pack and (width := _Packed.width_of(value)) is not None:
            return _Packed(value, width)
        return deque([_copied(v, pack=pack) for v in value], value.maxlen)
    if isinstance(value, _Packed):
        return value if pack else value.unpack()
    if isinstance(value, list):
        return [_copied(v, pack=pack) for v in value]
    if isinstance(value, dict):
        return {k: _copied(v, pack=pack) for k, v in value.items()}
    if isinstance(value, set):
        return set(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if value.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            return value
        clone = copy.copy(value)
        for f in dataclasses.fields(value):
            if f.name == skip:
                continue
            if f.name in _REVISION_FIELDS:
                setattr(clone, f.name, next(_revisions))
            else:
                setattr(clone, f.name, _copied(getattr(value, f.name), pack=pack))
        return clone
    raise TypeError(f"a console state holds a {type(value).__name__}, which copy() cannot copy")


def log_entry(event: Event, previous_wall_time: float | None) -> LogEntry:
    """The event log's entry for a logged event: the event itself, or for a RunResumed its
    ``Resumed`` (how long the run was down: since ``previous_wall_time``, the event before)."""
    if type(event) is RunResumed:
        last = previous_wall_time
        down = event.wall_time - last if last is not None and event.wall_time > last else None
        return Resumed(event, down)
    return event


def reduce(state: ConsoleState, event: Event) -> ConsoleState:
    """Apply one event to ``state`` in place and return it (events of unknown type only count)."""
    state.events_seen += 1
    state.previous_wall_time, state.last_wall_time = state.last_wall_time, event.wall_time
    revision = next(_revisions)
    live = type(event) in _LIVE_TYPES
    if live:
        state.live_revision = revision
    else:
        state.revision = revision
    if not state.run_id:
        state.run_id = event.run_id
    handler = _HANDLERS.get(type(event))
    if handler is not None:
        handler(state, event)
    if event.env is not None and event.env < len(state.envs):
        if live:
            state.envs[event.env].live_revision = revision
        else:
            state.envs[event.env].revision = revision
    return state


def reduce_many(state: ConsoleState, events: Iterable[Event]) -> ConsoleState:
    """Apply events in order; the fast path for replay seeks and big batches."""
    for event in events:
        reduce(state, event)
    return state


def progress_fraction(progress: EpochProgress) -> float:
    """The share of an epoch done: its training batches (validation counts as done)."""
    if progress.phase != "train":
        return 1.0
    return min(progress.batch / progress.batches, 1.0) if progress.batches > 0 else 0.0


def log_note(
    state: ConsoleState, text: str, env: int | None = None, wall_time: float = 0.0
) -> None:
    """Record something the console did (a command sent) in the event log, at the epoch the
    run is in (as the header says it), like the trainer's ack that follows it."""
    episode, epoch = state.at or (state.episode, state.epoch)
    _log(state, Note(text, episode, epoch, env, wall_time))


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
    if state.trainer_state == "running" and now - state.last_wall_time > stale_after(state):
        return "STALE"
    return "LIVE"


def stale_after(state: ConsoleState) -> float:
    """Seconds of silence before a running trainer looks stuck: judged against the run's own
    epoch time (a 100 s language-model epoch is not stale at 10 s)."""
    per_epoch = state.epoch_seconds
    return max(STALE_AFTER_S, STALE_EPOCHS * per_epoch) if per_epoch else STALE_AFTER_S


# --- handlers: one per event type --------------------------------------------------------------


def env_view(state: ConsoleState, env: int) -> EnvView:
    """The view of ``env``, created on demand (a follower may start without RunStarted)."""
    if not 0 <= env < MAX_ENVS:  # the decoder refuses such events: never grow a list to one
        raise ValueError(f"env {env} is outside 0..{MAX_ENVS - 1}")
    while len(state.envs) <= env:
        view = EnvView(len(state.envs), revision=next(_revisions))
        view.slots = {slot_id: SlotView(_dormant(slot_id)) for slot_id in state.slot_ids}
        view.clip_threshold = state.clip_threshold
        state.envs.append(view)
    return state.envs[env]


def _dormant(slot_id: str) -> SlotState:
    return SlotState(slot_id=slot_id, stage=SeedStage.DORMANT)


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
    state.host_params, state.seed_params = ev.host_params, ev.seed_params
    state.host_kind, state.host_sizes = ev.host_kind, ev.host_sizes
    state.memory_estimate, state.epoch_s_estimate = ev.memory_estimate, ev.epoch_s_estimate
    state.batches_per_epoch = ev.batches_per_epoch
    state.started_wall_time = ev.wall_time
    state.trainer_state = "running"
    threshold = ev.config.get("max_grad_norm")
    state.clip_threshold = float(threshold) if threshold else None
    state.run_started = ev
    state.envs = []
    for env in range(ev.n_envs):
        env_view(state, env)
    _log(state, ev)


def _batch_stats(state: ConsoleState, ev: BatchStats) -> None:
    view = env_view(state, ev.env or 0)
    if view.batch is None or (view.batch.episode, view.batch.epoch) != (ev.episode, ev.epoch):
        view.epoch_steps = view.epoch_clipped = view.epoch_grad_steps = 0
        view.epoch_grad_sum = 0.0
    view.batch = ev
    view.epoch_steps += 1
    view.epoch_clipped += ev.clipped
    if math.isfinite(ev.grad_norm_post_clip):
        view.epoch_grad_sum += ev.grad_norm_post_clip
        view.epoch_grad_steps += 1
    view.clip_threshold = ev.clip_threshold
    view.grad_from_batches = True
    view.grad_history.append(ev.grad_norm_post_clip)
    view.grad_points.append((state.epoch_x(ev.episode, ev.epoch, ev.batch), ev.grad_norm_post_clip))
    state.clip_threshold = ev.clip_threshold


def _epoch_summary(state: ConsoleState, ev: EpochSummary) -> None:
    view = env_view(state, ev.env or 0)
    _forget_other_episodes(view, ev.episode)
    view.summary, view.batch = ev, None
    episode, before = state.flops_seen.get(view.env, (ev.episode, 0))
    now = view.flops
    grown = max(0, now - (before if episode == ev.episode else 0))
    state.total_flops += grown
    view.run_flops += grown
    if math.isfinite(ev.val_accuracy) and (
        view.best_val_accuracy is None or ev.val_accuracy > view.best_val_accuracy
    ):
        view.best_val_accuracy, view.best_at = ev.val_accuracy, (ev.episode, ev.epoch)
    state.flops_seen[view.env] = (ev.episode, now)
    if view.progress is not None and (view.progress.episode, view.progress.epoch) <= (
        ev.episode,
        ev.epoch,
    ):
        view.progress = None
    view.governor_events = []
    view.clip_threshold = ev.clip_threshold
    view.val_acc_history.append(ev.val_accuracy)
    view.val_loss_history.append(ev.val_loss)
    x = state.epoch_x(ev.episode, ev.epoch)
    view.epoch_points.append((x, ev.val_accuracy, ev.val_loss))
    view.train_points.append((x, ev.train_accuracy, ev.train_loss, float(ev.train_flops)))
    if not view.grad_from_batches:
        view.grad_history.append(ev.grad_norm_post_clip)
        view.grad_points.append((x, ev.grad_norm_post_clip))
    if not (math.isfinite(ev.val_loss) and math.isfinite(ev.train_loss)):
        state.alerts += 1
    state.epoch_wall_time = ev.wall_time
    for slot in ev.slots:
        _set_slot(view, slot)
    state.clip_threshold = ev.clip_threshold
    if (ev.episode, ev.epoch) > (state.episode, state.epoch):
        state.episode, state.epoch = ev.episode, ev.epoch
    state.epochs_done = max(state.epochs_done, ev.episode * state.epochs + ev.epoch + 1)


def _set_slot(view: EnvView, slot: SlotState) -> None:
    """A slot's new state; a new seed (or none) never shows the previous seed's value."""
    slot_view = view.slots.get(slot.slot_id)
    if slot_view is None:
        slot_view = view.slots[slot.slot_id] = SlotView(slot)
    slot_view.state = slot
    if slot.stage in _UNMEASURED_STAGES:
        slot_view.measured = None


def _forget_other_episodes(view: EnvView, episode: int) -> None:
    """Each episode trains a new host: attributions of another episode measured another model."""
    if view.attribution is not None and view.attribution.episode != episode:
        view.attribution = None
    for slot in view.slots.values():
        if slot.measured is not None and slot.measured.episode != episode:
            slot.measured = None


def _seed_transition(state: ConsoleState, ev: SeedTransition) -> None:
    view = env_view(state, ev.env or 0)
    slot = view.slots.get(ev.slot_id)
    old = slot.state if slot is not None else _dormant(ev.slot_id)
    # The alpha of the stage left (the next summary has the new one); no seed blends once cut.
    alpha = ev.alpha if ev.to_stage in _BLENDING_STAGES else 0.0
    new = msgspec.structs.replace(
        old, stage=ev.to_stage, blueprint=ev.blueprint, alpha=alpha, epochs_in_stage=0
    )
    _set_slot(view, new)  # GERMINATED: a new seed, so the slot's last value was another's
    view.marks.append((state.epoch_x(ev.episode, ev.epoch), str(ev.to_stage)))
    if ev.to_stage == SeedStage.FOSSILIZED:
        view.fossilized += 1
    elif ev.to_stage == SeedStage.PRUNED:
        view.pruned += 1
    _log(state, ev)


def _governor_panic(state: ConsoleState, ev: GovernorPanic) -> None:
    env_view(state, ev.env or 0).governor_events.append(ev)
    state.alerts += 1
    _log(state, ev)


def _governor_rollback(state: ConsoleState, ev: GovernorRollback) -> None:
    view = env_view(state, ev.env or 0)
    view.governor_events.append(ev)
    view.marks.append((state.epoch_x(ev.episode, ev.epoch), "rollback"))
    view.run_rollbacks += 1
    if ev.initiator != Initiator.OPERATOR:  # the operator's own rollback is no incident
        state.alerts += 1
    _log(state, ev)


def _attribution(state: ConsoleState, ev: Attribution) -> None:
    view = env_view(state, ev.env or 0)
    view.attribution = ev
    x = state.epoch_x(ev.episode, ev.epoch)
    for slot_id, value in ev.shapley.items():
        points = view.shapley_points.get(slot_id)
        if points is None:
            points = view.shapley_points[slot_id] = deque(maxlen=METRIC_POINTS)
        points.append((x, float(value)))
    for slot_id in ev.shapley:
        slot = view.slots.get(slot_id)
        if slot is not None:
            slot.measured = ev


def _policy_update(state: ConsoleState, ev: PolicyUpdate) -> None:
    state.policy_update = ev
    x = state.epoch_x(ev.episode, ev.epoch)
    state.ppo_points.append(
        (x, float(ev.policy_loss), float(ev.value_loss), float(ev.entropy), float(ev.approx_kl))
    )
    _log(state, ev)


def _command_ack(state: ConsoleState, ev: CommandAck) -> None:
    if ev.accepted:
        if ev.command == "Pause":
            state.trainer_state = "paused"
            if state.paused_at is None:
                state.paused_at = ev.wall_time
        elif ev.command == "Resume":
            state.trainer_state = "running"
            if state.paused_at is not None:
                state.pauses.append((state.paused_at, ev.wall_time))
                state.paused_at = None
        elif ev.command == "Stop":
            state.trainer_state = "stopping"
        elif ev.command == "SetClipThreshold" and ev.value is not None:
            targets = state.envs if ev.env is None else [env_view(state, ev.env)]
            for view in targets:
                view.clip_threshold = ev.value
            if ev.env is None:
                state.clip_threshold = ev.value
    _log(state, ev)


def _epoch_progress(state: ConsoleState, ev: EpochProgress) -> None:
    view = env_view(state, ev.env or 0)
    summary = view.summary
    if summary is not None and (ev.episode, ev.epoch) <= (summary.episode, summary.epoch):
        return  # late news of an epoch already summarised
    view.progress = ev


def _resource_sample(state: ConsoleState, ev: ResourceSample) -> None:
    state.resources[ev.rank] = ev


def _run_resumed(state: ConsoleState, ev: RunResumed) -> None:
    """The process that died is the history; the time until this one started is left out."""
    last = state.previous_wall_time
    if state.paused_at is not None:  # it died paused: the pause ended with it
        state.pauses.append((state.paused_at, last if last is not None else ev.wall_time))
        state.paused_at = None
    if last is not None and ev.wall_time > last:
        state.down.append((last, ev.wall_time))
    state.trainer_state = "running"
    state.finished_status, state.error = None, None
    for view in state.envs:  # the epoch the dead process was in starts again
        view.progress, view.batch = None, None
    _log(state, log_entry(ev, last))


def _run_finished(state: ConsoleState, ev: RunFinished) -> None:
    state.trainer_state = ev.status
    state.finished_status = ev.status
    state.error = ev.error
    if ev.total_flops:  # the trainer's own sum (it saw every epoch, a resumed run's included)
        state.total_flops = ev.total_flops
    if ev.status == RunStatus.CRASHED:
        state.alerts += 1
    _log(state, ev)


def _operator_note(state: ConsoleState, ev: OperatorNote) -> None:
    """An operator's note: in the log, and a mark on its env's plot (a run's note: every env's)."""
    x = state.epoch_x(ev.episode, ev.epoch)
    views = state.envs if ev.env is None else [env_view(state, ev.env)]
    for view in views:
        view.marks.append((x, "note"))
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
    RunResumed: _run_resumed,
    EpochProgress: _epoch_progress,
    OperatorNote: _operator_note,
    ResourceSample: _resource_sample,
}
# Events that only move figures the console repaints at its live cadence (LIVE_PERIOD_S).
_LIVE_TYPES = frozenset({BatchStats, EpochProgress, ResourceSample})
