"""TolariaGovernor: each detection rule at its boundary; snapshot and rollback on a plain module
and on the morphogenetic model (live seeds pruned, fossils kept)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import msgspec
import pytest
import torch
from torch import nn

from esper_engine.config import GovernorConfig
from esper_engine.contracts import (
    GovernorPanic,
    GovernorRollback,
    Initiator,
    PanicReason,
    RollbackReason,
    SeedTransition,
    decode_event,
    encode,
)
from esper_engine.governor import GovernorReport, TolariaGovernor
from esper_engine.lifecycle import SeedStage
from esper_engine.model import create_model

RGL = math.log(10)  # random-guess loss of a 10-class task
LOBOTOMY_MEAN = 0.6 * RGL  # SPEC: history mean must be below this
LOBOTOMY_TOL = 0.065 * RGL  # SPEC: loss within this of RGL


def make_governor(**kwargs) -> TolariaGovernor:
    torch.manual_seed(0)
    rgl = kwargs.pop("random_guess_loss", RGL)
    return TolariaGovernor(nn.Linear(3, 2), config=GovernorConfig(**kwargs), random_guess_loss=rgl)


def feed(governor: TolariaGovernor, losses) -> list[bool]:
    return [governor.check_vital_signs(loss) for loss in losses]


# --- NaN / Inf ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_panics_at_once_even_without_history(bad: float) -> None:
    governor = make_governor()
    assert governor.check_vital_signs(bad) is True
    panic = governor.last_panic
    assert panic is not None and panic.reason == "nan" and panic.rollback_due
    assert panic.threshold is None
    assert (governor.consecutive_panics, governor.total_panics) == (1, 1)
    assert governor.loss_history == ()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_panics_with_a_healthy_history(bad: float) -> None:
    governor = make_governor()
    assert feed(governor, [1.0, 0.9, 0.8]) == [False] * 3
    assert governor.check_vital_signs(bad) is True
    assert governor.loss_history == (1.0, 0.9, 0.8)


def test_tensor_loss_is_accepted() -> None:
    governor = make_governor()
    assert governor.check_vital_signs(torch.tensor(float("nan"))) is True


# --- lobotomy ----------------------------------------------------------------------------------


def lobotomy_check(history: list[float], loss: float) -> bool:
    governor = make_governor()
    assert feed(governor, history) == [False] * len(history)
    fired = governor.check_vital_signs(loss)
    if fired:
        assert governor.last_panic.reason == "lobotomy"
        assert governor.last_panic.threshold == RGL
    return fired


def test_lobotomy_needs_ten_history_samples() -> None:
    assert lobotomy_check([0.5] * 9, RGL) is False
    assert lobotomy_check([0.5] * 10, RGL) is True


def test_lobotomy_panics_immediately_without_consecutive_requirement() -> None:
    governor = make_governor(min_panics_before_rollback=5)
    feed(governor, [0.5] * 10)
    assert governor.check_vital_signs(RGL) is True
    assert governor.consecutive_panics == 1


def test_lobotomy_history_mean_boundary() -> None:
    below = LOBOTOMY_MEAN * (1 - 1e-9)
    above = LOBOTOMY_MEAN * (1 + 1e-9)
    assert lobotomy_check([below] * 10, RGL) is True
    assert lobotomy_check([LOBOTOMY_MEAN] * 10, RGL) is False  # strictly below is required
    assert lobotomy_check([above] * 10, RGL) is False


def test_lobotomy_mean_uses_the_whole_history_not_the_last_value() -> None:
    # The last value alone says nothing: means 0.68 (below 1.38) and 1.81 (above).
    assert lobotomy_check([0.2] * 9 + [5.0], RGL) is True
    assert lobotomy_check([2.0] * 9 + [0.1], RGL) is False


@pytest.mark.parametrize("side", [-1.0, 1.0])
def test_lobotomy_distance_boundary(side: float) -> None:
    inside = RGL + side * LOBOTOMY_TOL * (1 - 1e-6)
    outside = RGL + side * LOBOTOMY_TOL * (1 + 1e-6)
    assert lobotomy_check([0.5] * 10, inside) is True
    assert lobotomy_check([0.5] * 10, outside) is False


def test_lobotomy_tolerance_scales_with_random_guess_loss() -> None:
    rgl = math.log(256)  # a byte-level language model
    governor = TolariaGovernor(nn.Linear(2, 2), random_guess_loss=rgl)
    feed(governor, [2.0] * 10)
    assert governor.check_vital_signs(rgl + 0.3) is True  # 0.3 < 0.065 * 5.55 = 0.36


# --- divergence --------------------------------------------------------------------------------


def divergence_check(history: list[float], loss: float) -> bool:
    """True when the loss is flagged as a divergence panic (rollback not yet due)."""
    governor = make_governor()
    assert feed(governor, history) == [False] * len(history)
    assert governor.check_vital_signs(loss) is False  # first divergence panic never rolls back
    return governor.consecutive_panics == 1 and governor.last_panic.reason == "divergence"


def test_divergence_all_three_gates_pass() -> None:
    # mean 2, std 0: statistical gate 2, multiplier gate 6, absolute gate 10.
    assert divergence_check([2.0] * 5, 11.0) is True


def test_divergence_absolute_gate_boundary() -> None:
    assert divergence_check([2.0] * 5, 10.0) is False  # not above the absolute threshold
    assert divergence_check([2.0] * 5, math.nextafter(10.0, math.inf)) is True


def test_divergence_fails_when_only_the_absolute_gate_fails() -> None:
    assert divergence_check([2.0] * 5, 9.0) is False  # 9 > 2 + 6*0 and 9 > 3*2, but 9 < 10


def test_divergence_fails_when_only_the_statistical_gate_fails() -> None:
    # Alternating 1/5: mean 3, population std 2 -> statistical gate 15, multiplier gate 9.
    history = [1.0, 5.0] * 3
    assert divergence_check(history, 12.0) is False
    assert divergence_check(history, 15.0) is False  # at the statistical threshold
    assert divergence_check(history, 15.5) is True


def test_divergence_fails_when_only_the_multiplier_gate_fails() -> None:
    # mean 4, std 0: statistical gate 4, multiplier gate 12, absolute 10.
    assert divergence_check([4.0] * 5, 11.0) is False
    assert divergence_check([4.0] * 5, 12.0) is False  # at the multiplier threshold
    assert divergence_check([4.0] * 5, 12.5) is True


def test_divergence_threshold_reports_the_binding_gate() -> None:
    governor = make_governor()
    feed(governor, [1.0, 5.0] * 3)
    assert governor.divergence_threshold() == pytest.approx(15.0)
    governor.check_vital_signs(20.0)
    assert governor.last_panic.threshold == pytest.approx(15.0)


def test_a_loss_far_above_chance_panics_from_the_first_epoch() -> None:
    """issue 21: without statistics the reference is the task's: max(absolute_threshold,
    multiplier x random_guess_loss) = max(10, 3 x ln 10) = 10."""
    governor = make_governor()
    assert governor.divergence_threshold() == pytest.approx(10.0)
    assert governor.check_vital_signs(7.8e7) is False  # a divergence panic, not yet a rollback
    assert governor.last_panic.reason == "divergence" and governor.total_panics == 1
    assert governor.last_panic.threshold == pytest.approx(10.0)
    assert not governor.last_check_clean and governor.loss_history == ()
    assert governor.check_vital_signs(7.8e7) is True  # the second in a row rolls back
    governor.execute_rollback()
    assert governor.check_vital_signs(1.0) is False and governor.last_check_clean
    assert governor.check_vital_signs(1.2) is False
    assert governor.divergence_threshold() == pytest.approx(10.0)  # now the statistics' gates


def test_a_short_history_keeps_no_state_a_full_history_would_panic_at() -> None:
    """A loss above the absolute gate but under the task's reference (here 3 x 5 = 15) is no
    panic, but neither kept as good: the lowest threshold any history gives is the absolute."""
    governor = make_governor(random_guess_loss=5.0)
    assert governor.check_vital_signs(12.0) is False
    assert governor.total_panics == 0 and governor.consecutive_panics == 0
    assert not governor.last_check_clean and governor.loss_history == ()
    assert governor.check_vital_signs(9.0) is False and governor.last_check_clean
    assert governor.check_vital_signs(15.5) is False and governor.total_panics == 1


def test_rollback_after_two_consecutive_divergence_panics() -> None:
    governor = make_governor()
    feed(governor, [2.0] * 5)
    assert governor.check_vital_signs(50.0) is False
    assert governor.last_panic.rollback_due is False
    assert governor.check_vital_signs(60.0) is True
    assert governor.last_panic.rollback_due is True
    assert governor.consecutive_panics == 2


def test_min_panics_before_rollback_is_configurable() -> None:
    governor = make_governor(min_panics_before_rollback=3)
    feed(governor, [2.0] * 5)
    assert feed(governor, [50.0, 50.0, 50.0]) == [False, False, True]


def test_normal_epoch_resets_the_consecutive_count() -> None:
    governor = make_governor()
    feed(governor, [2.0] * 5)
    assert feed(governor, [50.0, 2.0, 50.0, 2.1, 50.0]) == [False] * 5
    assert governor.consecutive_panics == 1
    assert governor.total_panics == 3
    assert governor.check_vital_signs(50.0) is True


def test_panicking_losses_are_kept_out_of_the_history_and_counted() -> None:
    governor = make_governor()
    feed(governor, [2.0] * 5)
    threshold = governor.divergence_threshold()
    feed(governor, [50.0, math.nan, 40.0])
    assert governor.loss_history == (2.0,) * 5
    assert governor.divergence_threshold() == threshold  # the baseline is not poisoned
    assert governor.total_panics == 3 and not governor.last_check_clean
    governor.check_vital_signs(1.5)
    assert governor.loss_history == (2.0,) * 5 + (1.5,)
    assert governor.total_panics == 3 and governor.last_check_clean


def test_history_is_a_window() -> None:
    governor = make_governor(history_window=12)
    feed(governor, [float(i) for i in range(15)])
    assert governor.loss_history == tuple(float(i) for i in range(3, 15))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"history_window": 9},
        {"min_panics_before_rollback": 0},
        {"max_rollbacks_per_episode": 0},
        {"random_guess_loss": 0.0},
        {"death_penalty": -1.0},
    ],
)
def test_invalid_settings_are_rejected(kwargs) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        rgl = kwargs.pop("random_guess_loss", math.log(10))
        TolariaGovernor(nn.Linear(2, 2), config=GovernorConfig(**kwargs), random_guess_loss=rgl)


# --- snapshot and rollback on a plain module ---------------------------------------------------


def train_steps(model: nn.Module, optimizer, steps: int, scaler=None, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, model.in_features, generator=gen)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()


def plain_setup(scaler: bool = False):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=256.0) if scaler else None
    governor = TolariaGovernor(model, optimizer, grad_scaler, random_guess_loss=RGL)
    return model, optimizer, grad_scaler, governor


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def momentum(optimizer) -> list[torch.Tensor]:
    return [
        optimizer.state[p]["momentum_buffer"].clone() for p in optimizer.param_groups[0]["params"]
    ]


def assert_same(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


def test_snapshot_at_construction_is_restored_including_empty_optimizer_state() -> None:
    model, optimizer, _, governor = plain_setup()
    initial = clone_state(model)
    train_steps(model, optimizer, 3)
    assert optimizer.state  # momentum buffers exist now
    governor.check_vital_signs(math.nan)
    report = governor.execute_rollback()
    assert_same(model.state_dict(), initial)
    assert not optimizer.state  # no stale momentum survives
    assert report.reason is RollbackReason.NAN and report.seeds_pruned == []


def test_clean_check_takes_a_snapshot_with_weights_and_momentum() -> None:
    model, optimizer, _, governor = plain_setup()
    train_steps(model, optimizer, 3)
    assert governor.check_vital_signs(1.0) is False
    governor.snapshot()  # the owner keeps a clean epoch's state
    good, good_momentum = clone_state(model), momentum(optimizer)
    train_steps(model, optimizer, 3, seed=2)
    governor.check_vital_signs(math.inf)
    governor.execute_rollback()
    assert_same(model.state_dict(), good)
    for restored, expected in zip(momentum(optimizer), good_momentum, strict=True):
        assert torch.equal(restored, expected)


def test_panicking_check_does_not_take_a_snapshot() -> None:
    model, optimizer, _, governor = plain_setup()
    feed(governor, [2.0] * 5)
    good = clone_state(model)
    train_steps(model, optimizer, 2)
    assert governor.check_vital_signs(50.0) is False  # a panic, rollback not yet due
    train_steps(model, optimizer, 2, seed=3)
    assert governor.check_vital_signs(50.0) is True
    governor.execute_rollback()
    assert_same(model.state_dict(), good)


def test_snapshot_is_on_cpu_detached_and_independent_of_training() -> None:
    model, optimizer, _, governor = plain_setup()
    train_steps(model, optimizer, 2)
    governor.snapshot()
    weights = governor._snapshot.weights
    state = governor._snapshot.optimizer["state"]
    for tensor in [*weights.values(), *(s["momentum_buffer"] for s in state.values())]:
        assert tensor.device.type == "cpu"
        assert not tensor.requires_grad and tensor.grad_fn is None
    for key, param in model.state_dict().items():
        assert weights[key].data_ptr() != param.data_ptr()
    before = {k: v.clone() for k, v in weights.items()}
    train_steps(model, optimizer, 2, seed=4)
    assert_same(weights, before)


def test_two_rollbacks_without_a_clean_check_restore_the_same_state() -> None:
    model, optimizer, _, governor = plain_setup()
    train_steps(model, optimizer, 2)
    assert governor.check_vital_signs(1.0) is False
    governor.snapshot()  # the owner keeps a clean epoch's state
    good, good_momentum = clone_state(model), momentum(optimizer)
    for seed in (5, 6):
        train_steps(model, optimizer, 3, seed=seed)  # would write into aliased snapshot tensors
        governor.check_vital_signs(math.nan)
        governor.execute_rollback()
        assert_same(model.state_dict(), good)
        for restored, expected in zip(momentum(optimizer), good_momentum, strict=True):
            assert torch.equal(restored, expected)


def test_scaler_state_is_restored() -> None:
    model, optimizer, scaler, governor = plain_setup(scaler=True)
    train_steps(model, optimizer, 2, scaler=scaler)
    assert governor.check_vital_signs(1.0) is False
    governor.snapshot()  # the owner keeps a clean epoch's state
    good = scaler.state_dict()
    train_steps(model, optimizer, 3, scaler=scaler, seed=7)
    scaler.update(new_scale=3.0)  # the crash drove the scale somewhere else
    assert scaler.state_dict() != good
    governor.check_vital_signs(math.nan)
    governor.execute_rollback()
    assert scaler.state_dict() == good


def test_learning_rate_comes_back_with_the_optimizer_state() -> None:
    model, optimizer, _, governor = plain_setup()
    optimizer.param_groups[0]["lr"] *= 1e4
    governor.check_vital_signs(math.nan)
    governor.execute_rollback()
    assert optimizer.param_groups[0]["lr"] == 0.1


# --- reports, penalty, episode limit -----------------------------------------------------------


def test_governor_report_and_penalty() -> None:
    _, _, _, governor = plain_setup()
    feed(governor, [2.0] * 5)
    feed(governor, [50.0, 60.0])
    report = governor.execute_rollback()
    assert report == GovernorReport(
        reason=RollbackReason.DIVERGENCE,
        initiator=Initiator.GOVERNOR,
        loss_at_panic=60.0,
        threshold=10.0,
        consecutive_panics=2,
        seeds_pruned=[],
        penalty=10.0,
        episode_ended=False,
    )
    assert type(report.reason) is RollbackReason and type(report.initiator) is Initiator
    assert governor.consecutive_panics == 0
    assert (governor.total_panics, governor.rollbacks) == (2, 1)


def test_operator_rollback_has_zero_penalty_and_operator_initiator() -> None:
    _, _, _, governor = plain_setup(scaler=True)
    report = governor.execute_rollback(initiator="operator")  # the value is accepted too
    assert report.initiator is Initiator.OPERATOR
    assert report.penalty == 0.0
    assert report.reason is RollbackReason.OPERATOR
    assert report.loss_at_panic is None
    assert governor.rollbacks == 1 and governor.episode_rollbacks == 0


def test_death_penalty_is_configurable() -> None:
    governor = make_governor(death_penalty=2.5)
    governor.check_vital_signs(math.nan)
    assert governor.execute_rollback().penalty == 2.5


def test_unknown_initiator_is_rejected() -> None:
    governor = make_governor()
    with pytest.raises(ValueError, match="initiator"):
        governor.execute_rollback(initiator="policy")


def test_episode_ends_after_max_rollbacks_and_reset_episode_clears_it() -> None:
    governor = make_governor(max_rollbacks_per_episode=3)
    ended = []
    for _ in range(3):
        governor.check_vital_signs(math.nan)
        ended.append(governor.execute_rollback().episode_ended)
        ended.append(governor.execute_rollback(initiator="operator").episode_ended)
    assert ended == [False, False, False, False, True, False]
    assert governor.rollbacks == 6
    governor.reset_episode()
    governor.check_vital_signs(math.nan)
    assert governor.execute_rollback().episode_ended is False
    assert governor.rollbacks == 7


def test_reset_episode_watches_a_recreated_host_and_clears_history() -> None:
    governor = make_governor()
    feed(governor, [0.5] * 10)
    torch.manual_seed(1)
    fresh = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    governor.reset_episode(fresh, optimizer)
    assert governor.model is fresh and governor.loss_history == ()
    assert governor.check_vital_signs(RGL) is False  # a fresh host at chance is no lobotomy
    initial = clone_state(fresh)
    train_steps(fresh, optimizer, 2)
    governor.check_vital_signs(math.nan)
    governor.execute_rollback()
    assert_same(fresh.state_dict(), initial)


def test_the_report_is_the_rollback_event_and_round_trips_through_msgpack() -> None:
    # SPEC's GovernorReport is the telemetry event itself: no mirror class to copy from.
    assert GovernorReport is GovernorRollback
    _, _, _, governor = plain_setup()
    governor.check_vital_signs(math.inf)
    report = governor.execute_rollback()
    assert (report.run_id, report.env, report.epoch) == ("", None, 0)  # the trainer's to fill
    event = msgspec.structs.replace(report, run_id="r", env=2, episode=1, epoch=7, wall_time=12.5)
    decoded = decode_event(encode(event))
    assert decoded == event
    assert (decoded.env, decoded.epoch, decoded.reason) == (2, 7, RollbackReason.NAN)
    assert decoded.loss_at_panic == math.inf and decoded.penalty == 10.0


def test_the_panic_is_the_panic_event() -> None:
    governor = make_governor()
    feed(governor, [2.0] * 5)
    governor.check_vital_signs(50.0)
    assert governor.last_panic == GovernorPanic(
        reason=PanicReason.DIVERGENCE,
        loss=50.0,
        threshold=10.0,
        consecutive_panics=1,
        rollback_due=False,
    )
    assert type(governor.last_panic.reason) is PanicReason


# --- the morphogenetic model: live seeds out of the snapshot, fossils in --------------------------

CNN_TASK = SimpleNamespace(host_kind="cnn", num_classes=10, seq_len=None)


def seeded_setup():
    torch.manual_seed(0)
    model = create_model(CNN_TASK, "cpu")
    transitions: list[SeedTransition] = []
    model.on_transition = transitions.append
    optimizer = torch.optim.SGD(model.host_parameters(), lr=0.1, momentum=0.9)
    pruned: list[str] = []
    governor = TolariaGovernor(model, optimizer, on_seed_pruned=pruned.append)
    return model, governor, transitions, pruned


def fossil_setup():
    """block1 fossilized after training with its own optimizer, snapshot taken after that."""
    model, governor, _, _ = seeded_setup()
    seed_optimizers: dict[str, torch.optim.Optimizer] = {}
    governor.reset_episode(model, governor.optimizer, None, seed_optimizers)
    to_training(model, "block1")
    seed_optimizers["block1"] = torch.optim.SGD(
        model.seed_parameters("block1"), lr=0.05, momentum=0.9
    )
    train_all(model, governor.optimizer, seed_optimizers, steps=3, seed=8)
    training_to_fossil(model, "block1")
    governor.check_vital_signs(1.0)
    governor.snapshot()
    return model, governor.optimizer, seed_optimizers, governor


def train_all(model, optimizer, seed_optimizers, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (4,), generator=gen)
        for opt in (optimizer, *seed_optimizers.values()):
            opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for opt in (optimizer, *seed_optimizers.values()):
            opt.step()


def end_epochs(model, n: int) -> None:
    for _ in range(n):
        for slot_id in model.live_slots():
            model.slots[slot_id].record_seed_grad_health(True)
        model.end_epoch()


def to_training(model, slot_id: str) -> None:
    model.germinate(slot_id, "conv_light")
    end_epochs(model, 1)
    assert model.slots[slot_id].stage is SeedStage.TRAINING


def training_to_fossil(model, slot_id: str) -> None:
    end_epochs(model, 2)  # min_training_epochs
    model.advance(slot_id, blend_epochs=1)
    end_epochs(model, 1)  # BLENDING -> HOLDING at alpha 1
    model.slots[slot_id].contribution = 0.1
    model.fossilize(slot_id)


def perturb(params, seed: int) -> None:
    """Move weights as training would (seeds start as the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def seed_state(model, slot_id: str) -> dict[str, torch.Tensor]:
    prefix = f"slots.{slot_id}.seed."
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def host_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("host.")}


