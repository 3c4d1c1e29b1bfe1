"""The tail of the event log: seed transitions, panics, rollbacks, PPO updates, commands, acks."""

from __future__ import annotations

from collections.abc import Iterable

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from esper_engine.contracts import (
    Command,
    CommandAck,
    ForceRollback,
    GovernorPanic,
    GovernorRollback,
    PolicyUpdate,
    RunFinished,
    RunStarted,
    RunStatus,
    SeedTransition,
    SetClipThreshold,
)
from overwatch.state import LogEntry, Note
from overwatch.widgets.formatting import (
    STAGE_COMPONENTS,
    env_label,
    episode_number,
    epoch_number,
    num,
    signed,
    stage_component,
)


class EventLog(Widget):
    """Newest entry at the bottom; shows as many entries as its height allows."""

    COMPONENT_CLASSES = {
        "log--when",
        "log--env",
        "log--dim",
        "log--panic",
        "log--rollback",
        "log--ack-ok",
        "log--ack-bad",
        "log--note",
        "log--run",
        "log--policy",
        *STAGE_COMPONENTS,
    }

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.entries: list[LogEntry] = []
        self.border_title = "events"
        self._shown_revision: int | None = None

    def update(self, entries: Iterable[LogEntry], revision: int) -> None:
        """Show ``entries`` (``revision`` changes whenever they do; unchanged: no redraw)."""
        if revision == self._shown_revision:
            return
        self._shown_revision = revision
        self.entries = list(entries)
        self.border_subtitle = f"{len(self.entries)} (episode:epoch)"
        self.refresh()

    def render(self) -> Text:
        height, width = self.content_size.height, self.content_size.width
        shown = self.entries[-height:] if height > 0 else []
        if not shown:
            return Text("no events yet", style=self._style("log--dim"))
        lines = [self.describe(entry) for entry in shown]
        for line in lines:
            line.truncate(width)
        return Text("\n", no_wrap=True, overflow="crop").join(lines)

    def describe(self, entry: LogEntry) -> Text:
        """One entry as a styled line: when, which env, what happened."""
        when = f"{episode_number(entry.episode)}:{epoch_number(entry.epoch):02d} "
        line = Text(when, style=self._style("log--when"))
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
            if entry.penalty:
                text.append(f", penalty {signed(entry.penalty, 1)}")
            return text.append(", episode ended" if entry.episode_ended else "")
        if isinstance(entry, CommandAck):
            return self._ack(entry)
        if isinstance(entry, PolicyUpdate):
            return Text(
                f"PPO update #{entry.update}: policy {signed(entry.policy_loss)}"
                f" value {num(entry.value_loss)} entropy {num(entry.entropy, 2)}"
                f" KL {num(entry.approx_kl, 4)} reward {signed(entry.mean_episode_reward)}",
                style=self._style("log--policy"),
            )
        if isinstance(entry, RunStarted):
            return Text(
                f"run started: {entry.task}, {entry.n_envs} envs, {entry.policy} policy,"
                f" {entry.episodes}x{entry.epochs} epochs",
                style=self._style("log--run"),
            )
        if isinstance(entry, RunFinished):
            style = "log--panic" if entry.status == RunStatus.CRASHED else "log--run"
            detail = f": {entry.error}" if entry.error else ""
            return Text(f"run {entry.status}{detail}", style=self._style(style))
        return Text(type(entry).__name__, style=self._style("log--dim"))

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
        return text.append(f" (#{entry.command_id})", self._style("log--dim"))

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
    if isinstance(command, SetClipThreshold):
        target = "every env" if command.env is None else env_label(command.env)
        return f"{name} {num(command.value, 4)} ({target})"
    return name
