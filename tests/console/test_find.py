"""Find and focus: the env filter (\\ or F4), the command palette's actions (ctrl+p) and the
config screen (i), on a recording of the real engine with faults.

``fixtures/real_run_faults.msgpack``: 8 envs x 1 episode x 5 epochs, made with `overwatch run
--headless --n-envs 8 --episodes 1 --epochs 5 --batches-per-epoch 4 --seed 3 --fault nan:3:3
--fault diverge:6:2 --record tests/console/fixtures/real_run_faults.msgpack`: the governor
panics and rolls back envs 3 and 6, the others grow seeds. What each filter must list is worked
out here from the recorded events themselves, not from the console's state.
"""

from __future__ import annotations

import msgspec
import pytest
from textual.widgets import Static

from esper_engine.contracts import (
    LIVE_SEED_STAGES,
    EpochSummary,
    Event,
    ForceRollback,
    GovernorPanic,
    GovernorRollback,
    SeedTransition,
)
from overwatch.app import OverwatchApp
from overwatch.env_filter import EnvFilter, parse_filter
from overwatch.screens.config import ConfigScreen, config_lines, run_lines
from overwatch.screens.confirm import ConfirmModal
from overwatch.screens.palette import palette_commands
from overwatch.sources import ReplaySource
from tests.console.fixtures import (
    FIXTURES,
    FakeLiveSource,
    frozen_clock,
    live_app,
    real_events,
    run_async,
    running,
)
from tests.console.test_keys import StillClock, step

FAULTS_RUN = FIXTURES / "real_run_faults.msgpack"
SMALL, WIDE = (80, 24), (120, 40)


def recorded() -> list[Event]:
    return real_events(FAULTS_RUN)


def panicking_envs(events: list[Event]) -> set[int]:
    return {e.env for e in events if type(e) in (GovernorPanic, GovernorRollback)}


def live_seed_envs(events: list[Event]) -> set[int]:
    stage = {(e.env, e.slot_id): e.to_stage for e in events if type(e) is SeedTransition}
    return {env for (env, _), to in stage.items() if to in LIVE_SEED_STAGES}


def envs_below(events: list[Event], fraction: float) -> set[int]:
    accuracy = {e.env: e.val_accuracy for e in events if type(e) is EpochSummary}
    return {env for env, value in accuracy.items() if value < fraction}


def listed(app: OverwatchApp) -> list[int]:
    """The envs whose rows (compact) or panels (wide) are on display, in screen order."""
    main = app.main
    widgets = main._rows if main.layout_mode == "compact" else main._panels
    shown = [at for at, widget in enumerate(widgets) if widget.display]
    return [main.order[at] for at in shown]


async def filter_by(pilot, text: str) -> None:
    await pilot.press("backslash", *text, "enter")
    await pilot.pause()


# --- the filter's words -------------------------------------------------------------------------


def test_filter_words_combine_and_bad_words_are_named() -> None:
    assert parse_filter("") == EnvFilter()
    assert not parse_filter("  ").active
    assert parse_filter("Panic live acc<50") == EnvFilter(True, True, 0.5)
    assert parse_filter("<12.5%").accuracy_below == pytest.approx(0.125)
    assert parse_filter("panic acc<50").describe() == "panic acc<50%"
    with pytest.raises(ValueError, match="'slow' is not a filter"):
        parse_filter("panic slow")
    with pytest.raises(ValueError, match="within 0..100"):
        parse_filter("acc<150")
    with pytest.raises(ValueError, match="a percent"):
        parse_filter("acc<1.2.3")


def test_the_recording_has_envs_in_and_out_of_each_filter() -> None:
    """The fixture is worth testing on: every filter lists some envs and hides others."""
    events = recorded()
    for envs in (panicking_envs(events), live_seed_envs(events), envs_below(events, 0.15)):
        assert envs and envs != set(range(8))


# --- the filter on screen -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [SMALL, WIDE])
@run_async
async def test_each_filter_lists_exactly_its_envs_and_esc_lists_all_again(size) -> None:
    events = running(FAULTS_RUN)
    app = live_app(events)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        assert app.main.layout_mode == "compact"  # 8 envs: the table, at both sizes
        assert listed(app) == list(range(8))
        expected = {
            "panic": panicking_envs(events),
            "live": live_seed_envs(events),
            "acc<15": envs_below(events, 0.15),
            "panic acc<15": panicking_envs(events) & envs_below(events, 0.15),
            "live acc<15": live_seed_envs(events) & envs_below(events, 0.15),
        }
        for text, envs in expected.items():
            await filter_by(pilot, text)
            assert listed(app) == sorted(envs), text
            assert app.main.focused_env in envs  # the focus moved to a listed env
            header = "\n".join(app.main._header.lines)
            assert f"filter {parse_filter(text).describe()} ({len(envs)}/8)" in header
            await pilot.press("escape")
            await pilot.pause()
            assert listed(app) == list(range(8))
            assert "filter" not in "\n".join(app.main._header.lines)


@run_async
async def test_focus_moves_to_the_nearest_listed_env_and_hidden_envs_cannot_be_focused() -> None:
    events = running(FAULTS_RUN)
    app = live_app(events)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("5")  # env 5 (index 4) has no panic; 6 (index 5) has
        await pilot.pause()
        table = app.main._row_list.region.height
        await filter_by(pilot, "panic")
        assert listed(app) == [2, 5]
        assert app.main.focused_env == 5 and app.main._detail.env == 5
        assert app.main._row_list.region.height == 2 < table  # the rest goes to detail and log
        await pilot.press("1")  # hidden: the focus stays, a toast says why
        await pilot.pause()
        assert app.main.focused_env == 5
        await pilot.press("down", "up")  # the arrows walk the listed envs only
        await pilot.pause()
        assert app.main.focused_env == 2
        await pilot.press("escape", "s")  # sorted by accuracy, then filtered: the sort holds
        await pilot.pause()
        await filter_by(pilot, "live")
        by_accuracy = app.main._filtered(app.main._sort_all())
        assert listed(app) == by_accuracy and set(by_accuracy) == live_seed_envs(events)


