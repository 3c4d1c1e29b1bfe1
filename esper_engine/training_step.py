"""One env's training and validation step: AMP, unscale-before-clip, global clipping, no syncs.

Every function returns 0-dim tensors on the env's device; the trainer synchronises once per epoch,
not once per batch (Simic's vectorized loop runs every env in lockstep).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

AMP_DTYPES: dict[str, torch.dtype | None] = {
    "off": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
# Above this mean NLL exp() is astronomically large; report infinity instead (SPEC section 3).
PERPLEXITY_CAP_NLL = 20.0


class TrainStepResult(NamedTuple):
    """Per-batch training figures, all 0-dim tensors on the device (no host sync)."""

    loss_sum: Tensor  # mean loss x count, so epoch means weight batches by their size
    correct: Tensor
    count: Tensor
    grad_norm_pre: Tensor  # global norm of host + live-seed grads before clipping (unscaled)
    grad_norm_post: Tensor  # min(pre, threshold); pre when clipping is off or pre is not finite
    clipped: Tensor  # float 0/1, so its epoch mean is the fraction of clipped steps
    skipped: Tensor  # float 0/1: fp16 overflow, no optimizer moved any weight this step


class ValStepResult(NamedTuple):
    """Per-batch validation figures, all 0-dim tensors on the device."""

    loss_sum: Tensor
    correct: Tensor
    count: Tensor


class ParallelEnvState:
    """One env's model, host and seed optimizers, GradScaler, clip threshold and CUDA stream."""

    def __init__(
        self,
        model: nn.Module,
        host_optimizer: torch.optim.Optimizer,
        *,
        seed_lr: float,
        amp: str = "off",
        clip_threshold: float | None = 1.0,
        device: torch.device | str,
        seed_momentum: float = 0.9,
    ) -> None:
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
        self.model = model
        self.host_optimizer = host_optimizer
        self.seed_optimizers: dict[str, torch.optim.Optimizer] = {}
        self.seed_lr = seed_lr
        self.seed_momentum = seed_momentum
        self.device = torch.device(device)
        self.amp_dtype = AMP_DTYPES[amp]
        # bf16 has fp32's exponent range, so only fp16 needs loss scaling.
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None
        self.clip_threshold = clip_threshold  # mutable: the trainer applies SetClipThreshold
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        # Learning rates are the base rates times one schedule factor (set once per epoch), times
        # ``lr_multiplier`` (1 unless a ``diverge`` fault is injected).
        self.lr_scale = 1.0
        self.lr_multiplier = 1.0
        for group in host_optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    @property
    def clip_enabled(self) -> bool:
        return self.clip_threshold is not None and self.clip_threshold > 0

    def add_seed_optimizer(self, slot_id: str) -> torch.optim.Optimizer:
        """Create the seed's own SGD optimizer, at the seed lr times the current schedule factor."""
        params = list(self.model.seed_parameters(slot_id))
        if not params:
            raise ValueError(f"seed in slot {slot_id!r} has no parameters to optimise")
        base_lr = self.seed_lr
        source = getattr(self.model, "seed_lr_source", None)
        if source is not None and source(slot_id) == "host":  # growth operators: host units
            base_lr = self.host_optimizer.param_groups[0]["initial_lr"]
        optimizer = torch.optim.SGD(
            params,
            lr=base_lr * self.lr_scale * self.lr_multiplier,
            momentum=self.seed_momentum,
        )
        optimizer.param_groups[0]["initial_lr"] = base_lr
        self.seed_optimizers[slot_id] = optimizer
        return optimizer

    def drop_seed_optimizer(self, slot_id: str) -> None:
        """Forget a pruned seed's optimizer (and its momentum)."""
        self.seed_optimizers.pop(slot_id, None)

    def sync_seed_optimizers(self) -> None:
        """Give every learning seed (live or fossilized) an optimizer over its current parameters;
        drop all others.

        Seed optimizers follow the lifecycle through this call alone: it creates one for a new
        seed, drops a pruned seed's, and replaces one that holds an old module's parameters.
        """
        learning = self.model.learning_slots()
        for slot_id in list(self.seed_optimizers):
            if slot_id not in learning or not self._optimizes_current_seed(slot_id):
                self.drop_seed_optimizer(slot_id)
        for slot_id in learning:
            if slot_id not in self.seed_optimizers:
                self.add_seed_optimizer(slot_id)

    def set_lr_scale(self, scale: float) -> None:
        """Every optimizer's lr = its base lr x ``scale`` (the schedule's factor for this epoch)
        x ``lr_multiplier``."""
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"lr scale must be finite and >= 0, got {scale}")
        self.lr_scale = scale
        for optimizer in (self.host_optimizer, *self.seed_optimizers.values()):
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * scale * self.lr_multiplier

    def after_rollback(self) -> None:
        """A rollback restored the weights and optimizers of the last good epoch (the governor
        dropped the pruned seeds' optimizers); the restored ones carry that epoch's lr: re-apply
        this one's."""
        self.set_lr_scale(self.lr_scale)

    def _optimizes_current_seed(self, slot_id: str) -> bool:
        held = [p for group in self.seed_optimizers[slot_id].param_groups for p in group["params"]]
        current = list(self.model.seed_parameters(slot_id))
        return len(held) == len(current) and all(a is b for a, b in zip(held, current, strict=True))


