"""Recordings: an append-only file of telemetry events that survives a crash up to the last frame.

Format (``FORMAT_VERSION`` 2): ``MAGIC`` (7 bytes) + 1 byte format version, then frames of a 4-byte
big-endian length and a msgpack array of one or more events (``contracts.encode`` each). Version 1
files (the same header, one event per frame) are still read. One frame per flush, rather than per
event, is what lets replay decode a whole batch in one msgspec call instead of a Python loop.

Crash safety: the recorder keeps events in memory and writes them as one frame, with one ``write``
call then a flush, when a flush-worthy event arrives (``_FLUSH_ON``: epoch summaries, rollbacks,
acks, the start, resumption and end of the run), when the batch reaches ``BATCH_BYTES`` and on
``close``. So a crash or ``kill -9`` loses at most the events since the last flush, under
``BATCH_BYTES`` - as before, when they sat in the file's 8 KiB write buffer - and can only leave a
partial frame at the end; readers report it as a warning and replay everything before it.
Anything else that does not parse is a ``RecordingError``, and so is an event that does not match
the contracts (an unknown seed stage, initiator, status...: msgspec validates them while
decoding).

Reading without decoding everything: ``read_ends`` gives the first frame and the last frames
(what `overwatch ps` shows) after decoding a few KiB from the end; ``RecordingIndex`` keeps the
offset of every frame and decodes events when they are looked at (replay), so neither holds a
long recording's events. Frames chain only forward, so the tail's first frame is found by
candidates (a length, an array header, an event's ``"type"`` key) whose chain of lengths reaches
the end of the file and whose frames decode; bytes inside another frame that mimic all of that
(only text crafted to) could at worst make ``ps`` show that text's figures: replay and export
read from the start and never guess.

Schema versions: the events of a recording whose ``RunStarted.schema_version`` is older than
``contracts.SCHEMA_VERSION`` are converted to the current schema as they are read
(``SchemaUpgrade``), by ``read_recording`` and by ``RecordingFollower`` alike, so every consumer
(replay, ``--follow``, export) sees current units. Version 1 carried Shapley values, their std,
v(all) and v(none) in accuracy points; version 2 carries fractions.
"""

from __future__ import annotations

import gc
import io
import os
import re
import struct
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NoReturn

import msgspec

from esper_engine import contracts
from esper_engine.config import MAX_ENVS, MAX_EPISODES, MAX_EPOCHS
from esper_engine.contracts import Attribution, Event, RunStarted
from esper_engine.run_files import open_owned

MAGIC = b"OVWREC\x00"
FORMAT_VERSION = 2  # of the file layout; contracts.SCHEMA_VERSION versions the events themselves
HEADER_SIZE = len(MAGIC) + 1
LENGTH_SIZE = 4
# No event comes near this; a larger length prefix means the bytes are not a recording.
MAX_FRAME_SIZE = 64 * 1024 * 1024
# A batch is written once it holds this many bytes: the file buffer pending events used to sit in,
# so a crash loses no more than before; frames of ~50 events already amortise the per-frame cost.
BATCH_BYTES = io.DEFAULT_BUFFER_SIZE

_LENGTH = struct.Struct(">I")
_ARRAY16 = struct.Struct(">BH")
_BATCH_DECODER = msgspec.msgpack.Decoder(list[contracts.TelemetryEvent])
# Events worth seeing promptly in a follower or surviving a crash: flushed as soon as written.
_FLUSH_ON = (
    contracts.RunStarted,
    contracts.EpochSummary,
    contracts.GovernorRollback,
    contracts.CommandAck,
    contracts.RunFinished,
    contracts.RunResumed,
    # A few a second at most: an attached console or a follower sees an epoch move (and does
    # not read a slow first epoch as STALE) without waiting for BATCH_BYTES to fill.
    contracts.EpochProgress,
    contracts.OperatorNote,  # an operator's word: seen by every attached console at once
)


class RecordingError(Exception):
    """A recording that cannot be read (or written); the message is one line naming the file."""


