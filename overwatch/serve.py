"""The replay console in a browser: textual-serve on 127.0.0.1, one replay process per visitor.

textual-serve runs a shell command for every browser connection and carries its terminal over a
websocket. The command is always ``overwatch replay FILE`` (read-only, the control keys greyed
out), never a trainer: a page can watch a run, it cannot steer one. The server binds the
loopback address only; reach it from another machine through an SSH tunnel
(``ssh -L 8000:127.0.0.1:8000 host``), which also keeps it behind SSH's authentication.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from pathlib import Path

EXTRA_HINT = "pip install 'overwatch-esper[serve]'"
HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class ServeError(Exception):
    """The server cannot start (missing extra, port taken); the message says why in one line."""


def replay_command(path: str | os.PathLike[str], *, follow: bool = False) -> str:
    """The shell command each visitor's console runs: this interpreter, so the same install."""
    argv = [sys.executable, "-m", "overwatch.cli", "replay", str(Path(path).resolve())]
    return shlex.join([*argv, "--follow"] if follow else argv)


def serve(path: str | os.PathLike[str], *, follow: bool = False, port: int = DEFAULT_PORT) -> None:
    """Serve the replay of ``path`` at http://127.0.0.1:PORT until Ctrl+C or SIGTERM."""
    try:
        from textual_serve.server import Server  # an optional extra
    except ImportError:
        raise ServeError(f"serve needs the serve extra: {EXTRA_HINT}") from None
    _check_port(port)  # before the server prints its banner: a taken port is one line
    server = Server(
        replay_command(path, follow=follow),
        host=HOST,
        port=port,
        title=f"overwatch replay {Path(path).name}",
    )
    try:
        server.serve()
    except OSError as exc:  # the port is taken, or not ours to bind
        raise ServeError(f"cannot serve on {HOST}:{port}: {exc.strerror or exc}") from None


def _check_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            raise ServeError(f"cannot serve on {HOST}:{port}: {exc.strerror or exc}") from None