def process_train_batch(env: ParallelEnvState, x: Tensor, y: Tensor, task: Any) -> TrainStepResult:
    """One optimisation step of host and live seeds, in the order SPEC section 5 fixes."""
    with _on_env_stream(env, x, y):
        env.sync_seed_optimizers()
        optimizers = [env.host_optimizer, *env.seed_optimizers.values()]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        if not env.model.training:  # validation or attribution left it in eval mode
            env.model.train()  # (walks every module: only when needed, not per batch)
        with _autocast(env):
            logits = env.model(x)
            loss = task.loss(logits, y)
        if env.scaler is not None:
            env.scaler.scale(loss).backward()
        else:
            loss.backward()
        _drop_failed_seed_grads(env)
        # "Has grads" is decided once: it picks unscale_ + scaler.step, or a plain (no-op) step.
        seed_has_grads = {sid: _has_grads(opt) for sid, opt in env.seed_optimizers.items()}
        _unscale(env, seed_has_grads)
        pre, post, clipped = _clip(env)
        skipped = _step(env, seed_has_grads, pre)
        count = torch.full((), task.count(y), device=loss.device)
        return TrainStepResult(
            loss_sum=loss.detach().float() * count,
            correct=task.correct(logits.detach(), y),
            count=count,
            grad_norm_pre=pre,
            grad_norm_post=post,
            clipped=clipped,
            skipped=skipped,
        )


def process_val_batch(model: nn.Module, x: Tensor, y: Tensor, task: Any) -> ValStepResult:
    """Evaluate one batch in eval mode without autograd."""
    with _evaluating(model):
        logits = model(x)
        return _val_result(logits, y, task)


def process_fused_val_batch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    task: Any,
    alpha_overrides: Sequence[Mapping[str, float]],
) -> list[ValStepResult]:
    """Evaluate several alpha configurations in one fused pass: one result per configuration."""
    with _evaluating(model):
        logits = model.fused_forward(x, alpha_overrides)  # [C, B, ...]
        if logits.shape[0] != len(alpha_overrides):
            raise ValueError(
                f"fused_forward returned {logits.shape[0]} configurations, "
                f"expected {len(alpha_overrides)}"
            )
        return [_val_result(config_logits, y, task) for config_logits in logits]


def perplexity(mean_nll: float) -> float:
    """exp(mean token NLL); infinity above an NLL of 20, where the number means nothing."""
    if mean_nll > PERPLEXITY_CAP_NLL:
        return math.inf
    return math.exp(mean_nll)


# --- the steps of process_train_batch -------------------------------------------------------


def _autocast(env: ParallelEnvState) -> torch.autocast:
    return torch.autocast(
        device_type=env.device.type,
        dtype=env.amp_dtype,
        enabled=env.amp_dtype is not None,
    )


def _has_grads(optimizer: torch.optim.Optimizer) -> bool:
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


def _unscale(env: ParallelEnvState, seed_has_grads: dict[str, bool]) -> None:
    """Unscale every optimizer with grads, so clipping and the norms see true gradients."""
    if env.scaler is None:
        return
    env.scaler.unscale_(env.host_optimizer)
    for slot_id, optimizer in env.seed_optimizers.items():
        if seed_has_grads[slot_id]:
            env.scaler.unscale_(optimizer)


def _drop_failed_seed_grads(env: ParallelEnvState) -> None:
    """Zero the gradients of incubating seeds whose output this step was not finite.

    The slot replaced that output by the host's (so the host's forward stayed finite); what
    backward left in the seed's parameters is garbage (0 x NaN), and it must neither reach the
    global clip norm nor make the scaler skip the host's step. The seed fails its health gate.
    """
    for slot_id, dropped in env.model.take_dropped_seed_outputs().items():
        for p in env.model.seed_parameters(slot_id):
            if p.grad is not None:
                p.grad.masked_fill_(dropped, 0.0)  # a fill, not a product: NaN-safe


