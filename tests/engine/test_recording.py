"""Recordings: round trip, batched frames, crash truncation at every byte, clear errors on
garbage, version 1 files, follow mode."""

from __future__ import annotations

import errno
import os
import struct
import threading
from pathlib import Path

import msgspec
import pytest

from esper_engine import contracts as c
from esper_engine import recording
from esper_engine.recording import (
    BATCH_BYTES,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    Recorder,
    RecordingError,
    RecordingFollower,
    read_recording,
)
from tests.engine.test_contracts import EVENT_SAMPLES

EVENTS = list(EVENT_SAMPLES.values())
# The events after which the recorder writes its batch at once (the spec, restated here).
FLUSHED = (
    c.RunStarted,
    c.EpochSummary,
    c.GovernorRollback,
    c.CommandAck,
    c.RunFinished,
    c.RunResumed,
    c.EpochProgress,
    c.OperatorNote,
)
BATCH_DECODER = msgspec.msgpack.Decoder(list[c.TelemetryEvent])


def frame(event: c.Event) -> bytes:
    """A version 1 frame: one event."""
    payload = c.encode(event)
    return struct.pack(">I", len(payload)) + payload


def batch_frame(events: list[c.Event]) -> bytes:
    """A version 2 frame: a msgpack array of events."""
    payload = msgspec.msgpack.encode(events)
    return struct.pack(">I", len(payload)) + payload


def header(version: int = FORMAT_VERSION) -> bytes:
    return MAGIC + bytes([version])


def frames_of(data: bytes) -> list[tuple[int, list[c.Event]]]:
    """(end offset, events) of each version 2 frame, parsed independently of the reader."""
    assert data[:HEADER_SIZE] == header()
    pos, frames = HEADER_SIZE, []
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        pos += 4 + length
        frames.append((pos, BATCH_DECODER.decode(data[pos - length : pos])))
    assert pos == len(data)
    return frames


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


def write(path: Path, events: list[c.Event]) -> Path:
    with Recorder(path) as recorder:
        for event in events:
            recorder.emit(event)
    return path