def test_snapshot_excludes_live_seeds_and_includes_fossils() -> None:
    model, governor, _, _ = seeded_setup()
    to_training(model, "block1")
    training_to_fossil(model, "block1")
    to_training(model, "block2")
    governor.snapshot()
    keys = governor._snapshot.weights.keys()
    assert any(k.startswith("slots.block1.seed.") for k in keys)
    assert not any(k.startswith("slots.block2.seed.") for k in keys)
    assert keys == model.state_dict().keys() - seed_state(model, "block2").keys()


def test_rollback_prunes_live_seeds_with_initiator_and_restores_strictly() -> None:
    model, governor, transitions, pruned = seeded_setup()
    good = host_state(model)
    to_training(model, "block1")
    model.germinate("block3", "depthwise")  # GERMINATED counts as live too
    perturb(model.parameters(), seed=1)
    governor.check_vital_signs(math.nan)
    report = governor.execute_rollback()
    assert report.seeds_pruned == ["block1", "block3"] and pruned == ["block1", "block3"]
    assert model.live_slots() == []
    assert [(t.slot_id, t.to_stage, t.initiator) for t in transitions[-2:]] == [
        ("block1", "PRUNED", "governor"),
        ("block3", "PRUNED", "governor"),
    ]
    assert_same(model.state_dict(), good)


