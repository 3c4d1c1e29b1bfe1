"""The control socket and the files that steer a run, against a hostile or overloaded world:
idle and simultaneous clients, a stopped run, other users' sockets and files, raw names."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import msgspec
import pytest

from esper_engine import control
from esper_engine.checkpoint import CheckpointError, read_checkpoint
from esper_engine.contracts import CommandAck, Pause, Resume, SetClipThreshold
from esper_engine.control import ControlClient, ControlError, pid_path, read_pid_file
from esper_engine.recording import read_recording
from esper_engine.run_files import UnsafeFileError
from overwatch.cli import main
from overwatch.runs import RunError, attach_target
from tests.console import test_control, test_run_ownership
from tests.console.test_control import LONG_RUN, framed, raw, tiny_session, wait_for
from tests.console.test_ps import copy_recording
from tests.console.test_run_ownership import FLAGS, finish, overwatch, wait_until

socket_dir = test_control.socket_dir  # fixtures: a short socket directory, a run's environment
env = test_run_ownership.env

NOBODY = 65534


def test_idle_connections_do_not_shut_out_a_client_and_100_at_once_all_succeed(
    tmp_path: Path, socket_dir: Path
) -> None:
    session = tiny_session(tmp_path, epochs=LONG_RUN)
    session.start()
    path = str(session.control.path)
    idle = []
    try:
        for _ in range(40):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(path)
            idle.append(conn)
        ControlClient(path, "normal", timeout=5).send(Pause())  # answered at once, not refused
        ids, errors = [], []
        start = threading.Barrier(100)

        def one(n: int) -> None:
            start.wait()
            try:
                ids.append(ControlClient(path, f"c{n}", timeout=30).send(Pause()))
            except ControlError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=one, args=(n,)) for n in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == [] and len(set(ids)) == 100
        wait_for(lambda: session.thread_state == "paused", "the run to pause")
    finally:
        for conn in idle:
            conn.close()
        assert session.stop(timeout=60)
    acks = [e.console for e in read_recording(session.record_path) if type(e) is CommandAck]
    assert {f"c{n}" for n in range(100)} <= set(acks)


def test_a_command_that_timed_out_on_a_stopped_run_is_never_applied(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / "stopped.msgpack"
    run = overwatch(["run", "--headless", *FLAGS, "--record", str(path)], env)
    wait_until(lambda: (read_pid_file(path) or {}).get("socket"), "the control socket", run)
    sock = str(read_pid_file(path)["socket"])
    ControlClient(sock, "test").send(Pause())
    os.kill(run.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: process_state(run.pid) == "T", "the run to stop")
        with pytest.raises(ControlError, match="did not answer within 0.5 s; the command was"):
            ControlClient(sock, "late", timeout=0.5).send(SetClipThreshold(value=7.0))
    finally:
        os.kill(run.pid, signal.SIGCONT)
    log = control.log_path(path)
    # The log is created by its first line: until the run has woken and dropped the command,
    # there may be no file at all.
    wait_until(
        lambda: log.exists() and "dropped SetClipThreshold" in log.read_text(),
        "the drop logged",
        run,
    )
    ControlClient(sock, "test").send(Resume())
    code, err = finish(run)
    assert code == 0, err
    acks = [(e.command, e.console) for e in read_recording(path) if type(e) is CommandAck]
    assert acks == [("Pause", "test"), ("Resume", "test")]  # nothing from "late"
    assert "from late: the client had gone" in log.read_text()


def process_state(pid: int) -> str:
    """R, S, T (stopped), ... as the kernel says (after the command name, which may hold ')')."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def serve_as_nobody(directory: Path) -> tuple[subprocess.Popen[str], Path]:
    """A socket another user (nobody) listens on, where a planted pid file could point."""
    directory.mkdir(mode=0o777, exist_ok=True)
    os.chmod(directory, 0o777)
    path = directory / "evil.sock"
    code = (
        "import os, socket, sys\n"
        f"os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        f"s.bind({str(path)!r}); s.listen(8); print('ready', flush=True)\n"
        "while True:\n"
        "    c, _ = s.accept(); c.recv(4096)\n"
    )
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    return server, path


def test_a_client_refuses_a_socket_served_by_another_user(tmp_path: Path) -> None:
    server, path = serve_as_nobody(Path(f"/tmp/ow-evil-{os.getpid()}"))
    try:
        with pytest.raises(ControlError, match=f"served by uid {NOBODY}, not by this user"):
            ControlClient(str(path), "me").send(Pause())
    finally:
        server.kill()
        server.wait()
        path.unlink()
        path.parent.rmdir()


