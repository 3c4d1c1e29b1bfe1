"""`overwatch run --headless`: a compact Rich progress view on stderr, no TUI.

One line per env (epoch, accuracy, loss or perplexity, grad norm after clipping, panics, seeds),
refreshed a few times a second in a terminal; elsewhere (nohup, a batch job, a pipe) one plain
line per env and epoch as it happens. An operator's note (``AddNote``, from the run's script or
an attached console) is a plain line of its own. Before the first epoch, what the trainer is
setting up ("building env 37/1024") is in the title, or a line every few seconds. SIGINT, SIGTERM
and SIGHUP stop the trainer promptly, set-up included (the next env it would build or train),
and the recording is closed.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from esper_engine.contracts import (
    LIVE_SEED_STAGES,
    EpochSummary,
    OperatorNote,
    RunFinished,
    RunStarted,
    RunStatus,
    SeedStage,
    TelemetryEvent,
)
from esper_engine.session import TrainingSession
from overwatch.run_summary import run_summary, summary_lines
from overwatch.signals import stop_on_signals
from overwatch.sources import session_plan
from overwatch.state import ConsoleState, RunPlan, reduce_many
from overwatch.widgets.formatting import estimate_duration, host_label, memory_size, num, pct

COLUMNS = ("env", "episode", "epoch", "acc", "loss", "grad|clip", "panics", "seeds")
SETUP_LINE_EVERY_S = 2.0  # off a terminal: one set-up line per step, and per this while it lasts


class HeadlessView:
    """Latest summary per env; rendered as one Rich table, or as one plain line per summary."""

    def __init__(self, plan: RunPlan | None = None) -> None:
        self.plan = plan  # what the command line said, until RunStarted says more
        self.started: RunStarted | None = None
        self.latest: dict[int, EpochSummary] = {}
        self.finished: RunFinished | None = None
        self.state = ConsoleState()  # the console's reducer, for the end-of-run summary
        self.notes: list[OperatorNote] = []  # received, not yet printed (take_note_lines)

    def ingest(self, events: list[TelemetryEvent]) -> list[EpochSummary]:
        """Keep the latest state; returns the new per-env summaries (a progress line each)."""
        new: list[EpochSummary] = []
        reduce_many(self.state, events)
        for event in events:
            if isinstance(event, EpochSummary) and event.env is not None:
                self.latest[event.env] = event
                new.append(event)
            elif isinstance(event, RunStarted):
                self.started = event
            elif isinstance(event, RunFinished):
                self.finished = event
            elif isinstance(event, OperatorNote):
                self.notes.append(event)
        return new

    def take_note_lines(self) -> list[str]:
        """The notes received since the last call, a plain line each."""
        notes, self.notes = self.notes, []
        return [self.note_line(note) for note in notes]

    @staticmethod
    def note_line(note: OperatorNote) -> str:
        """``note  env 2  episode 1  epoch 3  loss spike?  (from lab-laptop)``: where the trainer
        was when it arrived; the operator's words with control characters shown escaped, so a
        pasted escape sequence or newline never moves the cursor of the terminal or the log."""
        where = "run" if note.env is None else f"env {note.env + 1}"
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in note.text)
        sender = f"from {note.console}" if note.console else "from the run's process"
        return (
            f"note  {where}  episode {note.episode + 1}  epoch {note.epoch + 1}  {text}  ({sender})"
        )

    def title(self, dropped: int = 0, setup: str = "") -> str:
        s = self.started or self.plan
        starting = f"starting ... {setup}".rstrip()
        if s is None:
            return starting
        title = f"{s.run_id} {s.task} {s.policy} x{s.n_envs}"
        if self.started is None:
            title += f" {starting}"
        else:
            title += self.estimate(self.started)
        return title + (f"  dropped={dropped}" if dropped else "")

    @staticmethod
    def estimate(s: RunStarted) -> str:
        """``  host cnn 32-64-128 · 95k params · est. 12s/epoch · 327 MiB``, from RunStarted."""
        host = host_label(s.host_kind, s.host_sizes, s.host_params)
        parts = [f"host {host}"] if host else []
        if s.epoch_s_estimate:
            parts.append(f"est. {estimate_duration(s.epoch_s_estimate)}/epoch")
        if s.memory_estimate:
            parts.append(f"{'' if s.epoch_s_estimate else 'est. '}{memory_size(s.memory_estimate)}")
        return "  " + " · ".join(parts) if parts else ""

    def render(self, dropped: int = 0, setup: str = "") -> Table:
        title = self.title(dropped, setup)
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for column in COLUMNS:
            table.add_column(column, justify="right" if column != "seeds" else "left")
        for env in sorted(self.latest):
            table.add_row(*self.row(self.latest[env]))
        return table

    def line(self, s: EpochSummary) -> str:
        """One table row as a plain labelled line, for logs: "env 1  episode 1/3  epoch ..."."""
        pairs = zip(COLUMNS, self.row(s), strict=True)
        return "  ".join(f"{name} {value}" for name, value in pairs)

    def row(self, s: EpochSummary) -> tuple[str, ...]:
        episodes = self.started.episodes if self.started else 0
        epochs = self.started.epochs if self.started else 0
        loss = f"ppl {num(s.perplexity, 2)}" if s.perplexity is not None else num(s.val_loss)
        clip = "off" if s.clip_threshold is None else num(s.clip_threshold, 2)
        seeds = " ".join(
            f"{slot.slot_id}:{slot.stage[:4].lower()}"
            for slot in s.slots
            if slot.stage in LIVE_SEED_STAGES or slot.stage == SeedStage.FOSSILIZED
        )
        return (
            str(s.env + 1),  # counted from 1, as in the console
            f"{s.episode + 1}/{episodes}",
            f"{s.epoch + 1}/{epochs}",
            pct(s.val_accuracy),  # a percentage, as the console shows it
            loss,
            f"{num(s.grad_norm_post_clip, 2)}|{clip}",
            f"{s.consecutive_panics}/{s.total_panics} rb{s.rollbacks}",
            seeds or "-",
        )


def run_headless(
    session: TrainingSession, refresh_hz: float = 4.0, *, console: Console | None = None
) -> int:
    """Run to the end (or a stop signal); the exit code follows RunFinished's status."""
    console = console or Console(file=sys.stderr)
    view = HeadlessView(session_plan(session))
    period = 1.0 / max(refresh_hz, 0.1)
    with stop_on_signals(session):
        session.start()
        if session.control_error:
            console.print(f"[yellow]warning:[/] {escape(session.control_error)}")
        # Off a terminal (nohup, a batch job, a pipe) Live would print only the final table.
        follow = _follow_live if console.is_terminal else _follow_lines
        follow(session, view, console, period)
    finished = session.finished
    summary = run_summary(view.state)
    if summary is not None:  # before the status line, which stays the last
        console.print(Text("\n".join(summary_lines(summary))), highlight=False, soft_wrap=True)
    if session.recording_error:  # a full disk: one line, not the trainer's traceback tail
        console.print(
            f"overwatch: error: {escape(session.recording_error)}", highlight=False, soft_wrap=True
        )
    elif finished is not None and finished.status == RunStatus.CRASHED:
        console.print(f"[bold red]run crashed:[/] {escape(finished.error or '')}")
    elif finished is not None:
        console.print(f"run {finished.status}")
    return session.exit_code


