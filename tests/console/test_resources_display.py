"""The header's resources (issue 25): each rank's CPU %, resident memory and, on a GPU, its
memory and utilisation, from the ResourceSample events of real-engine recordings."""

from __future__ import annotations

import msgspec
import pytest

from esper_engine.contracts import ResourceSample
from overwatch.app import OverwatchApp
from overwatch.sources import ReplaySource
from overwatch.state import ConsoleState, reduce_many
from overwatch.widgets.formatting import short_bytes
from tests.console.fixtures import (
    REAL_RUN,
    REAL_RUN_OUTLIER,
    REAL_RUN_SHARDED,
    real_events,
    replay_app,
    run_async,
)

SMALL, WIDE = (80, 24), (120, 40)


def header_lines(app: OverwatchApp) -> list[str]:
    header = app.main._header
    return [line.plain for line in header.build_lines(header.size.width, header.size.height)]


def last_samples(events) -> dict[int, ResourceSample]:
    return {e.rank: e for e in events if isinstance(e, ResourceSample)}


@pytest.mark.parametrize("size", [SMALL, WIDE])
@run_async
async def test_the_header_shows_the_runs_cpu_and_memory(size) -> None:
    events = real_events(REAL_RUN_OUTLIER)
    app = replay_app(epochs_in=16, path=REAL_RUN_OUTLIER)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        sample = last_samples(events)[0]
        text = "\n".join(header_lines(app))
        shown = f"cpu {sample.cpu_percent:.0f}% {short_bytes(sample.rss_bytes)}"
        assert shown in text, text
        assert "FLOPs" in text  # the compute figure keeps its place beside it


@run_async
async def test_a_sharded_run_shows_each_rank() -> None:
    events = real_events(REAL_RUN_SHARDED)
    ranks = last_samples(events)
    assert set(ranks) == {0, 1}  # the worker's samples were forwarded to the leader
    app = replay_app(epochs_in=3, path=REAL_RUN_SHARDED)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = header_lines(app)[1]
        wide = " ".join(
            f"r{r} {s.cpu_percent:.0f}% {short_bytes(s.rss_bytes)}" for r, s in ranks.items()
        )
        assert wide in text, text
        await pilot.resize_terminal(*SMALL)
        await pilot.pause()
        text = header_lines(app)[1]
        # 80 columns: each rank's CPU % (no room for the memory) and the FLOPs still shown
        narrow = " ".join(f"r{r} {s.cpu_percent:.0f}%" for r, s in ranks.items())
        assert narrow in text and "FLOPs" in text, text


@run_async
async def test_an_older_recording_shows_no_resources() -> None:
    assert not last_samples(real_events(REAL_RUN))
    app = replay_app(path=REAL_RUN)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert "cpu " not in header_lines(app)[1]


@run_async
async def test_a_gpu_sample_shows_its_memory_and_utilisation() -> None:
    """No GPU here to record one: the real recording with its last sample given the GPU
    figures a CUDA run sends (the engine's own struct, in its units)."""
    events = real_events(REAL_RUN_OUTLIER)
    last = max(i for i, e in enumerate(events) if isinstance(e, ResourceSample))
    gpu = msgspec.structs.replace(
        events[last], gpu_allocated=3 * 2**30, gpu_reserved=4 * 2**30, gpu_utilization=87.0
    )
    events[last] = gpu
    source = ReplaySource.from_events(events, clock=lambda: 0.0)
    for _ in range(16):
        source.step_forward()
    app = OverwatchApp(source, clock=lambda: 0.0)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        line = header_lines(app)[1]
        # short of room at 120 columns: a zero dropped count gives way, the clip stays
        assert "gpu 3.0G/4.0G 87%" in line and "clip 1.00" in line and "dropped" not in line


def test_the_state_keeps_each_ranks_latest_sample() -> None:
    events = real_events(REAL_RUN_SHARDED)
    state = reduce_many(ConsoleState(), events)
    assert state.resources == last_samples(events)
    assert state.copy().resources == state.resources  # a replay keyframe keeps them


def test_short_bytes() -> None:
    assert [short_bytes(n) for n in (512, 594_411_520, 3 * 2**30, 12 * 2**30, 2**41)] == [
        "1K",
        "567M",
        "3.0G",
        "12G",
        "2.0T",
    ]
