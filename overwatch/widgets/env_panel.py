"""One env in full: accuracy, loss, gradient norm against the clip threshold, slots, governor."""

from __future__ import annotations

import math
from itertools import groupby

from rich.style import Style
from rich.text import Text

from esper_engine.contracts import EpochSummary, SeedStage
from overwatch.state import EnvView, ShapleyFigure, SlotView, progress_fraction
from overwatch.widgets.formatting import (
    STAGE_COMPONENTS,
    env_label,
    epoch_number,
    fit,
    flops,
    measured_at,
    num,
    pct,
    points,
    progress_label,
    rate,
    signed,
    stage_component,
)
from overwatch.widgets.lines import LineWidget
from overwatch.widgets.sparkline import block_chart, hbar, sparkline

PROGRESS_WIDTH = 8  # cells of the epoch's progress bar in the border
SHAPLEY_FULL_SCALE = 0.05  # a contribution of 5 accuracy points fills the bar
SIDE_BY_SIDE_MIN_WIDTH = 52  # below this, accuracy and loss get a line each
CHART_MAX_HEIGHT = 8  # rows of the validation-accuracy chart when a panel has room to spare
CHART_GUTTER = 7  # "77.5% " scale labels left of the chart


class EnvPanel(LineWidget):
    """The detail panel of one env; the app calls ``update`` once per refresh tick."""

    COMPONENT_CLASSES = {
        "panel--label",
        "panel--dim",
        "panel--bad",
        "panel--warn",
        "panel--good",
        "spark--acc",
        "spark--loss",
        "spark--grad",
        "spark--clipped",
        "shapley--pos",
        "shapley--neg",
        "shapley--stale",
        *STAGE_COMPONENTS,
    }

    def __init__(self, env: int, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.env = env
        self.view: EnvView | None = None
        self.language_model = False
        self.run_params = (0, 0)  # host and seed parameters of the model as built
        self._shown: tuple | None = None
        self._live_shown = -1  # the view's live_revision last drawn
        self._titles = (env_label(env), "")
        self.border_title = env_label(env)

    def update(
        self,
        view: EnvView,
        *,
        focused: bool,
        language_model: bool,
        run_params: tuple[int, int] = (0, 0),
        live: bool = True,
    ) -> None:
        """Show ``view``; the focused env gets the highlighted border. Unchanged: no redraw.

        ``run_params``: host and seed parameters of the model as built (RunStarted), shown until
        the env's first EpochSummary counts its own. ``live``: whether BatchStats alone may
        redraw (the app's live cadence); any other change redraws with the newest figures."""
        shown = (view.revision, focused, language_model, run_params)
        if shown == self._shown and (not live or view.live_revision == self._live_shown):
            return
        self._shown, self._live_shown = shown, view.live_revision
        self.view = view
        self.env = view.env
        self.language_model = language_model
        self.run_params = run_params
        self.set_class(focused, "-focused")
        self.set_class(view.governor.consecutive_panics > 0, "-panicking")
        marker = "▶ " if focused else ""
        at = view.at  # the epoch in progress or the last one summarised, as the header says
        progress = [] if at is None else [f"epoch {epoch_number(at[1])}"]
        if view.progress is not None:  # inside the epoch: how far its batches are
            bar = hbar(progress_fraction(view.progress), PROGRESS_WIDTH).replace(" ", "░")
            progress[-1] += f" {bar} {progress_label(view.progress)}"
        if view.summary is not None:
            # The last epoch's throughput: a per-batch rate would repaint the border each batch.
            progress.append(rate(view.summary.samples_per_s))
            if view.flops:  # this episode's compute, every kind (0: a recording older than it)
                progress.append(f"{flops(view.flops)} FLOPs")
        titles = (f"{marker}{env_label(view.env)}", " · ".join(progress))
        if titles != self._titles:
            self._titles = titles
            self.set_border_titles(*titles)
        self.redraw()

    def show_planned(self, *, focused: bool) -> None:
        """Before the env's first event: only the border says which env has the focus."""
        self.set_class(focused, "-focused")
        title = f"{'▶ ' if focused else ''}{env_label(self.env)}"
        if (title, "") != self._titles:
            self._titles = (title, "")
            self.set_border_titles(title, "")

    def build_lines(self, width: int, height: int) -> list[Text]:
        view = self.view
        if view is None or view.summary is None:
            waiting = "waiting for the first epoch"
            if view is not None and view.progress is not None:  # it is under way: how far
                bar = hbar(progress_fraction(view.progress), 2 * PROGRESS_WIDTH).replace(" ", "░")
                waiting = f"first epoch {bar} {progress_label(view.progress)}"
            lines = [Text(waiting, style=self._style("panel--dim"))]
            if view is not None and view.batch is not None:
                lines.append(self._grad(view, None, width))
            if self.run_params[0]:
                lines.append(self._params(*self.run_params))
        else:
            lines = self._lines(view, view.summary, width, height)
        for line in lines:
            fit(line, width)
        return lines

    # --- lines -----------------------------------------------------------------------------------

    def _lines(self, view: EnvView, summary: EpochSummary, width: int, height: int) -> list[Text]:
        """The figures first, then as many slots as fit (dormant ones summarised when tight),
        then the governor and the last action; extra detail lines only when there is room."""
        if width >= SIDE_BY_SIDE_MIN_WIDTH:
            half = width // 2
            top = [self._accuracy(view, summary, half) + self._loss(view, summary, width - half)]
        else:
            top = [self._accuracy(view, summary, width), self._loss(view, summary, width)]
        fixed = [*top, self._grad(view, summary, width)]
        tail = [self._governor(view, width), self._action(summary)]
        slots = [self._slot(view, slot, width) for slot in view.slots.values()]
        room = max(height - len(fixed) - len(tail), 0)
        if len(slots) > room:
            return fixed + self._tight_slots(view, width, room) + tail
        extras = [self._training(summary)]
        if view.attribution is not None:
            extras.append(self._shapley_summary(view))
        extras = extras[: room - len(slots)]
        # Two lines reserved for the extras either way, so side-by-side charts match in height.
        spare = room - len(slots) - 2
        chart = self._accuracy_chart(view, width, min(spare, CHART_MAX_HEIGHT)) if spare > 1 else []
        return top + chart + fixed[len(top) :] + extras[:1] + slots + extras[1:] + tail

    def _tight_slots(self, view: EnvView, width: int, room: int) -> list[Text]:
        live = [slot for slot in view.slots.values() if slot.state.stage != SeedStage.DORMANT]
        lines = [self._slot(view, slot, width) for slot in live][: max(room - 1, 0)]
        idle = len(view.slots) - len(lines)
        if idle and room:
            lines.append(Text(f"+{idle} more slots", style=self._style("panel--dim")))
        return lines

    def _accuracy(self, view: EnvView, summary: EpochSummary, width: int) -> Text:
        text = self._label("acc ")
        text.append(pct(summary.val_accuracy).rjust(6))
        text.append(" ")
        spark_width = max(width - text.cell_len - 1, 0)
        text.append(sparkline(view.val_acc_history, spark_width), self._style("spark--acc"))
        return text.append(" " * max(width - text.cell_len, 0))

    def _loss(self, view: EnvView, summary: EpochSummary, width: int) -> Text:
        text = self._label("loss ")
        text.append(num(summary.val_loss).rjust(6))
        if self.language_model:
            text.append(self._label(" ppl "))
            text.append(num(summary.perplexity, 1))
        text.append(" ")
        spark_width = max(width - text.cell_len, 0)
        text.append(sparkline(view.val_loss_history, spark_width), self._style("spark--loss"))
        return text

    def _accuracy_chart(self, view: EnvView, width: int, height: int) -> list[Text]:
        """Validation accuracy per epoch as a tall bar chart, with its range on the left."""
        chart_width = width - CHART_GUTTER
        points = list(view.val_acc_history)[-chart_width:]
        if not points or height < 2:
            return []
        # Few epochs so far: widen each bar (up to 3 columns) rather than leave the chart empty.
        repeat = max(1, min(3, chart_width // len(points)))
        rows = block_chart([p for p in points for _ in range(repeat)], chart_width, height)
        labels = [pct(max(points)), *[""] * (height - 2), pct(min(points))]
        lines = []
        for label, row in zip(labels, rows, strict=True):
            line = Text(f"{label:>{CHART_GUTTER - 1}} ", style=self._style("panel--dim"))
            lines.append(line.append(row, self._style("spark--acc")))
        return lines

    def _grad(self, view: EnvView, summary: EpochSummary | None, width: int) -> Text:
        """Post-clip grad norm against the threshold and the share of clipped steps, both of one
        period (the epoch in progress, or the last one summarised); the sparkline is per batch
        and its bars at the threshold were clipped."""
        threshold = view.clip_threshold
        mean, fraction = view.grad_period
        text = self._label("grad ")
        text.append(num(mean, 2))
        text.append(
            f"/{num(threshold, 2)}" if threshold else " (no clip)", self._style("panel--dim")
        )
        clipped = f" clipped {pct(fraction, 0)}" if fraction is not None else ""
        if fraction is not None and view.batch is not None:  # not the epoch's figure yet
            clipped += f" of {view.epoch_steps} sampled"
        text.append(" ")
        spark_width = max(width - text.cell_len - len(clipped) - 1, 0)
        text.append_text(self._grad_spark(view, spark_width))
        text.append(" " * max(width - text.cell_len - len(clipped), 1))
        warn = (fraction or 0.0) >= 0.5
        text.append(clipped.lstrip(), self._style("panel--warn" if warn else "panel--dim"))
        return text

    def _grad_spark(self, view: EnvView, width: int) -> Text:
        values = list(view.grad_history)[-width:] if width > 0 else []
        threshold = view.clip_threshold
        if not values:
            return Text()
        # A NaN first in the window would make max() NaN and the whole scale with it.
        top = max(max((v for v in values if math.isfinite(v)), default=0.0), threshold or 0.0)
        chars = sparkline(values, width, lo=0.0, hi=top)
        normal, clipped = self._style("spark--grad"), self._style("spark--clipped")
        text = Text()
        for at_limit, run in groupby(
            zip(chars, values, strict=False),
            key=lambda point: threshold is not None and point[1] >= threshold * 0.999,
        ):  # one span per run of a style, not per bar: spans are what a repaint pays for
            text.append("".join(char for char, _ in run), clipped if at_limit else normal)
        return text

    def _slot(self, view: EnvView, slot: SlotView, width: int) -> Text:
        state = slot.state
        text = Text(f"{state.slot_id:<7.7} ", style=self._style("panel--label"))
        text.append(f"{state.stage:<10.10}", self._style(stage_component(state.stage)))
        if state.stage == SeedStage.DORMANT:
            return text
        text.append(f" {state.blueprint or '-':<10.10}")
        text.append(f" α{state.alpha:.2f}", self._style("panel--dim"))
        figure = view.shapley(slot)
        if figure is not None:
            text.append_text(self._shapley(figure, width - text.cell_len))
        return text

    def _shapley(self, figure: ShapleyFigure, room: int) -> Text:
        """The value with its bar; one measured in another epoch than the one on screen is
        dimmed and says when (``+3.1pp@e4``) instead of passing for the current one."""
        value = points(figure.value)
        if not figure.current:
            stale = f"{value}{measured_at(figure.epoch)}"
            return Text(f" {stale:>7}", style=self._style("shapley--stale"))
        style = self._style("shapley--pos" if figure.value >= 0 else "shapley--neg")
        text = Text(f" {value:>7}", style=style)
        bar_width = min(max(room - text.cell_len - 1, 0), 12)
        text.append(" ")
        return text.append(hbar(abs(figure.value) / SHAPLEY_FULL_SCALE, bar_width).rstrip(), style)

    def _training(self, summary: EpochSummary) -> Text:
        text = self._label("train ")
        text.append(f"loss {num(summary.train_loss)} · acc {pct(summary.train_accuracy)} · ")
        return text.append_text(self._params(summary.host_params, summary.seed_params))

    def _params(self, host: int, seeds: int) -> Text:
        text = self._label("params ")
        text.append(f"{host:,}")
        return text.append(f"+{seeds:,}") if seeds else text

    def _shapley_summary(self, view: EnvView) -> Text:
        """v(all) and v(none) of the attribution the slots' current values come from; dimmed and
        marked with its epoch when that is not the epoch on screen (``shapley@e4``)."""
        attribution = view.attribution
        text = self._label("shapley")
        if attribution is None:
            return text
        dim = self._style("panel--dim")
        current = view.attribution_current
        figure = Style() if current else dim
        if not current:
            text.append(measured_at(attribution.epoch), dim)
        text.append(self._label(" v(all) "))
        text.append(pct(attribution.full_value), figure)
        text.append(self._label(" · v(∅) "))
        text.append(pct(attribution.empty_value), figure)
        method = "exact" if attribution.exact else "sampled"
        return text.append(f" · {method}, {attribution.coalitions} coalitions", dim)

    def _governor(self, view: EnvView, width: int) -> Text:
        """Panics (in a row and in total), rollbacks, last reason; fp16 skipped steps if any."""
        gov = view.governor
        text = self._label("gov ")
        panicking = gov.consecutive_panics > 0
        text.append(
            f"panics {gov.consecutive_panics} ({gov.total_panics} total)",
            self._style("panel--bad") if panicking else Style(),
        )
        text.append(f" · rollbacks {gov.rollbacks}")
        if gov.last_reason:
            text.append(" · last ", self._style("panel--label"))
            text.append(gov.last_reason, self._style("panel--warn"))
        if gov.skipped_steps:
            skipped = f" · skipped {gov.skipped_steps}"
            if text.cell_len + len(skipped) <= width:
                text.append(skipped, self._style("panel--warn"))
        return text

    def _action(self, summary: EpochSummary) -> Text:
        text = self._label("act ")
        text.append(summary.last_action)
        text.append(self._label(" · reward "))
        reward = summary.reward
        style = "panel--dim" if reward is None else ("panel--good" if reward >= 0 else "panel--bad")
        text.append(signed(reward), self._style(style))
        if summary.host_lr is not None:  # the schedule's lr, times the operator's factor
            scale = f"×{summary.lr_scale:g}" if summary.lr_scale != 1.0 else ""
            text.append(self._label(" · lr "))
            text.append(f"{summary.host_lr:.3g}{scale}")
        return text

    def _label(self, label: str) -> Text:
        return Text(label, style=self._style("panel--label"))

    def _style(self, component: str) -> Style:
        return self.component_style(component)
