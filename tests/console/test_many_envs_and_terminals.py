"""32 envs at 120x40 (g, s, t, paged panels), the focused env's plot, and any terminal: themes,
the command palette, --ascii, the 16-colour footer, --no-mouse."""

from __future__ import annotations

import math

import pytest
from textual.app import InvalidThemeError
from textual.color import Color
from textual.command import CommandPalette

from overwatch import app as app_module
from overwatch.app import OverwatchApp
from overwatch.screens.main import PANEL_MIN_HEIGHT
from overwatch.widgets.ascii import AsciiFilter
from overwatch.widgets.env_plot import EnvPlot
from tests.console.fixtures import (
    REAL_RUN_32,
    FakeLiveSource,
    frozen_clock,
    live_app,
    run_async,
    running,
)

WIDE = (120, 40)
SMALL = (80, 24)
BIG = (200, 60)


def app_32() -> OverwatchApp:
    return live_app(running(REAL_RUN_32))


def row_envs(app: OverwatchApp) -> list[int]:
    """The envs of the rows in screen order, as their labels say ("▶env12 ...")."""
    return [int(row.render().plain[4:6]) - 1 for row in app.main._rows]


def on_screen(app: OverwatchApp, widget) -> bool:
    return widget.region.height > 0 and app.screen.region.contains_region(widget.region)


@run_async
async def test_32_envs_at_120x40_get_the_table_and_every_env_is_reachable() -> None:
    app = app_32()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert len(app.state.envs) == 32 and app.main.layout_mode == "compact"
        await pilot.press("g", "2", "5", "enter")
        await pilot.pause()
        assert app.main.focused_env == 24 and app.main._detail.env == 24
        assert on_screen(app, app.main._rows[24])  # the table scrolled to it
        await pilot.press("g", "4", "0", "enter")  # no env 40: the prompt says so and stays
        assert "not within 1..32" in str(app.screen.query_one("#prompt-error").render())
        await pilot.press("escape", "down")
        assert app.main.focused_env == 25


@run_async
async def test_s_cycles_the_sort_order_trouble_first() -> None:
    app = app_32()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert row_envs(app) == list(range(32))
        await pilot.press("s")
        assert app.main.sort == "accuracy" and "sort accuracy" in app.main._header.lines[1]
        accuracies = [app.state.envs[env].summary.val_accuracy for env in row_envs(app)]
        assert accuracies == sorted(accuracies)  # the worst first
        await pilot.press("s")
        assert app.main.sort == "panics"
        await pilot.press("s")
        grads = [app.state.envs[env].grad_period[0] for env in row_envs(app)]
        assert app.main.sort == "grad norm" and grads == sorted(grads, reverse=True)
        await pilot.press("right")  # the next env in the order on screen
        assert app.main.focused_env == app.main.order[app.main.order.index(0) + 1]
        await pilot.press("s")
        assert app.main.sort == "id" and row_envs(app) == list(range(32))


@run_async
async def test_t_picks_table_or_panels_on_any_size_and_panels_scroll() -> None:
    app = app_32()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await pilot.press("t")  # table (auto was the table already, here)
        assert app.main.layout_choice == "table" and app.main.layout_mode == "compact"
        await pilot.press("t")
        await pilot.pause()
        assert app.main.layout_choice == "panels" and app.main.layout_mode == "wide"
        assert all(p.outer_size.height >= PANEL_MIN_HEIGHT for p in app.main._panels)  # not crushed
        await pilot.press("g", "3", "1", "enter")
        await pilot.pause()
        assert on_screen(app, app.main._panels[30])  # the grid scrolled to the focused panel
        await pilot.press("t")
        assert app.main.layout_choice == "auto" and app.main.layout_mode == "compact"
    small = live_app()  # 4 envs at 80x24: the table by itself, panels on request
    async with small.run_test(size=SMALL) as pilot:
        assert small.main.layout_mode == "compact"
        await pilot.press("t", "t")
        assert small.main.layout_mode == "wide"


