"""Recordings: round trip, crash truncation at every byte, clear errors on garbage, follow mode."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import msgspec
import pytest

from esper_engine import contracts as c
from esper_engine.recording import (
    HEADER_SIZE,
    MAGIC,
    Recorder,
    RecordingError,
    RecordingFollower,
    read_recording,
)
from tests.engine.test_contracts import EVENT_SAMPLES

EVENTS = list(EVENT_SAMPLES.values())


def frame(event: c.Event) -> bytes:
    payload = c.encode(event)
    return struct.pack(">I", len(payload)) + payload


def header(version: int = c.SCHEMA_VERSION) -> bytes:
    return MAGIC + bytes([version])


def batch(i: int) -> c.BatchStats:
    return c.BatchStats(
        env=1,
        batch=i,
        loss=0.5,
        grad_norm_pre_clip=2.0,
        grad_norm_post_clip=1.0,
        clip_threshold=1.0,
        clipped=True,
    )


def test_recorder_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "deep" / "run.ovwrec"  # parent dirs are created
    with Recorder(path) as recorder:
        for event in EVENTS:
            recorder.emit(event)
    assert recorder.events_written == len(EVENTS)
    assert path.read_bytes() == header() + b"".join(frame(e) for e in EVENTS)
    recording = read_recording(path)
    assert recording.events == EVENTS
    assert list(recording) == EVENTS and len(recording) == len(EVENTS)
    assert recording[2] == EVENTS[2]
    assert recording.warning is None
    assert recording.schema_version == c.SCHEMA_VERSION


def test_empty_recording_reads_back_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.ovwrec"
    Recorder(path).close()
    recording = read_recording(path)
    assert recording.events == [] and recording.warning is None


def test_close_is_idempotent_and_emit_after_close_fails(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "r.ovwrec")
    recorder.emit(batch(0))
    recorder.close()
    recorder.close()
    assert recorder.closed
    with pytest.raises(RecordingError, match="after the recorder was closed"):
        recorder.emit(batch(1))
    assert read_recording(recorder.path).events == [batch(0)]


def test_epoch_summary_is_flushed_before_close(tmp_path: Path) -> None:
    path = tmp_path / "live.ovwrec"
    recorder = Recorder(path)
    events = [batch(0), batch(1), EVENT_SAMPLES[c.EpochSummary]]
    for event in events:
        recorder.emit(event)
    # Another reader sees the whole epoch while the recorder is still open.
    assert read_recording(path).events == events
    recorder.close()


def test_concurrent_emits_never_interleave_frames(tmp_path: Path) -> None:
    path = tmp_path / "threads.ovwrec"
    with Recorder(path) as recorder:
        threads = [
            threading.Thread(
                target=lambda k=k: [recorder.emit(batch(k * 1000 + i)) for i in range(300)]
            )
            for k in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    batches = sorted(e.batch for e in read_recording(path))
    assert batches == sorted(k * 1000 + i for k in range(4) for i in range(300))


def test_truncation_at_every_byte_keeps_all_complete_frames(tmp_path: Path) -> None:
    path = tmp_path / "full.ovwrec"
    with Recorder(path) as recorder:
        for event in EVENTS:
            recorder.emit(event)
    data = path.read_bytes()
    boundaries = [HEADER_SIZE]
    for event in EVENTS:
        boundaries.append(boundaries[-1] + len(frame(event)))
    assert boundaries[-1] == len(data)

    cut_path = tmp_path / "cut.ovwrec"
    for cut in range(len(data) + 1):
        cut_path.write_bytes(data[:cut])
        recording = read_recording(cut_path)
        complete = sum(1 for end in boundaries[1:] if end <= cut)
        assert recording.events == EVENTS[:complete], cut
        # A cut exactly at a frame boundary is a clean file; anywhere else (the header
        # included: an empty read) is reported.
        assert (recording.warning is None) == (cut in boundaries), cut
        if recording.warning:
            assert str(cut_path) in recording.warning and "\n" not in recording.warning


def assert_one_line_error(path: Path, *fragments: str) -> None:
    with pytest.raises(RecordingError) as info:
        read_recording(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    # No msgspec or OS traceback chained behind it.
    assert info.value.__context__ is None or info.value.__suppress_context__


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"PK\x03\x04 not a recording at all", ("bad magic", "byte 0")),
        (b"OVWRE!\x00\x01", ("bad magic",)),
        (header(0), ("invalid schema version 0",)),
        (
            header() + frame(batch(0)) + b"\x00\x00\x00\x03\xc1\xc1\xc1",
            ("frame at byte", "does not decode"),
        ),
        (header() + struct.pack(">I", 4) + b"\x81\xa4type", ("frame at byte 8",)),
        (header() + frame(batch(0)) + b"\xff\xff\xff\xff" + b"x" * 10, ("claims 4294967295",)),
        (header() + b"\x00\x00\x00\x00", ("frame at byte 8 claims 0 bytes",)),
    ],
    ids=["zip", "near-magic", "version-0", "bad-msgpack", "truncated-msgpack", "huge", "zero"],
)
def test_garbage_is_one_clear_error(tmp_path: Path, content: bytes, fragments: tuple) -> None:
    path = tmp_path / "garbage.ovwrec"
    path.write_bytes(content)
    assert_one_line_error(path, *fragments)


def test_unknown_event_type_names_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "unknown.ovwrec"
    payload = msgspec.msgpack.encode({"type": "FromTheFuture", "x": 1})
    first = frame(batch(0))
    path.write_bytes(header() + first + struct.pack(">I", len(payload)) + payload)
    assert_one_line_error(path, f"frame at byte {HEADER_SIZE + len(first)}", "FromTheFuture")


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.ovwrec"
    path.write_bytes(header(c.SCHEMA_VERSION + 1) + frame(batch(0)))
    assert_one_line_error(path, f"schema version {c.SCHEMA_VERSION + 1}", "newer")


def test_missing_file_is_a_recording_error(tmp_path: Path) -> None:
    assert_one_line_error(tmp_path / "nope.ovwrec", "cannot read")


def test_follower_sees_frames_as_they_are_appended(tmp_path: Path) -> None:
    path = tmp_path / "growing.ovwrec"
    a, b, d = frame(batch(0)), frame(batch(1)), frame(EVENT_SAMPLES[c.EpochSummary])
    with RecordingFollower(path) as follower:
        assert follower.poll() == []  # not created yet
        with open(path, "wb", buffering=0) as f:
            steps = [
                (header()[:3], []),
                (header()[3:], []),
                (a[:2], []),  # half a length prefix
                (a[2:9], []),
                (a[9:], [batch(0)]),
                (b + d[:-1], [batch(1)]),
                (b"", []),
                (d[-1:], [EVENT_SAMPLES[c.EpochSummary]]),
            ]
            for chunk, expected in steps:
                f.write(chunk)
                assert follower.poll() == expected
        assert follower.pending_bytes == 0
        assert follower.schema_version == c.SCHEMA_VERSION


def test_follower_tracks_a_live_recorder(tmp_path: Path) -> None:
    path = tmp_path / "live.ovwrec"
    follower = RecordingFollower(path)
    with Recorder(path) as recorder:
        assert follower.poll() == []
        recorder.emit(batch(0))
        recorder.emit(EVENT_SAMPLES[c.EpochSummary])  # flushes the epoch
        assert follower.poll() == [batch(0), EVENT_SAMPLES[c.EpochSummary]]
        recorder.emit(EVENT_SAMPLES[c.RunFinished])
    assert follower.poll() == [EVENT_SAMPLES[c.RunFinished]]
    follower.close()


def test_follower_reports_garbage_with_its_file_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.ovwrec"
    first = frame(batch(0))
    path.write_bytes(header() + first)
    with RecordingFollower(path) as follower:
        assert follower.poll() == [batch(0)]
        with open(path, "ab") as f:
            f.write(b"\x00\x00\x00\x02\xc1\xc1")
        with pytest.raises(RecordingError, match=f"frame at byte {HEADER_SIZE + len(first)}"):
            follower.poll()


def test_follower_refuses_a_file_that_is_not_a_recording(tmp_path: Path) -> None:
    path = tmp_path / "text.txt"
    path.write_bytes(b"hello")
    with RecordingFollower(path) as follower, pytest.raises(RecordingError, match="bad magic"):
        follower.poll()
