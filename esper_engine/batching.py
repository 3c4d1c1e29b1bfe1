"""SharedBatchIterator: one loader feeds every env, instead of one loader per env.

Each draw takes the next n_envs * batch_size indices of a seeded permutation, gathers them in
one indexing operation, moves them to the device once, prepares them once, and splits the
result into one (x, y) batch per env. Within a draw the envs see disjoint samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class SharedBatchIterator:
    """Infinite iterator of [(x, y)] * n_envs; reshuffles when a pass over the data ends.

    A pass ends when fewer than n_envs * batch_size unseen samples remain; those are skipped
    (a different few each pass) so that every draw is a slice of one permutation.
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
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        if n_envs < 1 or batch_size < 1:
            raise ValueError(f"n_envs and batch_size must be >= 1, got {n_envs}, {batch_size}")
        if n_envs * batch_size > len(x):
            raise ValueError(
                f"a draw of n_envs * batch_size = {n_envs * batch_size} samples "
                f"exceeds the {len(x)} samples of the dataset"
            )
        self.x, self.y = x, y
        self.n_envs, self.batch_size = n_envs, batch_size
        self.device = torch.device(device)
        self.prepare = prepare
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
        return len(self.x) // self.draw_size

    def __iter__(self) -> SharedBatchIterator:
        return self

    def __next__(self) -> list[tuple[Tensor, Tensor]]:
        indices = self._next_indices()
        x, y = self._to_device(self.x[indices]), self._to_device(self.y[indices])
        if self.prepare is not None:
            x = self.prepare(x)
        return list(zip(x.split(self.batch_size), y.split(self.batch_size), strict=True))

    def _next_indices(self) -> Tensor:
        if self._pos + self.draw_size > len(self._order):
            self._order = torch.randperm(len(self.x), generator=self.generator)
            self._pos = 0
            self.passes += 1
        indices = self._order[self._pos : self._pos + self.draw_size]
        self._pos += self.draw_size
        return indices

    def _to_device(self, t: Tensor) -> Tensor:
        if self.pin:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)
