"""The live console driven by a Pilot: every key, the modals, toasts, crash and quit."""

from __future__ import annotations

import threading

import msgspec
import pytest

from esper_engine.commands import acknowledge, rejection
from esper_engine.config import MAX_CLIP_THRESHOLD, TrainingConfig
from esper_engine.contracts import (
    CommandAck,
    ForceRollback,
    Pause,
    Resume,
    RunFinished,
    SetClipThreshold,
)
from overwatch.app import OverwatchApp
from overwatch.screens.clip_entry import ClipEntryModal, parse_clip_value
from overwatch.screens.confirm import ConfirmModal
from overwatch.screens.crash import CrashModal
from overwatch.screens.help import HelpScreen
from overwatch.screens.operator import CLIP_FACTOR
from overwatch.sources import LiveSource, ReplaySource
from overwatch.state import RunPlan
from overwatch.widgets.env_panel import EnvPanel
from overwatch.widgets.env_row import EnvRow
from tests.console.fixtures import (
    CRASH_ERROR,
    FakeLiveSource,
    crashed_run,
    frozen_clock,
    real_events,
    run_async,
    running,
)

WIDE = (120, 40)
SMALL = (80, 24)
N_ENVS = 4  # in the real recording


def running_events() -> list:
    """The real run without its RunFinished: the trainer is still going."""
    return running()


def live_app(events: list | None = None) -> tuple[OverwatchApp, FakeLiveSource]:
    events = running_events() if events is None else events
    source = FakeLiveSource(events)
    return OverwatchApp(source, clock=frozen_clock(events)), source


def focused_panels(app: OverwatchApp) -> list[int]:
    return [
        panel.env
        for panel in app.query(EnvPanel)
        if panel.has_class("-focused") and panel.id != "detail"
    ]


@run_async
async def test_mount_starts_the_source_and_shows_every_env() -> None:
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert source.started
        assert len(app.state.envs) == N_ENVS
        assert len([p for p in app.query(EnvPanel) if p.id != "detail"]) == N_ENVS
        assert len(app.query(EnvRow)) == N_ENVS
        assert app.main.layout_mode == "wide"
        assert focused_panels(app) == [0]


@run_async
async def test_digit_arrow_and_tab_keys_move_the_focus() -> None:
    app, _ = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("3")
        assert app.main.focused_env == 2
        await pilot.press("9")  # no ninth env: focus stays
        assert app.main.focused_env == 2
        await pilot.press("right")
        assert app.main.focused_env == 3
        await pilot.press("right")  # wraps around
        assert app.main.focused_env == 0
        await pilot.press("left")
        assert app.main.focused_env == 3
        await pilot.press("tab")
        assert app.main.focused_env == 0
        await pilot.press("shift+tab")
        assert app.main.focused_env == 3
        await pilot.press("1", "down")  # wide layout: two panels per row, down is +2
        assert app.main.focused_env == 2
        await pilot.press("up")
        assert app.main.focused_env == 0
        await pilot.press("up")  # already on the top row
        assert app.main.focused_env == 0
        await pilot.pause()
        assert focused_panels(app) == [0]


@run_async
async def test_down_moves_one_env_in_the_compact_layout() -> None:
    app, _ = live_app()
    async with app.run_test(size=SMALL) as pilot:
        assert app.main.layout_mode == "compact"
        await pilot.press("down", "down")
        assert app.main.focused_env == 2
        await pilot.pause()
        detail = app.query_one("#detail", EnvPanel)
        assert detail.env == 2
        assert [row.env for row in app.query(EnvRow) if row.has_class("-focused")] == [2]


@run_async
async def test_rollback_asks_for_the_env_number_and_sends_only_on_it() -> None:
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("2", "r")
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("y")  # any other key cancels: y and n no longer answer
        assert not isinstance(app.screen, ConfirmModal)
        await pilot.press("r", "1", "enter")  # env 1 is not the focused env 2
        assert not isinstance(app.screen, ConfirmModal)
        await pilot.press("r", "2")
        assert isinstance(app.screen, ConfirmModal)  # a number without Enter sends nothing
        await pilot.press("escape", "r", "enter")
        assert source.sent == []
        await pilot.press("r", "2", "enter")
        await pilot.pause()
        assert source.sent == [ForceRollback(env=1)]


