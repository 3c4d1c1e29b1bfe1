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
from torch.utils._foreach_utils import _has_foreach_support

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


class StepParameters(NamedTuple):
    """What every training step walks, built once per seed transition (not once per step).

    Rebuilding them from ``nn.Module.parameters()`` every step, and regrouping the grads by
    device and dtype in every clip, was a large share of a tiny host's per-step Python (issue 22).
    """

    key: tuple[object, ...]  # the state it was built for (``ParallelEnvState._parameters_key``)
    optimizers: tuple[torch.optim.Optimizer, ...]  # host first, then each seed's
    params: tuple[nn.Parameter, ...]  # every optimizer's parameters: their grads are reset
    # The clip norm's parts in its summing order: the host's parameters, then each learning
    # seed's, with the slot id of a live seed (its grad health is recorded) or None.
    parts: tuple[tuple[str | None, tuple[nn.Parameter, ...]], ...]
    clip_params: tuple[nn.Parameter, ...]  # the parts' parameters, in order
    foreach: bool  # one device and dtype that the foreach kernels support: no regrouping


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
        # bf16 has fp32's exponent range, so only fp16 needs loss scaling; disabled, the scaler's
        # scale/unscale_/step/update are the plain operations (nanoGPT's idiom).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self._step_parameters: StepParameters | None = None
        self.clip_threshold = clip_threshold  # mutable: the trainer applies SetClipThreshold
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        # Learning rates are the base rates times one schedule factor (set once per epoch), times
        # ``lr_multiplier`` (1 unless a ``diverge`` fault is injected).
        self.lr_scale = 1.0
        self.lr_multiplier = 1.0
        self.operator_lr_scale = 1.0  # the operator's SetLrScale, kept across episodes
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
            lr=base_lr * self.lr_scale * self.lr_multiplier * self.operator_lr_scale,
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
        x ``lr_multiplier`` x ``operator_lr_scale``."""
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"lr scale must be finite and >= 0, got {scale}")
        self.lr_scale = scale
        for optimizer in (self.host_optimizer, *self.seed_optimizers.values()):
            for group in optimizer.param_groups:
                factor = scale * self.lr_multiplier * self.operator_lr_scale
                group["lr"] = group["initial_lr"] * factor

    def after_rollback(self) -> None:
        """A rollback restored the weights and optimizers of the last good epoch (the governor
        dropped the pruned seeds' optimizers); the restored ones carry that epoch's lr: re-apply
        this one's."""
        self.forget_step_parameters()
        self.set_lr_scale(self.lr_scale)

    def step_parameters(self) -> StepParameters:
        """The optimizers and parameter lists of this step: kept while the seeds stay as they
        were, rebuilt (with ``sync_seed_optimizers``) after any seed transition."""
        key = self._parameters_key()
        cached = self._step_parameters
        if cached is not None and cached.key == key:
            return cached
        self.sync_seed_optimizers()
        self._step_parameters = self._build_step_parameters(self._parameters_key())
        return self._step_parameters

    def forget_step_parameters(self) -> None:
        """Rebuild the step's lists at the next step: call after replacing a module or an
        optimizer outside the lifecycle (a rollback, a checkpoint load)."""
        self._step_parameters = None

    def _parameters_key(self) -> tuple[object, ...]:
        """Changes with every seed transition: a germinated, pruned or fossilized seed moves a
        slot into or out of the learning or live slots (a pruned slot is embargoed for at least
        an epoch, so a new seed never takes its place unseen). The optimizers are compared by
        identity, so a replaced host optimizer or a dropped seed optimizer is seen too."""
        model = self.model
        return (
            self.host_optimizer,
            tuple(self.seed_optimizers.values()),
            tuple(model.learning_slots()),
            tuple(model.live_slots()),
        )

    def _build_step_parameters(self, key: tuple[object, ...]) -> StepParameters:
        model = self.model
        optimizers = (self.host_optimizer, *self.seed_optimizers.values())
        live = set(model.live_slots())
        parts: list[tuple[str | None, tuple[nn.Parameter, ...]]] = [
            (None, tuple(model.host_parameters()))
        ]
        for slot_id in model.learning_slots():
            parts.append(
                (slot_id if slot_id in live else None, tuple(model.seed_parameters(slot_id)))
            )
        clip_params = tuple(p for _, params in parts for p in params)
        kinds = {(p.device, p.dtype) for p in clip_params}
        # The grads are plain tensors, so the device alone decides what clip_grad_norm_ would.
        foreach = len(kinds) == 1 and _has_foreach_support([], clip_params[0].device)
        return StepParameters(
            key=key,
            optimizers=optimizers,
            params=tuple(p for opt in optimizers for g in opt.param_groups for p in g["params"]),
            parts=tuple(parts),
            clip_params=clip_params,
            foreach=foreach,
        )

    def _optimizes_current_seed(self, slot_id: str) -> bool:
        held = [p for group in self.seed_optimizers[slot_id].param_groups for p in group["params"]]
        current = list(self.model.seed_parameters(slot_id))
        return len(held) == len(current) and all(a is b for a, b in zip(held, current, strict=True))


def process_train_batch(env: ParallelEnvState, x: Tensor, y: Tensor, task: Any) -> TrainStepResult:
    """One optimisation step of host and live seeds, in the order SPEC section 5 fixes."""
    with _on_env_stream(env, x, y):
        step = env.step_parameters()
        for p in step.params:  # every optimizer's zero_grad(set_to_none=True), without its walk
            p.grad = None
        if not env.model.training:  # validation or attribution left it in eval mode
            env.model.train()  # (walks every module: only when needed, not per batch)
        with _autocast(env):
            logits = env.model(x)
            loss = task.loss(logits, y)
        env.scaler.scale(loss).backward()
        _drop_failed_seed_grads(env)
        unscaled = _unscale(env, step)
        pre, post, clipped = _clip(env, step)
        skipped = _step(env, step, unscaled, pre)
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
    with evaluating(model):
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
    with evaluating(model):
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


def _grad_norm(env: ParallelEnvState, step: StepParameters) -> Tensor:
    """The global norm of host + learning-seed grads (what clip_grad_norm_ computes), from one
    norm per part; on the way each live seed learns whether its own grads were finite (no sync).
    """
    norms = []
    for slot_id, params in step.parts:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            continue
        norm = _total_norm(grads, step.foreach)
        if slot_id is not None:
            env.model.record_seed_grad_health(slot_id, torch.isfinite(norm))
        norms.append(norm)
    if not norms:
        device = step.clip_params[0].device if step.clip_params else env.device
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(norms))


