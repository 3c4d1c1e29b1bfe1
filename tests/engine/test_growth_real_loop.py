"""widen and stack on the real training loop (issue 24 item 3): the governor's rollback prunes a
live one and restores a fossilized one bit for bit (faults injected with ``--fault``), and a run
that grows with them resumes exactly from its checkpoints, although their shapes are new."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from esper_engine.config import HeuristicConfig, LifecycleConfig
from esper_engine.contracts import EpochSummary, GovernorRollback, SeedTransition
from esper_engine.recording import read_recording
from tests.engine.test_faults_real_loop import (
    assert_same,
    config,
    fossil_epoch,
    fossil_state,
    of,
    run,
)
from tests.engine.test_resume import SMALL, _finish, _resumed, _run, comparable

OPERATORS = ("widen", "stack")


@pytest.fixture(scope="module")
def images():
    from esper_engine.tasks import load_task

    return load_task("synthetic-images", seed=0, scale="small")


def grow_with(operator: str) -> HeuristicConfig:
    """The heuristic plants only ``operator`` and judges leniently, so seeds reach FOSSILIZED."""
    return HeuristicConfig(
        cnn_preference=(operator,), prune_threshold=-1.0, fossilize_threshold=0.0
    )


@pytest.mark.parametrize("operator", OPERATORS)
def test_rollback_prunes_a_live_operator_and_restores_a_fossilized_one(images, operator) -> None:
    probe, _ = run(images, config(epochs=12, heuristic=grow_with(operator)))
    epoch, slot_id = fossil_epoch(probe)
    assert {t.blueprint for t in of(probe, SeedTransition)} == {operator}
    assert epoch + 2 < 12, "the fossilization must leave an epoch to break and one after it"
    saved: dict = {}

    def hook(trainer, event) -> None:
        if isinstance(event, EpochSummary) and event.epoch == epoch:
            saved["snapshot"] = fossil_state(trainer, slot_id)
            saved["params"] = trainer.envs[0].model.slots[slot_id].param_count()
        if isinstance(event, GovernorRollback):
            saved["restored"] = fossil_state(trainer, slot_id)

    fault = f"nan:1:{epoch + 2}"  # 1-based: the epoch right after the fossilization
    events, finished = run(
        images, config(epochs=12, heuristic=grow_with(operator), faults=(fault,)), hook
    )
    assert finished.status == "completed", finished.error
    rollbacks = of(events, GovernorRollback)
    assert [(r.reason, r.epoch) for r in rollbacks] == [("nan", epoch + 1)]
    # The other seed was still live (HOLDING) at the snapshot: the rollback pruned it.
    pruned = rollbacks[0].seeds_pruned
    assert pruned and slot_id not in pruned
    by_governor = [
        t
        for t in of(events, SeedTransition)
        if t.to_stage == "PRUNED" and t.initiator == "governor"
    ]
    assert {t.slot_id for t in by_governor} == set(pruned)
    assert {t.blueprint for t in by_governor} == {operator}
    assert_same(saved["restored"], saved["snapshot"])  # weights and momentum, bit for bit
    later = [s for s in of(events, EpochSummary) if s.epoch > epoch + 1]
    assert later, (epoch, [(s.epoch, s.episode) for s in of(events, EpochSummary)])
    for summary in later:
        slot = {s.slot_id: s for s in summary.slots}[slot_id]
        assert (slot.stage, slot.blueprint, slot.params) == (
            "FOSSILIZED",
            operator,
            saved["params"],
        )
        for other in summary.slots:  # the pruned slots hold no parameters any more
            if other.slot_id in pruned and other.stage in ("EMBARGOED", "RESETTING", "DORMANT"):
                assert other.params == 0


@pytest.mark.parametrize("operator", OPERATORS)
def test_a_run_growing_with_an_operator_resumes_exactly(tmp_path: Path, images, operator) -> None:
    """Cut while the operator's seeds are live and after one fossilized (a NaN fault and a
    governor rollback in between; one seed planted before each episode): the resumed recording
    equals the uninterrupted one."""
    cfg = msgspec.structs.replace(
        SMALL,
        policy="heuristic",
        epochs=8,
        faults=("nan:1:5",),
        heuristic=grow_with(operator),
        lifecycle=LifecycleConfig(blend_epochs=1, plant=(f"block3:{operator}",)),
    )
    reference = tmp_path / "reference.msgpack"
    _run(cfg, images, reference)
    events = read_recording(reference).events
    transitions = of(events, SeedTransition)
    assert {t.blueprint for t in transitions} == {operator}
    assert any(t.to_stage == "FOSSILIZED" for t in transitions)
    assert of(events, GovernorRollback)
    for stop in (3, 16):  # mid-episode, and at the first episode's end (the next is planted)
        path = tmp_path / f"cut-{stop}.msgpack"
        _run(cfg, images, path, stop_after=stop)
        cut = of(read_recording(path).events, EpochSummary)[-1]
        assert any(s.blueprint == operator and s.params > 0 for s in cut.slots), stop
        _finish(_resumed(path, images))
        assert comparable(path) == comparable(reference), f"{operator} stopped at {stop}"


def test_ppo_chooses_among_the_operators_and_its_sizes_follow_the_catalogue(images) -> None:
    """The policy's blueprint head covers every blueprint, widen and stack included (the action
    space grows with the catalogue, and so does the observation: a FLOP cost and a one-hot per
    slot and blueprint), and a
    PPO run from scratch plants them on the real loop."""
    from esper_engine.blueprints import blueprint_names
    from esper_engine.config import PPOConfig
    from esper_engine.policy.actions import N_OPS
    from esper_engine.policy.driver import PolicyDriver
    from esper_engine.policy.observation import obs_dim

    cfg = config(
        n_envs=2, epochs=8, policy="ppo", ppo=PPOConfig(demo_rounds=0), lifecycle=LifecycleConfig()
    )
    events, finished = run(images, cfg)
    assert finished.status == "completed", finished.error
    names = blueprint_names("cnn")
    assert names[-2:] == ["widen", "stack"] and len(names) == 7  # appended: old indices hold
    planted = {t.blueprint for t in of(events, SeedTransition) if t.to_stage == "GERMINATED"}
    assert planted <= set(names)
    assert planted & {"widen", "stack"}, planted  # this seed's from-scratch agent plants them
    driver = PolicyDriver(
        "ppo",
        n_envs=2,
        slot_ids=["block1", "block2", "block3"],
        blueprints=names,
        host_kind="cnn",
        heuristic=HeuristicConfig(),
        ppo=PPOConfig(seed=0),
    )
    agent = driver.agent
    assert agent.blueprint_head.out_features == len(names)
    assert agent.slot_head.out_features == N_OPS * 3
    assert next(agent.parameters()).shape[-1] == obs_dim(3, len(names))


def test_planted_seeds_train_from_epoch_0_at_the_hosts_lr(images) -> None:
    """lifecycle.plant germinates widen and stack before the first epoch of every episode; they
    train in epoch 0 (so they may blend from epoch 1) with optimizers at the host's lr."""
    lrs: dict = {}

    def hook(trainer, event) -> None:
        if isinstance(event, EpochSummary) and event.epoch == 0:
            env = trainer.envs[0]
            for sid, opt in env.state.seed_optimizers.items():
                lrs[event.episode, sid] = opt.param_groups[0]["initial_lr"]
            lrs[event.episode, "host"] = env.state.host_optimizer.param_groups[0]["initial_lr"]

    cfg = config(
        epochs=4,
        episodes=2,
        lifecycle=LifecycleConfig(plant=("block1:widen", "block3:stack")),
    )
    events, finished = run(images, cfg, hook)
    assert finished.status == "completed", finished.error
    for episode in (0, 1):
        planted = [
            (t.slot_id, t.blueprint, str(t.from_stage), str(t.to_stage), t.initiator)
            for t in of(events, SeedTransition)
            if t.episode == episode and t.epoch == 0 and t.to_stage in ("GERMINATED", "TRAINING")
        ]
        assert planted == [
            ("block1", "widen", "DORMANT", "GERMINATED", "operator"),
            ("block1", "widen", "GERMINATED", "TRAINING", "gate"),
            ("block3", "stack", "DORMANT", "GERMINATED", "operator"),
            ("block3", "stack", "GERMINATED", "TRAINING", "gate"),
        ]
        assert lrs[episode, "block1"] == lrs[episode, "block3"] == lrs[episode, "host"]
        first = next(s for s in of(events, EpochSummary) if (s.episode, s.epoch) == (episode, 0))
        for slot in first.slots:  # after epoch 0's action (the heuristic advances them)
            if slot.slot_id in ("block1", "block3"):
                assert slot.stage in ("TRAINING", "BLENDING") and slot.params > 0
    # Advancing needs a seed gradient recorded in TRAINING: after epoch 0 they had trained in it.
    advanced = [t for t in of(events, SeedTransition) if t.to_stage == "BLENDING"]
    assert advanced and min((t.episode, t.epoch) for t in advanced) == (0, 0)


def test_a_plant_naming_an_unknown_slot_or_blueprint_is_refused_before_the_run() -> None:
    from esper_engine.config import TrainingConfig
    from esper_engine.preflight import validate_run

    images = __import__("esper_engine.tasks", fromlist=["load_task"]).load_task(
        "synthetic-images", seed=0, scale="small"
    )
    with pytest.raises(ValueError, match="slot:blueprint"):
        TrainingConfig(lifecycle=LifecycleConfig(plant=("block1",))).validate()
    with pytest.raises(ValueError, match="unknown slot 'block9'"):
        validate_run(TrainingConfig(lifecycle=LifecycleConfig(plant=("block9:widen",))), images)
    with pytest.raises(ValueError, match="unknown cnn blueprint 'lora'"):
        validate_run(TrainingConfig(lifecycle=LifecycleConfig(plant=("block1:lora",))), images)
