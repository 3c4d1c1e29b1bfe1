"""FLOPs and the report split in the console and the exports (issue 24), from a recording the
real engine made: per env (panel border, compact row) and for the run (header) at 80x24 and
120x40, in the CSV / JSONL / TensorBoard exports; an old recording shows none."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from esper_engine.config import TrainingConfig
from esper_engine.contracts import EpochSummary, RunFinished, RunStarted
from esper_engine.recording import read_recording
from esper_engine.session import prepare_session
from overwatch.app import OverwatchApp
from overwatch.cli import main
from overwatch.state import ConsoleState, reduce_many
from overwatch.tensorboard_export import scalars
from overwatch.widgets.env_panel import EnvPanel
from overwatch.widgets.env_row import EnvRow
from overwatch.widgets.formatting import flops
from tests.console.fixtures import FakeLiveSource, frozen_clock, real_events, run_async
from tests.console.test_real_recording import crop, screen


@pytest.fixture(scope="module")
def flops_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run: 2 envs, 2 episodes of 3 epochs, a report every 2 epochs."""
    path = tmp_path_factory.mktemp("flops") / "run.msgpack"
    config = TrainingConfig(
        n_envs=2, episodes=2, epochs=3, batches_per_epoch=3, batch_size=16, val_batches=1,
        report_every=2,
    )  # fmt: skip
    session = prepare_session(config, run_id="flops", record_path=path)
    session.start()
    assert session.wait(300) and session.finished.status == "completed"
    return path


def _events(path: Path) -> list:
    return list(read_recording(path).events)


def _env_total(summary: EpochSummary) -> int:
    return (
        summary.train_flops + summary.val_flops + summary.attribution_flops + summary.report_flops
    )


def test_the_si_format() -> None:
    got = [flops(n) for n in (0, 830_160, 12_345_678, 999_700_000_000, 3_200_000_000_000)]
    assert got == ["0", "830k", "12M", "1.0T", "3.2T"]
    assert flops(9_960_000_000) == "10G" and flops(145_000_000_000) == "145G"


def test_the_state_sums_the_runs_flops_as_the_trainer_does(flops_run: Path) -> None:
    events = _events(flops_run)
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.total_flops > 0
    before = reduce_many(ConsoleState(), events[:-1])  # live: RunFinished not there yet
    assert before.total_flops == finished.total_flops
    after = reduce_many(ConsoleState(), events)
    assert after.total_flops == finished.total_flops
    for view in after.envs:
        last = [e for e in events if isinstance(e, EpochSummary) and e.env == view.env][-1]
        assert view.flops == _env_total(last) > 0


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
@run_async
async def test_the_flops_on_screen_are_the_recordings(flops_run: Path, size) -> None:
    events = _events(flops_run)
    finished = events[-1]
    app = OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await app.tick()
        await pilot.pause()
        await close_summary(app, pilot)  # the run has ended: its summary opened over the panels
        lines = screen(app)
        header = "\n".join(lines[:3])
        assert f"│ {flops(finished.total_flops)} FLOPs" in header, header
        for env in (0, 1):
            last = [e for e in events if isinstance(e, EpochSummary) and e.env == env][-1]
            figure = flops(_env_total(last))
            if size == (80, 24):
                row = next(r for r in app.query(EnvRow) if r.env == env)
                assert f" R0 {figure} " in crop(lines, row)[0]
            else:
                panel = next(p for p in app.query(EnvPanel) if p.env == env)
                assert crop(lines, panel)[-1].rstrip("━─┛╯ ").endswith(f"· {figure} FLOPs")


@run_async
async def test_an_old_recording_shows_no_flops() -> None:
    events = real_events()
    assert all(e.train_flops == 0 for e in events if isinstance(e, EpochSummary))
    app = OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await close_summary(app, pilot)
        assert "FLOPs" not in "\n".join(screen(app))


def test_csv_and_jsonl_carry_the_flops_and_the_report(flops_run: Path, tmp_path: Path) -> None:
    events = _events(flops_run)
    summaries = [e for e in events if isinstance(e, EpochSummary)]
    out = tmp_path / "run.csv"
    assert main(["export", str(flops_run), "--format", "csv", "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(summaries)
    for row, s in zip(rows, summaries, strict=True):
        assert int(row["train_flops"]) == s.train_flops > 0
        assert int(row["val_flops"]) == s.val_flops
        assert int(row["attribution_flops"]) == s.attribution_flops
        assert int(row["report_flops"]) == s.report_flops
        if s.report_accuracy is None:
            assert row["report_accuracy"] == "" and s.epoch == 0
        else:
            assert float(row["report_accuracy"]) == s.report_accuracy and s.epoch in (1, 2)
    out = tmp_path / "run.jsonl"
    assert main(["export", str(flops_run), "--format", "jsonl", "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[-1]["type"] == "RunFinished"
    assert lines[-1]["total_flops"] == events[-1].total_flops > 0


def test_tensorboard_carries_the_flops_and_the_report(flops_run: Path) -> None:
    events = _events(flops_run)
    started = next(e for e in events if isinstance(e, RunStarted))
    points = {(run, tag, step): value for run, tag, value, step, _ in scalars(events)}
    for s in (e for e in events if isinstance(e, EpochSummary)):
        step = s.episode * started.epochs + s.epoch + 1
        run = f"env{s.env + 1}"
        assert points[run, "flops/train", step] == s.train_flops
        assert points[run, "flops/val", step] == s.val_flops
        assert points[run, "flops/report", step] == s.report_flops
        assert points.get((run, "report/accuracy", step)) == s.report_accuracy
    last = started.episodes * started.epochs
    assert points["run", "flops/total", last] == events[-1].total_flops


async def close_summary(app: OverwatchApp, pilot) -> None:
    """Close the end-of-run summary a finished live run opens by itself (issue 25)."""
    from overwatch.screens.summary import SummaryScreen

    if isinstance(app.screen, SummaryScreen):
        app.screen.dismiss()
        await pilot.pause()
