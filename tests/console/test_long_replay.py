"""Long runs stay cheap (issue 25, item 8): replay seeks from keyframes of the console state,
which equal a replay from the start; the recording is indexed, not held; `ps` reads the ends.

The long recordings are the real engine's (``fixtures/real_run.msgpack``) repeated with its
episodes and wall times moved on (``bench/_long_runs.long_run_events``).
"""

from __future__ import annotations

import gc
import shutil
import sys
import tracemalloc
from pathlib import Path
from types import FunctionType, MethodType, ModuleType

import pytest

import esper_engine.recording
import esper_engine.recording_index
import overwatch.sources
from esper_engine.contracts import EpochSummary, Event, GovernorRollback, RunFinished
from esper_engine.recording import Recorder, read_recording
from overwatch.app import OverwatchApp
from overwatch.runs import RunState, list_runs
from overwatch.sources import KEYFRAME_EPOCHS, MAX_KEYFRAMES, ReplayAction, ReplaySource
from overwatch.state import reduce_many
from tests.console.fixtures import REAL_RUN, real_events, run_async
from tests.console.state_compare import canonical, polled_state, replayed
from tests.console.test_real_recording import screen

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _long_runs import long_run_events  # noqa: E402

N_EVENTS = 12_000  # ~600 epochs: past what MAX_KEYFRAMES keyframes cover, so they thin out


def write(path: Path, events: list[Event]) -> Path:
    with Recorder(path) as recorder:
        for event in events:
            recorder.emit(event)
    return path


@pytest.fixture(scope="module")
def long_events() -> list[Event]:
    return long_run_events(real_events(), N_EVENTS)


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory: pytest.TempPathFactory, long_events: list[Event]) -> Path:
    return write(tmp_path_factory.mktemp("long") / "long.msgpack", long_events)


def test_every_seek_gives_the_state_a_replay_from_the_start_gives(
    long_recording: Path, long_events: list[Event]
) -> None:
    source = ReplaySource(long_recording, clock=lambda: 0.0)
    assert source.playing
    source.toggle_play()
    state = polled_state(source.poll())
    moves = [
        *[ReplayAction.STEP_FORWARD] * 30,  # played by steps: the console reduces the events
        ReplayAction.END,  # a jump: the state comes from the source
        *[ReplayAction.STEP_BACK] * 12,
        ReplayAction.PREVIOUS_INCIDENT,
        *[ReplayAction.STEP_FORWARD] * 3,
        ReplayAction.HOME,
        ReplayAction.NEXT_INCIDENT,
        *[ReplayAction.STEP_BACK] * 2,
    ]
    checked = 0
    for n, action in enumerate(moves):
        source.replay(action)
        state = polled_state(source.poll(), state)
        assert len(source._keyframes) <= MAX_KEYFRAMES + 1
        if n % 3 == 0 or action is not ReplayAction.STEP_FORWARD:
            assert canonical(state) == replayed(long_events[: source.cursor]), (n, action)
            checked += 1
    for episode, epoch in ((3, 2), (60, 7), (30, 0), (74, 5)):
        assert source.seek_epoch(episode, epoch)
        state = polled_state(source.poll(), state)
        assert type(long_events[source.cursor - 1]) is EpochSummary
        assert canonical(state) == replayed(long_events[: source.cursor])
    assert checked > 10
    assert len(source._keyframes) == MAX_KEYFRAMES + 1  # thinned out, never more


