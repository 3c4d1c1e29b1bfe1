"""`overwatch compare` and `overwatch run --compare`, on two recordings of the real engine.

``compare_a.msgpack``: `overwatch run --headless --n-envs 3 --episodes 1 --epochs 6
--batches-per-epoch 10 --seed 1 --policy heuristic`; ``compare_b.msgpack``: the same with
`--n-envs 2 --seed 2 --policy static`. Two env counts, so the screen must say what it left out;
both carry FLOPs. ``real_run.msgpack`` predates FLOPs, ``real_run_lm.msgpack`` is another task.
"""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from esper_engine.contracts import EpochSummary, Event
from overwatch.app import OverwatchApp
from overwatch.cli import main
from overwatch.compare import comparison, load_run, load_runs
from overwatch.screens.compare import CompareApp, CompareScreen
from overwatch.screens.summary import SummaryScreen
from tests.console.fixtures import (
    FIXTURES,
    REAL_RUN,
    REAL_RUN_LM,
    FakeLiveSource,
    frozen_clock,
    real_events,
    run_async,
)

A = FIXTURES / "compare_a.msgpack"
B = FIXTURES / "compare_b.msgpack"


def mean_by_epoch(events: list[Event], field: str, scale: float = 1.0) -> dict[int, float]:
    """Per epoch (from 1), the mean over envs of an EpochSummary field: read off the events."""
    values: dict[int, list[float]] = {}
    for e in events:
        if type(e) is EpochSummary:
            values.setdefault(e.epoch + 1, []).append(scale * getattr(e, field))
    return {x: sum(v) / len(v) for x, v in sorted(values.items())}


def env_by_epoch(events: list[Event], env: int, field: str, scale: float = 1.0):
    return {
        e.epoch + 1: scale * getattr(e, field)
        for e in events
        if type(e) is EpochSummary and e.env == env
    }


def text_of(renderable, width: int = 80) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


