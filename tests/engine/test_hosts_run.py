"""A run's host across files: checkpoints and ``--resume`` refuse another host, a policy file
loads on another size of host only where its observation and action spaces match."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import torch

from esper_engine.blueprints import blueprint_names
from esper_engine.checkpoint import CheckpointError, checkpoint_path, plan_resume, read_checkpoint
from esper_engine.config import HeuristicConfig, HostConfig, PPOConfig, TrainingConfig
from esper_engine.contracts import EpochSummary, RunStarted
from esper_engine.host_presets import resolve_host
from esper_engine.policy.driver import PolicyDriver
from esper_engine.policy.policy_file import PolicyFileError, write_policy_file
from esper_engine.preflight import validate_run
from esper_engine.session import TrainingSession
from esper_engine.tasks import load_task
from overwatch.cli import main

SHORT = TrainingConfig(
    n_envs=1, episodes=1, epochs=2, batches_per_epoch=2, batch_size=8, val_batches=1
)


@pytest.fixture(scope="module")
def images():
    return load_task("synthetic-images", seed=0, scale="small")


@pytest.fixture(scope="module")
def stories():
    return load_task("synthetic-stories", seed=0, scale="small")


def _recorded_run(path: Path, config: TrainingConfig, task) -> list:
    session = TrainingSession(config, task, run_id="host", record_path=path)
    session.start()
    assert session.wait(120) and session.finished.status == "completed", session.finished
    return session.poll()


def test_a_small_host_trains_and_every_event_tells_its_size(tmp_path: Path, images) -> None:
    config = msgspec.structs.replace(SHORT, host=HostConfig(preset="small"))
    events = _recorded_run(tmp_path / "r.msgpack", config, images)
    started = next(e for e in events if isinstance(e, RunStarted))
    assert (started.host_sizes, started.host_params) == ("8-16-32", 6_418)
    assert {e.host_params for e in events if isinstance(e, EpochSummary)} == {6_418}
    assert read_checkpoint(checkpoint_path(tmp_path / "r.msgpack"))["host"] == {
        "kind": "cnn",
        "preset": "small",
        "widths": (8, 16, 32),
        "d_model": 0,
        "n_layers": 0,
        "n_heads": 0,
        "layers_per_segment": 0,
    }


def test_resume_refuses_a_checkpoint_of_another_host(
    tmp_path: Path, images, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r.msgpack"
    _recorded_run(path, SHORT, images)
    ckpt = checkpoint_path(path)
    state = read_checkpoint(ckpt)
    with open(path, "r+b") as recording:  # back to the checkpoint: as if killed right after it
        recording.truncate(state["recording_bytes"])
    assert plan_resume(path).checkpoint["host"]["widths"] == (3, 6, 12)
    # a checkpoint whose host is not the one this version builds from the same config (a
    # preset whose sizes changed between versions)
    state["host"] = msgspec.to_builtins(resolve_host(HostConfig(preset="small"), "cifar10"))
    torch.save(state, ckpt)
    message = f"{ckpt}: the checkpoint's host is cnn 8-16-32, this run builds cnn 3-6-12"
    with pytest.raises(CheckpointError, match="the checkpoint's host is cnn 8-16-32") as caught:
        plan_resume(path)
    assert str(caught.value) == message
    assert main(["run", "--resume", str(path), "--headless"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"overwatch: error: {message}"


def _policy_file(path: Path, task, host: HostConfig) -> Path:
    """A saved PPO policy for ``task``'s host at ``host``'s size, as a run writes it."""
    spec = resolve_host(host, task.name)
    from esper_engine.model import create_model

    slots = create_model(task, "cpu", spec=spec).slot_ids
    driver = PolicyDriver(
        "ppo",
        n_envs=1,
        slot_ids=slots,
        blueprints=tuple(blueprint_names(task.host_kind)),
        host_kind=task.host_kind,
        heuristic=HeuristicConfig(),
        ppo=PPOConfig(seed=3),
    )
    write_policy_file(path, {**driver.policy_state(), "host": msgspec.to_builtins(spec)})
    return path


def _ppo(task, path: Path, host: HostConfig) -> TrainingConfig:
    return msgspec.structs.replace(
        SHORT, task=task.name, policy="ppo", ppo=PPOConfig(init_file=str(path)), host=host
    )


def test_a_policy_loads_on_another_size_where_its_spaces_match(tmp_path: Path, images) -> None:
    path = _policy_file(tmp_path / "tiny.policy.pt", images, HostConfig())
    # CNN tiny and base both have block1..3 and the same blueprints: the same spaces
    validate_run(_ppo(images, path, HostConfig(preset="base")), images, timed=False)
    # a fourth block is a fourth slot: another action space
    wider = HostConfig(widths=(8, 16, 32, 64))
    with pytest.raises(ValueError, match="slot_ids") as caught:
        validate_run(_ppo(images, path, wider), images, timed=False)
    assert "\n" not in str(caught.value)


def test_a_policy_for_another_host_kind_or_slot_layout_is_refused(
    tmp_path: Path, images, stories
) -> None:
    lm = _policy_file(tmp_path / "lm.policy.pt", stories, HostConfig())
    with pytest.raises(PolicyFileError, match="trained on a transformer host, this run trains cnn"):
        validate_run(_ppo(images, lm, HostConfig()), images, timed=False)
    # Transformer base puts its 3 slots after layers 2, 4, 6; tiny after 1, 2, 3
    with pytest.raises(ValueError, match="slot_ids") as caught:
        validate_run(_ppo(stories, lm, HostConfig(preset="base")), stories, timed=False)
    assert "layer6" in str(caught.value) and "\n" not in str(caught.value)