def _attribution_v1(event: Attribution) -> Attribution:
    """Schema 1 -> 2: accuracy points become fractions (the losses and the rest are unchanged)."""
    return msgspec.structs.replace(
        event,
        shapley={k: v / 100.0 for k, v in event.shapley.items()},
        std=None if event.std is None else {k: v / 100.0 for k, v in event.std.items()},
        full_value=event.full_value / 100.0,
        empty_value=event.empty_value / 100.0,
    )


# schema version -> {event type: conversion to the next version}
_UPGRADES: dict[int, dict[type[Event], Callable[[Event], Event]]] = {
    1: {Attribution: _attribution_v1},
}


class SchemaUpgrade:
    """Converts a recording's events to the current schema, in place, as they are decoded.

    The schema is the first event's (``RunStarted.schema_version``); a recording that does not
    start with one is taken to be current. For a current recording ``apply`` costs one check.
    """

    def __init__(self) -> None:
        self.version: int | None = None  # the recording's schema, once its first event is read
        self._steps: list[dict[type[Event], Callable[[Event], Event]]] = []

    def apply(self, events: list[Event], start: int = 0) -> None:
        """Convert ``events[start:]``, the events decoded since the last call."""
        if self.version is None:
            if start >= len(events):
                return
            first = events[start]
            self.version = (
                first.schema_version if isinstance(first, RunStarted) else contracts.SCHEMA_VERSION
            )
            versions = range(self.version, contracts.SCHEMA_VERSION)
            self._steps = [_UPGRADES[v] for v in versions if v in _UPGRADES]
        if not self._steps:
            return
        for i in range(start, len(events)):
            event = events[i]
            for step in self._steps:
                convert = step.get(type(event))
                if convert is not None:
                    event = convert(event)
            events[i] = event