def test_recorder_round_trip_writes_one_frame_per_flush(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "deep" / "run.ovwrec"  # parent dirs are created
    with Recorder(path) as recorder:
        for event in EVENTS:
            recorder.emit(event)
    assert recorder.events_written == len(EVENTS)
    groups: list[list[c.Event]] = [[]]
    for event in EVENTS:
        groups[-1].append(event)
        if isinstance(event, FLUSHED):
            groups.append([])
    assert len(groups) > 3 and groups[-1] == []  # the samples end with RunFinished
    assert path.read_bytes() == header() + b"".join(batch_frame(g) for g in groups[:-1])
    read = read_recording(path)
    assert read.events == EVENTS
    assert list(read) == EVENTS and len(read) == len(EVENTS)
    assert read[2] == EVENTS[2]
    assert read.warning is None
    assert read.format_version == FORMAT_VERSION == 2


def test_empty_recording_reads_back_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.ovwrec"
    Recorder(path).close()
    assert path.read_bytes() == header()
    read = read_recording(path)
    assert read.events == [] and read.warning is None


def test_close_writes_the_pending_batch_once_and_emit_after_close_fails(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "r.ovwrec")
    recorder.emit(batch(0))
    recorder.emit(batch(1))
    recorder.close()
    recorder.close()
    assert recorder.closed and recorder.events_written == 2
    with pytest.raises(RecordingError, match="after the recorder was closed"):
        recorder.emit(batch(2))
    assert recorder.events_written == 2
    assert frames_of(recorder.path.read_bytes())[0][1] == [batch(0), batch(1)]
    assert read_recording(recorder.path).events == [batch(0), batch(1)]


def test_a_flush_event_closes_the_frame_before_close(tmp_path: Path) -> None:
    path = tmp_path / "live.ovwrec"
    recorder = Recorder(path)
    recorder.emit(batch(0))
    recorder.emit(batch(1))
    assert read_recording(path).events == []  # pending, as it was in the file buffer before
    recorder.emit(EVENT_SAMPLES[c.EpochSummary])
    # Another reader sees the whole epoch, as one clean frame, while the recorder is open.
    read = read_recording(path)
    assert read.events == [batch(0), batch(1), EVENT_SAMPLES[c.EpochSummary]]
    assert read.warning is None and len(frames_of(path.read_bytes())) == 1
    recorder.close()


def test_a_long_stretch_without_flush_is_written_in_full_frames(tmp_path: Path) -> None:
    path = tmp_path / "batches.ovwrec"
    events = [batch(i) for i in range(300)]
    recorder = Recorder(path)
    for event in events:
        recorder.emit(event)
    # Already on disk in whole frames; only the last, partly filled batch waits in memory.
    on_disk = read_recording(path)
    assert on_disk.warning is None
    assert on_disk.events == events[: len(on_disk.events)]
    assert sum(len(c.encode(e)) for e in events[len(on_disk.events) :]) < BATCH_BYTES
    recorder.close()

    frames = frames_of(path.read_bytes())
    assert [e for _, frame_events in frames for e in frame_events] == events
    assert 3 <= len(frames) < len(events) // 20
    sizes = [sum(len(c.encode(e)) for e in frame_events) for _, frame_events in frames]
    assert all(size <= BATCH_BYTES for size in sizes)
    # Every frame but the last was full: the next event would have pushed it over.
    nexts = [frame_events[0] for _, frame_events in frames[1:]]
    for size, following in zip(sizes, nexts, strict=False):
        assert size + len(c.encode(following)) > BATCH_BYTES


def big_summary(n_slots: int) -> c.EpochSummary:
    slot = EVENT_SAMPLES[c.EpochSummary].slots[0]
    return msgspec.structs.replace(EVENT_SAMPLES[c.EpochSummary], slots=[slot] * n_slots)


def test_an_event_larger_than_a_batch_gets_a_frame_of_its_own(tmp_path: Path) -> None:
    big = big_summary(200)
    assert len(c.encode(big)) > BATCH_BYTES
    path = write(tmp_path / "big.ovwrec", [batch(0), big, batch(1)])
    assert [events for _, events in frames_of(path.read_bytes())] == [[batch(0)], [big], [batch(1)]]


def test_an_event_over_the_frame_limit_is_refused_at_emit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recording, "MAX_FRAME_SIZE", 2000)
    big = big_summary(40)
    assert len(c.encode(big)) > 2000
    with Recorder(tmp_path / "r.ovwrec") as recorder:
        recorder.emit(batch(0))
        with pytest.raises(RecordingError, match="EpochSummary encodes to .* 2000-byte frame"):
            recorder.emit(big)
        recorder.emit(batch(1))  # the recorder carries on
    assert recorder.events_written == 2
    assert read_recording(recorder.path).events == [batch(0), batch(1)]


