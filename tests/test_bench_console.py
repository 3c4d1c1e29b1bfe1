"""The console bench's screen and output readings, independent of where the layout puts things."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from _console import ConsoleBenchError, dropped_on_screen, window_rate  # noqa: E402


@pytest.mark.parametrize(
    ("screen", "count"),
    [
        ("OVERWATCH run · 4 envs │ clip 1.00 │ dropped 0\nenv 1 ...", 0),
        ("episode 1/2 · dropped 1,204 · LIVE", 1204),
        ("dropped: 7", 7),
        ("env 3 │ Dropped 12 │", 12),  # wherever and however a layout puts it
        ("OVERWATCH run · 4 envs · no count here", None),
    ],
)
def test_the_dropped_count_is_read_wherever_the_screen_shows_it(
    screen: str, count: int | None
) -> None:
    assert dropped_on_screen(screen) == count


def test_bytes_per_second_over_the_trainer_window() -> None:
    assert window_rate((10.0, 1_000), (14.0, 9_192)) == 2_048.0


@pytest.mark.parametrize("start, end", [(None, (1.0, 5)), ((1.0, 5), None), ((2.0, 0), (2.0, 9))])
def test_a_window_not_sampled_is_an_error(start, end) -> None:  # noqa: ANN001
    with pytest.raises(ConsoleBenchError, match="not sampled"):
        window_rate(start, end)
