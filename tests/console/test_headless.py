from __future__ import annotations

import io
import re

from rich.console import Console

from esper_engine.config import TrainingConfig
from esper_engine.contracts import EpochSummary, Event, RunFinished, RunStarted
from overwatch.headless import HeadlessView, run_headless
from overwatch.state import RunPlan
from tests.console.fixtures import CRASH_ERROR, crashed_run, real_events

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class FakeSession:
    """Hands out a fixed run one epoch per wait(), like a trainer thread, and notes how many
    lines the view had written by each wait (to show progress appears while the run goes on)."""

    control_error = None  # its control socket is fine

    def __init__(self, events: list[Event], out: io.StringIO) -> None:
        self.chunks: list[list[Event]] = [[]]
        for event in events:
            self.chunks[-1].append(event)
            if isinstance(event, EpochSummary) and event.env == 0:
                self.chunks.append([])
        self.out = out
        self.lines_at_wait: list[int] = []
        self.ready: list[Event] = []
        self.finished: RunFinished | None = None
        self.dropped = 0
        self.run_id = events[0].run_id
        self.config = TrainingConfig()

    def start(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        self.lines_at_wait.append(self.out.getvalue().count("\n"))
        if self.chunks:
            self.ready += self.chunks.pop(0)
        if self.chunks:
            return False
        self.finished = next(e for e in self.ready if isinstance(e, RunFinished))
        return True

    def poll(self) -> list[Event]:
        events, self.ready = self.ready, []
        return events

    @property
    def exit_code(self) -> int:
        return 1 if self.finished is None or self.finished.status == "crashed" else 0


def headless(events: list[Event], *, terminal: bool) -> tuple[int, str, FakeSession]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=100, color_system=None)
    session = FakeSession(events, out)
    code = run_headless(session, refresh_hz=4.0, console=console)  # type: ignore[arg-type]
    return code, out.getvalue(), session


def render(view: HeadlessView, width: int = 80) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(view.render(dropped=3))
    return console.export_text()


def test_one_line_per_env_with_the_latest_epoch() -> None:
    events = real_events()
    view = HeadlessView()
    view.ingest(events)
    started = next(e for e in events if isinstance(e, RunStarted))
    last = {e.env: e for e in events if isinstance(e, EpochSummary)}
    text = render(view)
    rows = [line.split() for line in text.splitlines()[2:] if line.strip()]
    assert [int(row[0]) for row in rows] == [env + 1 for env in sorted(last)]
    for row, env in zip(rows, sorted(last), strict=True):
        summary = last[env]
        assert row[1] == f"{summary.episode + 1}/{started.episodes}"
        assert row[2] == f"{summary.epoch + 1}/{started.epochs}"
        assert row[3] == f"{100 * summary.val_accuracy:.1f}%"  # as the console shows it
        assert row[5].startswith(f"{summary.grad_norm_post_clip:.2f}|")
    assert "dropped=3" in text
    assert isinstance(view.finished, RunFinished)
    assert all(len(line) <= 80 for line in text.splitlines())


def test_off_a_terminal_each_epoch_is_a_plain_line_as_it_happens() -> None:
    events = real_events()
    started = next(e for e in events if isinstance(e, RunStarted))
    summaries = [e for e in events if isinstance(e, EpochSummary) and e.env is not None]
    code, text, session = headless(events, terminal=False)
    lines = text.splitlines()
    assert code == 0
    assert "\x1b" not in text  # no cursor movement in a log file
    assert lines[0].startswith(started.run_id) and lines[-1] == "run completed"
    progress = lines[1:-1]
    assert len(progress) == len(summaries)
    for line, s in zip(progress, summaries, strict=True):
        assert line.startswith(
            f"env {s.env + 1}  episode {s.episode + 1}/{started.episodes}  "
            f"epoch {s.epoch + 1}/{started.epochs}  acc {100 * s.val_accuracy:.1f}%  loss "
        )
        assert f"grad|clip {s.grad_norm_post_clip:.2f}|" in line
    # Written epoch by epoch, not at the end: every wait saw more lines than the one before.
    seen = session.lines_at_wait
    assert len(seen) > 2 and all(b > a for a, b in zip(seen, seen[1:], strict=False))


def test_off_a_terminal_a_crash_is_reported_verbatim_and_exits_one() -> None:
    code, text, _ = headless(crashed_run(), terminal=False)
    assert code == 1
    assert text.splitlines()[-1] == f"run crashed: {CRASH_ERROR}"


def test_in_a_terminal_the_table_is_live_and_the_status_has_its_own_line() -> None:
    events = real_events()
    last = {e.env: e for e in events if isinstance(e, EpochSummary)}
    code, text, _ = headless(events, terminal=True)
    plain = ANSI.sub("", text)
    assert code == 0
    assert "\x1b[" in text  # redrawn in place
    assert not re.search(r"^env \d+  episode", plain, re.MULTILINE)  # no log lines
    assert plain.endswith("\nrun completed\n")
    final_row = plain.splitlines()[-2].split()
    assert final_row[0] == str(max(last) + 1)
    assert final_row[3] == f"{100 * last[max(last)].val_accuracy:.1f}%"


def test_the_title_names_the_run_before_it_has_started() -> None:
    view = HeadlessView(RunPlan("r7", "cifar10", "ppo", 2, 1, 3, "cpu", None))
    assert view.title() == "r7 cifar10 ppo x2 starting ..."
    view.ingest(real_events()[:1])
    assert view.title().endswith("synthetic-images heuristic x4")
