"""Compare runs: the same metric of several runs, per env and for the run mean, aligned by epoch.

A run's series are folded from its events (``SeriesBuilder``: a recording read whole, or a live
run fed as its events arrive); ``comparison`` lines them up against the first run (the reference)
and says what it had to leave out: a run of another task, the envs not every run has, FLOPs a
recording does not carry. No Textual here: the compare screen (``overwatch.screens.compare``)
draws what this computes.

x is the epoch counted across the run from 1 (episode 2's first epoch follows episode 1's last),
as in the console's own plots.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from esper_engine.contracts import EpochSummary, Event, RunFinished, RunStarted
from esper_engine.recording import RecordingError, read_recording

# (key, label as the screen says it, unit of its difference)
METRICS = (
    ("accuracy", "val accuracy %", "pp"),
    ("loss", "val loss", ""),
    ("grad", "grad norm (post-clip)", ""),
    ("flops", "train GFLOPs, cumulative", ""),  # plotted in GFLOPs, tabled with a prefix
)
METRIC_KEYS = tuple(key for key, _, _ in METRICS)


class CompareError(Exception):
    """A comparison that cannot be made (one file only, a file that is not a recording)."""


@dataclass
class RunSeries:
    """One run's per-env series: metric -> env -> {x: value}."""

    label: str  # what the screen calls it: the file's name, or "live"
    run_id: str = ""
    task: str = ""
    policy: str = ""
    n_envs: int = 0
    epochs: int = 0  # per episode
    status: str = "running"
    points: dict[str, dict[int, dict[int, float]]] = field(
        default_factory=lambda: {key: {} for key in METRIC_KEYS}
    )
    # env -> (episode, train FLOPs of that episode so far), and the FLOPs of its episodes before
    _episode_flops: dict[int, tuple[int, int]] = field(default_factory=dict)
    _flops_before: dict[int, int] = field(default_factory=dict)

    @property
    def envs(self) -> list[int]:
        return sorted(self.points["accuracy"])

    @property
    def last_x(self) -> int:
        """The last epoch summarised, counted across the run from 1 (0: none)."""
        return max((max(env) for env in self.points["accuracy"].values() if env), default=0)

    @property
    def flops_recorded(self) -> bool:
        return any(v > 0 for env in self.points["flops"].values() for v in env.values())

    def env_series(self, metric: str, env: int) -> dict[int, float]:
        return self.points[metric].get(env, {})

    def mean_series(self, metric: str) -> dict[int, float]:
        """Per x, the mean over the envs that have a finite value there."""
        values: dict[int, list[float]] = {}
        for series in self.points[metric].values():
            for x, v in series.items():
                if math.isfinite(v):
                    values.setdefault(x, []).append(v)
        return {x: sum(vs) / len(vs) for x, vs in sorted(values.items())}


class SeriesBuilder:
    """Folds events into a ``RunSeries``; a live run feeds it each tick's events."""

    def __init__(self, label: str) -> None:
        self.series = RunSeries(label)

    def ingest(self, events: Iterable[Event]) -> RunSeries:
        s = self.series
        for event in events:
            kind = type(event)
            if kind is EpochSummary:
                self._summary(event)
            elif kind is RunStarted:
                s.run_id, s.task, s.policy = event.run_id, event.task, str(event.policy)
                s.n_envs, s.epochs = event.n_envs, event.epochs
            elif kind is RunFinished:
                s.status = str(event.status)
        return s

    def _summary(self, ev: EpochSummary) -> None:
        s, env = self.series, ev.env or 0
        x = ev.episode * max(s.epochs, 1) + ev.epoch + 1
        s.points["accuracy"].setdefault(env, {})[x] = 100 * ev.val_accuracy
        s.points["loss"].setdefault(env, {})[x] = ev.val_loss
        s.points["grad"].setdefault(env, {})[x] = ev.grad_norm_post_clip
        episode, spent = s._episode_flops.get(env, (ev.episode, 0))
        if episode != ev.episode:  # a new episode: the last one's total is spent for good
            s._flops_before[env] = s._flops_before.get(env, 0) + spent
        s._episode_flops[env] = (ev.episode, ev.train_flops)
        s.points["flops"].setdefault(env, {})[x] = s._flops_before.get(env, 0) + ev.train_flops


