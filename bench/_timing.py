"""How the bench times things: wall and CPU seconds, interleaved and counterbalanced repeats.

Every figure compares two (or three) things measured in the same rounds, in an order that changes
from round to round (A B C, C B A, B C A, A C B, ...) so that slow drift (another process
starting, the CPU heating up) hits every side alike and no side keeps the same place in a round.
A ratio is taken inside each round, then the median over rounds.
Figures use wall time; process CPU time is kept beside it to show when a side was waiting.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple, TypeVar

T = TypeVar("T")
Progress = Callable[[str], None]


class Timed(NamedTuple):
    """Seconds of one measurement: wall clock and this process's CPU (all its threads)."""

    wall: float
    cpu: float

    def __str__(self) -> str:
        return f"wall {self.wall:.3f} s, cpu {self.cpu:.3f} s"


class Stopwatch:
    """Filled in when its ``stopwatch()`` block ends."""

    result: Timed = Timed(0.0, 0.0)


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    watch = Stopwatch()
    wall, cpu = time.perf_counter(), time.process_time()
    yield watch
    watch.result = Timed(time.perf_counter() - wall, time.process_time() - cpu)


def interleave(
    measures: Mapping[str, Callable[[], T]],
    repeats: int,
    warmup: int = 1,
    progress: Progress | None = None,
) -> dict[str, list[T]]:
    """Run each measure once per round for ``warmup + repeats`` rounds; keep the last ``repeats``.

    The order counterbalances: rounds go in pairs, a rotation of the measures then the same
    rotation reversed, and each pair rotates one further. Two measures go A B, B A, B A, A B;
    three go through all six orders in six rounds, so none is always in the middle.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    names = list(measures)
    kept: dict[str, list[T]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        order = round_order(names, round_index)
        label = "warm-up" if round_index < warmup else f"round {round_index - warmup + 1}/{repeats}"
        for name in order:
            value = measures[name]()
            if progress is not None:
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                progress(f"  {label} {name}: {shown}")
            if round_index >= warmup:
                kept[name].append(value)
    return kept


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order of the measures in one round (see ``interleave``)."""
    shift = (round_index // 2) % len(names)
    rotated = [*names[shift:], *names[:shift]]
    return rotated[::-1] if round_index % 2 else rotated


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median over rounds of the ratio taken within each round."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(
            f"need equal, non-empty series, got {len(numerators)} and {len(denominators)}"
        )
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a series, for the JSON details."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def walls(values: Sequence[Timed]) -> list[float]:
    return [v.wall for v in values]


def cpus(values: Sequence[Timed]) -> list[float]:
    return [v.cpu for v in values]
