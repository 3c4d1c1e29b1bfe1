"""Text typed or pasted into the console never steers a run; deliberate single keys still do.

The typing tests give the app a clock that only moves when told (``KeyClock``): keys pressed
without moving it arrive in the same instant, as a word typed or a line pasted into the wrong
window; ``step`` lets time pass, as between two deliberate keys.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from textual import events
from textual._time import get_time
from textual.widgets._toast import Toast

import overwatch.keys
from esper_engine.contracts import (
    CommandAck,
    ForceRollback,
    Pause,
    RunFinished,
    RunStarted,
    SetClipThreshold,
)
from esper_engine.recording import read_recording
from overwatch.app import OverwatchApp
from overwatch.keys import DIALOG_GUARD_S, TYPING_GAP_S, Burst, KeyGuard, Stroke
from overwatch.runs import attach_target
from overwatch.screens.clip_entry import ClipEntryModal
from overwatch.screens.confirm import ConfirmModal
from overwatch.screens.prompt import PromptModal
from overwatch.sources import AttachSource
from tests.console.fixtures import FakeLiveSource, frozen_clock, run_async, running
from tests.console.test_attach import summaries, until
from tests.console.test_control import LONG_RUN, tiny_session, wait_for

WIDE = (120, 40)


class StillClock:
    """A key clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def typing_app() -> tuple[OverwatchApp, FakeLiveSource, StillClock]:
    events_ = running()
    source = FakeLiveSource(events_)
    clock = StillClock()
    app = OverwatchApp(source, clock=frozen_clock(events_), key_clock=clock)
    return app, source, clock


async def step(app: OverwatchApp, pilot, clock: StillClock, seconds: float = 1.0) -> None:
    """Let ``seconds`` pass with no key: a held key acts, a burst is set aside."""
    clock.now += seconds
    await app.key_settler.settle()
    await pilot.pause()


def toasts(app: OverwatchApp) -> list[str]:
    return [n.message for n in app._notifications]


# --- the guard on its own --------------------------------------------------------------------


def stroke(key: str, t: float, character: str | None = None) -> Stroke:
    return Stroke(key, character if character is not None else (key if len(key) == 1 else None), t)


def test_a_lone_printable_key_is_held_until_the_gap_has_passed() -> None:
    guard = KeyGuard()
    assert guard.feed(stroke("r", 0.0)) == []
    assert guard.settle(TYPING_GAP_S / 2) is None
    assert guard.settle(TYPING_GAP_S) == stroke("r", 0.0)
    assert guard.pending == []


def test_keys_closer_than_the_gap_are_one_burst_enter_included() -> None:
    guard = KeyGuard()
    gap = TYPING_GAP_S * 0.9
    times = [i * gap for i in range(4)]
    for key, t in zip("ps a", times, strict=True):
        assert guard.feed(stroke("space" if key == " " else key, t, key)) == []
    assert guard.feed(stroke("enter", times[-1] + gap)) == []
    burst = guard.settle(times[-1] + gap + TYPING_GAP_S)
    assert isinstance(burst, Burst) and burst.text == "ps a" and len(burst.strokes) == 5


def test_a_key_after_the_gap_settles_what_came_before_it() -> None:
    guard = KeyGuard()
    guard.feed(stroke("2", 0.0))
    assert guard.feed(stroke("r", TYPING_GAP_S)) == [stroke("2", 0.0)]
    assert guard.pending == [stroke("r", TYPING_GAP_S)]


def test_non_printable_keys_alone_act_at_once() -> None:
    guard = KeyGuard()
    assert guard.feed(stroke("down", 0.0)) == [stroke("down", 0.0)]
    assert guard.feed(stroke("enter", 0.01)) == [stroke("enter", 0.01)]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["c", "1", ".", "0", "enter"], ("1.0", True)),
        (["slash", "r", "e"], ("re", False)),
        (["c", "1", "enter", "2"], None),  # a second line: not one entry
        (["g", "escape"], None),
    ],
)
def test_a_burst_after_a_prompt_key_is_that_prompts_text(keys, expected) -> None:
    chars = {"slash": "/", "enter": "\r", "escape": "\x1b"}
    strokes = [Stroke(k, chars.get(k, k), 0.0) for k in keys]
    assert Burst(strokes).prompt_text() == expected


# --- typing into the console ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed", ["history\r", "ps aux", "ps aux\r", "sort -r t\r", "2r2\r", "quit\r"]
)
@run_async
async def test_words_and_shell_lines_typed_into_the_console_never_act(typed: str) -> None:
    app, source, clock = typing_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        before = len(toasts(app))
        await pilot.press(*["enter" if c == "\r" else c for c in typed])
        await step(app, pilot, clock)
        assert source.sent == []
        assert app.screen is app.screen_stack[0]  # no dialog opened
        assert (app.main.sort, app.main.layout_choice, app.main.focused_env) == ("id", "auto", 0)
        new = toasts(app)[before:]
        assert len(new) == 1 and new[0].startswith(f"ignored {len(typed)} keys typed at once")


