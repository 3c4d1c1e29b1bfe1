"""Where the console's events come from: a live training session or a recording.

Both sources offer one interface (``EventSource``) so the app has a single code path: on every
refresh tick it calls ``poll()`` and reduces what comes back. A live source drains the trainer's
telemetry queue; a replay source releases recorded events paced by their recorded wall time,
scaled by the playback speed, using a clock it is given (the app's timer drives it, never a sleep).
"""

from __future__ import annotations

import math
import os
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from esper_engine.config import MAX_EPOCHS
from esper_engine.contracts import (
    EpochSummary,
    Event,
    GovernorPanic,
    GovernorRollback,
    OperatorCommand,
    OperatorNote,
    RunFinished,
    RunResumed,
    RunStarted,
    RunStatus,
)
from esper_engine.recording import RecordingError, RecordingFollower
from esper_engine.recording_index import RecordingIndex
from overwatch.state import (
    LOG_SIZE,
    ConsoleState,
    LogEntry,
    RunPlan,
    log_entry,
    reduce,
    reduce_many,
)

if TYPE_CHECKING:  # the session imports torch; replay never needs it
    from pathlib import Path

    from esper_engine.session import TrainingSession

# Replay speeds; the last, infinite, is "as fast as possible": one epoch per refresh tick.
SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, math.inf)
INCIDENTS = (GovernorPanic, GovernorRollback)  # what n / N jump between in a replay
# Recorded silences longer than this (a paused run, a slow epoch) are cut short in playback.
MAX_IDLE_S = 3.0


@dataclass(frozen=True)
class Polled:
    """One poll's events; ``reset`` means: drop the current state, take ``state`` (or an empty
    one) and reduce ``events`` into it."""

    events: list[Event]
    reset: bool = False
    # With ``reset``: the state to carry on from (then ``events``), instead of an empty one.
    state: ConsoleState | None = None


@dataclass(frozen=True)
class ReplayPosition:
    """Where playback stands, for the replay status bar."""

    index: int  # events applied so far
    total: int
    episode: int
    epoch: int
    playing: bool
    speed: float
    follow: bool

    @property
    def percent(self) -> float:
        return 100.0 * self.index / self.total if self.total else 100.0


@dataclass(frozen=True)
class Capabilities:
    """What a source can do; the app enables its keys and indicators from this alone."""

    controls: bool  # commands reach a trainer (rollback, clip, pause); else they are greyed out
    replay_controls: bool  # play/pause, step, speed and jumps (``EventSource.replay``)
    live: bool  # events arrive as they happen: the header can say LIVE or STALE
    # The run belongs to another process: q leaves it going, stopping it is its own key.
    attached: bool = False


class ReplayAction(StrEnum):
    TOGGLE = "toggle"  # play / pause
    STEP_FORWARD = "step_forward"  # to the end of the next epoch
    STEP_BACK = "step_back"
    FASTER = "faster"
    SLOWER = "slower"
    HOME = "home"
    END = "end"
    NEXT_INCIDENT = "next_incident"  # the next governor panic or rollback
    PREVIOUS_INCIDENT = "previous_incident"
    NEXT_NOTE = "next_note"  # the next operator note
    PREVIOUS_NOTE = "previous_note"


def speed_label(speed: float) -> str:
    return "max" if math.isinf(speed) else f"{speed:g}x"


