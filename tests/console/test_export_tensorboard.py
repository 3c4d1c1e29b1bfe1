"""TensorBoard export: the event files, read back with TensorBoard's own reader, hold the
recording's figures value for value (as float32, TensorBoard's scalar type) at the right steps."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from esper_engine.contracts import Attribution, BatchStats, EpochSummary, PolicyUpdate, RunStarted
from esper_engine.recording import read_recording
from overwatch.cli import main
from overwatch.tensorboard_export import scalars
from tests.console.fixtures import REAL_RUN, REAL_RUN_LM

pytest.importorskip("tensorboardX", reason="the [tensorboard] extra is not installed")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard (the reader) is not installed",
)

Series = dict[tuple[str, str], list[tuple[int, float, float]]]  # (run, tag) -> (step, value, wall)


def read_back(root: Path) -> Series:
    series: Series = {}
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        accumulator = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series[run_dir.name, tag] = [
                (s.step, s.value, s.wall_time) for s in accumulator.Scalars(tag)
            ]
    return series


def expected(path: Path) -> Series:
    """What the recording says, written out by hand for the figures the issue names."""
    events = read_recording(path).events
    started = next(e for e in events if isinstance(e, RunStarted))
    want: Series = defaultdict(list)

    def add(env: int | None, tag: str, step: int, value: float | None, wall: float) -> None:
        if value is not None:
            want["policy" if env is None else f"env{env + 1}", tag].append((step, value, wall))

    for e in events:
        step = e.episode * started.epochs + e.epoch + 1  # from 1, as the console counts
        if isinstance(e, EpochSummary):
            add(e.env, "val/accuracy", step, e.val_accuracy, e.wall_time)
            add(e.env, "val/loss", step, e.val_loss, e.wall_time)
            add(e.env, "val/perplexity", step, e.perplexity, e.wall_time)
            add(e.env, "grad_norm/pre_clip", step, e.grad_norm_pre_clip, e.wall_time)
            add(e.env, "grad_norm/post_clip", step, e.grad_norm_post_clip, e.wall_time)
            add(e.env, "grad_norm/clipped_fraction", step, e.clipped_fraction, e.wall_time)
            add(e.env, "governor/consecutive_panics", step, e.consecutive_panics, e.wall_time)
            add(e.env, "governor/total_panics", step, e.total_panics, e.wall_time)
            add(e.env, "governor/rollbacks", step, e.rollbacks, e.wall_time)
        elif isinstance(e, BatchStats):
            batch_step = (step - 1) * started.batches_per_epoch + e.batch + 1
            add(e.env, "batch/grad_norm_post_clip", batch_step, e.grad_norm_post_clip, e.wall_time)
        elif isinstance(e, Attribution):
            for slot_id, value in e.shapley.items():
                add(e.env, f"shapley/{slot_id}", step, value, e.wall_time)
        elif isinstance(e, PolicyUpdate):
            for name in (
                "policy_loss",
                "value_loss",
                "entropy",
                "approx_kl",
                "clip_fraction",
                "explained_variance",
                "grad_norm",
                "mean_episode_reward",
                "imitation_weight",
                "heuristic_agreement",
            ):
                if getattr(e, name) is not None:  # recorded before kickstarting's figures: None
                    add(None, f"ppo/{name}", e.update, getattr(e, name), e.wall_time)
    return want


def same(got: list[tuple[int, float, float]], want: list[tuple[int, float, float]]) -> bool:
    if len(got) != len(want):
        return False
    for (gs, gv, gw), (ws, wv, ww) in zip(got, want, strict=True):
        value_ok = (math.isnan(gv) and math.isnan(wv)) or gv == float(np.float32(wv))
        if gs != ws or not value_ok or gw != pytest.approx(ww, abs=1e-6):
            return False
    return True


@pytest.mark.parametrize("recording", [REAL_RUN, REAL_RUN_LM], ids=["images", "language-model"])
def test_event_files_hold_the_recordings_figures(
    recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tb"
    assert main(["export", str(recording), "--format", "tensorboard", "--output", str(out)]) == 0
    assert capsys.readouterr().err == ""  # no warning per NaN, no chatter
    got, want = read_back(out), expected(recording)
    for key, points in want.items():
        assert key in got, f"{key} missing from the event files"
        assert same(got[key], points), f"{key}: {got[key][:3]} != {points[:3]}"
    runs = {run for run, _ in got}
    n_envs = next(e for e in read_recording(recording).events if isinstance(e, RunStarted)).n_envs
    assert {f"env{i + 1}" for i in range(n_envs)} <= runs


def test_images_have_shapley_and_no_perplexity_the_lm_has_perplexity_and_ppo(
    tmp_path: Path,
) -> None:
    main(["export", str(REAL_RUN), "--format", "tensorboard", "--output", str(tmp_path / "a")])
    main(["export", str(REAL_RUN_LM), "--format", "tensorboard", "--output", str(tmp_path / "b")])
    images, lm = read_back(tmp_path / "a"), read_back(tmp_path / "b")
    assert not any(tag == "val/perplexity" for _, tag in images)
    assert any(tag.startswith("shapley/") for _, tag in images)
    rollbacks = [
        v
        for (_, tag), points in images.items()
        if tag == "governor/rollbacks"
        for _, v, _ in points
    ]
    assert max(rollbacks) >= 1  # the fixture has governor rollbacks
    assert any(tag == "val/perplexity" for _, tag in lm)
    assert ("policy", "ppo/approx_kl") in lm


def test_kickstarting_figures_are_ppo_scalars_when_recorded() -> None:
    common = dict(run_id="r", wall_time=1.0)
    figures = dict(
        policy_loss=0.1,
        value_loss=0.2,
        entropy=0.3,
        approx_kl=0.0,
        clip_fraction=0.0,
        explained_variance=0.5,
        grad_norm=1.0,
        mean_episode_reward=2.0,
    )
    new = PolicyUpdate(**common, update=2, **figures, imitation_weight=0.5, heuristic_agreement=0.9)
    tags = {tag: value for _, tag, value, _, _ in scalars([new])}
    assert tags["ppo/imitation_weight"] == 0.5 and tags["ppo/heuristic_agreement"] == 0.9
    old = PolicyUpdate(**common, update=1, **figures)  # as decoded from an older recording
    assert not any("imitation" in tag or "agreement" in tag for _, tag, *_ in scalars([old]))


def test_refuses_a_directory_that_already_has_event_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", str(REAL_RUN_LM), "--format", "tensorboard", "--output", str(tmp_path)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2  # a second export would show every point twice
    assert "already holds TensorBoard event files" in capsys.readouterr().err


def test_needs_an_output_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(REAL_RUN_LM), "--format", "tensorboard"]) == 2
    assert "--output DIR" in capsys.readouterr().err
