from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from esper_engine.tasks import STORY_SEPARATOR, DataError, load_task, tinystories
from esper_engine.tasks.tinystories import iter_json_records

END = "<|endoftext|>"


def make_stories(prefix: str, n: int) -> list[str]:
    return [
        f"{prefix} story {i}: Once upon a time, a cat named Tom found a ball.\n\n"
        f"Tom was happy. The end of story {i}."
        for i in range(n)
    ]


def write_txt(path: Path, stories: list[str]) -> None:
    path.write_text("".join(f"{s}\n{END}\n" for s in stories), encoding="utf-8")


def write_json(path: Path, stories: list[str]) -> None:
    records = [{"story": s, "instruction": {"words": ["cat"]}, "source": "GPT-4"} for s in stories]
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")


def stream(x: torch.Tensor, y: torch.Tensor) -> bytes:
    """The byte stream the windows were cut from (up to the last full window)."""
    return bytes(torch.cat([x.reshape(-1), y[-1, -1:]]).tolist())


def stories_in(x: torch.Tensor, y: torch.Tensor) -> list[str]:
    return [s.decode() for s in stream(x, y).split(STORY_SEPARATOR)]


def load_error(data_dir: Path | None) -> str:
    with pytest.raises(DataError) as info:
        load_task("tinystories", data_dir=None if data_dir is None else str(data_dir))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_txt_train_and_valid_files(tmp_path: Path) -> None:
    train, valid = make_stories("train", 40), make_stories("valid", 10)
    write_txt(tmp_path / "TinyStories-train.txt", train)
    write_txt(tmp_path / "TinyStories-valid.txt", valid)
    task = load_task("tinystories", data_dir=str(tmp_path), scale="small")
    assert task.kind == "language_model" and task.host_kind == "transformer"
    assert task.num_classes == 256 and task.random_guess_loss == pytest.approx(math.log(256))
    assert torch.equal(task.train_x[:, 1:], task.train_y[:, :-1])
    got = stories_in(task.train_x, task.train_y)
    assert got[:-1] == [s.strip() for s in train[: len(got) - 1]]  # the tail is cut at a window
    assert len(got) > 30
    assert stories_in(task.val_x, task.val_y)[0] == valid[0]


def test_reading_stops_at_the_byte_budget(tmp_path: Path) -> None:
    train = make_stories("train", 200)
    write_txt(tmp_path / "TinyStories-train.txt", train)
    write_txt(tmp_path / "TinyStories-valid.txt", make_stories("valid", 200))
    task = tinystories.load(data_dir=str(tmp_path), max_bytes=1000, max_val_bytes=300)
    text = stream(task.train_x, task.train_y)
    assert len(text) <= 1000 + text.count(STORY_SEPARATOR)
    per_story = len(train[0].encode()) + 1
    assert len(text) > 1000 - per_story  # stopped near the budget, not before it
    assert len(stream(task.val_x, task.val_y)) <= 300 + 10


def test_json_shards_without_valid_file_split_off_the_tail(tmp_path: Path) -> None:
    first, second = make_stories("a", 30), make_stories("b", 30)
    write_json(tmp_path / "data00.json", first)
    write_json(tmp_path / "data01.json", second)
    task = tinystories.load(data_dir=str(tmp_path), max_bytes=100_000, max_val_bytes=500)
    train, val = stories_in(task.train_x, task.train_y), stories_in(task.val_x, task.val_y)
    everything = first + second
    assert train[:-1] == everything[: len(train) - 1]  # the last one is cut at a window edge
    assert val[0] == everything[len(train)]  # validation starts where training stops
    # the held-out report split is the last validation stories read: it starts where
    # validation's last whole story ends and runs to the end of what was read
    report = stories_in(task.report_x, task.report_y)
    last = everything.index(val[-2]) + 1  # validation's last story, cut at a window edge
    assert everything[last].startswith(val[-1])
    assert report[0] == everything[last + 1]
    assert report[-2] == everything[-2]


@pytest.mark.parametrize(("val_budget", "n_val"), [(0, 1), (100, 1), (101, 2), (250, 3)])
def test_split_tail_takes_whole_stories_up_to_the_budget(val_budget: int, n_val: int) -> None:
    stories = [bytes([65 + i]) * 100 for i in range(10)]
    train, val = tinystories.split_tail(stories, val_budget)
    assert val == stories[10 - n_val :] and train == stories[: 10 - n_val]


def test_json_records_are_streamed_across_buffer_refills(tmp_path, monkeypatch) -> None:
    path = tmp_path / "data00.json"
    write_json(path, make_stories("x", 12))
    monkeypatch.setattr(tinystories, "JSON_CHUNK", 7)  # records straddle many refills
    assert list(iter_json_records(path)) == json.loads(path.read_text())


