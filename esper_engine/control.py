"""A run's control socket: operator commands from attached consoles, over a Unix domain socket.

Every recorded run listens on a socket in a directory only its owner can enter (0700; the socket
itself 0600), never on TCP. The protocol is the recording's framing: a 4-byte big-endian length,
then one msgpack-encoded command struct of the ``OperatorCommand`` union (at most
``MAX_FRAME`` bytes). The server answers each frame with one ``Reply`` frame: ``Accepted`` with
the command id the trainer will acknowledge it under, or ``Refused``. Garbage, oversize or
truncated frames, unknown types and a peer that stalls mid-frame are refused, logged (to the log
file next to the recording, never to a terminal) and the connection is closed; nothing but a
decoded command ever reaches the session.

Only processes of the run's own user are served (``SO_PEERCRED``), and a client sends only to a
socket its own user serves. A command reaches the session only once its ``Accepted`` reply has
been written to a client still there: a client that gave up waiting (the run was stopped or
busy) has closed its end, the write fails, and the command is dropped and logged, so nothing
reported "timed out" is applied later behind the operator's back.

Next to the recording, ``<stem>.pid`` says which process runs it and where its socket is, so
``overwatch attach`` and ``overwatch ps`` can find both; it is written through a file created
exclusively and read only when the reading user owns it (``esper_engine.run_files``).
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from esper_engine.contracts import OperatorCommand, decode_command, encode
from esper_engine.run_files import UnsafeFileError, open_owned, read_owned, write_exclusive

MAX_FRAME = 4096  # bytes of one command frame; a command is ~50
MAX_CONSOLE_ID = 64  # characters of the console id a client names itself with
READ_TIMEOUT_S = 5.0  # a peer that starts a frame and stalls this long is dropped
MAX_CLIENTS = 256  # connections served at once; more wait in the accept backlog
BACKLOG = 128  # connections the kernel queues before the server accepts them
_LENGTH = struct.Struct(">I")


class Accepted(msgspec.Struct, frozen=True, tag=True):
    command_id: int


class Refused(msgspec.Struct, frozen=True, tag=True):
    reason: str


Reply = Accepted | Refused
_REPLY_DECODER = msgspec.msgpack.Decoder(Reply)
_REPLY_ENCODER = msgspec.msgpack.Encoder()


class ControlError(Exception):
    """A client could not reach a run, or the run refused what it sent."""


# --- where things are ---------------------------------------------------------------------------


def socket_dir() -> Path:
    """The owner-only directory for sockets: short, so a path fits sun_path (108 bytes)."""
    base = os.environ.get("OVERWATCH_SOCKET_DIR")
    if base:
        return Path(base)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "overwatch"
    return Path(tempfile.gettempdir()) / f"overwatch-{os.getuid()}"


def pid_path(record_path: Path) -> Path:
    """``run.msgpack`` -> ``run.pid``: which process runs the recording, and its socket."""
    return record_path.with_suffix(".pid")


def log_path(record_path: Path) -> Path:
    return record_path.with_suffix(".control.log")


def _private_dir(path: Path) -> Path:
    """Create (or check) a directory only its owner can enter; refuse anyone else's."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if info.st_uid != os.getuid() or not os.path.isdir(path) or os.path.islink(path):
        raise OSError(f"{path}: not a directory owned by this user; refusing to use it")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def read_pid_file(record_path: Path) -> dict[str, object] | None:
    """The pid file's contents ({"pid": int, "socket": str}), or None without a readable one;
    UnsafeFileError (one line) for one this user does not own, or a link."""
    try:
        data = json.loads(read_owned(pid_path(record_path)))
    except UnsafeFileError:
        raise
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the server -----------------------------------------------------------------------------------


class _Peer:
    """One connection: what it sent so far, and when it must have sent the rest."""

    def __init__(self, conn: socket.socket, pid: int | None, deadline: float) -> None:
        self.conn = conn
        self.pid = pid
        self.deadline = deadline
        self.buffer = bytearray()