def _grad_norm(env: ParallelEnvState, params: list[nn.Parameter]) -> Tensor:
    """The global norm of host + learning-seed grads (what clip_grad_norm_ computes), from one
    norm per part; on the way each live seed learns whether its own grads were finite (no sync).
    """
    host = [p.grad for p in env.model.host_parameters() if p.grad is not None]
    norms = [get_total_norm(host)] if host else []
    live = set(env.model.live_slots())
    for slot_id in env.model.learning_slots():
        grads = [p.grad for p in env.model.seed_parameters(slot_id) if p.grad is not None]
        if not grads:
            continue
        norm = get_total_norm(grads)
        if slot_id in live:
            env.model.record_seed_grad_health(slot_id, torch.isfinite(norm))
        norms.append(norm)
    if not norms:
        device = params[0].device if params else env.device
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(norms))


def _clip(env: ParallelEnvState) -> tuple[Tensor, Tensor, Tensor]:
    """Clip host + seed grads by their global norm; return (pre, post, clipped) tensors."""
    params = list(env.model.host_parameters())
    for slot_id in env.model.learning_slots():
        params.extend(env.model.seed_parameters(slot_id))
    pre = _grad_norm(env, params)
    if not env.clip_enabled:
        return pre, pre, torch.zeros_like(pre)
    max_norm = env.clip_threshold  # a Python number: using it needs no device sync
    # clip_grad_norm_ = get_total_norm + clip_grads_with_norm_. Split so that a NaN norm scales
    # every grad by 0 like an inf norm does, instead of turning finite grads into NaN.
    clip_grads_with_norm_(params, max_norm, torch.nan_to_num(pre, nan=math.inf))
    # A non-finite norm is reported as such, never as a fake min(inf, max_norm) = max_norm.
    post = torch.where(torch.isfinite(pre), torch.clamp(pre, max=max_norm), pre)
    return pre, post, (pre > max_norm).to(pre.dtype)


def _step(env: ParallelEnvState, seed_has_grads: dict[str, bool], pre: Tensor) -> Tensor:
    """Step every optimizer, or (fp16) none when any gradient overflowed; returns skipped 0/1.

    The GradScaler alone skips only the optimizers whose own grads hold inf/NaN: a seed's
    overflow would let the host take a momentum-only step. So the global norm decides for all
    (one sync per step, fp16 only; ``scaler.step`` syncs per optimizer anyway).
    """
    scaler = env.scaler
    if scaler is None:
        env.host_optimizer.step()
        for optimizer in env.seed_optimizers.values():
            optimizer.step()
        return torch.zeros_like(pre)
    overflow = ~torch.isfinite(pre)
    if not bool(overflow):
        scaler.step(env.host_optimizer)
        for slot_id, optimizer in env.seed_optimizers.items():
            if seed_has_grads[slot_id]:
                scaler.step(optimizer)
            else:
                # scaler.step needs the inf checks that unscale_ records, and an optimizer
                # without grads records none; its plain step changes nothing.
                optimizer.step()
    scaler.update()  # reads the inf checks unscale_ recorded: the scale backs off on overflow
    return overflow.to(pre.dtype)


@contextmanager
def _on_env_stream(env: ParallelEnvState, *inputs: Tensor) -> Iterator[None]:
    """Run on the env's CUDA stream (if any), after the work that produced the inputs."""
    if env.stream is None:
        yield
        return
    env.stream.wait_stream(torch.cuda.current_stream(env.device))
    for tensor in inputs:
        # The caching allocator must not hand the inputs' memory out while this stream reads it.
        tensor.record_stream(env.stream)
    with torch.cuda.stream(env.stream):
        yield


def env_stream(env: ParallelEnvState) -> AbstractContextManager[object]:
    """The env's CUDA stream as the current stream (a no-op on CPU), e.g. to sum its results."""
    return torch.cuda.stream(env.stream) if env.stream is not None else nullcontext()


def join_env_streams(envs: Iterable[ParallelEnvState]) -> None:
    """Make the current stream wait for every env's stream (before reading what they made)."""
    for env in envs:
        if env.stream is not None:
            torch.cuda.current_stream(env.device).wait_stream(env.stream)


# --- validation -------------------------------------------------------------------------------


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and inference mode for the block; the caller's training mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _val_result(logits: Tensor, y: Tensor, task: Any) -> ValStepResult:
    count = torch.full((), task.count(y), device=logits.device)
    return ValStepResult(
        loss_sum=task.loss(logits, y).float() * count,
        correct=task.correct(logits, y),
        count=count,
    )