class DeclaredRange:
    """Refuses events whose env, episode or epoch lies outside the run's declared range.

    A reader sizes its views by these numbers (one panel per env), so a forged ``env = 10**9``
    must stop at the decoder, not grow a list to the id. The range is the run's ``RunStarted``
    (``n_envs``, ``episodes``, ``epochs``), itself refused past the config's bounds; before one
    is read, those bounds.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n_envs, self.episodes, self.epochs = MAX_ENVS, MAX_EPISODES, MAX_EPOCHS

    def check(self, events: list[Event], start: int, offset: int) -> None:
        """Check ``events[start:]``, decoded from the frame at byte ``offset``."""
        for i in range(start, len(events)):
            event = events[i]
            if type(event) is RunStarted:
                self._declare(event, offset)
            env = event.env
            if (
                (env is not None and not 0 <= env < self.n_envs)
                or not 0 <= event.episode < self.episodes
                or not 0 <= event.epoch < self.epochs
            ):
                raise RecordingError(
                    f"{self.path}: frame at byte {offset}: {type(event).__name__} of env "
                    f"{env}, episode {event.episode}, epoch {event.epoch} is outside the run's "
                    f"{self.n_envs} envs x {self.episodes} episodes x {self.epochs} epochs"
                )

    def _declare(self, event: RunStarted, offset: int) -> None:
        declared = (event.n_envs, event.episodes, event.epochs)
        if not all(1 <= n <= cap for n, cap in zip(declared, _RANGE_CAPS, strict=True)):
            raise RecordingError(
                f"{self.path}: frame at byte {offset}: RunStarted declares {event.n_envs} envs "
                f"x {event.episodes} episodes x {event.epochs} epochs, outside 1..{MAX_ENVS} "
                f"x 1..{MAX_EPISODES} x 1..{MAX_EPOCHS}"
            )
        self.n_envs, self.episodes, self.epochs = declared


_RANGE_CAPS = (MAX_ENVS, MAX_EPISODES, MAX_EPOCHS)


class Recorder:
    """A telemetry sink that writes every event to ``path``; it never drops (thread-safe)."""

    def __init__(self, path: str | os.PathLike[str], *, resume_at: int | None = None) -> None:
        """A new recording at ``path``; with ``resume_at`` (bytes, at a frame boundary: the
        length a checkpoint recorded) the existing one is cut back to it and appended to."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if resume_at is None:
            # Created exclusively: an existing recording (another run's) is never overwritten
            # here (FileExistsError); the CLI removes one only when the user says --overwrite.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self._file = os.fdopen(os.open(self.path, flags, 0o644), "wb")  # closed by close()
            self._file.write(MAGIC + bytes([FORMAT_VERSION]))
        else:
            fd = open_owned(self.path, os.O_RDWR)  # only this user's own recording is cut back
            self._file = os.fdopen(fd, "r+b")  # closed by close()
            if resume_at < HEADER_SIZE or self._file.read(HEADER_SIZE)[: len(MAGIC)] != MAGIC:
                self._file.close()
                raise RecordingError(f"{self.path}: not a recording to resume at {resume_at}")
            self._file.truncate(resume_at)
            self._file.seek(resume_at)
        self._file.flush()
        self._pending: list[bytes] = []  # encoded events of the next frame
        self._pending_bytes = 0
        self.events_written = 0
        self._end = self._file.tell()  # bytes up to the end of the last whole frame
        self.error: str | None = None  # why writing stopped (a full disk...), once it has

    @property
    def closed(self) -> bool:
        return self._file.closed

    def emit(self, event: Event) -> None:
        payload = contracts.encode(event)
        if len(payload) + 1 > MAX_FRAME_SIZE:  # + the array header of a one-event frame
            raise RecordingError(
                f"{self.path}: {type(event).__name__} encodes to {len(payload)} bytes, "
                f"too large for the {MAX_FRAME_SIZE}-byte frame limit"
            )
        with self._lock:
            if self.error is not None:  # reported once, when it happened; the file is closed
                return
            if self._file.closed:
                raise RecordingError(f"{self.path}: emit after the recorder was closed")
            # Writing the batch first keeps every frame under BATCH_BYTES, bar one large event.
            if self._pending and self._pending_bytes + len(payload) > BATCH_BYTES:
                self._write_pending()
            self._pending.append(payload)
            self._pending_bytes += len(payload)
            self.events_written += 1
            if self._pending_bytes >= BATCH_BYTES or isinstance(event, _FLUSH_ON):
                self._write_pending()

    def _write_pending(self) -> None:
        """Write the pending events as one frame in one call and flush (the lock is held)."""
        array = _array_header(len(self._pending))
        length = _LENGTH.pack(len(array) + self._pending_bytes)
        frame = b"".join([length, array, *self._pending])
        self._pending.clear()
        self._pending_bytes = 0
        try:
            _write_all(self._file, frame)
        except OSError as exc:
            self._fail(exc)
        self._end += len(frame)

    def _fsync(self) -> None:
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> NoReturn:
        """A write failed (a full disk, a quota): cut the file back to its last whole frame,
        close it and raise one line; later events are not written (``error`` says why)."""
        self.error = (
            f"{self.path}: cannot write the recording ({exc.strerror or exc}); it ends at its "
            f"last whole frame, byte {self._end}"
        )
        try:
            os.ftruncate(self._file.fileno(), self._end)  # a partial frame reads as damage
        except OSError as cut:
            self.error += f" and a partial frame after it ({cut.strerror})"
        finally:
            self._file.close()  # nothing is buffered (``_write_all``): this cannot fail again
        raise RecordingError(self.error) from None

    def sync(self) -> int:
        """Write what is pending, fsync, and return the recording's length in bytes: the point
        a checkpoint taken now can be resumed from."""
        with self._lock:
            if self.error is not None:
                raise RecordingError(self.error)
            if self._pending:
                self._write_pending()
            self._fsync()
            return self._end

    def close(self) -> None:
        """Write the last batch, flush and fsync once; later calls do nothing."""
        with self._lock:
            if self._file.closed:
                return
            if self._pending:
                self._write_pending()
            self._fsync()
            self._file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _write_all(file: BinaryIO, data: bytes) -> None:
    """Write ``data`` straight to the file's descriptor: one frame per call, nothing left in a
    Python buffer that a failed write would leave to be retried (past the cut) at close."""
    file.flush()  # whatever the opener wrote (the header) goes first
    fd = file.fileno()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _array_header(n: int) -> bytes:
    """The msgpack header of an ``n``-item array: fixarray or array 16, since a frame of about
    ``BATCH_BYTES`` holds far fewer than 65536 events."""
    return bytes([0x90 | n]) if n < 16 else _ARRAY16.pack(0xDC, n)


