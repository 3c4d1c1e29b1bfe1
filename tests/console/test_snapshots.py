"""What the operator sees, pinned as SVG snapshots of the real engine's recording (no wall clock
on screen: the live screens freeze the clock at the recording's own wall times).

Update after an intended change, or after ``scripts/make_fixture.py`` re-recorded the fixture,
with ``pytest tests/console/test_snapshots.py --snapshot-update`` and look at the SVGs in
``__snapshots__`` before committing them.
"""

from __future__ import annotations

from tests.console.fixtures import REAL_RUN_LM, crashed_run, live_app, replay_app, running

WIDE = (120, 40)
SMALL = (80, 24)


def test_live_wide(snap_compare) -> None:
    assert snap_compare(live_app(), terminal_size=WIDE)


def test_live_compact_80x24(snap_compare) -> None:
    assert snap_compare(live_app(), terminal_size=SMALL)


def test_live_compact_focus_moved(snap_compare) -> None:
    assert snap_compare(live_app(), press=["4"], terminal_size=SMALL)


def test_live_language_model_wide(snap_compare) -> None:
    """Perplexity on every panel and the last PPO update in the header."""
    assert snap_compare(live_app(running(REAL_RUN_LM)), terminal_size=WIDE)


def test_replay_mid_run_wide(snap_compare) -> None:
    assert snap_compare(replay_app(), terminal_size=WIDE)


def test_replay_compact_80x24(snap_compare) -> None:
    assert snap_compare(replay_app(epochs_in=4), terminal_size=SMALL)


def test_crash_modal_80x24(snap_compare) -> None:
    assert snap_compare(live_app(crashed_run()), terminal_size=SMALL)


def test_help_80x24(snap_compare) -> None:
    assert snap_compare(live_app(), press=["question_mark"], terminal_size=SMALL)


def test_rollback_confirmation(snap_compare) -> None:
    assert snap_compare(live_app(), press=["2", "r"], terminal_size=WIDE)


def test_too_small(snap_compare) -> None:
    assert snap_compare(live_app(), terminal_size=(50, 14))