def _follow_live(
    session: TrainingSession, view: HeadlessView, console: Console, period: float
) -> None:
    """A table redrawn in place; Live ends it with a newline, so the status gets its own line."""
    refresh = max(1.0 / period, 1.0)
    with Live(view.render(), console=console, refresh_per_second=refresh) as live:
        while not session.wait(timeout=period):
            view.ingest(session.poll())
            _print_notes(view, live.console)
            live.update(view.render(session.dropped, session.setup_status))
        view.ingest(session.poll())
        _print_notes(view, live.console)
        live.update(view.render(session.dropped))


def _print_notes(view: HeadlessView, console: Console) -> None:
    """Notes go above the live table, which stays at the bottom; as text, never markup."""
    for line in view.take_note_lines():
        console.print(Text(line), highlight=False, soft_wrap=True)


def _follow_lines(
    session: TrainingSession, view: HeadlessView, console: Console, period: float
) -> None:
    """One flushed plain line per epoch summary, so a log shows progress as it happens."""
    out = console.file
    announced = False
    done = False
    setup = SetupLines()
    while not done:
        done = session.wait(timeout=period)
        lines = [view.line(summary) for summary in view.ingest(session.poll())]
        lines += view.take_note_lines()
        if view.started is None and (line := setup.line(session.setup_status)):
            lines.append(line)
        if not announced and view.started is not None:
            announced = True
            lines.insert(0, view.title())
        if lines:
            out.write("".join(line + "\n" for line in lines))
            out.flush()


class SetupLines:
    """Set-up progress as log lines: one when the step changes ("preparing the batches",
    "building env ..."), and one every ``SETUP_LINE_EVERY_S`` while a step goes on."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._shown = ""
        self._step = ""
        self._at = -float("inf")

    def line(self, status: str) -> str | None:
        if not status or status == self._shown:
            return None
        step = " ".join(status.split()[:2])  # "building env 37/1024" -> "building env"
        now = self.clock()
        if step == self._step and now - self._at < SETUP_LINE_EVERY_S:
            return None
        self._shown, self._step, self._at = status, step, now
        return f"setting up: {status}"
