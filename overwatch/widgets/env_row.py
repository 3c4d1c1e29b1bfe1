"""One env on one line, for small terminals: the figures an operator scans across envs."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from overwatch.state import EnvView, progress_fraction
from overwatch.widgets.formatting import (
    STAGE_COMPONENTS,
    STAGE_GLYPHS,
    flops,
    num,
    pct,
    progress_label,
    stage_component,
)
from overwatch.widgets.sparkline import hbar, sparkline

SPARK_WIDTH = 10
PROGRESS_WIDTH = 4  # cells of the epoch's progress bar (blank between epochs)


class EnvRow(Widget):
    """Compact-layout row: env, accuracy + sparkline, loss, grad norm, slot glyphs, governor."""

    COMPONENT_CLASSES = {"row--label", "row--dim", "row--bad", "spark--acc", *STAGE_COMPONENTS}

    def __init__(self, env: int, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.env = env
        self.view: EnvView | None = None
        self.focused_row = False
        self._shown: tuple[int, bool] | None = None
        self._live_shown = -1  # the view's live_revision last drawn

    def update(self, view: EnvView, *, focused: bool, live: bool = True) -> None:
        """``live``: whether BatchStats alone may redraw (the app's live cadence)."""
        if (view.revision, focused) == self._shown and (
            not live or view.live_revision == self._live_shown
        ):
            return
        self._shown, self._live_shown = (view.revision, focused), view.live_revision
        self.view = view
        self.env = view.env  # sorted: a row shows whichever env is at its place
        self.focused_row = focused
        self.set_class(focused, "-focused")
        self.refresh()

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("▶" if self.focused_row else " ", self._style("row--label"))
        text.append(f"env{self.env + 1:<2}", self._style("row--label"))
        view = self.view
        summary = view.summary if view is not None else None
        progress = view.progress if view is not None else None
        if view is None or summary is None:
            if progress is None:
                return text.append(" waiting", self._style("row--dim"))
            bar = hbar(progress_fraction(progress), 2 * PROGRESS_WIDTH).replace(" ", "░")
            return text.append(f" first epoch {bar} {progress_label(progress)}")
        bar = hbar(progress_fraction(progress), PROGRESS_WIDTH) if progress else ""
        text.append(f" {bar.replace(' ', '░'):<{PROGRESS_WIDTH}}", self._style("row--dim"))
        text.append(f" {pct(summary.val_accuracy):>6} ")
        text.append(
            f"{sparkline(view.val_acc_history, SPARK_WIDTH):<{SPARK_WIDTH}}",
            self._style("spark--acc"),
        )
        text.append(self._dim(" L"))
        text.append(f"{num(summary.val_loss, 2):>5}")
        text.append(self._dim(" g"))
        text.append(f"{num(view.grad_period[0], 2)}")
        text.append(self._dim(f"/{num(view.clip_threshold, 2)}"))
        text.append(" ")
        for slot in view.slots.values():
            stage = slot.state.stage
            text.append(STAGE_GLYPHS[stage], self._style(stage_component(stage)))
        gov = view.governor
        text.append(self._dim(" P"))
        text.append(
            f"{gov.consecutive_panics}",
            self._style("row--bad") if gov.consecutive_panics else Style(),
        )
        text.append(self._dim(f"/{gov.total_panics} R"))
        text.append(f"{gov.rollbacks}")
        if view.flops:  # this episode's compute (0: a recording older than the figure)
            text.append(f" {flops(view.flops)}", self._style("row--dim"))
        text.append(f" {summary.last_action}")
        # Cut with a visible mark: a silently cropped "GERMINATE block1" passes for a whole action.
        text.truncate(self.content_size.width, overflow="ellipsis")
        return text

    def _dim(self, text: str) -> Text:
        return Text(text, style=self._style("row--dim"))

    def _style(self, component: str) -> Style:
        return self.get_component_rich_style(component, partial=True)
