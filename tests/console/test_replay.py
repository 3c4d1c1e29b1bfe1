"""Replay: a recording written by the Recorder, played back with a fake clock and by keys."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest

from esper_engine.contracts import (
    EpochSummary,
    Event,
    GovernorPanic,
    GovernorRollback,
    RunStarted,
    encode,
)
from esper_engine.recording import Recorder, RecordingError
from overwatch.app import OverwatchApp
from overwatch.sources import MAX_IDLE_S, SPEEDS, ReplaySource
from overwatch.state import ConsoleState, reduce_many
from overwatch.widgets.replay_bar import ReplayBar
from tests.console.fixtures import epoch_stops, real_events, run_async
from tests.console.state_compare import canonical, polled_state, replayed


class FakeClock:
    """Monotonic time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def same(read: list[Event], written: list[Event]) -> bool:
    """Events read back equal those written (compared encoded: a real run has NaN losses)."""
    return [encode(e) for e in read] == [encode(e) for e in written]


def write_recording(path: Path, events: list[Event]) -> Path:
    path.unlink(missing_ok=True)  # rewritten on purpose: a Recorder never overwrites
    with Recorder(path) as recorder:
        for event in events:
            recorder.emit(event)
    return path


@pytest.fixture
def events() -> list[Event]:
    return real_events()


@pytest.fixture
def recording(tmp_path: Path, events: list[Event]) -> Path:
    return write_recording(tmp_path / "run.msgpack", events)


def test_opens_a_recording_at_the_start_and_plays(recording: Path, events: list[Event]) -> None:
    clock = FakeClock()
    source = ReplaySource(recording, clock=clock)
    source.start()
    assert same(list(source.events), events)
    first = source.poll()
    assert first.events == events[:1] and not first.reset  # RunStarted: the header is never blank
    assert type(first.events[0]) is RunStarted
    position = source.position()
    assert (position.index, position.total, position.playing, position.speed) == (
        1,
        len(events),
        True,
        1.0,
    )


@pytest.mark.parametrize("speed", [1.0, 2.0, 0.25])
def test_events_are_released_by_recorded_time_times_speed(
    recording: Path, events: list[Event], speed: float
) -> None:
    clock = FakeClock()
    source = ReplaySource(recording, speed=speed, clock=clock)
    source.start()
    source.poll()
    # Recorded time up to halfway between the 5th and 6th events after RunStarted.
    recorded = (events[5].wall_time + events[6].wall_time) / 2 - events[0].wall_time
    clock.now += recorded / speed
    released = source.poll().events
    horizon = events[0].wall_time + recorded
    expected = [e for e in events[1:] if e.wall_time <= horizon]
    assert released == expected and released


def test_long_recorded_silences_are_shortened(events: list[Event]) -> None:
    late = [msgspec.structs.replace(e, wall_time=e.wall_time + 600.0) for e in events[1:]]
    clock = FakeClock()
    source = ReplaySource.from_events([events[0], *late], clock=clock)
    source.start()
    source.poll()
    clock.now += MAX_IDLE_S + 0.01
    assert source.poll().events[:1] == late[:1]


def test_step_forward_and_back_by_epoch(events: list[Event]) -> None:
    stops = epoch_stops(events)
    source = ReplaySource.from_events(events, clock=FakeClock())
    source.poll()
    source.step_forward()
    assert not source.playing
    polled = source.poll()
    assert source.cursor == stops[0] and polled.events == events[1 : stops[0]]
    source.step_forward()
    source.poll()
    assert source.cursor == stops[1]
    source.step_back()
    polled = source.poll()
    # The state at the end of the first epoch, as a replay from the start builds it.
    assert polled.reset and canonical(polled_state(polled)) == replayed(events[: stops[0]])
    source.step_back()  # before the first epoch: back to the start
    assert source.cursor == 1


