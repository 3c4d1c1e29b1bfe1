"""The Overwatch console: the app that owns a run's source, its state and the commands it sends.

The app never blocks on the trainer: a timer polls the source a few times a second and reduces
the events into ``ConsoleState`` inside ``batch_update()``; the main screen
(``overwatch.screens.main``) shows the state and answers the operator's keys, modal screens
(``overwatch.screens``) ask before anything irreversible, and ``overwatch.signals`` says what
SIGTERM and a hang-up do. Commands go out through the source; their acknowledgements come back as
events (log + toast). Every key on the main screen passes a typing guard first
(``overwatch.key_settling``, by the rules of ``overwatch.keys``): text meant for another window
never acts.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable, Iterable

try:
    import termios
except ImportError:  # not on Windows
    termios = None

from textual import events
from textual.app import App, SystemCommand
from textual.driver import Driver
from textual.screen import Screen

from esper_engine.contracts import (
    CommandAck,
    Event,
    OperatorCommand,
    Pause,
    Resume,
    RunStatus,
    SetClipThreshold,
)
from overwatch.compare import RunSeries, SeriesBuilder
from overwatch.key_settling import KeySettler
from overwatch.keys import KeyClock
from overwatch.run_summary import run_summary, summary_lines
from overwatch.screens.bindings import APP_BINDINGS
from overwatch.screens.confirm import ConfirmModal
from overwatch.screens.crash import CrashModal
from overwatch.screens.main import MainScreen
from overwatch.screens.palette import TEXTUAL_SHADOWED, palette_commands
from overwatch.screens.summary import SummaryScreen
from overwatch.signals import STOP_TIMEOUT_S, console_signals
from overwatch.sources import EventSource, LiveSource
from overwatch.state import ConsoleState, log_note, reduce_many
from overwatch.terminal_output import compacting
from overwatch.widgets.ascii import AsciiFilter
from overwatch.widgets.event_log import describe_ack, describe_alert, describe_command
from overwatch.widgets.themes import ALIASES, THEMES

ALERT_TOAST_S = 10.0
SUMMARY_TOAST_S = 20.0  # a replay's end: the summary's headline, u for the rest
termios_error: type[Exception] = getattr(termios, "error", OSError) if termios else OSError
SEVERITIES = ("information", "warning", "error")  # the worst of a tick's alerts colours its toast


class OverwatchApp(App[int]):
    """The console for a live run (``LiveSource``) or a recording (``ReplaySource``)."""

    CSS_PATH = "overwatch.tcss"
    TITLE = "Overwatch"
    # ctrl+p: every action of the main screen by name, with its key (screens/palette.py), and
    # Textual's theme picker.
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = APP_BINDINGS  # the main screen's keys are in overwatch.screens.bindings

    def __init__(
        self,
        source: EventSource,
        refresh_hz: float = 4.0,
        *,
        clock: Callable[[], float] = time.time,
        stop_timeout: float = STOP_TIMEOUT_S,
        bell: bool = False,
        theme: str | None = None,
        ascii_only: bool = False,
        ansi16: bool = False,
        key_clock: Callable[[], float] | None = None,
        compare: RunSeries | None = None,
    ) -> None:
        super().__init__()
        if not math.isfinite(refresh_hz) or refresh_hz <= 0:
            raise ValueError(f"refresh_hz must be a positive number, got {refresh_hz}")
        for custom in THEMES:
            self.register_theme(custom)
        if theme is not None:
            self.theme = ALIASES.get(theme, theme)  # an unknown name raises InvalidThemeError
        self.ascii_only = ascii_only
        # A 16-colour terminal: the footer in plain ANSI colours (run_console detects it).
        self.ansi16 = ansi16
        if ascii_only:
            self._filters.append(AsciiFilter())
        self.bell_on_alert = bell
        self.source = source
        self.refresh_hz = refresh_hz
        self.clock = clock
        # Keys are timed apart from the wall clock: a burst of them is text for another window.
        self.key_clock = KeyClock(key_clock)
        self.key_settler = KeySettler(self, self.key_clock, forward=super().on_event)
        self._paused_here = False  # this console paused the run and has not resumed it
        self.stop_timeout = stop_timeout
        self.state = ConsoleState.planned(source.plan)
        self.main = MainScreen(source)
        self._sent_ids: set[int] = set()
        # (env or None: every env, threshold) sent, not yet acknowledged
        self._pending_clip: tuple[int | None, float] | None = None
        self._pause_wanted: bool | None = None  # likewise for pause/resume
        self._crash_shown = False
        self._summary_shown = False  # the end-of-run summary has opened by itself
        # run --compare REF: the reference, and this run's series as its events arrive (v)
        self.compare_reference = compare
        self.compare_live = SeriesBuilder("live") if compare is not None else None
        self._paused_shown = False  # the footer says Pause until a pause is acknowledged
        self._finished_shown = False  # the run's end as the footer's key states last saw it
        self._warned: str | None = None
        self.quitting = False
        self.detached = False  # the terminal hung up and the run goes on without this screen
        self._loop: asyncio.AbstractEventLoop | None = None

    def get_default_screen(self) -> MainScreen:
        return self.main

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        if screen is self.main:
            yield from palette_commands(self, screen)
        for command in super().get_system_commands(screen):
            if command.title not in TEXTUAL_SHADOWED:
                yield command

    # --- keys: single commands, not typing -------------------------------------------------------

    async def on_event(self, event: events.Event) -> None:
        """A key or paste for the main screen passes the typing guard first (``key_settling``)."""
        if not await self.key_settler.intercept(event):
            await super().on_event(event)

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: str = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Every toast is plain text: it may quote a console name, a file name, a refusal reason
        or a recorded value, any of which may hold brackets that Textual would read as markup.
        """
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)  # type: ignore[arg-type]

    def get_driver_class(self) -> type[Driver]:
        """Textual's driver for this platform; in a terminal, writing the smallest style changes
        (``terminal_output``): a third fewer bytes over SSH, the same screen."""
        return compacting(super().get_driver_class())

    # --- the source and the refresh tick --------------------------------------------------------

    async def on_mount(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.app_resume_signal.subscribe(self, self._repaint_after_fg)

    def _repaint_after_fg(self, _: object) -> None:
        """Back from ctrl+z (`fg`): the terminal shows the shell's lines, so every cell is
        written again (the line widgets would otherwise redraw only the lines that change)."""
        self.main.refresh()
        self.screen.refresh()

    async def start_source(self) -> None:
        """Once the main screen is laid out (its ``on_mount``): start the source and the tick."""
        self.source.start()
        await self.tick()
        self._warn_once()
        self.set_interval(1.0 / self.refresh_hz, self.tick)

    def on_unmount(self) -> None:
        self.release_pause()  # however the app ends: q, SIGTERM, an exception in the console

    def on_resize(self, event: events.Resize) -> None:
        if self.main.is_mounted:
            self.main.resize(event.size.width, event.size.height)
            self.main.update_widgets()

    async def tick(self) -> None:
        """Drain the source, reduce, and let the main screen show it."""
        polled = self.source.poll()
        with self.batch_update():
            if polled.reset:
                self.state = polled.state or ConsoleState.planned(self.source.plan)
            reduce_many(self.state, polled.events)
            if self.compare_live is not None:
                self.compare_live.ingest(polled.events)
            self.state.dropped = self.source.dropped
            self.state.setup = getattr(self.source, "setup_status", "")  # a live run's set-up
            if not polled.reset:
                self._react(polled.events)
            await self.main.show(polled.events, polled.reset)
        paused = self.state.trainer_state == "paused"
        if self.state.finished != self._finished_shown or paused != self._paused_shown:
            # Controls grey out once the run has finished; p says Resume while paused. Only
            # then: the footer rebuilds all its keys on every refresh_bindings.
            self._finished_shown = self.state.finished
            self._paused_shown = paused
            self.refresh_bindings()
        self._warn_once()
        if self.state.finished_status == RunStatus.CRASHED and not self._crash_shown:
            self._crash_shown = True
            self.push_screen(CrashModal(self.state.error, self.exit_code()))
        elif self.state.finished and not self._summary_shown and not self._crash_shown:
            self._summary_shown = True  # once: u opens it again (a crash's notice comes first)
            summary = run_summary(self.state)
            if summary is None:
                pass
            elif self.source.capabilities.replay_controls:
                # A replay at its end: its keys (step back, search) stay the operator's.
                # One toast line over the footer: the key first, so a narrow one cuts the rest.
                best = summary_lines(summary)[2]
                self.notify(f"u: run summary · {best}", timeout=SUMMARY_TOAST_S)
            else:
                self.push_screen(SummaryScreen(summary))

    def _react(self, new_events: list[Event]) -> None:
        """Toast the acks of commands this console sent; settle what was pending on them."""
        acks = [e for e in new_events if type(e) is CommandAck and e.command_id in self._sent_ids]
        for ack in acks:
            if ack.command == "SetClipThreshold":
                self._pending_clip = None
            elif ack.command in ("Pause", "Resume"):
                self._pause_wanted = None
        # One toast line (over the footer): the tick's last ack, then its alerts in one toast.
        if acks:
            ack = acks[-1]
            self.notify(describe_ack(ack), severity="information" if ack.accepted else "error")
        alerts = [alert for e in new_events if (alert := describe_alert(e)) is not None]
        if alerts:
            severity = max((s for s, _ in alerts), key=SEVERITIES.index)
            text = alerts[0][1]
            if len(alerts) > 1:
                text += f" (+{len(alerts) - 1} more: see the event log, f: governor)"
            self.notify(text, severity=severity, timeout=ALERT_TOAST_S)
        if alerts and self.bell_on_alert:
            self.bell()

    def _warn_once(self) -> None:
        """A source's warning (truncated recording, follow error) is shown once, as a toast."""
        warning = self.source.warning
        if warning and warning != self._warned:
            self._warned = warning
            self.notify(warning, severity="warning", timeout=15)

    # --- commands to the trainer ----------------------------------------------------------------

    def send(self, command: OperatorCommand, env: int | None = None) -> bool:
        """Send ``command`` (about ``env``, None: the whole run) and log that it went out;
        whether it did."""
        command_id = self.source.send(command)
        if command_id is None:
            self._warned = self.source.warning  # shown here, not again by _warn_once
            reason = self.source.warning or "read-only: commands cannot be sent"
            self.notify(reason, severity="warning")
            return False
        self._sent_ids.add(command_id)
        text = f"sent {describe_command(command)} (#{command_id})"
        log_note(self.state, text, env=env, wall_time=self.clock())
        self.main.update_widgets()
        return True

    def current_clip(self, env: int | None = None) -> float | None:
        """The threshold of ``env`` (None: the run's) to build on: one still in flight for it
        (or for every env) wins over the last one reported."""
        pending = self._pending_clip
        if pending is not None and pending[0] in (env, None):
            return pending[1]
        if env is not None and env < len(self.state.envs):
            return self.state.envs[env].clip_threshold
        return self.state.clip_threshold

    def send_clip(self, value: float, env: int | None = None) -> None:
        self._pending_clip = (env, value)
        self.send(SetClipThreshold(value=value, env=env), env=env)

    def paused(self) -> bool:
        """Paused as far as the operator is concerned: the last p wins until its ack lands."""
        if self._pause_wanted is not None:
            return self._pause_wanted
        return self.state.trainer_state == "paused"

    def set_paused(self, paused: bool) -> None:
        """p: pause (or resume) the run; the footer shows the other key at once."""
        self._pause_wanted = paused
        if self.send(Pause() if paused else Resume()):
            self._paused_here = paused
        self.refresh_bindings()

    def release_pause(self) -> None:
        """An attached console that paused the run resumes it as it goes, however it goes (q,
        a crash of this console, SIGTERM): a run is never left paused by a console that is gone.
        """
        caps = self.source.capabilities
        if self._paused_here and caps.attached and caps.controls and not self.state.finished:
            self._paused_here = False
            self.source.send(Resume())

    # --- quitting -------------------------------------------------------------------------------

    async def action_quit(self) -> None:
        """q: a trainer this console owns and that still trains stops only once `stop` is
        typed and Enter pressed (a slowly typed word starting with q must not end the run);
        a replay, an attach (it only detaches) or a finished run quits at once."""
        if not self._owns_a_training_run():
            self._begin_quit()
            return

        def answered(confirmed: bool | None) -> None:
            if confirmed:
                self._begin_quit()
            elif self.state.finished:
                self.notify("quit not confirmed; the run has finished, q quits")
            else:
                self.notify("the run goes on: quit not confirmed, nothing sent")

        self.push_screen(
            ConfirmModal(
                "Stop the run and quit?",
                "The trainer stops at its next safe point and closes its recording, then "
                "this console exits.",
                answer="stop",
                clock=self.key_clock,
            ),
            answered,
        )

    async def action_quit_now(self) -> None:
        """ctrl+c: as q, without the question."""
        self._begin_quit()

    def _owns_a_training_run(self) -> bool:
        caps = self.source.capabilities
        return caps.controls and not caps.attached and not (self.state.finished or self.quitting)

    def call_soon(self, callback: Callable[[], object]) -> bool:
        """Run ``callback`` on the app's loop; safe from any thread and from a signal handler.
        False when the app is not running (nothing was scheduled)."""
        if self._loop is None:
            return False
        self._loop.call_soon_threadsafe(callback)
        return True

    def request_quit(self) -> None:
        """Stop at a safe point and exit; safe from any thread and from a signal handler."""
        if not self.call_soon(self._begin_quit):
            self.exit(self.exit_code(), return_code=self.exit_code())

    def _begin_quit(self) -> None:
        if self.quitting:
            return
        self.quitting = True
        self.refresh_bindings()
        caps = self.source.capabilities
        if not caps.controls or caps.attached:  # a replay, or a run another process owns
            self.release_pause()
            self.source.stop(0)
            self.exit(self.exit_code(), return_code=self.exit_code())
            return
        self.notify("stopping the trainer at a safe point…", timeout=self.stop_timeout)
        self.run_worker(self._stop_source, thread=True, exit_on_error=False)

    def _stop_source(self) -> None:
        """Worker thread: wait for the trainer to stop without freezing the screen."""
        stopped = self.source.stop(self.stop_timeout)
        self.call_from_thread(self._finish_quit, stopped)

    async def _finish_quit(self, stopped: bool) -> None:
        await self.tick()  # the run's last events (RunFinished) decide the exit code
        # A trainer that did not reach a safe point in time left its recording unclosed.
        code = self.exit_code() if stopped else 1
        self.exit(code, return_code=code)

    def exit_code(self) -> int:
        """1 when the trainer crashed in this (live) session; 0 otherwise, replays included."""
        crashed = self.state.finished_status == RunStatus.CRASHED
        caps = self.source.capabilities
        return 1 if crashed and caps.controls and not caps.attached else 0


def run_console(
    source: EventSource,
    refresh_hz: float = 4.0,
    *,
    on_hangup: str = "stop",
    bell: bool = False,
    theme: str | None = None,
    ascii_only: bool = False,
    mouse: bool = True,
    compare: RunSeries | None = None,
) -> int:
    """Run the console until the operator quits; returns the process exit code. SIGTERM and a
    hang-up (``on_hangup``: stop or detach) are handled as ``overwatch.signals`` describes.
    ``compare``: a reference run that ``v`` compares this one against."""
    app = OverwatchApp(
        source,
        refresh_hz=refresh_hz,
        bell=bell,
        theme=theme,
        ascii_only=ascii_only,
        compare=compare,
    )
    # What the terminal says it can show (TERM, COLORTERM), as Textual itself reads it.
    app.ansi16 = app.console.color_system in ("standard", "windows")
    with console_signals(app, on_hangup):
        return run_app(app, mouse=mouse)


def run_app(app: OverwatchApp, *, mouse: bool = True) -> int:
    """Run a console built by the caller (to wire signals to ``app.request_quit`` first)."""
    try:
        app.run(mouse=mouse)
    except (OSError, termios_error):
        if not app.detached:
            raise
        # Detached: restoring the settings of a terminal that is gone fails; nothing to restore.
    finally:
        app.release_pause()  # an attached console that crashed never leaves the run paused
        if app.detached and isinstance(app.source, LiveSource):
            app.source.session.wait()  # the run outlives its terminal
        else:
            app.source.stop(STOP_TIMEOUT_S)  # whatever ended the app, never leave a trainer
    if not app.detached:  # a terminal that hung up has nowhere to print to
        print_summary(app.state)
    if app.detached and isinstance(app.source, LiveSource):
        return app.source.session.exit_code
    return app.return_code if app.return_code is not None else app.exit_code()


def print_summary(state: ConsoleState, file=None) -> None:
    """On the console's exit: the run's summary on stdout, when the run has ended."""
    summary = run_summary(state) if state.finished else None
    if summary is not None:
        print("\n".join(summary_lines(summary)), file=file or sys.stdout, flush=True)
