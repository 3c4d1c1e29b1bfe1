"""Per-tick work follows change: a widget repaints only the lines whose content changed, and the
hidden layout is not updated at all; the screen stays what a full repaint would show."""

from __future__ import annotations

import msgspec

from esper_engine.contracts import BatchStats, EpochProgress, EpochSummary, Event, RunStarted
from overwatch.app import OverwatchApp
from overwatch.state import RunPlan
from overwatch.widgets.env_panel import EnvPanel
from tests.console.fixtures import FakeLiveSource, frozen_clock, real_events, run_async, running

WIDE = (120, 40)
SMALL = (80, 24)
CUT = 100  # events shown before the ticks under test: episode 0, a few epochs in


def running_events() -> list[Event]:
    return running()


# The tests tick by hand; the app's own timer (every 10 s at this rate) stays out of the way.
HAND_TICKED_HZ = 0.1


def app_with(
    events: list[Event], shown: int, refresh_hz: float = 4.0
) -> tuple[OverwatchApp, FakeLiveSource]:
    source = FakeLiveSource(events[:shown])
    return OverwatchApp(source, clock=frozen_clock(events), refresh_hz=refresh_hz), source


def next_of(events: list[Event], kind: type, env: int) -> Event:
    return next(e for e in events[CUT:] if type(e) is kind and e.env == env)


def panels_made(app: OverwatchApp) -> list[int]:
    return [panel.strips_made for panel in app.query(EnvPanel) if panel.id != "detail"]


async def repaints(pushed: list[Event], ticks: int = 1) -> tuple[list[int], int, OverwatchApp]:
    """Lines turned into strips by each wide panel and by the header over ``ticks`` ticks that
    show ``pushed`` after the first CUT events."""
    app, source = app_with(running_events(), CUT, refresh_hz=HAND_TICKED_HZ)
    async with app.run_test(size=WIDE) as pilot:
        await app.tick()  # the first CUT events
        await pilot.pause()
        before, header_before = panels_made(app), app.main._header.strips_made
        source.push(*pushed)
        for _ in range(ticks):
            await app.tick()
        await pilot.pause()
        made = [after - b for after, b in zip(panels_made(app), before, strict=True)]
        return made, app.main._header.strips_made - header_before, app


@run_async
async def test_batch_stats_repaint_one_line_of_their_own_panel_only() -> None:
    """Within the live period a tick that brings a BatchStats repaints nothing; the next tick
    without one shows it: the grad line of its panel and the header's samples/s."""
    batch = next_of(running_events(), BatchStats, env=1)
    made, header, app = await repaints([batch])
    assert made == [0, 0, 0, 0] and header == 0  # the clock is frozen: the period has not passed
    made, header, app = await repaints([batch], ticks=2)  # the second tick brings nothing
    assert made == [0, 1, 0, 0]  # the grad line and nothing else
    assert header == 1  # the run's samples/s, on the progress line
    grad = next(line for line in app.main._panels[1].lines if line.startswith("grad "))
    assert grad.startswith(f"grad {batch.grad_norm_post_clip:.2f}/")
    summary = app.state.envs[1].summary
    # the border shows the last epoch's throughput, which a batch does not change
    assert app.main._panels[1].border_subtitle == (
        f"epoch {batch.epoch + 1} · {summary.samples_per_s:,.0f}/s"
    )


@run_async
async def test_a_live_runs_batch_figures_repaint_once_per_live_period() -> None:
    """A batch of one env arrives on every tick (4 Hz) for 2.75 s of the clock: its grad line is
    repainted at 1 s and 2 s only, with the newest batch; a tick without a batch shows the last."""
    events = running_events()
    # The fixture's trainer sent every 10th batch; these are the batches between two of them,
    # made from the real one (same epoch, units and clip), each with its own grad norm.
    shown = next(i for i, e in enumerate(events) if i > CUT and type(e) is BatchStats)
    real = events[shown]
    batches = [
        msgspec.structs.replace(
            real,
            batch=real.batch + 1 + k,
            grad_norm_post_clip=0.1 + 0.07 * k,
            wall_time=real.wall_time + 0.25 * (k + 1),
        )
        for k in range(11)
    ]
    now = [real.wall_time]
    source = FakeLiveSource(events[: shown + 1])
    app = OverwatchApp(source, clock=lambda: now[0], refresh_hz=HAND_TICKED_HZ)
    async with app.run_test(size=WIDE) as pilot:
        await app.tick()
        await pilot.pause()
        panel = app.main._panels[real.env]
        repainted = []
        for tick, batch in enumerate(batches, start=1):
            now[0] += 1 / 4
            before = panel.strips_made
            source.push(batch)
            await app.tick()
            await pilot.pause()
            if panel.strips_made > before:
                repainted.append(tick)
                assert grad_line(panel) == f"grad {app.state.envs[real.env].grad_period[0]:.2f}"
        assert repainted == [4, 8]  # 1.0 s and 2.0 s
        assert grad_line(panel) != f"grad {app.state.envs[real.env].grad_period[0]:.2f}"
        await app.tick()  # brings nothing: what arrived last is shown
        await pilot.pause()
        assert grad_line(panel) == f"grad {app.state.envs[real.env].grad_period[0]:.2f}"