# --- bad input: one line, exit 2 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", str(A)], "compare needs at least two recordings"),
        (["compare", str(A), "/no/such.msgpack"], "no such recording: /no/such.msgpack"),
        (["compare", str(A), "README.md"], "README.md: not an Overwatch recording"),
        (["run", "--compare", "/no/such.msgpack"], "no such recording: /no/such.msgpack"),
        (["run", "--headless", "--compare", str(A)], "--compare needs the console"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("overwatch: error: ") and message in err


# --- the comparison, against the recordings -----------------------------------------------------


def test_the_run_mean_and_each_env_are_aligned_by_epoch_as_recorded() -> None:
    runs = load_runs([str(A), str(B)])
    c = comparison(runs)
    assert c.common_envs == (0, 1) and c.views == (None, 0, 1)
    for run, path in zip(c.runs, (A, B), strict=True):
        events = real_events(path)
        assert c.series(run, "accuracy", None) == mean_by_epoch(events, "val_accuracy", 100)
        assert c.series(run, "loss", None) == mean_by_epoch(events, "val_loss")
        assert c.series(run, "grad", 1) == env_by_epoch(events, 1, "grad_norm_post_clip")
        assert c.series(run, "flops", 0) == env_by_epoch(events, 0, "train_flops")


def test_the_final_figures_and_their_differences_from_the_reference() -> None:
    c = comparison(load_runs([str(A), str(B)]))
    a_events, b_events = real_events(A), real_events(B)
    a_acc, b_acc = (
        mean_by_epoch(a_events, "val_accuracy", 100),
        mean_by_epoch(b_events, "val_accuracy", 100),
    )
    a_loss, b_loss = mean_by_epoch(a_events, "val_loss"), mean_by_epoch(b_events, "val_loss")
    ref, other = c.finals(None)
    assert (ref.accuracy, other.accuracy) == (a_acc[6], b_acc[6])
    assert other.d_accuracy == pytest.approx(b_acc[6] - a_acc[6])
    assert other.d_loss == pytest.approx(b_loss[6] - a_loss[6])
    assert other.best_accuracy == max(b_acc.values())
    a_flops = sum(e.train_flops for e in a_events if type(e) is EpochSummary and e.epoch == 5)
    b_flops = sum(e.train_flops for e in b_events if type(e) is EpochSummary and e.epoch == 5)
    assert ref.flops == pytest.approx(a_flops / 3) and other.flops == pytest.approx(b_flops / 2)
    assert other.d_flops == pytest.approx((b_flops / 2) / (a_flops / 3))
    assert ref.d_accuracy is None  # the reference has nothing to differ from
    # per env: env 2's own last figures
    _, env2 = c.finals(1)
    assert env2.accuracy == env_by_epoch(b_events, 1, "val_accuracy", 100)[6]


def test_what_cannot_be_compared_is_left_out_and_said() -> None:
    c = comparison(load_runs([str(A), str(B), str(REAL_RUN_LM), str(REAL_RUN)]))
    assert [run.label for run in c.runs] == [
        "compare_a.msgpack",
        "compare_b.msgpack",
        REAL_RUN.name,
    ]
    assert c.left_out == (
        "left out: real_run_lm.msgpack, task synthetic-stories (not synthetic-images)",
        "per-env views leave out env 3 of compare_a.msgpack; env 3, 4 of real_run.msgpack "
        "(in the mean)",
        "no FLOPs recorded in real_run.msgpack",
    )
    assert c.series(c.runs[2], "flops", None) == {}  # not plotted as zeros


# --- the screen, driven by keys -----------------------------------------------------------------


def plotted(screen: CompareScreen) -> list[dict[float, float]]:
    return [dict(zip(d.x, d.y, strict=True)) for d in screen._plot._datasets]


@run_async
async def test_compare_shows_both_curves_and_the_differences_at_80x24() -> None:
    app = CompareApp(load_runs([str(A), str(B)]))
    a_events, b_events = real_events(A), real_events(B)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        curves = plotted(screen)
        assert curves == [
            mean_by_epoch(a_events, "val_accuracy", 100),
            mean_by_epoch(b_events, "val_accuracy", 100),
        ]
        table = text_of(screen._table.content)
        ref, other = screen.comparison.finals(None)
        rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
        assert rows["compare_a.msgpack"][1:4] == ["6", f"{ref.accuracy:.1f}", "ref"]
        assert rows["compare_b.msgpack"][2] == f"{other.accuracy:.1f}"
        assert rows["compare_b.msgpack"][3] == f"{other.accuracy - ref.accuracy:+.1f}"
        notes = text_of(screen._notes.content)
        assert "env 3 of compare_a.msgpack" in notes
        await pilot.press("m")  # val loss
        assert plotted(screen)[1] == mean_by_epoch(b_events, "val_loss")
        await pilot.press("e")  # env 1
        assert plotted(screen)[0] == env_by_epoch(a_events, 0, "val_loss")
        assert "env 1" in text_of(screen._title.content)
        await pilot.press("m", "m")  # FLOPs, in GFLOPs on the axis
        flops = env_by_epoch(b_events, 0, "train_flops", 1e-9)
        assert plotted(screen)[1] == pytest.approx(flops)
        await pilot.press("e", "e")  # env 2, then back to the run mean
        assert "run mean" in text_of(screen._title.content)
        await pilot.press("q")  # the compare screen alone: q quits
        await pilot.pause()
        assert app._exit
    assert app.return_code == 0


@run_async
async def test_a_live_run_against_a_reference_recording() -> None:
    live = real_events(B)
    cut = next(i for i, e in enumerate(live) if type(e) is EpochSummary and e.epoch == 3)
    source = FakeLiveSource(live[:cut])
    app = OverwatchApp(source, clock=frozen_clock(live), compare=load_run(A))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.tick()
        await pilot.press("v")
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        ref_curve, live_curve = plotted(screen)
        assert ref_curve == mean_by_epoch(real_events(A), "val_accuracy", 100)
        assert live_curve == mean_by_epoch(live[:cut], "val_accuracy", 100)
        assert max(live_curve) == 3  # epochs 1-3 so far
        source.push(*live[cut:-1])
        await app.tick()
        screen.reload()  # what its timer does each second
        assert plotted(screen)[1] == mean_by_epoch(live, "val_accuracy", 100)
        assert "live" in text_of(screen._table.content)
        await pilot.press("escape")
        assert not isinstance(app.screen, CompareScreen)


@run_async
async def test_without_a_reference_v_says_how_to_give_one() -> None:
    events = real_events(B)[:-1]
    app = OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.tick()
        await pilot.press("v")
        assert not isinstance(app.screen, CompareScreen)
        assert any("--compare REF" in n.message for n in app._notifications)


@run_async
async def test_file_names_are_shown_as_text_never_markup(tmp_path) -> None:
    odd = tmp_path / "[bold red]b[dim].msgpack"
    odd.write_bytes(B.read_bytes())
    app = CompareApp(load_runs([str(A), str(odd)]))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert "[bold red]b[dim].msgpack" in text_of(screen._title.content)
        assert "[bold red]b[dim].ms…" in text_of(screen._table.content)  # cut at 20 columns


# --- snapshots (the README's screenshots of these screens) -----------------------------------


def test_snapshot_compare_80x24(snap_compare) -> None:
    assert snap_compare(CompareApp(load_runs([str(A), str(B)])), terminal_size=(80, 24))


def test_snapshot_summary_of_a_finished_live_run_80x24(snap_compare) -> None:
    events = real_events()
    app = OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events))

    async def ended(pilot) -> None:  # the app's own poll timer brings RunFinished in
        deadline = time.monotonic() + 30
        while not isinstance(app.screen, SummaryScreen):
            assert time.monotonic() < deadline, "the summary never opened"
            await pilot.pause(0.05)

    assert snap_compare(app, run_before=ended, terminal_size=(80, 24))
