"""What the operator sees, pinned as SVG snapshots of the real engine's recording (no wall clock
on screen: the live screens freeze the clock at the recording's own wall times).

Update after an intended change, or after ``scripts/make_fixture.py`` re-recorded the fixture,
with ``pytest tests/console/test_snapshots.py --snapshot-update`` and look at the SVGs in
``__snapshots__`` before committing them.
"""

from __future__ import annotations

from overwatch.app import OverwatchApp
from tests.console.fixtures import (
    REAL_RUN_32,
    REAL_RUN_LM,
    SCREEN_EPOCHS,
    FakeLiveSource,
    crashed_run,
    frozen_clock,
    live_app,
    replay_app,
    running,
)

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
    assert snap_compare(live_app(), press=["a", "question_mark"], terminal_size=SMALL)


def test_rollback_confirmation(snap_compare) -> None:
    assert snap_compare(live_app(), press=["2", "r"], terminal_size=WIDE)


def test_too_small(snap_compare) -> None:
    assert snap_compare(live_app(), terminal_size=(50, 14))


BIG = (200, 60)


def test_32_envs_120x40(snap_compare) -> None:
    """The table of every env that fits (the rest scroll), the focused env below it."""
    assert snap_compare(live_app(running(REAL_RUN_32)), press=["g", "2", "5", "enter"],
                        terminal_size=WIDE)  # fmt: skip


def test_32_envs_as_panels_sorted(snap_compare) -> None:
    """t t: panels at their minimum height, scrolled; s: sorted by accuracy, worst first."""
    assert snap_compare(live_app(running(REAL_RUN_32)), press=["t", "t", "s"], terminal_size=WIDE)


def test_big_terminal_plot_200x60(snap_compare) -> None:
    """The focused env's plot beside the panels; the log grows into the height."""
    assert snap_compare(live_app(), press=["2", "a"], terminal_size=BIG)  # a: toasts gone


def test_log_filtered_and_searched(snap_compare) -> None:
    assert snap_compare(live_app(), press=["f", "f", "slash", *"nan", "enter"], terminal_size=WIDE)


def test_alerts_acknowledged_compact(snap_compare) -> None:
    assert snap_compare(live_app(), press=["a"], terminal_size=SMALL)


def test_light_theme(snap_compare) -> None:
    assert snap_compare(themed("light"), terminal_size=SMALL)


def test_high_contrast_theme(snap_compare) -> None:
    assert snap_compare(themed("high-contrast"), terminal_size=SMALL)


def test_ascii_80x24(snap_compare) -> None:
    events = running(epochs=SCREEN_EPOCHS)
    app = OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events), ascii_only=True)
    assert snap_compare(app, terminal_size=SMALL)


def test_16_colour_footer_replay(snap_compare) -> None:
    app = replay_app()
    app.ansi16 = True
    assert snap_compare(app, terminal_size=SMALL)


def themed(theme: str) -> OverwatchApp:
    events = running(epochs=SCREEN_EPOCHS)
    return OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events), theme=theme)
