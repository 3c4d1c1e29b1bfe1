"""Every number means what it says (issue 21, point 4): tiny figures in significant digits, a
resumed run's dead time and a pause left out, progress inside an epoch, a sampled clip share
said to be one, who sent a command, one numbering from 1, one sign for the rollback penalty,
and no text cut mid-word."""

from __future__ import annotations

import re

import msgspec
import pytest

from esper_engine import reports
from esper_engine.checkpoint import plan_resume
from esper_engine.commands import acknowledge
from esper_engine.config import TrainingConfig
from esper_engine.contracts import (
    BatchStats,
    CommandAck,
    EpochProgress,
    EpochSummary,
    Event,
    GovernorRollback,
    Initiator,
    Pause,
    RunResumed,
    SetClipThreshold,
    Stop,
)
from esper_engine.recording import read_recording
from esper_engine.session import TrainingSession
from esper_engine.tasks import load_task
from overwatch.app import OverwatchApp
from overwatch.sources import ReplaySource
from overwatch.state import (
    STALE_AFTER_S,
    ConsoleState,
    Resumed,
    liveness,
    reduce,
    reduce_many,
)
from overwatch.widgets.event_log import describe_alert
from overwatch.widgets.formatting import signed
from tests.console.fixtures import (
    REAL_RUN_LM,
    FakeLiveSource,
    frozen_clock,
    live_app,
    real_events,
    run_async,
    running,
)

WIDE, COMPACT = (120, 40), (80, 24)
# Slow enough epochs (about 2 s on a loaded machine) for a few progress events each.
# The trainer's progress period in the run below: short beside an epoch however fast the machine
# (at 0.5 s an idle machine trained a whole epoch between two reports), so that progress is
# seen moving inside every epoch; how many reports there are still follows the clock.
PERIOD_S = 0.02
SLOW = TrainingConfig(
    n_envs=2,
    episodes=1,
    epochs=4,
    batches_per_epoch=90,
    batch_size=16,
    val_batches=2,
    batch_stats_every=6,
)


@pytest.fixture(scope="module")
def resumed_recording(tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    """A real run, stopped after its second epoch and resumed: progress events, BatchStats,
    a RunResumed and the dead time between the two processes."""
    path = tmp_path_factory.mktemp("resumed") / "run.msgpack"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(path.parent / "state"))
        patch.setattr(reports, "PROGRESS_PERIOD_S", PERIOD_S)  # the Reporter reads it
        task = load_task("synthetic-images", seed=0, scale="small")
        first = TrainingSession(SLOW, task, run_id="resumed", record_path=path)
        emit, seen = first.recorder.emit, [0]

        def stop_after_two(event: Event) -> None:
            emit(event)
            if isinstance(event, EpochSummary):
                seen[0] += 1
                if seen[0] == 2 * SLOW.n_envs:
                    first.send(Stop())

        first.recorder.emit = stop_after_two
        first.start()
        assert first.wait(300)
        plan = plan_resume(path)
        second = TrainingSession(
            plan.config, task, run_id=plan.run_id, record_path=plan.recording, resume=plan
        )
        second.start()
        assert second.wait(300)
    return list(read_recording(path).events)


# --- tiny and huge figures ------------------------------------------------------------------


@run_async
async def test_a_tiny_clip_threshold_reads_in_significant_digits_everywhere() -> None:
    events = running(epochs=2)
    tiny = acknowledge(
        SetClipThreshold(command_id=9, value=1e-6),
        accepted=True,
        n_envs=4,
        run_id=events[0].run_id,
        wall_time=events[-1].wall_time,
    )
    app = live_app([*events, tiny])
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.state.clip_threshold == 1e-6
        header = "\n".join(app.main._header.lines)
        assert "clip 1e-06" in header and "clip 0.00" not in header
        for panel in app.main._panels:
            grad = next(line for line in panel.lines if line.startswith("grad "))
            assert "/1e-06" in grad, grad
        log = "\n".join(app.main._logs[0].describe(entry).plain for entry in app.state.log)
        assert "SetClipThreshold 1e-06 accepted" in log
    async with OverwatchApp(FakeLiveSource([*events, tiny]), clock=frozen_clock(events)).run_test(
        size=COMPACT
    ) as pilot:
        await pilot.pause()
        rows = [str(row.render()) for row in pilot.app.main._rows]
        assert all("/1e-06" in row for row in rows), rows


