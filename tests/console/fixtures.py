"""The console's test data: recordings of the real engine, and a fake live source to feed them.

``fixtures/real_run.msgpack`` and ``fixtures/real_run_lm.msgpack`` are small deterministic runs of
the real trainer, made by ``scripts/make_fixture.py`` (which says what is in them: seeds through
every stage with Shapley values, a governor rollback, a gate prune, an operator's commands and
their acks; a language model under PPO). Every screen test renders them, so the console is
tested on what the engine really emits. Hand-made events remain only for what the engine cannot
be made to emit on cue, built with its own constructors and units: a crash with a particular
error text (``crashed_run``).

Episodes and epochs count from 0, as the trainer numbers them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from esper_engine.contracts import EpochSummary, Event, RunFinished, RunStarted, RunStatus
from esper_engine.recording import read_recording
from overwatch.app import OverwatchApp
from overwatch.sources import Capabilities, Polled, ReplayAction, ReplaySource
from overwatch.state import RunPlan

FIXTURES = Path(__file__).parent / "fixtures"
REAL_RUN = FIXTURES / "real_run.msgpack"  # synthetic images, 4 envs x 2 episodes x 8 epochs
REAL_RUN_LM = FIXTURES / "real_run_lm.msgpack"  # a language model, 2 envs x 2 episodes x 4 epochs
# 32 envs x 1 episode x 3 epochs of 2 batches, heuristic policy: the many-envs screens. Recorded
# by the real engine with `overwatch run --headless --n-envs 32 --episodes 1 --epochs 3
# --batches-per-epoch 2 --seed 7 --record tests/console/fixtures/real_run_32.msgpack`.
REAL_RUN_32 = FIXTURES / "real_run_32.msgpack"
# Issue 25 (resources, plots): recorded by the real engine with ResourceSample events, seed 0.
# 1 env x 2 episodes x 8 epochs of 10 batches with `--fault diverge:1:7`: two validation losses
# near 4e5 and 4e4 among losses near 2 (the plot's outlier case), a governor rollback, seeds.
# `overwatch run --headless --n-envs 1 --episodes 2 --epochs 8 --batches-per-epoch 10
# --fault diverge:1:7 --record tests/console/fixtures/real_run_outlier.msgpack`
REAL_RUN_OUTLIER = FIXTURES / "real_run_outlier.msgpack"
# 2 ranks (`--nprocs 2`), 2 envs x 1 episode x 3 epochs of 30 batches: each rank's samples.
# `overwatch run --headless --nprocs 2 --n-envs 2 --episodes 1 --epochs 3
# --batches-per-epoch 30 --record tests/console/fixtures/real_run_sharded.msgpack`
REAL_RUN_SHARDED = FIXTURES / "real_run_sharded.msgpack"
CRASH_ERROR = "RuntimeError: CUDA out of memory while allocating 2.00 GiB (env 2, epoch 3)"


@functools.cache
def _recorded(path: Path) -> tuple[Event, ...]:
    return tuple(read_recording(path).events)


def real_events(path: Path = REAL_RUN) -> list[Event]:
    """Every event of a recording of the real engine, RunStarted to RunFinished."""
    return list(_recorded(path))


def run_started(events: list[Event]) -> RunStarted:
    first = events[0]
    assert isinstance(first, RunStarted), f"a recording starts with RunStarted, not {first}"
    return first


def epoch_stops(events: list[Event]) -> list[int]:
    """Positions just after the last EpochSummary of each (episode, epoch): where replay steps."""
    last: dict[tuple[int, int], int] = {}
    for i, event in enumerate(events):
        if type(event) is EpochSummary:
            last[(event.episode, event.epoch)] = i + 1
    return sorted(last.values())


def running(path: Path = REAL_RUN, epochs: int | None = None) -> list[Event]:
    """The recorded run as a console sees it while the trainer is still going: everything but
    RunFinished, or only its first ``epochs`` epochs."""
    events = real_events(path)
    if epochs is None:
        return events[:-1]
    return events[: epoch_stops(events)[epochs - 1]]


def crashed_run(epochs: int = 3) -> list[Event]:
    """The first ``epochs`` epochs of the real run, then a crash with a known error text (the
    engine's own crash path is tested in test_app with ``--fault crash``)."""
    events = running(epochs=epochs)
    last = events[-1]
    crash = RunFinished(
        run_id=last.run_id,
        episode=last.episode,
        epoch=last.epoch,
        wall_time=last.wall_time + 0.5,
        status=RunStatus.CRASHED,
        error=CRASH_ERROR,
    )
    return [*events, crash]


def repeated_run(times: int) -> list[Event]:
    """The real run's episodes over and over, renumbered, wall times moving on: a long run for
    the bounds of the state (history lengths, log size, a 100k-event reduce)."""
    events = real_events()
    started, body, finished = events[0], events[1:-1], events[-1]
    episodes = run_started(events).episodes
    span = finished.wall_time - started.wall_time
    replace = msgspec.structs.replace
    out: list[Event] = [replace(started, episodes=episodes * times)]
    for k in range(times):
        out += [
            replace(e, episode=e.episode + k * episodes, wall_time=e.wall_time + span * k)
            for e in body
        ]
    return [*out, replace(finished, episode=out[-1].episode, wall_time=out[-1].wall_time)]


class FakeLiveSource:
    """A live source without a trainer: hands out queued events, records the commands sent."""

    capabilities = Capabilities(controls=True, replay_controls=False, live=True)
    warning = None
    finished = None

    def __init__(self, events: list[Event], plan: RunPlan | None = None) -> None:
        self.plan = plan
        self.pending = list(events)
        self.sent: list = []
        self.started = False
        self.stopped = False
        self.dropped = 0

    def push(self, *events: Event) -> None:
        self.pending.extend(events)

    def start(self) -> None:
        self.started = True

    def poll(self) -> Polled:
        events, self.pending = self.pending, []
        return Polled(events)

    def send(self, command) -> int:
        self.sent.append(command)
        return len(self.sent)

    def stop(self, timeout: float | None = None) -> bool:
        self.stopped = True
        return True

    def position(self) -> None:
        return None

    def replay(self, action: ReplayAction) -> None:
        raise TypeError("a live run has no playback controls")


# The screens of the snapshot tests and the README's screenshots: the live run after 6 epochs of
# its first episode (seeds fossilized and blending with current and earlier Shapley values, a
# governor rollback, an operator's rollback), and its replay part-way into the second episode.
SCREEN_EPOCHS = 6
REPLAY_EPOCHS = 13


def live_app(events: list[Event] | None = None) -> OverwatchApp:
    """The console on a live run that has shown ``events`` (default: the screens' point), its
    clock frozen just after the last of them (LIVE, never STALE)."""
    events = running(epochs=SCREEN_EPOCHS) if events is None else events
    return OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events))


def replay_app(epochs_in: int = REPLAY_EPOCHS, path: Path = REAL_RUN) -> OverwatchApp:
    """The console replaying a recording, paused at the end of its ``epochs_in``-th epoch."""
    source = ReplaySource.from_events(real_events(path), clock=lambda: 0.0)
    for _ in range(epochs_in):
        source.step_forward()
    return OverwatchApp(source, clock=lambda: 0.0)


def frozen_clock(events: list[Event], after: float = 1.0):
    """A wall clock stopped ``after`` seconds past the last event (LIVE, never STALE)."""
    now = events[-1].wall_time + after
    return lambda: now


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async Pilot test with asyncio.run (no pytest async plugin is installed)."""

    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    # Not functools.wraps: pytest would follow __wrapped__ and see a coroutine function again.
    wrapper.__name__, wrapper.__doc__ = test.__name__, test.__doc__
    wrapper.__signature__ = inspect.signature(test)  # type: ignore[attr-defined]
    return wrapper