def test_a_step_back_rebuilds_at_most_keyframe_epochs(
    long_recording: Path, long_events: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind where the operator has played, keyframes are dense: each step back reduces at
    most KEYFRAME_EPOCHS epochs of events. After a far jump, the first step into a stretch
    that thinning left sparse rebuilds it once (laying keyframes), the next ones are cheap."""
    source = ReplaySource(long_recording, clock=lambda: 0.0)
    reduced: list[int] = []
    real_reduce_many = overwatch.sources.reduce_many

    def counting(state, events):
        events = list(events)
        reduced.append(len(events))
        return real_reduce_many(state, events)

    monkeypatch.setattr(overwatch.sources, "reduce_many", counting)
    stops = list(source._stops)
    widest = max(b - a for a, b in zip(stops, stops[KEYFRAME_EPOCHS + 1 :], strict=False))
    source.end()
    source.poll()
    for _ in range(KEYFRAME_EPOCHS * 3):
        reduced.clear()
        source.step_back()
        polled = source.poll()
        assert polled.reset and not polled.events
        assert sum(reduced) <= widest, sum(reduced)  # K + 1 epochs at most
    for start in (len(long_events) // 2, len(long_events) // 5):
        source.seek(start)
        source.poll()
        positions = sorted(source._keyframes)
        gap = max(b - a for a, b in zip(positions, positions[1:], strict=False))
        steps = []
        for _ in range(KEYFRAME_EPOCHS * 3):
            reduced.clear()
            source.step_back()
            source.poll()
            steps.append(sum(reduced))
        assert sum(steps) <= len(steps) * widest + gap, steps
        assert sorted(steps)[len(steps) // 2] <= widest, steps


def held_bytes(root: object) -> int:
    """Bytes of the objects reachable from ``root`` (sys.getsizeof each, once)."""
    seen: set[int] = set()
    stack, total = [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, ModuleType, FunctionType, MethodType)):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def replay_memory(path: Path) -> tuple[int, int]:
    """(bytes a replay source holds once it has been to the end and stepped back 20 epochs,
    bytes of its index: frame offsets, epoch stops, incidents, log positions)."""
    source = ReplaySource(path, clock=lambda: 0.0)
    source.end()
    source.poll()
    for _ in range(20):
        source.step_back()
        source.poll()
    index = [source.events._offsets, source.events._firsts, source._stops, source._incidents]
    index += [source._log_positions, source._epoch_last]
    held = held_bytes(source)
    source.stop()
    return held, sum(held_bytes(part) for part in index)


def test_memory_stays_bounded_as_the_recording_grows(
    tmp_path: Path, long_recording: Path, long_events: list[Event]
) -> None:
    """Four times the events, not four times the memory: events are read from the file as
    needed and keyframes are capped; what grows is the index, a few bytes per frame, epoch and
    logged event."""
    longer = write(tmp_path / "longer.msgpack", long_run_events(real_events(), 4 * N_EVENTS))
    (small, small_index), (big, big_index) = replay_memory(long_recording), replay_memory(longer)
    assert big - big_index < 1.6 * (small - small_index), (small, big)
    assert big_index < 4.2 * small_index and big_index < 16 * 4 * N_EVENTS  # bytes per event
    tracemalloc.start()
    try:
        held = read_recording(longer).events  # what holding the decoded events would take
        decoded = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(held) == 4 * N_EVENTS and big < decoded / 4, (big, decoded)


class KeyTimes:
    """A key clock a second further on at each look: every key is a key, never a burst."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@run_async
async def test_the_screen_after_stepping_back_is_the_screen_of_a_replay_to_there(
    long_recording: Path, long_events: list[Event]
) -> None:
    back = ReplaySource(long_recording, clock=lambda: 0.0)
    stops = list(back._stops)
    app = OverwatchApp(back, clock=lambda: 0.0, key_clock=KeyTimes())
    steps = KEYFRAME_EPOCHS + 3
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("end")
        await pilot.pause()
        assert back.at_end
        for n in range(steps):
            await pilot.press("comma")
            await app.key_settler.settle()
            await pilot.pause()
            assert back.cursor == stops[-1 - n - (stops[-1] == len(long_events))]
        seen = screen(app)
        cursor = back.cursor
        assert canonical(app.state) == replayed(long_events[:cursor])
    direct = ReplaySource(long_recording, clock=lambda: 0.0)
    direct.playing = False
    direct.seek(cursor)  # straight there: the state reduced from the start
    fresh = OverwatchApp(direct, clock=lambda: 0.0)
    async with fresh.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert screen(fresh) == seen
    last = long_events[cursor - 1]
    header = f"episode {last.episode + 1}/{long_events[0].episodes} · epoch {last.epoch + 1}/"
    assert header in seen[1]  # the header counts from 1


def test_ps_reads_the_ends_of_long_recordings(
    tmp_path: Path, long_events: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "done.msgpack", long_events)
    crashed = write(tmp_path / "crashed.msgpack", long_events[:-1]).read_bytes()
    (tmp_path / "crashed.msgpack").write_bytes(crashed[:-5])  # its last frame torn
    cut = read_recording(tmp_path / "crashed.msgpack").events

    def whole_read(path):
        raise AssertionError(f"ps decoded all of {path}")

    monkeypatch.setattr(esper_engine.recording, "read_recording", whole_read)
    monkeypatch.setattr(esper_engine.recording_index, "read_recording", whole_read)
    runs = {run.path.name: run for run in list_runs(tmp_path)}
    done, killed = runs["done.msgpack"], runs["crashed.msgpack"]
    last = [e for e in long_events if type(e) is EpochSummary][-1]
    assert (done.state, done.episode, done.epoch) == (
        RunState.COMPLETED,
        last.episode + 1,
        last.epoch + 1,
    )
    assert type(long_events[-1]) is RunFinished and done.episodes == long_events[0].episodes
    last_cut = [e for e in cut if type(e) is EpochSummary][-1]
    assert (killed.state, killed.episode, killed.epoch) == (
        RunState.CRASHED,
        last_cut.episode + 1,
        last_cut.epoch + 1,
    )
    assert any(type(e) is GovernorRollback for e in long_events)  # every kind of event in it


def test_short_real_recordings_replay_as_before(tmp_path: Path) -> None:
    events = real_events(REAL_RUN)
    source = ReplaySource(write(tmp_path / "r.msgpack", events), clock=lambda: 0.0)
    source.end()
    state = polled_state(source.poll())
    assert canonical(state) == canonical(reduce_many(type(state)(), events))


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_a_long_replay_steps_back_in_a_real_terminal_at_80x24(
    long_recording: Path, long_events: list[Event]
) -> None:
    from tests.console.test_tmux_e2e import Console

    total = len(long_events)
    stops = list(ReplaySource.from_events(long_events)._stops)
    console = Console(str(long_recording), (80, 24))
    try:
        console.wait_for("event ")
        console.keys("End")
        console.wait_for(f"event {total:,}/{total:,}")
        cursor = total
        for _ in range(3):  # one key at a time: a burst would be text for another window
            console.keys(",")
            cursor = max(s for s in stops if s < cursor)
            console.wait_for(f"event {cursor:,}/{total:,}")
        last = long_events[cursor - 1]
        screen = console.screen()
        assert f"epoch {last.epoch + 1}/" in screen.splitlines()[1], screen
    finally:
        console.close()