class RecordingReader:
    """The decoded events of one recording, plus a warning if its last frame was cut short."""

    def __init__(
        self, path: Path, events: list[Event], format_version: int | None, warning: str | None
    ) -> None:
        self.path = path
        self.events = events
        self.format_version = format_version
        self.warning = warning

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, index: int) -> Event:
        return self.events[index]


def read_recording(path: str | os.PathLike[str]) -> RecordingReader:
    """Read and decode a whole recording; a truncated tail becomes ``.warning``, garbage raises."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read recording ({exc.strerror})") from None
    version = _check_header(path, data)
    if version is None:
        warning = f"{path}: truncated header ({len(data)} of {HEADER_SIZE} bytes); no events"
        return RecordingReader(path, [], None, warning)
    events: list[Event] = []
    with _gc_paused():
        end = _decode_frames(
            path, version, memoryview(data), HEADER_SIZE, 0, events, DeclaredRange(path)
        )
    SchemaUpgrade().apply(events)
    warning = None
    if end < len(data):
        warning = (
            f"{path}: last frame truncated at byte {end} ({len(data) - end} trailing bytes "
            f"ignored); {len(events)} events read"
        )
    return RecordingReader(path, events, version, warning)


# ``read_ends``: the tail read first (bytes), grown this many times over until it holds what the
# caller wants; a recording this much longer than its tail is read whole instead.
TAIL_BYTES = 2 * BATCH_BYTES
TAIL_GROWTH = 8
# Where an event starts: every event is a msgpack map whose first key is the tag field "type".
_EVENT_KEY = re.compile(rb"\xa4type")


class RecordingEnds:
    """The two ends of a recording (``read_ends``): the events of its first frame and of its
    last whole frames, read without decoding what lies between them.

    ``whole`` is True when the file was small enough to read entirely (``head`` and ``tail``
    then both hold every event); ``warning`` says that the last frame was cut short.
    """

    def __init__(
        self, path: Path, head: list[Event], tail: list[Event], warning: str | None, whole: bool
    ) -> None:
        self.path = path
        self.head = head
        self.tail = tail
        self.warning = warning
        self.whole = whole

    def last(self, kind: type[Event]) -> Event | None:
        """The tail's last event of ``kind`` (None: not in the part read)."""
        return next((e for e in reversed(self.tail) if type(e) is kind), None)