def test_speed_doubles_and_halves_within_bounds(events: list[Event]) -> None:
    source = ReplaySource.from_events(events, clock=FakeClock())
    for expected in SPEEDS[3:]:
        source.faster()
        assert source.speed == expected
    source.faster()
    assert source.speed == SPEEDS[-1] == math.inf  # "max": as fast as possible
    assert SPEEDS[-2] == 64.0
    for _ in range(20):
        source.slower()
    assert source.speed == SPEEDS[0] == 0.25


def test_home_and_end(events: list[Event]) -> None:
    source = ReplaySource.from_events(events, clock=FakeClock())
    source.poll()
    source.end()
    polled = source.poll()
    assert source.at_end and not source.playing and len(polled.events) == len(events) - 1
    source.home()
    polled = source.poll()
    assert polled.reset and canonical(polled_state(polled)) == replayed(events[:1])
    source.toggle_play()  # paused at the start: plays
    assert source.playing


def test_max_speed_shows_an_epoch_per_tick(events: list[Event]) -> None:
    stops = epoch_stops(events)
    clock = FakeClock()
    source = ReplaySource.from_events(events, speed=math.inf, clock=clock)
    source.start()
    assert source.speed == math.inf
    for stop in stops[:3]:
        source.poll()  # no time has to pass: no pacing at all
        assert source.cursor == stop
    assert source.position().speed == math.inf


def test_next_and_previous_incident(events: list[Event]) -> None:
    incidents = [
        i + 1 for i, e in enumerate(events) if isinstance(e, (GovernorPanic, GovernorRollback))
    ]
    assert len(incidents) >= 3  # the real run's panic, its rollback and the operator's
    source = ReplaySource.from_events(events, clock=FakeClock())
    for position in incidents:
        source.next_incident()
        assert source.cursor == position and not source.playing
    source.next_incident()  # none after the last: stays
    assert source.cursor == incidents[-1]
    source.previous_incident()
    assert source.cursor == incidents[-2]


def test_seek_epoch_lands_after_its_last_summary(events: list[Event]) -> None:
    source = ReplaySource.from_events(events, clock=FakeClock())
    assert source.seek_epoch(1, 2)
    last = events[source.cursor - 1]
    assert isinstance(last, EpochSummary) and (last.episode, last.epoch) == (1, 2)
    assert not source.playing
    assert not source.seek_epoch(9, 0)  # no such epoch: no move
    assert events[source.cursor - 1] is last


def test_end_in_follow_mode_follows_again(tmp_path: Path, events: list[Event]) -> None:
    first, second, third = epoch_stops(events)[:3]  # the recorder flushes after summaries
    recorder = Recorder(tmp_path / "live.msgpack")
    for event in events[:second]:
        recorder.emit(event)
    source = ReplaySource(tmp_path / "live.msgpack", follow=True, clock=FakeClock())
    source.step_back()  # the operator looks back: paused, behind the live end
    assert not source.playing and source.cursor == first
    source.end()
    assert source.playing and source.at_end
    for event in events[second:third]:
        recorder.emit(event)
    source.poll()
    assert source.cursor == third  # following again: the new events are on screen
    recorder.close()
    source.stop()


def test_follow_waits_for_a_recording_not_created_yet(tmp_path: Path, events: list[Event]) -> None:
    path = tmp_path / "later.msgpack"
    source = ReplaySource(path, follow=True, clock=FakeClock())
    assert list(source.events) == [] and "waiting for" in (source.warning or "")
    assert source.poll().events == []
    recorder = Recorder(path)
    first = epoch_stops(events)[0]
    for event in events[:first]:
        recorder.emit(event)
    assert same(source.poll().events, events[:first])
    recorder.close()
    source.stop()


def test_play_at_the_end_starts_over(events: list[Event]) -> None:
    source = ReplaySource.from_events(events, clock=FakeClock())
    source.end()
    source.toggle_play()
    assert source.playing and source.cursor == 1


