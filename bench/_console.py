"""Console cost: the real ``overwatch run`` console in a real pty (tmux) against ``--headless``.

Both sides are the same CLI run, each in its own detached tmux session (120x40 unless asked) on
a private tmux server, so both write to a real terminal (the headless view renders on stderr).
The console runs at its default refresh rate. Each run gives three figures (``ConsoleRun``):

- the trainer's throughput, read back from the run's recording: training samples of every
  EpochSummary / (RunFinished.wall_time - RunStarted.wall_time), the trainer's own window
  without process start-up;
- the bytes per second written to the terminal over that window: tmux's ``pipe-pane`` copies
  everything the process writes to its pty into a file, whose size is read on each poll;
- the console's dropped-event count, read off the screen as "dropped N" wherever the layout
  puts it (None when the screen shows no such count).

When the run has finished the console is sent ``q``; the headless process exits by itself.
Nothing here depends on where the layout puts a widget: only the task's name (to tell that the
view came up) and the words "dropped N" are looked for on the screen.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _throughput import RunShape

from esper_engine.contracts import EpochSummary, RunFinished, RunStarted, RunStatus
from esper_engine.recording import RecordingFollower

POLL_S = 0.25
SIZE = (120, 40)
FINAL_SCREEN_S = 5.0
DROPPED = re.compile(r"\bdropped\W{0,3}(\d[\d,]*)", re.IGNORECASE)
REPO_ROOT = Path(__file__).resolve().parents[1]
TMUX_CONF = "set -g remain-on-exit on\nset -g history-limit 1000\n"


class ConsoleBenchError(Exception):
    """A console or headless run that did not complete; the message says why, in one line."""


def tmux_missing_reason() -> str | None:
    """None when tmux can be used, else why not."""
    if shutil.which("tmux") is None:
        return "tmux not found on PATH"
    return None


@dataclass(frozen=True)
class ConsoleRun:
    """What one run measured."""

    samples_per_s: float
    terminal_bytes_per_s: float  # over the trainer's window
    dropped: int | None  # the console's count on screen at the end; None: not shown (headless)

    def __str__(self) -> str:
        dropped = "" if self.dropped is None else f", dropped {self.dropped}"
        return (
            f"{self.samples_per_s:.4g} samples/s, "
            f"{self.terminal_bytes_per_s / 1024:.2f} KiB/s to the terminal{dropped}"
        )


def dropped_on_screen(text: str) -> int | None:
    """The count after the word "dropped" on a captured screen; None when there is none."""
    match = DROPPED.search(text)
    return None if match is None else int(match.group(1).replace(",", ""))


def window_rate(start: tuple[float, int] | None, end: tuple[float, int] | None) -> float:
    """Bytes per second between two (monotonic time, output size) samples."""
    if start is None or end is None or end[0] <= start[0]:
        raise ConsoleBenchError("the terminal output was not sampled across the run")
    return (end[1] - start[1]) / (end[0] - start[0])


class TmuxRunner:
    """Runs ``overwatch run`` in detached sessions of a private tmux server (ours to kill).

    The pane runs ``sh -c 'overwatch run ...; echo $? > rc'``: the shell reaps the run and
    writes its exit status, because a detached tmux server was seen to leave an exited pane
    process unreaped (pane dead, no exit status) for minutes.
    """

    def __init__(self, workdir: Path, *, threads: int) -> None:
        self.workdir = workdir
        self.socket = workdir / "tmux.sock"  # private server, removed with the workdir
        self.conf = workdir / "tmux.conf"
        self.conf.write_text(TMUX_CONF)
        self.threads = threads
        self.runs = 0
        self.timeout_s = 300.0

    def run(self, shape: RunShape, headless: bool, size: tuple[int, int] = SIZE) -> ConsoleRun:
        """One complete run in a terminal of ``size`` (columns, rows)."""
        self.runs += 1
        name = f"run{self.runs}"
        recording, status = self.workdir / f"{name}.msgpack", self.workdir / f"{name}.status"
        output = self.workdir / f"{name}.pty"
        output.touch()
        # Started paused: the pipe is in place before the process writes its first byte.
        command = self._command(shape, recording, headless, status)
        self._tmux(
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            str(size[0]),
            "-y",
            str(size[1]),
            "-c",
            str(REPO_ROOT),
            f"read go; {command}",
        )
        self._tmux("pipe-pane", "-t", name, "-o", f"cat >> {shlex.quote(str(output))}")
        self._tmux("send-keys", "-t", name, "Enter")
        try:
            events, window, screen = self._wait(
                name, recording, status, output, send_quit=not headless
            )
        finally:
            self._tmux("kill-session", "-t", name, check=False)
            recording.unlink(missing_ok=True)
            output.unlink(missing_ok=True)
        return ConsoleRun(
            samples_per_s=_throughput(events, name),
            terminal_bytes_per_s=window_rate(*window),
            dropped=None if headless else dropped_on_screen(screen),
        )

    def close(self) -> None:
        self._tmux("kill-server", check=False)

    def _command(self, shape: RunShape, recording: Path, headless: bool, status: Path) -> str:
        threads = str(self.threads)
        argv = [
            "env",
            f"OMP_NUM_THREADS={threads}",
            f"MKL_NUM_THREADS={threads}",
            sys.executable,
            "-m",
            "overwatch.cli",
            "run",
            "--n-envs",
            str(shape.n_envs),
            "--episodes",
            "1",
            "--epochs",
            str(shape.epochs),
            "--batches-per-epoch",
            str(shape.batches_per_epoch),
            "--policy",
            "static",
            "--seed",
            str(shape.seed),
            "--record",
            str(recording),
            "--set",
            f"batch_size={shape.batch_size}",
            "--set",
            f"val_batches={shape.val_batches}",
        ] + (["--headless"] if headless else [])
        partial = shlex.quote(f"{status}.partial")
        # written then renamed, so a status file that exists is complete
        return f"{shlex.join(argv)}; echo $? > {partial}; mv {partial} {shlex.quote(str(status))}"

    def _wait(
        self, name: str, recording: Path, status: Path, output: Path, send_quit: bool
    ) -> tuple[list, tuple, str]:
        """The run's events, its (start, end) output samples and the screen at its end."""
        events: list = []
        start = end = None
        screen = ""
        deadline = time.monotonic() + self.timeout_s
        quit_sent = confirmed = False
        running = None  # the last sample taken while the run had not finished
        with RecordingFollower(recording) as follower:
            while not status.exists():
                events += follower.poll()
                sample = (time.monotonic(), output.stat().st_size)
                if start is None and any(type(e) is RunStarted for e in events):
                    start = sample
                if end is None and any(type(e) is RunFinished for e in events):
                    # The window ends at the last sample of the running run: the console then
                    # draws its ended header and the end-of-run summary over the screen once
                    # (about 50 KB at 120x40), which would land inside the window or not by a
                    # poll's timing and is no part of a rate a running console streams.
                    end = running or sample
                    if send_quit:
                        screen = self._final_screen(name)
                        self._tmux("send-keys", "-t", name, "q")
                        quit_sent = True
                if quit_sent and not confirmed:
                    # q quits a finished run at once; a console that had not yet drawn the
                    # run's end asks first (type stop, Enter): answer it.
                    text = self._tmux("capture-pane", "-p", "-t", name, check=False)
                    if "type stop then enter" in text:
                        self._tmux("send-keys", "-t", name, "stop", "Enter")
                        confirmed = True
                if time.monotonic() > deadline:
                    raise ConsoleBenchError(
                        f"{name}: no exit within {self.timeout_s:.0f} s "
                        f"({len(events)} events): {self._pane_tail(name)}"
                    )
                if end is None:
                    running = sample
                time.sleep(POLL_S)
            events += follower.poll()
        if end is None and any(type(e) is RunFinished for e in events):
            # A headless run exits within a poll of writing RunFinished (no q to wait for), so
            # the loop may stop before it sees the event: the window ends at the exit instead,
            # which adds only the final lines the run writes as it exits.
            end = (time.monotonic(), output.stat().st_size)
        code = status.read_text().strip()
        if code != "0":
            raise ConsoleBenchError(f"{name}: exited with status {code}: {self._pane_tail(name)}")
        if not send_quit:
            self._check_rendered(name)
        return events, (start, end), screen

    def _final_screen(self, name: str) -> str:
        """The console's screen once it shows the run completed (its last counts drawn), or
        after a few seconds as it is."""
        deadline = time.monotonic() + FINAL_SCREEN_S
        while True:
            text = self._check_rendered(name)
            if "completed" in text or time.monotonic() > deadline:
                return text
            time.sleep(POLL_S)

    def _check_rendered(self, name: str) -> str:
        """The run's view is on the pane or in its history (both views name the task), so the
        pty was used; returns the screen. (A headless run ends by printing its ranked summary,
        which at 32 envs scrolls its view off a 40-line pane.)"""
        text = self._tmux("capture-pane", "-p", "-t", name)
        history = (
            text
            if "synthetic-images" in text
            else self._tmux("capture-pane", "-p", "-S", "-", "-t", name)
        )
        if "synthetic-images" not in history:
            raise ConsoleBenchError(f"{name}: the view never showed up: {self._pane_tail(name)}")
        return text

    def _pane_tail(self, name: str) -> str:
        text = self._tmux("capture-pane", "-p", "-t", name, check=False)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-3:]) or "(empty pane)"

    def _tmux(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", str(self.conf), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise ConsoleBenchError(f"tmux {args[0]} failed: {result.stderr.strip()}")
        return result.stdout


def _throughput(events: list, name: str) -> float:
    """Training samples / the trainer's wall-time window, from the recorded events."""
    started = next((e for e in events if type(e) is RunStarted), None)
    finished = next((e for e in events if type(e) is RunFinished), None)
    if started is None or finished is None:
        raise ConsoleBenchError(f"{name}: recording lacks RunStarted or RunFinished")
    if finished.status != RunStatus.COMPLETED:
        raise ConsoleBenchError(f"{name}: run {finished.status}: {finished.error}")
    per_summary = started.batches_per_epoch * started.config["batch_size"]
    samples = per_summary * sum(1 for e in events if type(e) is EpochSummary)
    return samples / (finished.wall_time - started.wall_time)