# --- a resumed run, a pause ------------------------------------------------------------------


def test_a_resume_is_in_the_log_and_its_dead_time_is_left_out(resumed_recording) -> None:
    events = resumed_recording
    at = next(i for i, e in enumerate(events) if isinstance(e, RunResumed))
    resumed = events[at]
    state = reduce_many(ConsoleState(), events)
    entry = next(e for e in state.log if isinstance(e, Resumed))
    down = resumed.wall_time - events[at - 1].wall_time
    assert entry.event is resumed and entry.down_s == pytest.approx(down)
    assert state.down == [(events[at - 1].wall_time, resumed.wall_time)]
    end = events[-1].wall_time
    assert state.elapsed(0.0) == pytest.approx(end - events[0].wall_time - down)


@run_async
async def test_the_log_says_where_a_run_resumed_and_after_how_long(resumed_recording) -> None:
    events = resumed_recording
    at = next(i for i, e in enumerate(events) if isinstance(e, RunResumed))
    # Four minutes down, as a user who comes back from lunch would see it.
    shifted = [
        *events[:at],
        *(msgspec.structs.replace(e, wall_time=e.wall_time + 240.0) for e in events[at:]),
    ]
    down = shifted[at].wall_time - shifted[at - 1].wall_time
    app = live_app(shifted)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        lines = [app.main._logs[0].describe(entry).plain for entry in app.state.log]
        resumed = events[at]
        assert any(
            f"run resumed at episode 1 epoch {resumed.from_epoch + 1} after 4m0" in line
            and f"(pid {resumed.pid})" in line
            for line in lines
        ), lines
        assert down >= 240.0
        elapsed = app.state.elapsed(shifted[-1].wall_time)
        assert elapsed == pytest.approx(shifted[-1].wall_time - shifted[0].wall_time - down)


def test_a_paused_or_ended_run_shows_no_live_samples_per_second() -> None:
    events = running(epochs=2)
    live = reduce_many(ConsoleState(), events)
    assert live.samples_per_s > 0
    paused = reduce(
        reduce_many(ConsoleState(), events),
        acknowledge(Pause(command_id=1), accepted=True, n_envs=4, wall_time=events[-1].wall_time),
    )
    assert paused.samples_per_s == 0.0
    assert reduce_many(ConsoleState(), real_events()).samples_per_s == 0.0  # ended


# --- progress inside an epoch -----------------------------------------------------------------


def test_the_trainer_reports_progress_a_few_times_a_second(resumed_recording) -> None:
    progress = [e for e in resumed_recording if isinstance(e, EpochProgress)]
    assert {p.phase for p in progress} >= {"train"}
    for env in range(SLOW.n_envs):
        mine = [p for p in progress if p.env == env]
        # Each epoch starts with one at its first batch, then one per PERIOD_S at most.
        epochs = {(p.episode, p.epoch) for p in mine}
        assert {(p.episode, p.epoch) for p in mine if (p.phase, p.batch) == ("train", 1)} == epochs
        for a, b in zip(mine, mine[1:], strict=False):
            if (a.episode, a.epoch) == (b.episode, b.epoch):
                assert b.wall_time - a.wall_time >= PERIOD_S * 0.9
                assert (b.phase, b.batch) > (a.phase, a.batch) or b.phase > a.phase
        assert all(p.batches == SLOW.batches_per_epoch for p in mine if p.phase == "train")
        # How many there are follows the clock: an epoch whose training went on for longer
        # than a period past its first report (its last BatchStats, at a batch's end, says
        # how long) reported again inside it, not only at its first batch.
        for episode, epoch in epochs:
            train = [p for p in mine if (p.episode, p.epoch, p.phase) == (episode, epoch, "train")]
            at = (env, episode, epoch)
            stats = [
                b
                for b in resumed_recording
                if isinstance(b, BatchStats) and (b.env, b.episode, b.epoch) == at
            ]
            if stats and stats[-1].wall_time - train[0].wall_time > 1.5 * PERIOD_S:
                assert len(train) >= 2, (env, episode, epoch)


