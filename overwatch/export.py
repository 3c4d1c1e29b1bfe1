"""Export a recording for other tools: every event as JSON Lines, the epoch summaries as CSV, or
the figures as TensorBoard event files (``overwatch.tensorboard_export``, an optional extra).

JSON Lines: one object per event with the struct tag under ``"type"`` and every field, nested
structs as objects. JSON has no inf/nan, so msgspec writes non-finite floats as ``null`` (an
infinite perplexity or loss at panic comes out as ``null``); every line stays valid JSON.

JSON Lines keeps the recorded fields as they are: ``env``, ``episode``, ``epoch`` (and ``batch``)
are indices from 0, as in the recording (the README says so).

CSV: one row per ``EpochSummary``: a column per field of the struct (``CSV_COLUMNS``, in
declaration order, so a field added to ``EpochSummary`` is exported with no change here), with
``env``, ``episode`` and ``epoch`` counted from 1 as the console shows them (``FROM_ONE``), then
one per field of ``SlotState`` (``SLOT_FIELDS``) for every slot in the run, named
``<slot_id>.<field>``, and last ``notes``: the operator's notes made during that epoch about that
env or the whole run (``OperatorNote``), joined by `` | ``. None becomes an empty cell; non-finite
floats are written as ``inf``/``nan``.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any

import msgspec

from esper_engine.contracts import EpochSummary, Event, OperatorNote, RunStarted, SlotState
from esper_engine.recording import read_recording

FORMATS = ("jsonl", "csv", "tensorboard")
SLOTS_FIELD = "slots"  # the nested list: one group of columns per slot instead
CSV_COLUMNS = tuple(f.name for f in msgspec.structs.fields(EpochSummary) if f.name != SLOTS_FIELD)
SLOT_FIELDS = tuple(f.name for f in msgspec.structs.fields(SlotState) if f.name != "slot_id")
FROM_ONE = frozenset({"env", "episode", "epoch"})  # indices from 0 in the recording, 1 in a CSV
NOTES_COLUMN = "notes"


def export_recording(
    path: str | os.PathLike[str],
    fmt: str = "jsonl",
    output: str | os.PathLike[str] | None = None,
) -> int:
    """Write the recording at ``path`` as ``fmt`` to ``output`` (stdout when None; a directory,
    required, for TensorBoard); return the number of lines, rows (CSV header excluded) or
    TensorBoard points written. A truncation warning goes to stderr."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "tensorboard":
        from overwatch.tensorboard_export import load_writer_class

        load_writer_class()  # a missing extra is said before the recording is read
        if output is None:
            raise ValueError("--format tensorboard writes a directory: give --output DIR")
    recording = read_recording(path)
    if recording.warning:
        print(f"warning: {recording.warning}", file=sys.stderr)
    if fmt == "tensorboard":
        from overwatch.tensorboard_export import write_tensorboard

        return write_tensorboard(recording.events, output)
    with _open_output(output) as out:
        if fmt == "jsonl":
            return write_jsonl(recording.events, out)
        return write_csv(recording.events, out)


def _open_output(output: str | os.PathLike[str] | None) -> IO[str] | nullcontext[IO[str]]:
    """The output file (parent directories created, like the recorder's), or stdout."""
    if output is None:
        return nullcontext(sys.stdout)
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    return open(target, "w", encoding="utf-8", newline="")


def write_jsonl(events: Iterable[Event], out: IO[str]) -> int:
    """One JSON object per event; returns the number of lines."""
    encode = msgspec.json.Encoder().encode
    count = 0
    for event in events:
        out.write(encode(event).decode())
        out.write("\n")
        count += 1
    return count


def write_csv(events: Iterable[Event], out: IO[str]) -> int:
    """One row per ``EpochSummary``; returns the number of rows (header excluded)."""
    events = list(events)
    summaries = [e for e in events if isinstance(e, EpochSummary)]
    slot_ids = _slot_ids(events)
    writer = csv.writer(out, lineterminator="\n")
    notes = _notes_by_epoch(events)
    slot_columns = (f"{s}.{f}" for s in slot_ids for f in SLOT_FIELDS)
    writer.writerow([*CSV_COLUMNS, *slot_columns, NOTES_COLUMN])
    for summary in summaries:
        about = notes.get((summary.episode, summary.epoch), [])
        said = " | ".join(n.text for n in about if n.env in (None, summary.env))
        writer.writerow([*_csv_row(summary, slot_ids), said])
    return len(summaries)


def _notes_by_epoch(events: list[Event]) -> dict[tuple[int, int], list[OperatorNote]]:
    notes: dict[tuple[int, int], list[OperatorNote]] = {}
    for event in events:
        if isinstance(event, OperatorNote):
            notes.setdefault((event.episode, event.epoch), []).append(event)
    return notes


def _slot_ids(events: list[Event]) -> list[str]:
    """Slot ids in depth order from ``RunStarted``, then any others in order of appearance."""
    seen: dict[str, None] = {}
    for event in events:
        if isinstance(event, RunStarted):
            seen.update(dict.fromkeys(event.slot_ids))
        elif isinstance(event, EpochSummary):
            seen.update(dict.fromkeys(slot.slot_id for slot in event.slots))
    return list(seen)


def _csv_row(summary: EpochSummary, slot_ids: list[str]) -> list[Any]:
    row = [
        _cell(getattr(summary, column) + 1 if column in FROM_ONE else getattr(summary, column))
        for column in CSV_COLUMNS
    ]
    slots = {slot.slot_id: slot for slot in summary.slots}
    for slot_id in slot_ids:
        slot = slots.get(slot_id)
        row.extend(_cell(getattr(slot, f)) if slot else "" for f in SLOT_FIELDS)
    return row


def _cell(value: Any) -> Any:
    return "" if value is None else value