def read_ends(
    path: str | os.PathLike[str],
    wanted: tuple[type[Event], ...] = (),
    *,
    tail_bytes: int = TAIL_BYTES,
) -> RecordingEnds:
    """The first frame and the tail of a recording, for a listing (``overwatch ps``) that shows
    how a run started and where it stands without decoding every event in between.

    Frames only chain forward (a length, then the events), so the tail is found by candidates:
    a position that looks like the start of a frame (a length, an array header, then an event's
    ``"type"`` key) whose chain of lengths reaches the end of the file exactly, or a final frame
    cut short by a crash (its length runs past the end). The earliest candidate in the window
    whose frames decode is taken; the tail is read back from the end, frame by frame, until it
    holds an event of one of the ``wanted`` types, and the window grows (``TAIL_GROWTH`` times)
    while none qualifies. A recording no longer than a few windows is simply read whole
    (``read_recording``, with its errors). The events are checked against the run's declared
    range and upgraded to the current schema like every other reader's.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > HEADER_SIZE + LENGTH_SIZE + 2 * tail_bytes:
                ends = _read_ends(path, file, size, wanted, tail_bytes)
                if ends is not None:
                    return ends
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read recording ({exc.strerror})") from None
    reader = read_recording(path)
    return RecordingEnds(path, reader.events, reader.events, reader.warning, whole=True)


def _read_ends(
    path: Path, file: BinaryIO, size: int, wanted: tuple[type[Event], ...], window: int
) -> RecordingEnds | None:
    """``read_ends`` of a recording longer than its tail; None: read it whole after all."""
    header = file.read(HEADER_SIZE + LENGTH_SIZE)
    version = _check_header(path, header)
    if version is None or len(header) < HEADER_SIZE + LENGTH_SIZE:
        return None
    (length,) = _LENGTH.unpack_from(header, HEADER_SIZE)
    if length == 0 or length > MAX_FRAME_SIZE or HEADER_SIZE + LENGTH_SIZE + length > size:
        return None  # the whole read says what is wrong with it
    head: list[Event] = []
    first = header + file.read(length)
    declared = DeclaredRange(path)
    with _gc_paused():
        _decode_frames(path, version, memoryview(first), HEADER_SIZE, 0, head, declared)
    head_end = HEADER_SIZE + LENGTH_SIZE + length
    while True:
        start = max(size - window, head_end)
        file.seek(start)
        data = file.read(size - start)
        if len(data) != size - start:
            return None  # the file changed under us: the whole read copes
        found = _tail_frames(path, version, data, start, size, wanted, declared)
        if found is not None:
            tail, warning = found
            events = [*head, *tail]
            SchemaUpgrade().apply(events)
            return RecordingEnds(path, events[: len(head)], events[len(head) :], warning, False)
        if start == head_end or window >= size:
            return None
        window *= TAIL_GROWTH


def _tail_frames(
    path: Path,
    version: int,
    data: bytes,
    base: int,
    size: int,
    wanted: tuple[type[Event], ...],
    declared: DeclaredRange,
) -> tuple[list[Event], str | None] | None:
    """The events of the last frames in ``data`` (file bytes ``base`` to ``size``), back to one
    of the ``wanted`` types, and a truncation warning; None when no frame start is found in
    ``data`` or none of the frames read back holds a wanted event."""
    view = memoryview(data)
    decode: Callable[[memoryview], object]
    if version == 1:
        decode, array = contracts.EVENT_DECODER.decode, False
    else:
        decode, array = _BATCH_DECODER.decode, True
    for match in _EVENT_KEY.finditer(data):
        start = _frame_start(data, match.start(), array)
        if start is None:
            continue
        frames, torn = _chain(data, start)
        if not frames:
            continue
        tail: list[Event] = []
        try:
            with _gc_paused():
                for pos, stop in reversed(frames):
                    decoded = decode(view[pos + LENGTH_SIZE : stop])
                    if not decoded:
                        raise msgspec.DecodeError("an empty frame")
                    tail[:0] = decoded if array else [decoded]
                    if not wanted or any(type(e) in wanted for e in tail):
                        break
        except msgspec.DecodeError:
            continue  # not a frame start after all: a look-alike inside another frame's data
        if wanted and not any(type(e) in wanted for e in tail):
            return None
        declared.check(tail, 0, base + pos)
        warning = None
        if torn is not None:
            warning = (
                f"{path}: last frame truncated at byte {base + torn} ({size - base - torn} "
                f"trailing bytes ignored)"
            )
        return tail, warning
    return None


def _frame_start(data: bytes, key: int, array: bool) -> int | None:
    """Where a frame would start whose first event's ``"type"`` key is at ``key``: before it the
    event's map header, and (format 2) the frame's array header; None when those are not there."""
    if key >= 1 and 0x80 <= data[key - 1] <= 0x8F:
        pos = key - 1
    elif key >= 3 and data[key - 3] == 0xDE:
        pos = key - 3
    else:
        return None
    if array:
        if pos >= 1 and 0x91 <= data[pos - 1] <= 0x9F:
            pos -= 1
        elif pos >= 3 and data[pos - 3] == 0xDC:
            pos -= 3
        else:
            return None
    pos -= LENGTH_SIZE
    return pos if pos >= 0 else None


def _chain(data: bytes, pos: int) -> tuple[list[tuple[int, int]], int | None]:
    """The frames (start, stop) chained from ``pos`` to the end of ``data``, and where a last
    frame cut short starts (None: the chain ends exactly at the end); no frames when a length
    is not a frame's."""
    frames: list[tuple[int, int]] = []
    size = len(data)
    while pos < size:
        if pos + LENGTH_SIZE > size:
            return frames, pos
        (length,) = _LENGTH.unpack_from(data, pos)
        if length == 0 or length > MAX_FRAME_SIZE:
            return [], None
        stop = pos + LENGTH_SIZE + length
        if stop > size:
            return frames, pos
        frames.append((pos, stop))
        pos = stop
    return frames, None


