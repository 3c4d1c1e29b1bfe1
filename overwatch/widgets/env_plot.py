"""The focused env in plots with axes, a metric at a time (m): validation accuracy and loss, train
against validation, the grad norm, each slot's Shapley value, the policy's PPO losses, or the
training FLOPs; with its rollbacks and seed transitions marked (textual-plot draws them).

A log scale (y) and EMA smoothing (z) apply to every series shown; an outlier (a 4.6e6 loss among
losses near 1) no longer flattens the curve: the y axis spans the points inside Tukey's far
fences and each point beyond them is drawn at the edge with a red ▲/▼.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import cycle

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plot import HiResMode, PlotWidget

from esper_engine.contracts import SeedStage
from overwatch.state import ConsoleState, EnvView
from overwatch.widgets.formatting import env_label

GRAD_EVERY = 5  # a batch-level series redraws every this many new points, not on every batch
# Mark colours: a rollback stands out; seed transitions in their stage's colour (as elsewhere).
MARK_STYLES = {
    "rollback": "bold red",
    SeedStage.GERMINATED: "magenta",
    SeedStage.BLENDING: "cyan",
    SeedStage.FOSSILIZED: "green",
    SeedStage.PRUNED: "red",
    "note": "yellow",  # an operator's note (OperatorNote)
}
# m cycles through these; the title names the one shown.
PLOT_MODES = ("val", "train/val", "grad", "shapley", "ppo", "flops")
MODE_TITLES = {
    "val": "validation",
    "train/val": "train vs val",
    "grad": "grad norm",
    "shapley": "Shapley per seed",
    "ppo": "PPO losses",
    "flops": "training FLOPs",
}
SMOOTHING = (0.0, 0.6, 0.9)  # z cycles through these EMA weights (0: raw)
SLOT_STYLES = ("green", "cyan", "magenta", "yellow", "blue", "red", "white", "bright_green")
RAW_STYLE = "grey42"  # the raw series under its EMA
CLIPPED_STYLE = "bold red"
FENCE = 3.0  # Tukey's far fences: beyond q1 - 3 IQR or q3 + 3 IQR a point is an outlier
FENCE_MIN_POINTS = 8  # fewer finite points than this: no point is called an outlier


@dataclass(frozen=True)
class Series:
    xs: list[float]
    ys: list[float]
    style: str


def robust_limits(values: Sequence[float]) -> tuple[float, float] | None:
    """(low, high) of the finite values inside Tukey's far fences, when some lie beyond them;
    None when none do (or too few to tell): the plot scales itself to every point."""
    finite = sorted(v for v in values if math.isfinite(v))
    if len(finite) < FENCE_MIN_POINTS:
        return None
    q1, q3 = _quantile(finite, 0.25), _quantile(finite, 0.75)
    # a flat series (IQR 0) still tolerates a small relative wiggle
    spread = max(q3 - q1, 0.05 * max(abs(q1), abs(q3)), 1e-12)
    low, high = q1 - FENCE * spread, q3 + FENCE * spread
    inside = [v for v in finite if low <= v <= high]
    if len(inside) == len(finite):
        return None
    lo, hi = inside[0], inside[-1]
    pad = 0.05 * (hi - lo) or 0.5 * (abs(hi) or 1.0)
    return lo - pad, hi + pad


def flat_limits(values: Sequence[float]) -> tuple[float, float] | None:
    """Limits around a series whose finite values are all one (a single point, a constant):
    textual-plot cannot make ticks for an empty span."""
    finite = {v for v in values if math.isfinite(v)}
    if len(finite) != 1:
        return None
    (v,) = finite
    half = 0.5 * abs(v) or 1.0
    return v - half, v + half


def _quantile(ordered: list[float], q: float) -> float:
    at = q * (len(ordered) - 1)
    i = int(at)
    j = min(i + 1, len(ordered) - 1)
    return ordered[i] + (ordered[j] - ordered[i]) * (at - i)


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average, TensorBoard's way (debiased from the first point); a
    non-finite value is passed through and does not enter the average."""
    out, mean, norm = [], 0.0, 0.0
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        mean = weight * mean + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(mean / norm)
    return out


def log10(values: Sequence[float]) -> list[float]:
    """log10 of each value; nan where it has none (zero, negative, non-finite)."""
    return [math.log10(v) if math.isfinite(v) and v > 0 else math.nan for v in values]