def test_follow_mode_picks_up_appended_events(tmp_path: Path, events: list[Event]) -> None:
    first, second = epoch_stops(events)[:2]  # the recorder flushes after epoch summaries
    path = tmp_path / "live.msgpack"
    recorder = Recorder(path)
    for event in events[:first]:
        recorder.emit(event)
    source = ReplaySource(path, follow=True, clock=FakeClock())
    assert source.capabilities.live and not source.capabilities.controls
    assert same(source.poll().events, events[:first])  # follow starts at the live end
    for event in events[first:second]:
        recorder.emit(event)
    assert same(source.poll().events, events[first:second])
    recorder.close()
    source.stop()


def test_truncated_recording_replays_what_it_has(recording: Path, events: list[Event]) -> None:
    # kill -9 while RunFinished was being written: every event before it, then a cut-off frame.
    write_recording(recording, events[:-1])
    recording.write_bytes(recording.read_bytes() + b"\x00\x00\x00\x40\x91\x84")
    source = ReplaySource(recording)
    assert source.warning and "truncated" in source.warning
    assert same(list(source.events), events[:-1])


def test_garbage_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.msgpack"
    path.write_bytes(b"not a recording at all")
    with pytest.raises(RecordingError, match="not an Overwatch recording"):
        ReplaySource(path)


# --- the same through the console's keys ----------------------------------------------------------


def replay_app(recording: Path) -> tuple[OverwatchApp, ReplaySource, FakeClock]:
    clock = FakeClock()
    source = ReplaySource(recording, clock=clock)
    return OverwatchApp(source, clock=lambda: 0.0), source, clock


@run_async
async def test_keys_drive_the_replay(recording: Path, events: list[Event]) -> None:
    stops = epoch_stops(events)
    app, source, _ = replay_app(recording)
    async with app.run_test(size=(120, 40)) as pilot:
        assert source.playing
        await pilot.press("space")
        assert not source.playing
        await pilot.press("full_stop")
        assert source.cursor == stops[0]
        await pilot.press("full_stop", "full_stop")
        assert source.cursor == stops[2]
        assert app.state.events_seen == stops[2]
        await pilot.press("comma")
        assert source.cursor == stops[1]
        # stepping back rebuilt the state from the start: same as reducing the prefix once
        assert app.state == reduce_many(ConsoleState(), events[: stops[1]])
        await pilot.press("greater_than_sign", "greater_than_sign")
        assert source.speed == 4.0
        await pilot.press("less_than_sign")
        assert source.speed == 2.0
        await pilot.press("end")
        assert source.at_end and app.state.finished_status == "completed"
        await pilot.press("N")  # back to the last governor incident
        assert isinstance(events[source.cursor - 1], (GovernorPanic, GovernorRollback))
        await pilot.press("j")
        await pilot.press(*"1:3", "enter")  # go to episode 1, epoch 3 (as on screen)
        assert source.cursor == stops[2]
        await pilot.press("j", *"99", "enter")  # no such epoch: a toast says so, no move
        assert source.cursor == stops[2]
        await pilot.press("home")
        assert source.cursor == 1 and app.state.envs[0].summary is None
        await pilot.pause()
        bar = app.query_one(ReplayBar)
        assert bar.position == source.position()
        assert f"event 1/{len(events)}" in str(bar.render())


@run_async
async def test_playback_advances_with_the_clock(recording: Path, events: list[Event]) -> None:
    app, source, clock = replay_app(recording)
    async with app.run_test(size=(120, 40)):
        clock.now += 1.0
        await app.tick()
        horizon = events[0].wall_time + 1.0
        assert app.state.events_seen == sum(1 for e in events if e.wall_time <= horizon)


@run_async
async def test_a_truncated_recording_is_announced(recording: Path, events: list[Event]) -> None:
    write_recording(recording, events[:-1])  # and RunFinished's frame cut off by a kill -9
    recording.write_bytes(recording.read_bytes() + b"\x00\x00\x00\x40\x91\x84")
    app, source, _ = replay_app(recording)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert [n.message for n in app._notifications] == [source.warning]
        await pilot.press("end")
        assert app.state.events_seen == len(events) - 1
