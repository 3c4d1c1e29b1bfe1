"""The console's structure: every key has an id and a description (a keymap can move it), and
signal handlers live for a block only."""

from __future__ import annotations

import signal

import pytest

from overwatch.app import OverwatchApp
from overwatch.screens.bindings import APP_BINDINGS, HELP_ORDER, MAIN_BINDINGS
from overwatch.signals import console_signals, handling
from tests.console.fixtures import FakeLiveSource, frozen_clock, run_async, running


def test_every_binding_has_a_unique_id_and_a_description() -> None:
    bindings = [*APP_BINDINGS, *MAIN_BINDINGS]
    ids = [binding.id for binding in bindings]
    assert all(ids) and len(set(ids)) == len(ids)
    assert all(binding.description for binding in bindings)
    assert sorted(map(id, HELP_ORDER)) == sorted(map(id, bindings))  # help lists every one


@run_async
async def test_a_keymap_moves_a_key_by_its_id() -> None:
    events = running(epochs=2)
    app = OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events))
    async with app.run_test(size=(120, 40)) as pilot:
        app.set_keymap({"sort": "o"})
        await pilot.press("s")
        await pilot.pause()
        assert app.main.sort == "id"  # s no longer sorts
        await pilot.press("o")
        await pilot.pause()
        assert app.main.sort == "accuracy"


def test_handlers_live_for_the_block_and_the_previous_ones_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[int] = []
    with handling({"SIGTERM": lambda signum, frame: seen.append(signum), "SIGNOTHING": print}):
        signal.raise_signal(signal.SIGTERM)
    assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_unknown_hangup_mode_is_refused_before_any_handler_is_installed() -> None:
    app = OverwatchApp(FakeLiveSource([]))
    before = signal.getsignal(signal.SIGHUP)
    with pytest.raises(ValueError, match="on_hangup must be one of detach, stop"):
        console_signals(app, "ignore")
    assert signal.getsignal(signal.SIGHUP) is before
