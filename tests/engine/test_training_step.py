from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper_engine import training_step
from esper_engine.lifecycle import SeedStage
from esper_engine.model import create_model
from esper_engine.training_step import (
    ParallelEnvState,
    TrainStepResult,
    perplexity,
    process_fused_val_batch,
    process_train_batch,
    process_val_batch,
)

IN, OUT, BATCH = 6, 4, 8


class StandInModel(nn.Module):
    """A host Linear plus seed Linears added to its output; `silent` seeds stay out of forward."""

    def __init__(self, seed: int = 0, silent: tuple[str, ...] = ()) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.host = nn.Linear(IN, OUT)
        self.seeds = nn.ModuleDict({"s0": nn.Linear(IN, OUT), "s1": nn.Linear(IN, OUT)})
        self.live = ["s0", "s1"]
        self.fossils: list[str] = []  # fully on and still learning, like live seeds here
        self.silent = set(silent)
        self.modes_seen: list[bool] = []
        self.logits_dtypes: list[torch.dtype] = []
        self.grad_health: dict[str, list[bool]] = {}

    def host_parameters(self):
        return self.host.parameters()

    def seed_parameters(self, slot_id: str):
        return self.seeds[slot_id].parameters()

    def live_slots(self) -> list[str]:
        return list(self.live)

    def learning_slots(self) -> list[str]:
        return [*self.live, *self.fossils]

    def take_dropped_seed_outputs(self) -> dict[str, torch.Tensor]:
        return {}  # stand-in seeds have no straight-through incubation

    def record_seed_grad_health(self, slot_id: str, finite: torch.Tensor) -> None:
        self.grad_health.setdefault(slot_id, []).append(bool(finite))

    def forward(self, x: torch.Tensor, alphas: dict[str, float] | None = None) -> torch.Tensor:
        self.modes_seen.append(self.training)
        out = self.host(x)
        for slot_id in [*self.live, *self.fossils]:
            if slot_id not in self.silent:
                alpha = 1.0 if alphas is None else alphas.get(slot_id, 0.0)
                out = out + alpha * self.seeds[slot_id](x)
        self.logits_dtypes.append(out.dtype)
        return out

    def fused_forward(self, x: torch.Tensor, alpha_overrides) -> torch.Tensor:
        return torch.stack([self.forward(x, dict(alphas)) for alphas in alpha_overrides])


TASK = SimpleNamespace(
    loss=lambda logits, y: F.cross_entropy(logits, y),
    correct=lambda logits, y: (logits.argmax(dim=-1) == y).sum(),
    count=lambda y: y.numel(),
)


def batch(seed: int = 1, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, IN, generator=gen) * scale
    y = torch.randint(0, OUT, (BATCH,), generator=gen)
    return x, y


def make_env(
    model: nn.Module, amp: str = "off", clip: float | None = 1.0, init_scale: float | None = None
) -> ParallelEnvState:
    host_opt = torch.optim.SGD(model.host_parameters(), lr=0.1, momentum=0.9)
    env = ParallelEnvState(
        model, host_opt, seed_lr=0.05, amp=amp, clip_threshold=clip, device="cpu"
    )
    if init_scale is not None:  # the default 2**16 overflows fp16 on the large test batches
        env.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    for slot_id in model.live_slots():
        env.add_seed_optimizer(slot_id)
    return env


