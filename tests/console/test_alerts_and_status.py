"""Alerts (toasts, the header's count, acknowledging, the bell) and a status line that does not
mislead (elapsed and ETA, STALE against the run's own epochs, Resume while paused, 1 env, the
focused panel before the first event)."""

from __future__ import annotations

import functools

import msgspec
import pytest

from esper_engine.commands import acknowledge
from esper_engine.contracts import (
    EpochSummary,
    GovernorPanic,
    GovernorRollback,
    Pause,
    Resume,
    RunFinished,
)
from overwatch.app import OverwatchApp
from overwatch.state import STALE_AFTER_S, ConsoleState, RunPlan, reduce_many, stale_after
from overwatch.widgets.env_panel import EnvPanel
from overwatch.widgets.event_log import describe_alert
from tests.console.fixtures import (
    SCREEN_EPOCHS,
    FakeLiveSource,
    crashed_run,
    frozen_clock,
    live_app,
    real_events,
    run_async,
    running,
)

WIDE = (120, 40)
SMALL = (80, 24)


def incidents(events: list) -> list:
    return [e for e in events if describe_alert(e) is not None]


@run_async
async def test_incidents_raise_toasts_a_header_count_and_a_acknowledges() -> None:
    events = running(epochs=SCREEN_EPOCHS)
    assert {type(e) for e in incidents(events)} >= {GovernorPanic, GovernorRollback}
    app = live_app(events)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        count = len(incidents(events))
        assert app.state.alerts == count
        assert f"⚠ {count} alerts (a)" in app.main._header.lines[0]
        severities = {n.severity for n in app._notifications}
        assert "error" in severities  # a rollback is an error, a panic a warning
        await pilot.press("a")
        assert "alerts" not in app.main._header.lines[0] and not app._notifications
        rollback = next(e for e in events if type(e) is GovernorRollback)
        app.source.push(msgspec.structs.replace(rollback, wall_time=events[-1].wall_time))
        await app.tick()
        assert "⚠ 1 alert (a)" in app.main._header.lines[0]  # singular, and only the new one


@run_async
async def test_bell_rings_on_alerts_only_with_bell() -> None:
    for bell in (False, True):
        events = running(epochs=SCREEN_EPOCHS)
        app = OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events), bell=bell)
        rings: list[None] = []
        app.bell = functools.partial(rings.append, None)  # type: ignore[method-assign]
        async with app.run_test(size=WIDE) as pilot:
            await pilot.pause()
            assert bool(rings) is bell


@run_async
async def test_a_crash_and_a_non_finite_loss_are_errors() -> None:
    events = crashed_run()
    crash = events[-1]
    assert isinstance(crash, RunFinished)
    assert describe_alert(crash) == ("error", f"the trainer crashed: {crash.error}")
    nan_epoch = next(
        e for e in real_events() if type(e) is EpochSummary and e.val_loss != e.val_loss
    )  # the real run's NaN fault
    severity, text = describe_alert(nan_epoch)
    assert severity == "error" and "non-finite loss" in text


@pytest.mark.parametrize("size", [SMALL, WIDE, (200, 60)])
@run_async
async def test_toasts_sit_on_the_footer_line_and_never_cover_data(size) -> None:
    """Toasts hid the acc/grad lines of the next panel; now one toast line, over the footer."""
    app = live_app()
    async with app.run_test(size=size, notifications=True) as pilot:
        await pilot.pause()
        for n in range(8):  # a pile of toasts: the newest shows
            app.notify(f"alert {n} [/]", timeout=30)
        await pilot.pause()
        from textual.widgets import Footer
        from textual.widgets._toast import Toast

        toasts = [t for t in app.screen.query(Toast) if t.parent.display]
        assert [str(t.render()) for t in toasts] == ["alert 7 [/]"]
        assert toasts[0].region.right == size[0]  # flush right, over the palette key
        footer = app.screen.query_one(Footer).region
        assert toasts[0].region.y == footer.y and toasts[0].region.height == 1
        main = app.main
        data = [main._header, *main._panels, *main._rows, main._detail, *main._logs, *main._plots]
        for widget in data:
            if widget.display and widget.region:
                assert not widget.region.overlaps(toasts[0].region), widget


def test_stale_is_judged_against_the_runs_own_epoch_time() -> None:
    events = real_events()
    state = reduce_many(ConsoleState(), events[:-1])
    assert state.epoch_seconds is not None and state.epoch_seconds < 5
    assert stale_after(state) == STALE_AFTER_S  # fast epochs: the 10 s floor
    slow = ConsoleState()
    slow.started_wall_time, slow.epoch_wall_time, slow.epochs_done = 0.0, 400.0, 4
    assert stale_after(slow) == 200.0  # 100 s epochs: not stale at 10 s, nor at 150 s


