"""The user's runs, as `overwatch ps` lists them and `overwatch attach` finds them: those under
a runs directory, and every run in the user's registry (``overwatch.registry``).

A run is its recording (``RUN.msgpack``); next to it, while it runs, ``RUN.lock`` is held by its
process (``esper_engine.run_files``), ``RUN.pid`` names that process and its control socket, and
``RUN.ckpt`` is its latest checkpoint. A recording without
``RunFinished`` whose process is gone is a crashed run (killed, or the machine went down).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from esper_engine.contracts import EpochSummary, RunFinished, RunStarted, RunStatus
from esper_engine.control import read_pid_file, socket_alive
from esper_engine.recording import RecordingError
from esper_engine.recording_index import read_ends
from esper_engine.run_files import UnsafeFileError, pid_alive
from overwatch.registry import find_registered, registered_runs, registry_dir
from overwatch.widgets.formatting import host_label

RECORDING_SUFFIX = ".msgpack"
CHECKPOINT_SUFFIX = ".ckpt"  # esper_engine.checkpoint.SUFFIX, without importing torch


class RunError(Exception):
    """A run cannot be found or reached: one line for the operator."""


class RunState(StrEnum):
    RUNNING = "running"
    COMPLETED = RunStatus.COMPLETED.value
    STOPPED = RunStatus.STOPPED.value
    CRASHED = RunStatus.CRASHED.value
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    path: Path
    state: RunState
    pid: int | None  # the process running it, while it runs
    episode: int  # of the last EpochSummary, counted from 1 (0: none yet)
    epoch: int
    episodes: int  # planned
    epochs: int
    started: float | None  # wall time of RunStarted
    size: int  # bytes of the recording
    attachable: bool  # its control socket answers
    resumable: bool  # a checkpoint and not completed
    socket: str | None = None
    warning: str | None = None  # a file next to it refused (not this user's): one line
    host: str = ""  # "cnn 32-64-128 · 95k params" ("" for a recording older than the field)


def _running(record: Path) -> tuple[int | None, str | None]:
    """(pid, socket path) of the live process behind a recording, or (None, None)."""
    info = read_pid_file(record)
    if info is None:
        return None, None
    pid, sock = info.get("pid"), info.get("socket")
    if not isinstance(pid, int) or not pid_alive(pid):
        return None, None
    return pid, sock if isinstance(sock, str) else None


def run_info(record: Path, run_id: str | None = None) -> RunInfo:
    """What a recording (and the files next to it) say of its run (``run_id``: the one to show
    until the recording says it)."""
    started: RunStarted | None = None
    last: EpochSummary | None = None
    finished: RunFinished | None = None
    readable = True
    try:
        # Only the two ends: how the run started, its last summary and how it ended. A
        # truncated last frame is simply left out.
        ends = read_ends(record, (EpochSummary,))
    except RecordingError:
        readable = False
    else:
        started = next((e for e in ends.head if type(e) is RunStarted), None)
        last = ends.last(EpochSummary)
        finished = ends.last(RunFinished)
    warning = None
    try:
        pid, sock = _running(record)
    except UnsafeFileError as exc:
        pid, sock, warning = None, None, str(exc)
    if finished is not None:
        state = RunState(finished.status.value)
    elif pid is not None:
        state = RunState.RUNNING
    elif not readable:
        state = RunState.UNREADABLE
    else:
        state = RunState.CRASHED
    attachable = state == RunState.RUNNING and sock is not None and socket_alive(sock)
    resumable = (
        state in (RunState.STOPPED, RunState.CRASHED)
        and record.with_suffix(CHECKPOINT_SUFFIX).exists()
    )
    return RunInfo(
        run_id=started.run_id if started else run_id or record.stem,
        path=record,
        state=state,
        pid=pid if state == RunState.RUNNING else None,
        episode=last.episode + 1 if last else 0,
        epoch=last.epoch + 1 if last else 0,
        episodes=started.episodes if started else 0,
        epochs=started.epochs if started else 0,
        started=started.wall_time if started else None,
        size=record.stat().st_size,
        attachable=attachable,
        resumable=resumable,
        socket=sock if attachable else None,
        warning=warning,
        host=host_label(started.host_kind, started.host_sizes, started.host_params)
        if started
        else "",
    )


def list_runs(directory: Path | None, *, registered: bool = False) -> list[RunInfo]:
    """Every recording in the directory (and with ``registered`` every run in the user's
    registry, wherever it records), oldest first."""
    ids: dict[Path, str | None] = {}
    for path in [] if directory is None else directory.glob(f"*{RECORDING_SUFFIX}"):
        ids[path.resolve()] = None
    if registered:
        ids.update({path.resolve(): run_id for path, run_id in registered_runs().items()})
    runs = [run_info(path, run_id) for path, run_id in ids.items() if path.is_file()]
    return sorted(runs, key=lambda r: (r.started or 0.0, r.run_id))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def ps_table(runs: list[RunInfo]) -> str:
    """The `overwatch ps` table, plain text, one run per line."""
    if not runs:
        return "no runs\n"
    header = (
        *("RUN", "STATE", "PROGRESS", "STARTED", "SIZE", "HOST", "ATTACH", "RESUME"),
        "RECORDING",
    )
    rows = [header]
    for run in runs:
        state = f"running (pid {run.pid})" if run.state == RunState.RUNNING else str(run.state)
        progress = (
            f"ep {run.episode}/{run.episodes} epoch {run.epoch}/{run.epochs}"
            if run.episodes
            else "-"
        )
        started = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started)) if run.started else "-"
        )
        rows.append(
            (
                run.run_id,
                state,
                progress,
                started,
                _size(run.size),
                run.host or "-",
                "yes" if run.attachable else "no",
                "yes" if run.resumable else "no",
                str(run.path),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in rows
    )


def attach_target(run: str, directory: Path) -> tuple[Path, str]:
    """The recording and live socket of RUN: a recording path, a run id under directory, or a
    run id in the user's registry (a run recording anywhere)."""
    path = Path(run)
    if not path.is_file():
        path = directory / f"{run}{RECORDING_SUFFIX}"
    registered = None if path.is_file() else find_registered(run)
    path = registered or path
    if not path.is_file():
        raise RunError(
            f"no such run: {run} (not a recording, nor {path}, nor a run in {registry_dir()})"
        )
    info = run_info(path, run if registered else None)
    if registered and run not in (info.run_id, path.stem):  # --overwrite reused its recording
        raise RunError(f"no such run: {run} ({path} now holds run {info.run_id})")
    if info.warning is not None:
        raise RunError(info.warning)
    if info.attachable and info.socket is not None:
        return path, info.socket
    if info.state == RunState.RUNNING:
        raise RunError(f"run {info.run_id} (pid {info.pid}) does not answer on its control socket")
    hint = " (overwatch run --resume it)" if info.resumable else ""
    raise RunError(
        f"run {info.run_id} is not running ({info.state}){hint}; overwatch replay {path} shows it"
    )
