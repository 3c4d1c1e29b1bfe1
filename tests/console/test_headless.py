from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from esper_engine.config import TrainingConfig
from esper_engine.contracts import (
    AddNote,
    EpochSummary,
    Event,
    OperatorNote,
    RunFinished,
    RunStarted,
)
from esper_engine.recording import read_recording
from esper_engine.session import TrainingSession
from esper_engine.tasks import load_task
from overwatch.headless import SETUP_LINE_EVERY_S, HeadlessView, SetupLines, run_headless
from overwatch.state import RunPlan
from tests.console.fixtures import CRASH_ERROR, crashed_run, real_events

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class FakeSession:
    """Hands out a fixed run one epoch per wait(), like a trainer thread, and notes how many
    lines the view had written by each wait (to show progress appears while the run goes on)."""

    control_error = None  # its control socket is fine
    recording_error = None  # and its disk
    setup_status = ""  # set up before the first wait

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
    # the progress lines, then the run's summary (overwatch.run_summary), then its status
    progress = lines[1 : 1 + len(summaries)]
    assert lines[1 + len(summaries)].startswith(f"run {started.run_id} completed: ")
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
    lines = plain.splitlines()
    # the live table's last redraw, then the run's summary (overwatch.run_summary), the status
    headline = next(
        i for i, line in enumerate(lines) if line.startswith(f"run {events[0].run_id} ")
    )
    assert lines[headline + 2].startswith("best env ")
    final_row = lines[headline - 1].split()
    assert final_row[0] == str(max(last) + 1)
    assert final_row[3] == f"{100 * last[max(last)].val_accuracy:.1f}%"


def test_the_title_names_the_run_before_it_has_started() -> None:
    view = HeadlessView(RunPlan("r7", "cifar10", "ppo", 2, 1, 3, "cpu", None))
    assert view.title() == "r7 cifar10 ppo x2 starting ..."
    view.ingest(real_events()[:1])
    assert view.title().endswith("synthetic-images heuristic x4")


def test_set_up_progress_is_a_line_per_step_and_every_few_seconds_within_one() -> None:
    now = [0.0]
    lines = SetupLines(clock=lambda: now[0])
    assert lines.line("") is None
    assert lines.line("preparing the batches") == "setting up: preparing the batches"
    assert lines.line("preparing the batches") is None  # unchanged
    assert lines.line("building env 1/1024") == "setting up: building env 1/1024"  # a new step
    now[0] += SETUP_LINE_EVERY_S / 2
    assert lines.line("building env 300/1024") is None  # the same step, too soon
    now[0] += SETUP_LINE_EVERY_S / 2
    assert lines.line("building env 600/1024") == "setting up: building env 600/1024"
    assert lines.line("building the policy") == "setting up: building the policy"


def test_the_live_title_says_what_is_being_set_up() -> None:
    plan = RunPlan("r1", "synthetic-images", "heuristic", 1024, 3, 12, "cpu", 1.0)
    view = HeadlessView(plan)
    assert view.title(setup="building env 37/1024") == (
        "r1 synthetic-images heuristic x1024 starting ... building env 37/1024"
    )
    assert HeadlessView().title(setup="building env 2/4") == "starting ... building env 2/4"


# --- a real `overwatch run --headless` in a subprocess -------------------------------------------

SMALL_RUN = ["--n-envs", "2", "--episodes", "1", "--epochs", "3", "--batches-per-epoch", "4"]


def run_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}


def start_run(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, queue.Queue[str]]:
    """A real headless run, its stderr lines arriving on a queue."""
    process = subprocess.Popen(
        [sys.executable, "-m", "overwatch.cli", "run", "--headless", *args],
        cwd=tmp_path, env=run_env(tmp_path), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in process.stderr:
            lines.put(line)
        lines.put("")  # the end

    threading.Thread(target=read, daemon=True).start()
    return process, lines


def signal_when(
    process: subprocess.Popen, lines: queue.Queue[str], prefix: str, sig: int
) -> tuple[float, list[str]]:
    """Send ``sig`` once a stderr line starts with ``prefix``; (seconds to exit, every line)."""
    seen: list[str] = []
    deadline = time.monotonic() + 120
    try:
        while not any(line.startswith(prefix) for line in seen):
            assert time.monotonic() < deadline and "" not in seen, seen
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.1))
        process.send_signal(sig)
        signalled = time.monotonic()
        process.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        process.kill()
    while (line := lines.get(timeout=10)) != "":
        seen.append(line)
    return took, seen