def test_elapsed_and_eta_from_the_recorded_epochs() -> None:
    events = running(epochs=4)
    state = reduce_many(ConsoleState(), events)
    started = events[0].wall_time
    last_summary = max(e.wall_time for e in events if type(e) is EpochSummary)
    per_epoch = (last_summary - started) / 4
    assert state.elapsed(started + 30.0) == 30.0
    assert abs(state.eta() - per_epoch * (2 * 8 - 4)) < 1e-6
    finished = reduce_many(ConsoleState(), real_events())
    assert finished.eta() is None
    # To the last event, not "now"; the operator's pause in the fixture is left out.
    first = real_events()[0].wall_time
    paused = sum(end - start for start, end in finished.pauses)
    assert finished.pauses and paused > 0
    assert abs(finished.elapsed(10**10) - (real_events()[-1].wall_time - first - paused)) < 1e-6


def test_a_pause_counts_in_neither_elapsed_nor_epoch_time_nor_eta() -> None:
    """The operator pauses the trainer for 10 minutes during epoch 4: elapsed, the epoch time
    and the ETA leave it out (the acks as the engine records them)."""
    events = running(epochs=4)
    plain = reduce_many(ConsoleState(), events)
    cut = max(i for i, e in enumerate(events) if type(e) is EpochSummary)  # the 4th epoch's end
    before = events[cut].wall_time
    pause, resume = before - 2.0, before - 2.0 + 600.0
    paused = [
        *events[: cut - 1],
        acknowledge(Pause(command_id=1), accepted=True, n_envs=4, run_id="x", wall_time=pause),
        acknowledge(Resume(command_id=2), accepted=True, n_envs=4, run_id="x", wall_time=resume),
        *(msgspec.structs.replace(e, wall_time=e.wall_time + 600.0) for e in events[cut - 1 :]),
    ]
    state = reduce_many(ConsoleState(), paused)
    assert state.pauses == [(pause, resume)] and state.trainer_state == "running"
    assert abs(state.epoch_seconds - plain.epoch_seconds) < 1e-6
    assert abs(state.eta() - plain.eta()) < 1e-6
    now = events[-1].wall_time + 600.0 + 5.0
    assert abs(state.elapsed(now) - plain.elapsed(now - 600.0)) < 1e-6
    # While paused, elapsed stands still and the run shows no live samples/s.
    during = reduce_many(ConsoleState(), paused[:cut])  # up to the Pause ack
    assert during.trainer_state == "paused" and during.samples_per_s == 0.0
    assert during.elapsed(pause + 100.0) == during.elapsed(pause + 500.0)


@run_async
async def test_the_footer_says_resume_while_paused() -> None:
    app = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()

        def footer_keys() -> set[str]:
            return {key.description for key in app.screen.query("FooterKey")}

        assert "Pause" in footer_keys() and "Resume" not in footer_keys()
        await pilot.press("p")
        await pilot.pause()
        assert "Resume" in footer_keys() and "Pause" not in footer_keys()
        app.source.push(acknowledge(Pause(command_id=1), accepted=True, n_envs=4))
        await app.tick()
        await pilot.pause()
        assert app.state.trainer_state == "paused" and "Resume" in footer_keys()


@run_async
async def test_one_env_is_singular_and_a_heuristic_run_has_no_ppo_line() -> None:
    events = [e for e in running(epochs=2) if e.env in (None, 0)]
    events[0] = msgspec.structs.replace(events[0], n_envs=1)
    app = live_app(events)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        header = app.main._header.lines
        assert " 1 env " in header[0] + " " and "1 envs" not in header[0]
        assert "PPO" not in "\n".join(header)
        assert "elapsed" in header[2] and "ETA" in header[2] and "epoch time" in header[2]


@run_async
async def test_before_the_first_event_the_focused_panel_is_highlighted() -> None:
    plan = RunPlan("planned", "synthetic-images", "heuristic", 4, 2, 8, "cpu", 1.0)
    app = OverwatchApp(FakeLiveSource([], plan=plan), clock=lambda: 0.0)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        focused = [p.env for p in app.query(EnvPanel) if p.has_class("-focused")]
        assert focused[:1] == [0] and "detail" not in {
            p.id for p in app.query(EnvPanel) if p.has_class("-focused") and p.env
        }
        await pilot.press("3")
        await pilot.pause()
        assert [p.env for p in app.main._panels if p.has_class("-focused")] == [2]
        progress = app.main._header.lines[1]
        assert "episode -/2 · epoch -/8" in progress and "0%" in progress