class RecordingIndex:
    """Random access to a recording's events without holding them all: the file offset of each
    whole frame and the index of its first event, with the frames last decoded kept.

    ``update`` reads the frames written since the last call (the whole file the first time) in
    chunks of ``CHUNK_BYTES`` and hands their events to a callback, chunk by chunk, so indexing
    a 600 MB recording never holds more than a chunk's events. Events are decoded, range-checked
    and upgraded as ``read_recording`` does; a partial last frame is left for the next call
    (``pending_bytes``, and ``truncation`` words it as ``read_recording``'s warning).
    """

    CHUNK_BYTES = 1024 * 1024
    BLOCK_FRAMES = 64  # frames decoded together on a cache miss
    CACHE_EVENTS = 1024  # a slice of at most this many events is kept for the next look

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.format_version: int | None = None
        self._file: BinaryIO | None = None
        self._offsets = array("q")  # file offset of each whole frame's length prefix
        self._firsts = array("q")  # index of its first event
        self._count = 0  # events in whole frames
        self._end = 0  # file offset just after the last whole frame
        self._upgrade = SchemaUpgrade()
        self._range = DeclaredRange(self.path)
        self._block: tuple[int, list[Event]] = (0, [])  # (index of its first event, events)
        self.pending_bytes = 0
        self.following = True  # ``update`` reads on; False once ``stop_following``/``close``

    def __len__(self) -> int:
        return self._count

    @property
    def frames(self) -> int:
        return len(self._offsets)

    def truncation(self) -> str | None:
        """``read_recording``'s warning for the partial frame at the end (None: there is none)."""
        if self.format_version is None and self.pending_bytes:
            return (
                f"{self.path}: truncated header ({self.pending_bytes} of {HEADER_SIZE} bytes); "
                "no events"
            )
        if not self.pending_bytes:
            return None
        return (
            f"{self.path}: last frame truncated at byte {self._end} ({self.pending_bytes} "
            f"trailing bytes ignored); {self._count} events read"
        )

    def update(self, sink: Callable[[list[Event], int], None]) -> int:
        """Index the whole frames written since the last call; ``sink(events, index of the
        first)`` gets their events chunk by chunk. Returns how many were added (a missing file
        has none yet)."""
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # closed by close()
            except FileNotFoundError:
                return 0
            except OSError as exc:
                raise RecordingError(
                    f"{self.path}: cannot read recording ({exc.strerror})"
                ) from None
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        if self.format_version is None:
            header = os.pread(fd, HEADER_SIZE, 0)
            self.format_version = _check_header(self.path, header)
            self.pending_bytes = len(header)
            if self.format_version is None:
                return 0
            self._end = HEADER_SIZE
        added = 0
        while self._end < size:
            data = os.pread(fd, max(self.CHUNK_BYTES, self._next_frame_bytes(fd)), self._end)
            if not data:
                break
            events: list[Event] = []
            frames: list[tuple[int, int]] = []
            with _gc_paused():
                stop = _decode_frames(
                    self.path,
                    self.format_version,
                    memoryview(data),
                    0,
                    self._end,
                    events,
                    self._range,
                    frames,
                )
            if not frames:
                break  # a partial frame: wait for the rest
            self._upgrade.apply(events)
            first = self._count
            for offset, index in frames:
                self._offsets.append(offset)
                self._firsts.append(first + index)
            self._count += len(events)
            self._end += stop
            added += len(events)
            sink(events, first)
        self.pending_bytes = size - self._end
        return added

    def _next_frame_bytes(self, fd: int) -> int:
        """The length of the frame at ``_end`` with its prefix (0 when unknown yet)."""
        prefix = os.pread(fd, LENGTH_SIZE, self._end)
        if len(prefix) < LENGTH_SIZE:
            return 0
        (length,) = _LENGTH.unpack(prefix)
        return LENGTH_SIZE + min(length, MAX_FRAME_SIZE)

    def __getitem__(self, index: int) -> Event:
        first, events = self._block
        if not first <= index < first + len(events):
            self._block = self._decode(index, index + 1, self.BLOCK_FRAMES)
            first, events = self._block
        return events[index - first]

    def slice(self, start: int, stop: int) -> list[Event]:
        """``events[start:stop]``, decoded from the file (or the frames last decoded)."""
        start, stop = max(start, 0), min(stop, self._count)
        if start >= stop:
            return []
        first, events = self._block
        if first <= start and stop <= first + len(events):
            return events[start - first : stop - first]
        block_first, block = self._decode(start, stop, 0)
        if len(block) <= self.CACHE_EVENTS:
            self._block = (block_first, block)  # kept for the next look at these events
        return block[start - block_first : stop - block_first]

    def _decode(self, start: int, stop: int, extra_frames: int) -> tuple[int, list[Event]]:
        """The events of the frames holding ``[start, stop)`` (and ``extra_frames`` more)."""
        if self._file is None or self.format_version is None:
            raise IndexError(start)
        if self._file.closed:
            self._file = open(self.path, "rb")  # closed by close()
        lo = bisect_right(self._firsts, start) - 1
        hi = min(bisect_left(self._firsts, stop) + extra_frames, len(self._offsets))
        begin = self._offsets[lo]
        end = self._offsets[hi] if hi < len(self._offsets) else self._end
        data = os.pread(self._file.fileno(), end - begin, begin)
        if len(data) != end - begin:
            raise RecordingError(f"{self.path}: the recording was cut short while being read")
        events: list[Event] = []
        with _gc_paused():
            _decode_frames(
                self.path, self.format_version, memoryview(data), 0, begin, events, self._range
            )
        self._upgrade.apply(events)
        return self._firsts[lo], events

    def take(self, indices: Sequence[int]) -> list[Event]:
        """The events at ``indices`` (ascending), each frame holding some decoded once."""
        out: list[Event] = []
        i = 0
        block = self._block  # the cache is left as it was: these reads are scattered
        while i < len(indices):
            first, events = block
            if first <= indices[i] < first + len(events):
                out.append(events[indices[i] - first])
                i += 1
                continue
            # The next run of indices whose frames lie close together, decoded in one read.
            frame = bisect_right(self._firsts, indices[i]) - 1
            j = i + 1
            while j < len(indices):
                nxt = bisect_right(self._firsts, indices[j]) - 1
                if nxt - frame > self.BLOCK_FRAMES // 4:
                    break
                frame = nxt
                j += 1
            block = self._decode(indices[i], indices[j - 1] + 1, 0)
        return out

    def stop_following(self) -> None:
        self.following = False

    def close(self) -> None:
        """Close the file (reopened if events are looked at again); no more updates."""
        self.following = False
        if self._file is not None:
            self._file.close()