@run_async
async def test_a_busy_console_reading_keys_late_still_sees_a_word(monkeypatch) -> None:
    """The terminal's own timestamps (no injected clock): `p` and `s` typed 50 ms apart, read a
    second later by a console busy with its trainer, are still one word, and `p` never acts."""
    monkeypatch.setattr(overwatch.keys, "default_clock", None)
    events_ = running()
    source = FakeLiveSource(events_)
    app = OverwatchApp(source, clock=frozen_clock(events_))
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        await pilot.pause()
        typed_at = get_time() - 1.0
        for i, character in enumerate("ps"):
            key = events.Key(character, character)
            key.time = typed_at + 0.05 * i
            app.post_message(key)
        await until(pilot, lambda: any("ignored 2 keys" in t for t in toasts(app)), "the toast")
        assert source.sent == [] and app.main.sort == "id"
        await pilot.press("p")  # one key on its own still acts, once the gap has passed
        await until(pilot, lambda: source.sent == [Pause()], "the pause")


@run_async
async def test_a_paste_never_acts() -> None:
    app, source, clock = typing_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        before = len(toasts(app))
        app.post_message(events.Paste("r\ny\nps aux\n"))
        await pilot.pause()
        await step(app, pilot, clock)
        assert source.sent == [] and app.screen is app.screen_stack[0]
        assert [t for t in toasts(app)[before:] if "pasted" in t] == toasts(app)[before:]
        assert len(toasts(app)) == before + 1


@run_async
async def test_a_lone_r_then_the_real_confirmation_rolls_back() -> None:
    app, source, clock = typing_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("2")
        await step(app, pilot, clock)
        assert app.main.focused_env == 1  # a deliberate single key acts once the gap has passed
        await pilot.press("r")
        assert app.screen is app.screen_stack[0]  # held: it might begin a word
        await step(app, pilot, clock)
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("y", "2", "enter")  # within the guard: ignored, not even a cancel
        assert isinstance(app.screen, ConfirmModal) and source.sent == []
        clock.now += 2 * DIALOG_GUARD_S
        await pilot.press("2", "enter")
        await pilot.pause()
        assert source.sent == [ForceRollback(env=1)]


@run_async
async def test_c_then_a_number_and_enter_typed_at_once_sets_the_clip() -> None:
    app, source, clock = typing_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press(*"c1.0", "enter")
        await step(app, pilot, clock)
        assert source.sent == [SetClipThreshold(value=1.0, env=0)]
        assert app.screen is app.screen_stack[0]


@run_async
async def test_a_shell_line_starting_with_c_is_refused_by_the_clip_prompt() -> None:
    app, source, clock = typing_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press(*"cat notes.txt", "enter")
        await step(app, pilot, clock)
        assert isinstance(app.screen, ClipEntryModal) and source.sent == []
        assert "not a number: 'at notes.txt'" in str(app.screen.query_one("#clip-error").render())


@run_async
async def test_slash_and_a_word_typed_at_once_fill_the_search_prompt() -> None:
    app, source, clock = typing_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press(*"/ready")
        await step(app, pilot, clock)
        assert isinstance(app.screen, PromptModal)
        assert app.screen.query_one("#prompt-input").value == "ready"
        await pilot.press("enter")
        assert app.main.log_filter.search == "ready" and source.sent == []


@run_async
async def test_keys_reaching_a_prompt_before_its_input_has_focus_go_into_it() -> None:
    """On a busy console the keys after `c` can reach the dialog before its input is focused;
    they used to fall through to the screen behind."""
    app, source = typing_app()[:2]
    async with app.run_test(size=WIDE) as pilot:
        await app.push_screen(ClipEntryModal(1.0), lambda v: app.send_clip(v))
        app.screen.set_focus(None)
        await pilot.press("2", "enter")
        await pilot.pause()
        assert source.sent == [SetClipThreshold(value=2.0, env=None)]
        assert app.main.focused_env == 0  # the 2 did not focus env 2 behind the dialog


@pytest.mark.parametrize("typed", ["inf", "nan", "-inf", "Infinity"])
@run_async
async def test_inf_and_nan_are_refused_alike_in_the_clip_prompt(typed: str) -> None:
    app, source, clock = typing_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("c")
        await step(app, pilot, clock)
        await pilot.press(*typed, "enter")
        assert isinstance(app.screen, ClipEntryModal) and source.sent == []
        error = str(app.screen.query_one("#clip-error").render())
        assert error == f"not a finite number: {typed!r}"


# --- text from users, files and peers is text, not markup ---------------------------------------


