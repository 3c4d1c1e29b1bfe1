"""Reading without decoding everything: ``read_ends`` gives the first frame and the last frames
(what `overwatch ps` shows) after decoding a few KiB from the end; ``RecordingIndex`` keeps the
offset of every frame and decodes events when they are looked at (replay), so neither holds a
long recording's events. Frames chain only forward, so the tail's first frame is found by
candidates (a length, an array header, an event's ``"type"`` key) whose chain of lengths reaches
the end of the file and whose frames decode; bytes inside another frame that mimic all of that
(only text crafted to) could at worst make ``ps`` show that text's figures: replay and export
read from the start and never guess.
"""

from __future__ import annotations

import os
import re
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import msgspec

from esper_engine import contracts
from esper_engine.contracts import Event
from esper_engine.recording import (
    _BATCH_DECODER,
    _LENGTH,
    BATCH_BYTES,
    HEADER_SIZE,
    LENGTH_SIZE,
    MAX_FRAME_SIZE,
    DeclaredRange,
    RecordingError,
    SchemaUpgrade,
    _check_header,
    _decode_frames,
    _gc_paused,
    read_recording,
)

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
