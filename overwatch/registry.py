"""The user's runs, wherever they record: `overwatch ps` and `attach RUN-ID` from any directory.

Every run (and resume) registers itself in ``$XDG_STATE_HOME/overwatch/runs/`` (default
``~/.local/state/overwatch/runs/``, directories 0700): one ``RUN-ID.json`` holding its run id,
pid, recording path, control socket and start time. An entry is a pointer to the recording:
what the run is doing is read from the recording and the files next to it, as for ``--dir``.
An entry whose recording has gone is pruned; an unreadable one is skipped; neither is fatal.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from esper_engine.run_files import UnsafeFileError, read_owned, write_exclusive


def state_dir() -> Path:
    """``$XDG_STATE_HOME/overwatch`` (``~/.local/state/overwatch`` without it)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "overwatch"


def registry_dir() -> Path:
    return state_dir() / "runs"


def _entry_path(run_id: str) -> Path:
    return registry_dir() / (re.sub(r"[^A-Za-z0-9._-]", "_", run_id)[:100] + ".json")


def _private(path: Path) -> None:
    """Create ``path`` (0700) or check it: a directory this user owns, narrowed to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid():
        raise UnsafeFileError(f"{path}: not a directory owned by this user; refusing to use it")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def register(run_id: str, recording: Path, socket: str | None) -> str | None:
    """Record this process's run; returns why it could not (the run goes on without it)."""
    entry = {
        "run_id": run_id,
        "pid": os.getpid(),
        "recording": str(recording.resolve()),
        "socket": socket,
        "started": time.time(),
    }
    try:
        _private(state_dir())
        _private(registry_dir())
        write_exclusive(_entry_path(run_id), json.dumps(entry).encode())
    except OSError as exc:
        return f"not registered in {registry_dir()}: {exc}"
    return None


def registered_runs() -> dict[Path, str]:
    """Recording -> run id of every registered run still on disk; entries of vanished ones
    are pruned."""
    directory = registry_dir()
    if not directory.is_dir():
        return {}
    found = {}
    for entry in sorted(directory.glob("*.json")):
        data = _entry(entry)
        if data is None:
            continue
        recording = Path(data["recording"])
        if not recording.is_file():
            entry.unlink(missing_ok=True)  # the run's files were removed: so is its entry
            continue
        found[recording] = str(data.get("run_id", recording.stem))
    return found


def find_registered(name: str) -> Path | None:
    """The recording of the registered run called ``name`` (its run id, or its recording's
    stem); None if there is none."""
    data = _entry(_entry_path(name))
    recording = Path(data["recording"]) if data is not None else None
    if recording is None:
        stems = [path for path in registered_runs() if path.stem == name]
        recording = stems[0] if len(stems) == 1 else None
    return recording if recording is not None and recording.is_file() else None


def _entry(entry: Path) -> dict | None:
    """An entry's contents, or None when it is unreadable or not this user's (skipped)."""
    try:
        data = json.loads(read_owned(entry))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("recording"), str):
        return None
    return data
