"""cifar10: the 10-class image set, read from a local `cifar-10-batches-py/` directory.

The python batches are pickles. They are read with an unpickler that can build only what the
format holds (dicts, lists, bytes, ints and uint8 numpy arrays): any other global in the stream is
refused before anything is called, so a tampered file cannot run code.
"""

from __future__ import annotations

import _codecs
import io
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from esper_engine.tasks import DataError, Task

DIR_NAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
NUM_CLASSES = 10
PIXELS = 3 * 32 * 32
SMALL = (512, 256)  # train, validation images kept at scale="small"
# Published per-channel statistics of the CIFAR-10 training set.
PIXEL_MEAN = (0.4914, 0.4822, 0.4465)
PIXEL_STD = (0.2470, 0.2435, 0.2616)
HOST_LR = 0.03
SEED_LR = 0.03
EXPECTED = f"expected {', '.join(TRAIN_FILES)}, {TEST_FILE} and {META_FILE}"


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for `_codecs.encode`, which protocol-2 pickles use to rebuild bytes."""
    if encoding not in ("latin1", "latin-1"):
        raise DataError(f"cifar10: refuses to unpickle _codecs.encode with encoding {encoding!r}")
    return _codecs.encode(text, encoding)


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2 moved the array internals to numpy._core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# The only globals a CIFAR-10 batch refers to, mapped to the objects to use. Both numpy module
# names appear in the wild (files written under numpy 1.x and 2.x).
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler whose global lookups are limited to `_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(f"cifar10: refuses to unpickle {module}.{name}") from None


def read_batch(path: Path) -> dict:
    """Unpickle one batch file with the restricted unpickler; bytes keys as in the format."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cifar10: cannot read {path}: {exc.strerror}") from None
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # any unpickling failure means the file is not a CIFAR batch
        raise DataError(f"cifar10: {path} is not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"cifar10: {path} should hold a dict, found {type(obj).__name__}")
    return obj


def _field(batch: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):  # the published files use bytes keys; accept str keys too
        if k in batch:
            return batch[k]
    raise DataError(f"cifar10: {path} has no '{key}' entry")


def images_and_labels(path: Path) -> tuple[Tensor, Tensor]:
    """uint8 [N,3,32,32] images and int64 [N] labels of one batch file, checked."""
    batch = read_batch(path)
    data = _field(batch, "data", path)
    labels = _field(batch, "labels", path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DataError(f"cifar10: {path} 'data' should be a uint8 array of shape (N, {PIXELS})")
    if data.shape[1] != PIXELS:
        raise DataError(f"cifar10: {path} 'data' has shape {data.shape}, expected (N, {PIXELS})")
    y = _labels(labels, len(data), path)
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # rows are R, G, B planes
    return x, y


def _labels(labels: object, n: int, path: Path) -> Tensor:
    """int64 [n] class numbers from a batch's 'labels': a list of ints, as published, or a 1-D
    integer array. Anything else (None, 9.9, True, 'x', an (N, 2) array) is refused, not cast:
    a cast would turn 9.9 into class 9 and True into class 1 without a word."""
    wanted = f"cifar10: {path} 'labels' should be class numbers 0..{NUM_CLASSES - 1}"
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"{wanted}, found an array of {labels.dtype} of shape {labels.shape}")
        values = labels
    elif isinstance(labels, list):
        for i, label in enumerate(labels):
            if type(label) is not int:  # bool is an int subclass: True is not a class
                raise DataError(f"{wanted}, found {label!r} at index {i}")
        values = labels
    else:
        raise DataError(f"{wanted}, found {type(labels).__name__}")
    if len(values) != n:
        raise DataError(f"cifar10: {path} should have one label per image ({n})")
    if n and (min(values) < 0 or max(values) >= NUM_CLASSES):
        i = next(i for i, v in enumerate(values) if not 0 <= v < NUM_CLASSES)
        raise DataError(
            f"cifar10: {path} has labels outside 0..{NUM_CLASSES - 1}: found {values[i]} at "
            f"index {i}"
        )
    return torch.as_tensor(np.asarray(values, dtype=np.int64))


def find_dir(data_dir: str | None) -> Path:
    """The batches directory: data_dir itself or its `cifar-10-batches-py` child."""
    if data_dir is None:
        raise DataError(f"cifar10: needs a data directory holding {DIR_NAME}/ ({EXPECTED})")
    root = Path(data_dir).expanduser()
    for candidate in (root, root / DIR_NAME):
        if all((candidate / f).is_file() for f in (*TRAIN_FILES, TEST_FILE, META_FILE)):
            return candidate
    raise DataError(f"cifar10: {EXPECTED} in {root} or {root / DIR_NAME}")


def check_meta(path: Path) -> None:
    """batches.meta must name the ten classes."""
    names = _field(read_batch(path), "label_names", path)
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataError(f"cifar10: {path} 'label_names' should list {NUM_CLASSES} class names")


def load(*, data_dir: str | None = None, seed: int = 0, scale: str = "default") -> Task:
    """Read the five training batches and the test batch (validation and the report split)."""
    directory = find_dir(data_dir)
    check_meta(directory / META_FILE)
    parts = [images_and_labels(directory / f) for f in TRAIN_FILES]
    train_x = torch.cat([x for x, _ in parts])
    train_y = torch.cat([y for _, y in parts])
    test_x, test_y = images_and_labels(directory / TEST_FILE)
    val_x, val_y, report_x, report_y = split_report(test_x, test_y)
    if scale == "small":
        (n_train, n_val), generator = SMALL, torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(train_x), generator=generator)[:n_train]
        train_x, train_y = train_x[keep], train_y[keep]
        val_x, val_y = val_x[:n_val], val_y[:n_val]
        if report_x is not None:
            report_x, report_y = report_x[:n_val], report_y[:n_val]
    return Task(
        name="cifar10",
        kind="classification",
        host_kind="cnn",
        num_classes=NUM_CLASSES,
        random_guess_loss=math.log(NUM_CLASSES),
        host_lr=HOST_LR,
        seed_lr=SEED_LR,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
        report_x=report_x,
        report_y=report_y,
    )


def split_report(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The test batch's first half (rounded up) validates, its second half is the report split
    (held out: only the report reads it). A single image validates and there is no report."""
    cut = (len(x) + 1) // 2
    if cut == len(x):
        return x, y, None, None
    return x[:cut], y[:cut], x[cut:], y[cut:]
