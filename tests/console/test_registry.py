"""Runs are found from anywhere: a real run registers itself in the user's state directory, so
`overwatch ps` and `attach RUN-ID` from another directory (``~``) find it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esper_engine.contracts import CommandAck, Pause, Resume
from esper_engine.control import ControlClient, read_pid_file
from esper_engine.recording import read_recording
from overwatch import registry
from overwatch.runs import RunError, attach_target
from tests.console.test_run_ownership import FLAGS, ROOT, finish, wait_until


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's home with no XDG_STATE_HOME: the registry's default place is used."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    sockets = Path(f"/tmp/ow-reg-{os.getpid()}-{time.monotonic_ns()}")
    monkeypatch.setenv("OVERWATCH_SOCKET_DIR", str(sockets))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield home
    for path in sockets.glob("*") if sockets.exists() else ():
        path.unlink()
    if sockets.exists():
        sockets.rmdir()


def overwatch(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "overwatch.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ps_and_attach_from_home_find_a_run_recording_elsewhere(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    path = project / "runs" / "far.msgpack"
    run = overwatch(["run", "--headless", *FLAGS, "--record", str(path)], project)
    wait_until(lambda: (read_pid_file(path) or {}).get("socket"), "the control socket", run)
    ControlClient(str(read_pid_file(path)["socket"]), "test").send(Pause())
    state = home / ".local" / "state" / "overwatch"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "runs").stat().st_mode) == 0o700

    ps = overwatch(["ps"], home)
    out, err = ps.communicate(timeout=60)
    assert ps.returncode == 0, err
    line = next(line for line in out.splitlines() if line.endswith(str(path)))
    assert f"running (pid {run.pid})" in line
    run_id = line.split()[0]

    monkeypatch.chdir(home)  # attach RUN-ID, as typed in ~
    record, socket_path = attach_target(run_id, Path("overwatch-runs"))
    assert record == path.resolve()
    ControlClient(socket_path, "from-home").send(Resume())
    code, err = finish(run)
    assert code == 0, err
    acks = [(e.command, e.console) for e in read_recording(path) if type(e) is CommandAck]
    assert ("Resume", "from-home") in acks
    assert read_recording(path).events[0].run_id == run_id

    missing = overwatch(["attach", "no-such-run"], home)
    _, err = missing.communicate(timeout=60)
    assert missing.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "no such run: no-such-run" in err


def test_entries_of_vanished_or_unreadable_runs_are_pruned_or_skipped(
    tmp_path: Path,
    home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from overwatch.cli import main

    recording = tmp_path / "gone.msgpack"
    recording.write_bytes(b"x")
    assert registry.register("gone", recording, None) is None
    assert registry.registered_runs() == {recording.resolve(): "gone"}
    recording.unlink()
    entries = registry.registry_dir()
    (entries / "garbage.json").write_text("{not json")
    (entries / "foreign.json").write_text('{"recording": "/etc/passwd"}')
    os.chown(entries / "foreign.json", 65534, 65534)
    monkeypatch.chdir(home)
    assert main(["ps"]) == 0
    assert capsys.readouterr().out == "no runs\n"  # neither /etc/passwd nor the vanished run
    assert not (entries / "gone.json").exists()  # pruned
    assert (entries / "garbage.json").exists()  # skipped, left for the user to see


def test_a_run_registers_even_when_its_recording_is_a_relative_path(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = Path("rel.msgpack")
    relative.write_bytes(b"x")
    registry.register("rel-run", relative, "/nowhere.sock")
    assert registry.find_registered("rel-run") == (tmp_path / "rel.msgpack").resolve()
    assert registry.find_registered("other") is None


def test_an_unusable_state_directory_is_said_and_never_fatal(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from overwatch.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker / "state"))  # under a file
    problem = registry.register("r", tmp_path / "r.msgpack", None)
    assert problem is not None and problem.startswith("not registered in")
    monkeypatch.chdir(home)
    assert main(["ps"]) == 0 and capsys.readouterr().out == "no runs\n"


def test_attach_by_the_id_of_a_run_whose_recording_was_overwritten_is_refused(
    tmp_path: Path, home: Path
) -> None:
    from tests.console.test_ps import copy_recording

    path = tmp_path / "reused.msgpack"
    copy_recording(path, finished=False)  # another run now records here (--overwrite)
    now = read_recording(path).events[0].run_id
    assert registry.register("the-old-run", path, None) is None
    with pytest.raises(RunError, match=f"the-old-run.*now holds run {now}"):
        attach_target("the-old-run", tmp_path / "elsewhere")


def test_an_entry_that_cannot_be_pruned_is_not_fatal(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from overwatch.cli import main

    assert registry.register("gone", tmp_path / "gone.msgpack", None) is None  # never recorded

    def read_only(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", read_only)  # e.g. a home mounted read-only
    monkeypatch.chdir(home)
    assert main(["ps"]) == 0 and capsys.readouterr().out == "no runs\n"
