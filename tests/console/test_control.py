"""The control socket on a real tiny run: owner-only, commands acked per console, junk refused."""

from __future__ import annotations

import os
import socket
import stat
import struct
import tempfile
import time
from pathlib import Path

import msgspec
import pytest

from esper_engine import control
from esper_engine.config import TrainingConfig
from esper_engine.contracts import CommandAck, Pause, Resume, RunFinished, SetClipThreshold
from esper_engine.control import ControlClient, ControlError, read_pid_file, socket_alive
from esper_engine.recording import read_recording
from esper_engine.session import TrainingSession
from esper_engine.tasks import load_task


@pytest.fixture
def socket_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, short socket directory (sun_path holds 108 bytes; pytest's tmp paths are long)."""
    base = Path(tempfile.mkdtemp(prefix="ow"))
    directory = base / "s"
    monkeypatch.setenv("OVERWATCH_SOCKET_DIR", str(directory))
    yield directory
    for path in directory.glob("*") if directory.exists() else ():
        path.unlink()
    if directory.exists():
        directory.rmdir()
    base.rmdir()


# Epochs enough to outlive any test that watches a run go on (a tiny epoch takes tens of ms on
# an idle machine: 400 of them ended under a test once); the test stops it.
LONG_RUN = 10_000


def tiny_session(tmp_path: Path, epochs: int = 4) -> TrainingSession:
    config = TrainingConfig(
        n_envs=2, episodes=1, epochs=epochs, batches_per_epoch=2, batch_size=16, val_batches=1
    )
    task = load_task("synthetic-images", seed=0, scale="small")
    return TrainingSession(config, task, run_id="ctl", record_path=tmp_path / "ctl.msgpack")


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # another thread's progress: the deadline is the limit


def raw(path: Path, data: bytes, *, read: bool = True) -> bytes:
    """Send raw bytes; return what the server answered before it hung up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(path))
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while read and (chunk := conn.recv(4096)):
                received += chunk
        except ConnectionResetError:  # the server hung up on bytes it never read
            pass
        return received


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def test_socket_is_owner_only_and_removed_with_the_run(tmp_path: Path, socket_dir: Path) -> None:
    session = tiny_session(tmp_path, epochs=2)
    session.start()
    try:
        server = session.control
        assert server is not None and server.path.parent == socket_dir
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(server.path.stat().st_mode)
        assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
        assert len(str(server.path).encode()) < 108
        info = read_pid_file(session.record_path)
        assert info == {"pid": os.getpid(), "socket": str(server.path)}
    finally:
        assert session.wait(timeout=60)
    assert not server.path.exists() and read_pid_file(session.record_path) is None


def test_a_wider_socket_directory_is_narrowed_to_the_owner(
    tmp_path: Path, socket_dir: Path
) -> None:
    socket_dir.mkdir(mode=0o755)
    os.chmod(socket_dir, 0o755)
    session = tiny_session(tmp_path, epochs=1)
    session.start()
    assert session.wait(timeout=60)
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700


def test_every_kind_of_bad_frame_is_refused_while_the_run_goes_on(
    tmp_path: Path, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "READ_TIMEOUT_S", 0.3)
    session = tiny_session(tmp_path)
    session.start()
    path = session.control.path
    client = ControlClient(path, "probe")
    client.send(Pause())  # hold the run still while it is hammered
    bad = {
        "garbage": framed(b"\xc1\xc1 not msgpack"),
        "oversize": struct.pack(">I", control.MAX_FRAME + 1) + b"x" * 64,
        "huge length": struct.pack(">I", 2**32 - 1),
        "empty frame": struct.pack(">I", 0),
        "unknown type": framed(msgspec.msgpack.encode({"type": "RunShell", "cmd": "id"})),
        "an event, not a command": framed(msgspec.msgpack.encode({"type": "RunFinished"})),
        "wrong field type": framed(msgspec.msgpack.encode({"type": "ForceRollback", "env": "0"})),
        "truncated frame": struct.pack(">I", 40) + b"\x81",
        "truncated length": b"\x00\x00",
        "long console id": framed(
            msgspec.msgpack.encode({"type": "Pause", "console": "x" * (control.MAX_CONSOLE_ID + 1)})
        ),
    }
    for what, data in bad.items():
        answer = raw(path, data)
        assert b"Refused" in answer or answer == b"", what
    # A peer that connects and says nothing is dropped after the read timeout.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.settimeout(10)
        idle.connect(str(path))
        idle.sendall(b"\x00")  # a frame begun, never finished
        assert idle.recv(64) is not None  # returns (b"" or a refusal) once the server hangs up
    assert socket_alive(path)
    client.send(Resume())
    assert session.wait(timeout=60)
    events = read_recording(session.record_path).events
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.status == "completed"
    acks = [(e.command, e.console) for e in events if isinstance(e, CommandAck)]
    assert acks == [("Pause", "probe"), ("Resume", "probe")]  # nothing else reached the trainer
    log = control.log_path(session.record_path).read_text()
    assert log.count("refused a frame") == len(bad) and "silent for 0.3 s" in log


def test_two_consoles_each_get_acks_with_their_own_id(tmp_path: Path, socket_dir: Path) -> None:
    session = tiny_session(tmp_path)
    session.start()
    path = session.control.path
    first, second = ControlClient(path, "attach-a"), ControlClient(path, "attach-b")
    a = first.send(SetClipThreshold(value=2.0))
    b = second.send(SetClipThreshold(value=3.0))
    c = first.send(SetClipThreshold(value=-1.0))  # refused by the trainer, still acked
    assert len({a, b, c}) == 3
    assert session.wait(timeout=60)
    acks = {e.command_id: e for e in read_recording(session.record_path) if type(e) is CommandAck}
    assert (acks[a].console, acks[a].accepted, acks[a].value) == ("attach-a", True, 2.0)
    assert (acks[b].console, acks[b].accepted, acks[b].value) == ("attach-b", True, 3.0)
    assert (acks[c].console, acks[c].accepted) == ("attach-a", False)
    with pytest.raises(ControlError, match="cannot reach the run"):
        first.send(Pause())  # the socket went with the run


def test_a_run_without_a_usable_socket_directory_trains_anyway_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overwatch.sources import LiveSource

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("OVERWATCH_SOCKET_DIR", str(blocker / "sockets"))  # under a file
    session = tiny_session(tmp_path, epochs=1)
    source = LiveSource(session)
    source.start()
    assert session.wait(timeout=60) and session.control is None
    assert source.warning is not None and source.warning.startswith("no control socket")
    assert read_recording(session.record_path).events[-1].status == "completed"


def test_the_socket_carries_issue_25s_commands_and_notes(tmp_path: Path, socket_dir: Path) -> None:
    """An attached console's seed command, lr factor, sensitivity and note reach the trainer,
    are acked with its name, and the note is recorded as that console's."""
    from esper_engine.contracts import (
        AddNote,
        GerminateSeed,
        OperatorNote,
        SeedTransition,
        SetGovernorSensitivity,
        SetLrScale,
    )

    session = tiny_session(tmp_path, epochs=6)
    session.start()
    client = ControlClient(session.control.path, "attach-n")
    sent = {
        client.send(GerminateSeed(env=1, slot_id="block1", blueprint="conv_light")): "germ",
        client.send(GerminateSeed(env=1, slot_id="block1", blueprint="norm")): "again",
        client.send(SetLrScale(value=0.25, env=0)): "lr",
        client.send(SetGovernorSensitivity(value=3.0)): "gov",
        client.send(AddNote(text="[red]not markup[/red]", env=1)): "note",
    }
    assert session.wait(timeout=120)
    events = read_recording(session.record_path).events
    acks = {sent[e.command_id]: e for e in events if type(e) is CommandAck and e.command_id in sent}
    assert all(a.console == "attach-n" for a in acks.values())
    assert [acks[k].accepted for k in ("germ", "lr", "gov", "note")] == [True] * 4
    assert not acks["again"].accepted and "not DORMANT" in acks["again"].reason
    (note,) = [e for e in events if type(e) is OperatorNote]
    assert (note.text, note.env, note.console) == ("[red]not markup[/red]", 1, "attach-n")
    by_operator = [e for e in events if type(e) is SeedTransition and e.initiator == "operator"]
    assert [(t.env, t.slot_id, t.to_stage) for t in by_operator] == [(1, "block1", "GERMINATED")]
