"""Interleaved, counterbalanced repeats: the bench's defence against a noisy, shared machine.

Every figure compares two (or three) things measured in the same rounds: A B C, then C B A, ...
so that slow drift (another process starting, the CPU heating up) hits every side alike and no
side always runs first. A ratio is taken inside each round, then the median over rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence

Progress = Callable[[str], None]


def interleave(
    measures: Mapping[str, Callable[[], float]],
    repeats: int,
    warmup: int = 1,
    progress: Progress | None = None,
) -> dict[str, list[float]]:
    """Run each measure once per round for ``warmup + repeats`` rounds; keep the last ``repeats``.

    Odd rounds run the measures in reverse order (counterbalancing).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    names = list(measures)
    kept: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        label = "warm-up" if round_index < warmup else f"round {round_index - warmup + 1}/{repeats}"
        for name in order:
            value = measures[name]()
            if progress is not None:
                progress(f"  {label} {name}: {value:.4g}")
            if round_index >= warmup:
                kept[name].append(value)
    return kept


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median over rounds of the ratio taken within each round."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(
            f"need equal, non-empty series, got {len(numerators)} and {len(denominators)}"
        )
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a series, for the JSON details."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }
