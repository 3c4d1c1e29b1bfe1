from __future__ import annotations

import _codecs
import builtins
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from esper_engine.tasks import DataError, load_task

N_PER_BATCH = 20
N_TEST = 10
NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
         b"dog", b"frog", b"horse", b"ship", b"truck"]  # fmt: skip


def batch_dict(first_id: int, n: int) -> dict:
    """A batch in the published layout; image k has R, G, B planes filled with k, k+1, k+2."""
    ids = np.arange(first_id, first_id + n)
    planes = np.stack([np.repeat(ids[:, None] + c, 1024, axis=1) for c in range(3)], axis=1)
    return {
        b"batch_label": b"training batch",
        b"labels": [int(i % 10) for i in ids],
        b"data": (planes.reshape(n, 3072) % 256).astype(np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in ids],
    }


def dump(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(root: Path) -> Path:
    """A tiny cifar-10-batches-py directory under root, in exactly the real file format."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir()
    for b in range(5):
        dump(directory / f"data_batch_{b + 1}", batch_dict(b * N_PER_BATCH, N_PER_BATCH))
    dump(directory / "test_batch", batch_dict(200, N_TEST))
    dump(directory / "batches.meta", {b"label_names": NAMES, b"num_cases_per_batch": 20})
    return directory


def load_error(data_dir: Path | None) -> str:
    with pytest.raises(DataError) as info:
        load_task("cifar10", data_dir=None if data_dir is None else str(data_dir))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_reads_the_batches_from_the_parent_or_the_directory(tmp_path: Path) -> None:
    directory = write_cifar(tmp_path)
    for data_dir in (tmp_path, directory):
        task = load_task("cifar10", data_dir=str(data_dir))
        assert task.kind == "classification" and task.host_kind == "cnn"
        assert task.train_x.shape == (5 * N_PER_BATCH, 3, 32, 32)
        assert task.train_x.dtype == torch.uint8
        # the test batch's first half validates, its second half is the held-out report split
        assert task.val_x.shape == (N_TEST // 2, 3, 32, 32)
        assert task.report_x is not None and task.report_x.shape == (N_TEST // 2, 3, 32, 32)
        assert task.val_y.tolist() + task.report_y.tolist() == [i % 10 for i in range(N_TEST)]
        assert task.train_y.tolist() == [i % 10 for i in range(100)]
        # Rows are channel planes: image 7 has R = 7, G = 8, B = 9 everywhere.
        assert task.train_x[7, 0].unique().tolist() == [7]
        assert task.train_x[7, 2].unique().tolist() == [9]
        assert task.val_x[3, 1].unique().tolist() == [204]


def python2_meta() -> bytes:
    """batches.meta as Python 2 wrote it: str keys and names as SHORT_BINSTRING opcodes."""

    def short_binstring(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    names = b"".join(short_binstring(n) for n in NAMES)
    return b"\x80\x02}" + short_binstring(b"label_names") + b"](" + names + b"es."


def test_files_written_by_python2_and_numpy1_load(tmp_path: Path) -> None:
    directory = write_cifar(tmp_path)
    (directory / "batches.meta").write_bytes(python2_meta())
    for name in ("data_batch_2", "test_batch"):  # numpy 1.x named its internals numpy.core
        path = directory / name
        data = path.read_bytes()
        assert b"numpy._core.multiarray" in data
        path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    task = load_task("cifar10", data_dir=str(tmp_path))
    assert task.train_x[N_PER_BATCH + 1, 1].unique().tolist() == [N_PER_BATCH + 2]
    assert task.val_y.tolist() + task.report_y.tolist() == [i % 10 for i in range(N_TEST)]


def test_small_scale_keeps_a_seeded_subset(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    a = load_task("cifar10", data_dir=str(tmp_path), scale="small", seed=0)
    b = load_task("cifar10", data_dir=str(tmp_path), scale="small", seed=0)
    assert torch.equal(a.train_x, b.train_x)
    assert sorted(a.train_x[:, 0, 0, 0].tolist()) == list(range(100))
    labels = a.train_x[:, 0, 0, 0].long() % 10
    assert torch.equal(a.train_y, labels)  # images keep their labels


def test_prepare_uses_cifar_statistics(tmp_path: Path) -> None:
    task = load_task("cifar10", data_dir=str(write_cifar(tmp_path)))
    x = task.prepare(torch.full((1, 3, 32, 32), 255, dtype=torch.uint8))
    expected = [(1 - m) / s for m, s in zip(task.pixel_mean, task.pixel_std, strict=True)]
    assert x[0, :, 0, 0].tolist() == pytest.approx(expected, rel=1e-5)


def test_missing_directory_or_file_names_what_was_expected(tmp_path: Path) -> None:
    assert "data directory" in load_error(None)
    assert "data_batch_1" in load_error(tmp_path / "nowhere")
    directory = write_cifar(tmp_path)
    (directory / "data_batch_3").unlink()
    message = load_error(tmp_path)
    assert "data_batch_1, data_batch_2, data_batch_3" in message and "batches.meta" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop(b"data"), "no 'data' entry"),
        (lambda d: d.update({b"data": np.zeros((20, 100), np.uint8)}), "expected (N, 3072)"),
        (lambda d: d.update({b"data": np.zeros((20, 3072), np.float32)}), "uint8 array"),
        (lambda d: d.update({b"labels": [0, 1]}), "one label per image"),
        (lambda d: d.update({b"labels": [12] * 20}), "labels outside 0..9"),
        # issue 21: damaged labels gave tracebacks or slipped through as other classes
        (lambda d: d.update({b"labels": [None] * 20}), "'labels' should be class numbers 0..9"),
        (lambda d: d.update({b"labels": [2**70] * 20}), f"found {2**70} at index 0"),
        (lambda d: d.update({b"labels": [1] * 19 + [9.9]}), "found 9.9 at index 19"),
        (lambda d: d.update({b"labels": [True] * 20}), "found True at index 0"),
        (lambda d: d.update({b"labels": ["x"] * 20}), "found 'x' at index 0"),
        (lambda d: d.update({b"labels": np.zeros((20, 2), np.int64)}), "of shape (20, 2)"),
        (lambda d: d.update({b"labels": np.full(20, 9.9)}), "an array of float64"),
        (lambda d: d.update({b"labels": np.full(20, 10, np.uint8)}), "labels outside 0..9"),
    ],
)
def test_malformed_batches_are_refused(tmp_path: Path, change, expected: str) -> None:
    directory = write_cifar(tmp_path)
    batch = batch_dict(40, N_PER_BATCH)
    change(batch)
    dump(directory / "data_batch_3", batch)
    message = load_error(tmp_path)
    assert "data_batch_3" in message and expected in message


def test_an_integer_label_array_loads(tmp_path: Path) -> None:
    directory = write_cifar(tmp_path)
    batch = batch_dict(40, N_PER_BATCH)
    batch[b"labels"] = np.array(batch[b"labels"], dtype=np.uint8)
    dump(directory / "data_batch_3", batch)
    task = load_task("cifar10", data_dir=str(tmp_path))
    assert task.train_y.dtype == torch.int64 and task.train_y.shape == (5 * N_PER_BATCH,)
    assert task.train_y.tolist() == [i % 10 for i in range(5 * N_PER_BATCH)]


def test_non_pickle_and_non_dict_files_are_refused(tmp_path: Path) -> None:
    directory = write_cifar(tmp_path)
    (directory / "test_batch").write_bytes(b"not a pickle at all")
    assert "test_batch is not a CIFAR-10 python batch" in load_error(tmp_path)
    dump(directory / "test_batch", [1, 2, 3])
    assert "should hold a dict" in load_error(tmp_path)
    dump(directory / "batches.meta", {b"label_names": NAMES[:3]})
    assert "label_names" in load_error(tmp_path)


class _Exploit:
    """Unpickling this calls `func(*args)`: what a tampered batch file would do."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    ("make_payload", "refused"),
    [
        (lambda marker: _Exploit(os.system, f"touch {marker}"), os.system.__module__ + ".system"),
        (
            lambda marker: _Exploit(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
            "__builtin__.eval",  # protocol 2 names builtins by their Python 2 module
        ),
    ],
)
def test_code_in_a_tampered_batch_never_runs(tmp_path: Path, make_payload, refused) -> None:
    directory = write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    batch = batch_dict(0, N_PER_BATCH)
    batch[b"filenames"] = make_payload(marker)  # hidden inside an otherwise valid batch
    dump(directory / "data_batch_1", batch)
    message = load_error(tmp_path)
    assert f"refuses to unpickle {refused}" in message
    assert not marker.exists()


def test_the_eval_payload_is_live_under_a_plain_unpickler(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _Exploit(builtins.eval, f"open({str(marker)!r}, 'w').close()")
    pickle.loads(pickle.dumps(payload, protocol=2))  # what the restricted unpickler prevents
    assert marker.exists()


def test_codecs_encode_is_limited_to_latin1(tmp_path: Path) -> None:
    directory = write_cifar(tmp_path)
    dump(directory / "batches.meta", {b"label_names": _Exploit(_codecs.encode, "x", "zlib_codec")})
    assert "refuses to unpickle _codecs.encode with encoding 'zlib_codec'" in load_error(tmp_path)
