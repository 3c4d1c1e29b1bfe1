"""Console overhead: the real ``overwatch run`` console in a real pty (tmux) against ``--headless``.

Both sides are the same CLI run, each in its own detached tmux session of 120x40 on a private
tmux server, so both write to a real terminal (the headless view renders on stderr). The console
runs at its default refresh rate. The trainer's throughput is read back from the run's recording:
training samples of every EpochSummary / (RunFinished.wall_time - RunStarted.wall_time), i.e.
the trainer's own window, without process start-up. When the run has finished the console is
sent ``q``; the headless process exits by itself.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _throughput import RunShape

from esper_engine.contracts import EpochSummary, RunFinished, RunStarted, RunStatus
from esper_engine.recording import RecordingFollower

POLL_S = 0.25
SIZE = ("120", "40")
REPO_ROOT = Path(__file__).resolve().parents[1]
TMUX_CONF = "set -g remain-on-exit on\nset -g history-limit 1000\n"


class ConsoleBenchError(Exception):
    """A console or headless run that did not complete; the message says why, in one line."""


def tmux_missing_reason() -> str | None:
    """None when tmux can be used, else why not."""
    if shutil.which("tmux") is None:
        return "tmux not found on PATH"
    return None


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

    def samples_per_s(self, shape: RunShape, headless: bool) -> float:
        """One complete run; the trainer's samples/s as its recording tells it."""
        self.runs += 1
        name = f"run{self.runs}"
        recording, status = self.workdir / f"{name}.msgpack", self.workdir / f"{name}.status"
        self._tmux("new-session", "-d", "-s", name, "-x", SIZE[0], "-y", SIZE[1],
                   "-c", str(REPO_ROOT), self._command(shape, recording, headless, status))
        try:
            events = self._wait(name, recording, status, send_quit=not headless)
        finally:
            self._tmux("kill-session", "-t", name, check=False)
            recording.unlink(missing_ok=True)
        return _throughput(events, name)

    def close(self) -> None:
        self._tmux("kill-server", check=False)

    def _command(self, shape: RunShape, recording: Path, headless: bool, status: Path) -> str:
        threads = str(self.threads)
        argv = [
            "env", f"OMP_NUM_THREADS={threads}", f"MKL_NUM_THREADS={threads}",
            sys.executable, "-m", "overwatch.cli", "run", "--n-envs", str(shape.n_envs),
            "--episodes", "1", "--epochs", str(shape.epochs),
            "--batches-per-epoch", str(shape.batches_per_epoch), "--policy", "static",
            "--seed", str(shape.seed), "--record", str(recording),
        ] + (["--headless"] if headless else [])
        partial = shlex.quote(f"{status}.partial")
        # written then renamed, so a status file that exists is complete
        return f"{shlex.join(argv)}; echo $? > {partial}; mv {partial} {shlex.quote(str(status))}"

    def _wait(self, name: str, recording: Path, status: Path, send_quit: bool) -> list:
        events: list = []
        quit_sent = False
        deadline = time.monotonic() + self.timeout_s
        with RecordingFollower(recording) as follower:
            while not status.exists():
                events += follower.poll()
                if send_quit and not quit_sent and any(type(e) is RunFinished for e in events):
                    self._check_rendered(name)
                    self._tmux("send-keys", "-t", name, "q")
                    quit_sent = True
                if time.monotonic() > deadline:
                    raise ConsoleBenchError(f"{name}: no exit within {self.timeout_s:.0f} s "
                                            f"({len(events)} events): {self._pane_tail(name)}")
                time.sleep(POLL_S)
            events += follower.poll()
        code = status.read_text().strip()
        if code != "0":
            raise ConsoleBenchError(f"{name}: exited with status {code}: {self._pane_tail(name)}")
        if not send_quit:
            self._check_rendered(name)
        return events

    def _check_rendered(self, name: str) -> None:
        """The run's view is on the pane (both views name the task), so the pty was used."""
        text = self._tmux("capture-pane", "-p", "-t", name)
        if "synthetic-images" not in text:
            raise ConsoleBenchError(f"{name}: the view never showed up: {self._pane_tail(name)}")

    def _pane_tail(self, name: str) -> str:
        text = self._tmux("capture-pane", "-p", "-t", name, check=False)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-3:]) or "(empty pane)"

    def _tmux(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", str(self.conf), *args],
            capture_output=True, text=True, check=False,
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