def test_operator_rollback_prunes_with_operator_initiator() -> None:
    model, governor, transitions, _ = seeded_setup()
    to_training(model, "block2")
    report = governor.execute_rollback(initiator="operator")
    assert report.seeds_pruned == ["block2"] and report.penalty == 0.0
    assert (transitions[-1].to_stage, transitions[-1].initiator) == ("PRUNED", "operator")


def test_a_fossil_made_after_the_snapshot_is_an_error_the_strict_load_reports() -> None:
    # The owner snapshots after every change it keeps (the trainer: after the policy acts), so a
    # fossil the snapshot does not hold is a bug; the load says so instead of guessing weights.
    model, governor, _, _ = seeded_setup()
    to_training(model, "block1")
    governor.snapshot()
    training_to_fossil(model, "block1")
    governor.check_vital_signs(math.nan)
    with pytest.raises(RuntimeError, match="Missing key"):
        governor.execute_rollback()


def test_clean_check_does_not_snapshot_by_itself() -> None:
    model, optimizer, _, governor = plain_setup()
    initial = clone_state(model)
    train_steps(model, optimizer, 2)
    assert governor.check_vital_signs(1.0) is False and governor.last_check_clean
    governor.check_vital_signs(math.nan)
    governor.execute_rollback()
    assert_same(model.state_dict(), initial)  # the construction snapshot: none was taken since