class ControlServer:
    """Accepts commands for one run in one selector thread; ``close()`` removes the socket.

    One thread serves every connection without blocking on any: an idle or stalled peer costs a
    descriptor until its read timeout, so 40 idle connections leave a normal client answered
    and 100 at once all are (up to ``MAX_CLIENTS`` open, the rest wait in the accept backlog).
    """

    def __init__(
        self,
        send: Callable[..., int],
        record_path: Path,
        run_id: str,
        *,
        read_timeout: float | None = None,
    ) -> None:
        self._send = send
        self.record_path = record_path
        self.read_timeout = READ_TIMEOUT_S if read_timeout is None else read_timeout
        directory = _private_dir(socket_dir())
        self.path = directory / f"{run_id[:40]}-{os.getpid()}-{secrets.token_hex(3)}.sock"
        self._log_lock = threading.Lock()
        self._peers: dict[int, _Peer] = {}
        self._closed = False
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is created 0600, never briefly wider
        try:
            self._listener.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._listener.listen(BACKLOG)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._write_pid_file()
        self._thread = threading.Thread(target=self._loop, name="esper-control", daemon=True)
        self._thread.start()

    def _write_pid_file(self) -> None:
        info = {"pid": os.getpid(), "socket": str(self.path)}
        write_exclusive(pid_path(self.record_path), json.dumps(info).encode())

    def log(self, message: str) -> None:
        """One timestamped line in the log next to the recording (never on a terminal)."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n"
        with self._log_lock:
            try:
                # Never through a planted link, never into another user's file.
                fd = open_owned(log_path(self.record_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                with os.fdopen(fd, "a", encoding="utf-8") as f:
                    f.write(line)
            except OSError:
                pass  # a full disk (or a planted log) must not stop the control socket

    # The loop: accept, read, answer, and drop peers past their deadline.

    def _loop(self) -> None:
        listening = True
        while not self._closed:
            now = time.monotonic()
            soonest = min((p.deadline for p in self._peers.values()), default=now + 1.0)
            for key, _ in self._selector.select(max(0.0, soonest - now)):
                if key.data == "wake":
                    return
                if key.data == "listener":
                    self._accept()
                else:
                    self._read(key.data)
            full = len(self._peers) >= MAX_CLIENTS
            if full == listening:  # at the limit, new peers wait in the backlog
                listening = not full
                if listening:
                    self._selector.register(self._listener, selectors.EVENT_READ, "listener")
                else:
                    self._selector.unregister(self._listener)
            now = time.monotonic()
            for peer in [p for p in self._peers.values() if p.deadline <= now]:
                self.log(f"dropped pid {peer.pid}: silent for {self.read_timeout:g} s")
                self._drop(peer)

    def _accept(self) -> None:
        while len(self._peers) < MAX_CLIENTS:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log(f"accept failed: {exc}")
                return
            pid, uid = _peer_credentials(conn)
            if uid != os.getuid():
                self.log(f"refused pid {pid}: uid {uid}, not this run's user")
                conn.close()
                continue
            conn.setblocking(False)
            peer = _Peer(conn, pid, time.monotonic() + self.read_timeout)
            self._peers[conn.fileno()] = peer
            self._selector.register(conn, selectors.EVENT_READ, peer)

    def _read(self, peer: _Peer) -> None:
        if peer.conn.fileno() < 0:
            return  # dropped earlier in this same round of events
        try:
            chunk = peer.conn.recv(MAX_FRAME + _LENGTH.size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.log(f"connection from pid {peer.pid} failed: {exc}")
            self._drop(peer)
            return
        if not chunk:
            if peer.buffer:
                self._refuse(peer, f"truncated frame: {len(peer.buffer)} bytes, then hung up")
            self._drop(peer)  # the console hung up after its last command
            return
        peer.buffer += chunk
        peer.deadline = time.monotonic() + self.read_timeout
        while len(peer.buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(peer.buffer)
            if length == 0 or length > MAX_FRAME:
                self._refuse(peer, f"frame length {length} outside 1..{MAX_FRAME}")
                self._drop(peer)
                return
            if len(peer.buffer) < _LENGTH.size + length:
                return
            frame = bytes(peer.buffer[_LENGTH.size : _LENGTH.size + length])
            del peer.buffer[: _LENGTH.size + length]
            if not self._answer(peer, frame):
                self._drop(peer)
                return

    def _answer(self, peer: _Peer, frame: bytes) -> bool:
        """Decode one frame and hand its command on once the reply has reached the client;
        False when the connection is done."""
        try:
            command = decode_command(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._refuse(peer, f"not a command: {exc}")
            return False
        try:
            console = check_console_name(command.console or f"pid {peer.pid}")
        except ValueError as exc:
            self._refuse(peer, str(exc))
            return False
        command = msgspec.structs.replace(command, console=console)
        name = type(command).__name__

        def reply(command_id: int) -> bool:
            """Answer first: a client that gave up waiting ("timed out") is gone by now, and
            its command is dropped here rather than applied without anyone being told."""
            try:
                _write_frame(peer.conn, _REPLY_ENCODER.encode(Accepted(command_id=command_id)))
            except OSError:
                self.log(f"dropped {name} #{command_id} from {console}: the client had gone")
                return False
            self.log(f"accepted {name} #{command_id} from {console}")
            return True

        self._send(command, reply)
        return True

    def _refuse(self, peer: _Peer, reason: str) -> None:
        self.log(f"refused a frame from pid {peer.pid}: {reason}")
        try:
            _write_frame(peer.conn, _REPLY_ENCODER.encode(Refused(reason=reason)))
        except OSError:
            pass

    def _drop(self, peer: _Peer) -> None:
        self._peers.pop(peer.conn.fileno(), None)
        try:
            self._selector.unregister(peer.conn)
        except (KeyError, ValueError):
            pass
        peer.conn.close()

    def close(self) -> None:
        """Stop listening, drop every client, and remove the socket and the pid file."""
        if self._closed:
            return
        self._closed = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for peer in list(self._peers.values()):
            self._drop(peer)
        self._listener.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        for path in (self.path, pid_path(self.record_path)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def check_console_name(name: str) -> str:
    """A console's name, as logs and recordings show it: printable, at most MAX_CONSOLE_ID
    characters (ValueError, one line, otherwise)."""
    if not name or len(name) > MAX_CONSOLE_ID:
        raise ValueError(f"console name must be 1 to {MAX_CONSOLE_ID} characters")
    if not name.isprintable():
        raise ValueError("console name must be printable (no control characters or newlines)")
    return name


def _peer_credentials(conn: socket.socket) -> tuple[int | None, int | None]:
    """(pid, uid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None, None
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


class _BadFrame(Exception):
    pass


def _recv_exact(conn: socket.socket, n: int, what: str) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise _BadFrame(f"truncated {what}: {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def _read_frame(conn: socket.socket) -> bytes:
    (length,) = _LENGTH.unpack(_recv_exact(conn, _LENGTH.size, "length prefix"))
    if length == 0 or length > MAX_FRAME:
        raise _BadFrame(f"frame length {length} outside 1..{MAX_FRAME}")
    return _recv_exact(conn, length, "frame")


def _write_frame(conn: socket.socket, payload: bytes) -> None:
    conn.sendall(_LENGTH.pack(len(payload)) + payload)


# --- the client -----------------------------------------------------------------------------------


class ControlClient:
    """One console's way to a run's socket: a connection per command, so nothing is held open
    while the operator reads the screen; ``send`` returns the command's id."""

    def __init__(self, path: str | Path, console: str, *, timeout: float = 5.0) -> None:
        self.path = str(path)
        self.console = check_console_name(console)
        self.timeout = timeout

    def send(self, command: OperatorCommand) -> int:
        payload = encode(msgspec.structs.replace(command, console=self.console))
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(self.timeout)
        try:
            try:
                conn.connect(self.path)
            except OSError as exc:
                raise ControlError(f"cannot reach the run: {exc.strerror or exc}") from None
            _pid, uid = _peer_credentials(conn)
            if uid != os.getuid():
                raise ControlError(
                    f"{self.path}: served by uid {uid}, not by this user; refusing to send to it"
                )
            try:
                _write_frame(conn, payload)
                reply = _REPLY_DECODER.decode(_read_frame(conn))
            except TimeoutError:
                # Closing now tells the run: a command whose reply cannot reach us is dropped.
                raise ControlError(
                    f"the run did not answer within {self.timeout:g} s; the command was dropped"
                ) from None
            except (OSError, _BadFrame, msgspec.DecodeError) as exc:
                raise ControlError(f"the run did not answer: {exc}") from None
        finally:
            conn.close()
        if isinstance(reply, Refused):
            raise ControlError(f"the run refused the command: {reply.reason}")
        return reply.command_id


def socket_alive(path: str | Path, timeout: float = 0.5) -> bool:
    """Whether something listens on the socket (a stale file after kill -9 refuses)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(str(path))
    except OSError:
        return False
    finally:
        conn.close()
    return True
