"""Issue 25's notes and controls in the console, on a recording the real engine made:
``fixtures/real_run_notes.msgpack``, a headless run (2 envs, 8 epochs, static policy, seed 3)
steered through its control socket as an attached console ("attach-fx") would: a run note in
epoch 2, an operator germinate of env 2's block1, then env 2's lr halved, a note on env 2 and a
germinate into the now occupied slot (refused). Made with the headless CLI
(``overwatch run --headless --n-envs 2 --episodes 1 --epochs 8 --batches-per-epoch 6
--policy static --seed 3 --set checkpoint_every=0``) and ``esper_engine.control.ControlClient``.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from esper_engine.contracts import (
    AddNote,
    CommandAck,
    FossilizeSeed,
    GerminateSeed,
    OperatorNote,
    PruneSeed,
    SetGovernorSensitivity,
    SetLrScale,
)
from overwatch.app import OverwatchApp
from overwatch.export import write_csv
from overwatch.screens.confirm import ConfirmModal
from overwatch.screens.operator import parse_scoped_value, parse_seed_op
from overwatch.screens.prompt import PromptModal
from overwatch.sources import ReplaySource
from overwatch.state import ConsoleState, reduce_many
from overwatch.tensorboard_export import notes
from overwatch.widgets.env_panel import EnvPanel
from tests.console.fixtures import FIXTURES, live_app, real_events, run_async

NOTES_RUN = FIXTURES / "real_run_notes.msgpack"
WIDE, SMALL = (120, 40), (80, 24)
RUN_NOTE, ENV_NOTE = "[b]baseline looks slow[/b]", "halved env 2's lr"


@pytest.fixture(scope="module")
def events():
    return real_events(NOTES_RUN)


def test_the_fixture_holds_what_the_tests_read(events) -> None:
    found = [(e.text, e.env, e.console) for e in events if isinstance(e, OperatorNote)]
    assert found == [(RUN_NOTE, None, "attach-fx"), (ENV_NOTE, 1, "attach-fx")]
    acks = [(a.command, a.accepted) for a in events if isinstance(a, CommandAck)]
    assert ("GerminateSeed", False) in acks and ("SetLrScale", True) in acks


def test_notes_mark_the_plots_of_their_env_or_of_every_env(events) -> None:
    state = reduce_many(ConsoleState(), events)
    notes_of = [[x for x, kind in view.marks if kind == "note"] for view in state.envs]
    assert len(notes_of[0]) == 1 and len(notes_of[1]) == 2  # the run's note marks both
    assert notes_of[0][0] == notes_of[1][0] < notes_of[1][1]


@run_async
async def test_the_log_shows_notes_as_text_never_markup(events) -> None:
    source = ReplaySource.from_events(events, clock=lambda: 0.0)
    source.end()
    app = OverwatchApp(source, clock=lambda: 0.0)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        lines = str(app.main.visible_log().render()).splitlines()
        assert any(f"NOTE {RUN_NOTE} (attach-fx)" in line for line in lines)
        assert any("env 2" in line and f"NOTE {ENV_NOTE}" in line for line in lines)
        assert any("GerminateSeed rejected" in line and "not DORMANT" in line for line in lines)


@run_async
async def test_replay_jumps_between_notes(events) -> None:
    positions = [i + 1 for i, e in enumerate(events) if isinstance(e, OperatorNote)]
    source = ReplaySource.from_events(events, clock=lambda: 0.0)
    app = OverwatchApp(source, clock=lambda: 0.0)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("right_parenthesis")
        assert source.cursor == positions[0] and not source.playing
        await pilot.press("right_parenthesis")
        assert source.cursor == positions[1]
        await pilot.press("right_parenthesis")  # none after the last: stays
        assert source.cursor == positions[1]
        await pilot.press("left_parenthesis")
        assert source.cursor == positions[0]
        await pilot.pause()
        assert app.state.log[-1].text == RUN_NOTE  # the console shows the state at the note


@run_async
async def test_the_focused_panel_shows_the_host_lr_and_the_operators_factor(events) -> None:
    source = ReplaySource.from_events(events, clock=lambda: 0.0)
    source.end()
    app = OverwatchApp(source, clock=lambda: 0.0)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        panels = list(app.query(EnvPanel))
        text = ["\n".join(line.plain for line in p.build_lines(56, 20)) for p in panels[:2]]
        assert "lr " in text[0] and "×" not in text[0]
        assert "×0.5" in text[1]


def test_exports_carry_the_notes(events) -> None:
    out = io.StringIO()
    write_csv(events, out)
    rows = out.getvalue().splitlines()
    assert rows[0].endswith(",notes")
    with_notes = [row for row in rows[1:] if row.endswith(RUN_NOTE) or row.endswith(ENV_NOTE)]
    assert len(with_notes) == 3  # the run's note on both envs' rows, env 2's on its own
    written = list(notes(events))
    assert [(run, text) for run, text, _, _ in written] == [
        ("run", f"{RUN_NOTE} (attach-fx)"),
        ("env2", f"{ENV_NOTE} (attach-fx)"),
    ]


# --- the keys on a live console (the commands it sends; the trainer's verdicts are tested in
# tests/engine/test_operator_commands.py and tests/console/test_tmux_controls.py) ---------------


@run_async
async def test_note_lr_and_governor_keys_send_their_commands() -> None:
    app = live_app()
    source = app.source
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("2", "m")
        assert isinstance(app.screen, PromptModal)
        await pilot.press(*"loss spike?", "enter")
        await pilot.press("m", *"!whole run", "enter")
        await pilot.press("L", *"all 0.5", "enter")
        await pilot.press("V", *"4", "enter")
        await pilot.press("K")
        await pilot.pause()
        assert source.sent == [
            AddNote(text="loss spike?", env=1),
            AddNote(text="whole run", env=None),
            SetLrScale(value=0.5, env=None),
            SetGovernorSensitivity(value=4.0, env=1),
            *source.sent[4:5],
        ]
        assert type(source.sent[4]).__name__ == "CheckpointNow"


@run_async
async def test_prune_and_fossilize_are_confirmed_by_typing_the_slot() -> None:
    app = live_app()
    source = app.source
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        slot = app.state.slot_ids[0]
        await pilot.press("o", *f"prune {slot}", "enter")
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("x")  # anything else cancels: nothing sent
        await pilot.pause()
        assert source.sent == []
        await pilot.press("o", *f"f {slot}", "enter")
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press(*slot, "enter")
        await pilot.press("o", *f"germinate {slot} conv_light", "enter")  # no confirmation
        await pilot.pause()
        assert source.sent == [
            FossilizeSeed(env=0, slot_id=slot),
            GerminateSeed(env=0, slot_id=slot, blueprint="conv_light"),
        ]
        assert not any(isinstance(c, PruneSeed) for c in source.sent)


@pytest.mark.parametrize(
    ("text", "reason"),
    [("", "start with"), ("grow x", "start with"), ("prune", "takes 1"), ("g s0", "takes 2")],
)
def test_seed_prompt_refuses_malformed_text(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_seed_op(["s0", "s1"])(text)


def test_seed_prompt_refuses_an_unknown_slot_and_reads_first_letters() -> None:
    with pytest.raises(ValueError, match="unknown slot 'zz'; slots are s0, s1"):
        parse_seed_op(["s0", "s1"])("prune zz")
    assert parse_seed_op(["s0"])("G s0 norm") == ("germinate", "s0", "norm")


@pytest.mark.parametrize(
    ("text", "value"), [("0.5", (0.5, False)), ("all 2", (2.0, True)), (" * 1e-3", (1e-3, True))]
)
def test_scoped_values(text: str, value: tuple[float, bool]) -> None:
    assert parse_scoped_value(text) == value


@pytest.mark.parametrize("text", ["", "all", "abc", "inf", "1 2"])
def test_scoped_values_refuse_what_is_not_one_number(text: str) -> None:
    with pytest.raises(ValueError):
        parse_scoped_value(text)


def test_notes_fixture_is_small() -> None:
    assert Path(NOTES_RUN).stat().st_size < 64 * 1024
