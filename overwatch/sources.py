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
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from esper_engine.contracts import (
    EpochSummary,
    Event,
    GovernorPanic,
    GovernorRollback,
    OperatorCommand,
    RunFinished,
    RunStarted,
    RunStatus,
)
from esper_engine.recording import RecordingError, RecordingFollower, read_recording
from overwatch.state import RunPlan

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
    """One poll's events; ``reset`` means: drop the current state and rebuild from ``events``."""

    events: list[Event]
    reset: bool = False


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


class ReplaySource:
    """A recording played back read-only: play/pause, step by epoch, speed, jump to either end.

    The source keeps a cursor (how many events the console should have applied) and remembers
    how many it has handed out; moving the cursor backwards makes the next poll a ``reset`` that
    rebuilds the state from the start (the reducer is fast enough for that).
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
        follower = RecordingFollower(path) if follow else None
        if follower is not None:
            events = follower.poll()  # a file not created yet has no events yet
            self.warning = None if os.path.exists(path) else f"waiting for {path} to be created…"
        else:
            reader = read_recording(path)
            events, self.warning = list(reader), reader.warning
        self._setup(events, speed, clock, follower)

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
        source._setup(list(events), speed, clock, None)
        return source

    def _setup(
        self,
        events: list[Event],
        speed: float,
        clock: Callable[[], float],
        follower: RecordingFollower | None,
    ) -> None:
        if speed not in SPEEDS:
            speed = min(SPEEDS, key=lambda s: abs(s - speed))
        self.events = events
        self.speed = speed
        self.follow = follower is not None
        self.capabilities = Capabilities(controls=False, replay_controls=True, live=self.follow)
        self._follower = follower
        self._clock = clock
        self._stops: list[int] = []
        self._epoch_last: dict[tuple[int, int], int] = {}
        self._incidents: list[int] = []  # positions just after each governor panic or rollback
        self._index_epochs(0)
        self.playing = True
        self.cursor = len(events) if self.follow else self.start_index
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
        if self._follower is not None:
            self._take_new_events()
        if self.playing:
            self._advance(math.inf if math.isinf(self.speed) else elapsed * self.speed)
        if self.cursor < self._applied:
            self._applied = self.cursor
            return Polled(self.events[: self.cursor], reset=True)
        batch = self.events[self._applied : self.cursor]
        self._applied = self.cursor
        return Polled(batch)

    def send(self, command: OperatorCommand) -> int | None:
        return None  # a recording cannot be steered

    def stop(self, timeout: float | None = None) -> bool:
        if self._follower is not None:
            self._follower.close()
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
        }[action]()

    def seek_epoch(self, episode: int, epoch: int) -> bool:
        """Pause at the end of (episode, epoch); False (and no move) when there is none."""
        stop = self._epoch_last.get((episode, epoch))
        if stop is None:
            return False
        self.playing = False
        self.seek(stop)
        return True

    # --- playback controls ----------------------------------------------------------------------

    @property
    def start_index(self) -> int:
        """Where "home" lands: just after RunStarted, so the header is never blank."""
        return 1 if self.events and type(self.events[0]) is RunStarted else 0

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
        self.seek(next((s for s in self._stops if s > self.cursor), len(self.events)))

    def step_back(self) -> None:
        """Pause and show the end of the previous epoch."""
        self.playing = False
        earlier = [s for s in self._stops if s < self.cursor]
        self.seek(earlier[-1] if earlier else self.start_index)

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
        later = [i for i in self._incidents if i > self.cursor]
        self.playing = False
        if later:
            self.seek(later[0])

    def previous_incident(self) -> None:
        earlier = [i for i in self._incidents if i < self.cursor]
        self.playing = False
        if earlier:
            self.seek(earlier[-1])

    def seek(self, index: int) -> None:
        """Move the cursor; playback time continues from the last event shown."""
        self.cursor = max(0, min(index, len(self.events)))
        self._replay_time = self._wall_before(self.cursor)

    # --- internals ------------------------------------------------------------------------------

    def _advance(self, recorded_seconds: float) -> None:
        """Release the events whose recorded time has come, compressing long silences."""
        events, n = self.events, len(self.events)
        if self.cursor >= n:
            if not self.follow:
                self.playing = False
            return
        if math.isinf(recorded_seconds):  # as fast as possible: an epoch per tick
            self.cursor = next((s for s in self._stops if s > self.cursor), n)
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
        if not self.events:
            return 0.0
        return self.events[max(index - 1, 0)].wall_time

    def _take_new_events(self) -> None:
        """Follow mode: append what the writer added; stay at the live end if we were there."""
        try:
            new = self._follower.poll() if self._follower is not None else []
        except RecordingError as exc:  # the writer produced garbage: keep what we have
            self.warning = f"stopped following: {exc}"
            self._follower.close()
            self._follower = None
            return
        if not new:
            return
        was_at_end = self.at_end
        start = len(self.events)
        self.events.extend(new)
        self._index_epochs(start)
        if was_at_end and self.playing:
            self.cursor = len(self.events)
            self._replay_time = self._wall_before(self.cursor)

    def _index_epochs(self, start: int) -> None:
        """Epoch stops: the position just after the last EpochSummary of each (episode, epoch)."""
        for i in range(start, len(self.events)):
            event = self.events[i]
            if type(event) is EpochSummary:
                self._epoch_last[(event.episode, event.epoch)] = i + 1
            elif isinstance(event, INCIDENTS):
                self._incidents.append(i + 1)
        self._stops = sorted(set(self._epoch_last.values()))


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