def test_concurrent_emits_never_interleave_frames(tmp_path: Path) -> None:
    path = tmp_path / "threads.ovwrec"
    summary = EVENT_SAMPLES[c.EpochSummary]

    def emit_many(k: int) -> None:
        for i in range(300):
            recorder.emit(batch(k * 1000 + i))
            if i % 50 == 0:
                recorder.emit(summary)

    with Recorder(path) as recorder:
        threads = [threading.Thread(target=emit_many, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    events = read_recording(path).events
    assert recorder.events_written == len(events) == 4 * (300 + 6)
    batches = sorted(e.batch for e in events if isinstance(e, c.BatchStats))
    assert batches == sorted(k * 1000 + i for k in range(4) for i in range(300))


def version_1_recording(path: Path) -> tuple[bytes, list[int]]:
    """A version 1 file written by hand (one event per frame) and its frame boundaries."""
    data = header(1) + b"".join(frame(e) for e in EVENTS)
    path.write_bytes(data)
    boundaries = [HEADER_SIZE]
    for event in EVENTS:
        boundaries.append(boundaries[-1] + len(frame(event)))
    return data, boundaries


def test_version_1_recordings_still_read(tmp_path: Path) -> None:
    path = tmp_path / "v1.ovwrec"
    version_1_recording(path)
    read = read_recording(path)
    assert read.events == EVENTS and read.warning is None and read.format_version == 1
    with RecordingFollower(path) as follower:
        assert follower.poll() == EVENTS and follower.format_version == 1


@pytest.mark.parametrize("version", [1, 2])
def test_truncation_at_every_byte_keeps_all_complete_frames(tmp_path: Path, version: int) -> None:
    full = tmp_path / "full.ovwrec"
    if version == 1:
        data, boundaries = version_1_recording(full)
        ends = [(end, 1) for end in boundaries[1:]]
    else:
        data = write(full, EVENTS).read_bytes()
        ends = [(end, len(events)) for end, events in frames_of(data)]
        boundaries = [HEADER_SIZE] + [end for end, _ in ends]
        assert len(ends) < len(EVENTS)  # batched: some frames hold several events
    cut_path = tmp_path / "cut.ovwrec"
    for cut in range(len(data) + 1):
        cut_path.write_bytes(data[:cut])
        read = read_recording(cut_path)
        complete = sum(n for end, n in ends if end <= cut)
        assert read.events == EVENTS[:complete], cut
        # A cut exactly at a frame boundary is a clean file; anywhere else (the header
        # included: an empty read) is reported.
        assert (read.warning is None) == (cut in boundaries), cut
        if read.warning:
            assert str(cut_path) in read.warning and "\n" not in read.warning


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


FIRST = batch_frame([batch(0)])


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"PK\x03\x04 not a recording at all", ("bad magic", "byte 0")),
        (b"OVWRE!\x00\x02", ("bad magic",)),
        (header(0), ("invalid recording format version 0",)),
        (header() + FIRST + b"\x00\x00\x00\x03\xc1\xc1\xc1", ("frame at byte", "does not decode")),
        (header() + struct.pack(">I", 4) + b"\x91\x81\xa4t", ("frame at byte 8",)),
        (header() + frame(batch(0)), ("frame at byte 8", "does not decode")),  # not an array
        (header() + FIRST + b"\x00\x00\x00\x01\x90", (f"byte {8 + len(FIRST)} holds no events",)),
        # the length is one short: the frame's msgpack is cut and one byte trails it
        (header() + struct.pack(">I", len(FIRST) - 5) + FIRST[4:], ("does not decode",)),
        (header() + FIRST + b"\xff\xff\xff\xff" + b"x" * 10, ("claims 4294967295",)),
        (header() + b"\x00\x00\x00\x00", ("frame at byte 8 claims 0 bytes",)),
        (header(1) + frame(batch(0)) + b"\x00\x00\x00\x02\xc1\xc1", ("does not decode",)),
    ],
    ids=[
        "zip",
        "near-magic",
        "version-0",
        "bad-msgpack",
        "truncated-msgpack",
        "not-an-array",
        "empty-array",
        "trailing-byte",
        "huge",
        "zero",
        "v1-bad-msgpack",
    ],
)
def test_garbage_is_one_clear_error(tmp_path: Path, content: bytes, fragments: tuple) -> None:
    path = tmp_path / "garbage.ovwrec"
    path.write_bytes(content)
    assert_one_line_error(path, *fragments)


def test_unknown_event_type_names_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "unknown.ovwrec"
    payload = b"\x92" + c.encode(batch(1)) + msgspec.msgpack.encode({"type": "FromTheFuture"})
    path.write_bytes(header() + FIRST + struct.pack(">I", len(payload)) + payload)
    assert_one_line_error(path, f"frame at byte {HEADER_SIZE + len(FIRST)}", "FromTheFuture")


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.ovwrec"
    path.write_bytes(header(FORMAT_VERSION + 1) + FIRST)
    assert_one_line_error(path, f"format version {FORMAT_VERSION + 1}", "newer", "upgrade")


