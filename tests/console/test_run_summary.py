"""The end-of-run summary, read against the real engine's recordings: ranked envs, seeds,
rollbacks, FLOPs and time; on screen (by itself at a live run's end, u any time), in a toast at
a replay's end, printed when the console exits, and after a headless run."""

from __future__ import annotations

import io
from collections import Counter

import pytest

from esper_engine.contracts import (
    CommandAck,
    EpochSummary,
    Event,
    GovernorRollback,
    RunFinished,
    SeedStage,
    SeedTransition,
)
from overwatch.app import OverwatchApp, print_summary
from overwatch.run_summary import run_summary, summary_lines
from overwatch.screens.summary import SummaryScreen
from overwatch.sources import ReplaySource
from overwatch.state import ConsoleState, reduce_many
from tests.console.fixtures import (
    FIXTURES,
    FakeLiveSource,
    crashed_run,
    frozen_clock,
    real_events,
    run_async,
    running,
)

COMPARE_A = FIXTURES / "compare_a.msgpack"  # 3 envs x 6 epochs, heuristic, seed 1 (FLOPs)


def expected(events: list[Event]) -> dict[str, object]:
    """What the summary must say, counted from the events themselves."""
    finals = {e.env: e.val_accuracy for e in events if type(e) is EpochSummary}
    best = {}
    for e in events:
        if type(e) is EpochSummary and e.val_accuracy > best.get(e.env, (-1.0,))[0]:
            best[e.env] = (e.val_accuracy, e.episode, e.epoch)
    stages = Counter((e.env, e.to_stage) for e in events if type(e) is SeedTransition)
    rollbacks = Counter(e.env for e in events if type(e) is GovernorRollback)
    ranked = sorted(finals, key=lambda env: (-finals[env], env))
    return {
        "finals": finals,
        "best": best,
        "ranked": ranked,
        "fossilized": {env: stages[(env, SeedStage.FOSSILIZED)] for env in finals},
        "pruned": {env: stages[(env, SeedStage.PRUNED)] for env in finals},
        "rollbacks": {env: rollbacks[env] for env in finals},
    }


def summarised(events: list[Event]):
    summary = run_summary(reduce_many(ConsoleState(), events))
    assert summary is not None
    return summary


def test_the_summary_ranks_the_envs_and_counts_what_the_recording_holds() -> None:
    events = real_events()
    want = expected(events)
    summary = summarised(events)
    assert [r.env for r in summary.envs] == want["ranked"]
    for r in summary.envs:
        assert r.final_accuracy == want["finals"][r.env]
        accuracy, episode, epoch = want["best"][r.env]
        assert (r.best_accuracy, r.best_at) == (accuracy, (episode, epoch))
        assert r.fossilized == want["fossilized"][r.env]
        assert r.pruned == want["pruned"][r.env]
        assert r.rollbacks == want["rollbacks"][r.env]
    # the fixture has a governor rollback (env 2) and an operator's (env 4), seeds of both ends
    assert summary.rollbacks == 2 and summary.fossilized > 0 and summary.pruned > 0
    assert summary.status == "completed"
    acks = {e.command: e.wall_time for e in events if type(e) is CommandAck and e.accepted}
    paused = acks["Resume"] - acks["Pause"]  # the fixture's operator paused it once
    span = events[-1].wall_time - events[0].wall_time
    assert summary.elapsed_s == pytest.approx(span - paused) and paused > 0
    lines = summary_lines(summary)
    best, worst = summary.best, summary.worst
    assert lines[0].startswith(f"run {events[0].run_id} completed: 16/16 epochs in ")
    assert lines[2] == (
        f"best env {best.env + 1} {100 * best.final_accuracy:.1f}%, "
        f"worst env {worst.env + 1} {100 * worst.final_accuracy:.1f}%"
    )
    rows = lines[4:]
    assert [row.split()[0:3] for row in rows] == [
        [str(rank), "env", str(r.env + 1)] for rank, r in enumerate(summary.envs, start=1)
    ]
    assert "FLOPs not recorded" in lines[1]  # the fixture predates the FLOPs fields
    assert all(len(line) <= 78 for line in lines)


def test_the_summary_adds_the_flops_each_env_spent_over_the_run() -> None:
    events = real_events(COMPARE_A)
    summary = summarised(events)
    last = {e.env: e for e in events if type(e) is EpochSummary}  # one episode: its totals
    for r in summary.envs:
        s = last[r.env]
        assert r.flops == s.train_flops + s.val_flops + s.attribution_flops + s.report_flops > 0
    finished = events[-1]
    assert type(finished) is RunFinished and summary.total_flops == finished.total_flops > 0


def test_no_summary_before_the_first_epoch_and_so_far_while_running() -> None:
    events = real_events()
    assert run_summary(reduce_many(ConsoleState(), events[:1])) is None
    partial = summarised(running(epochs=3))
    assert partial.status == "running" and partial.epochs_done == 3


def test_printed_on_exit_only_once_the_run_has_ended() -> None:
    out = io.StringIO()
    print_summary(reduce_many(ConsoleState(), running(epochs=3)), file=out)
    assert out.getvalue() == ""
    state = reduce_many(ConsoleState(), real_events())
    print_summary(state, file=out)
    assert out.getvalue().splitlines() == summary_lines(run_summary(state))


def screen_text(app: OverwatchApp) -> str:
    return str(app.screen.query_one("#summary-lines").render())


@run_async
async def test_a_live_run_that_ends_opens_the_summary_and_u_opens_it_again() -> None:
    events = real_events()
    source = FakeLiveSource(events[:-1])
    app = OverwatchApp(source, clock=frozen_clock(events))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.tick()
        assert not isinstance(app.screen, SummaryScreen)  # still running
        source.push(events[-1])
        await app.tick()
        await pilot.pause()
        assert isinstance(app.screen, SummaryScreen)
        text = screen_text(app)
        assert text.splitlines() == summary_lines(run_summary(app.state))
        assert "Run summary" in str(app.screen.query_one(".dialog-title").render())
        await pilot.press("escape")
        assert not isinstance(app.screen, SummaryScreen)
        await app.tick()  # once: it does not come back by itself
        assert not isinstance(app.screen, SummaryScreen)
        await pilot.press("u")
        assert isinstance(app.screen, SummaryScreen)


@run_async
async def test_a_crash_shows_its_notice_not_the_summary() -> None:
    events = crashed_run()
    app = OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.tick()
        await app.tick()
        assert not isinstance(app.screen, SummaryScreen)
        assert app.screen.query("#crash-box")


@run_async
async def test_a_replay_at_its_end_toasts_the_best_and_worst_and_keeps_its_keys() -> None:
    events = real_events()
    source = ReplaySource.from_events(events, clock=lambda: 0.0)
    app = OverwatchApp(source, clock=lambda: 0.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("end")
        await app.tick()
        await pilot.pause()
        assert app.state.finished
        assert not isinstance(app.screen, SummaryScreen)  # replay keys stay the operator's
        best = summary_lines(run_summary(app.state))[2]
        toasts = [n.message for n in app._notifications]
        assert f"u: run summary · {best}" in toasts, toasts
        await pilot.press("u")
        assert isinstance(app.screen, SummaryScreen)
