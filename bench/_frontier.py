"""The growth study's statistics: a seed's static frontier, readings along it, bootstrap CIs.

A frontier is the upper envelope of one seed's static runs in the (training FLOPs, accuracy)
plane: the runs no cheaper run matches, joined by straight lines on log FLOPs. Reading it at a
growth run's accuracy gives the FLOPs a static host of that seed needs for the same accuracy;
reading it at the growth run's FLOPs gives the static accuracy at equal compute. Outside the
frontier's range nothing is extrapolated: the reading says "above" or "below" and carries the
bound the range gives. Pure Python (no torch), so the tests run in milliseconds.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

IN, ABOVE, BELOW = "in", "above", "below"


@dataclass(frozen=True)
class Point:
    flops: float
    acc: float  # a fraction in [0, 1]


@dataclass(frozen=True)
class Reading:
    """A value read off a frontier. ``where`` is IN (interpolated), ABOVE or BELOW the range;
    outside it ``value`` is the range's end (a bound, not an estimate)."""

    value: float
    where: str


def envelope(points: Sequence[Point]) -> list[Point]:
    """The upper envelope: by FLOPs, keeping each run more accurate than every cheaper one."""
    if not points:
        raise ValueError("a frontier needs at least one static run")
    out: list[Point] = []
    for p in sorted(points, key=lambda p: (p.flops, -p.acc)):
        if p.flops <= 0:
            raise ValueError(f"FLOPs must be positive, got {p.flops}")
        if not out or p.acc > out[-1].acc:
            out.append(p)
    return out


def flops_at(frontier: Sequence[Point], acc: float) -> Reading:
    """FLOPs the frontier needs to reach ``acc`` (linear in log FLOPs between its runs)."""
    if acc > frontier[-1].acc:
        return Reading(frontier[-1].flops, ABOVE)
    if acc < frontier[0].acc:
        return Reading(frontier[0].flops, BELOW)
    for lo, hi in zip(frontier, frontier[1:], strict=False):
        if lo.acc <= acc <= hi.acc:
            t = (acc - lo.acc) / (hi.acc - lo.acc)
            return Reading(math.exp(_lerp(math.log(lo.flops), math.log(hi.flops), t)), IN)
    return Reading(frontier[0].flops, IN)  # a one-run frontier, read at its own accuracy


def acc_at(frontier: Sequence[Point], flops: float) -> Reading:
    """The frontier's accuracy at ``flops`` (linear in log FLOPs between its runs)."""
    if flops > frontier[-1].flops:
        return Reading(frontier[-1].acc, ABOVE)
    if flops < frontier[0].flops:
        return Reading(frontier[0].acc, BELOW)
    x = math.log(flops)
    for lo, hi in zip(frontier, frontier[1:], strict=False):
        if lo.flops <= flops <= hi.flops:
            t = (x - math.log(lo.flops)) / (math.log(hi.flops) - math.log(lo.flops))
            return Reading(_lerp(lo.acc, hi.acc, t), IN)
    return Reading(frontier[0].acc, IN)


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def exchange_rate(frontier: Sequence[Point]) -> float:
    """Accuracy points per doubling of FLOPs along the frontier (least squares on log2 FLOPs)."""
    if len(frontier) < 2:
        return math.nan
    xs = [math.log2(p.flops) for p in frontier]
    ys = [100.0 * p.acc for p in frontier]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[Sequence[float]], float] = statistics.fmean,
    *,
    resamples: int = 20_000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over ``values`` resampled with replacement.

    Paired: each value is already one seed's comparison (growth against that seed's own
    frontier), so resampling seeds keeps each pair together."""
    if not values:
        return math.nan, math.nan
    rng = random.Random(seed)
    n = len(values)
    stats = sorted(statistic(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    low = stats[min(int(math.floor(tail * resamples)), resamples - 1)]
    high = stats[min(int(math.ceil((1.0 - tail) * resamples)) - 1, resamples - 1)]
    return low, high


@dataclass(frozen=True)
class SeedComparison:
    """One growth run against its seed's frontier."""

    seed: int
    flops: float
    acc: float
    static_flops: Reading  # the frontier's FLOPs at the run's accuracy
    static_acc: Reading  # the frontier's accuracy at the run's FLOPs

    @property
    def ratio(self) -> float:
        """FLOPs(growth) / FLOPs(static at equal accuracy); a bound when out of range."""
        return self.flops / self.static_flops.value

    @property
    def acc_gain(self) -> float:
        """Accuracy points above the frontier at equal FLOPs; a bound when out of range."""
        return 100.0 * (self.acc - self.static_acc.value)


def compare(seed: int, run: Point, frontier: Sequence[Point]) -> SeedComparison:
    return SeedComparison(
        seed, run.flops, run.acc, flops_at(frontier, run.acc), acc_at(frontier, run.flops)
    )


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


@dataclass(frozen=True)
class ArmSummary:
    """An arm over seeds: the ratio's geometric mean and CI, the accuracy gain's mean and CI,
    over the seeds whose reading is in range (``n_ratio`` / ``n_gain`` of ``n``)."""

    n: int
    n_ratio: int
    ratio: float
    ratio_ci: tuple[float, float]
    n_gain: int
    acc_gain: float
    acc_gain_ci: tuple[float, float]
    above: int  # runs more accurate than any static run of their seed
    below: int  # runs less accurate than the cheapest static run of their seed


def summarise_arm(rows: Sequence[SeedComparison], *, seed: int = 0) -> ArmSummary:
    ratios = [r.ratio for r in rows if r.static_flops.where == IN]
    gains = [r.acc_gain for r in rows if r.static_acc.where == IN]
    return ArmSummary(
        n=len(rows),
        n_ratio=len(ratios),
        ratio=geometric_mean(ratios) if ratios else math.nan,
        ratio_ci=bootstrap_ci(ratios, geometric_mean, seed=seed) if ratios else (math.nan,) * 2,
        n_gain=len(gains),
        acc_gain=statistics.fmean(gains) if gains else math.nan,
        acc_gain_ci=bootstrap_ci(gains, seed=seed) if gains else (math.nan, math.nan),
        above=sum(r.static_flops.where == ABOVE for r in rows),
        below=sum(r.static_flops.where == BELOW for r in rows),
    )


def ratio_cell(row: SeedComparison) -> str:
    """A table cell: the ratio, or the bound with the side of the range it fell on."""
    if row.static_flops.where == ABOVE:
        return f"<{row.ratio:.2f} (above)"
    if row.static_flops.where == BELOW:
        return f">{row.ratio:.2f} (below)"
    return f"{row.ratio:.2f}"


def mean_frontier(frontiers: Sequence[Sequence[Point]], flops: Sequence[float]) -> list[Point]:
    """The seeds' frontiers averaged at each of ``flops`` inside every seed's range (the plot)."""
    out = []
    for f in flops:
        readings = [acc_at(frontier, f) for frontier in frontiers]
        if readings and all(r.where == IN for r in readings):
            out.append(Point(f, statistics.fmean(r.value for r in readings)))
    return out
