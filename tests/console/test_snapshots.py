"""What the operator sees, pinned as SVG snapshots from the fixture run (no wall clock on screen).

Update after an intended change with ``pytest tests/console/test_snapshots.py --snapshot-update``
and look at the SVGs in ``__snapshots__`` before committing them.
"""

from __future__ import annotations

from overwatch.app import OverwatchApp
from overwatch.sources import ReplaySource
from tests.console.fixtures import FakeLiveSource, fixture_events, frozen_clock

WIDE = (120, 40)
SMALL = (80, 24)


def live_app(*, crash: bool = False) -> OverwatchApp:
    events = fixture_events(crash=crash)
    if not crash:
        events = events[:-1]  # still running
    return OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events))


def replay_app(epochs_in: int) -> OverwatchApp:
    source = ReplaySource.from_events(fixture_events(), clock=lambda: 0.0)
    for _ in range(epochs_in):
        source.step_forward()
    return OverwatchApp(source, clock=lambda: 0.0)


def test_live_wide(snap_compare) -> None:
    assert snap_compare(live_app(), terminal_size=WIDE)


def test_live_compact_80x24(snap_compare) -> None:
    assert snap_compare(live_app(), terminal_size=SMALL)


def test_live_compact_focus_moved(snap_compare) -> None:
    assert snap_compare(live_app(), press=["3"], terminal_size=SMALL)


def test_replay_mid_run_wide(snap_compare) -> None:
    assert snap_compare(replay_app(epochs_in=10), terminal_size=WIDE)


def test_replay_compact_80x24(snap_compare) -> None:
    assert snap_compare(replay_app(epochs_in=4), terminal_size=SMALL)


def test_crash_modal_80x24(snap_compare) -> None:
    assert snap_compare(live_app(crash=True), terminal_size=SMALL)


def test_help_80x24(snap_compare) -> None:
    assert snap_compare(live_app(), press=["question_mark"], terminal_size=SMALL)


def test_rollback_confirmation(snap_compare) -> None:
    assert snap_compare(live_app(), press=["2", "r"], terminal_size=WIDE)


def test_too_small(snap_compare) -> None:
    assert snap_compare(live_app(), terminal_size=(50, 14))