def test_rollback_restores_a_fossils_weights_and_momentum_bit_for_bit() -> None:
    # The epoch right after a fossilization: the snapshot (taken after the policy fossilized)
    # holds the fossil and its optimizer; NaN everywhere, then a rollback brings both back.
    model, optimizer, seed_optimizers, governor = fossil_setup()
    good = {k: v.clone() for k, v in model.state_dict().items()}
    good_momentum = momentum(seed_optimizers["block1"])
    assert good_momentum  # the fossil trained: it has momentum to lose
    train_all(model, optimizer, seed_optimizers, steps=2, seed=9)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(math.nan)
    governor.check_vital_signs(math.nan)
    governor.execute_rollback()
    assert model.fossilized_slots() == ["block1"]
    assert_same(model.state_dict(), good)
    restored = momentum(seed_optimizers["block1"])
    assert len(restored) == len(good_momentum)
    for got, expected in zip(restored, good_momentum, strict=True):
        assert torch.equal(got, expected)


def test_rollback_drops_pruned_seeds_optimizers_and_keeps_the_fossils() -> None:
    model, optimizer, seed_optimizers, governor = fossil_setup()
    to_training(model, "block2")
    seed_optimizers["block2"] = torch.optim.SGD(model.seed_parameters("block2"), lr=0.1)
    governor.check_vital_signs(math.nan)
    governor.execute_rollback()
    assert set(seed_optimizers) == {"block1"}