@run_async
async def test_clip_all_keys_scale_the_run_wide_threshold() -> None:
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        current = app.state.clip_threshold
        assert current is not None
        await pilot.press("right_curly_bracket")
        await pilot.press("right_curly_bracket")  # builds on the value still in flight
        await pilot.press("left_curly_bracket")
        values = [command.value for command in source.sent]
        assert values == pytest.approx(
            [current * CLIP_FACTOR, current * CLIP_FACTOR**2, current * CLIP_FACTOR]
        )
        assert all(isinstance(c, SetClipThreshold) and c.env is None for c in source.sent)
        # once acknowledged, the reported threshold is the base again
        source.push(
            CommandAck(command="SetClipThreshold", accepted=True, value=values[-1], command_id=3)
        )
        await app.tick()
        await pilot.press("left_curly_bracket")
        assert source.sent[-1].value == pytest.approx(values[-1] / CLIP_FACTOR)


@run_async
async def test_clip_keys_act_on_the_focused_env_only() -> None:
    """Issue 25: [ ] and c set the focused env's threshold; { } and C every env's."""
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("2")
        current = app.state.envs[1].clip_threshold
        await pilot.press("right_square_bracket")
        assert source.sent == [SetClipThreshold(value=pytest.approx(current * CLIP_FACTOR), env=1)]
        await pilot.press("c", *"0.3", "enter")
        await pilot.pause()
        assert source.sent[-1] == SetClipThreshold(value=0.3, env=1)
        source.push(trainer_answer(source.sent[-1], command_id=2))
        await app.tick()
        assert app.state.envs[1].clip_threshold == 0.3
        assert app.state.envs[0].clip_threshold == current  # the other envs keep theirs
        await pilot.press("left_curly_bracket")
        assert source.sent[-1] == SetClipThreshold(
            value=pytest.approx(app.state.clip_threshold / CLIP_FACTOR), env=None
        )


@pytest.mark.parametrize("text", ["abc", "", "  ", "1.2.3", "0,5", "inf", "nan", "-inf", "NaN"])
def test_parse_clip_value_refuses_text_that_is_not_a_number(text: str) -> None:
    with pytest.raises(ValueError, match="number"):
        parse_clip_value(text)


@pytest.mark.parametrize(
    ("text", "value"), [(" 0.75 ", 0.75), ("1e-3", 0.001), ("1e40", 1e40), ("-1", -1.0), ("0", 0.0)]
)
def test_parse_clip_value_leaves_judging_the_number_to_the_trainer(text: str, value: float) -> None:
    assert parse_clip_value(text) == value


def trainer_answer(command: SetClipThreshold, command_id: int) -> CommandAck:
    """The ack the trainer sends for ``command`` (the same rule, esper_engine.commands)."""
    command = msgspec.structs.replace(command, command_id=command_id)
    reason = rejection(command, N_ENVS, paused=False)
    return acknowledge(command, accepted=reason is None, n_envs=N_ENVS, reason=reason or "")


@run_async
async def test_clip_entry_refuses_text_then_sends_any_number() -> None:
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("C")
        assert isinstance(app.screen, ClipEntryModal)
        await pilot.press("a", "b", "c", "enter")
        assert isinstance(app.screen, ClipEntryModal)  # still open
        error = str(app.screen.query_one("#clip-error").render())
        assert "not a number" in error
        assert source.sent == []
        await pilot.press("backspace", "backspace", "backspace", "0", "full_stop", "5", "enter")
        await pilot.pause()
        assert not isinstance(app.screen, ClipEntryModal)
        assert source.sent == [SetClipThreshold(value=0.5, env=None)]


@run_async
async def test_a_threshold_the_trainer_refuses_is_sent_and_its_rejection_shown() -> None:
    """`c 1e40` used to crash the trainer; now the trainer answers with a rejected ack."""
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        before = app.state.clip_threshold
        await pilot.press("C", *"1e40", "enter")
        await pilot.pause()
        assert source.sent == [SetClipThreshold(value=1e40, env=None)]
        source.push(trainer_answer(source.sent[0], command_id=1))
        await app.tick()
        await pilot.pause()  # notify() posts a message
        assert app.state.clip_threshold == before
        toasts = [n.message for n in app._notifications]
        assert any(
            "SetClipThreshold" in m and "rejected: clip threshold must be at most" in m
            for m in toasts
        )
        await pilot.press("right_curly_bracket")  # builds on the reported threshold again
        assert source.sent[-1].value == pytest.approx(before * CLIP_FACTOR)


