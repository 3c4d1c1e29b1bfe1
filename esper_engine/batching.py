"""SharedBatchIterator: one loader feeds every env, instead of one loader per env.

Each draw takes the next n_envs * batch_size indices of a seeded permutation, gathers them in
one indexing operation, moves them to the device once, prepares them once, and splits the
result into one (x, y) batch per env. Within a draw the envs see disjoint samples.

A dataset smaller than one draw still trains: its draws wrap around, taking the rest of one
permutation and then the start of the next (as many passes as a draw needs), so every draw is
still exactly n_envs * batch_size samples; the envs then share some samples within a draw.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def check_samples(what: str, x: Tensor, y: Tensor) -> None:
    """ValueError (one line) unless x and y pair up and hold at least one sample.

    ``what`` names the split in the message, e.g. "training set" or "validation set".
    """
    if len(x) != len(y):
        raise ValueError(f"{what}: inputs and targets differ in length: {len(x)} vs {len(y)}")
    if len(x) == 0:
        raise ValueError(f"{what} is empty")


class SharedBatchIterator:
    """Infinite iterator of [(x, y)] * n_envs; reshuffles when a pass over the data ends.

    When the dataset holds at least one draw, a pass ends when fewer than n_envs * batch_size
    unseen samples remain; those are skipped (a different few each pass) so that every draw is a
    slice of one permutation. A smaller dataset wraps around instead (see the module docstring).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        n_envs: int,
        batch_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        prepare: Callable[[Tensor], Tensor] | None = None,
        keep: range | None = None,
    ) -> None:
        """``keep``: the envs whose slices this process trains (a rank's block, SPEC 13); the
        draw is the whole run's, so every env sees the data it sees in one process, but only
        the kept slices are gathered and prepared."""
        check_samples("training set", x, y)
        if n_envs < 1 or batch_size < 1:
            raise ValueError(f"n_envs and batch_size must be >= 1, got {n_envs}, {batch_size}")
        self.x, self.y = x, y
        self.n_envs, self.batch_size = n_envs, batch_size
        self.device = torch.device(device)
        self.prepare = prepare
        self.keep = range(n_envs) if keep is None else keep
        if not self.keep or self.keep.start < 0 or self.keep.stop > n_envs or self.keep.step != 1:
            raise ValueError(f"keep must be a contiguous block of range({n_envs}), got {keep}")
        self.generator = torch.Generator().manual_seed(seed)
        # Async host-to-device copies need page-locked memory; only worth it for CUDA.
        self.pin = self.device.type == "cuda" and x.device.type == "cpu"
        self.passes = 0  # completed passes over the data
        self._order = torch.randperm(len(x), generator=self.generator)
        self._pos = 0

    @property
    def draw_size(self) -> int:
        return self.n_envs * self.batch_size

    @property
    def draws_per_pass(self) -> int:
        """Whole draws in one pass; 0 when a draw wraps around a dataset smaller than it."""
        return len(self.x) // self.draw_size

    def __iter__(self) -> SharedBatchIterator:
        return self

    def __next__(self) -> list[tuple[Tensor, Tensor]]:
        indices = self._next_indices()
        indices = indices[self.keep.start * self.batch_size : self.keep.stop * self.batch_size]
        x, y = self._to_device(self.x[indices]), self._to_device(self.y[indices])
        if self.prepare is not None:
            x = self.prepare(x)
        return list(zip(x.split(self.batch_size), y.split(self.batch_size), strict=True))

    def _next_indices(self) -> Tensor:
        if self.draw_size > len(self.x):
            return self._wrapped_indices()
        if self._pos + self.draw_size > len(self._order):
            self._new_pass()
        indices = self._order[self._pos : self._pos + self.draw_size]
        self._pos += self.draw_size
        return indices

    def _wrapped_indices(self) -> Tensor:
        """A draw larger than the dataset: successive permutations, end to end."""
        parts, needed = [], self.draw_size
        while needed:
            if self._pos == len(self._order):
                self._new_pass()
            part = self._order[self._pos : self._pos + needed]
            parts.append(part)
            self._pos += len(part)
            needed -= len(part)
        return torch.cat(parts)

    def _new_pass(self) -> None:
        self._order = torch.randperm(len(self.x), generator=self.generator)
        self._pos = 0
        self.passes += 1

    def state_dict(self) -> dict[str, object]:
        """Where the iterator stands: its generator, this pass's order and the position in it."""
        return {
            "generator": self.generator.get_state(),
            "order": self._order.clone(),
            "pos": self._pos,
            "passes": self.passes,
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["order"]) != len(self.x):
            raise ValueError(
                f"checkpoint's data order covers {len(state['order'])} samples, the training set "
                f"has {len(self.x)}"
            )
        self.generator.set_state(state["generator"])
        self._order = state["order"].clone()
        self._pos = int(state["pos"])
        self.passes = int(state["passes"])

    def _to_device(self, t: Tensor) -> Tensor:
        if self.pin:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)


def fixed_val_batches(
    x: Tensor, y: Tensor, size: int, batches: int, device: torch.device, prepare: Callable
) -> list[tuple[Tensor, Tensor]]:
    """The same validation samples every epoch, for every env and every coalition: at most
    ``batches`` batches of ``size``, on ``device``, prepared once."""
    n = min(len(x), size * batches)
    return [
        (prepare(x[start : start + size].to(device)), y[start : start + size].to(device))
        for start in range(0, n, size)
    ]