def test_sigterm_while_the_task_loads_ends_the_set_up_with_one_line(tmp_path: Path) -> None:
    process, lines = start_run(tmp_path, "--record", "run.msgpack")
    took, seen = signal_when(process, lines, "loading task", signal.SIGTERM)
    assert process.returncode == 0 and took < 30.0, (took, seen)  # loose: a loaded machine
    assert seen[-1] == "overwatch: stopped during set-up (SIGTERM), before training began\n"
    assert not any("Traceback" in line for line in seen), seen


def test_sigterm_while_the_envs_are_built_stops_the_run_promptly_with_the_recording_intact(
    tmp_path: Path,
) -> None:
    """issue 21: SIGTERM while 100k envs were being built was ignored for minutes (the trainer
    took a Stop only at its first batch). The set-up says what it builds, and SIGTERM while it
    builds the envs ends the run at the next env: RunFinished(stopped), no RunStarted."""
    path = tmp_path / "run.msgpack"
    process, lines = start_run(
        tmp_path, "--n-envs", "1024", "--episodes", "1", "--epochs", "1",
        "--batches-per-epoch", "1", "--record", str(path),
    )  # fmt: skip
    took, seen = signal_when(process, lines, "setting up: building env", signal.SIGTERM)
    assert process.returncode == 0 and "run stopped\n" in seen, seen
    # Not a race with the set-up: the recording says it never finished (no RunStarted). The
    # bound is loose for a loaded machine (2 shared cores: the exit, freeing some hundred
    # half-built envs, took up to 6 s); before, the stop waited for the whole set-up.
    assert took < 30.0, took
    read = read_recording(path)
    assert read.warning is None
    assert [type(e) for e in read] == [RunFinished] and read[0].status == "stopped"


def test_a_full_disk_under_the_recorder_is_one_line_and_exit_one(tmp_path: Path) -> None:
    """issue 21: a full disk printed a raw thread traceback. The process may write files of at
    most 6 kB (RLIMIT_FSIZE: past it a write fails with EFBIG, as one on a full disk fails with
    ENOSPC): the recording stops at its last whole frame, one line says so, exit 1."""

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the failed write returns EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    path = tmp_path / "run.msgpack"
    result = subprocess.run(
        [sys.executable, "-m", "overwatch.cli", "run", "--headless", *SMALL_RUN,
         "--set", "checkpoint_every=0", "--record", str(path)],
        cwd=tmp_path, env=run_env(tmp_path), preexec_fn=small_files,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "cannot write" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"overwatch: error: {path}: cannot write the recording (")
    assert "last whole frame" in errors[0]
    read = read_recording(path)
    assert read.warning is None and isinstance(read.events[0], RunStarted)
    assert 0 < path.stat().st_size <= 6000


def _session_with_notes(tmp_path: Path) -> TrainingSession:
    """A real run (1 env, 2 tiny epochs) with two notes queued for its first safe point, one of
    them pasted with an escape sequence and a newline in it."""
    config = TrainingConfig(
        n_envs=1, episodes=1, epochs=2, batches_per_epoch=2, batch_size=16, val_batches=1
    )
    task = load_task(config.task, seed=config.seed)
    session = TrainingSession(config, task, run_id="notes", record_path=tmp_path / "n.msgpack")
    session.send(AddNote(text="loss spike?\x1b[2J\nsee above", env=0))
    session.send(AddNote(text="whole run", env=None))
    return session


def test_off_a_terminal_an_operators_note_is_a_plain_line_of_its_own(tmp_path: Path) -> None:
    session = _session_with_notes(tmp_path)
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=100, color_system=None)
    assert run_headless(session, console=console) == 0
    notes = [e for e in read_recording(tmp_path / "n.msgpack") if isinstance(e, OperatorNote)]
    assert [(n.env, n.text) for n in notes] == [
        (0, "loss spike?\x1b[2J\nsee above"),
        (None, "whole run"),
    ]
    at = f"episode {notes[0].episode + 1}  epoch {notes[0].epoch + 1}"
    lines = out.getvalue().splitlines()
    assert f"note  env 1  {at}  loss spike?\\x1b[2J\\nsee above  (from the run's process)" in lines
    assert f"note  run  {at}  whole run  (from the run's process)" in lines
    assert "\x1b" not in out.getvalue()


def test_in_a_terminal_a_note_is_printed_once_above_the_live_table(tmp_path: Path) -> None:
    session = _session_with_notes(tmp_path)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    assert run_headless(session, refresh_hz=20.0, console=console) == 0
    text = ANSI.sub("", out.getvalue())
    assert text.count("whole run  (from the run's process)") == 1
    assert text.count("loss spike?\\x1b[2J\\nsee above") == 1
