"""The main view: the header, one panel (or row) per env, the event log, and its keys.

The app owns the source, the state and the commands that go out; this screen lays out the
widgets for the terminal's size, shows the state on each tick (``show``) and answers the keys
of ``bindings.MAIN_BINDINGS``. Each widget repaints only what changed, as Textual's rendering is
most of the console's CPU and a live run's trainer shares the process (and the GIL) with it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Container, Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from esper_engine.contracts import (
    BatchStats,
    EpochProgress,
    Event,
    ForceRollback,
    ResourceSample,
    Stop,
)
from overwatch.env_filter import FILTER_HELP, EnvFilter, parse_filter
from overwatch.run_summary import run_summary
from overwatch.screens.bindings import CONTROL_ACTIONS, MAIN_BINDINGS, REPLAY_ACTIONS
from overwatch.screens.compare import CompareScreen
from overwatch.screens.config import ConfigScreen
from overwatch.screens.confirm import ConfirmModal
from overwatch.screens.help import HelpScreen, help_rows
from overwatch.screens.operator import OperatorActions
from overwatch.screens.prompt import PromptModal, parse_epoch, parse_number
from overwatch.screens.summary import SummaryScreen
from overwatch.sources import EventSource, ReplayAction
from overwatch.state import ConsoleState, EnvView, liveness
from overwatch.widgets.env_panel import EnvPanel
from overwatch.widgets.env_plot import MODE_TITLES, PLOT_MODES, SMOOTHING, EnvPlot
from overwatch.widgets.env_row import EnvRow
from overwatch.widgets.event_log import LOG_KINDS, EventLog, LogFilter
from overwatch.widgets.footer import ConsoleFooter
from overwatch.widgets.formatting import env_label, episode_number, epoch_number
from overwatch.widgets.header import RunHeader
from overwatch.widgets.replay_bar import ReplayBar

if TYPE_CHECKING:
    from overwatch.app import OverwatchApp

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
# Per-batch figures (grad norms, the clipped share, samples/s, a batch's grad point) repaint at
# most once per this many seconds of the clock, or on the first tick that brings no BatchStats:
# on every batch they were most of what the console wrote to the terminal. Everything else
# (epochs, seeds, the governor, acks) still shows on the tick it arrives.
LIVE_PERIOD_S = 1.0
# Events that only move per-batch figures (the batch line, the epoch's progress bars): a tick that
# brings one repaints them at the live cadence, not at once.
LIVE_EVENTS = (BatchStats, EpochProgress, ResourceSample)


class MainScreen(OperatorActions, Screen[None]):
    """The run on screen: wide (a grid of env panels), compact (a table of env rows and the
    focused env's panel) or tiny (a notice), chosen by ``resize``."""

    BINDINGS = MAIN_BINDINGS

    def __init__(self, source: EventSource) -> None:
        super().__init__()
        self.focused_env = 0
        self.layout_mode = "wide"  # wide | compact | tiny
        self.layout_choice = "auto"  # t: auto | table | panels
        self.sort = "id"
        self.order: list[int] = []  # env indices in the sort order on screen
        self.env_filter = EnvFilter()  # \ or F4: only the envs that match are listed
        self._listed = -1  # panels / rows on display while a filter is active (-1: all)
        self.log_filter = LogFilter()
        self.log_follows_focus = False  # e: the log shows the focused env's events
        self.acknowledged = 0  # alerts acknowledged so far (a)
        self.plot_shown = False
        self._live_at = -math.inf  # the clock when per-batch figures were last repainted
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
        self._footer_note = "" if source.capabilities.controls else "read-only"

    @property
    def overwatch(self) -> OverwatchApp:
        return self.app  # type: ignore[return-value]

    @property
    def source(self) -> EventSource:
        return self.overwatch.source

    @property
    def state(self) -> ConsoleState:
        return self.overwatch.state

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
        yield ConsoleFooter(self._footer_note, compact=True)

    async def on_mount(self) -> None:
        self.resize(self.app.size.width, self.app.size.height)
        # A live run's panels are laid out before its trainer starts: mounting them takes the
        # UI thread ~0.1 s (the GIL included), which would otherwise come out of the run.
        await self.ensure_env_widgets()
        await self.overwatch.start_source()

    def resize(self, width: int, height: int) -> None:
        """Pick wide / compact / tiny for this terminal size, the env count and the operator's
        choice (t), and share the height out; CSS does the rest."""
        self.set_class(self.overwatch.ansi16, "-ansi")
        n = max(len(self._panels), 1)
        bars = 1 + (1 if self.source.capabilities.replay_controls else 0)  # footer, replay bar
        plot = width >= PLOT_MIN[0] and height >= PLOT_MIN[1] and not self.overwatch.ascii_only
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
        self.set_class(mode == "compact", "-compact")
        self.set_class(mode == "tiny", "-tiny")
        self.set_class(self.plot_shown, "-plot")
        self._notice.update(
            f"Terminal too small\nneed at least {TINY_MIN[0]}x{TINY_MIN[1]}, have {width}x{height}"
            "\n\nenlarge the window, or press q to quit"
        )
        if mode == "wide":
            self._size_wide(wide_room, panel_rows, columns)
        elif mode == "compact":  # a filter's rows only: the detail and the log get the rest
            self._size_compact(height - 2 - bars, n if self._listed < 0 else max(self._listed, 1))

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

    # --- showing the state ----------------------------------------------------------------------

    async def show(self, new_events: list[Event], reset: bool) -> None:
        """The app's tick: the state has taken ``new_events`` (``reset``: rebuilt from scratch)."""
        await self.ensure_env_widgets()
        if reset:
            self.acknowledged = min(self.acknowledged, self.state.alerts)
        self.update_widgets(live=self._live_tick(new_events, reset))

    def _live_tick(self, new_events: list[Event], reset: bool) -> bool:
        """Whether this tick repaints per-batch figures: always in a replay (its pace is the
        operator's: a step or a seek shows at once); in a live run once per LIVE_PERIOD_S, or
        when this tick brought no BatchStats or EpochProgress (what arrived last is never left
        unshown)."""
        now = self.overwatch.clock()
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

    async def ensure_env_widgets(self) -> None:
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
        self._listed = -1  # the new widgets are all on display
        self.focused_env = min(self.focused_env, max(n - 1, 0))
        self.resize(self.app.size.width, self.app.size.height)

    def update_widgets(self, *, live: bool = True) -> None:
        """Update the widgets of the layout on screen; each repaints only what changed, and
        per-batch figures only when ``live`` (the live cadence, LIVE_PERIOD_S).

        The other layout's widgets (display: none) are skipped: they catch up when a resize
        shows them, since the app's ``on_resize`` calls this again after switching the layout.
        """
        state = self.state
        mode = self.layout_mode
        if mode == "tiny":
            return  # only the "too small" notice is on screen
        caps = self.source.capabilities
        now = self.overwatch.clock()
        self.order = self._sorted_envs()  # before the header, which counts the listed envs
        self._header.update(
            state,
            liveness=liveness(state, now, is_live=caps.live, read_only=not caps.controls),
            # A replay's run time is the recording's: up to the event on screen.
            now=now if caps.live else (state.last_wall_time or 0.0),
            alerts=max(state.alerts - self.acknowledged, 0),
            sort=self.sort,
            layout=self.layout_choice,
            live=live,
            env_filter=self._filter_label(),
        )
        lm = state.is_language_model
        params = (state.host_params, state.seed_params)
        views = [state.envs[i] for i in self.order if i < len(state.envs)]
        self._list_only(len(views) if self.env_filter.active else -1)
        if self.env_filter.active and views and self.focused_env not in self.order:
            self.focused_env = self._nearest_listed()
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
            self._plots[0 if mode == "wide" else 1].update(focused_view, live=live, state=state)
        if self.log_follows_focus:
            self.log_filter.env = self.focused_env
        self.visible_log().update(state.log, state.log_revision, self.log_filter)
        self._replay_bar.update(self.source.position())

    def _sorted_envs(self) -> list[int]:
        """Env indices in the order chosen with s; trouble first (lowest accuracy, most panics,
        largest grad norm), ties by id; only those the env filter lists."""
        return self._filtered(self._sort_all())

    def _sort_all(self) -> list[int]:
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

    def _filtered(self, order: list[int]) -> list[int]:
        envs, env_filter = self.state.envs, self.env_filter
        if not env_filter.active:
            return order
        return [env for env in order if env < len(envs) and env_filter.matches(envs[env])]

    def _list_only(self, n: int) -> None:
        """Show the first ``n`` panels and rows (the listed envs, in order), or all (-1)."""
        if n == self._listed:
            return
        self._listed = n
        for widgets in (self._panels, self._rows):
            for at, widget in enumerate(widgets):
                widget.display = n < 0 or at < n
        self.resize(self.app.size.width, self.app.size.height)

    def _nearest_listed(self) -> int:
        """The listed env nearest the focused one (the next one on a tie): where the focus goes
        when a filter hides its env."""
        return min(self.order, key=lambda env: (abs(env - self.focused_env), -env))

    def _filter_label(self) -> str:
        if not self.env_filter.active:
            return ""
        return f"{self.env_filter.describe()} ({len(self.order)}/{len(self.state.envs)})"

    def visible_log(self) -> EventLog:
        return self._logs[0 if self.layout_mode == "wide" else 1]

    # --- keys: which ones act here --------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Replay keys exist only in replay; control keys are greyed out when they cannot act."""
        caps = self.source.capabilities
        if action in REPLAY_ACTIONS:
            return caps.replay_controls
        if action == "clear_env_filter":
            return self.env_filter.active  # listed (palette, help) only while there is one
        if action == "stop_run" and not caps.attached:
            return False  # a console's own run stops with q
        if action in ("pause", "resume"):
            # One of the pair is shown: Resume while paused (or a resume is on its way).
            if (action == "resume") != self.overwatch.paused():
                return False
        if action in CONTROL_ACTIONS:
            if not caps.controls or self.state.finished or self.overwatch.quitting:
                return None
        return True

    # --- keys: focus ----------------------------------------------------------------------------

    def action_focus_env(self, env: int) -> None:
        if env < len(self._panels):  # the plan's envs too, before their first event
            if self.env_filter.active and env not in self.order:
                self._hidden(env)
                return
            self._set_focus(env)

    def _hidden(self, env: int) -> None:
        self.app.notify(
            f"{env_label(env)} is hidden by the filter {self.env_filter.describe()} "
            "(esc clears it)",
            severity="warning",
        )

    def action_focus_step(self, delta: int) -> None:
        """Previous / next env in the order on screen."""
        if self.order:
            at = self.order.index(self.focused_env) if self.focused_env in self.order else 0
            self._set_focus(self.order[(at + delta) % len(self.order)])

    def action_focus_row(self, delta: int) -> None:
        """Up/down: one grid row in the wide layout, one env in the compact list."""
        step = (
            self._columns(self._grid.size.width or self.app.size.width)
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
            self.app.notify("no env to go to yet", severity="warning")
            return

        def chosen(env: int | None) -> None:
            if env is not None:
                self.action_focus_env(env - 1)

        self.app.push_screen(
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
        self.update_widgets()
        self.call_after_refresh(self._scroll_to_focus)

    def _scroll_to_focus(self) -> None:
        """Keep the focused env's panel or row in view (the grid and the table scroll)."""
        if self.focused_env not in self.order:
            return
        at = self.order.index(self.focused_env)
        widgets = self._panels if self.layout_mode == "wide" else self._rows
        if at < len(widgets):
            widgets[at].scroll_visible(animate=False)

    # --- keys: the event log, sort, layout, alerts, help ------------------------------------------

    def action_log_search(self, typed: str | None = None, submit: bool = False) -> None:
        def searched(text: str | None) -> None:
            if text is not None:
                self.log_filter.search = text
                self.update_widgets()

        self.app.push_screen(
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
        self.update_widgets()

    def action_log_env(self) -> None:
        self.log_follows_focus = not self.log_follows_focus
        self.log_filter.env = self.focused_env if self.log_follows_focus else None
        self.update_widgets()

    def action_log_focus(self) -> None:
        self.visible_log().take_keys()

    def action_log_scroll(self, pages: int) -> None:
        self.visible_log().action_scroll_page(pages)

    def action_acknowledge(self) -> None:
        if self.state.alerts > self.acknowledged:
            self.acknowledged = self.state.alerts
            self.app.clear_notifications()
            self.update_widgets()

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.update_widgets()
        self.call_after_refresh(self._scroll_to_focus)

    def _choose_plot(self, what: str, **choice: object) -> None:
        """P / y / z: the focused env's plots (both layouts' plots, so a resize keeps it)."""
        for plot in self._plots:
            plot.choose(**choice)  # type: ignore[arg-type]
        where = "" if self.plot_shown else f" (plots show from {PLOT_MIN[0]}x{PLOT_MIN[1]})"
        self.notify(f"plot: {what}{where}", timeout=2)
        self.update_widgets()

    def action_plot_metric(self) -> None:
        mode = PLOT_MODES[(PLOT_MODES.index(self._plots[0].mode) + 1) % len(PLOT_MODES)]
        self._choose_plot(MODE_TITLES[mode], mode=mode)

    def action_plot_log(self) -> None:
        log_scale = not self._plots[0].log_scale
        self._choose_plot("log scale" if log_scale else "linear scale", log_scale=log_scale)

    def action_plot_smooth(self) -> None:
        weight = SMOOTHING[(SMOOTHING.index(self._plots[0].smoothing) + 1) % len(SMOOTHING)]
        self._choose_plot(f"EMA {weight:g}" if weight else "no smoothing", smoothing=weight)

    def action_layout(self) -> None:
        self.layout_choice = LAYOUTS[(LAYOUTS.index(self.layout_choice) + 1) % len(LAYOUTS)]
        self.resize(self.app.size.width, self.app.size.height)
        self.update_widgets()
        self.call_after_refresh(self._scroll_to_focus)

    def action_env_filter(self, typed: str | None = None, submit: bool = False) -> None:
        def chosen(env_filter: EnvFilter | None) -> None:
            if env_filter is not None:
                self._apply_filter(env_filter)

        self.app.push_screen(
            PromptModal(
                "Filter the envs",
                parse_filter,
                detail=f"{FILTER_HELP}; words combine; empty: every env",
                placeholder="panic acc<50",
                value=self.env_filter.describe() if typed is None else typed,
                submit=submit,
            ),
            chosen,
        )

    def action_clear_env_filter(self) -> None:
        if self.env_filter.active:
            self._apply_filter(EnvFilter())

    def _apply_filter(self, env_filter: EnvFilter) -> None:
        self.env_filter = env_filter
        self.update_widgets()
        if env_filter.active and not self.order:
            self.app.notify(
                f"no env matches {env_filter.describe()} now; the filter stays (esc clears it)",
                severity="warning",
            )
        self.call_after_refresh(self._scroll_to_focus)

    def action_show_config(self) -> None:
        self.app.push_screen(ConfigScreen(self.state.run_started))

    def action_help(self) -> None:
        caps = self.source.capabilities
        if caps.attached:
            mode = "attached" if caps.controls else "attached, read-only"
        else:
            mode = "live" if caps.controls else "replay, read-only"
        self.app.push_screen(HelpScreen(self.help_rows(), mode))

    def action_summary(self) -> None:
        summary = run_summary(self.state)
        if summary is None:
            self.notify("no summary yet: no epoch has ended", severity="warning")
        else:
            self.app.push_screen(SummaryScreen(summary))

    def action_compare(self) -> None:
        app = self.overwatch
        reference, live = app.compare_reference, app.compare_live
        if reference is None or live is None:
            self.notify(
                "no reference run: start with overwatch run --compare REF", severity="warning"
            )
        elif not live.series.points["accuracy"]:
            self.notify("nothing to compare yet: no epoch has ended", severity="warning")
        else:
            self.app.push_screen(CompareScreen(lambda: [reference, live.series], live=True))

    def help_rows(self) -> list[tuple[str, str, bool]]:
        return help_rows(self.overwatch, self)

    # --- keys: controls (live only) -------------------------------------------------------------

    def action_rollback(self) -> None:
        if not self.state.envs:
            self.app.notify("no env to roll back yet", severity="warning")
            return
        env = self.focused_env

        def answered(confirmed: bool | None) -> None:
            if confirmed:
                self.overwatch.send(ForceRollback(env=env), env=env)
            else:
                self.app.notify(f"no rollback of {env_label(env)}: not confirmed, nothing sent")

        self.app.push_screen(
            ConfirmModal(
                f"Force a rollback of {env_label(env)}?",
                "Prunes its live seeds and restores its last known-good snapshot. The episode "
                "ends as a truncation, with no penalty for the policy.",
                answer=str(env + 1),  # the number on screen
                clock=self.overwatch.key_clock,
            ),
            answered,
        )

    def action_pause(self) -> None:
        self.overwatch.set_paused(True)

    def action_resume(self) -> None:
        self.overwatch.set_paused(False)

    def action_stop_run(self) -> None:
        def answered(confirmed: bool | None) -> None:
            if confirmed:
                self.overwatch.send(Stop())
            else:
                self.app.notify("the run goes on: stop not confirmed, nothing sent")

        self.app.push_screen(
            ConfirmModal(
                "Stop the run?",
                "The trainer stops at its next safe point and closes its recording; this "
                "console stays open on the finished run. (q only detaches.)",
                answer="stop",
                clock=self.overwatch.key_clock,
            ),
            answered,
        )

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
                await self.overwatch.tick()
            else:
                episode, epoch = target
                self.app.notify(
                    f"the recording has no epoch {episode_number(episode)}:{epoch_number(epoch)}",
                    severity="warning",
                )

        self.app.push_screen(
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
            await self.overwatch.tick()  # show the new position now, not at the next timer tick