def panels(mode: str, view: EnvView, state: ConsoleState | None) -> list[tuple[str, list[Series]]]:
    """The plots of ``mode``: (y label, its series) each, top to bottom."""
    xs = [x for x, _, _ in view.epoch_points]
    grad = Series([x for x, _ in view.grad_points], [g for _, g in view.grad_points], "cyan")
    if mode == "train/val":
        txs = [p[0] for p in view.train_points]
        return [
            (
                "acc %",
                [
                    Series(txs, [100 * p[1] for p in view.train_points], "yellow"),
                    Series(xs, [100 * a for _, a, _ in view.epoch_points], "green"),
                ],
            ),
            (
                "loss",
                [
                    Series(txs, [p[2] for p in view.train_points], "yellow"),
                    Series(xs, [v for _, _, v in view.epoch_points], "magenta"),
                ],
            ),
            ("grad norm", [grad]),
        ]
    if mode == "grad":
        return [("grad norm", [grad])]
    if mode == "shapley":
        return [
            (
                "Shapley %",
                [
                    Series([x for x, _ in pts], [100 * v for _, v in pts], style)
                    for (_, pts), style in zip(
                        sorted(view.shapley_points.items()), cycle(SLOT_STYLES), strict=False
                    )
                ],
            )
        ]
    if mode == "ppo":
        points = list(state.ppo_points) if state is not None else []
        pxs = [p[0] for p in points]
        return [
            ("policy loss", [Series(pxs, [p[1] for p in points], "green")]),
            ("value loss", [Series(pxs, [p[2] for p in points], "magenta")]),
            ("entropy", [Series(pxs, [p[3] for p in points], "cyan")]),
        ]
    if mode == "flops":
        return [
            (
                "train FLOPs",
                [
                    Series(
                        [p[0] for p in view.train_points],
                        [p[3] for p in view.train_points],
                        "yellow",
                    )
                ],
            )
        ]
    return [
        ("val acc %", [Series(xs, [100 * a for _, a, _ in view.epoch_points], "green")]),
        ("val loss", [Series(xs, [v for _, _, v in view.epoch_points], "magenta")]),
        ("grad norm", [grad]),
    ]


class QuietPlot(PlotWidget):
    """A plot that never takes the keyboard (its r, arrows and +/- belong to the console)."""

    BINDINGS = []
    can_focus = False

    def __init__(self, y_label: str, *, id: str | None = None) -> None:
        super().__init__(id=id, allow_pan_and_zoom=False)
        self.y_label = y_label

    def on_mount(self) -> None:
        super().on_mount()
        self.margin_top, self.margin_bottom, self.margin_left = 1, 1, 8
        self.set_ylabel(self.y_label)

    def label(self, y_label: str) -> None:
        if y_label != self.y_label:
            self.y_label = y_label
            if self.is_mounted:
                self.set_ylabel(y_label)