class EventSource(Protocol):
    """What the app needs from a source of telemetry."""

    capabilities: Capabilities
    warning: str | None  # something the operator should know (shown once as a toast)
    # The run as known before its first event (a live run's config: the header's first frame
    # and the panels laid out before the trainer starts); None: wait for RunStarted.
    plan: RunPlan | None

    @property
    def dropped(self) -> int: ...

    @property
    def finished(self) -> RunFinished | None:
        """How the trainer behind this source ended; None while it runs, or with no trainer."""
        ...

    def start(self) -> None: ...

    def poll(self) -> Polled: ...

    def send(self, command: OperatorCommand) -> int | None: ...

    def stop(self, timeout: float | None = None) -> bool: ...

    def position(self) -> ReplayPosition | None: ...

    def replay(self, action: ReplayAction) -> None:
        """Move the playback; only called when ``capabilities.replay_controls``."""
        ...

    def seek_epoch(self, episode: int, epoch: int) -> bool:
        """Show the end of (episode, epoch), counted from 0; False when the recording has no
        such epoch. Only called when ``capabilities.replay_controls``."""
        ...


def session_plan(session: TrainingSession) -> RunPlan:
    """What the session's config says of the run, before its trainer has said anything."""
    config = session.config
    return RunPlan(
        run_id=session.run_id,
        task=config.task,
        policy=config.policy,
        n_envs=config.n_envs,
        episodes=config.episodes,
        epochs=config.epochs,
        device=config.device,
        clip_threshold=config.max_grad_norm or None,
    )


class LiveSource:
    """A training session running in its background thread, seen through the source interface."""

    capabilities = Capabilities(controls=True, replay_controls=False, live=True)

    def __init__(self, session: TrainingSession) -> None:
        self.session = session
        self.plan = session_plan(session)
        self._started = False
        self._finished_seen = False

    @property
    def dropped(self) -> int:
        return self.session.dropped

    @property
    def warning(self) -> str | None:
        """Why the run cannot be attached to (it trains anyway), once it has started."""
        return self.session.control_error

    @property
    def setup_status(self) -> str:
        """What the trainer is setting up ("building env 37/1024"); "" once it trains."""
        return self.session.setup_status

    @property
    def finished(self) -> RunFinished | None:
        return self.session.finished

    def start(self) -> None:
        """Start the trainer thread; calling it again does nothing."""
        if not self._started:
            self._started = True
            self.session.start()

    def poll(self) -> Polled:
        # Checked before draining: once the thread has ended, all it emitted is in the queue.
        ended = self._started and self.session.thread_state in ("idle", "finished")
        events = self.session.poll()
        if any(type(event) is RunFinished for event in events):
            self._finished_seen = True
        elif ended and not self._finished_seen:
            # Its RunFinished was dropped by a full queue, or the thread died without one:
            # say how the run ended rather than show a run that silently stopped moving.
            self._finished_seen = True
            events.append(self.session.finished or self._died_event())
        return Polled(events)

    def _died_event(self) -> RunFinished:
        return RunFinished(
            run_id=self.session.run_id,
            wall_time=time.time(),
            status=RunStatus.CRASHED,
            error="the trainer thread ended without RunFinished (traceback on stderr)",
        )

    def send(self, command: OperatorCommand) -> int | None:
        """Queue a command for the trainer's next safe point; returns its command id."""
        return self.session.send(command)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop at a safe point and wait; True when the trainer thread has ended."""
        return self.session.stop(timeout)

    def position(self) -> ReplayPosition | None:
        return None

    def replay(self, action: ReplayAction) -> None:
        raise TypeError("a live run has no playback controls")

    def seek_epoch(self, episode: int, epoch: int) -> bool:
        raise TypeError("a live run has no playback controls")


class _EventList:
    """Events already in memory (``ReplaySource.from_events``), behind ``RecordingIndex``'s
    interface."""

    def __init__(self, events: list[Event]) -> None:
        self._events = events

    def __len__(self) -> int:
        return len(self._events)

    def __getitem__(self, index: int) -> Event:
        return self._events[index]

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def slice(self, start: int, stop: int) -> list[Event]:
        return self._events[max(start, 0) : stop]

    def take(self, indices: Sequence[int]) -> list[Event]:
        return [self._events[i] for i in indices]

    def close(self) -> None:
        pass


class _EventFile(RecordingIndex):
    """A recording's events read from the file as they are looked at (``RecordingIndex``)."""

    def __iter__(self) -> Iterator[Event]:
        for start in range(0, len(self), 4096):
            yield from self.slice(start, start + 4096)


