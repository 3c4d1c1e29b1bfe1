"""The Overwatch console: one panel per env, an event log, and the operator's keys.

The app never blocks on the trainer: a timer polls the source a few times a second, reduces the
events into ``ConsoleState`` inside ``batch_update()`` and calls ``update()`` on the widgets of
the layout on screen; a widget repaints only what changed, as Textual's rendering is most of
the console's CPU and the trainer shares the process (and the GIL) with it.
Commands go out through the source; their acknowledgements come back as events (log + toast).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import threading
import time
from collections.abc import Callable

try:
    import termios
except ImportError:  # not on Windows
    termios = None

from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Container, Grid, Horizontal, Vertical, VerticalScroll
from textual.driver import Driver
from textual.timer import Timer
from textual.widgets import Footer, Static
from textual.widgets._footer import FooterLabel

from esper_engine.contracts import (
    BatchStats,
    CommandAck,
    EpochProgress,
    Event,
    ForceRollback,
    OperatorCommand,
    Pause,
    Resume,
    RunStatus,
    SetClipThreshold,
    Stop,
)
from overwatch.keys import Burst, KeyClock, KeyGuard, Stroke
from overwatch.sources import EventSource, LiveSource, ReplayAction
from overwatch.state import ConsoleState, EnvView, liveness, log_note, reduce_many
from overwatch.terminal_output import compacting
from overwatch.widgets.ascii import AsciiFilter
from overwatch.widgets.clip_entry import ClipEntryModal
from overwatch.widgets.confirm import ConfirmModal
from overwatch.widgets.crash import CrashModal
from overwatch.widgets.env_panel import EnvPanel
from overwatch.widgets.env_plot import EnvPlot
from overwatch.widgets.env_row import EnvRow
from overwatch.widgets.event_log import (
    LOG_KINDS,
    EventLog,
    LogFilter,
    describe_ack,
    describe_alert,
    describe_command,
)
from overwatch.widgets.formatting import env_label, episode_number, epoch_number
from overwatch.widgets.header import RunHeader
from overwatch.widgets.help_screen import HelpScreen
from overwatch.widgets.prompt import PromptModal, parse_number
from overwatch.widgets.replay_bar import ReplayBar
from overwatch.widgets.themes import ALIASES, THEMES

CLIP_FACTOR = 1.25  # ] and [ multiply / divide the threshold by this
WIDE_MIN = (100, 30)  # below either: the compact layout (one line per env)
TINY_MIN = (60, 16)  # below either: only a "terminal too small" notice
PANEL_MIN_WIDTH = 56  # wide layout: columns of env panels = width // this
PANEL_MIN_HEIGHT = 11  # panels are never squeezed below this: the grid scrolls instead
PANEL_ROOMY_HEIGHT = 14  # a panel this tall shows its chart; height beyond goes to the log
WIDE_LOG_MIN, COMPACT_LOG_MIN = 9, 5  # event log heights (rows, with its border)
DETAIL_MIN, DETAIL_MAX = 10, 16  # compact layout: the focused env's panel
PLOT_MIN = (170, 36)  # from this terminal size on, the focused env also gets a plot
PLOT_SHARE = 0.4  # of the width
SORTS = ("id", "accuracy", "panics", "grad norm")  # s cycles through these
LAYOUTS = ("auto", "table", "panels")  # t cycles: auto picks by size and env count
ALERT_TOAST_S = 10.0
STOP_TIMEOUT_S = 60.0  # q waits this long for the trainer's safe point before exiting anyway
HANGUP_MODES = ("detach", "stop")  # run --on-hangup
QUIT_HELP = "Stop the trainer and quit (type stop, Enter)"  # a finished run: at once
# Help rows for q and ctrl+c where no trainer of this console's is stopped by them.
QUIT_HELP_ATTACHED = "Detach and quit; the run goes on"
QUIT_HELP_REPLAY = "Quit"
termios_error: type[Exception] = getattr(termios, "error", OSError) if termios else OSError
# Per-batch figures (grad norms, the clipped share, samples/s, a batch's grad point) repaint at
# most once per this many seconds of the clock, or on the first tick that brings no BatchStats:
# on every batch they were most of what the console wrote to the terminal. Everything else
# (epochs, seeds, the governor, acks) still shows on the tick it arrives.
LIVE_PERIOD_S = 1.0
# Events that only move per-batch figures (the batch line, the epoch's progress bars): a tick that
# brings one repaints them at the live cadence, not at once.
LIVE_EVENTS = (BatchStats, EpochProgress)
SEVERITIES = ("information", "warning", "error")  # the worst of a tick's alerts colours its toast

# Keys whose action opens a prompt: a burst that begins with one is typed into that prompt.
PROMPT_ACTIONS = frozenset({"clip_entry", "goto_env", "log_search", "replay_goto"})
# Keys that act at once even inside a burst of typing.
UNGUARDED_KEYS = frozenset({"ctrl+c"})
BURST_SHOWN = 24  # characters of an ignored burst quoted in its toast

# Actions that steer the trainer: greyed out in replay and once the run has finished.
CONTROL_ACTIONS = frozenset({"rollback", "clip_step", "clip_entry", "pause", "resume", "stop_run"})
REPLAY_ACTIONS = frozenset(
    {
        "replay_toggle",
        "replay_step",
        "replay_speed",
        "replay_home",
        "replay_end",
        "replay_goto",
        "replay_incident",
    }
)

# Help-screen wording for actions bound to a pair of keys (one row for both).
_HELP_PAIRS = {
    "focus_step": "Previous / next env",
    "focus_row": "Env above / below",
    "replay_step": "Step back / forward one epoch",
    "replay_speed": "Slower / faster replay (0.25x to 64x, then max: an epoch per refresh)",
    "replay_incident": "Previous / next governor panic or rollback",
    "clip_step": "Clip threshold of every env ÷1.25 / ×1.25",
    "log_scroll": "Scroll the event log a page older / newer",
}
_CLIP = Binding.Group("Clip", compact=True)
_STEP = Binding.Group("Step", compact=True)
_SPEED = Binding.Group("Speed", compact=True)
_JUMP = Binding.Group("Jump")
_INCIDENT = Binding.Group("Incident", compact=True)


class ConsoleFooter(Footer):
    """Textual's footer, opening with "read-only" where the keys cannot steer a run."""

    def __init__(self, note: str = "", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.note = note

    def compose(self) -> ComposeResult:
        if self.note:
            yield FooterLabel(self.note, id="footer-note", markup=False)
        yield from super().compose()


class OverwatchApp(App[int]):
    """The console for a live run (``LiveSource``) or a recording (``ReplaySource``)."""

    CSS_PATH = "overwatch.tcss"
    TITLE = "Overwatch"
    # On for its theme picker (ctrl+p); the console's own commands are all keys.
    ENABLE_COMMAND_PALETTE = True
    # Short descriptions for the footer; the tooltip is the help screen's longer text. Help and
    # quit come first so that a narrow footer never cuts them off.
    BINDINGS = [
        Binding("question_mark,f1", "help", "Help", key_display="?", tooltip="Show this help"),
        Binding("q", "quit", "Quit", tooltip=QUIT_HELP),
        # Textual binds ctrl+c to a "press q to quit" hint; here it quits without asking: no
        # text typed into the wrong window holds it, and it is the key a stuck terminal gets.
        Binding(
            "ctrl+c",
            "quit_now",
            "Quit",
            show=False,
            priority=True,
            tooltip="Stop the trainer and quit, without asking",
        ),
        # Textual's raw mode turns Ctrl-Z into a key: suspend as any curses tool does (the
        # trainer of a live run is suspended with the process; `fg` resumes both).
        Binding(
            "ctrl+z",
            "suspend_process",
            "Suspend",
            show=False,
            tooltip="Suspend to the shell (fg resumes)",
        ),
        Binding("1", "focus_env(0)", "Env", key_display="1-9", tooltip="Focus env 1..9"),
        *(Binding(str(n), f"focus_env({n - 1})", f"Env {n}", show=False) for n in range(2, 10)),
        Binding("g", "goto_env", "Go to env", show=False, tooltip="Focus env N (type it)"),
        Binding("left", "focus_step(-1)", "Previous env", show=False),
        Binding("right", "focus_step(1)", "Next env", show=False),
        Binding("up", "focus_row(-1)", "Env above", show=False),
        Binding("down", "focus_row(1)", "Env below", show=False),
        # Priority: the screen's own tab binding (focus cycling) would otherwise take the key.
        Binding("tab", "focus_step(1)", "Next env", show=False, priority=True),
        Binding("shift+tab", "focus_step(-1)", "Previous env", show=False, priority=True),
        Binding("space", "replay_toggle", "Play", tooltip="Play / pause the replay"),
        Binding(
            "comma",
            "replay_step(-1)",
            "Back",
            key_display=",",
            group=_STEP,
            tooltip="Step back one epoch",
        ),
        Binding(
            "full_stop",
            "replay_step(1)",
            "Forward",
            key_display=".",
            group=_STEP,
            tooltip="Step forward one epoch",
        ),
        Binding(
            "less_than_sign",
            "replay_speed(-1)",
            "Slower",
            key_display="<",
            group=_SPEED,
            tooltip="Halve the replay speed (down to 0.25x)",
        ),
        Binding(
            "greater_than_sign",
            "replay_speed(1)",
            "Faster",
            key_display=">",
            group=_SPEED,
            tooltip="Double the replay speed (up to 8x)",
        ),
        Binding("home", "replay_home", "Start", group=_JUMP, tooltip="Jump to the start"),
        Binding(
            "end",
            "replay_end",
            "End",
            group=_JUMP,
            tooltip="Jump to the end (following: follow again)",
        ),
        Binding(
            "j",
            "replay_goto",
            "Epoch",
            tooltip="Go to an epoch (EPISODE:EPOCH, or N across the run)",
        ),
        Binding(
            "N",
            "replay_incident(-1)",
            "Prev",
            group=_INCIDENT,
            tooltip="Jump back to the previous governor panic or rollback",
        ),
        Binding(
            "n",
            "replay_incident(1)",
            "Next",
            group=_INCIDENT,
            tooltip="Jump to the next governor panic or rollback",
        ),
        Binding(
            "r",
            "rollback",
            "Rollback",
            tooltip="Force a rollback of the focused env (type its number and Enter to confirm)",
        ),
        Binding(
            "left_square_bracket",
            "clip_step(-1)",
            "Clip down",
            key_display="[",
            group=_CLIP,
            tooltip="Lower the clip threshold of every env (÷1.25)",
        ),
        Binding(
            "right_square_bracket",
            "clip_step(1)",
            "Clip up",
            key_display="]",
            group=_CLIP,
            tooltip="Raise the clip threshold of every env (×1.25)",
        ),
        Binding("c", "clip_entry", "Clip=", tooltip="Type an exact clip threshold"),
        # One key, two bindings: the footer shows the one that applies (Resume while paused).
        Binding("p", "pause", "Pause", tooltip="Pause / resume training"),
        Binding("p", "resume", "Resume", tooltip="Pause / resume training"),
        Binding(
            "S",
            "stop_run",
            "Stop run",
            tooltip="Stop the attached run (type stop and Enter to confirm); q only detaches",
        ),
        Binding("slash", "log_search", "Search", key_display="/", tooltip="Search the event log"),
        Binding(
            "f",
            "log_kind",
            "Filter",
            show=False,
            tooltip="Event log: cycle all / lifecycle / governor / commands",
        ),
        Binding(
            "e",
            "log_env",
            "Env log",
            show=False,
            tooltip="Event log: only the focused env's events (again: every env's)",
        ),
        Binding(
            "l",
            "log_focus",
            "Log",
            show=False,
            tooltip="Put the keys on the event log (arrows, PgUp/PgDn, home/end; esc leaves)",
        ),
        Binding(
            "pageup",
            "log_scroll(1)",
            "Older",
            key_display="PgUp",
            show=False,
            tooltip="Event log: page older",
        ),
        Binding(
            "pagedown",
            "log_scroll(-1)",
            "Newer",
            key_display="PgDn",
            show=False,
            tooltip="Event log: page newer",
        ),
        Binding("a", "acknowledge", "Ack", tooltip="Acknowledge the alerts (clears the count)"),
        Binding("s", "sort", "Sort", tooltip="Sort the envs: id, accuracy, panics, grad norm"),
        Binding(
            "t",
            "layout",
            "Table",
            tooltip="Layout: auto, table (one line per env), panels",
        ),
    ]

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
        self._keys = KeyGuard()
        self._settle_timer: Timer | None = None
        self._paused_here = False  # this console paused the run and has not resumed it
        self.stop_timeout = stop_timeout
        self.state = ConsoleState.planned(source.plan)
        self.focused_env = 0
        self.layout_mode = "wide"  # wide | compact | tiny
        self.layout_choice = "auto"  # t: auto | table | panels
        self.sort = "id"
        self.order: list[int] = []  # env indices in the sort order on screen
        self.log_filter = LogFilter()
        self.log_follows_focus = False  # e: the log shows the focused env's events
        self.acknowledged = 0  # alerts acknowledged so far (a)
        self.plot_shown = False
        self._paused_shown = False  # the footer says Pause until a pause is acknowledged
        self._sent_ids: set[int] = set()
        self._pending_clip: float | None = None  # sent, not yet acknowledged
        self._pause_wanted: bool | None = None  # likewise for pause/resume
        self._crash_shown = False
        self._live_at = -math.inf  # the clock when per-batch figures were last repainted
        self._finished_shown = False  # the run's end as the footer's key states last saw it
        self._warned: str | None = None
        self._quitting = False
        self.detached = False  # the terminal hung up and the run goes on without this screen
        self._loop: asyncio.AbstractEventLoop | None = None
        self._panels: list[EnvPanel] = []
        self._rows: list[EnvRow] = []
        # Held directly, not queried: a timer tick may still land while the app tears down.
        self._header = RunHeader()
        self._grid = Grid(id="env-grid")
        self._row_list = VerticalScroll(id="env-rows", can_focus=False)  # arrows: envs
        self._detail = EnvPanel(0, id="detail")
        self._logs = (EventLog(id="wide-log"), EventLog(id="compact-log"))
        self._plots = (EnvPlot(id="wide-plot"), EnvPlot(id="compact-plot"))
        self._notice = Static(id="too-small")
        replay = source.capabilities.replay_controls
        self._replay_bar = ReplayBar(classes="-active" if replay else "")

    # --- layout ---------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield self._header
        with Container(id="wide"):
            with Horizontal(id="wide-main"):
                yield self._grid
                yield self._plots[0]
            yield self._logs[0]
        with Container(id="compact"):
            with Horizontal(id="compact-main"):
                with Vertical(id="compact-left"):
                    yield self._row_list
                    yield self._detail
                yield self._plots[1]
            yield self._logs[1]
        yield self._notice
        yield self._replay_bar
        yield ConsoleFooter("" if self.source.capabilities.controls else "read-only", compact=True)

    # --- keys: single commands, not typing -------------------------------------------------------

    async def on_event(self, event: events.Event) -> None:
        """On the main screen every key passes the typing guard (``overwatch.keys``) and a paste
        is ignored: text meant for another window never acts. Dialogs get their keys as typed."""
        guarded = (
            isinstance(event, (events.Key, events.Paste))
            and not event.is_forwarded
            and bool(self.screen_stack)
            and not self.screen.is_modal
        )
        if guarded and isinstance(event, events.Key) and event.key not in UNGUARDED_KEYS:
            stroke = Stroke(event.key, event.character, self.key_clock.stamp(event.time))
            for decided in self._keys.feed(stroke):
                await self._decide(decided)
            if self._keys.pending:
                # Only a timer: it lands behind any key already queued (a busy console reads
                # keys late, and a word must still be one burst). An injected clock (tests) is
                # read, not waited for: it may have moved on already.
                if self.key_clock.injected:
                    self.call_next(self.settle_keys)
                self._settle_after(self._keys.gap)
            return
        if guarded and isinstance(event, events.Paste):
            held = self._keys.drop()
            self._ignored(event.text, len(event.text) + held, "pasted")
            return
        await super().on_event(event)

    async def settle_keys(self) -> None:
        """Act on a held key, or set a burst aside, once the typing gap has passed after it."""
        if not self._keys.pending:
            return
        if self.screen.is_modal:  # a dialog opened meanwhile: held keys were not meant for it
            self._keys.drop()
            return
        decided = self._keys.settle(self.key_clock.now())
        if decided is None:
            remaining = self._keys.gap - (self.key_clock.now() - self._keys.pending[-1].time)
            self._settle_after(max(remaining, 0.01))
            return
        await self._decide(decided)

    def _settle_after(self, seconds: float) -> None:
        """One timer for the held keys, restarted by each key: a word is one wait, not many."""
        if self._settle_timer is not None:
            self._settle_timer.stop()
        self._settle_timer = self.set_timer(seconds, self.settle_keys)

    async def _decide(self, decided: Stroke | Burst) -> None:
        if isinstance(decided, Stroke):
            await super().on_event(events.Key(decided.key, decided.character))
            return
        first = decided.strokes[0]
        action = self._prompt_action(first.key)
        typed = decided.prompt_text()
        if action is not None and typed is not None:
            text, submit = typed
            getattr(self, f"action_{action}")(text, submit)
            return
        self._ignored(decided.text, len(decided.strokes), "typed")

    def _prompt_action(self, key: str) -> str | None:
        """The prompt ``key`` opens here and now, if it opens one."""
        for binding in self.BINDINGS:
            assert isinstance(binding, Binding)
            name = binding.action.split("(")[0]
            if key in binding.key.split(",") and name in PROMPT_ACTIONS:
                return name if self.check_action(name, ()) is True else None
        return None

    def _ignored(self, text: str, keys: int, how: str) -> None:
        shown = text if len(text) <= BURST_SHOWN else text[: BURST_SHOWN - 1] + "…"
        self.notify(
            f"ignored {keys} keys {how} at once ({shown!r}): this console takes single keys, "
            "pressed one at a time",
            severity="warning",
        )

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

    async def on_mount(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._apply_layout(self.size.width, self.size.height)
        # A live run's panels are laid out before its trainer starts: mounting them takes the
        # UI thread ~0.1 s (the GIL included), which would otherwise come out of the run.
        await self._ensure_env_widgets()
        self.source.start()
        await self.tick()
        self._warn_once()
        self.set_interval(1.0 / self.refresh_hz, self.tick)

    def on_unmount(self) -> None:
        self.release_pause()  # however the app ends: q, SIGTERM, an exception in the console

    def on_resize(self, event: events.Resize) -> None:
        self._apply_layout(event.size.width, event.size.height)
        self._update_widgets()

    def _apply_layout(self, width: int, height: int) -> None:
        """Pick wide / compact / tiny for this terminal size, the env count and the operator's
        choice (t), and share the height out; CSS does the rest."""
        main = self.screen_stack[0]  # not self.screen: a dialog may be on top
        main.set_class(self.ansi16, "-ansi")
        n = max(len(self._panels), 1)
        bars = 1 + (1 if self.source.capabilities.replay_controls else 0)  # footer, replay bar
        plot = width >= PLOT_MIN[0] and height >= PLOT_MIN[1] and not self.ascii_only
        grid_width = width - (round(width * PLOT_SHARE) if plot else 0)
        columns = self._columns(grid_width)
        panel_rows = -(-n // columns)
        wide_room = height - 3 - bars  # below the three-line header
        panels_fit = panel_rows * PANEL_MIN_HEIGHT <= wide_room - WIDE_LOG_MIN
        if width < TINY_MIN[0] or height < TINY_MIN[1]:
            mode = "tiny"
        elif self.layout_choice == "table":
            mode = "compact"
        elif self.layout_choice == "panels":
            mode = "wide"
        elif width < WIDE_MIN[0] or height < WIDE_MIN[1] or not panels_fit:
            mode = "compact"  # panels too many to see at once: the table shows every env
        else:
            mode = "wide"
        self.layout_mode = mode
        self.plot_shown = plot and mode != "tiny"
        main.set_class(mode == "compact", "-compact")
        main.set_class(mode == "tiny", "-tiny")
        main.set_class(self.plot_shown, "-plot")
        self._notice.update(
            f"Terminal too small\nneed at least {TINY_MIN[0]}x{TINY_MIN[1]}, have {width}x{height}"
            "\n\nenlarge the window, or press q to quit"
        )
        if mode == "wide":
            self._size_wide(wide_room, panel_rows, columns)
        elif mode == "compact":
            self._size_compact(height - 2 - bars, n)

    def _size_wide(self, room: int, panel_rows: int, columns: int) -> None:
        """Panels share the room above the log; too many to fit at their minimum height keep
        it and scroll; a tall terminal gives what panels do not need to the log."""
        self._grid.styles.grid_size_columns = columns
        if panel_rows * PANEL_MIN_HEIGHT <= room - WIDE_LOG_MIN:
            log = min(max(room - panel_rows * PANEL_ROOMY_HEIGHT, WIDE_LOG_MIN), room // 2)
            self._grid.styles.grid_rows = "1fr"
        else:
            log = WIDE_LOG_MIN
            self._grid.styles.grid_rows = str(PANEL_MIN_HEIGHT)
        self._logs[0].styles.height = log

    def _size_compact(self, room: int, n: int) -> None:
        """As many rows as fit (the rest scroll), then the focused env, then the log."""
        rows = min(n, max(room - DETAIL_MIN - COMPACT_LOG_MIN, 3))
        rest = room - rows
        detail = max(min(rest - COMPACT_LOG_MIN, DETAIL_MAX), 3)
        self._row_list.styles.height = rows
        self._detail.styles.height = detail
        self._logs[1].styles.height = max(rest - detail, COMPACT_LOG_MIN)

    def _columns(self, width: int) -> int:
        return max(1, min(len(self._panels) or 1, width // PANEL_MIN_WIDTH))

    # --- the refresh tick -----------------------------------------------------------------------

    async def tick(self) -> None:
        """Drain the source, reduce, and update the widgets on screen (each repaints only the
        lines that changed)."""
        polled = self.source.poll()
        with self.batch_update():
            if polled.reset:
                self.state = polled.state or ConsoleState.planned(self.source.plan)
            reduce_many(self.state, polled.events)
            self.state.dropped = self.source.dropped
            self.state.setup = getattr(self.source, "setup_status", "")  # a live run's set-up
            await self._ensure_env_widgets()
            if polled.reset:
                self.acknowledged = min(self.acknowledged, self.state.alerts)
            else:
                self._react(polled.events)
            self._update_widgets(live=self._live_tick(polled.events, polled.reset))
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

    def _live_tick(self, new_events: list[Event], reset: bool) -> bool:
        """Whether this tick repaints per-batch figures: always in a replay (its pace is the
        operator's: a step or a seek shows at once); in a live run once per LIVE_PERIOD_S, or
        when this tick brought no BatchStats or EpochProgress (what arrived last is never left
        unshown)."""
        now = self.clock()
        quiet = not any(type(e) in LIVE_EVENTS for e in new_events)
        live = (
            not self.source.capabilities.live
            or reset
            or quiet
            or now - self._live_at >= LIVE_PERIOD_S
        )
        if live:
            self._live_at = now
        return live

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

    async def _ensure_env_widgets(self) -> None:
        """One panel and one row per env: as many as the run has, or the source expects."""
        plan = self.source.plan
        n = len(self.state.envs) or (plan.n_envs if plan else 0)
        if n == len(self._panels):
            return
        await self._grid.remove_children()
        await self._row_list.remove_children()
        self._panels = [EnvPanel(i) for i in range(n)]
        self._rows = [EnvRow(i) for i in range(n)]
        await self._grid.mount(*self._panels)
        await self._row_list.mount(*self._rows)
        self.focused_env = min(self.focused_env, max(n - 1, 0))
        self._apply_layout(self.size.width, self.size.height)

    def _update_widgets(self, *, live: bool = True) -> None:
        """Update the widgets of the layout on screen; each repaints only what changed, and
        per-batch figures only when ``live`` (the live cadence, LIVE_PERIOD_S).

        The other layout's widgets (display: none) are skipped: they catch up when a resize
        shows them, since ``on_resize`` calls this again after switching the layout.
        """
        state = self.state
        mode = self.layout_mode
        if mode == "tiny":
            return  # only the "too small" notice is on screen
        caps = self.source.capabilities
        now = self.clock()
        self._header.update(
            state,
            liveness=liveness(state, now, is_live=caps.live, read_only=not caps.controls),
            # A replay's run time is the recording's: up to the event on screen.
            now=now if caps.live else (state.last_wall_time or 0.0),
            alerts=max(state.alerts - self.acknowledged, 0),
            sort=self.sort,
            layout=self.layout_choice,
            live=live,
        )
        lm = state.is_language_model
        params = (state.host_params, state.seed_params)
        self.order = self._sorted_envs()
        views = [state.envs[i] for i in self.order if i < len(state.envs)]
        focused_view = state.envs[self.focused_env] if self.focused_env < len(state.envs) else None
        if mode == "wide":
            for panel, view in zip(self._panels, views, strict=False):
                focused = view.env == self.focused_env
                panel.update(view, focused=focused, language_model=lm, run_params=params, live=live)
            for panel in self._panels[len(views) :]:  # the plan's envs, before their first event
                panel.show_planned(focused=panel.env == self.focused_env)
        else:
            for row, view in zip(self._rows, views, strict=False):
                row.update(view, focused=view.env == self.focused_env, live=live)
            if focused_view is not None:
                self._detail.update(
                    focused_view, focused=True, language_model=lm, run_params=params, live=live
                )
            else:
                self._detail.show_planned(focused=True)
        if self.plot_shown:
            self._plots[0 if mode == "wide" else 1].update(focused_view, live=live)
        if self.log_follows_focus:
            self.log_filter.env = self.focused_env
        log = self._logs[0 if mode == "wide" else 1]
        log.update(state.log, state.log_revision, self.log_filter)
        self._replay_bar.update(self.source.position())

    def _sorted_envs(self) -> list[int]:
        """Env indices in the order chosen with s; trouble first (lowest accuracy, most panics,
        largest grad norm), ties by id."""
        envs = self.state.envs
        if self.sort == "id" or not envs:
            return list(range(len(envs) or len(self._panels)))

        def key(view: EnvView) -> tuple[float, int]:
            s = view.summary
            if self.sort == "accuracy":
                value = s.val_accuracy if s is not None else math.inf
            elif self.sort == "panics":
                value = -view.governor.total_panics - view.governor.rollbacks
            else:
                grad = view.grad_period[0]
                value = -grad if grad is not None and math.isfinite(grad) else -math.inf
            return (0.0 if math.isnan(value) else value, view.env)

        return [view.env for view in sorted(envs, key=key)]

    # --- keys: focus ----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Replay keys exist only in replay; control keys are greyed out when they cannot act."""
        caps = self.source.capabilities
        if action in REPLAY_ACTIONS:
            return caps.replay_controls
        if action == "stop_run" and not caps.attached:
            return False  # a console's own run stops with q
        if action in ("pause", "resume"):
            # One of the pair is shown: Resume while paused (or a resume is on its way).
            if (action == "resume") != self._paused():
                return False
        if action in CONTROL_ACTIONS:
            if not caps.controls or self.state.finished or self._quitting:
                return None
        if action in ("focus_step", "focus_row") and self.screen.is_modal:
            return False  # tab inside a dialog moves between its own widgets
        return True

    def _paused(self) -> bool:
        """Paused as far as the operator is concerned: the last p wins until its ack lands."""
        if self._pause_wanted is not None:
            return self._pause_wanted
        return self.state.trainer_state == "paused"

    def action_focus_env(self, env: int) -> None:
        if env < len(self._panels):  # the plan's envs too, before their first event
            self._set_focus(env)

    def action_focus_step(self, delta: int) -> None:
        """Previous / next env in the order on screen."""
        if self.order:
            at = self.order.index(self.focused_env) if self.focused_env in self.order else 0
            self._set_focus(self.order[(at + delta) % len(self.order)])

    def action_focus_row(self, delta: int) -> None:
        """Up/down: one grid row in the wide layout, one env in the compact list."""
        step = (
            self._columns(self._grid.size.width or self.size.width)
            if self.layout_mode == "wide"
            else 1
        )
        if not self.order:
            return
        at = self.order.index(self.focused_env) if self.focused_env in self.order else 0
        target = at + delta * step
        if 0 <= target < len(self.order):
            self._set_focus(self.order[target])

    def action_goto_env(self, typed: str = "", submit: bool = False) -> None:
        n = len(self.state.envs)
        if not n:
            self.notify("no env to go to yet", severity="warning")
            return

        def chosen(env: int | None) -> None:
            if env is not None:
                self._set_focus(env - 1)

        self.push_screen(
            PromptModal(
                "Go to env",
                parse_number(1, n, "an env"),
                detail=f"1..{n}",
                placeholder=str(min(10, n)),
                value=typed,
                submit=submit,
            ),
            chosen,
        )

    def _set_focus(self, env: int) -> None:
        self.focused_env = env
        self._update_widgets()
        self.call_after_refresh(self._scroll_to_focus)

    def _scroll_to_focus(self) -> None:
        """Keep the focused env's panel or row in view (the grid and the table scroll)."""
        if self.focused_env not in self.order:
            return
        at = self.order.index(self.focused_env)
        widgets = self._panels if self.layout_mode == "wide" else self._rows
        if at < len(widgets):
            widgets[at].scroll_visible(animate=False)

    # --- keys: the event log, sort, layout, alerts ------------------------------------------------

    def action_log_search(self, typed: str | None = None, submit: bool = False) -> None:
        def searched(text: str | None) -> None:
            if text is not None:
                self.log_filter.search = text
                self._update_widgets()

        self.push_screen(
            PromptModal(
                "Search the event log",
                str.strip,
                detail="shows the entries containing the text (any case); empty: all of them",
                value=self.log_filter.search if typed is None else typed,
                submit=submit,
            ),
            searched,
        )

    def action_log_kind(self) -> None:
        kinds = LOG_KINDS
        self.log_filter.kind = kinds[(kinds.index(self.log_filter.kind) + 1) % len(kinds)]
        self._update_widgets()

    def action_log_env(self) -> None:
        self.log_follows_focus = not self.log_follows_focus
        self.log_filter.env = self.focused_env if self.log_follows_focus else None
        self._update_widgets()

    def action_log_focus(self) -> None:
        self._visible_log().take_keys()

    def action_log_scroll(self, pages: int) -> None:
        self._visible_log().action_scroll_page(pages)

    def _visible_log(self) -> EventLog:
        return self._logs[0 if self.layout_mode == "wide" else 1]

    def action_acknowledge(self) -> None:
        if self.state.alerts > self.acknowledged:
            self.acknowledged = self.state.alerts
            self.clear_notifications()
            self._update_widgets()

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self._update_widgets()
        self.call_after_refresh(self._scroll_to_focus)

    def action_layout(self) -> None:
        self.layout_choice = LAYOUTS[(LAYOUTS.index(self.layout_choice) + 1) % len(LAYOUTS)]
        self._apply_layout(self.size.width, self.size.height)
        self._update_widgets()
        self.call_after_refresh(self._scroll_to_focus)

    # --- keys: controls (live only) -------------------------------------------------------------

    def action_rollback(self) -> None:
        if not self.state.envs:
            self.notify("no env to roll back yet", severity="warning")
            return
        env = self.focused_env

        def answered(confirmed: bool | None) -> None:
            if confirmed:
                self._send(ForceRollback(env=env), env=env)
            else:
                self.notify(f"no rollback of {env_label(env)}: not confirmed, nothing sent")

        self.push_screen(
            ConfirmModal(
                f"Force a rollback of {env_label(env)}?",
                "Prunes its live seeds and restores its last known-good snapshot. The episode "
                "ends as a truncation, with no penalty for the policy.",
                answer=str(env + 1),  # the number on screen
                clock=self.key_clock,
            ),
            answered,
        )

    def action_clip_step(self, direction: int) -> None:
        current = self._current_clip()
        if current is None:
            self.notify("gradient clipping is off; press c to set a threshold", severity="warning")
            return
        value = current * CLIP_FACTOR if direction > 0 else current / CLIP_FACTOR
        self._send_clip(value)

    def action_clip_entry(self, typed: str = "", submit: bool = False) -> None:
        def entered(value: float | None) -> None:
            if value is not None:
                self._send_clip(value)

        self.push_screen(ClipEntryModal(self._current_clip(), typed, submit), entered)

    def action_pause(self) -> None:
        self._pause_wanted = True
        if self._send(Pause()):
            self._paused_here = True
        self.refresh_bindings()

    def action_resume(self) -> None:
        self._pause_wanted = False
        if self._send(Resume()):
            self._paused_here = False
        self.refresh_bindings()

    def release_pause(self) -> None:
        """An attached console that paused the run resumes it as it goes, however it goes (q,
        a crash of this console, SIGTERM): a run is never left paused by a console that is gone.
        """
        caps = self.source.capabilities
        if self._paused_here and caps.attached and caps.controls and not self.state.finished:
            self._paused_here = False
            self.source.send(Resume())

    def action_stop_run(self) -> None:
        def answered(confirmed: bool | None) -> None:
            if confirmed:
                self._send(Stop())
            else:
                self.notify("the run goes on: stop not confirmed, nothing sent")

        self.push_screen(
            ConfirmModal(
                "Stop the run?",
                "The trainer stops at its next safe point and closes its recording; this "
                "console stays open on the finished run. (q only detaches.)",
                answer="stop",
                clock=self.key_clock,
            ),
            answered,
        )

    def _current_clip(self) -> float | None:
        """The threshold to build on: one still in flight wins over the last one reported."""
        if self._pending_clip is not None:
            return self._pending_clip
        return self.state.clip_threshold

    def _send_clip(self, value: float) -> None:
        self._pending_clip = value
        self._send(SetClipThreshold(value=value, env=None))

    def _send(self, command: OperatorCommand, env: int | None = None) -> bool:
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
        self._update_widgets()
        return True

    # --- keys: replay ---------------------------------------------------------------------------

    async def action_replay_toggle(self) -> None:
        await self._replay(ReplayAction.TOGGLE)

    async def action_replay_step(self, direction: int) -> None:
        forward = direction > 0
        await self._replay(ReplayAction.STEP_FORWARD if forward else ReplayAction.STEP_BACK)

    async def action_replay_speed(self, direction: int) -> None:
        await self._replay(ReplayAction.FASTER if direction > 0 else ReplayAction.SLOWER)

    async def action_replay_home(self) -> None:
        await self._replay(ReplayAction.HOME)

    async def action_replay_end(self) -> None:
        await self._replay(ReplayAction.END)

    async def action_replay_incident(self, direction: int) -> None:
        forward = direction > 0
        await self._replay(
            ReplayAction.NEXT_INCIDENT if forward else ReplayAction.PREVIOUS_INCIDENT
        )

    def action_replay_goto(self, typed: str = "", submit: bool = False) -> None:
        epochs = max(self.state.epochs, 1)

        async def chosen(target: tuple[int, int] | None) -> None:
            if target is None:
                return
            if self.source.seek_epoch(*target):
                await self.tick()
            else:
                episode, epoch = target
                self.notify(
                    f"the recording has no epoch {episode_number(episode)}:{epoch_number(epoch)}",
                    severity="warning",
                )

        self.push_screen(
            PromptModal(
                "Go to an epoch",
                lambda text: parse_epoch(text, epochs),
                detail=f"EPISODE:EPOCH as the log shows it (1:{epochs}), or N counted across "
                "the run",
                placeholder="2:3",
                value=typed,
                submit=submit,
            ),
            chosen,
        )

    async def _replay(self, action: ReplayAction) -> None:
        if self.source.capabilities.replay_controls:
            self.source.replay(action)
            await self.tick()  # show the new position now, not at the next timer tick

    # --- keys: help and quit --------------------------------------------------------------------

    def action_help(self) -> None:
        caps = self.source.capabilities
        if caps.attached:
            mode = "attached" if caps.controls else "attached, read-only"
        else:
            mode = "live" if caps.controls else "replay, read-only"
        self.push_screen(HelpScreen(self.help_rows(), mode))

    def help_rows(self) -> list[tuple[str, str, bool]]:
        """(keys, description, usable now) for every binding; paired keys share a row, digits
        fold into one, and the keys usable in this mode come first."""
        rows: dict[str, tuple[list[str], bool]] = {}
        for binding in self.BINDINGS:
            assert isinstance(binding, Binding)
            name = binding.action.split("(")[0]
            if name == "focus_env" and binding.key != "1":
                continue
            keys = "? f1" if name == "help" else binding.key_display or binding.key
            description = _HELP_PAIRS.get(name) or binding.tooltip or binding.description
            if name in ("quit", "quit_now") and self.source.capabilities.attached:
                description = QUIT_HELP_ATTACHED
            elif name in ("quit", "quit_now") and not self.source.capabilities.controls:
                description = QUIT_HELP_REPLAY
            usable = self.check_action(name, ()) is True or name in ("pause", "resume")
            if name in ("pause", "resume"):
                usable = self.check_action("pause" if self._paused() else "resume", ()) is not None
            if description not in rows:
                rows[description] = ([], usable)
            if keys not in rows[description][0]:
                rows[description][0].append(keys)
        table = [(" ".join(keys), text, usable) for text, (keys, usable) in rows.items()]
        table.append(("ctrl+p", "Command palette: pick a theme", True))  # Textual's own key
        return sorted(table, key=lambda row: not row[2])

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
        return caps.controls and not caps.attached and not (self.state.finished or self._quitting)

    def request_quit(self) -> None:
        """Stop at a safe point and exit; safe from any thread and from a signal handler."""
        if self._loop is None:
            self.exit(self.exit_code(), return_code=self.exit_code())
            return
        self._loop.call_soon_threadsafe(self._begin_quit)

    def _begin_quit(self) -> None:
        if self._quitting:
            return
        self._quitting = True
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
) -> int:
    """Run the console until the operator quits; returns the process exit code.

    SIGTERM quits like a confirmed `q`, without asking. A dropped SSH session (SIGHUP) leaves no
    terminal to restore (and Textual's writer can block forever on the dead tty). With
    ``on_hangup="stop"`` it stops the trainer at a safe point, lets the recorder close, and exits
    without touching the terminal again; with ``"detach"`` (a live run only) the trainer keeps
    going headless, reachable with ``overwatch attach``, and the process exits when the run ends.
    """
    if on_hangup not in HANGUP_MODES:
        raise ValueError(f"on_hangup must be one of {', '.join(HANGUP_MODES)}, got {on_hangup!r}")
    app = OverwatchApp(source, refresh_hz=refresh_hz, bell=bell, theme=theme, ascii_only=ascii_only)
    # What the terminal says it can show (TERM, COLORTERM), as Textual itself reads it.
    app.ansi16 = app.console.color_system in ("standard", "windows")
    detach = on_hangup == "detach" and isinstance(source, LiveSource)

    def hang_up(*_: object) -> None:
        if detach and isinstance(source, LiveSource):
            _detach(app, source)
        else:
            _hang_up(app)

    def terminate(*_: object) -> None:
        if app.detached:  # no app left to quit: stop the run; the waiter exits the process
            threading.Thread(target=source.stop, args=(STOP_TIMEOUT_S,), daemon=True).start()
        else:
            app.request_quit()

    handlers = {"SIGTERM": terminate, "SIGHUP": hang_up}
    previous = {}
    for name, handler in handlers.items():
        if hasattr(signal, name):
            sig = getattr(signal, name)
            previous[sig] = signal.signal(sig, handler)
    try:
        return run_app(app, mouse=mouse)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _hang_up(app: OverwatchApp) -> None:
    """The terminal is gone: stop the run in a thread (signal handlers must return) and exit;
    an attached console resumes the run first if it paused it (it exits without unmounting)."""
    source = app.source

    def stop_and_exit() -> None:
        app.release_pause()
        stopped = source.stop(STOP_TIMEOUT_S)  # the trainer closes the recording as it ends
        finished = source.finished
        crashed = finished is not None and finished.status == RunStatus.CRASHED
        os._exit(0 if stopped and not crashed else 1)

    threading.Thread(target=stop_and_exit, name="overwatch-hangup", daemon=True).start()


def _detach(app: OverwatchApp, source: LiveSource) -> None:
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
    if app._loop is not None:
        app._loop.call_soon_threadsafe(app.exit)


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
    if app.detached and isinstance(app.source, LiveSource):
        return app.source.session.exit_code
    return app.return_code if app.return_code is not None else app.exit_code()


def parse_epoch(text: str, epochs: int) -> tuple[int, int]:
    """``EPISODE:EPOCH`` (both from 1, as on screen) or ``N`` (epochs across the run, from 1)
    as (episode, epoch) counted from 0, or ValueError with the reason."""
    stripped = text.strip()
    try:
        if ":" in stripped:
            episode_text, epoch_text = stripped.split(":", 1)
            episode, epoch = int(episode_text) - 1, int(epoch_text) - 1
        else:
            episode, epoch = divmod(int(stripped) - 1, epochs)
    except ValueError:
        raise ValueError(
            f"enter EPISODE:EPOCH (e.g. 2:3) or an epoch number, not {stripped!r}"
        ) from None
    if episode < 0 or not 0 <= epoch < epochs:
        raise ValueError(f"no epoch {stripped}: episodes count from 1, epochs 1..{epochs}")
    return episode, epoch