@run_async
async def test_a_filter_no_env_matches_stays_and_says_so() -> None:
    app = live_app(running(FAULTS_RUN))
    async with app.run_test(size=SMALL) as pilot:
        await filter_by(pilot, "panic live acc<1")
        assert listed(app) == []
        assert "(0/8)" in "\n".join(app.main._header.lines)
        await pilot.press("backslash", "x", "enter")  # a bad word: the prompt stays, says why
        await pilot.pause()
        error = str(app.screen.query_one("#prompt-error", Static).render())
        # The prompt opens on the filter in force, selected: what is typed replaces it.
        assert error.startswith("'x' is not a filter")


@run_async
async def test_backslash_and_words_typed_at_once_filter_at_once() -> None:
    """htop's habit, typed fast: \\ panic Enter in one burst applies the filter."""
    events = running(FAULTS_RUN)
    clock = StillClock()
    app = OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events), key_clock=clock)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("backslash", *"panic", "enter")
        await step(app, pilot, clock)
        assert app.screen is app.main and listed(app) == sorted(panicking_envs(events))


@run_async
async def test_the_filter_holds_with_the_32_envs_table() -> None:
    from tests.console.fixtures import REAL_RUN_32

    events = running(REAL_RUN_32)
    app = live_app(events)
    async with app.run_test(size=SMALL) as pilot:
        await filter_by(pilot, "acc<12")
        envs = sorted(envs_below(events, 0.12))
        assert 0 < len(envs) < 32 and listed(app) == envs


# --- the command palette ------------------------------------------------------------------------


def titles(app: OverwatchApp) -> list[str]:
    return [command.title for command in palette_commands(app, app.main)]


@run_async
async def test_the_palette_lists_the_actions_usable_here_with_their_keys() -> None:
    app = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        live = titles(app)
        assert {"Rollback (r)", "Sort (s)", "Find (\\)", "Quit (q)", "Help (?)"} <= set(live)
        assert "Play (space)" not in live  # a replay's key
        assert "Unfilter (escape)" not in live  # no filter to clear
        await filter_by(pilot, "panic")
        assert "Unfilter (escape)" in titles(app)
    replay = OverwatchApp(ReplaySource.from_events(real_events(), clock=lambda: 0.0))
    async with replay.run_test(size=WIDE) as pilot:
        await pilot.pause()
        shown = titles(replay)
        assert "Play (space)" in shown and "Rollback (r)" not in shown  # read-only


@run_async
async def test_the_palette_runs_an_action_and_a_destructive_one_still_asks() -> None:
    app = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("ctrl+p", *"sort", "enter")
        await pilot.pause()
        assert app.main.sort == "accuracy"
        await pilot.press("ctrl+p", *"rollback", "enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        assert app.source.sent == []  # nothing sent before the answer
        await pilot.press("escape")
        await pilot.pause()
        assert app.source.sent == []
        await pilot.press("ctrl+p", *"rollback", "enter")
        await pilot.pause()
        await pilot.press(str(app.main.focused_env + 1), "enter")
        await pilot.pause()
        assert app.source.sent == [ForceRollback(env=app.main.focused_env)]


# --- the config screen --------------------------------------------------------------------------


@run_async
async def test_the_config_screen_finds_a_key_and_scrolls_at_80x24() -> None:
    events = running(FAULTS_RUN)
    app = live_app(events)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("i")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ConfigScreen)
        assert screen.shown == run_lines(events[0]) + config_lines(events[0].config)
        await pilot.press("pagedown")
        await pilot.pause()
        assert screen.query_one("#config-lines").scroll_y > 0  # more lines than fit: it scrolls
        await pilot.press(*"sensitiv")
        await pilot.pause()
        assert screen.shown == ["governor.sensitivity = 6.0"]
        text = str(screen.query_one("#config-text", Static).render())
        assert "governor.sensitivity = 6.0" in text
        await pilot.press("ctrl+a", "ctrl+k", *"faults")  # brackets as recorded
        await pilot.pause()
        assert screen.shown == ["faults = [nan:3:3, diverge:6:2]"]
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.main


@run_async
async def test_config_values_are_text_never_markup() -> None:
    events = running(FAULTS_RUN)
    started = msgspec.structs.replace(events[0], config={"data_dir": "/data/[b]x[/b]"})
    app = live_app([started, *events[1:]])
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("i")
        await pilot.pause()
        rendered = app.screen.query_one("#config-text", Static).render()
        assert "data_dir = /data/[b]x[/b]" in str(rendered)  # as markup, the tags would go


@run_async
async def test_the_filter_hides_panels_in_the_wide_layout() -> None:
    events = running()  # 4 envs: panels at 120x40
    app = live_app(events)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.main.layout_mode == "wide"
        await filter_by(pilot, "panic")
        envs = sorted(panicking_envs(events))
        assert 0 < len(envs) < 4 and listed(app) == envs
        assert [panel.env for panel in app.main._panels if panel.display] == envs
        await pilot.press("escape")
        await pilot.pause()
        assert listed(app) == [0, 1, 2, 3]