@run_async
async def test_a_live_runs_progress_bars_repaint_once_per_live_period() -> None:
    """An EpochProgress of one env arrives on every tick (4 Hz) for 2.75 s of the clock: its
    border's bar is redrawn at 1 s and 2 s only, with the newest count; a tick that brings
    nothing shows the last (a progress event is a per-batch figure, like a BatchStats)."""
    events = running_events()
    shown = next(i for i, e in enumerate(events) if i > CUT and type(e) is BatchStats)
    real = events[shown]
    batches = next(e for e in events if type(e) is RunStarted).batches_per_epoch
    progress = [
        EpochProgress(
            run_id=real.run_id,
            wall_time=real.wall_time + 0.25 * (k + 1),
            episode=real.episode,
            epoch=real.epoch,
            env=real.env,
            phase="train",
            batch=k + 1,
            batches=batches,
        )
        for k in range(11)
    ]
    now = [real.wall_time]
    source = FakeLiveSource(events[: shown + 1])
    app = OverwatchApp(source, clock=lambda: now[0], refresh_hz=HAND_TICKED_HZ)
    async with app.run_test(size=WIDE) as pilot:
        await app.tick()
        await pilot.pause()
        panel = app.main._panels[real.env]
        repainted = []
        for tick, event in enumerate(progress, start=1):
            now[0] += 1 / 4
            before = panel.border_subtitle
            source.push(event)
            await app.tick()
            await pilot.pause()
            if panel.border_subtitle != before:
                repainted.append(tick)
                assert f" {event.batch}/{batches}" in panel.border_subtitle
        assert repainted == [4, 8]  # 1.0 s and 2.0 s
        await app.tick()  # brings nothing: what arrived last is shown
        await pilot.pause()
        assert f" {progress[-1].batch}/{batches}" in panel.border_subtitle


def grad_line(panel: EnvPanel) -> str:
    """The panel's grad line up to the threshold: "grad 0.87"."""
    return next(line for line in panel.lines if line.startswith("grad ")).split("/")[0]


@run_async
async def test_an_epoch_summary_repaints_its_panel_and_the_header() -> None:
    summary = next_of(running_events(), EpochSummary, env=2)
    made, header, app = await repaints([summary])
    assert made[2] > 1 and [made[i] for i in (0, 1, 3)] == [0, 0, 0]  # figures, charts ...
    assert header > 0  # samples/s is a sum over envs
    assert app.main._panels[2].border_subtitle.startswith(f"epoch {summary.epoch + 1} ")


@run_async
async def test_a_tick_without_events_repaints_nothing() -> None:
    made, header, _ = await repaints([], ticks=3)
    assert made == [0, 0, 0, 0] and header == 0


@run_async
async def test_hidden_layout_is_not_updated_until_shown() -> None:
    events = running_events()
    app, source = app_with(events, CUT)
    async with app.run_test(size=WIDE) as pilot:
        source.push(*events[CUT:])
        await app.tick()
        await pilot.pause()
        rows = app.query("EnvRow")
        assert app.main._detail.view is None and all(row.view is None for row in rows)
        await pilot.resize_terminal(*SMALL)
        await pilot.pause()
        assert app.main.layout_mode == "compact"
        assert app.main._detail.view is app.state.envs[0]
        assert [row.view for row in rows] == app.state.envs
        await pilot.press("3")  # compact: the wide panels now wait in turn
        assert [panel.has_class("-focused") for panel in app.main._panels] == [True] + [False] * 3


async def screen_after(
    events: list[Event], chunks: int, size: tuple[int, int], press: str | None = None
) -> str:
    """The screen after showing ``events`` in ``chunks`` ticks (key pressed halfway)."""
    app, source = app_with(events, 0)
    step = -(-len(events) // chunks)
    async with app.run_test(size=size) as pilot:
        for i, start in enumerate(range(0, len(events), step)):
            source.push(*events[start : start + step])
            await app.tick()
            await pilot.pause()
            if press and i == chunks // 2:
                await pilot.press(press)
        if press and chunks == 1:
            await pilot.press(press)
        await pilot.pause()
        return app.export_screenshot()


@run_async
async def test_incremental_repaints_show_what_one_full_repaint_shows() -> None:
    events = running_events()
    for size, press in ((WIDE, "2"), (SMALL, "3")):
        incremental = await screen_after(events, 40, size, press)
        full = await screen_after(events, 1, size, press)
        assert incremental == full, f"the screen differs at {size}"


@run_async
async def test_footer_keys_are_rebuilt_only_when_the_run_ends() -> None:
    events = real_events()
    app, source = app_with(events, len(events) - 1)  # RunStarted and all but RunFinished
    calls: list[None] = []
    refresh_bindings = app.refresh_bindings

    def counted() -> None:
        calls.append(None)
        refresh_bindings()

    app.refresh_bindings = counted  # type: ignore[method-assign]
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert calls == [] and app.main.check_action("rollback", ()) is True
        source.push(events[-1])
        await app.tick()
        await app.tick()
        assert len(calls) == 1
        assert app.main.check_action("rollback", ()) is None  # greyed out in the footer


@run_async
async def test_live_panels_are_laid_out_before_the_trainer_starts_and_kept() -> None:
    events = running_events()
    plan = RunPlan("r", "synthetic-images", "heuristic", 4, 2, 8, "cpu", 1.0)
    source = FakeLiveSource([], plan=plan)
    started_with: list[int] = []
    start = source.start

    def counted_start() -> None:
        started_with.append(len(app.query(EnvPanel)) - 1)  # less the compact layout's detail
        start()

    source.start = counted_start  # type: ignore[method-assign]
    app = OverwatchApp(source, clock=frozen_clock(events))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert started_with == [4]
        panels = list(app.main._panels)
        assert all(p.lines == ["waiting for the first epoch"] for p in panels)
        source.push(*events[:CUT])
        await app.tick()
        await pilot.pause()
        assert app.main._panels == panels  # the same widgets, not mounted again
        assert all(p.lines[0] != "waiting for the first epoch" for p in panels)
