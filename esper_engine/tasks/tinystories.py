"""tinystories: a byte-level language model on local TinyStories files.

Reads the published formats from `data_dir`: `.txt` files whose stories are separated by a line
`<|endoftext|>` (TinyStories-train.txt, TinyStories-valid.txt) and `.json` shards holding a list of
records with a `story` field (TinyStories_all_data/data00.json, ...). The files are gigabytes, so
they are streamed and reading stops at a byte budget. Files whose name says "valid"/"val" are the
validation set; without one, the last stories read are split off for validation. The report split
(issue 24) is the last validation stories read, beyond the validation budget.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path

from esper_engine.tasks import STORY_SEPARATOR, DataError, Task, byte_lm_task

SEQ_LEN = 64
# Bytes of story text read for (train, validation); the files themselves are far larger.
BUDGETS = {"default": (8_000_000, 1_000_000), "small": (32_000, 8_000)}
HOST_LR = 0.2  # as synthetic-stories: same byte-level Transformer host
SEED_LR = 0.2
# The report split is read after the validation stories: 1/REPORT_SHARE of the validation budget
REPORT_SHARE = 4
END_OF_TEXT = b"<|endoftext|>"
JSON_CHUNK = 1 << 20  # characters read at a time from a JSON shard
MAX_RECORD_CHARS = 64 << 20  # a single JSON record larger than this is not a story
LINE_CHUNK = 1 << 20  # bytes of a .txt line read at a time (a file may have no line breaks)
EXPECTED = "expected TinyStories .txt files (stories split by <|endoftext|>) or .json shards"
_VALID_NAME = re.compile(r"valid|(^|[-_.])val([-_.]|$)", re.IGNORECASE)


def load(
    *,
    data_dir: str | None = None,
    seed: int = 0,
    scale: str = "default",
    max_bytes: int | None = None,
    max_val_bytes: int | None = None,
) -> Task:
    """Stream stories up to the byte budgets (seed is unused: files are read in name order)."""
    train_budget, val_budget = BUDGETS[scale]
    train_budget = train_budget if max_bytes is None else max_bytes
    val_budget = val_budget if max_val_bytes is None else max_val_bytes
    report_budget = val_budget // REPORT_SHARE
    train_files, val_files = find_files(data_dir)
    if val_files:
        train = read_stories(train_files, train_budget)
        val = read_stories(val_files, val_budget + report_budget)
    else:
        both = val_budget + report_budget
        train, val = split_tail(read_stories(train_files, train_budget + both), both)
    val, report = split_report(val, report_budget)
    return byte_lm_task(
        "tinystories",
        b"".join(s + STORY_SEPARATOR for s in train),
        b"".join(s + STORY_SEPARATOR for s in val),
        seq_len=SEQ_LEN,
        host_lr=HOST_LR,
        seed_lr=SEED_LR,
        report_bytes=None if report is None else b"".join(s + STORY_SEPARATOR for s in report),
    )


def split_report(stories: list[bytes], budget: int) -> tuple[list[bytes], list[bytes] | None]:
    """The report split: the last validation stories read (about ``budget`` bytes, at most a
    1/(REPORT_SHARE + 1) share of them: validation keeps the rest), held out from validation;
    None when there are too few stories or bytes to spare."""
    budget = min(budget, sum(len(s) for s in stories) // (REPORT_SHARE + 1))
    if len(stories) < 2 or budget < SEQ_LEN + 1:
        return stories, None
    val, report = split_tail(stories, budget)
    if sum(len(s) + 1 for s in report) < SEQ_LEN + 1:
        return stories, None
    return val, report


def find_files(data_dir: str | None) -> tuple[list[Path], list[Path]]:
    """(train files, validation files) in data_dir, .txt before .json, each in name order."""
    if data_dir is None:
        raise DataError(f"tinystories: needs a data directory; {EXPECTED}")
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DataError(f"tinystories: {directory} is not a directory; {EXPECTED}")
    files = [p for ext in ("*.txt", "*.json") for p in sorted(directory.glob(ext)) if p.is_file()]
    train = [p for p in files if not _VALID_NAME.search(p.stem)]
    val = [p for p in files if _VALID_NAME.search(p.stem)]
    if not train:
        raise DataError(f"tinystories: {EXPECTED} in {directory}")
    return train, val


def read_stories(paths: list[Path], budget: int) -> list[bytes]:
    """Stories from the files in order until `budget` bytes; the last one may be cut short."""
    stories: list[bytes] = []
    total = 0
    for path in paths:
        try:
            for story in iter_stories(path, budget - total):
                story = story[: budget - total]
                stories.append(story)
                total += len(story)
                if total >= budget:
                    return stories
        except UnicodeDecodeError as exc:
            raise DataError(
                f"tinystories: {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x})"
            ) from None
        except OSError as exc:
            raise DataError(f"tinystories: cannot read {path}: {exc.strerror}") from None
    if not stories:
        raise DataError(f"tinystories: no stories in {', '.join(p.name for p in paths)}")
    return stories


def iter_stories(path: Path, limit: int) -> Iterator[bytes]:
    """Non-empty stories of one file as UTF-8 bytes (NUL removed: it separates stories).

    `limit` caps how much of one story is read: a text file without separators is one story.
    """
    raw = iter_json_stories(path) if path.suffix == ".json" else iter_txt_stories(path, limit)
    for story in raw:
        story = story.replace(STORY_SEPARATOR, b"").strip()
        if story:
            yield story


def iter_txt_stories(path: Path, limit: int) -> Iterator[bytes]:
    """Stories of a text file, read line by line; a story stops growing at `limit` bytes.

    Lines are read in pieces of at most ``LINE_CHUNK`` bytes: a file without line breaks is one
    line, and reading it whole would take the file's size in memory before the limit is seen.
    Every piece is checked as UTF-8 as it is read (incrementally, so a character cut by the
    limit is no error).
    """
    utf8 = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        lines: list[bytes] = []
        size = 0
        at_line_start = True
        while piece := f.readline(LINE_CHUNK):
            utf8.decode(piece)  # UnicodeDecodeError: read_stories names the file
            if at_line_start and piece.strip() == END_OF_TEXT:
                yield b"".join(lines)
                lines, size = [], 0
            elif size < limit:  # a file without separators must not be read whole
                lines.append(piece)
                size += len(piece)
            else:
                break
            at_line_start = piece.endswith(b"\n")
        yield b"".join(lines)


def iter_json_stories(path: Path) -> Iterator[bytes]:
    """The `story` field of each record of a JSON shard."""
    for record in iter_json_records(path):
        story = record.get("story") if isinstance(record, dict) else None
        if not isinstance(story, str):
            raise DataError(f"tinystories: {path} should hold records with a 'story' string")
        yield story.encode("utf-8")


def iter_json_records(path: Path) -> Iterator[object]:
    """Elements of a top-level JSON list, decoded one at a time so a shard is never loaded whole."""
    decoder = json.JSONDecoder()
    not_a_list = DataError(f"tinystories: {path} should hold a JSON list of story records")
    with path.open(encoding="utf-8") as f:
        buf, pos = f.read(JSON_CHUNK), 0

        def next_char() -> str:
            """Skip whitespace, refilling the buffer; '' at the end of the file."""
            nonlocal buf, pos
            while True:
                while pos < len(buf) and buf[pos].isspace():
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                buf, pos = f.read(JSON_CHUNK), 0
                if not buf:
                    return ""

        if next_char() != "[":
            raise not_a_list
        pos += 1
        if next_char() == "]":
            return
        while True:
            try:
                record, pos = decoder.raw_decode(buf, pos)
            except RecursionError:  # [[[[...: deeper than the parser goes; no story is
                raise DataError(f"tinystories: {path} holds JSON nested too deeply") from None
            except json.JSONDecodeError:
                more = f.read(JSON_CHUNK)  # the record may run past the buffer: read on
                if not more or len(buf) - pos > MAX_RECORD_CHARS:
                    raise not_a_list from None
                buf, pos = buf[pos:] + more, 0
                continue
            yield record
            separator = next_char()
            if separator == "]":
                return
            if separator != ",":
                raise not_a_list
            pos += 1
            next_char()  # make sure the next record starts inside the buffer


def split_tail(stories: list[bytes], val_budget: int) -> tuple[list[bytes], list[bytes]]:
    """Split the last stories (about val_budget bytes, at least one) off for validation."""
    if len(stories) < 2:
        raise DataError("tinystories: need at least 2 stories to split off a validation set")
    cut, size = len(stories) - 1, len(stories[-1])
    while cut > 1 and size < val_budget:
        cut -= 1
        size += len(stories[cut])
    return stories[:cut], stories[cut:]
