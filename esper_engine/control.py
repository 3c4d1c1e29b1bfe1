"""A run's control socket: operator commands from attached consoles, over a Unix domain socket.

Every recorded run listens on a socket in a directory only its owner can enter (0700; the socket
itself 0600), never on TCP. The protocol is the recording's framing: a 4-byte big-endian length,
then one msgpack-encoded command struct of the ``OperatorCommand`` union (at most
``MAX_FRAME`` bytes). The server answers each frame with one ``Reply`` frame: ``Accepted`` with
the command id the trainer will acknowledge it under, or ``Refused``. Garbage, oversize or
truncated frames, unknown types and a peer that stalls mid-frame are refused, logged (to the log
file next to the recording, never to a terminal) and the connection is closed; nothing but a
decoded command ever reaches the session.

Next to the recording, ``<stem>.pid`` says which process runs it and where its socket is, so
``overwatch attach`` and ``overwatch ps`` can find both.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from esper_engine.contracts import OperatorCommand, decode_command, encode

MAX_FRAME = 4096  # bytes of one command frame; a command is ~50
MAX_CONSOLE_ID = 64  # characters of the console id a client names itself with
READ_TIMEOUT_S = 5.0  # a peer that starts a frame and stalls this long is dropped
MAX_CLIENTS = 16  # attached consoles at once; more are refused
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
    """The pid file's contents ({"pid": int, "socket": str}), or None without a readable one."""
    try:
        data = json.loads(pid_path(record_path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the server -----------------------------------------------------------------------------------


class ControlServer:
    """Accepts commands for one run in daemon threads; ``close()`` removes the socket."""

    def __init__(
        self,
        send: Callable[[OperatorCommand], int],
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
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is created 0600, never briefly wider
        try:
            self._listener.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._listener.listen(MAX_CLIENTS)
        self._write_pid_file()
        self._thread = threading.Thread(target=self._accept, name="esper-control", daemon=True)
        self._thread.start()

    def _write_pid_file(self) -> None:
        target = pid_path(self.record_path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "socket": str(self.path)}))
        os.replace(tmp, target)

    def log(self, message: str) -> None:
        """One timestamped line in the log next to the recording (never on a terminal)."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n"
        with self._log_lock:
            try:
                with open(log_path(self.record_path), "a", encoding="utf-8") as f:
                    f.write(line)
            except OSError:
                pass  # a full disk must not stop the control socket (the recorder will say so)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closed or len(self._clients) >= MAX_CLIENTS:
                    conn.close()
                    continue
                self._clients.add(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name="esper-control-client", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        peer = _peer_pid(conn)
        try:
            # Consoles connect once per command, so silence is a stall, idle or mid-frame.
            conn.settimeout(self.read_timeout)
            while True:
                if not conn.recv(1, socket.MSG_PEEK):
                    return  # the console hung up after its last command
                reply = self._handle(_read_frame(conn), peer)
                _write_frame(conn, _REPLY_ENCODER.encode(reply))
                if isinstance(reply, Refused):
                    return
        except _BadFrame as exc:
            self.log(f"refused a frame from pid {peer}: {exc}")
            try:
                _write_frame(conn, _REPLY_ENCODER.encode(Refused(reason=str(exc))))
            except OSError:
                pass
        except TimeoutError:
            self.log(f"dropped pid {peer}: silent for {self.read_timeout:g} s")
        except OSError as exc:
            self.log(f"connection from pid {peer} failed: {exc}")
        finally:
            with self._lock:
                self._clients.discard(conn)
            conn.close()

    def _handle(self, frame: bytes, peer: int | None) -> Reply:
        try:
            command = decode_command(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _BadFrame(f"not a command: {exc}") from None
        console = command.console or f"pid {peer}"
        if len(console) > MAX_CONSOLE_ID:
            raise _BadFrame(f"console id longer than {MAX_CONSOLE_ID} characters")
        command_id = self._send(msgspec.structs.replace(command, console=console))
        self.log(f"accepted {type(command).__name__} #{command_id} from {console}")
        return Accepted(command_id=command_id)

    def close(self) -> None:
        """Stop listening, drop every client, and remove the socket and the pid file."""
        with self._lock:
            self._closed = True
            clients = list(self._clients)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for path in (self.path, pid_path(self.record_path)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


class _BadFrame(Exception):
    pass


def _peer_pid(conn: socket.socket) -> int | None:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    return struct.unpack("3i", creds)[0]


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
        self.console = console[:MAX_CONSOLE_ID]
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
            try:
                _write_frame(conn, payload)
                reply = _REPLY_DECODER.decode(_read_frame(conn))
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