# Keyframes: a copy of the console state every KEYFRAME_EPOCHS epoch stops, so a step back (or
# any seek) rebuilds at most that many epochs from the nearest one. At most MAX_KEYFRAMES are
# kept (fewer for many envs: about KEYFRAME_BYTES in all), dense near the playback position and
# thinning out with distance from it; a seek far from any rebuilds from the nearest and lays
# keyframes down on its way.
KEYFRAME_EPOCHS = 8
MAX_KEYFRAMES = 24
MIN_KEYFRAMES = 6
KEYFRAME_BYTES = 8 * 1024 * 1024
ENV_KEYFRAME_BYTES = 64 * 1024  # an env's share of a keyframe, its plot series packed (measured)
# A forward move of more events than this reaches the console as a state (``Polled.state``)
# built here, not as a list of events: memory stays bounded on a jump to the end.
MAX_BATCH_EVENTS = 4096


class ReplaySource:
    """A recording played back read-only: play/pause, step by epoch, speed, jump to either end.

    The source keeps a cursor (how many events the console should have applied) and remembers
    how many it has handed out. The recording is indexed, not held: events are decoded from the
    file as they are needed (``RecordingIndex``), so memory does not grow with the recording.
    Beside the console, the source reduces every event it hands out into a state of its own
    (the *frontier*) and keeps copies of it at keyframes (``KEYFRAME_EPOCHS``); moving the
    cursor backwards (or far forwards) makes the next poll a ``reset`` carrying the state at the
    cursor, rebuilt from the nearest keyframe, which equals a replay from the start.
    """

    dropped = 0
    finished = None  # no trainer behind a recording
    plan = None  # a rewind to the start shows no panels, as the recording's start does

    def __init__(
        self,
        path: str | os.PathLike[str] | Path,
        speed: float = 1.0,
        follow: bool = False,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not follow:
            try:
                open(path, "rb").close()  # noqa: SIM115 - a missing file says so here
            except OSError as exc:
                raise RecordingError(f"{path}: cannot read recording ({exc.strerror})") from None
        store = _EventFile(path)
        self.warning: str | None = None
        self._setup(store, speed, clock, follow)
        if follow and not os.path.exists(path):
            self.warning = f"waiting for {path} to be created…"
        elif not follow:
            self.warning = store.truncation()

    @classmethod
    def from_events(
        cls,
        events: list[Event],
        speed: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> ReplaySource:
        """A replay of events already in memory (tests, or a recording read elsewhere)."""
        source = cls.__new__(cls)
        source.warning = None
        source._setup(_EventList(list(events)), speed, clock, False)
        return source

    def _setup(
        self,
        store: _EventFile | _EventList,
        speed: float,
        clock: Callable[[], float],
        follow: bool,
    ) -> None:
        if speed not in SPEEDS:
            speed = min(SPEEDS, key=lambda s: abs(s - speed))
        self.events = store
        self.speed = speed
        self.follow = follow
        self.capabilities = Capabilities(controls=False, replay_controls=True, live=self.follow)
        self._clock = clock
        self._stops = array("q")  # positions just after each epoch's last summary, ascending
        self._epoch_last: dict[int, int] = {}  # _epoch_key(episode, epoch) -> its stop
        self._incidents = array("q")  # positions just after each governor panic or rollback
        self._notes = array("q")  # positions just after each operator note
        # The frontier: every event handed out so far, reduced here too, and its log's events.
        self._frontier = ConsoleState()
        self._frontier_at = 0
        self._log_positions = array("q")  # index of each event that made a log entry
        self._keyframes: dict[int, ConsoleState] = {0: ConsoleState()}  # position -> state
        self._keyframe_at = 0  # the frontier's last keyframe
        if isinstance(store, _EventFile):
            store.update(self._index_epochs)
        else:
            self._index_epochs(store.slice(0, len(store)), 0)
        self.playing = True
        self.cursor = len(store) if self.follow else self.start_index
        self._applied = 0
        self._replay_time = self._wall_before(self.cursor)
        self._last_clock: float | None = None

    # --- the source interface -------------------------------------------------------------------

    def start(self) -> None:
        self._last_clock = self._clock()

    def poll(self) -> Polled:
        now = self._clock()
        elapsed = 0.0 if self._last_clock is None else max(0.0, now - self._last_clock)
        self._last_clock = now
        if self.follow:
            self._take_new_events()
        if self.playing:
            self._advance(math.inf if math.isinf(self.speed) else elapsed * self.speed)
        if self.cursor < self._applied or self.cursor - self._applied > MAX_BATCH_EVENTS:
            self._applied = self.cursor
            return Polled([], reset=True, state=self.state_at(self.cursor))
        batch = self.events.slice(self._applied, self.cursor)
        if self._frontier_at == self._applied:
            self._reduce_frontier(batch)
        else:
            self._advance_frontier(self.cursor)
        self._applied = self.cursor
        return Polled(batch)

    def send(self, command: OperatorCommand) -> int | None:
        return None  # a recording cannot be steered

    def stop(self, timeout: float | None = None) -> bool:
        """Stop following and close the recording (it is reopened if looked at again)."""
        self.events.close()
        return True

    def position(self) -> ReplayPosition:
        last = self.events[self.cursor - 1] if self.cursor else None
        return ReplayPosition(
            index=self.cursor,
            total=len(self.events),
            episode=last.episode if last else 0,
            epoch=last.epoch if last else 0,
            playing=self.playing,
            speed=self.speed,
            follow=self.follow,
        )

    def replay(self, action: ReplayAction) -> None:
        {
            ReplayAction.TOGGLE: self.toggle_play,
            ReplayAction.STEP_FORWARD: self.step_forward,
            ReplayAction.STEP_BACK: self.step_back,
            ReplayAction.FASTER: self.faster,
            ReplayAction.SLOWER: self.slower,
            ReplayAction.HOME: self.home,
            ReplayAction.END: self.end,
            ReplayAction.NEXT_INCIDENT: self.next_incident,
            ReplayAction.PREVIOUS_INCIDENT: self.previous_incident,
            ReplayAction.NEXT_NOTE: lambda: self._jump(self._notes, forward=True),
            ReplayAction.PREVIOUS_NOTE: lambda: self._jump(self._notes, forward=False),
        }[action]()

    def seek_epoch(self, episode: int, epoch: int) -> bool:
        """Pause at the end of (episode, epoch); False (and no move) when there is none."""
        stop = self._epoch_last.get(_epoch_key(episode, epoch))
        if stop is None:
            return False
        self.playing = False
        self.seek(stop)
        return True

    # --- playback controls ----------------------------------------------------------------------

    @property
    def start_index(self) -> int:
        """Where "home" lands: just after RunStarted, so the header is never blank."""
        return 1 if len(self.events) and type(self.events[0]) is RunStarted else 0

    @property
    def at_end(self) -> bool:
        return self.cursor >= len(self.events)

    def toggle_play(self) -> None:
        """Play/pause; playing from the end of a finished recording starts it over."""
        if not self.playing and self.at_end and not self.follow:
            self.seek(self.start_index)
        self.playing = not self.playing

    def step_forward(self) -> None:
        """Pause and show the end of the next epoch."""
        self.playing = False
        i = bisect_right(self._stops, self.cursor)
        self.seek(self._stops[i] if i < len(self._stops) else len(self.events))

    def step_back(self) -> None:
        """Pause and show the end of the previous epoch."""
        self.playing = False
        i = bisect_left(self._stops, self.cursor)
        self.seek(self._stops[i - 1] if i else self.start_index)

    def faster(self) -> None:
        self.speed = SPEEDS[min(SPEEDS.index(self.speed) + 1, len(SPEEDS) - 1)]

    def slower(self) -> None:
        self.speed = SPEEDS[max(SPEEDS.index(self.speed) - 1, 0)]

    def home(self) -> None:
        self.seek(self.start_index)

    def end(self) -> None:
        """Jump to the end: a finished recording pauses there, a followed one follows again."""
        self.seek(len(self.events))
        self.playing = self.follow

    def next_incident(self) -> None:
        """Pause just after the next governor panic or rollback (none: stay)."""
        i = bisect_right(self._incidents, self.cursor)
        self.playing = False
        if i < len(self._incidents):
            self.seek(self._incidents[i])

    def previous_incident(self) -> None:
        i = bisect_left(self._incidents, self.cursor)
        self.playing = False
        if i:
            self.seek(self._incidents[i - 1])

    def _jump(self, positions: array, *, forward: bool) -> None:
        """Pause just after the next (or previous) of ``positions`` (none: stay)."""
        self.playing = False
        if forward:
            i = bisect_right(positions, self.cursor)
            if i < len(positions):
                self.seek(positions[i])
        else:
            i = bisect_left(positions, self.cursor)
            if i:
                self.seek(positions[i - 1])

    def seek(self, index: int) -> None:
        """Move the cursor; playback time continues from the last event shown."""
        self.cursor = max(0, min(index, len(self.events)))
        self._replay_time = self._wall_before(self.cursor)

    # --- the state at a position: keyframes -----------------------------------------------------

    def state_at(self, index: int) -> ConsoleState:
        """A new console state equal to reducing ``events[:index]`` into a fresh one, built
        from the nearest keyframe at or before ``index`` (or from the frontier, moved on to it);
        keyframes are laid down on the way."""
        if index >= self._frontier_at:
            self._advance_frontier(index)
            return self._frontier.copy()
        at = max(p for p in self._keyframes if p <= index)
        state = self._keyframes[at].copy(log=self._log_before(at))
        last = at
        for stop in self._stops_between(at, index):
            reduce_many(state, self.events.slice(at, stop))
            at = stop
            if self._epochs_between(last, at) >= KEYFRAME_EPOCHS:
                self._keep(at, state)
                last = at
        for start in range(at, index, MAX_BATCH_EVENTS):
            reduce_many(state, self.events.slice(start, min(start + MAX_BATCH_EVENTS, index)))
        return state

    @property
    def max_keyframes(self) -> int:
        """How many keyframes are kept: MAX_KEYFRAMES, fewer for a run of many envs."""
        per_keyframe = ENV_KEYFRAME_BYTES * max(self._frontier.n_envs, 1)
        return max(MIN_KEYFRAMES, min(MAX_KEYFRAMES, KEYFRAME_BYTES // per_keyframe))

    def _advance_frontier(self, index: int) -> None:
        """Reduce the frontier on to ``index``, chunk by chunk (memory stays bounded)."""
        while self._frontier_at < index:
            stop = min(index, self._frontier_at + MAX_BATCH_EVENTS)
            self._reduce_frontier(self.events.slice(self._frontier_at, stop), index)

    def _reduce_frontier(self, events: list[Event], target: int | None = None) -> None:
        """Reduce ``events`` (those from the frontier on) into it, noting which make a log
        entry, and keep a keyframe at each epoch stop ``KEYFRAME_EPOCHS`` after the last. On
        the way to a ``target`` far ahead (a jump), keyframes far behind it, which thinning
        would drop, are spaced as thinning leaves them instead of copied in vain."""
        state, at = self._frontier, self._frontier_at
        near = 0
        if target is not None:
            near = bisect_right(self._stops, target) - KEYFRAME_EPOCHS * self.max_keyframes // 2
        far_spacing = max(KEYFRAME_EPOCHS, len(self._stops) // (self.max_keyframes // 2))
        i = bisect_right(self._stops, at)
        next_stop = self._stops[i] if i < len(self._stops) else -1
        log_revision = state.log_revision
        for event in events:
            reduce(state, event)
            if state.log_revision != log_revision:
                log_revision = state.log_revision
                self._log_positions.append(at)
            at += 1
            if at == next_stop:
                i += 1
                next_stop = self._stops[i] if i < len(self._stops) else -1
                self._frontier_at = at
                spacing = KEYFRAME_EPOCHS if target is None or i >= near else far_spacing
                if self._epochs_between(self._keyframe_at, at) >= spacing:
                    self._keep(at, state)
                    self._keyframe_at = at
        self._frontier_at = at

    def _keep(self, at: int, state: ConsoleState) -> None:
        """Keep a copy of ``state`` (at ``at``) as a keyframe, its log left out (rebuilt from
        the file: ``_log_before``), then thin the keyframes out to ``max_keyframes``."""
        if at in self._keyframes:
            return
        self._keyframes[at] = state.keyframe()
        while len(self._keyframes) > self.max_keyframes + 1:  # + the empty state at 0
            self._drop_one()

    def _drop_one(self) -> None:
        """Drop the keyframe whose neighbours are closest together for its distance from the
        cursor: keyframes stay dense where the operator is and thin out with distance."""
        positions = sorted(self._keyframes)
        cursor = self.cursor
        worst, worst_score = None, math.inf
        for k in range(1, len(positions) - 1):
            p = positions[k]
            if p == self._keyframe_at:
                continue  # the frontier's, for its next spacing
            score = (positions[k + 1] - positions[k - 1]) / (1 + abs(p - cursor))
            if score < worst_score:
                worst, worst_score = p, score
        if worst is None:
            worst = positions[-1]
        del self._keyframes[worst]

    def _log_before(self, index: int) -> list[LogEntry]:
        """The event log of the state at ``index``: the last ``LOG_SIZE`` events before it that
        made an entry, read back from the recording."""
        end = bisect_left(self._log_positions, index)
        positions = self._log_positions[max(0, end - LOG_SIZE) : end]
        events = self.events.take(positions)
        entries: list[LogEntry] = []
        for position, event in zip(positions, events, strict=True):
            previous = None
            if type(event) is RunResumed and position:
                previous = self.events[position - 1].wall_time
            entries.append(log_entry(event, previous))
        return entries

    def _stops_between(self, start: int, stop: int) -> array[int]:
        """Epoch stops in (start, stop]."""
        return self._stops[bisect_right(self._stops, start) : bisect_right(self._stops, stop)]

    def _epochs_between(self, start: int, stop: int) -> int:
        return bisect_right(self._stops, stop) - bisect_right(self._stops, start)

    # --- internals ------------------------------------------------------------------------------

    def _advance(self, recorded_seconds: float) -> None:
        """Release the events whose recorded time has come, compressing long silences."""
        events, n = self.events, len(self.events)
        if self.cursor >= n:
            if not self.follow:
                self.playing = False
            return
        if math.isinf(recorded_seconds):  # as fast as possible: an epoch per tick
            i = bisect_right(self._stops, self.cursor)
            self.cursor = self._stops[i] if i < len(self._stops) else n
            self._replay_time = self._wall_before(self.cursor)
            return
        self._replay_time += recorded_seconds
        gap = events[self.cursor].wall_time - self._replay_time
        if gap > MAX_IDLE_S:
            self._replay_time += gap - MAX_IDLE_S
        cursor = self.cursor
        while cursor < n and events[cursor].wall_time <= self._replay_time:
            cursor += 1
        self.cursor = cursor

    def _wall_before(self, index: int) -> float:
        if not len(self.events):
            return 0.0
        return self.events[max(index - 1, 0)].wall_time

    def _take_new_events(self) -> None:
        """Follow mode: append what the writer added; stay at the live end if we were there."""
        store = self.events
        if not isinstance(store, _EventFile) or not store.following:
            return
        was_at_end = self.at_end
        try:
            added = store.update(self._index_epochs)
        except RecordingError as exc:  # the writer produced garbage: keep what we have
            self.warning = f"stopped following: {exc}"
            store.stop_following()
            return
        if added and was_at_end and self.playing:
            self.cursor = len(store)
            self._replay_time = self._wall_before(self.cursor)

    def _index_epochs(self, events: list[Event], start: int) -> None:
        """Epoch stops (the position just after the last EpochSummary of each (episode, epoch))
        and incidents of ``events``, which begin at position ``start``."""
        reordered = False
        for i, event in enumerate(events, start + 1):
            if type(event) is EpochSummary:
                key = _epoch_key(event.episode, event.epoch)
                old = self._epoch_last.get(key)
                self._epoch_last[key] = i
                if old is not None and old != i:
                    reordered = True  # a resumed run summarised the epoch again
                elif self._stops and self._stops[-1] == i:
                    continue
                else:
                    self._stops.append(i)
            elif isinstance(event, INCIDENTS):
                self._incidents.append(i)
            elif type(event) is OperatorNote:
                self._notes.append(i)
        if reordered:
            self._stops = array("q", sorted(set(self._epoch_last.values())))


def _epoch_key(episode: int, epoch: int) -> int:
    return episode * (MAX_EPOCHS + 1) + epoch


class AttachSource:
    """A run in another process: its recording from the start (history, then live) for the
    screen, and its control socket for the operator's commands.

    ``stop`` only detaches: the run goes on. Stopping the run is ``send(Stop())``.
    """

    capabilities = Capabilities(controls=True, replay_controls=False, live=True, attached=True)
    dropped = 0  # the recording never drops
    plan = None  # the recording's RunStarted lays the panels out

    def __init__(
        self,
        record_path: str | os.PathLike[str] | Path,
        socket_path: str,
        console: str,
        *,
        read_only: bool = False,
    ):
        from esper_engine.control import ControlClient

        self.record_path = record_path
        self.console = console
        self.warning: str | None = None
        self._follower: RecordingFollower | None = RecordingFollower(record_path)
        # Read-only (attach --read-only): no client at all, so nothing can reach the socket.
        self._client = None if read_only else ControlClient(socket_path, console)
        if read_only:
            self.capabilities = Capabilities(
                controls=False, replay_controls=False, live=True, attached=True
            )
        self._finished: RunFinished | None = None

    @property
    def finished(self) -> RunFinished | None:
        return self._finished

    def start(self) -> None:
        pass  # the run is already going

    def poll(self) -> Polled:
        if self._follower is None:
            return Polled([])
        try:
            events = self._follower.poll()
        except RecordingError as exc:
            self.warning = f"stopped following: {exc}"
            self.stop()
            return Polled([])
        for event in events:
            if type(event) is RunFinished:
                self._finished = event
        return Polled(events)

    def send(self, command: OperatorCommand) -> int | None:
        """Send over the socket; None (and a warning) when the run cannot be reached."""
        from esper_engine.control import ControlError

        if self._client is None:
            return None  # read-only: the app says so
        try:
            return self._client.send(command)
        except ControlError as exc:
            self.warning = str(exc)
            return None

    def stop(self, timeout: float | None = None) -> bool:
        """Detach: stop following the recording; the run goes on."""
        if self._follower is not None:
            self._follower.close()
            self._follower = None
        return True

    def position(self) -> ReplayPosition | None:
        return None

    def replay(self, action: ReplayAction) -> None:
        raise TypeError("an attached run has no playback controls")

    def seek_epoch(self, episode: int, epoch: int) -> bool:
        raise TypeError("an attached run has no playback controls")
