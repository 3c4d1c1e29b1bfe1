"""Where a replay stands: play state, speed, event position and the epoch on screen."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from overwatch.sources import ReplayPosition, speed_label
from overwatch.widgets.formatting import episode_number, epoch_number
from overwatch.widgets.sparkline import hbar

BAR_WIDTH = 16  # the position bar; half as wide below 100 columns


class ReplayBar(Widget):
    """One line above the footer, shown only in replay mode."""

    COMPONENT_CLASSES = {"replay--mode", "replay--label", "replay--bar", "replay--dim"}

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.position: ReplayPosition | None = None

    def update(self, position: ReplayPosition | None) -> None:
        if position == self.position:
            return
        self.position = position
        self.refresh()

    def render(self) -> Text:
        pos = self.position
        if pos is None:
            return Text()
        mode = "FOLLOW" if pos.follow else "REPLAY"
        state = "▶ playing" if pos.playing else "❚❚ paused"
        text = Text(f" {mode} ", style=self._style("replay--mode"))
        text.append(f" {state} {speed_label(pos.speed)} ")
        text.append("│ event ", self._style("replay--label"))
        text.append(f"{pos.index:,}/{pos.total:,} ")
        bar_width = BAR_WIDTH if self.content_size.width >= 100 else BAR_WIDTH // 2
        bar = hbar(pos.percent / 100, bar_width).replace(" ", "░")
        text.append(bar, self._style("replay--bar"))
        text.append(f" {pos.percent:5.1f}% ")
        text.append("│ ep ", self._style("replay--label"))
        text.append(f"{episode_number(pos.episode)}")
        text.append(" · epoch ", self._style("replay--label"))
        text.append(f"{epoch_number(pos.epoch)}")
        text.truncate(self.content_size.width)
        return text

    def _style(self, component: str) -> Style:
        return self.get_component_rich_style(component, partial=True)
