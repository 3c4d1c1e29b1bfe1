"""Tasks: a dataset, the host kind that fits it, its loss and metric, and default learning rates."""

from __future__ import annotations

import importlib
import math
import typing
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from esper_engine.contracts import HostKind, TaskKind

# Each task lives in its own module exposing `load(data_dir, seed, scale) -> Task`; modules are
# imported on demand so that loading a synthetic task never imports numpy or touches the disk.
_TASK_MODULES = {
    "synthetic-images": "esper_engine.tasks.synthetic_images",
    "synthetic-stories": "esper_engine.tasks.synthetic_stories",
    "cifar10": "esper_engine.tasks.cifar10",
    "tinystories": "esper_engine.tasks.tinystories",
}
TASK_NAMES: tuple[str, ...] = tuple(_TASK_MODULES)
TaskScale = Literal["default", "small"]  # small: a tiny version of the task, for tests

BYTE_VOCAB = 256
# Byte that ends every story in the byte-level corpora (NUL never occurs in the text itself).
STORY_SEPARATOR = b"\x00"


class DataError(Exception):
    """A dataset directory or file is missing or malformed; the message is one line."""


@dataclass(frozen=True, eq=False)  # tensors have no single truth value: compare by identity
class Task:
    """One learning problem. Images are stored as uint8 [N,3,32,32]; `prepare` normalises them.

    Language-model tasks store byte windows as uint8 [N, seq_len] views of one byte stream
    (y is x shifted by one byte); `prepare` widens x to int64 and `loss`/`correct` widen y.
    """

    name: str
    kind: TaskKind
    host_kind: HostKind
    num_classes: int  # classes, or the byte vocabulary (256) for language models
    random_guess_loss: float  # ln(num_classes): the loss of a uniform guess
    host_lr: float  # default SGD (momentum 0.9) learning rate for the host
    seed_lr: float  # default SGD (momentum 0.9) learning rate for each seed
    train_x: Tensor = field(repr=False)
    train_y: Tensor = field(repr=False)
    val_x: Tensor = field(repr=False)
    val_y: Tensor = field(repr=False)
    seq_len: int | None = None  # context length of language-model windows
    # Per-channel normalisation of uint8 images (fractions of 255); unused for language models.
    pixel_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    pixel_std: tuple[float, ...] = (0.25, 0.25, 0.25)
    # The report split (issue 24): held out from training and validation, read only by the
    # report (``EpochSummary.report_accuracy``), never by a decision. None: the task has none.
    report_x: Tensor | None = field(default=None, repr=False)
    report_y: Tensor | None = field(default=None, repr=False)

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy over every prediction (every token for language models)."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1).long())

    def correct(self, logits: Tensor, y: Tensor) -> Tensor:
        """Number of correct argmax predictions, as a tensor (no host sync)."""
        return (logits.argmax(dim=-1) == y.long()).sum()

    def count(self, y: Tensor) -> int:
        """Predictions in the batch: B for classification, B*T for language models."""
        return y.numel()

    def prepare(self, x: Tensor) -> Tensor:
        """Turn stored inputs into model inputs on x's device (float images or int64 tokens)."""
        match self.kind:
            case "language_model":
                return x.long()
            case "classification":
                if x.dtype == torch.uint8:
                    x = x.float().div_(255.0)
                shape = (1, -1, 1, 1)
                mean = torch.tensor(self.pixel_mean, device=x.device, dtype=x.dtype).view(shape)
                std = torch.tensor(self.pixel_std, device=x.device, dtype=x.dtype).view(shape)
                return (x - mean) / std


def load_task(
    name: str, *, data_dir: str | None = None, seed: int = 0, scale: TaskScale = "default"
) -> Task:
    """Build a task by name; scale="small" gives a tiny version for tests."""
    if name not in _TASK_MODULES:
        raise ValueError(f"unknown task {name!r}; choose from: {', '.join(TASK_NAMES)}")
    if scale not in typing.get_args(TaskScale):  # a Python caller's typo (no msgspec here)
        raise ValueError(f"scale must be default or small, got {scale!r}")
    module = importlib.import_module(_TASK_MODULES[name])
    return module.load(data_dir=data_dir, seed=seed, scale=scale)


def byte_lm_task(
    name: str,
    train_bytes: bytes,
    val_bytes: bytes,
    *,
    seq_len: int,
    host_lr: float,
    seed_lr: float,
    report_bytes: bytes | None = None,
) -> Task:
    """A byte-level language-model task from two byte streams (three with a report split)."""
    train_x, train_y = byte_windows(train_bytes, seq_len, f"{name} train")
    val_x, val_y = byte_windows(val_bytes, seq_len, f"{name} validation")
    report_x = report_y = None
    if report_bytes is not None:
        report_x, report_y = byte_windows(report_bytes, seq_len, f"{name} report")
    return Task(
        name=name,
        kind="language_model",
        host_kind="transformer",
        num_classes=BYTE_VOCAB,
        random_guess_loss=math.log(BYTE_VOCAB),
        host_lr=host_lr,
        seed_lr=seed_lr,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        seq_len=seq_len,
        report_x=report_x,
        report_y=report_y,
    )


def byte_windows(data: bytes, seq_len: int, what: str) -> tuple[Tensor, Tensor]:
    """Cut a byte stream into windows of seq_len+1 bytes: x = window[:-1], y = window[1:].

    Consecutive windows overlap by one byte so every byte after the first is a target once.
    x and y are views of one uint8 tensor: the corpus is held in memory once.
    """
    if len(data) < seq_len + 1:
        raise DataError(f"{what}: need at least {seq_len + 1} bytes of text, got {len(data)}")
    stream = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    windows = stream.unfold(0, seq_len + 1, seq_len)
    return windows[:, :-1], windows[:, 1:]


__all__ = [
    "BYTE_VOCAB",
    "STORY_SEPARATOR",
    "TASK_NAMES",
    "DataError",
    "Task",
    "byte_lm_task",
    "byte_windows",
    "load_task",
]
