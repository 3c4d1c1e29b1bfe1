"""Fault injection in a real training loop: the governor rolls one env back, bit for bit.

Two envs train side by side on a tiny CNN host with seeds. At a scheduled epoch env A's loss is
made NaN (fp16 AMP with a GradScaler) or its learning rate is multiplied by 1e4, so the loss
diverges. Clipping stays on at 1.0: it turns the explosion from exponential into linear, which keeps
the loss finite and huge (about 1e8) for two epochs, so all three divergence gates are crossed;
without clipping the weights overflow to NaN within the epoch (the NaN path). The governor rolls
A back to the snapshot of the last clean check; env B must end exactly where it ends alone.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from esper_engine.governor import GovernorReport, TolariaGovernor
from esper_engine.model import create_model
from esper_engine.training_step import ParallelEnvState, process_train_batch, process_val_batch

CNN_TASK = SimpleNamespace(host_kind="cnn", num_classes=10, seq_len=None)
RANDOM_GUESS = math.log(10)
FAULT_EPOCH = 6  # block1 is a fossil and block2 a live TRAINING seed by then
EPOCHS = 10


class FaultyTask:
    """Cross-entropy over 10 classes whose value can be switched to NaN: the injected fault."""

    def __init__(self) -> None:
        self.broken = False

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits.float(), y)
        return loss * math.nan if self.broken else loss

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(dim=-1) == y).sum()

    def count(self, y: torch.Tensor) -> int:
        return y.numel()


def make_data() -> tuple[
    list[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]
]:
    """Ten noisy class prototypes, 8x8 images: learnable in a few epochs."""
    gen = torch.Generator().manual_seed(0)
    prototypes = torch.randn(10, 3, 8, 8, generator=gen)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=gen)
        return prototypes[y] + 0.8 * torch.randn(n, 3, 8, 8, generator=gen), y

    return [draw(32) for _ in range(3)], draw(64)


DATA = make_data()


@dataclass
class Env:
    state: ParallelEnvState
    governor: TolariaGovernor
    task: FaultyTask = field(default_factory=FaultyTask)
    val_losses: list[float] = field(default_factory=list)
    panics: list[str] = field(default_factory=list)
    report: GovernorReport | None = None
    rollback_epoch: int | None = None
    last_clean: dict | None = None  # the test's own copy of the state at the last clean check
    clean_at_rollback: dict | None = None  # what the rollback must restore
    after_rollback: dict | None = None
    optimizers_after_rollback: set[str] | None = None

    @property
    def model(self):
        return self.state.model


def make_env(seed: int, amp: str) -> Env:
    torch.manual_seed(seed)
    model = create_model(CNN_TASK, "cpu", widths=(4, 8, 16))  # learns the prototypes quickly
    optimizer = torch.optim.SGD(model.host_parameters(), lr=0.1, momentum=0.9)
    state = ParallelEnvState(
        model, optimizer, seed_lr=0.1, amp=amp, clip_threshold=1.0, device="cpu"
    )
    governor = TolariaGovernor(
        model,
        optimizer,
        state.scaler,
        random_guess_loss=RANDOM_GUESS,
        on_seed_pruned=state.drop_seed_optimizer,
        seed_optimizers=state.seed_optimizers,
    )
    return Env(state, governor)


def copy_state(env: Env) -> dict:
    return {
        # Live seeds are not part of a known good state: a rollback prunes them.
        "weights": {
            k: v.clone()
            for k, v in env.model.state_dict().items()
            if not k.startswith(tuple(env.model.live_seed_key_prefixes()))
        },
        "optimizer": copy.deepcopy(env.state.host_optimizer.state_dict()),
        "scaler": env.state.scaler.state_dict() if env.state.scaler is not None else None,
        "fossil_optimizers": {
            sid: copy.deepcopy(env.state.seed_optimizers[sid].state_dict())
            for sid in env.model.fossilized_slots()
        },
    }


def act(env: Env, epoch: int, acting: bool) -> None:
    """A fixed policy: block1 grows into a fossil, then block2 is germinated and left training.
    Like the trainer, it leaves a panicking env alone (``acting`` False)."""
    model = env.model
    torch.manual_seed(100 + epoch)  # seed weights must not depend on what other envs drew
    if not acting:
        pass
    elif epoch == 0:
        model.germinate("block1", "conv_light")
    elif epoch == 3:
        model.advance("block1", blend_epochs=1)
    elif epoch == 4:
        model.slots["block1"].contribution = 0.1
        model.fossilize("block1")
    elif epoch == 5:
        model.germinate("block2", "conv_light")
    model.end_epoch()


def run_epoch(env: Env, epoch: int, fault: str | None) -> None:
    """Train, validate, govern, act: the trainer's epoch in miniature."""
    if fault == "lr" and not env.panics:
        for group in env.state.host_optimizer.param_groups:
            group["lr"] *= 1e4  # stays until the rollback restores the optimizer state
    train_batches, (val_x, val_y) = DATA
    for batch, (x, y) in enumerate(train_batches):
        env.task.broken = fault == "nan" and batch >= 1  # batch 0 still moves weights, momentum
        process_train_batch(env.state, x, y, env.task)
    val = process_val_batch(env.model, val_x, val_y, env.task)
    env.task.broken = False
    loss = float(val.loss_sum / val.count)
    env.val_losses.append(loss)
    rollback_due = env.governor.check_vital_signs(loss)
    if env.governor.consecutive_panics:
        env.panics.append(env.governor.last_panic.reason)
    if rollback_due:
        env.report = env.governor.execute_rollback()
        env.rollback_epoch = epoch
        env.after_rollback = copy_state(env)
        env.clean_at_rollback = env.last_clean
        env.optimizers_after_rollback = set(env.state.seed_optimizers)
    clean = env.governor.last_check_clean
    act(env, epoch, acting=clean)
    if clean:  # the trainer's order: the snapshot follows the action
        env.governor.snapshot()
        env.last_clean = copy_state(env)


