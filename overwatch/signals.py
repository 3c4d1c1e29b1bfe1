"""What SIGTERM, SIGHUP and (headless) SIGINT do to a run and the view that follows it.

``handling`` installs handlers for the life of a block and puts back what was there; both front
ends use it. Headless, every one of them asks the trainer to stop at its next safe point. In the
console SIGTERM quits like a confirmed `q`, without asking, and SIGHUP means the terminal is gone
(a dropped SSH session): there is no terminal to restore, and Textual's writer can block forever
on the dead tty, so the process either stops the run and exits without touching the terminal
again, or (``--on-hangup detach``, a live run only) lets the trainer go on headless, reachable
with ``overwatch attach``, and exits when the run ends. Handlers only start threads or schedule
work on the app's loop: a signal handler must return.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from esper_engine.contracts import RunStatus, Stop
from esper_engine.session import TrainingSession
from overwatch.sources import LiveSource

if TYPE_CHECKING:
    from overwatch.app import OverwatchApp

STOP_TIMEOUT_S = 60.0  # a quit waits this long for the trainer's safe point before exiting anyway
HANGUP_MODES = ("detach", "stop")  # run --on-hangup

Handler = Callable[[int, object], None]


@contextmanager
def handling(handlers: Mapping[str, Handler]) -> Iterator[None]:
    """Install ``handlers`` (by signal name; a name this platform lacks is skipped) for the block;
    the previous handlers come back however the block ends."""
    previous = {}
    for name, handler in handlers.items():
        if hasattr(signal, name):
            sig = getattr(signal, name)
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_on_signals(session: TrainingSession) -> AbstractContextManager[None]:
    """Headless: SIGINT, SIGTERM and SIGHUP ask the trainer to stop at its next safe point."""

    def stop(signum: int, frame: object) -> None:
        session.send(Stop())

    return handling({"SIGINT": stop, "SIGTERM": stop, "SIGHUP": stop})


def console_signals(app: OverwatchApp, on_hangup: str) -> AbstractContextManager[None]:
    """The console: SIGTERM quits (stopping a run this console owns); SIGHUP stops the run and
    exits, or with ``on_hangup="detach"`` and a live run detaches from it."""
    if on_hangup not in HANGUP_MODES:
        raise ValueError(f"on_hangup must be one of {', '.join(HANGUP_MODES)}, got {on_hangup!r}")
    source = app.source

    def hang_up(*_: object) -> None:
        if on_hangup == "detach" and isinstance(source, LiveSource):
            detach(app, source)
        else:
            stop_and_exit(app)

    def terminate(*_: object) -> None:
        if app.detached:  # no app left to quit: stop the run; the waiter exits the process
            threading.Thread(target=source.stop, args=(STOP_TIMEOUT_S,), daemon=True).start()
        else:
            app.request_quit()

    return handling({"SIGTERM": terminate, "SIGHUP": hang_up})


def stop_and_exit(app: OverwatchApp) -> None:
    """The terminal is gone: stop the run in a thread and exit; an attached console resumes
    the run first if it paused it (it exits without unmounting)."""
    source = app.source

    def stop() -> None:
        app.release_pause()
        stopped = source.stop(STOP_TIMEOUT_S)  # the trainer closes the recording as it ends
        finished = source.finished
        crashed = finished is not None and finished.status == RunStatus.CRASHED
        os._exit(0 if stopped and not crashed else 1)

    threading.Thread(target=stop, name="overwatch-hangup", daemon=True).start()


def detach(app: OverwatchApp, source: LiveSource) -> None:
    """The terminal is gone, the run goes on: point the standard streams at /dev/null (so
    nothing ever writes to the dead tty), let the app end, and exit when the trainer does."""
    if app.detached:
        return
    app.detached = True
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)

    def wait_and_exit() -> None:
        # The main thread waits too once the app has ended; this one covers an app whose
        # shutdown never returns (a writer stuck on the dead tty).
        source.session.wait()
        os._exit(source.session.exit_code)

    threading.Thread(target=wait_and_exit, name="overwatch-detached", daemon=True).start()
    app.call_soon(app.exit)
