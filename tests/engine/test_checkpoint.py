"""Checkpoints: atomic, loaded without unpickling objects, and checked against their recording."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import torch

from esper_engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    checkpoint_path,
    plan_resume,
    read_checkpoint,
    share_equal_tensors,
    write_checkpoint,
)
from esper_engine.config import PPOConfig, TrainingConfig
from esper_engine.contracts import RunFinished, RunStatus
from esper_engine.recording import Recorder
from esper_engine.session import TrainingSession
from esper_engine.tasks import load_task

ROOT = Path(__file__).resolve().parents[2]
TINY = TrainingConfig(
    n_envs=2, episodes=1, epochs=3, batches_per_epoch=2, batch_size=8, val_batches=1
)


@pytest.fixture(scope="module")
def task():
    return load_task("synthetic-images", seed=0, scale="small")


def _record(tmp_path: Path, task, config: TrainingConfig = TINY, name: str = "run") -> Path:
    path = tmp_path / f"{name}.msgpack"
    session = TrainingSession(config, task, run_id=name, record_path=path)
    session.start()
    assert session.wait(60)
    return path


class _Hostile:
    """Unpickling this would run a command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_sits_next_to_the_recording() -> None:
    assert checkpoint_path("runs/RUN.msgpack") == Path("runs/RUN.ckpt")


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    write_checkpoint(path, {"format": CHECKPOINT_FORMAT, "value": torch.arange(3)})
    write_checkpoint(path, {"format": CHECKPOINT_FORMAT, "value": torch.arange(4)})
    assert read_checkpoint(path)["value"].tolist() == [0, 1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]


def test_every_epoch_checkpoint_holds_the_whole_run(tmp_path: Path, task) -> None:
    # One demonstration round: the clone is update 1, so the checkpoint after it holds one.
    config = msgspec.structs.replace(TINY, episodes=2, policy="ppo", ppo=PPOConfig(demo_rounds=1))
    path = _record(tmp_path, task, config)
    state = read_checkpoint(checkpoint_path(path))
    assert (state["episode"], state["epoch"]) == (1, 2)  # the last boundary before the end
    assert state["run_id"] == "run"
    assert state["recording_bytes"] <= path.stat().st_size
    assert set(state) >= {"batches", "envs", "policy", "updates", "config"}
    assert state["updates"] == 1
    env = state["envs"][0]
    assert set(env) >= {"generator", "model", "host_optimizer", "seed_optimizers", "governor"}
    assert set(env["governor"]["snapshot"]) == {"weights", "optimizer", "seed_optimizers", "scaler"}
    assert {"agent", "optimizer", "generator", "buffer"} <= set(state["policy"])


def test_checkpoint_every_zero_writes_none(tmp_path: Path, task) -> None:
    path = _record(tmp_path, task, msgspec.structs.replace(TINY, checkpoint_every=0))
    assert not checkpoint_path(path).exists()


def test_checkpoint_every_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainingConfig(checkpoint_every=-1).validate()


def test_hostile_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"format": 1, "x": _Hostile(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match="refused") as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value)
    torch.save({"format": 1, "x": _Hostile(marker)}, path)  # the same inside torch's zip
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()


def test_cli_refuses_a_hostile_checkpoint_with_one_line(tmp_path: Path, task) -> None:
    path = _record(tmp_path, task, msgspec.structs.replace(TINY, episodes=2))
    _cut_before_finish(path)
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "x": _Hostile(marker)}, checkpoint_path(path))
    result = _resume_cli(path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "refused" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ("missing", "no checkpoint"),
        ("run_id", "checkpoint of run other"),
        ("config", "config differs"),
        ("short", "shorter than"),
        ("format", "format"),
    ],
)
def test_a_checkpoint_that_does_not_match_is_refused(
    tmp_path: Path, task, spoil: str, message: str
) -> None:
    path = _record(tmp_path, task)
    _cut_before_finish(path)
    ckpt = checkpoint_path(path)
    state = read_checkpoint(ckpt)
    if spoil == "missing":
        ckpt.unlink()
    elif spoil == "run_id":
        write_checkpoint(ckpt, {**state, "run_id": "other"})
    elif spoil == "config":
        write_checkpoint(ckpt, {**state, "config": {**state["config"], "seed": 5}})
    elif spoil == "short":
        write_checkpoint(ckpt, {**state, "recording_bytes": path.stat().st_size + 1})
    else:
        write_checkpoint(ckpt, {**state, "format": 99})
    size = path.stat().st_size
    with pytest.raises(CheckpointError, match=message):
        plan_resume(path)
    assert path.stat().st_size == size  # nothing was cut


def test_a_completed_run_is_not_resumed(tmp_path: Path, task) -> None:
    path = _record(tmp_path, task)
    with pytest.raises(CheckpointError, match="already completed"):
        plan_resume(path)
    result = _resume_cli(path)
    assert result.returncode == 2
    assert "already completed" in result.stderr


def test_a_stale_temporary_file_is_ignored(tmp_path: Path, task) -> None:
    path = _record(tmp_path, task)
    _cut_before_finish(path)
    (tmp_path / f".{checkpoint_path(path).name}.12345.tmp").write_bytes(b"half a checkpoint")
    assert plan_resume(path).position == (0, 2)


def _cut_before_finish(path: Path) -> None:
    """Make a completed recording look like one whose process died before the end."""
    state = read_checkpoint(checkpoint_path(path))
    with Recorder(path, resume_at=state["recording_bytes"]) as recorder:
        recorder.emit(RunFinished(run_id="run", status=RunStatus.CRASHED, error="killed"))


def _resume_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overwatch.cli", "run", "--headless", "--resume", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_equal_tensors_are_written_once_and_read_back_apart(tmp_path: Path) -> None:
    """A snapshot equal to the live weights costs no second copy on disk; read back, the two
    are separate tensors again (training one must never move the other)."""
    weights = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    other = weights + 1
    twice = {"format": CHECKPOINT_FORMAT, "live": weights, "snapshot": weights.clone()}
    apart = {"format": CHECKPOINT_FORMAT, "live": weights, "snapshot": other}
    sizes = {}
    for name, state in (("twice", twice), ("apart", apart)):
        path = tmp_path / f"{name}.ckpt"
        write_checkpoint(path, share_equal_tensors(state))
        sizes[name] = path.stat().st_size
    assert sizes["twice"] < 0.6 * sizes["apart"]
    loaded = read_checkpoint(tmp_path / "twice.ckpt")
    assert torch.equal(loaded["live"], weights) and torch.equal(loaded["snapshot"], weights)
    loaded["live"].add_(1)
    assert torch.equal(loaded["snapshot"], weights)