class RecordingFollower:
    """Reads a recording that is still being written: each ``poll`` returns the new whole frames."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.format_version: int | None = None
        self._file: BinaryIO | None = None
        self._buffer = bytearray()
        self._buffer_offset = 0  # file offset of self._buffer[0]
        self._upgrade = SchemaUpgrade()
        self._range = DeclaredRange(self.path)

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete trailing frame (or header) held back for the next poll."""
        return len(self._buffer)

    def poll(self) -> list[Event]:
        """Events completed since the last poll; a missing file simply has none yet."""
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # closed by close()
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise RecordingError(
                    f"{self.path}: cannot read recording ({exc.strerror})"
                ) from None
        self._buffer += self._file.read()
        if self.format_version is None:
            self.format_version = _check_header(self.path, self._buffer)
            if self.format_version is None:
                return []
            self._consume(HEADER_SIZE)
        events: list[Event] = []
        # The view is released before the buffer is resized; a first poll may read a long file.
        with memoryview(self._buffer) as view, _gc_paused():
            end = _decode_frames(
                self.path, self.format_version, view, 0, self._buffer_offset, events, self._range
            )
        self._consume(end)
        self._upgrade.apply(events)
        return events

    def _consume(self, n: int) -> None:
        del self._buffer[:n]
        self._buffer_offset += n

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> RecordingFollower:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _check_header(path: Path, data: bytes | bytearray) -> int | None:
    """The format version, or None while the header is incomplete (a prefix of a valid one)."""
    magic = bytes(data[: len(MAGIC)])
    if not MAGIC.startswith(magic):
        raise RecordingError(f"{path}: not an Overwatch recording (bad magic at byte 0)")
    if len(data) < HEADER_SIZE:
        return None
    version = data[len(MAGIC)]
    if version > FORMAT_VERSION:
        raise RecordingError(
            f"{path}: written with recording format version {version}, newer than this "
            f"build's {FORMAT_VERSION}; upgrade to read it"
        )
    if version < 1:
        raise RecordingError(
            f"{path}: invalid recording format version {version} at byte {len(MAGIC)}"
        )
    return version


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while decoding: 100k fresh structs otherwise trigger many useless
    collections (about a third of the decode time); events hold no reference cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _decode_frames(
    path: Path,
    version: int,
    data: memoryview,
    pos: int,
    base_offset: int,
    out: list[Event],
    declared: DeclaredRange,
    frames: list[tuple[int, int]] | None = None,
) -> int:
    """Append the events of every whole frame from ``data[pos:]`` to ``out``; return where the
    first partial frame starts (``len(data)`` when none). ``base_offset`` maps ``data`` back to
    file offsets; ``frames``, when given, gets (file offset, index in ``out``) of each frame."""
    size = len(data)
    unpack_length = _LENGTH.unpack_from
    # Bound methods: no wrapper call per frame. Version 1 frames hold one event, version 2 a list.
    decode: Callable[[memoryview], object]
    if version == 1:
        decode, add = contracts.EVENT_DECODER.decode, out.append
    else:
        decode, add = _BATCH_DECODER.decode, out.extend
    while pos + LENGTH_SIZE <= size:
        (length,) = unpack_length(data, pos)
        if length == 0 or length > MAX_FRAME_SIZE:
            raise RecordingError(
                f"{path}: frame at byte {base_offset + pos} claims {length} bytes; "
                "not a valid recording"
            )
        start = pos + LENGTH_SIZE
        stop = start + length
        if stop > size:
            break
        try:
            decoded = decode(data[start:stop])
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            raise RecordingError(
                f"{path}: frame at byte {base_offset + pos} does not decode ({exc})"
            ) from None
        if not decoded:  # an event struct is always truthy; an empty batch is not
            raise RecordingError(f"{path}: frame at byte {base_offset + pos} holds no events")
        first = len(out)
        add(decoded)
        declared.check(out, first, base_offset + pos)
        if frames is not None:
            frames.append((base_offset + pos, first))
        pos = stop
    return pos
