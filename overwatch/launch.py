"""`overwatch run --nprocs N`: the same run over N processes, started by torchrun (SPEC 13).

No launcher of our own: this builds the torchrun command line (``python -m
torch.distributed.run --standalone --nproc-per-node=N -m overwatch run ...``, the other
arguments as given), runs it and waits. It stays the parent rather than exec-ing torchrun so
that a stopped run exits 0: torchrun exits non-zero whenever it was signalled, so the exit code
is read from the recording's ``RunFinished`` (0 completed or stopped, 1 crashed), and torchrun's
own code only for a run that records nothing.

Signals: SIGINT, SIGTERM and SIGHUP sent to this process become a ``Stop`` on the run's
control socket, so rank 0 stops every rank at the next epoch's start and torchrun ends without
being signalled (a signalled torchrun gives the ranks 30 s, then kills them). A headless run's
torchrun gets a process group of its own, so Ctrl-C in the terminal reaches only this process;
the console's stays in the terminal's group (it reads the keyboard; Ctrl-C is a key there).
Without a socket (``--no-record``) the signal is passed on to torchrun.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

RUN_ID_ENV = "OVERWATCH_RUN_ID"  # the run id the parent chose, so the file name matches it


def without_nprocs(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nprocs N`` / ``--nprocs=N`` (the ranks run one process each)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nprocs":
            skip = True
        elif not arg.startswith("--nprocs="):
            out.append(arg)
    return out


def torchrun_command(nprocs: int, run_args: Sequence[str]) -> list[str]:
    """The torchrun command line that runs ``overwatch run RUN_ARGS`` on ``nprocs`` ranks."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nprocs}",
        "-m",
        "overwatch",
        "run",
        *run_args,
    ]


def launch(
    nprocs: int,
    run_args: Sequence[str],
    run_id: str,
    recording: Path | None,
    *,
    headless: bool,
) -> int:
    """Run torchrun to the end; the exit code follows the recording's RunFinished."""
    env = dict(os.environ, **{RUN_ID_ENV: run_id})
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too (and then its banner)
    child = subprocess.Popen(
        torchrun_command(nprocs, run_args), env=env, process_group=0 if headless else None
    )

    def stop(signum: int, frame: object) -> None:
        if not _stop_over_socket(recording):
            child.send_signal(signum)

    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, stop) for sig in wanted}
    try:
        code = child.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return _recorded_exit_code(recording, run_id, fallback=code)


def _stop_over_socket(recording: Path | None) -> bool:
    """Ask rank 0 to stop the run through its control socket; False when there is none."""
    from esper_engine.contracts import Stop
    from esper_engine.control import ControlClient, ControlError, read_pid_file

    try:
        found = read_pid_file(recording) if recording is not None else None
    except OSError:  # not this user's pid file (UnsafeFileError): never send to it
        return False
    if not found or not found.get("socket"):
        return False
    try:
        ControlClient(str(found["socket"]), "overwatch-run").send(Stop())
    except ControlError:
        return False
    return True


def _recorded_exit_code(recording: Path | None, run_id: str, fallback: int) -> int:
    """The exit code the recording of run ``run_id`` says; ``fallback`` (torchrun's) when it
    holds another run (an --overwrite whose ranks failed before replacing it) or none."""
    from esper_engine.contracts import RunFinished, RunStarted, RunStatus
    from esper_engine.recording import RecordingError, read_recording

    if recording is None or not recording.is_file():
        return fallback
    try:
        events = read_recording(recording).events
    except RecordingError:
        return fallback
    if events and isinstance(events[0], RunStarted) and events[0].run_id != run_id:
        return fallback
    if not events or not isinstance(events[-1], RunFinished):
        return fallback or 1
    return 1 if events[-1].status == RunStatus.CRASHED else 0