class EnvPlot(Vertical):
    """Up to three stacked plots sharing an x axis in epochs counted across the run (episode 2's
    first epoch follows episode 1's last); the marks are the legend's vertical lines."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._title = Static("", classes="plot-title")
        self._plots = (QuietPlot("val acc %"), QuietPlot("val loss"), QuietPlot("grad norm"))
        self.mode = PLOT_MODES[0]
        self.log_scale = False
        self.smoothing = SMOOTHING[0]
        self.clipped = 0  # points drawn at an edge, beyond the robust y-limits (last redraw)
        self._has_ppo = False
        self._shown: tuple | None = None
        self._grad_shown: tuple | None = None  # the grad series as last drawn (in steps)

    def compose(self) -> ComposeResult:
        yield self._title
        yield from self._plots

    def choose(
        self,
        *,
        mode: str | None = None,
        log_scale: bool | None = None,
        smoothing: float | None = None,
    ) -> None:
        """The operator's choices (m, y, z); the next ``update`` redraws."""
        self.mode = mode if mode is not None else self.mode
        self.log_scale = log_scale if log_scale is not None else self.log_scale
        self.smoothing = smoothing if smoothing is not None else self.smoothing
        self._shown = None

    def update(
        self, view: EnvView | None, *, live: bool = True, state: ConsoleState | None = None
    ) -> None:
        """Redraw for ``view`` when its plotted data changed (the grad series in steps, and
        only when ``live``: the app's live cadence); ``state``: the run's (PPO updates)."""
        if view is None:
            return
        key = (
            id(view),
            view.env,
            len(view.epoch_points),
            view.epoch_points[-1] if view.epoch_points else None,
            len(view.marks),
            sum(len(p) for p in view.shapley_points.values()),
            len(state.ppo_points) if state is not None else 0,
            state.ppo_points[-1] if state is not None and state.ppo_points else None,
        )
        grad = (
            len(view.grad_points) // GRAD_EVERY,
            view.grad_points[0] if view.grad_points else None,
        )
        # a per-batch change waits for the live tick; an epoch or a mark redraws at once
        if key == self._shown and (grad == self._grad_shown or not live):
            return
        self._shown, self._grad_shown = key, grad
        marks = sorted({(x, kind) for x, kind in view.marks if kind in MARK_STYLES})
        shown = panels(self.mode, view, state)
        self._has_ppo = bool(state is not None and state.ppo_points)
        self.clipped = 0
        for plot, (label, series) in zip(self._plots, shown, strict=False):
            plot.display = True
            plot.label(f"log {label}" if self.log_scale else label)
            self.clipped += self._draw(plot, series, marks)
        for plot in self._plots[len(shown) :]:
            plot.display = False
        self._title.update(self._heading(view, marks))

    def _heading(self, view: EnvView, marks: list[tuple[float, str]]) -> str:
        kinds = [kind for kind in MARK_STYLES if any(k == kind for _, k in marks)]
        legend = " ".join(f"[{MARK_STYLES[kind]}]│{kind.lower()}[/]" for kind in kinds)
        choices = [MODE_TITLES[self.mode]]
        if self.mode == "train/val":
            choices[0] = "[yellow]train[/] vs val"
        if self.mode == "shapley":  # slot ids come from the recording: text, never markup
            slots = zip(sorted(view.shapley_points), cycle(SLOT_STYLES), strict=False)
            choices.extend(f"[{style}]{escape(slot)}[/]" for slot, style in slots)
        if self.mode == "ppo" and not self._has_ppo:
            choices.append("no policy updates")
        if self.log_scale:
            choices.append("log")
        if self.smoothing:
            choices.append(f"EMA {self.smoothing:g}")
        if self.clipped:
            choices.append(f"[{CLIPPED_STYLE}]▲{self.clipped} clipped[/]")
        title = f"[b]{env_label(view.env)}[/b] {' · '.join(choices)} · {legend}"
        return title.rstrip(" ·")

    def _draw(self, plot: PlotWidget, series: list[Series], marks: list[tuple[float, str]]) -> int:
        """Draw ``series`` on ``plot`` (transformed, robustly limited); the points clipped."""
        plot.clear()
        drawn = []
        for s in series:
            ys = log10(s.ys) if self.log_scale else list(s.ys)
            drawn.append((s, ys, ema(ys, self.smoothing) if self.smoothing else ys))
        values = [y for _, ys, _ in drawn for y in ys]
        limits = robust_limits(values)
        plot.set_ylimits(*(limits or flat_limits(values) or (None, None)))
        clipped = 0
        for s, raw, smooth in drawn:
            if not s.xs:
                continue
            if self.smoothing:
                self._line(plot, s.xs, raw, RAW_STYLE, limits)
            clipped += self._line(plot, s.xs, smooth if self.smoothing else raw, s.style, limits)
        for x, kind in marks:
            plot.add_v_line(x, MARK_STYLES[kind])
        return clipped

    @staticmethod
    def _line(
        plot: PlotWidget,
        xs: list[float],
        ys: list[float],
        style: str,
        limits: tuple[float, float] | None,
    ) -> int:
        if limits is None:
            plot.plot(xs, ys, line_style=style, hires_mode=HiResMode.BRAILLE)
            return 0
        # just inside the axis, so the edge's markers are drawn, not lost on its border
        inset = 0.03 * (limits[1] - limits[0])
        lo, hi = limits[0] + inset, limits[1] - inset
        kept = [min(max(y, lo), hi) if math.isfinite(y) else y for y in ys]
        plot.plot(xs, kept, line_style=style, hires_mode=HiResMode.BRAILLE)
        above = [(x, hi) for x, y in zip(xs, ys, strict=True) if math.isfinite(y) and y > hi]
        below = [(x, lo) for x, y in zip(xs, ys, strict=True) if math.isfinite(y) and y < lo]
        for points, marker in ((above, "▲"), (below, "▼")):
            if points:
                px, py = zip(*points, strict=True)
                plot.scatter(list(px), list(py), marker=marker, marker_style=CLIPPED_STYLE)
        return len(above) + len(below)
