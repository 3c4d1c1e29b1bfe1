"""The focused env in plots with axes: validation accuracy and loss per epoch, the post-clip grad
norm per batch, with its rollbacks and seed transitions marked (textual-plot draws them)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plot import HiResMode, PlotWidget

from esper_engine.contracts import SeedStage
from overwatch.state import EnvView
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


class EnvPlot(Vertical):
    """Three stacked plots sharing an x axis in epochs counted across the run (episode 2's first
    epoch follows episode 1's last); the marks are the legend's vertical lines."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._title = Static("", classes="plot-title")
        self._plots = (QuietPlot("val acc %"), QuietPlot("val loss"), QuietPlot("grad norm"))
        self._shown: tuple | None = None
        self._grad_shown: tuple | None = None  # the grad series as last drawn (in steps)

    def compose(self) -> ComposeResult:
        yield self._title
        yield from self._plots

    def update(self, view: EnvView | None, *, live: bool = True) -> None:
        """Redraw for ``view`` when its plotted data changed (the grad series in steps, and
        only when ``live``: the app's live cadence)."""
        if view is None:
            return
        key = (
            id(view),
            view.env,
            len(view.epoch_points),
            view.epoch_points[-1] if view.epoch_points else None,
            len(view.marks),
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
        kinds = [kind for kind in MARK_STYLES if any(k == kind for _, k in marks)]
        legend = " ".join(f"[{MARK_STYLES[kind]}]│{kind.lower()}[/]" for kind in kinds)
        self._title.update(f"[b]{env_label(view.env)}[/b] by epoch · {legend}".rstrip(" ·"))
        acc, loss, grad = self._plots
        xs = [x for x, _, _ in view.epoch_points]
        self._series(acc, xs, [100 * a for _, a, _ in view.epoch_points], "green", marks)
        self._series(loss, xs, [v for _, _, v in view.epoch_points], "magenta", marks)
        self._series(
            grad, [x for x, _ in view.grad_points], [g for _, g in view.grad_points], "cyan", marks
        )

    @staticmethod
    def _series(
        plot: PlotWidget,
        xs: list[float],
        ys: list[float],
        style: str,
        marks: list[tuple[float, str]],
    ) -> None:
        plot.clear()
        if xs:
            plot.plot(xs, ys, line_style=style, hires_mode=HiResMode.BRAILLE)
        for x, kind in marks:
            plot.add_v_line(x, MARK_STYLES[kind])
