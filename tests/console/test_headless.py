from __future__ import annotations

from rich.console import Console

from esper_engine.contracts import EpochSummary, RunFinished, RunStarted
from overwatch.headless import HeadlessView
from tests.console.fixtures import fixture_events


def render(view: HeadlessView, width: int = 80) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(view.render(dropped=3))
    return console.export_text()


def test_one_line_per_env_with_the_latest_epoch() -> None:
    events = fixture_events()
    view = HeadlessView()
    view.ingest(events)
    started = next(e for e in events if isinstance(e, RunStarted))
    last = {e.env: e for e in events if isinstance(e, EpochSummary)}
    text = render(view)
    rows = [line.split() for line in text.splitlines()[2:] if line.strip()]
    assert [int(row[0]) for row in rows] == [env + 1 for env in sorted(last)]
    for row, env in zip(rows, sorted(last), strict=True):
        summary = last[env]
        assert row[1] == f"{summary.episode + 1}/{started.episodes}"
        assert row[2] == f"{summary.epoch + 1}/{started.epochs}"
        assert row[3] == f"{summary.val_accuracy:.3f}"
        assert row[5].startswith(f"{summary.grad_norm_post_clip:.2f}|")
    assert "dropped=3" in text
    assert isinstance(view.finished, RunFinished)
    assert all(len(line) <= 80 for line in text.splitlines())