def test_a_shard_is_not_read_past_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "data00.json"
    write_json(path, make_stories("x", 3000))
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # a broken tail that json.load would reject
    task = tinystories.load(data_dir=str(tmp_path), max_bytes=5000, max_val_bytes=1000)
    assert len(stories_in(task.train_x, task.train_y)) > 10


def test_txt_without_separators_is_one_story_capped_at_the_budget(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("all work and no play makes a dull story\n" * 5000)
    write_txt(tmp_path / "big-valid.txt", make_stories("valid", 3))
    task = tinystories.load(data_dir=str(tmp_path), max_bytes=2000)
    text = stream(task.train_x, task.train_y)
    assert 2000 - 64 < len(text) <= 2001 and STORY_SEPARATOR not in text[:-1]


def test_missing_or_empty_directory_names_the_expected_files(tmp_path: Path) -> None:
    assert "data directory" in load_error(None)
    assert "not a directory" in load_error(tmp_path / "nowhere")
    message = load_error(tmp_path)
    assert ".txt" in message and ".json" in message and "<|endoftext|>" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"story": "not a list"}', "JSON list of story records"),
        ('[{"story": "one"}, {"text": "two"}]', "records with a 'story' string"),
        ('[{"story": "one"}, {"story": "tw', "JSON list of story records"),
        ('[{"story": "one"} {"story": "two"}]', "JSON list of story records"),
        ("[]", "no stories"),
    ],
)
def test_malformed_json_is_refused(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "data00.json").write_text(content, encoding="utf-8")
    message = load_error(tmp_path)
    assert expected in message


def test_non_utf8_json_and_too_little_text_are_refused(tmp_path: Path) -> None:
    (tmp_path / "data00.json").write_bytes(b'[{"story": "caf\xe9"}]')
    assert "not UTF-8" in load_error(tmp_path)
    (tmp_path / "data00.json").unlink()
    write_txt(tmp_path / "tiny.txt", ["a short one", "and another"])
    assert "need at least 65 bytes" in load_error(tmp_path)


# --- damaged files (issue 21): one line naming the file, bounded memory and time ----------------


def test_json_nested_deeper_than_the_parser_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "data00.json"
    path.write_text("[" + "[" * 100_000 + "]" * 100_000 + "]", encoding="utf-8")
    message = load_error(tmp_path)
    assert str(path) in message and "nested too deeply" in message


def test_a_txt_without_line_breaks_is_read_only_up_to_the_budget(tmp_path: Path) -> None:
    """A 16 MB file of one line: reading stops at the budget instead of reading the line whole
    (512 MB took 101 s and 1.3 GB). Every read is recorded: none may be large."""
    path = tmp_path / "one-line.txt"
    with path.open("wb") as f:
        f.write(b"x" * (16 << 20))
    write_txt(tmp_path / "one-valid.txt", make_stories("valid", 3))
    reads: list[int] = []
    real_open = Path.open

    def counting_open(self, mode="r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        return _Counting(handle, reads) if self == path else handle

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "open", counting_open)
        task = tinystories.load(data_dir=str(tmp_path), max_bytes=4000)
    assert len(stream(task.train_x, task.train_y)) <= 4001
    assert reads and sum(reads) < (4 << 20), sum(reads)  # a few MB at most, never the file


class _Counting:
    """A binary file whose reads are counted (bytes returned per call)."""

    def __init__(self, handle, reads: list[int]) -> None:
        self._handle, self._reads = handle, reads

    def readline(self, *args):
        line = self._handle.readline(*args)
        self._reads.append(len(line))
        return line

    def read(self, *args):
        data = self._handle.read(*args)
        self._reads.append(len(data))
        return data

    def __iter__(self):
        return iter(self.readline, b"")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


@pytest.mark.parametrize("name", ["stories.txt", "stories-valid.txt"])
def test_non_utf8_text_is_refused_naming_the_file(tmp_path: Path, name: str) -> None:
    write_txt(tmp_path / "train.txt", make_stories("train", 20))
    path = tmp_path / name
    path.write_bytes(b"once upon a time\n\xff\xfe\x00 caf\xe9\n<|endoftext|>\n")
    message = load_error(tmp_path)
    assert str(path) in message and "not UTF-8" in message


def test_a_character_cut_by_the_budget_is_not_an_encoding_error(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("\u00e9" * 3000 + "\n", encoding="utf-8")  # 2 bytes each
    write_txt(tmp_path / "big-valid.txt", make_stories("valid", 3))
    task = tinystories.load(data_dir=str(tmp_path), max_bytes=2001)  # cuts one in half
    assert len(stream(task.train_x, task.train_y)) > 1000