def test_missing_file_is_a_recording_error(tmp_path: Path) -> None:
    assert_one_line_error(tmp_path / "nope.ovwrec", "cannot read")


def test_follower_sees_frames_as_they_arrive_in_pieces(tmp_path: Path) -> None:
    path = tmp_path / "growing.ovwrec"
    summary = EVENT_SAMPLES[c.EpochSummary]
    a, b, d = batch_frame([batch(0)]), batch_frame([batch(1), batch(2)]), batch_frame([summary])
    with RecordingFollower(path) as follower:
        assert follower.poll() == []  # not created yet
        with open(path, "wb", buffering=0) as f:
            steps = [  # (bytes appended, events polled, bytes held back)
                (header()[:3], [], 3),
                (header()[3:], [], 0),
                (a[:2], [], 2),  # half a length prefix
                (a[2:9], [], 9),
                (a[9:], [batch(0)], 0),
                (b[:5], [], 5),  # the length and the array header alone
                (b[5:-1], [], len(b) - 1),
                (b[-1:] + d[:-1], [batch(1), batch(2)], len(d) - 1),
                (b"", [], len(d) - 1),
                (d[-1:], [summary], 0),
            ]
            for chunk, expected, held in steps:
                f.write(chunk)
                assert follower.poll() == expected
                assert follower.pending_bytes == held
        assert follower.pending_bytes == 0
        assert follower.format_version == FORMAT_VERSION


def test_follower_tracks_a_live_recorder(tmp_path: Path) -> None:
    path = tmp_path / "live.ovwrec"
    follower = RecordingFollower(path)
    with Recorder(path) as recorder:
        assert follower.poll() == []
        recorder.emit(batch(0))
        assert follower.poll() == []  # still pending in the recorder
        recorder.emit(EVENT_SAMPLES[c.EpochSummary])  # flushes the epoch
        assert follower.poll() == [batch(0), EVENT_SAMPLES[c.EpochSummary]]
        recorder.emit(batch(1))
        recorder.emit(EVENT_SAMPLES[c.RunFinished])
    assert follower.poll() == [batch(1), EVENT_SAMPLES[c.RunFinished]]
    follower.close()


def test_follower_reports_garbage_with_its_file_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.ovwrec"
    path.write_bytes(header() + FIRST)
    with RecordingFollower(path) as follower:
        assert follower.poll() == [batch(0)]
        with open(path, "ab") as f:
            f.write(b"\x00\x00\x00\x01\x90")
        with pytest.raises(RecordingError, match=f"frame at byte {HEADER_SIZE + len(FIRST)}"):
            follower.poll()


def test_follower_refuses_a_file_that_is_not_a_recording(tmp_path: Path) -> None:
    path = tmp_path / "text.txt"
    path.write_bytes(b"hello")
    with RecordingFollower(path) as follower, pytest.raises(RecordingError, match="bad magic"):
        follower.poll()


# --- schema versions: events are converted to the current schema as they are read --------------

V1_ATTRIBUTION = {
    "shapley": {"block1": 2.25, "block2": -1.0},
    "std": {"block1": 0.5, "block2": 1.5},
    "full_value": 29.5,
    "empty_value": 27.0,
}


def schema_1_events() -> list[bytes]:
    """A schema-1 run as that build encoded it: Shapley values, std, v(all), v(none) in accuracy
    points, and none of the fields appended since."""
    started = msgspec.to_builtins(EVENT_SAMPLES[c.RunStarted])
    for appended in ("host_params", "seed_params"):
        del started[appended]
    started["schema_version"] = 1
    attribution = msgspec.to_builtins(EVENT_SAMPLES[c.Attribution])
    attribution |= V1_ATTRIBUTION | {"full_loss": 1.7}
    summary = msgspec.to_builtins(EVENT_SAMPLES[c.EpochSummary])
    del summary["last_op"]
    return [msgspec.msgpack.encode(e) for e in (started, attribution, summary)]