def load_run(path: str | Path) -> RunSeries:
    """A recording's series; ``CompareError`` for a missing file or one that is not a recording."""
    path = Path(path)
    if not path.is_file():
        raise CompareError(f"no such recording: {path}")
    try:
        recording = read_recording(path)
    except RecordingError as exc:
        raise CompareError(str(exc)) from None
    if not recording.events or type(recording.events[0]) is not RunStarted:
        raise CompareError(f"{path}: not a run's recording (no RunStarted at its start)")
    series = SeriesBuilder(path.name).ingest(recording.events)
    if not series.points["accuracy"]:
        raise CompareError(f"{path}: no epoch ended in this recording; nothing to compare")
    return series


def load_runs(paths: list[str]) -> list[RunSeries]:
    if len(paths) < 2:
        raise CompareError("compare needs at least two recordings")
    return [load_run(p) for p in paths]


@dataclass(frozen=True)
class FinalRow:
    """One run's final figures in one view (an env, or the run mean), and their differences
    from the reference run's (None for the reference itself, or where either lacks the figure)."""

    label: str
    epochs: int  # epochs summarised (the last x)
    accuracy: float | None  # percent
    best_accuracy: float | None  # percent
    loss: float | None
    grad: float | None
    flops: float | None  # None: not recorded
    d_accuracy: float | None = None  # percentage points
    d_loss: float | None = None
    d_flops: float | None = None  # a ratio: this run's / the reference's


@dataclass(frozen=True)
class Comparison:
    runs: tuple[RunSeries, ...]  # the runs compared (the reference first)
    common_envs: tuple[int, ...]  # envs every compared run has: the per-env views
    left_out: tuple[str, ...]  # what could not be compared, one line each

    @property
    def views(self) -> tuple[int | None, ...]:
        """The views the screen steps through: the run mean (None), then each common env."""
        return (None, *self.common_envs)

    def series(self, run: RunSeries, metric: str, view: int | None) -> dict[int, float]:
        """``run``'s series in ``view``; empty for FLOPs a run does not record."""
        if metric == "flops" and not run.flops_recorded:
            return {}
        return run.mean_series(metric) if view is None else run.env_series(metric, view)

    def finals(self, view: int | None) -> list[FinalRow]:
        rows: list[FinalRow] = []
        reference: FinalRow | None = None
        for run in self.runs:
            row = self._final(run, view)
            if reference is None:
                reference = row
            else:
                row = _with_diffs(row, reference)
            rows.append(row)
        return rows

    def _final(self, run: RunSeries, view: int | None) -> FinalRow:
        acc = self.series(run, "accuracy", view)
        finite = [v for v in acc.values() if math.isfinite(v)]
        flops = self.series(run, "flops", view)
        return FinalRow(
            label=run.label,
            epochs=max(acc, default=0),
            accuracy=_last(acc),
            best_accuracy=max(finite) if finite else None,
            loss=_last(self.series(run, "loss", view)),
            grad=_last(self.series(run, "grad", view)),
            flops=_last(flops) if flops else None,
        )


def _with_diffs(row: FinalRow, reference: FinalRow) -> FinalRow:
    return dataclasses.replace(
        row,
        d_accuracy=_diff(row.accuracy, reference.accuracy),
        d_loss=_diff(row.loss, reference.loss),
        d_flops=_ratio(row.flops, reference.flops),
    )


def _last(series: dict[int, float]) -> float | None:
    return series[max(series)] if series else None


def _diff(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None:
        return None
    return value - reference


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def comparison(runs: list[RunSeries]) -> Comparison:
    """Line the runs up against the first; what cannot be compared is left out, and said."""
    if not runs:
        raise CompareError("nothing to compare")
    reference, *others = runs
    left_out: list[str] = []
    kept = [reference]
    for run in others:
        if reference.task and run.task and run.task != reference.task:
            left_out.append(f"left out: {run.label}, task {run.task} (not {reference.task})")
        else:
            kept.append(run)
    common = tuple(sorted(set.intersection(*(set(run.envs) for run in kept))))
    extra = [
        f"env {', '.join(str(env + 1) for env in envs)} of {run.label}"
        for run in kept
        if (envs := [env for env in run.envs if env not in common])
    ]
    if extra:
        left_out.append(f"per-env views leave out {'; '.join(extra)} (in the mean)")
    no_flops = [run.label for run in kept if not run.flops_recorded]
    if no_flops:
        left_out.append(f"no FLOPs recorded in {', '.join(no_flops)}")
    if len(kept) < 2:
        left_out.append("only one run of the reference's task: nothing to overlay")
    return Comparison(tuple(kept), common, tuple(left_out))
