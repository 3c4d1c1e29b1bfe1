"""The compare screen: one metric of several runs overlaid, with their final figures side by side.

``overwatch compare A B ...`` opens it in its own small app (``CompareApp``); ``overwatch run
--compare REF`` opens it over the live console (``v``), the live run against the reference and
redrawn as epochs end. m / M step through the metrics, e / E through the views (the run mean, then
each env every run has), Esc or q leaves.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual_plot import HiResMode

from overwatch.compare import METRICS, FinalRow, RunSeries, comparison
from overwatch.widgets.ascii import AsciiFilter
from overwatch.widgets.env_plot import QuietPlot
from overwatch.widgets.formatting import env_label, flops, num, signed
from overwatch.widgets.themes import ALIASES, THEMES

RUN_STYLES = ("green", "magenta", "cyan", "yellow", "blue", "red")
LIVE_REFRESH_S = 1.0  # a live comparison redraws at most this often


class CompareScreen(Screen[None]):
    """``runs()`` gives the runs to compare, the reference first; called again on a timer
    when ``live`` (the live run's series grow)."""

    BINDINGS = [
        Binding("m", "metric(1)", "Metric", tooltip="Next metric: accuracy, loss, grad, FLOPs"),
        Binding("M", "metric(-1)", "Prev metric", show=False),
        Binding("e", "view(1)", "Env", tooltip="Next view: the run mean, then each env"),
        Binding("E", "view(-1)", "Prev env", show=False),
        Binding("escape,q", "close", "Close"),
    ]

    def __init__(self, runs: Callable[[], list[RunSeries]], *, live: bool = False) -> None:
        super().__init__()
        self.runs = runs
        self.live = live
        self.metric = 0  # index into METRICS
        self.view = 0  # index into the comparison's views
        self.comparison = comparison(runs())
        self._title = Static("", id="compare-title")
        self._plot = QuietPlot(METRICS[0][1], id="compare-plot")
        self._notes = Static("", id="compare-notes")
        self._table = Static("", id="compare-table")

    def compose(self) -> ComposeResult:
        yield self._title
        yield self._plot
        yield self._notes
        yield self._table
        yield Footer()

    def on_mount(self) -> None:
        self.redraw()
        if self.live:
            self.set_interval(LIVE_REFRESH_S, self.reload)

    def reload(self) -> None:
        self.comparison = comparison(self.runs())
        self.redraw()

    @property
    def view_env(self) -> int | None:
        views = self.comparison.views
        return views[self.view % len(views)]

    def action_metric(self, step: int) -> None:
        self.metric = (self.metric + step) % len(METRICS)
        self.redraw()

    def action_view(self, step: int) -> None:
        self.view = (self.view + step) % len(self.comparison.views)
        self.redraw()

    def action_close(self) -> None:
        """Back to the console it was opened over; the compare app alone quits."""
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        else:
            self.app.exit(0)

    def redraw(self) -> None:
        key, label, _ = METRICS[self.metric]
        env = self.view_env
        c = self.comparison
        title = Text()
        title.append(f"{label} · ", style="bold")
        title.append("run mean" if env is None else env_label(env), style="bold")
        title.append("   ")
        for i, run in enumerate(c.runs):
            title.append("■ ", style=RUN_STYLES[i % len(RUN_STYLES)])
            title.append(run.label + ("  " if i < len(c.runs) - 1 else ""))
        self._title.update(title)  # file names are text, never markup
        plot = self._plot
        plot.clear()
        plot.set_ylabel(label)
        # --ascii: full-height blocks, which the ASCII filter can draw (braille it cannot)
        mode = None if getattr(self.app, "ascii_only", False) else HiResMode.BRAILLE
        for i, run in enumerate(c.runs):
            series = c.series(run, key, env)
            if series:
                xs = list(series)
                scale = 1e-9 if key == "flops" else 1.0  # GFLOPs: the axis labels stay short
                plot.plot(
                    xs,
                    [scale * series[x] for x in xs],
                    line_style=RUN_STYLES[i % len(RUN_STYLES)],
                    hires_mode=mode,
                )
        lines = list(c.left_out)
        if len({run.last_x for run in c.runs}) > 1:
            lines.append("runs of different lengths: each run's final figures are its last epoch's")
        self._notes.update(Text("\n".join(lines)))
        self._table.update(final_table(c.finals(env)))


def final_table(rows: list[FinalRow]) -> Table:
    """The final figures, and each run's differences from the first (the reference)."""
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    table.add_column("run", no_wrap=True, overflow="ellipsis", max_width=20)
    for name in ("ep", "acc %", "Δacc pp", "best %", "loss", "Δloss", "grad", "FLOPs", "×ref"):
        table.add_column(name, justify="right", no_wrap=True)
    for i, row in enumerate(rows):
        table.add_row(
            Text(row.label, style=RUN_STYLES[i % len(RUN_STYLES)]),
            str(row.epochs),
            num(row.accuracy, 1),
            "ref" if i == 0 else signed(row.d_accuracy, 1),
            num(row.best_accuracy, 1),
            num(row.loss),
            "ref" if i == 0 else signed(row.d_loss),
            num(row.grad, 2),
            "-" if row.flops is None else flops(int(row.flops)),
            "ref" if i == 0 else ("-" if row.d_flops is None else f"{row.d_flops:.2f}"),
        )
    return table


class CompareApp(App[int]):
    """``overwatch compare``: the compare screen alone, read-only."""

    CSS_PATH = "../overwatch.tcss"
    TITLE = "Overwatch compare"

    def __init__(
        self, runs: list[RunSeries], *, theme: str | None = None, ascii_only: bool = False
    ) -> None:
        super().__init__()
        self._runs = runs
        for custom in THEMES:
            self.register_theme(custom)
        if theme is not None:
            self.theme = ALIASES.get(theme, theme)
        self.ascii_only = ascii_only
        if ascii_only:
            self._filters.append(AsciiFilter())

    def get_default_screen(self) -> CompareScreen:
        return CompareScreen(lambda: self._runs)


def run_compare(
    runs: list[RunSeries],
    *,
    bell: bool = False,
    theme: str | None = None,
    ascii_only: bool = False,
    mouse: bool = True,
) -> int:
    """Show the comparison until the operator quits (``bell``: nothing here rings it)."""
    app = CompareApp(runs, theme=theme, ascii_only=ascii_only)
    app.run(mouse=mouse)
    return 0