@run_async
async def test_raising_past_the_bound_is_rejected_and_the_pending_value_reverted() -> None:
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("C", *"1e6", "enter")
        await pilot.pause()
        source.push(trainer_answer(source.sent[-1], command_id=1))  # accepted: at the bound
        await app.tick()
        assert app.state.clip_threshold == MAX_CLIP_THRESHOLD
        await pilot.press("right_curly_bracket")
        assert source.sent[-1].value == pytest.approx(MAX_CLIP_THRESHOLD * CLIP_FACTOR)
        source.push(trainer_answer(source.sent[-1], command_id=2))
        await app.tick()
        await pilot.pause()
        assert app.state.log[-1].accepted is False
        assert app.state.clip_threshold == MAX_CLIP_THRESHOLD
        await pilot.press("left_curly_bracket")  # from 1e6, not from the refused 1.25e6
        assert source.sent[-1].value == pytest.approx(MAX_CLIP_THRESHOLD / CLIP_FACTOR)


@run_async
async def test_clip_entry_escape_sends_nothing() -> None:
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("c", "1", "escape")
        assert not isinstance(app.screen, ClipEntryModal)
        assert source.sent == []


@run_async
async def test_p_toggles_pause_and_resume() -> None:
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("p")
        assert source.sent == [Pause()]
        source.push(CommandAck(command="Pause", accepted=True, command_id=1))
        await app.tick()
        assert app.state.trainer_state == "paused"
        await pilot.press("p")
        assert source.sent == [Pause(), Resume()]


@run_async
async def test_acks_of_sent_commands_are_logged_and_toasted() -> None:
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("r", "1", "enter")
        await pilot.pause()
        ack = CommandAck(
            env=0, command="ForceRollback", accepted=False, reason="env busy", command_id=1
        )
        source.push(ack)
        await app.tick()
        await pilot.pause()  # notify() posts a message
        assert app.state.log[-1] == ack
        toasts = [n.message for n in app._notifications]
        assert any("ForceRollback" in m and "rejected: env busy" in m for m in toasts)


@run_async
async def test_help_lists_every_key() -> None:
    app, _ = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        shown = {key for keys, _, _ in app.screen.rows for key in keys.split()}
        bindings = [*app.BINDINGS, *app.main.BINDINGS]
        bound = {b.key_display or b.key for b in bindings if b.key not in "23456789"}
        assert (bound - {"?"}) | {"?", "f1"} <= shown
        assert all(description for _, description, _ in app.screen.rows)
        usable = [usable for _, _, usable in app.screen.rows]
        assert usable == sorted(usable, reverse=True)  # what works in this mode comes first
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)


@run_async
async def test_q_then_stop_and_enter_stops_the_source_and_exits_zero() -> None:
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        rows = {keys: text for keys, text, _ in app.main.help_rows()}
        assert "type stop, Enter" in rows["q"] and "without asking" in rows["ctrl+c"]
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmModal) and app.screen.answer == "stop"
        assert not source.stopped and app.return_code is None
        await pilot.press(*"stop", "enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert source.stopped
        assert app.return_code == 0


@pytest.mark.parametrize("keys", [["u"], ["s", "t", "o", "enter"], ["escape"], ["q"]])
@run_async
async def test_q_then_anything_but_stop_keeps_the_run_going(keys: list[str]) -> None:
    """A word typed slowly into the wrong window (`quit`, `stock`) opens the question at its q
    and cancels it at its next key: the trainer goes on and nothing is sent."""
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("q", *keys)
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmModal)
        assert app.return_code is None and app.is_running
        assert not source.stopped and source.sent == []
        assert "the run goes on: quit not confirmed, nothing sent" in [
            n.message for n in app._notifications
        ]
        assert app.main.check_action("pause", ()) is True  # the controls still work


@run_async
async def test_q_quits_at_once_in_a_replay() -> None:
    source = ReplaySource.from_events(real_events(), clock=lambda: 0.0)
    app = OverwatchApp(source, clock=lambda: 0.0)
    async with app.run_test(size=WIDE) as pilot:
        assert ("q ctrl+c", "Quit", True) in app.main.help_rows()
        await pilot.press("q")
        await pilot.pause()
        assert app.return_code == 0
        assert not isinstance(app.screen, ConfirmModal)


@run_async
async def test_q_quits_at_once_once_the_run_has_finished() -> None:
    app, source = live_app(real_events())  # RunFinished(completed) included
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.state.finished
        await pilot.press("q")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert source.stopped and app.return_code == 0


@run_async
async def test_ctrl_c_stops_the_source_and_exits_zero_without_asking() -> None:
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("ctrl+c")
        assert not isinstance(app.screen, ConfirmModal)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert source.stopped
        assert app.return_code == 0


