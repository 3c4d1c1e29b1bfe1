"""The event log: seed transitions, panics, rollbacks, PPO updates, commands, acks; scrollable,
filtered by kind and env, searchable."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.widget import Widget

from esper_engine.contracts import (
    AddNote,
    Command,
    CommandAck,
    EpochSummary,
    ForceRollback,
    FossilizeSeed,
    GerminateSeed,
    GovernorPanic,
    GovernorRollback,
    Initiator,
    OperatorNote,
    PolicyUpdate,
    PruneSeed,
    RunFinished,
    RunStarted,
    RunStatus,
    SeedTransition,
    SetClipThreshold,
    SetGovernorSensitivity,
    SetLrScale,
)
from overwatch.state import LOG_SIZE, LogEntry, Note, Resumed
from overwatch.widgets.formatting import (
    STAGE_COMPONENTS,
    duration,
    env_label,
    episode_number,
    epoch_number,
    fit,
    host_label,
    num,
    signed,
    stage_component,
)

LOG_KINDS = ("all", "lifecycle", "governor", "commands")  # f cycles through these
_KIND_TYPES: dict[str, tuple[type, ...]] = {
    "lifecycle": (SeedTransition,),
    "governor": (GovernorPanic, GovernorRollback),
    "commands": (CommandAck, Note, OperatorNote),
}


@dataclass
class LogFilter:
    """Which entries the log shows: a kind, one env (None: all), a search text (case folded).

    One filter for the console, so the wide and compact logs always agree."""

    kind: str = "all"
    env: int | None = None
    search: str = ""

    def describe(self) -> str:
        parts = [] if self.kind == "all" else [self.kind]
        if self.env is not None:
            parts.append(env_label(self.env))
        if self.search:
            parts.append(f"/{self.search}")
        return " · ".join(parts)


class EventLog(Widget):
    """Newest entry at the bottom, scrollable (keys when focused, the mouse wheel, or the app's
    PgUp/PgDn), filtered by ``LogFilter``; it follows the newest entries unless scrolled back.

    Focusable only while it has the keys (``take_keys``, Esc gives them back): the arrows
    move between envs otherwise, and nothing focuses the log behind the operator's back."""

    BINDINGS = [
        Binding("up", "scroll_lines(1)", "Older", show=False),
        Binding("down", "scroll_lines(-1)", "Newer", show=False),
        Binding("pageup", "scroll_page(1)", "Page older", show=False),
        Binding("pagedown", "scroll_page(-1)", "Page newer", show=False),
        Binding("home", "scroll_to(1)", "Oldest", show=False),
        Binding("end", "scroll_to(0)", "Newest", show=False),
        Binding("escape", "leave", "Leave the log", show=False),
    ]

    COMPONENT_CLASSES = {
        "log--when",
        "log--clock",
        "log--env",
        "log--dim",
        "log--panic",
        "log--rollback",
        "log--ack-ok",
        "log--ack-bad",
        "log--note",
        "log--run",
        "log--policy",
        "log--match",
        *STAGE_COMPONENTS,
    }

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.entries: list[LogEntry] = []  # every entry the state holds
        self.shown: list[LogEntry] = []  # those that pass the filter, oldest first
        self.filter = LogFilter()
        self.back = 0  # entries scrolled back from the newest (0: following)
        self.border_title = "events"
        self._shown_key: tuple | None = None
        self._plain: dict[int, str] = {}  # id(entry) -> its line as plain text, for search

    def update(self, entries: Iterable[LogEntry], revision: int, log_filter: LogFilter) -> None:
        """Show ``entries`` (``revision`` changes whenever they do; unchanged: no redraw)."""
        key = (revision, log_filter.kind, log_filter.env, log_filter.search)
        if key == self._shown_key:
            return
        refiltered = self._shown_key is None or key[1:] != self._shown_key[1:]
        self._shown_key = key
        self.filter = LogFilter(log_filter.kind, log_filter.env, log_filter.search)
        before = len(self.shown)
        self.entries = list(entries)
        self.shown = [entry for entry in self.entries if self._passes(entry)]
        if refiltered:
            self.back = 0
        elif self.back:  # scrolled back: keep the same entries on screen as new ones arrive
            self.back += max(len(self.shown) - before, 0)
        self._clamp()
        if len(self._plain) > 4 * LOG_SIZE:
            self._plain.clear()
        self._retitle()
        self.refresh()

    def _passes(self, entry: LogEntry) -> bool:
        f = self.filter
        if f.kind != "all" and not isinstance(entry, _KIND_TYPES[f.kind]):
            return False
        if f.env is not None and entry.env != f.env:
            return False
        return not f.search or f.search.casefold() in self._plain_text(entry).casefold()

    def _plain_text(self, entry: LogEntry) -> str:
        text = self._plain.get(id(entry))
        if text is None:
            text = self._plain[id(entry)] = self.describe(entry).plain
        return text

    def _retitle(self) -> None:
        """The top border (the log has no other) says the filter, the count and the scroll."""
        described = self.filter.describe()
        # Events only: this console's own "sent" lines are counted apart, so a live log and the
        # replay of its recording (which has no such lines) say the same number of events.
        events = sum(not isinstance(entry, Note) for entry in self.entries)
        shown = sum(not isinstance(entry, Note) for entry in self.shown)
        count = f"{shown}/{events}" if described else f"{events}"
        notes = len(self.entries) - events
        count += f" (+{notes} sent)" if notes else ""
        title = f"events: {described} · {count}" if described else f"events · {count}"
        scrolled = f" · ↓{self.back} newer below (end)" if self.back else ""
        self.border_title = f"{title}{scrolled} · time, episode:epoch"

    # --- scrolling --------------------------------------------------------------------------------

    def _clamp(self) -> None:
        height = max(self.content_size.height, 1)
        self.back = max(0, min(self.back, len(self.shown) - height))

    def scroll_by(self, lines: int) -> None:
        """Positive: towards older entries."""
        self.back += lines
        self._clamp()
        self._retitle()
        self.refresh()

    def action_scroll_lines(self, lines: int) -> None:
        self.scroll_by(lines)

    def action_scroll_page(self, pages: int) -> None:
        self.scroll_by(pages * max(self.content_size.height - 1, 1))

    def action_scroll_to(self, oldest: int) -> None:
        self.scroll_by(len(self.shown) if oldest else -self.back)

    def take_keys(self) -> None:
        self.can_focus = True
        self.focus()

    def action_leave(self) -> None:
        self.screen.set_focus(None)

    def on_blur(self) -> None:
        self.can_focus = False

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.scroll_by(3)

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.scroll_by(-3)

    def on_resize(self) -> None:
        self._clamp()

    # --- drawing ----------------------------------------------------------------------------------

    def render(self) -> Text:
        height, width = self.content_size.height, self.content_size.width
        end = len(self.shown) - self.back
        shown = self.shown[max(end - height, 0) : end] if height > 0 else []
        if not shown:
            empty = "no events yet" if not self.entries else "no event matches the filter"
            return Text(empty, style=self._style("log--dim"))
        lines = [self._highlight(self.describe(entry)) for entry in shown]
        for line in lines:
            fit(line, width)  # cut at a word's edge, marked with …
        return Text("\n", no_wrap=True, overflow="crop").join(lines)

    def _highlight(self, line: Text) -> Text:
        if self.filter.search:
            pattern = "(?i)" + re.escape(self.filter.search)
            line.highlight_regex(pattern, self._style("log--match"))
        return line

    def describe(self, entry: LogEntry) -> Text:
        """One entry as a styled line: when, which env, what happened."""
        line = Text(f"{clock(entry.wall_time)} ", style=self._style("log--clock"))
        when = f"{episode_number(entry.episode)}:{epoch_number(entry.epoch):02d} "
        line.append(when, style=self._style("log--when"))
        if isinstance(entry, Resumed):
            return line.append_text(self._resumed(entry))
        if isinstance(entry, Note):
            if entry.env is not None:
                line.append(f"{env_label(entry.env)} ", self._style("log--env"))
            return line.append(f"→ {entry.text}", self._style("log--note"))
        if entry.env is not None:
            line.append(f"{env_label(entry.env)} ", self._style("log--env"))
        return line.append_text(self._what(entry))

    def _what(self, entry: LogEntry) -> Text:
        if isinstance(entry, SeedTransition):
            return self._transition(entry)
        if isinstance(entry, GovernorPanic):
            text = Text(f"PANIC {entry.reason}", style=self._style("log--panic"))
            text.append(
                f" loss {num(entry.loss)} (threshold {num(entry.threshold, 1)}),"
                f" {entry.consecutive_panics} in a row"
            )
            return text.append(" → rollback due" if entry.rollback_due else "")
        if isinstance(entry, GovernorRollback):
            reason = "" if entry.reason == entry.initiator else f" ({entry.reason})"
            text = Text(f"ROLLBACK{reason}", style=self._style("log--rollback"))
            text.append(f" by {entry.initiator}")
            if entry.seeds_pruned:
                text.append(f", pruned {', '.join(entry.seeds_pruned)}")
            if entry.penalty:  # recorded as a magnitude; the policy is paid its negative
                text.append(f", reward {signed(-entry.penalty, 1)}")
            return text.append(", episode ended" if entry.episode_ended else "")
        if isinstance(entry, CommandAck):
            return self._ack(entry)
        if isinstance(entry, OperatorNote):  # the operator's words: text, never markup
            text = Text("NOTE ", style=self._style("log--note"))
            text.append(entry.text)
            sender = entry.console or "the run's process"
            return text.append(f" ({sender})", self._style("log--dim"))
        if isinstance(entry, PolicyUpdate):
            return Text(
                f"PPO update #{entry.update}: policy {signed(entry.policy_loss)}"
                f" value {num(entry.value_loss)} entropy {num(entry.entropy, 2)}"
                f" KL {num(entry.approx_kl, 4)} reward {signed(entry.mean_episode_reward)}",
                style=self._style("log--policy"),
            )
        if isinstance(entry, RunStarted):
            host = host_label(entry.host_kind, entry.host_sizes, entry.host_params)
            return Text(
                f"run started: {entry.task}{f' ({host})' if host else ''}, {entry.n_envs} envs,"
                f" {entry.policy} policy, {entry.episodes}x{entry.epochs} epochs",
                style=self._style("log--run"),
            )
        if isinstance(entry, RunFinished):
            style = "log--panic" if entry.status == RunStatus.CRASHED else "log--run"
            detail = f": {entry.error}" if entry.error else ""
            return Text(f"run {entry.status}{detail}", style=self._style(style))
        return Text(type(entry).__name__, style=self._style("log--dim"))

    def _resumed(self, entry: Resumed) -> Text:
        """``run resumed at episode 1 epoch 4 after 4m07s down (pid 1234)``."""
        ev = entry.event
        at = f"episode {episode_number(ev.from_episode)} epoch {epoch_number(ev.from_epoch)}"
        down = "" if entry.down_s is None else f" after {duration(entry.down_s)} down"
        text = Text(f"run resumed at {at}{down}", style=self._style("log--run"))
        return text.append(f" (pid {ev.pid})" if ev.pid else "", self._style("log--dim"))

    def _transition(self, entry: SeedTransition) -> Text:
        text = Text(f"{entry.slot_id} ")
        text.append(entry.from_stage, self._style(stage_component(entry.from_stage)))
        text.append(" → ")
        text.append(entry.to_stage, self._style(stage_component(entry.to_stage)))
        if entry.blueprint:
            text.append(f" {entry.blueprint}")
        return text.append(f" ({entry.initiator})", self._style("log--dim"))

    def _ack(self, entry: CommandAck) -> Text:
        value = f" {num(entry.value, 3)}" if entry.value is not None else ""
        if entry.accepted:
            text = Text(f"✓ {entry.command}{value} accepted", style=self._style("log--ack-ok"))
        else:
            text = Text(f"✗ {entry.command}{value} rejected", style=self._style("log--ack-bad"))
            text.append(f": {entry.reason}")
        # Who sent it: an attached console names itself; "" is the run's own console or script.
        sender = entry.console or "the run's process"
        return text.append(f" (#{entry.command_id} from {sender})", self._style("log--dim"))

    def _style(self, component: str) -> Style:
        return self.get_component_rich_style(component, partial=True)