def raw_batch_frame(payloads: list[bytes]) -> bytes:
    body = recording._array_header(len(payloads)) + b"".join(payloads)
    return struct.pack(">I", len(body)) + body


def assert_schema_2_attribution(event: c.Event) -> None:
    assert isinstance(event, c.Attribution)
    assert event.shapley == pytest.approx({"block1": 0.0225, "block2": -0.01})
    assert event.std == pytest.approx({"block1": 0.005, "block2": 0.015})
    assert (event.full_value, event.empty_value) == pytest.approx((0.295, 0.27))
    assert event.full_loss == 1.7  # a loss in nats: not an accuracy, left alone


def test_a_schema_1_recording_reads_in_fractions(tmp_path: Path) -> None:
    started, attribution, summary = schema_1_events()
    path = tmp_path / "v1.ovwrec"
    frames = raw_batch_frame([started]) + raw_batch_frame([attribution, summary])
    path.write_bytes(header() + frames)
    events = read_recording(path).events
    assert events[0].schema_version == 1  # as recorded
    assert_schema_2_attribution(events[1])
    assert events[2] == c.decode_event(summary)  # other events are unchanged


def test_a_follower_converts_a_schema_1_recording_across_polls(tmp_path: Path) -> None:
    started, attribution, summary = schema_1_events()
    path = tmp_path / "v1.ovwrec"
    path.write_bytes(header() + raw_batch_frame([started]))
    with RecordingFollower(path) as follower:
        assert [type(e) for e in follower.poll()] == [c.RunStarted]
        with open(path, "ab") as f:
            f.write(raw_batch_frame([attribution]) + frame(c.decode_event(summary))[:5])
        (converted,) = follower.poll()
        assert_schema_2_attribution(converted)


def test_a_current_recording_is_read_as_written(tmp_path: Path) -> None:
    started = msgspec.structs.replace(EVENT_SAMPLES[c.RunStarted], schema_version=c.SCHEMA_VERSION)
    events = [started, EVENT_SAMPLES[c.Attribution], EVENT_SAMPLES[c.EpochSummary]]
    path = write(tmp_path / "v2.ovwrec", events)
    assert read_recording(path).events == events
    with RecordingFollower(path) as follower:
        assert follower.poll() == events


def test_schema_version_is_now_2() -> None:
    # 2: accuracy-like figures are fractions; bumping it again needs an entry in _UPGRADES.
    assert c.SCHEMA_VERSION == 2
    assert set(recording._UPGRADES) == {1}


@pytest.mark.parametrize(
    ("event", "field", "bad"),
    [
        (c.SeedTransition, "to_stage", "SPROUTING"),
        (c.SeedTransition, "initiator", "the intern"),
        (c.RunFinished, "status", "exploded"),
    ],
)
def test_an_unknown_name_in_a_recording_is_one_clear_error(
    tmp_path: Path, event: type, field: str, bad: str
) -> None:
    payload = msgspec.msgpack.encode(msgspec.to_builtins(EVENT_SAMPLES[event]) | {field: bad})
    path = tmp_path / "bad-name.ovwrec"
    path.write_bytes(header() + FIRST + raw_batch_frame([payload]))
    offset = HEADER_SIZE + len(FIRST)
    assert_one_line_error(path, f"frame at byte {offset}", "does not decode", repr(bad)[1:-1])
    with RecordingFollower(path) as follower, pytest.raises(RecordingError) as info:
        follower.poll()
    assert f"frame at byte {offset}" in str(info.value) and "\n" not in str(info.value)