@run_async
async def test_request_quit_works_from_another_thread() -> None:
    app, source = live_app()
    async with app.run_test(size=WIDE) as pilot:
        thread = threading.Thread(target=app.request_quit)
        thread.start()
        thread.join()
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmModal)  # SIGTERM's path asks nothing
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert source.stopped
        assert app.return_code == 0


@run_async
async def test_crash_shows_the_error_keeps_the_data_and_exits_one() -> None:
    app, source = live_app(crashed_run())
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, CrashModal)
        assert app.screen.error == CRASH_ERROR
        assert app.state.envs[0].summary is not None  # the data is still there
        assert app.main.check_action("rollback", ()) is None  # controls greyed after the end
        await pilot.press("escape")
        assert not isinstance(app.screen, CrashModal)
        await pilot.press("q")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.return_code == 1
        assert source.stopped


@run_async
async def test_stale_when_no_event_for_ten_seconds() -> None:
    events = running_events()
    source = FakeLiveSource(events)
    now = [events[-1].wall_time + 1.0]
    app = OverwatchApp(source, clock=lambda: now[0])
    async with app.run_test(size=WIDE):
        from overwatch.widgets.header import RunHeader

        header = app.query_one(RunHeader)
        assert header.liveness == "LIVE"
        now[0] += 11.0
        await app.tick()
        assert header.liveness == "STALE"


@run_async
async def test_replay_greys_out_the_controls() -> None:
    source = ReplaySource.from_events(real_events(), clock=lambda: 0.0)
    app = OverwatchApp(source, clock=lambda: 0.0)
    async with app.run_test(size=WIDE) as pilot:
        for action in ("rollback", "clip_step", "clip_entry", "pause"):
            assert app.main.check_action(action, ()) is None
        await pilot.press("r", "c", "p", "right_square_bracket")
        await pilot.pause()
        assert app.screen is app.screen_stack[0]  # no modal opened
        assert source.send(Pause()) is None
        active = app.screen.active_bindings
        assert not active["r"].enabled and active["space"].enabled


@run_async
async def test_live_mode_hides_the_replay_keys() -> None:
    app, _ = live_app()
    async with app.run_test(size=WIDE):
        assert app.main.check_action("replay_toggle", ()) is False
        assert "space" not in app.screen.active_bindings


@pytest.mark.parametrize(
    ("size", "mode"),
    [
        ((120, 40), "wide"),
        ((99, 40), "compact"),
        ((80, 24), "compact"),
        ((59, 30), "tiny"),
        ((80, 15), "tiny"),
    ],
)
@run_async
async def test_layout_follows_the_terminal_size(size: tuple[int, int], mode: str) -> None:
    app, _ = live_app()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        assert app.main.layout_mode == mode
        notice = app.query_one("#too-small")
        assert notice.display == (mode == "tiny")
        if mode == "tiny":
            assert f"need at least 60x16, have {size[0]}x{size[1]}" in str(notice.render())


# --- LiveSource over a session (a stand-in for esper_engine.session.TrainingSession) -------------


class StubSession:
    """The session surface LiveSource uses; its 'thread' is a flag the test flips."""

    run_id = "stub"
    config = TrainingConfig(n_envs=2, episodes=3, epochs=5, policy="ppo", max_grad_norm=2.0)
    control_error = None
    setup_status = ""

    def __init__(self) -> None:
        self.thread_state = "idle"
        self.finished = None
        self.dropped = 7
        self.queued: list = []
        self.commands: list = []

    def start(self) -> None:
        self.thread_state = "running"

    def poll(self) -> list:
        events, self.queued = self.queued, []
        return events

    def send(self, command) -> int:
        self.commands.append(command)
        return len(self.commands)

    def stop(self, timeout: float | None = None) -> bool:
        self.thread_state = "finished"
        return True


def test_live_source_passes_events_commands_and_drops_through() -> None:
    session = StubSession()
    source = LiveSource(session)
    source.start()
    source.start()  # idempotent
    events = running_events()[:5]
    session.queued = list(events)
    assert source.poll().events == events
    assert source.send(Pause()) == 1 and session.commands == [Pause()]
    assert (source.dropped, source.finished, source.position()) == (7, None, None)
    assert source.stop(1.0) and session.thread_state == "finished"


def test_live_source_knows_its_run_before_the_first_event() -> None:
    source = LiveSource(StubSession())
    assert source.plan == RunPlan("stub", "synthetic-images", "ppo", 2, 3, 5, "cpu", 2.0)
    assert source.capabilities.controls and not source.capabilities.replay_controls


