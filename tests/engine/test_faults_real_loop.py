"""The safety machinery on the real training loop, driven through ``--fault`` (SPEC 11).

Each test runs ``VectorizedTrainer`` on the embedded image task with the heuristic policy. A
probe run without faults finds when the lifecycle reaches the state a fault should hit (the runs
are deterministic, and a fault changes nothing before its epoch), then the same run is repeated
with the fault scheduled there.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from esper_engine.config import CNN_RESIDUAL_SEEDS, HeuristicConfig, TrainingConfig
from esper_engine.contracts import (
    EpochSummary,
    GovernorPanic,
    GovernorRollback,
    RunFinished,
    RunStarted,
    SeedTransition,
)
from esper_engine.faults import InjectedCrash
from esper_engine.tasks import load_task
from esper_engine.telemetry import ListSink
from esper_engine.trainer import VectorizedTrainer


@pytest.fixture(scope="module")
def images():
    return load_task("synthetic-images", seed=0, scale="small")


def config(**overrides) -> TrainingConfig:
    base = dict(n_envs=1, episodes=1, epochs=10, batches_per_epoch=6, batch_size=32, val_batches=2)
    base.update(overrides)
    return TrainingConfig(**base)


class HookSink(ListSink):
    """Records events and calls ``hook(trainer, event)`` synchronously as each one passes."""

    def __init__(self, hook=None) -> None:
        super().__init__()
        self.hook = hook
        self.trainer: VectorizedTrainer | None = None

    def emit(self, event) -> None:
        super().emit(event)
        if self.hook is not None:
            self.hook(self.trainer, event)


def run(task, cfg: TrainingConfig, hook=None):
    sink = HookSink(hook)
    trainer = VectorizedTrainer(cfg, sink, run_id="fault", task=task)
    sink.trainer = trainer
    finished = trainer.run()
    assert finished.status != "crashed" or "InjectedCrash" in (finished.error or ""), finished
    return sink.events, finished


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def fossil_epoch(events) -> tuple[int, str]:
    """(0-based epoch, slot) of the run's first fossilization."""
    for e in of(events, SeedTransition):
        if e.to_stage == "FOSSILIZED":
            return e.epoch, e.slot_id
    raise AssertionError("the probe run never fossilized a seed")


def fossil_state(trainer: VectorizedTrainer, slot_id: str) -> dict:
    env = trainer.envs[0]
    optimizer = env.state.seed_optimizers[slot_id]
    return {
        "weights": copy.deepcopy(env.model.slots[slot_id].seed.state_dict()),
        "momentum": [
            optimizer.state[p]["momentum_buffer"].clone()
            for p in optimizer.param_groups[0]["params"]
        ],
        "host": copy.deepcopy(env.model.host.state_dict()),
    }


def assert_same(got: dict, want: dict) -> None:
    for key in ("weights", "host"):
        assert got[key].keys() == want[key].keys()
        for name in want[key]:
            assert torch.equal(got[key][name], want[key][name]), name
    assert len(got["momentum"]) == len(want["momentum"]) > 0
    for a, b in zip(got["momentum"], want["momentum"], strict=True):
        assert torch.equal(a, b)


def test_nan_in_the_epoch_after_a_fossilization_is_undone_once(images) -> None:
    # conv_light seeds: at this small size the default's stacked copies are not fossilized
    # within the run (stack's rollback and resume have their own tests, test_growth_real_loop).
    residual = HeuristicConfig(cnn_preference=CNN_RESIDUAL_SEEDS)
    probe, _ = run(images, config(heuristic=residual))
    epoch, slot_id = fossil_epoch(probe)
    assert epoch + 1 < 10, "the fossilization must leave an epoch to break"
    saved: dict = {}

    def hook(trainer, event) -> None:
        # The fossilization epoch's summary is emitted after the action and the snapshot.
        if isinstance(event, EpochSummary) and event.epoch == epoch:
            saved["snapshot"] = fossil_state(trainer, slot_id)
        if isinstance(event, GovernorRollback):
            saved["restored"] = fossil_state(trainer, slot_id)

    fault = f"nan:1:{epoch + 2}"  # 1-based: the epoch right after the fossilization
    events, finished = run(images, config(faults=(fault,), heuristic=residual), hook)
    assert finished.status == "completed", finished.error
    assert list(of(events, RunStarted)[0].config["faults"]) == [fault]
    rollbacks = of(events, GovernorRollback)
    assert [(r.reason, r.initiator, r.epoch) for r in rollbacks] == [("nan", "governor", epoch + 1)]
    assert rollbacks[0].seeds_pruned == [] or slot_id not in rollbacks[0].seeds_pruned
    assert_same(saved["restored"], saved["snapshot"])  # weights and momentum, bit for bit
    later = [s for s in of(events, EpochSummary) if s.epoch > epoch + 1]
    assert later and all(math.isfinite(s.val_loss) and math.isfinite(s.train_loss) for s in later)
    for summary in later:
        stage = {s.slot_id: s.stage for s in summary.slots}[slot_id]
        assert stage == "FOSSILIZED"