def test_snapshot_while_training_then_pruned_then_rollback() -> None:
    model, governor, _, pruned = seeded_setup()
    to_training(model, "block1")
    governor.check_vital_signs(1.0)
    governor.snapshot()  # snapshot while block1 is TRAINING
    good = host_state(model)
    perturb(model.parameters(), seed=4)
    end_epochs(model, 2)  # the minimum prune age: 3 epochs since germination
    model.prune("block1")
    governor.check_vital_signs(math.nan)
    report = governor.execute_rollback()
    assert report.seeds_pruned == [] and pruned == []
    assert model.state_dict().keys() == governor._snapshot.weights.keys()
    assert_same(host_state(model), good)


def test_rollback_after_a_fossil_in_the_snapshot_restores_it_too() -> None:
    model, governor, _, _ = seeded_setup()
    to_training(model, "block1")
    perturb(model.parameters(), seed=5)
    training_to_fossil(model, "block1")
    assert governor.check_vital_signs(1.0) is False
    governor.snapshot()  # the owner keeps a clean epoch's state
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # the fault corrupts the fossil too
        for p in model.seed_parameters("block1"):
            p.fill_(math.nan)
    perturb(model.host_parameters(), seed=6)
    governor.check_vital_signs(math.nan)
    governor.execute_rollback()
    assert_same(model.state_dict(), good)
