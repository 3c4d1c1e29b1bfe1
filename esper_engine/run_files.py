"""The files that steer a run: its lock, pid file and checkpoint.

A run is the one owner of its recording: it takes an exclusive ``flock`` on ``RUN.lock`` before
it writes anything (recording, checkpoint, pid file, socket). The kernel drops the lock when the
process dies, so a ``kill -9`` leaves nothing that blocks a ``--resume``; a second run or resume
on a held path is told the holder's pid, which the lock file holds.

In a shared directory another user could plant any of these files (or a symbolic link in their
place), so they are created exclusively (``O_EXCL | O_NOFOLLOW``, then an atomic rename) and read
only when the reading user owns them; anything else is refused with one line.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import time
from pathlib import Path

LOCK_SUFFIX = ".lock"


class UnsafeFileError(OSError):
    """A run's file that is not ours (another user's, or a link): the message is one line."""

    def __str__(self) -> str:
        return str(self.args[0])


class RunLockedError(Exception):
    """Another live process holds the run's lock; ``pid`` is that process (None: not yet said)."""

    def __init__(self, record: Path, pid: int | None) -> None:
        self.record = record
        self.pid = pid
        holder = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"{record} is in use by a live run ({holder}); it is left untouched")


def lock_path(record: str | os.PathLike[str]) -> Path:
    """``run.msgpack`` -> ``run.lock``."""
    return Path(record).with_suffix(LOCK_SUFFIX)


def open_owned(path: Path, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """A descriptor of ``path``, a regular file this user owns; UnsafeFileError otherwise."""
    try:
        # O_NONBLOCK: a planted FIFO must not hang the open (regular files ignore it).
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symbolic link
            raise UnsafeFileError(f"{path}: a symbolic link; refusing to follow it") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeFileError(f"{path}: not a regular file; refusing to use it")
    if info.st_uid != os.getuid():
        os.close(fd)
        raise UnsafeFileError(
            f"{path}: owned by uid {info.st_uid}, not by this user (uid {os.getuid()}); "
            "refusing to use it"
        )
    return fd


def read_owned(path: Path) -> bytes:
    """The bytes of a file this user owns (FileNotFoundError, UnsafeFileError otherwise)."""
    with os.fdopen(open_owned(path), "rb") as file:
        return file.read()


def private_dir(path: Path) -> Path:
    """Create (or check) a directory only its owner can enter (0700); refuse anyone else's."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode):  # a link is refused too
        raise UnsafeFileError(f"{path}: not a directory owned by this user; refusing to use it")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def temporary_beside(path: Path) -> tuple[Path, int]:
    """A new file next to ``path``, created exclusively (0600): (its path, a write descriptor)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return tmp, os.open(tmp, flags, 0o600)


def write_exclusive(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` through a file created exclusively, renamed into place (a
    planted file or link at ``path`` is replaced, never written through)."""
    tmp, fd = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class RunLock:
    """The exclusive lock on a recording, held until ``release`` or the process's death."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, record: str | os.PathLike[str]) -> RunLock:
        """Take the lock of ``record``; RunLockedError when a live process holds it."""
        path = lock_path(record)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = open_owned(path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _live_holder_pid(fd)
                os.close(fd)
                raise RunLockedError(Path(record), pid) from None
            # A holder that released unlinks the file: a lock on an unlinked file locks nothing.
            if _same_file(fd, path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and let go (later calls do nothing)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _same_file(fd, self.path):
                self.path.unlink()
        finally:
            os.close(fd)  # the unlink comes first: a waiting locker then sees a new file


def _live_holder_pid(fd: int, wait: float = 2.0) -> int | None:
    """The holder's pid. A new holder writes it just after taking the lock, so for a moment the
    file may hold nothing or a killed holder's pid: wait up to ``wait`` seconds for a live one
    (a refusal must never name a dead process)."""
    deadline = time.monotonic() + wait
    while True:
        pid = _holder_pid(fd)
        if (pid is not None and pid_alive(pid)) or time.monotonic() > deadline:
            return pid
        time.sleep(0.01)  # the holder is between its flock and its pwrite


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process has that pid: alive, just not ours
    return True


def _holder_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)