def _total_norm(grads: list[Tensor], foreach: bool) -> Tensor:
    """``get_total_norm`` of one device's grads of one dtype, without regrouping them by device
    and dtype each step (the same foreach kernel, so the same value to the bit)."""
    if not foreach:
        return get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _clip(env: ParallelEnvState, step: StepParameters) -> tuple[Tensor, Tensor, Tensor]:
    """Clip host + seed grads by their global norm; return (pre, post, clipped) tensors."""
    pre = _grad_norm(env, step)
    if not env.clip_enabled:
        return pre, pre, torch.zeros_like(pre)
    max_norm = env.clip_threshold  # a Python number: using it needs no device sync
    # clip_grad_norm_ = get_total_norm + clip_grads_with_norm_. Split so that a NaN norm scales
    # every grad by 0 like an inf norm does, instead of turning finite grads into NaN.
    _scale_grads(step, max_norm, torch.nan_to_num(pre, nan=math.inf))
    # A non-finite norm is reported as such, never as a fake min(inf, max_norm) = max_norm.
    post = torch.where(torch.isfinite(pre), torch.clamp(pre, max=max_norm), pre)
    return pre, post, (pre > max_norm).to(pre.dtype)


def _unscale(env: ParallelEnvState, step: StepParameters) -> set[int]:
    """``scaler.unscale_`` the host's optimizer and each seed's with grads, so the norms and
    the clip see true gradients; returns their ids (a disabled scaler's unscale_ does nothing,
    and its step is every optimizer's plain one)."""
    scaler = env.scaler
    if not scaler.is_enabled():
        return {id(optimizer) for optimizer in step.optimizers}
    unscaled = set()
    for optimizer in step.optimizers:
        if optimizer is env.host_optimizer or _has_grads(optimizer):
            scaler.unscale_(optimizer)
            unscaled.add(id(optimizer))
    return unscaled


def _scale_grads(step: StepParameters, max_norm: float, total_norm: Tensor) -> None:
    """``clip_grads_with_norm_`` over the clip's parameters, with the kernel it would pick."""
    if not step.foreach:
        clip_grads_with_norm_(step.clip_params, max_norm, total_norm)
        return
    grads = [p.grad for p in step.clip_params if p.grad is not None]
    if grads:
        coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef)


def _step(env: ParallelEnvState, step: StepParameters, unscaled: set[int], pre: Tensor) -> Tensor:
    """Step every optimizer, or (fp16) none when any gradient overflowed; returns skipped 0/1.

    The GradScaler alone skips only the optimizers whose own grads hold inf/NaN: a seed's
    overflow would let the host take a momentum-only step. So the global norm decides for all
    (one sync per step, fp16 only; ``scaler.step`` syncs per optimizer anyway). A disabled
    scaler's ``step`` is the optimizer's and its ``update`` does nothing.
    """
    scaler = env.scaler
    overflow = scaler.is_enabled() and not bool(torch.isfinite(pre))
    if not overflow:
        for optimizer in step.optimizers:
            if id(optimizer) in unscaled:
                scaler.step(optimizer)
            else:
                # scaler.step needs the inf checks that unscale_ records, and an optimizer
                # without grads records none; its plain step changes nothing.
                optimizer.step()
    scaler.update()  # reads the inf checks unscale_ recorded: the scale backs off on overflow
    return torch.full_like(pre, float(overflow))


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
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and inference mode for the block; the caller's training mode comes back after.

    Switching modes walks every module: a pass over many batches enters this once around them
    all, and each batch's own entry then finds the model in eval mode and walks nothing.
    """
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def _val_result(logits: Tensor, y: Tensor, task: Any) -> ValStepResult:
    count = torch.full((), task.count(y), device=logits.device)
    return ValStepResult(
        loss_sum=task.loss(logits, y).float() * count,
        correct=task.correct(logits, y),
        count=count,
    )


# How each of EpochSummary's per-epoch figures is made from the epoch's sums of the results
# above (``epoch_figures.TensorTotals``: ``train_<field>``, ``val_<field>``, the finite steps'
# count ``train_finite_steps`` and the host's count of ``steps``): figure -> (sum, divisor),
# divided with the divisor at least 1; divisor None: the sum is a count. A figure computed on
# the device is added here (and to its result above), to contracts.EpochSummary and the console.
EPOCH_FIGURES: dict[str, tuple[str, str | None]] = {
    "train_loss": ("train_loss_sum", "train_count"),
    "train_accuracy": ("train_correct", "train_count"),
    "val_loss": ("val_loss_sum", "val_count"),
    "val_accuracy": ("val_correct", "val_count"),
    "grad_norm_pre_clip": ("train_grad_norm_pre", "train_finite_steps"),
    "grad_norm_post_clip": ("train_grad_norm_post", "train_finite_steps"),
    "clipped_fraction": ("train_clipped", "steps"),
    "skipped_steps": ("train_skipped", None),  # fp16 overflow: steps in which no optimizer moved
}