def train(envs: list[Env], fault: str | None = None, faulty: Env | None = None) -> None:
    """Every env in lockstep; the fault hits `faulty` from FAULT_EPOCH until its rollback."""
    for epoch in range(EPOCHS):
        for env in envs:
            hit = env is faulty and epoch >= FAULT_EPOCH and env.report is None
            run_epoch(env, epoch, fault if hit else None)


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


def assert_same_state(actual: dict, expected: dict) -> None:
    """Weights, every momentum buffer, param groups (learning rate) and scaler, bit for bit."""
    assert_same_tensors(actual["weights"], expected["weights"])
    got, want = actual["optimizer"], expected["optimizer"]
    assert got["param_groups"] == want["param_groups"]
    assert got["state"].keys() == want["state"].keys()
    assert len(want["state"]) == len(want["param_groups"][0]["params"])  # every buffer exists
    for index, buffers in want["state"].items():
        assert_same_tensors(got["state"][index], buffers)
    assert actual["scaler"] == expected["scaler"]
    assert actual["fossil_optimizers"].keys() == expected["fossil_optimizers"].keys()
    for sid, want_opt in expected["fossil_optimizers"].items():
        got_opt = actual["fossil_optimizers"][sid]
        assert got_opt["param_groups"] == want_opt["param_groups"]
        for index, buffers in want_opt["state"].items():
            assert_same_tensors(got_opt["state"][index], buffers)


@pytest.mark.parametrize(
    ("fault", "amp", "reasons"),
    [("nan", "fp16", ["nan"]), ("lr", "off", ["divergence", "divergence"])],
)
def test_fault_is_rolled_back_bit_for_bit_and_training_recovers(fault, amp, reasons) -> None:
    faulty, neighbour = make_env(1, amp), make_env(2, amp)
    train([faulty, neighbour], fault, faulty)

    assert faulty.panics == reasons
    report = faulty.report
    assert report is not None and report.reason == reasons[-1]
    assert report.initiator == "governor" and report.penalty == 10.0
    assert report.seeds_pruned == ["block2"]
    if fault == "lr":  # the loss really crossed all three gates, twice
        assert report.loss_at_panic > report.threshold >= 10.0
    # Right after the rollback: the state of the last clean check, bit for bit, fossil included.
    assert any(k.startswith("slots.block1.seed.") for k in faulty.clean_at_rollback["weights"])
    assert_same_state(faulty.after_rollback, faulty.clean_at_rollback)
    assert "block2" not in faulty.optimizers_after_rollback
    assert faulty.model.fossilized_slots() == ["block1"]
    assert faulty.model.live_slots() == []
    assert not any(k.startswith("slots.block2.") for k in faulty.after_rollback["weights"])
    # Training goes on, back at the pre-fault loss level.
    pre_fault = faulty.val_losses[FAULT_EPOCH - 1]
    assert pre_fault < 0.6 * RANDOM_GUESS  # the run had learned something worth keeping
    assert min(faulty.val_losses[faulty.rollback_epoch + 1 :]) <= pre_fault * 1.05
    assert faulty.governor.total_panics == len(reasons) and faulty.governor.rollbacks == 1
    # The env alongside is untouched: it ends exactly where it ends when trained alone.
    alone = make_env(2, amp)
    train([alone])
    assert neighbour.panics == [] and neighbour.governor.rollbacks == 0
    assert neighbour.val_losses == alone.val_losses
    assert_same_state(copy_state(neighbour), copy_state(alone))