def raw_grads(
    model: StandInModel, x, y, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Grads of a copy of the model from a plain backward (autocast with `dtype` if given)."""
    ref = copy.deepcopy(model)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = TASK.loss(ref(x), y)
    loss.backward()
    return {name: p.grad.clone() for name, p in ref.named_parameters() if p.grad is not None}


def tracked_norm(model: StandInModel) -> torch.Tensor:
    params = list(model.host_parameters())
    for slot_id in model.live_slots():
        params.extend(model.seed_parameters(slot_id))
    return torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in params if p.grad is not None])
    )


def snapshot(env: ParallelEnvState) -> tuple[dict, list]:
    params = {n: p.detach().clone() for n, p in env.model.named_parameters()}
    buffers = [
        state["momentum_buffer"].clone()
        for opt in [env.host_optimizer, *env.seed_optimizers.values()]
        for state in opt.state.values()
    ]
    return params, buffers


# --- ParallelEnvState ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amp", "dtype", "has_scaler"),
    [("off", None, False), ("bf16", torch.bfloat16, False), ("fp16", torch.float16, True)],
)
def test_env_state_amp_settings(amp, dtype, has_scaler):
    env = make_env(StandInModel(), amp=amp)
    assert env.amp_dtype == dtype
    assert env.scaler.is_enabled() == has_scaler
    assert env.stream is None  # CPU: no CUDA stream
    assert env.device == torch.device("cpu")


def test_env_state_rejects_unknown_amp():
    model = StandInModel()
    with pytest.raises(ValueError, match="fp8"):
        ParallelEnvState(
            model,
            torch.optim.SGD(model.host_parameters(), lr=0.1),
            seed_lr=0.1,
            amp="fp8",
            device="cpu",
        )


def test_seed_optimizer_is_sgd_with_momentum_over_the_seed():
    model = StandInModel()
    env = make_env(model)
    opt = env.seed_optimizers["s0"]
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["params"] == list(model.seeds["s0"].parameters())
    env.drop_seed_optimizer("s0")
    assert list(env.seed_optimizers) == ["s1"]


def test_step_keeps_seed_optimizers_in_line_with_live_seeds():
    model = StandInModel()
    env = make_env(model)
    del env.seed_optimizers["s1"]  # a missed add_seed_optimizer
    model.live = ["s1"]  # s0 pruned without drop_seed_optimizer
    process_train_batch(env, *batch(), TASK)
    assert list(env.seed_optimizers) == ["s1"]
    model.live = ["s0", "s1"]
    model.seeds["s0"] = nn.Linear(IN, OUT)  # a new seed in the same slot
    process_train_batch(env, *batch(), TASK)
    assert env.seed_optimizers["s0"].param_groups[0]["params"][0] is model.seeds["s0"].weight


def test_fossilized_seed_keeps_its_optimizer_and_learns():
    model = StandInModel()
    env = make_env(model)
    model.live, model.fossils = ["s0"], ["s1"]  # s1 became part of the host
    optimizer = env.seed_optimizers["s1"]
    before = model.seeds["s1"].weight.detach().clone()
    process_train_batch(env, *batch(), TASK)
    assert env.seed_optimizers["s1"] is optimizer  # momentum carries on
    assert not torch.equal(model.seeds["s1"].weight, before)
    model.fossils = []  # gone (e.g. the host was re-created): its optimizer goes too
    process_train_batch(env, *batch(), TASK)
    assert list(env.seed_optimizers) == ["s0"]


def test_lr_scale_applies_to_every_optimizer_and_to_seeds_created_later():
    model = StandInModel()
    env = make_env(model)
    host_lr = env.host_optimizer.param_groups[0]["lr"]
    env.set_lr_scale(0.25)
    assert env.host_optimizer.param_groups[0]["lr"] == pytest.approx(0.25 * host_lr)
    for optimizer in env.seed_optimizers.values():
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25 * env.seed_lr)
    env.drop_seed_optimizer("s0")
    env.add_seed_optimizer("s0")  # a seed germinated mid-episode starts on the schedule
    assert env.seed_optimizers["s0"].param_groups[0]["lr"] == pytest.approx(0.25 * env.seed_lr)
    env.set_lr_scale(1.0)  # scales are not compounded: always relative to the base lr
    assert env.host_optimizer.param_groups[0]["lr"] == pytest.approx(host_lr)
    with pytest.raises(ValueError, match="lr scale"):
        env.set_lr_scale(float("nan"))


def test_after_rollback_reapplies_the_epoch_lr_to_every_optimizer():
    # The governor restored the host's and the fossils' optimizer state (with the snapshot
    # epoch's lr) and dropped the pruned seeds' optimizers; the current epoch's lr comes back.
    model = StandInModel()
    env = make_env(model)
    host_lr = env.host_optimizer.param_groups[0]["lr"]
    env.set_lr_scale(0.5)
    snapshot = copy.deepcopy(env.host_optimizer.state_dict())
    seed_snapshot = copy.deepcopy(env.seed_optimizers["s0"].state_dict())
    env.set_lr_scale(0.1)
    env.host_optimizer.load_state_dict(snapshot)  # what a governor rollback does
    env.seed_optimizers["s0"].load_state_dict(seed_snapshot)
    del env.seed_optimizers["s1"]
    env.after_rollback()
    assert env.host_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * host_lr)
    assert env.seed_optimizers["s0"].param_groups[0]["lr"] == pytest.approx(0.1 * env.seed_lr)
    process_train_batch(env, *batch(), TASK)  # a fresh optimizer for s1, on the current schedule
    assert env.seed_optimizers["s1"].param_groups[0]["lr"] == pytest.approx(0.1 * env.seed_lr)


# --- process_train_batch ------------------------------------------------------------------------


def test_step_returns_tensors_matching_the_batch():
    model = StandInModel()
    env = make_env(model, clip=None)
    x, y = batch()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        logits = ref(x)
    result = process_train_batch(env, x, y, TASK)
    assert isinstance(result, TrainStepResult)
    for value in result:
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and value.device.type == "cpu"
    assert result.count.item() == BATCH
    assert result.correct.item() == TASK.correct(logits, y).item()
    assert result.loss_sum.item() == pytest.approx(TASK.loss(logits, y).item() * BATCH, rel=1e-6)


def test_fp16_step_unscales_each_optimizer_with_grads_before_clipping(monkeypatch):
    model = StandInModel(silent=("s1",))
    env = make_env(model, amp="fp16", init_scale=2.0**8)  # no overflow: every optimizer steps
    host_opt, s0_opt, s1_opt = (
        env.host_optimizer,
        env.seed_optimizers["s0"],
        env.seed_optimizers["s1"],
    )
    names = {id(host_opt): "host", id(s0_opt): "s0", id(s1_opt): "s1"}
    calls: list[str] = []

    def record(label, fn, with_opt=True):
        def wrapper(*args, **kwargs):
            calls.append(f"{label}:{names[id(args[0])]}" if with_opt else label)
            return fn(*args, **kwargs)

        return wrapper

    scaler = env.scaler
    monkeypatch.setattr(scaler, "unscale_", record("unscale", scaler.unscale_))
    monkeypatch.setattr(scaler, "step", record("scaler.step", scaler.step))
    monkeypatch.setattr(scaler, "update", record("update", scaler.update, with_opt=False))
    monkeypatch.setattr(
        training_step,
        "_scale_grads",
        record("clip", training_step._scale_grads, with_opt=False),
    )
    plain_step = s1_opt.step
    monkeypatch.setattr(s1_opt, "step", lambda *a, **k: (calls.append("plain:s1"), plain_step())[1])

    process_train_batch(env, *batch(scale=50.0), TASK)
    assert calls == [
        "unscale:host",
        "unscale:s0",
        "clip",
        "scaler.step:host",
        "scaler.step:s0",
        "plain:s1",
        "update",
    ]


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_post_clip_norm_never_exceeds_the_threshold(amp):
    model = StandInModel()
    env = make_env(model, amp=amp, clip=0.05, init_scale=2.0**8)
    for threshold in (0.05, 0.3):  # the trainer may change it between batches
        env.clip_threshold = threshold
        result = process_train_batch(env, *batch(scale=20.0), TASK)
        after = tracked_norm(model)
        assert after.item() <= threshold * (1 + 1e-5)
        assert result.grad_norm_pre.item() > threshold  # the batch really needed clipping
        assert result.grad_norm_post.item() == pytest.approx(threshold)
        assert result.clipped.item() == 1.0
        assert after.item() == pytest.approx(result.grad_norm_post.item(), rel=1e-4)


def test_small_gradients_are_not_clipped():
    model = StandInModel()
    env = make_env(model, clip=1e6)
    x, y = batch()
    expected = raw_grads(model, x, y)
    result = process_train_batch(env, x, y, TASK)
    assert result.clipped.item() == 0.0
    assert result.grad_norm_post.item() == result.grad_norm_pre.item()
    assert result.grad_norm_pre.item() == pytest.approx(tracked_norm(model).item(), rel=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name])


def test_unscaled_gradients_match_gradients_without_scaling():
    model = StandInModel()
    x, y = batch()
    plain_fp32 = raw_grads(model, x, y)
    same_autocast = raw_grads(model, x, y, dtype=torch.float16)
    env = make_env(model, amp="fp16", clip=1e6, init_scale=2.0**10)  # clip on, never triggered
    result = process_train_batch(env, x, y, TASK)
    assert env.scaler.get_scale() == 2.0**10  # no inf: the scale stays (growth needs 2000 steps)
    for name, p in model.named_parameters():
        # Scaling by a power of two is exact, so unscaled grads equal the unscaled backward's;
        # fp16 autocast keeps them within fp16 precision of the fp32 grads.
        torch.testing.assert_close(p.grad, same_autocast[name], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(p.grad, plain_fp32[name], rtol=1e-2, atol=1e-3)
    assert result.grad_norm_pre.item() == pytest.approx(tracked_norm(model).item(), rel=1e-6)


def test_inf_gradient_skips_the_step_and_lowers_the_scale():
    model = StandInModel()
    env = make_env(model, amp="fp16")
    process_train_batch(env, *batch(seed=1), TASK)  # a clean step: momentum buffers exist
    params, buffers = snapshot(env)
    scale = env.scaler.get_scale()
    x, y = batch(seed=2)
    x[0, 0] = math.inf
    result = process_train_batch(env, x, y, TASK)
    assert not torch.isfinite(result.grad_norm_pre)
    after_params, after_buffers = snapshot(env)
    for name, value in params.items():
        assert torch.equal(after_params[name], value), name
    assert len(buffers) == len(after_buffers) > 0
    for before, after in zip(buffers, after_buffers, strict=True):
        assert torch.equal(before, after)
    assert env.scaler.get_scale() < scale


def test_nan_in_one_seed_does_not_poison_the_host():
    model = StandInModel()
    env = make_env(model, amp="fp16", init_scale=2.0**8)
    model.seeds["s0"].weight.register_hook(lambda grad: torch.full_like(grad, math.nan))
    seed_before = model.seeds["s0"].weight.detach().clone()
    scale = env.scaler.get_scale()
    process_train_batch(env, *batch(scale=20.0), TASK)
    for p in model.host_parameters():
        assert torch.isfinite(p).all()
    assert torch.equal(model.seeds["s0"].weight, seed_before)  # its step was skipped
    assert env.scaler.get_scale() < scale


def test_an_overflow_in_one_seed_means_no_step_at_all():
    # The scaler alone skips only the seed's optimizer; the host then took a momentum-only step.
    model = StandInModel()
    env = make_env(model, amp="fp16", init_scale=2.0**8)
    first = process_train_batch(env, *batch(seed=1), TASK)  # clean: momentum buffers exist
    assert first.skipped.item() == 0.0
    params, buffers = snapshot(env)
    model.seeds["s0"].weight.register_hook(lambda grad: torch.full_like(grad, math.inf))
    result = process_train_batch(env, *batch(seed=2), TASK)
    assert result.skipped.item() == 1.0
    after_params, after_buffers = snapshot(env)
    for name, value in params.items():
        assert torch.equal(after_params[name], value), name
    for before, after in zip(buffers, after_buffers, strict=True):
        assert torch.equal(before, after)
    # The norms say so: never a fake post-clip min(inf, 1.0) = 1.0.
    assert not torch.isfinite(result.grad_norm_pre)
    assert not torch.isfinite(result.grad_norm_post)


def test_without_a_scaler_no_step_is_reported_skipped():
    model = StandInModel()
    env = make_env(model)
    assert process_train_batch(env, *batch(), TASK).skipped.item() == 0.0


def test_seed_gradient_health_is_recorded_per_step_without_a_sync():
    model = StandInModel()
    env = make_env(model)
    model.seeds["s1"].weight.register_hook(lambda grad: torch.full_like(grad, math.nan))
    process_train_batch(env, *batch(), TASK)
    assert model.grad_health == {"s0": [True], "s1": [False]}


@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_seed_optimizer_without_gradients_steps_plainly(amp):
    model = StandInModel(silent=("s1",))
    env = make_env(model, amp=amp)
    silent_before = model.seeds["s1"].weight.detach().clone()
    host_before = model.host.weight.detach().clone()
    for seed in (1, 2):
        result = process_train_batch(env, *batch(seed=seed), TASK)
    assert torch.isfinite(result.grad_norm_pre)
    assert model.seeds["s1"].weight.grad is None
    assert torch.equal(model.seeds["s1"].weight, silent_before)
    assert not torch.equal(model.host.weight, host_before)
    assert env.seed_optimizers["s1"].state == {}  # no momentum for a seed that never had grads
    if env.scaler.is_enabled():
        assert env.scaler.get_scale() == 2.0**16  # nothing was mistaken for an overflow


@pytest.mark.parametrize("threshold", [None, 0.0])
@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_disabled_clipping_leaves_gradients_unmodified(threshold, amp):
    model = StandInModel()
    x, y = batch(scale=20.0)
    dtype = torch.float16 if amp == "fp16" else None
    expected = raw_grads(model, x, y, dtype=dtype)
    env = make_env(model, amp=amp, clip=threshold, init_scale=2.0**8)
    result = process_train_batch(env, x, y, TASK)
    assert result.grad_norm_pre.item() > 1.0  # the default threshold would have clipped this
    assert result.grad_norm_post.item() == result.grad_norm_pre.item()
    assert result.clipped.item() == 0.0
    assert result.grad_norm_pre.item() == pytest.approx(tracked_norm(model).item(), rel=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-6, atol=1e-7)


def test_bf16_runs_under_autocast_without_a_scaler():
    model = StandInModel()
    env = make_env(model, amp="bf16")
    before = model.host.weight.detach().clone()
    result = process_train_batch(env, *batch(), TASK)
    assert not env.scaler.is_enabled()
    assert model.logits_dtypes == [torch.bfloat16]
    assert result.loss_sum.dtype == torch.float32 and torch.isfinite(result.loss_sum)
    assert model.host.weight.dtype == torch.float32
    assert not torch.equal(model.host.weight, before)


def test_training_step_puts_the_model_in_training_mode():
    model = StandInModel()
    env = make_env(model)
    model.eval()
    process_train_batch(env, *batch(), TASK)
    assert model.modes_seen == [True]


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("was_training", [True, False])
def test_val_batch_runs_in_eval_and_inference_mode_then_restores(was_training):
    model = StandInModel()
    model.train(was_training)
    x, y = batch()
    with torch.no_grad():
        logits = model(x)
    model.modes_seen.clear()
    result = process_val_batch(model, x, y, TASK)
    assert model.modes_seen == [False]
    assert model.training is was_training
    assert all(value.is_inference() for value in result)
    assert result.count.item() == BATCH
    assert result.correct.item() == TASK.correct(logits, y).item()
    assert result.loss_sum.item() == pytest.approx(TASK.loss(logits, y).item() * BATCH, rel=1e-6)


def test_fused_val_batch_gives_one_result_per_configuration():
    model = StandInModel()
    x, y = batch()
    configs = [{}, {"s0": 1.0}, {"s0": 0.5, "s1": 1.0}]
    results = process_fused_val_batch(model, x, y, TASK, configs)
    assert len(results) == len(configs)
    assert model.training is True
    for config, result in zip(configs, results, strict=True):
        with torch.no_grad():
            logits = model(x, config)
        assert result.count.item() == BATCH
        assert result.correct.item() == TASK.correct(logits, y).item()
        assert result.loss_sum.item() == pytest.approx(
            TASK.loss(logits, y).item() * BATCH, rel=1e-6
        )
    assert results[0].loss_sum.item() != results[2].loss_sum.item()


# --- perplexity ---------------------------------------------------------------------------------


def test_perplexity_is_exp_of_the_nll_and_infinite_above_20():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(256)) == pytest.approx(256.0)
    assert perplexity(20.0) == pytest.approx(math.exp(20.0))
    assert perplexity(20.001) == math.inf
    assert perplexity(1e9) == math.inf


# --- with the real model -------------------------------------------------------------------------


def test_real_cnn_with_a_training_seed_clips_host_and_seed_together():
    task = SimpleNamespace(host_kind="cnn", num_classes=10, seq_len=None, **vars(TASK))
    torch.manual_seed(0)
    model = create_model(task, "cpu")
    model.germinate("block1", "conv_light")
    model.end_epoch()  # the gate moves GERMINATED -> TRAINING
    assert model.slots["block1"].stage is SeedStage.TRAINING
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen)

    ref = copy.deepcopy(model)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = task.loss(ref(x), y)
    loss.backward()
    host_norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in ref.host_parameters() if p.grad is not None])
    )
    seed_grads = [p.grad for p in ref.seed_parameters("block1") if p.grad is not None]
    assert seed_grads and any(g.abs().sum() > 0 for g in seed_grads)  # STE feeds the seed
    full_norm = torch.linalg.vector_norm(torch.stack([host_norm, *(g.norm() for g in seed_grads)]))
    assert full_norm > host_norm > 0.05

    host_opt = torch.optim.SGD(model.host_parameters(), lr=0.1, momentum=0.9)
    env = ParallelEnvState(
        model, host_opt, seed_lr=0.1, amp="fp16", clip_threshold=0.05, device="cpu"
    )
    env.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    env.add_seed_optimizer("block1")
    seed_before = [p.detach().clone() for p in model.seed_parameters("block1")]
    host_before = [p.detach().clone() for p in model.host_parameters()]
    result = process_train_batch(env, x, y, task)

    assert result.grad_norm_pre.item() == pytest.approx(full_norm.item(), rel=1e-4)
    assert result.grad_norm_post.item() == pytest.approx(0.05)
    assert result.clipped.item() == 1.0
    assert tracked_norm(model).item() <= 0.05 * (1 + 1e-5)
    assert env.scaler.get_scale() == 2.0**8  # no overflow: both optimizers really stepped
    for before, params in (
        (seed_before, model.seed_parameters("block1")),
        (host_before, model.host_parameters()),
    ):
        assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