@run_async
async def test_the_first_frame_says_what_is_starting() -> None:
    """Before the trainer has said anything, the header already names the run (no dashes)."""
    session = StubSession()
    app = OverwatchApp(LiveSource(session), clock=lambda: 0.0)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        identity, progress = app.main._header.lines[:2]
        assert identity.split()[:9] == [
            "OVERWATCH", "stub", "·", "synthetic-images", "·", "ppo", "·", "2", "envs",
        ]  # fmt: skip
        assert "trainer starting" in identity and "WAITING" in identity
        # nothing is done yet: no episode or epoch claimed
        assert "episode -/3 · epoch -/5" in progress and "clip 2.00" in progress
        assert len(app.main._panels) == 2
        assert all(p.lines == ["waiting for the first epoch"] for p in app.main._panels)


@run_async
async def test_the_header_says_what_the_trainer_sets_up_until_it_runs() -> None:
    """issue 21: 1024 envs take a while to build; the first frames say so."""
    session = StubSession()
    session.setup_status = "building env 37/1024"
    app = OverwatchApp(LiveSource(session), clock=lambda: 0.0)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert "trainer starting · building env 37/1024" in app.main._header.lines[0]
        session.setup_status = "building the policy"
        await app.tick()
        assert "trainer starting · building the policy" in app.main._header.lines[0]
        session.setup_status = ""
        session.queued = running_events()[:1]  # RunStarted: it runs
        await app.tick()
        assert "building" not in app.main._header.lines[0]


@run_async
async def test_ctrl_z_suspends_the_console_like_any_curses_tool() -> None:
    """Textual's raw mode delivers Ctrl-Z as a key; the console hands it to Textual's suspend
    (which restores the terminal, SIGTSTPs the process, and redraws on SIGCONT). Seen by hand
    in tmux: `[1]+ Stopped`, then `fg` redraws and q still quits."""
    app = OverwatchApp(LiveSource(StubSession()), clock=lambda: 0.0)
    suspended = []
    app.action_suspend_process = lambda: suspended.append(True)  # type: ignore[method-assign]
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("ctrl+z")
        await pilot.pause()
    assert suspended == [True]


def test_live_source_reports_a_thread_that_died_silently() -> None:
    session = StubSession()
    source = LiveSource(session)
    source.start()
    session.thread_state = "finished"  # ended, but no RunFinished came through
    (event,) = source.poll().events
    assert isinstance(event, RunFinished) and event.status == "crashed"
    assert source.poll().events == []  # said once


def test_live_source_trusts_a_real_run_finished() -> None:
    session = StubSession()
    source = LiveSource(session)
    source.start()
    session.queued = [real_events()[-1]]
    session.thread_state = "finished"
    assert [e.status for e in source.poll().events] == ["completed"]
    assert source.poll().events == []


def test_live_source_recovers_a_dropped_run_finished() -> None:
    session = StubSession()
    source = LiveSource(session)
    source.start()
    session.finished = real_events()[-1]  # the queue was full when it was emitted
    session.thread_state = "finished"
    assert source.poll().events == [session.finished]


# --- the real engine: a crash injected with --fault ---------------------------------------------


@run_async
async def test_an_injected_crash_on_the_real_engine_shows_the_modal_and_exits_one(
    tmp_path,
) -> None:
    from esper_engine.config import TrainingConfig
    from esper_engine.recording import read_recording
    from esper_engine.session import TrainingSession
    from esper_engine.tasks import load_task

    config = TrainingConfig(
        n_envs=1,
        episodes=1,
        epochs=3,
        batches_per_epoch=2,
        batch_size=16,
        val_batches=1,
        faults=("crash:1:2",),
    )
    task = load_task("synthetic-images", seed=0, scale="small")
    path = tmp_path / "crash.msgpack"
    session = TrainingSession(config, task, run_id="crash", record_path=path)
    app = OverwatchApp(LiveSource(session))
    async with app.run_test(size=WIDE) as pilot:
        assert session.wait(timeout=60)  # the trainer thread ends by itself: it crashed
        for _ in range(20):  # the console drains the queue on its timer
            if isinstance(app.screen, CrashModal):
                break
            await pilot.pause(0.05)
        assert isinstance(app.screen, CrashModal)
        assert "InjectedCrash: injected fault crash:1:2" in app.screen.error
        assert app.state.envs[0].summary is not None  # epoch 1 stays on screen
        await pilot.press("escape", "q")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.return_code == 1
    recording = read_recording(path)
    finished = recording.events[-1]
    assert isinstance(finished, RunFinished) and finished.status == "crashed"
    assert recording.events[0].config["faults"] == ["crash:1:2"]
