"""`overwatch run --headless`: a compact Rich progress view on stderr, no TUI.

One line per env (epoch, accuracy, loss or perplexity, grad norm after clipping, panics, seeds),
refreshed a few times a second; meant for nohup, tmux and batch jobs. SIGINT, SIGTERM and SIGHUP
stop the trainer at a safe point and the recording is closed.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.live import Live
from rich.table import Table

from esper_engine.contracts import (
    LIVE_SEED_STAGES,
    EpochSummary,
    RunFinished,
    RunStarted,
    Stop,
    TelemetryEvent,
)
from esper_engine.session import TrainingSession


class HeadlessView:
    """Latest summary per env; rendered as one Rich table."""

    def __init__(self) -> None:
        self.started: RunStarted | None = None
        self.latest: dict[int, EpochSummary] = {}
        self.finished: RunFinished | None = None

    def ingest(self, events: list[TelemetryEvent]) -> None:
        for event in events:
            if isinstance(event, EpochSummary) and event.env is not None:
                self.latest[event.env] = event
            elif isinstance(event, RunStarted):
                self.started = event
            elif isinstance(event, RunFinished):
                self.finished = event

    def render(self, dropped: int = 0) -> Table:
        title = "starting ..."
        if self.started is not None:
            s = self.started
            title = f"{s.run_id} {s.task} {s.policy} x{s.n_envs}"
            if dropped:
                title += f"  dropped={dropped}"
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for column in ("env", "episode", "epoch", "acc", "loss", "grad|clip", "panics", "seeds"):
            table.add_column(column, justify="right" if column != "seeds" else "left")
        for env in sorted(self.latest):
            table.add_row(*self.row(self.latest[env]))
        return table

    def row(self, s: EpochSummary) -> tuple[str, ...]:
        episodes = self.started.episodes if self.started else 0
        epochs = self.started.epochs if self.started else 0
        loss = f"ppl {s.perplexity:.2f}" if s.perplexity is not None else f"{s.val_loss:.3f}"
        clip = "off" if s.clip_threshold is None else f"{s.clip_threshold:.2f}"
        seeds = " ".join(
            f"{slot.slot_id}:{slot.stage[:4].lower()}"
            for slot in s.slots
            if slot.stage in LIVE_SEED_STAGES or slot.stage == "FOSSILIZED"
        )
        return (
            str(s.env + 1),  # counted from 1, as in the console
            f"{s.episode + 1}/{episodes}",
            f"{s.epoch + 1}/{epochs}",
            f"{s.val_accuracy:.3f}",
            loss,
            f"{s.grad_norm_post_clip:.2f}|{clip}",
            f"{s.consecutive_panics}/{s.total_panics} rb{s.rollbacks}",
            seeds or "-",
        )


@contextmanager
def stop_on_signals(session: TrainingSession) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP ask the trainer to stop at its next safe point."""
    wanted = [signal.SIGINT, signal.SIGTERM] + (
        [signal.SIGHUP] if hasattr(signal, "SIGHUP") else []
    )
    previous = {sig: signal.getsignal(sig) for sig in wanted}

    def handler(signum: int, frame: object) -> None:
        session.send(Stop())

    for sig in wanted:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_headless(session: TrainingSession, refresh_hz: float = 4.0) -> int:
    """Run to the end (or a stop signal); the exit code follows RunFinished's status."""
    console = Console(file=sys.stderr)
    view = HeadlessView()
    period = 1.0 / max(refresh_hz, 0.1)
    with stop_on_signals(session):
        session.start()
        with Live(view.render(), console=console, refresh_per_second=max(refresh_hz, 1)) as live:
            while not session.wait(timeout=period):
                view.ingest(session.poll())
                live.update(view.render(session.dropped))
            view.ingest(session.poll())
            live.update(view.render(session.dropped))
    finished = session.finished
    if finished is not None and finished.status == "crashed":
        console.print(f"[bold red]run crashed:[/] {finished.error}")
    elif finished is not None:
        console.print(f"run {finished.status}")
    return session.exit_code
