"""`overwatch attach` on a real tiny run in this process: history, then live, with controls."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from esper_engine.contracts import CommandAck, EpochSummary, RunFinished
from esper_engine.recording import read_recording
from overwatch.app import OverwatchApp
from overwatch.runs import RunError, attach_target
from overwatch.screens.confirm import ConfirmModal
from overwatch.sources import AttachSource
from tests.console.fixtures import run_async
from tests.console.test_control import LONG_RUN, tiny_session, wait_for

WIDE = (120, 40)


def summaries(path: Path) -> int:
    try:
        return sum(type(e) is EpochSummary for e in read_recording(path))
    except Exception:  # noqa: BLE001 - the file may not have its header yet
        return 0


async def until(pilot, condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


@run_async
async def test_attach_shows_the_history_then_live_and_its_keys_steer_the_run(
    tmp_path: Path,
) -> None:
    session = tiny_session(tmp_path, epochs=LONG_RUN)
    session.start()
    try:
        wait_for(lambda: summaries(session.record_path) >= 4, "two epochs of history")
        record, socket_path = attach_target("ctl", tmp_path)
        assert record == session.record_path
        source = AttachSource(record, socket_path, "pilot")
        app = OverwatchApp(source)
        async with app.run_test(size=WIDE) as pilot:
            await pilot.pause()
            history = app.state.envs[0].summary
            assert history is not None and history.epoch >= 1  # the first frame has the past
            await until(pilot, lambda: app.state.envs[0].summary.epoch > history.epoch, "live")
            await pilot.press("p")
            await until(pilot, lambda: app.state.trainer_state == "paused", "the pause ack")
            await pilot.press("S")
            assert isinstance(app.screen, ConfirmModal)
            await pilot.press(*"stop", "enter")
            await until(pilot, lambda: app.state.finished, "the run to stop")
            assert session.wait(timeout=30)
            await pilot.press("q")
            await pilot.pause()
        assert app.return_code == 0
    finally:
        session.stop(timeout=30)
    events = read_recording(session.record_path).events
    acks = [(e.command, e.accepted, e.console) for e in events if isinstance(e, CommandAck)]
    assert acks == [("Pause", True, "pilot"), ("Stop", True, "pilot")]
    assert isinstance(events[-1], RunFinished) and events[-1].status == "stopped"


@run_async
async def test_q_in_an_attached_console_detaches_and_the_run_goes_on(tmp_path: Path) -> None:
    session = tiny_session(tmp_path, epochs=LONG_RUN)
    session.start()
    try:
        wait_for(lambda: summaries(session.record_path) >= 2, "a first epoch")
        app = OverwatchApp(AttachSource(*attach_target(str(session.record_path), tmp_path), "a"))
        async with app.run_test(size=WIDE) as pilot:
            await pilot.pause()
            assert app.main.check_action("stop_run", ()) is True
            assert ("q ctrl+c", "Detach and quit; the run goes on", True) in app.main.help_rows()
            await pilot.press("q")
            await pilot.pause()
        assert app.return_code == 0
        before = summaries(session.record_path)
        wait_for(lambda: summaries(session.record_path) > before, "more epochs after detaching")
        assert session.thread_state == "running"
    finally:
        assert session.stop(timeout=30)
    with pytest.raises(RunError, match="is not running"):
        attach_target("ctl", tmp_path)