def describe_ack(ack: CommandAck) -> str:
    """The toast text for an acknowledgement."""
    target = f" for {env_label(ack.env)}" if ack.env is not None else ""
    value = f" {num(ack.value, 3)}" if ack.value is not None else ""
    target += f" from {ack.console}" if ack.console else ""  # an attached console sent it
    if ack.accepted:
        return f"{ack.command}{value}{target} accepted"
    return f"{ack.command}{value}{target} rejected: {ack.reason}"


def describe_command(command: Command) -> str:
    """A command as the operator would say it, for the log line written when it is sent."""
    name = type(command).__name__
    if isinstance(command, ForceRollback):
        return f"{name} {env_label(command.env)}"
    if isinstance(command, SetClipThreshold | SetLrScale | SetGovernorSensitivity):
        target = "every env" if command.env is None else env_label(command.env)
        return f"{name} {num(command.value, 4)} ({target})"
    if isinstance(command, GerminateSeed):
        return f"{name} {env_label(command.env)} {command.slot_id} {command.blueprint}"
    if isinstance(command, PruneSeed | FossilizeSeed):
        return f"{name} {env_label(command.env)} {command.slot_id}"
    if isinstance(command, AddNote):
        return f"{name} ({'the run' if command.env is None else env_label(command.env)})"
    return name


def clock(wall_time: float) -> str:
    """An entry's wall-clock time, local, to the second ("--:--:--" when it has none)."""
    if wall_time <= 0:
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(wall_time))


def describe_alert(event: object) -> tuple[str, str] | None:
    """(severity, toast text) for an incident that must reach the operator, else None."""
    if isinstance(event, GovernorPanic):
        due = ", rollback due" if event.rollback_due else ""
        return "warning", (
            f"{env_label(event.env)}: governor panic ({event.reason}),"
            f" {event.consecutive_panics} in a row{due}"
        )
    if isinstance(event, GovernorRollback) and event.initiator != Initiator.OPERATOR:
        return "error", f"{env_label(event.env)}: rolled back by {event.initiator} ({event.reason})"
    if isinstance(event, RunFinished) and event.status == RunStatus.CRASHED:
        return "error", f"the trainer crashed: {event.error or 'no error text'}"
    if isinstance(event, EpochSummary) and not (
        math.isfinite(event.val_loss) and math.isfinite(event.train_loss)
    ):
        return "error", (
            f"{env_label(event.env)}: non-finite loss (train {num(event.train_loss)},"
            f" val {num(event.val_loss)})"
        )
    return None
