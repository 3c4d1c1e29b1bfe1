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

Reading parts of a recording (its ends for ``ps``, an index for replay) is in
``esper_engine.recording_index``.

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
import struct
import threading
from collections.abc import Callable, Iterator
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
