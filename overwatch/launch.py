"""`overwatch run --nprocs N`: the same run over N processes, started by torchrun (SPEC 13).

No launcher of our own: this builds the torchrun command line (``python -m
torch.distributed.run --standalone --nproc-per-node=N -m overwatch run ...``, the other
arguments as given), runs it and waits. It stays the parent rather than exec-ing torchrun so
that a stopped run exits 0: torchrun exits non-zero whenever it was signalled, so the exit code
is read from the recording's ``RunFinished`` (0 completed or stopped, 1 crashed), and torchrun's
own code only for a run that records nothing.

Signals: Ctrl-C reaches every process of the terminal's group at once (torchrun passes it on to
the ranks too); SIGTERM and SIGHUP sent to this process are passed to torchrun, which passes
them to every rank. Rank 0 stops the run at the next epoch's start, the other ranks ignore them
and stop with it.
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


def launch(nprocs: int, run_args: Sequence[str], run_id: str, recording: Path | None) -> int:
    """Run torchrun to the end; the exit code follows the recording's RunFinished."""
    env = dict(os.environ, **{RUN_ID_ENV: run_id})
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too (and then its banner)
    child = subprocess.Popen(torchrun_command(nprocs, run_args), env=env)

    def forward(signum: int, frame: object) -> None:
        child.send_signal(signum)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),  # it reached torchrun too
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
    }
    try:
        code = child.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return _recorded_exit_code(recording, fallback=code)


def _recorded_exit_code(recording: Path | None, fallback: int) -> int:
    from esper_engine.contracts import RunFinished, RunStatus  # noqa: PLC0415
    from esper_engine.recording import RecordingError, read_recording  # noqa: PLC0415

    if recording is None or not recording.is_file():
        return fallback
    try:
        events = read_recording(recording).events
    except RecordingError:
        return fallback
    if not events or not isinstance(events[-1], RunFinished):
        return fallback or 1
    return 1 if events[-1].status == RunStatus.CRASHED else 0
