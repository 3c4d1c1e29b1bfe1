"""The host and the run's estimate on screen: the header and the event log in the first frame
(80x24 and 120x40), the headless title and ``ps``, from a recording the real engine made."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from esper_engine.config import HostConfig, TrainingConfig
from esper_engine.contracts import RunStarted
from esper_engine.recording import read_recording
from esper_engine.session import prepare_session
from overwatch.app import OverwatchApp
from overwatch.headless import HeadlessView
from overwatch.runs import run_info
from overwatch.widgets.event_log import EventLog
from overwatch.widgets.formatting import estimate_duration, host_label, memory_size, short_count
from overwatch.widgets.header import RunHeader
from tests.console.fixtures import FakeLiveSource, frozen_clock, real_events, run_async

HOST = "cnn 32-64-128 · 95k params"


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of the base CNN host: 1 env, 1 epoch of 2 batches."""
    path = tmp_path_factory.mktemp("host") / "base.msgpack"
    config = TrainingConfig(
        n_envs=1, episodes=1, epochs=1, batches_per_epoch=2, batch_size=8, val_batches=1,
        host=HostConfig(preset="base"),
    )  # fmt: skip
    session = prepare_session(config, run_id="base", record_path=path)
    session.start()
    assert session.wait(120) and session.finished.status == "completed"
    return path


def _started(path: Path) -> RunStarted:
    return next(e for e in read_recording(path).events if isinstance(e, RunStarted))


def test_the_formats() -> None:
    assert [short_count(n) for n in (999, 1_063, 94_762, 867_328, 10_868_992)] == [
        "999", "1.1k", "95k", "867k", "11M",
    ]  # fmt: skip
    assert host_label("cnn", "32-64-128", 94_762) == HOST
    assert host_label("", "", 1_063) == ""  # a recording older than the fields
    assert (memory_size(12_645_096), memory_size(5 * 2**30)) == ("12 MiB", "5.0 GiB")
    assert (estimate_duration(0.2), estimate_duration(51.2)) == ("<1s", "51s")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
@run_async
async def test_the_first_frame_shows_the_host_and_the_estimate(base_run: Path, size) -> None:
    started = _started(base_run)
    app = OverwatchApp(FakeLiveSource([started]), clock=frozen_clock([started]))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        header = app.query_one(RunHeader)
        first, second, *_ = [line.plain for line in header.build_lines(size[0], 3)]
        assert "est. " in second and "/epoch · " in second and "MiB" in second
        if size[0] >= 120:
            assert f" · {HOST} · heuristic" in first
        log = app.query_one(EventLog)
        assert f"run started: synthetic-images ({HOST}), 1 envs" in log.describe(started).plain


def test_headless_title_and_ps_tell_the_host(base_run: Path) -> None:
    started = _started(base_run)
    view = HeadlessView()
    view.ingest([started])
    title = view.title()
    assert f"  host {HOST} · est. " in title and title.endswith("MiB")
    assert run_info(base_run).host == HOST


def test_an_old_recording_shows_no_host_and_no_estimate() -> None:
    started = next(e for e in real_events() if isinstance(e, RunStarted))
    assert started.host_kind == "" and started.memory_estimate == 0
    assert HeadlessView.estimate(started) == ""
    assert HeadlessView.estimate(msgspec.structs.replace(started, memory_estimate=2**20)) == (
        "  est. 1 MiB"
    )
