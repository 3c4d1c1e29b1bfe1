"""The event log driven by a Pilot: scrolling (keys, PgUp/PgDn, wheel), filters, search, the
focused env's events, wall-clock times, and its height on a tall terminal."""

from __future__ import annotations

import time

from textual.events import MouseScrollDown, MouseScrollUp

from esper_engine.contracts import CommandAck, GovernorPanic, GovernorRollback, SeedTransition
from overwatch.widgets.event_log import EventLog, LogFilter, clock
from tests.console.fixtures import live_app, real_events, run_async, running

WIDE = (120, 40)
SMALL = (80, 24)


def log_of(app) -> EventLog:
    return app.main.visible_log()


def visible(log: EventLog) -> list[str]:
    return str(log.render()).splitlines()


@run_async
async def test_pgup_pgdn_scroll_and_new_entries_keep_the_place() -> None:
    app = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        log = log_of(app)
        newest = visible(log)[-1]
        assert log.back == 0 and len(log.shown) > 20
        await pilot.press("pageup")
        assert log.back == log.content_size.height - 1
        assert visible(log)[-1] != newest
        assert "newer below" in str(log.border_title)
        top = visible(log)[0]
        app.source.push(*running(epochs=7)[len(running(epochs=6)) :])  # the next epoch comes in
        await app.tick()
        assert visible(log)[0] == top  # scrolled back: the same lines stay on screen
        await pilot.press("pagedown", "pagedown", "pagedown", "pagedown")
        assert log.back == 0


@run_async
async def test_l_gives_the_arrows_to_the_log_and_escape_takes_them_back() -> None:
    app = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        log = log_of(app)
        await pilot.press("l")
        assert app.focused is log
        await pilot.press("up", "up", "up")
        assert log.back == 3 and app.main.focused_env == 0  # the arrows scrolled, focus stayed
        await pilot.press("down")
        assert log.back == 2
        await pilot.press("home")
        assert log.back == len(log.shown) - log.content_size.height
        await pilot.press("end")
        assert log.back == 0
        await pilot.press("escape", "down")
        assert app.focused is None and app.main.focused_env == 2  # down moves between envs again


@run_async
async def test_the_mouse_wheel_scrolls_the_log() -> None:
    app = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        log = log_of(app)
        log.post_message(MouseScrollUp(log, 1, 1, 0, 0, 0, False, False, False))
        await pilot.pause()
        assert log.back == 3
        log.post_message(MouseScrollDown(log, 1, 1, 0, 0, 0, False, False, False))
        await pilot.pause()
        assert log.back == 0


@run_async
async def test_f_cycles_the_kinds_of_entry() -> None:
    app = live_app()
    kinds = {
        "lifecycle": (SeedTransition,),
        "governor": (GovernorPanic, GovernorRollback),
        "commands": (CommandAck,),
    }
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        log = log_of(app)
        everything = len(log.shown)
        for kind, types in kinds.items():
            await pilot.press("f")
            assert app.main.log_filter.kind == kind
            assert log.shown and all(isinstance(e, types) for e in log.shown)
            assert str(log.border_title).startswith(f"events: {kind} · {len(log.shown)}/")
        await pilot.press("f")
        assert app.main.log_filter.kind == "all" and len(log.shown) == everything


@run_async
async def test_e_shows_the_focused_env_and_follows_the_focus() -> None:
    app = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        log = log_of(app)
        await pilot.press("2", "e")
        assert {entry.env for entry in log.shown} == {1}
        assert "env 2" in str(log.border_title)
        await pilot.press("4")  # the log goes with the focus
        assert {entry.env for entry in log.shown} == {3}
        await pilot.press("e")
        assert app.main.log_filter.env is None and len({entry.env for entry in log.shown}) > 2


@run_async
async def test_slash_searches_and_highlights_and_empty_clears() -> None:
    app = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        log = log_of(app)
        await pilot.press("slash", *"rollback", "enter")
        assert app.main.log_filter.search == "rollback"
        assert log.shown and all("rollback" in log.describe(e).plain.lower() for e in log.shown)
        lines = log.render()
        assert any(span.style == log._style("log--match") for span in lines.spans)
        await pilot.press("slash", *"no such thing xyz", "enter")
        assert visible(log) == ["no event matches the filter"]
        await pilot.press("slash")
        await pilot.press(*["backspace"] * 20, "enter")
        assert app.main.log_filter.search == "" and len(log.shown) > 20


@run_async
async def test_each_entry_has_its_wall_clock_time_beside_episode_and_epoch() -> None:
    app = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        log = log_of(app)
        last = log.shown[-1]
        expected = time.strftime("%H:%M:%S", time.localtime(last.wall_time))
        assert visible(log)[-1].startswith(f"{expected} {last.episode + 1}:")
        await pilot.press("2", "r", "2", "enter")  # the console's own note gets the console's clock
        assert log.shown[-1].wall_time == app.clock()
    assert clock(0.0) == "--:--:--"


@run_async
async def test_the_log_grows_on_a_tall_terminal() -> None:
    app = live_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        short = app.main._logs[0].size.height
        await pilot.resize_terminal(120, 70)
        await pilot.pause()
        assert app.main._logs[0].size.height > short + 10
        await pilot.resize_terminal(*SMALL)
        await pilot.resize_terminal(80, 50)
        await pilot.pause()
        assert app.main.layout_mode == "compact" and app.main._logs[1].size.height > 5


def test_a_filter_describes_itself() -> None:
    assert LogFilter().describe() == ""
    assert LogFilter("governor", 2, "nan").describe() == "governor · env 3 · /nan"
    assert real_events()  # the fixture the screens read