def test_a_stage_name_survives_a_recording_as_the_enum(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.ovwrec", [EVENT_SAMPLES[c.SeedTransition]])
    (event,) = read_recording(path).events
    assert event.to_stage is c.SeedStage.BLENDING and event.initiator is c.Initiator.GATE


# --- the declared range: nothing a file says makes a reader allocate past it (issue 21) ----------

STARTED = EVENT_SAMPLES[c.RunStarted]  # 3 envs x 5 episodes x 20 epochs


def summary_at(**where: int) -> c.EpochSummary:
    return msgspec.structs.replace(EVENT_SAMPLES[c.EpochSummary], **where)


@pytest.mark.parametrize(
    ("forged", "fragment"),
    [
        (summary_at(env=10**9), "EpochSummary of env 1000000000, episode 4, epoch 11"),
        (summary_at(env=3), "env 3, episode 4"),
        (summary_at(env=-1), "env -1"),
        (summary_at(episode=5), "episode 5, epoch 11 is outside the run's 3 envs x 5 episodes"),
        (summary_at(epoch=2**40), f"epoch {2**40} is outside"),
        (msgspec.structs.replace(batch(0), env=10**9), "BatchStats of env 1000000000"),
    ],
    ids=["huge-env", "env-past-n_envs", "negative-env", "episode", "epoch", "batch-stats"],
)
def test_an_event_outside_the_declared_range_is_refused_at_decode(
    tmp_path: Path, forged: c.Event, fragment: str
) -> None:
    path = tmp_path / "forged.ovwrec"
    first = batch_frame([STARTED])
    path.write_bytes(header() + first + batch_frame([forged]))
    assert_one_line_error(path, f"frame at byte {HEADER_SIZE + len(first)}", fragment)
    follower = RecordingFollower(path)
    with pytest.raises(RecordingError, match="is outside the run's"):
        follower.poll()
    follower.close()


def test_a_run_started_past_the_bounds_is_refused_and_none_bounds_the_bounds(
    tmp_path: Path,
) -> None:
    path = tmp_path / "forged.ovwrec"
    path.write_bytes(header() + batch_frame([msgspec.structs.replace(STARTED, n_envs=10**9)]))
    assert_one_line_error(path, "RunStarted declares 1000000000 envs", "outside 1..1024")
    # no RunStarted (a fragment): the config's bounds still hold
    path.write_bytes(header() + batch_frame([batch(0), summary_at(env=5000)]))
    assert_one_line_error(path, "env 5000")
    path.write_bytes(header() + batch_frame([batch(0), summary_at(env=1023)]))
    assert len(read_recording(path)) == 2


# --- a full disk under the recorder (issue 21) ---------------------------------------------------


class FillingDisk:
    """``os.write`` on one descriptor with ``room`` bytes left: a write that does not fit writes
    what fits, then the next one fails with ENOSPC, as a full filesystem does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, room: int) -> None:
        self.room, self.fd = room, None
        self._write = os.write
        monkeypatch.setattr(recording.os, "write", self.write)

    def write(self, fd: int, data) -> int:
        if fd != self.fd:
            return self._write(fd, data)
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self._write(fd, bytes(data[: self.room]))
        self.room -= n
        return n


def test_a_full_disk_closes_the_recording_at_its_last_whole_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "full.ovwrec"
    disk = FillingDisk(monkeypatch, room=10**9)
    recorder = Recorder(path)
    disk.fd = recorder._file.fileno()
    recorder.emit(EVENT_SAMPLES[c.RunStarted])  # flushed: one whole frame
    whole = path.stat().st_size
    disk.room = 30  # the next frame is cut after 30 bytes
    with pytest.raises(RecordingError) as info:
        recorder.emit(EVENT_SAMPLES[c.EpochSummary])
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "No space left on device" in message and f"last whole frame, byte {whole}" in message
    assert recorder.error == message and recorder.closed
    recorder.emit(EVENT_SAMPLES[c.RunFinished])  # later events: not written, no second error
    recorder.close()
    assert path.stat().st_size == whole  # the partial frame is cut off
    read = read_recording(path)
    assert read.warning is None and list(read) == [EVENT_SAMPLES[c.RunStarted]]
    with pytest.raises(RecordingError, match="cannot write the recording"):
        recorder.sync()  # a checkpoint must not point past the end
