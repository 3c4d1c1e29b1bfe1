"""Reading a recording without decoding all of it: its two ends (`overwatch ps`) and random
access by index (replay), on recordings of the real engine repeated to a long run."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from esper_engine.contracts import EpochSummary, Event, RunFinished, RunStarted, encode
from esper_engine.recording import Recorder, RecordingError, read_recording
from esper_engine.recording_index import TAIL_BYTES, RecordingIndex, read_ends

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _long_runs import long_run_events  # noqa: E402

REAL_RUN = Path(__file__).resolve().parents[1] / "console" / "fixtures" / "real_run.msgpack"


def write(path: Path, events: list[Event]) -> Path:
    with Recorder(path) as recorder:
        for event in events:
            recorder.emit(event)
    return path


@pytest.fixture(scope="module")
def long_events() -> list[Event]:
    return long_run_events(read_recording(REAL_RUN).events, 6_000)


def encoded(events: list[Event]) -> list[bytes]:
    return [encode(e) for e in events]  # compared encoded: a real run has NaN losses


def last_of(events: list[Event], kind: type) -> Event | None:
    return next((e for e in reversed(events) if type(e) is kind), None)


def test_the_ends_of_a_long_recording_are_read_without_the_middle(
    tmp_path: Path, long_events: list[Event]
) -> None:
    path = write(tmp_path / "long.msgpack", long_events)
    assert path.stat().st_size > 20 * TAIL_BYTES
    ends = read_ends(path, (EpochSummary,))
    assert not ends.whole and ends.warning is None
    assert len(ends.tail) < 100  # the last frames only, back to the last summary
    assert encoded(ends.head) == encoded(long_events[:1]) and type(ends.head[0]) is RunStarted
    for kind in (EpochSummary, RunFinished):
        assert encode(ends.last(kind)) == encode(last_of(long_events, kind))
    assert encoded(ends.tail) == encoded(long_events[-len(ends.tail) :])


def test_a_torn_last_frame_is_left_out_wherever_the_cut_falls(
    tmp_path: Path, long_events: list[Event]
) -> None:
    """A crash (kill -9) mid-write cuts the file anywhere in its last frame: the tail is what
    a whole read gives before the cut, with the same warning."""
    whole = write(tmp_path / "whole.msgpack", long_events[:-1]).read_bytes()  # no RunFinished
    rng = random.Random(3)
    cuts = [len(whole) - n for n in (1, 2, 3, 4, 5, 7)] + [
        len(whole) - rng.randrange(8, 3000) for _ in range(25)
    ]
    for cut in cuts:
        path = tmp_path / f"cut{cut}.msgpack"
        path.write_bytes(whole[:cut])
        reader = read_recording(path)
        ends = read_ends(path, (EpochSummary,))
        assert not ends.whole
        assert encode(ends.last(EpochSummary)) == encode(last_of(reader.events, EpochSummary))
        assert encoded(ends.tail) == encoded(reader.events[-len(ends.tail) :])
        assert ends.last(RunFinished) is None
        if reader.warning is None:  # cut at a frame boundary
            assert ends.warning is None
        else:
            assert ends.warning is not None and "last frame truncated at byte" in ends.warning
            assert reader.warning.startswith(ends.warning.split(" trailing")[0])


def test_the_tail_grows_until_it_holds_a_summary(tmp_path: Path, long_events: list[Event]) -> None:
    """A crashed run whose last epoch sent many events after its last summary: the window
    grows back to that summary."""
    cut = max(i for i, e in enumerate(long_events) if type(e) is EpochSummary) + 1
    summary = long_events[cut - 1]
    filler = [e for e in long_events[1:cut] if type(e) is not EpochSummary][:1500]
    path = write(tmp_path / "busy.msgpack", [*long_events[:cut], *filler])
    ends = read_ends(path, (EpochSummary,))
    assert not ends.whole and len(ends.tail) > len(filler)
    assert encode(ends.last(EpochSummary)) == encode(summary)


def test_garbage_at_the_end_is_an_error_as_in_a_whole_read(
    tmp_path: Path, long_events: list[Event]
) -> None:
    data = write(tmp_path / "ok.msgpack", long_events).read_bytes()
    path = tmp_path / "bad.msgpack"
    path.write_bytes(data + b"\x00\x00\x00\x10" + b"\xc1" * 16)  # a whole frame of junk
    with pytest.raises(RecordingError, match="does not decode"):
        read_recording(path)
    with pytest.raises(RecordingError, match="does not decode"):
        read_ends(path, (EpochSummary,))


def test_a_short_recording_is_read_whole(tmp_path: Path) -> None:
    events = read_recording(REAL_RUN).events
    path = write(tmp_path / "short.msgpack", events[:20])
    ends = read_ends(path, (EpochSummary,), tail_bytes=1 << 20)
    assert ends.whole and encoded(ends.tail) == encoded(events[:20])


def test_the_index_reads_any_event_back_from_the_file(
    tmp_path: Path, long_events: list[Event]
) -> None:
    path = write(tmp_path / "long.msgpack", long_events)
    index = RecordingIndex(path)
    index.CHUNK_BYTES = 64 * 1024  # several chunks: the sink sees them in order
    seen: list[Event] = []

    def sink(events: list[Event], first: int) -> None:
        assert first == len(seen)  # chunk by chunk, in order, each at its index
        seen.extend(events)

    assert index.update(sink) == len(long_events) and index.frames > 1
    assert encoded(seen) == encoded(long_events) and len(index) == len(long_events)
    rng = random.Random(5)
    for _ in range(40):
        a = rng.randrange(len(long_events))
        b = min(a + rng.randrange(1, 500), len(long_events))
        assert encoded(index.slice(a, b)) == encoded(long_events[a:b])
        assert encode(index[b - 1]) == encode(long_events[b - 1])
    picks = sorted(rng.sample(range(len(long_events)), 300))
    assert encoded(index.take(picks)) == encoded([long_events[i] for i in picks])
    index.close()
    assert encode(index[7]) == encode(long_events[7])  # reopened to look again
    index.close()


def test_the_index_follows_a_recording_being_written(
    tmp_path: Path, long_events: list[Event]
) -> None:
    path = tmp_path / "live.msgpack"
    index = RecordingIndex(path)
    assert index.update(lambda events, first: None) == 0  # not created yet
    recorder = Recorder(path)
    total = 0
    for stop in (500, 501, 2000, 4000):
        for event in long_events[total:stop]:
            recorder.emit(event)
        recorder.sync()
        index.update(lambda events, first: None)
        total = stop
        assert len(index) == stop and index.truncation() is None
        assert encode(index[stop - 1]) == encode(long_events[stop - 1])
    recorder.close()
    index.close()