@run_async
async def test_a_big_terminal_plots_the_focused_env_with_its_marks() -> None:
    app = live_app()
    async with app.run_test(size=BIG) as pilot:
        await pilot.pause()
        plot = app.query_one("#wide-plot", EnvPlot)
        assert app.main.plot_shown and plot.display and plot.size.width >= 70
        view = app.state.envs[1]
        await pilot.press("2")
        await pilot.pause()
        acc, loss, grad = plot._plots
        assert len(acc._datasets[0].x) == len(view.epoch_points)
        assert list(acc._datasets[0].y) == [100 * a for _, a, _ in view.epoch_points]
        finite = [g for _, g in view.grad_points if math.isfinite(g)]
        assert len(grad._datasets[0].x) == len(finite) > len(view.epoch_points)  # per batch
        assert any(kind == "rollback" for _, kind in view.marks)  # env 2 was rolled back
        assert acc._v_lines and "rollback" in str(plot._title.render())
    async with live_app().run_test(size=WIDE) as pilot:
        assert not pilot.app.main.plot_shown  # 120x40: the panels need the room


@pytest.mark.parametrize("theme", ["high-contrast", "light", "dark", "nord"])
def test_themes(theme: str) -> None:
    events = running()
    app = OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events), theme=theme)
    assert app.theme == {"dark": "textual-dark"}.get(theme, theme)


def test_an_unknown_theme_is_refused() -> None:
    with pytest.raises(InvalidThemeError):
        OverwatchApp(FakeLiveSource([]), theme="neon")


@run_async
async def test_the_command_palette_is_on_for_its_theme_picker() -> None:
    app = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert isinstance(app.screen, CommandPalette)


@run_async
async def test_ascii_draws_nothing_but_ascii() -> None:
    events = running()
    app = OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events), ascii_only=True)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        filters = app.get_line_filters()
        text = "\n".join(
            "".join(segment.text for segment in _filtered(strip, filters))
            for strip in app.screen._compositor.render_strips()
        )
        assert text.isascii(), sorted({c for c in text if not c.isascii()})
        assert "+- > env 1 " in text  # the focused panel's border, in ASCII


def _filtered(strip, filters):
    segments = list(strip)
    for line_filter in filters:
        if isinstance(line_filter, AsciiFilter):
            segments = line_filter.apply(segments, Color(0, 0, 0))
    return segments


@run_async
async def test_a_16_colour_terminal_gets_the_plain_ansi_footer() -> None:
    events = running()
    app = OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events), ansi16=True)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.screen.has_class("-ansi")
        live = next(k for k in app.screen.query("FooterKey") if k.description == "Rollback")
        dead = [k for k in app.screen.query("FooterKey") if k.has_class("-disabled")]
        key_style = live.get_component_rich_style("footer-key--key")
        # ANSI colour numbers: the terminal's own bright yellow (11) on its blue (4)
        assert (key_style.color.number, key_style.bgcolor.number) == (11, 4)
        assert not dead  # live: nothing greyed out
    replay_events = running()
    from overwatch.sources import ReplaySource

    replay = OverwatchApp(ReplaySource.from_events(replay_events), ansi16=True)
    async with replay.run_test(size=WIDE) as pilot:
        await pilot.pause()
        dead = next(k for k in replay.screen.query("FooterKey") if k.description == "Rollback")
        assert dead.has_class("-disabled")
        style = dead.get_component_rich_style("footer-key--key")
        assert style.color.number == 8 and not style.dim  # bright black: receded, not dimmed


def test_no_mouse_reaches_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake_run(self, **kwargs):  # noqa: ANN001
        seen.update(kwargs)
        self._return_code = 0

    monkeypatch.setattr(OverwatchApp, "run", fake_run)
    source = FakeLiveSource([])
    assert app_module.run_console(source, mouse=False) == 0
    assert seen["mouse"] is False and source.stopped


def test_max_speed_is_shown_as_max() -> None:
    from overwatch.sources import speed_label

    assert speed_label(math.inf) == "max" and speed_label(64.0) == "64x"