def test_progress_moves_the_run_inside_an_epoch_and_headers_agree_with_panels(
    resumed_recording,
) -> None:
    state = ConsoleState()
    fractions = []
    for event in resumed_recording:
        reduce(state, event)
        if isinstance(event, RunResumed):
            fractions = []
            continue
        # The header's epoch (the run's) is every env's border epoch (lockstep).
        if all(view.at is not None for view in state.envs):
            assert {view.at for view in state.envs} <= {state.at} | {(state.at[0], state.at[1] - 1)}
        if isinstance(event, EpochProgress) and event.phase == "train" and event.env == 1:
            fractions.append(state.epoch_fraction())
    assert len(set(fractions)) > SLOW.epochs  # it moved between epoch ends
    assert fractions == sorted(fractions)
    assert all(view.progress is None for view in state.envs)  # every epoch summarised


def test_stale_means_no_event_for_a_while_not_no_epoch_yet(resumed_recording) -> None:
    events = resumed_recording
    end = next(i for i, e in enumerate(events) if isinstance(e, EpochSummary))
    last = max(i for i in range(end) if isinstance(events[i], EpochProgress))
    state = reduce_many(ConsoleState(), events[: last + 1])  # inside the first epoch
    assert state.epochs_done == 0 and state.trainer_state == "running"
    last = events[last].wall_time
    assert liveness(state, last + 5.0, is_live=True, read_only=False) == "LIVE"
    assert liveness(state, last + STALE_AFTER_S + 1, is_live=True, read_only=False) == "STALE"


@run_async
async def test_panel_row_and_header_show_the_epoch_in_progress(resumed_recording) -> None:
    events = resumed_recording
    first = next(i for i, e in enumerate(events) if isinstance(e, EpochProgress) and e.batch > 1)
    shown = events[: first + 1]
    progress = events[first]
    app = live_app(shown)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        header = "\n".join(app.main._header.lines)
        assert f"epoch {progress.epoch + 1}/{SLOW.epochs}" in header
        panel = app.main._panels[progress.env]
        label = f"{progress.batch}/{progress.batches}"
        assert panel.lines[0].startswith("first epoch ") and label in panel.lines[0]
        assert str(panel.border_subtitle).startswith(f"epoch {progress.epoch + 1} ")
        assert label in str(panel.border_subtitle)
    async with OverwatchApp(FakeLiveSource(shown), clock=frozen_clock(shown)).run_test(
        size=COMPACT
    ) as pilot:
        await pilot.pause()
        row = str(pilot.app.main._rows[progress.env].render())
        assert "first epoch" in row and label in row


@run_async
async def test_a_sent_line_is_logged_at_the_epoch_in_progress(resumed_recording) -> None:
    events = resumed_recording
    at = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, EpochProgress) and e.epoch == 1 and e.batch > 1
    )
    app = live_app(events[: at + 1])
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        header = "\n".join(app.main._header.lines)
        assert "epoch 2/4" in header and app.state.epoch == 0  # epoch 1 summarised, 2 runs
        app.send(Pause())
        await pilot.pause()
        note = app.state.log[-1]
        assert (note.episode, note.epoch) == (0, 1)
        assert app.main._logs[0].describe(note).plain.split()[1] == "1:02"


# --- the clipped share while an epoch runs ---------------------------------------------------


@run_async
async def test_the_live_clipped_share_says_it_is_a_sample_until_the_summary() -> None:
    events = real_events()
    summaries = [i for i, e in enumerate(events) if isinstance(e, EpochSummary)]
    mid = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, BatchStats) and e.env == 0 and i > summaries[8]
    )
    app = live_app(events[: mid + 1])
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        view = app.state.envs[0]
        grad = next(line for line in app.main._panels[0].lines if line.startswith("grad "))
        assert re.search(rf"clipped \d+% of {view.epoch_steps} sampled", grad), grad
    end = next(i for i in summaries if i > mid and events[i].env == 0)
    app = live_app(events[: end + 1])
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        grad = next(line for line in app.main._panels[0].lines if line.startswith("grad "))
        assert "clipped" in grad and "sampled" not in grad, grad


# --- who sent a command; the console's own lines ----------------------------------------------