def test_a_diverging_incubating_seed_is_pruned_by_its_gate_while_the_host_trains_on(
    images,
) -> None:
    probe, _ = run(images, config(epochs=6))
    summaries = of(probe, EpochSummary)
    # The first epoch that trains with a seed in TRAINING: the state after the epoch before.
    epoch, slot_id = next(
        (s.epoch + 1, slot.slot_id)
        for s in summaries
        for slot in s.slots
        if slot.stage == "TRAINING"
    )
    events, finished = run(images, config(epochs=6, faults=(f"seed-nan:1:{epoch + 1}",)))
    assert finished.status == "completed", finished.error
    pruned = [
        t
        for t in of(events, SeedTransition)
        if t.slot_id == slot_id and t.from_stage == "TRAINING" and t.to_stage == "PRUNED"
    ]
    assert [(t.epoch, t.initiator) for t in pruned] == [(epoch, "gate")]
    assert of(events, GovernorRollback) == [] and of(events, GovernorPanic) == []
    host = [s for s in of(events, EpochSummary) if s.epoch >= epoch]
    assert all(math.isfinite(s.train_loss) and math.isfinite(s.val_loss) for s in host)
    # The host really trained through the faulty epoch: it is no worse than the probe's.
    faulty = next(s for s in host if s.epoch == epoch)
    clean = next(s for s in summaries if s.epoch == epoch)
    assert faulty.val_loss < 1.1 * clean.val_loss


def test_host_gradients_above_a_blended_seed_stay_within_2x_of_alpha_0(images) -> None:
    ratios: list[float] = []

    def hook(trainer, event) -> None:
        if not (isinstance(event, SeedTransition) and event.to_stage == "HOLDING"):
            return
        env = trainer.envs[0]
        model = copy.deepcopy(env.model)  # leave the run untouched
        slot_index = model.slot_ids.index(event.slot_id)
        upstream = [p for k in range(slot_index + 1) for p in _segment_params(model, k)]
        x, y = trainer.val_batches[0]

        def norm(alpha: float) -> float:
            model.zero_grad(set_to_none=True)
            with model.force_alpha(event.slot_id, alpha):
                F.cross_entropy(model(x), y).backward()
            return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in upstream])).item()

        ratios.append(norm(1.0) / norm(0.0))

    run(images, config(), hook)
    assert ratios, "no seed reached HOLDING"
    assert all(0.5 <= r <= 2.0 for r in ratios), ratios


def _segment_params(model, k: int):
    for stage in model._segments[k]:
        yield from model.host.blocks[stage].parameters()


def test_diverge_fault_raises_learning_rates_and_the_governor_rolls_back(images) -> None:
    events, finished = run(images, config(epochs=8, faults=("diverge:1:5",)))
    assert finished.status == "completed", finished.error
    panics = of(events, GovernorPanic)
    assert panics and panics[0].epoch >= 4
    assert {r.reason for r in of(events, GovernorRollback)} <= {"divergence", "nan"}
    assert of(events, GovernorRollback)


def test_crash_fault_ends_the_run_as_crashed_at_its_epoch(images) -> None:
    events, finished = run(images, config(n_envs=2, epochs=4, faults=("crash:2:3",)))
    assert finished.status == "crashed" and InjectedCrash.__name__ in finished.error
    assert "crash:2:3" in finished.error
    assert max(s.epoch for s in of(events, EpochSummary)) == 1  # epochs 1 and 2 (1-based) ran
    assert isinstance(events[-1], RunFinished)


def test_faults_fire_in_the_first_episode_only(images) -> None:
    events, finished = run(images, config(episodes=2, epochs=3, faults=("nan:1:2",)))
    assert finished.status == "completed", finished.error
    assert [(r.episode, r.epoch) for r in of(events, GovernorRollback)] == [(0, 1)]


def test_a_divergence_from_the_first_epoch_panics_and_is_never_snapshotted(images) -> None:
    """issue 21: ``--fault diverge:1:1`` gave a validation loss of 7.8e7 with no panic, and that
    state became the "last good" snapshot. A loss far above the random-guess loss panics from
    the first epoch; every snapshot holds a state whose loss no full history would panic at."""
    snapshotted: list[float] = []  # the validation loss of each state the governor keeps

    def watch_snapshots(trainer, event) -> None:
        if isinstance(event, RunStarted):
            governor = trainer.envs[0].governor
            keep = governor.snapshot

            def snapshot() -> None:
                if governor.loss_history:  # else a fresh host's initial state (no loss yet)
                    snapshotted.append(governor.loss_history[-1])  # the clean check's loss
                keep()

            governor.snapshot = snapshot

    events, finished = run(images, config(epochs=6, faults=("diverge:1:1",)), watch_snapshots)
    assert finished.status == "completed", finished.error
    panics = of(events, GovernorPanic)
    assert panics and (panics[0].episode, panics[0].epoch) == (0, 0), panics
    assert panics[0].reason == "divergence" and panics[0].loss > 10.0
    rollbacks = of(events, GovernorRollback)
    assert rollbacks and rollbacks[0].epoch == 1 and rollbacks[0].reason == "divergence"
    threshold = TrainingConfig().governor.absolute_threshold  # the lowest any history gives
    assert all(loss <= threshold for loss in snapshotted), snapshotted