@run_async
async def test_brackets_in_toasts_and_dialogs_are_shown_as_text() -> None:
    """`[/]` in a toast crashed the console (Textual markup): a console name, a refusal reason,
    a typed word, a prompt's error quoting it."""
    app, source, clock = typing_app()
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        await pilot.press("p")
        await step(app, pilot, clock)
        source.push(
            CommandAck(
                command="Pause",
                accepted=False,
                reason="bad [/] [bold]x",
                console="x[/]",
                command_id=1,
            )
        )
        await app.tick()
        await pilot.press(*"a[/]b")
        await step(app, pilot, clock)
        shown = [str(toast.render()) for toast in app.screen.query(Toast)]
        assert any("bad [/] [bold]x" in text for text in shown), shown
        assert any("'a[/]b'" in text for text in shown), shown
        await pilot.press("c")
        await step(app, pilot, clock)
        await pilot.press(*"[/]", "enter")
        await pilot.pause()
        error = str(app.screen.query_one("#clip-error").render())
        assert error == "not a number: '[/]'"
        app.screen.dismiss(None)
        await pilot.pause()
        app.push_screen(ConfirmModal("Stop [/]?", "[b]x[/b] [/]", answer="stop"))
        await pilot.pause()
        assert "Stop [/]?" in str(app.screen.query_one(".dialog-title").render())


@run_async
async def test_a_recording_whose_run_id_holds_brackets_is_shown_as_text() -> None:
    events_ = [
        msgspec.structs.replace(e, run_id="a[/]b [bold]") if isinstance(e, RunStarted) else e
        for e in running()
    ]
    app = OverwatchApp(FakeLiveSource(events_), clock=frozen_clock(events_))
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        await pilot.pause()
        assert "a[/]b [bold]" in app.main._header.lines[0]


# --- attach: read-only, and never leaving the run paused ---------------------------------------


@run_async
async def test_a_read_only_attach_greys_every_control_and_sends_nothing(tmp_path: Path) -> None:
    session = tiny_session(tmp_path, epochs=LONG_RUN)
    session.start()
    try:
        wait_for(lambda: summaries(session.record_path) >= 2, "a first epoch")
        record, socket_path = attach_target("ctl", tmp_path)
        source = AttachSource(record, socket_path, "watcher", read_only=True)
        app = OverwatchApp(source)
        async with app.run_test(size=WIDE) as pilot:
            await pilot.pause()
            for action in ("rollback", "clip_step", "clip_entry", "pause", "stop_run"):
                assert app.main.check_action(action, ()) is None, action
            bindings = app.screen.active_bindings
            assert not bindings["r"].enabled and not bindings["S"].enabled
            note = app.query_one("#footer-note")
            assert str(note.render()) == "read-only"
            for key in ("r", "1", "enter", "right_square_bracket", "c", "p", "S", "enter"):
                await pilot.press(key)
            assert app.screen is app.screen_stack[0]  # no dialog opened
            assert source.send(Pause()) is None and source._client is None
            before = summaries(session.record_path)
            await until(pilot, lambda: summaries(session.record_path) > before, "more epochs")
            await pilot.press("q")
            await pilot.pause()
        assert app.return_code == 0
        assert session.thread_state == "running"  # the watcher went, the run goes on
    finally:
        assert session.stop(timeout=30)
    recorded = read_recording(session.record_path).events
    acks = [(e.command, e.console) for e in recorded if isinstance(e, CommandAck)]
    assert all(console != "watcher" for _, console in acks), acks
    control_log = session.record_path.with_suffix(".control.log")
    assert not control_log.exists() or "watcher" not in control_log.read_text()


@run_async
async def test_an_attached_console_that_crashes_resumes_the_run_it_paused(tmp_path: Path) -> None:
    session = tiny_session(tmp_path, epochs=LONG_RUN)
    session.start()
    try:
        wait_for(lambda: summaries(session.record_path) >= 2, "a first epoch")
        app = OverwatchApp(AttachSource(*attach_target("ctl", tmp_path), "crashy"))

        def crash() -> None:
            raise RuntimeError("the console fell over")

        with pytest.raises(RuntimeError, match="fell over"):
            async with app.run_test(size=WIDE) as pilot:
                await pilot.press("p")
                await until(pilot, lambda: app.state.trainer_state == "paused", "the pause")
                app.call_later(crash)
                await pilot.pause()
        wait_for(
            lambda: any(
                isinstance(e, CommandAck) and e.command == "Resume" and e.console == "crashy"
                for e in read_recording(session.record_path).events
            ),
            "the resume sent as the console went",
        )
        before = summaries(session.record_path)
        wait_for(lambda: summaries(session.record_path) > before, "training again")
    finally:
        assert session.stop(timeout=30)
    assert isinstance(read_recording(session.record_path).events[-1], RunFinished)