@run_async
async def test_the_log_says_which_console_sent_a_command() -> None:
    events = running(epochs=2)
    last = events[-1].wall_time
    acks = [
        acknowledge(Pause(command_id=1, console="first"), accepted=True, n_envs=4, wall_time=last),
        CommandAck(command="Resume", accepted=True, command_id=1, console="", wall_time=last),
    ]
    app = live_app([*events, *acks])
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        lines = [app.main._logs[0].describe(entry).plain for entry in app.state.log][-2:]
        assert lines[0].endswith("✓ Pause accepted (#1 from first)")
        assert lines[1].endswith("✓ Resume accepted (#1 from the run's process)")


@run_async
async def test_sent_lines_do_not_change_the_event_count() -> None:
    events = running(epochs=2)
    app = live_app(events)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        app.send(Pause())
        await pilot.pause()
        live_title = str(app.main._logs[0].border_title)
    source = ReplaySource.from_events(events, clock=lambda: 0.0)
    source.seek(len(events))
    replay = OverwatchApp(source, clock=lambda: 0.0)
    async with replay.run_test(size=WIDE) as pilot:
        await pilot.pause()
        replay_title = str(replay.main._logs[0].border_title)
    logged = sum(1 for entry in replay.state.log)
    assert f"events · {logged} (+1 sent)" in live_title, live_title
    assert f"events · {logged} ·" in replay_title, replay_title


# --- the rollback penalty's sign; the operator's rollback -----------------------------------


@run_async
async def test_the_rollback_penalty_has_one_sign_and_the_operators_is_no_alert() -> None:
    events = real_events()
    governor = next(
        e for e in events if isinstance(e, GovernorRollback) and e.initiator == Initiator.GOVERNOR
    )
    operator = next(
        e for e in events if isinstance(e, GovernorRollback) and e.initiator == Initiator.OPERATOR
    )
    assert governor.penalty > 0  # recorded as a magnitude
    summary = next(
        e
        for e in events[events.index(governor) :]
        if isinstance(e, EpochSummary) and e.env == governor.env
    )
    app = live_app(events[: events.index(summary) + 1])
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        line = app.main._logs[0].describe(governor).plain
        assert f"reward {signed(-governor.penalty, 1)}" in line and "+" not in line
        assert summary.reward == pytest.approx(-governor.penalty)  # the panel's reward: -X
        act = next(ln for ln in app.main._panels[governor.env].lines if ln.startswith("act "))
        assert f"reward {signed(summary.reward)}" in act
    assert describe_alert(operator) is None and describe_alert(governor) is not None
    upto = events[: events.index(operator) + 1]
    before = reduce_many(ConsoleState(), events[: events.index(operator)]).alerts
    assert reduce_many(ConsoleState(), upto).alerts == before


# --- words whole at 120x40 and 200x60 ---------------------------------------------------------


@pytest.mark.parametrize("size", [(120, 40), (200, 60)], ids=["120x40", "200x60"])
@run_async
async def test_no_panel_text_is_cut_mid_word(size) -> None:
    app = live_app()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for panel in app.main._panels:
            width = panel.content_size.width
            for line in panel.lines:
                assert len(line) <= width
                if "coaliti" in line:
                    assert "coalitions" in line, line
                if "shapley" in line and "v(∅)" in line:
                    assert re.search(r"v\(∅\) \d+\.\d%", line), line


def whole(shown: str, full: str) -> bool:
    """``shown`` is ``full``, or a cut of it at a word's edge (or marked with …)."""
    shown = shown.rstrip()
    if full.startswith(shown) and len(shown) < len(full.rstrip()):
        return full[len(shown)].isspace()  # "-0" of "-0.13" or "coaliti" is no edge
    return shown == full.rstrip() or shown.endswith("…")


@pytest.mark.parametrize("size", [(120, 40), (200, 60)], ids=["120x40", "200x60"])
@run_async
async def test_no_header_or_log_text_is_cut_mid_word(size) -> None:
    app = live_app(running(REAL_RUN_LM))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        ppo = app.main._header._ppo(app.state).plain
        third = app.main._header.lines[2]
        assert whole(third, ppo), (third, ppo)
        log = app.main._logs[0]
        shown = log.render().plain.splitlines()
        for line, entry in zip(shown, log.shown[-len(shown) :], strict=True):
            assert whole(line, log.describe(entry).plain), line