def test_the_server_refuses_a_peer_of_another_user(tmp_path: Path, socket_dir: Path) -> None:
    session = tiny_session(tmp_path, epochs=LONG_RUN)
    session.start()
    path = session.control.path
    try:
        ControlClient(path, "me").send(Pause())
        wait_for(lambda: session.thread_state == "paused", "the run to pause")
        for directory in (path.parent, path.parent.parent):  # as if their modes were lost:
            os.chmod(directory, 0o711)  # the peer check still holds
        os.chmod(path, 0o666)
        code = (
            "import os, socket, struct, msgspec\n"
            f"os.setgid({NOBODY}); os.setuid({NOBODY})\n"
            "c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.settimeout(10)\n"
            f"c.connect({str(path)!r})\n"
            "p = msgspec.msgpack.encode({'type': 'Stop'})\n"
            "try:\n"
            "    c.sendall(struct.pack('>I', len(p)) + p); print(repr(c.recv(64)))\n"
            "except OSError as e:\n"
            "    print('closed', e)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        answer = out.stdout.strip()  # hung up on, with no reply: EOF, EPIPE or a reset
        assert answer == "b''" or answer.startswith("closed"), answer
        log = control.log_path(session.record_path)
        wait_for(lambda: f"uid {NOBODY}, not this run's user" in log.read_text(), "the refusal")
        assert session.thread_state == "paused"  # the Stop never reached the run
    finally:
        assert session.stop(timeout=60)
    consoles = [e.console for e in read_recording(session.record_path) if type(e) is CommandAck]
    assert consoles[0] == "me" and not any(c.startswith("pid ") for c in consoles)


def test_a_planted_pid_file_of_another_user_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "run.msgpack"
    copy_recording(record, finished=False)
    planted = pid_path(record)
    planted.write_text(f'{{"pid": {os.getpid()}, "socket": "/tmp/evil.sock"}}')
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(UnsafeFileError, match=f"owned by uid {NOBODY}"):
        read_pid_file(record)
    with pytest.raises(RunError, match=f"run.pid: owned by uid {NOBODY}, not by this user"):
        attach_target(str(record), tmp_path)
    assert main(["attach", str(record)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refusing to use it" in err
    assert main(["ps", "--dir", str(tmp_path)]) == 0  # ps lists it, says why, goes on
    out, err = capsys.readouterr()
    assert "crashed" in out and f"owned by uid {NOBODY}" in err
    planted.unlink()
    planted.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        read_pid_file(record)


def test_planted_links_at_the_pid_file_and_log_are_never_written_through(
    tmp_path: Path, socket_dir: Path
) -> None:
    target = tmp_path / "victim.txt"
    target.write_text("keep")
    session = tiny_session(tmp_path, epochs=1)
    pid_path(session.record_path).symlink_to(target)
    control.log_path(session.record_path).symlink_to(target)
    session.start()
    try:
        assert not pid_path(session.record_path).is_symlink()
        assert read_pid_file(session.record_path)["pid"] == os.getpid()
        ControlClient(session.control.path, "me").send(Pause())  # logged: not through the link
        ControlClient(session.control.path, "me").send(Resume())
    finally:
        assert session.wait(timeout=60)
    assert target.read_text() == "keep"


def test_a_checkpoint_of_another_user_is_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    path.write_bytes(b"anything")
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(CheckpointError, match=f"owned by uid {NOBODY}"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    "name", ["evil\x1b[2J", "two\nlines", "tab\there", "x" * (control.MAX_CONSOLE_ID + 1), ""]
)
def test_console_names_are_printable_and_bounded(
    tmp_path: Path, socket_dir: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="console name"):
        ControlClient("/nowhere", name)
    if name:
        assert main(["attach", "whatever", "--console", name]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "console name" in err


def test_the_server_refuses_a_raw_name_and_logs_nothing_raw(
    tmp_path: Path, socket_dir: Path
) -> None:
    session = tiny_session(tmp_path, epochs=LONG_RUN)
    session.start()
    try:
        ControlClient(session.control.path, "me").send(Pause())
        wait_for(lambda: session.thread_state == "paused", "the run to pause")
        payload = msgspec.msgpack.encode({"type": "Resume", "console": "a\x1b]0;pwned\x07\nb"})
        assert b"console name must be printable" in raw(session.control.path, framed(payload))
        assert session.thread_state == "paused"
    finally:
        assert session.stop(timeout=60)
    log = control.log_path(session.record_path).read_text()
    assert "\x1b" not in log and "pwned" not in log
    consoles = [e.console for e in read_recording(session.record_path) if type(e) is CommandAck]
    assert consoles and all(c.isprintable() for c in consoles)


def test_a_socket_whose_pid_file_cannot_be_written_is_not_left_behind(
    tmp_path: Path, socket_dir: Path
) -> None:
    record = tmp_path / "run.msgpack"
    pid_path(record).mkdir()  # the pid file cannot be put in place
    with pytest.raises(OSError):
        control.ControlServer(lambda command, reply=None: 1, record, "run")
    assert list(socket_dir.iterdir()) == []
