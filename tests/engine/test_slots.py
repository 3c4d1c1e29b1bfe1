from __future__ import annotations

import math

import pytest
import torch

from esper_engine.contracts import SeedTransition
from esper_engine.lifecycle import GateError, LifecycleError, SeedStage
from esper_engine.slots import SeedSlot

S = SeedStage


def _slot(events: list[SeedTransition] | None = None, **kwargs: int) -> SeedSlot:
    torch.manual_seed(0)
    on = None if events is None else events.append
    return SeedSlot("block1", 8, "cnn", on_transition=on, **kwargs)


def _h(requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 8, 6, 6, generator=g).requires_grad_(requires_grad)


def _perturb(slot: SeedSlot) -> None:
    """Move the seed away from the identity, as training would."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in slot.seed.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def _to_training(slot: SeedSlot, blueprint: str = "conv_light") -> None:
    slot.germinate(blueprint)
    slot.end_epoch()


def _to_blending(slot: SeedSlot, blend_epochs: int = 3, schedule: str = "linear") -> None:
    slot.germinate("conv_light", blend_epochs=blend_epochs, schedule=schedule)
    slot.end_epoch()
    for _ in range(slot.min_training_epochs):
        slot.record_seed_grad_health(True)
        slot.end_epoch()
    slot.advance()


def _to_holding(slot: SeedSlot) -> None:
    _to_blending(slot, blend_epochs=1)
    slot.end_epoch()


# --- forward semantics ---------------------------------------------------------------------------


def test_empty_and_germinated_slots_are_identity() -> None:
    slot = _slot()
    h = _h()
    assert slot(h) is h
    slot.germinate("conv_heavy")
    _perturb(slot)  # even a changed seed is not run before TRAINING
    assert torch.equal(slot(h), h)


def test_training_is_straight_through() -> None:
    slot = _slot()
    _to_training(slot)
    _perturb(slot)
    h = _h(requires_grad=True)
    out = slot(h)
    assert torch.equal(out, h), "TRAINING output must equal the host's exactly"
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * weights).sum().backward()
    assert torch.equal(h.grad, weights), "host gradient must pass through unchanged"
    ste_grads = [p.grad.clone() for p in slot.seed.parameters()]
    # The seed gets the gradient it would get fully blended: d/dtheta of seed(h) * weights.
    slot.zero_grad()
    (slot.seed(h.detach()) * weights).sum().backward()
    for got, want in zip(ste_grads, (p.grad for p in slot.seed.parameters()), strict=True):
        assert torch.equal(got, want)
        assert got.abs().sum() > 0


@pytest.mark.parametrize("alpha_step", [1, 2])
def test_blending_lerps_and_isolates_the_host(alpha_step: int) -> None:
    slot = _slot()
    _to_blending(slot, blend_epochs=3)
    for _ in range(alpha_step - 1):
        slot.end_epoch()
    _perturb(slot)
    alpha = slot.alpha
    assert 0 < alpha < 1
    h = _h(requires_grad=True)
    out = slot(h)
    s = slot.seed(h.detach())
    assert torch.allclose(out, h + alpha * (s - h), atol=1e-6)
    out.sum().backward()
    # Isolation: the seed's input is detached and the host's path keeps the identity, so
    # dout/dh is exactly 1 at every alpha (lerp(h, seed(d), alpha) would give 1 - alpha).
    assert torch.equal(h.grad, torch.ones_like(h))
    assert all(p.grad.abs().sum() > 0 for p in slot.seed.parameters())


def test_per_sample_alpha_override_matches_float_overrides() -> None:
    slot = _slot()
    _to_training(slot)
    _perturb(slot)
    h = _h()
    alphas = torch.tensor([0.0, 0.25, 1.0, 0.6])
    fused = slot(h, alpha=alphas)
    for i, a in enumerate(alphas.tolist()):
        assert torch.allclose(fused[i], slot(h[i : i + 1], alpha=a)[0], atol=1e-6)
    assert torch.equal(fused[0], h[0])
    assert not torch.allclose(fused[2], h[2])
    with pytest.raises(ValueError, match="shape"):
        slot(h, alpha=torch.ones(3))


def test_fossilized_seed_is_fully_on_keeps_learning_and_ignores_overrides() -> None:
    slot = _slot()
    _to_holding(slot)
    slot.contribution = 0.5
    _perturb(slot)
    slot.fossilize()
    h = _h(requires_grad=True)
    out = slot(h, alpha=0.0)
    assert torch.equal(out, slot.seed(h))
    out.sum().backward()
    # Part of the host now: gradient flows through the seed into h (not just the identity path)
    # and into the seed's own parameters, which keep training with the host.
    assert not torch.allclose(h.grad, torch.ones_like(h))
    assert all(p.requires_grad and p.grad is not None for p in slot.seed.parameters())


# --- alpha schedule ------------------------------------------------------------------------------


def test_linear_blend_reaches_holding_after_blend_epochs() -> None:
    slot = _slot()
    _to_blending(slot, blend_epochs=3)
    seen = [slot.alpha]
    while slot.stage is S.BLENDING:
        slot.end_epoch()
        seen.append(slot.alpha)
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert slot.stage is S.HOLDING and slot.alpha == 1.0


def test_cosine_ramp_up_lands_on_one_in_holding() -> None:
    slot = _slot()
    _to_blending(slot, blend_epochs=4, schedule="cosine")
    ups = [slot.alpha]
    for _ in range(4):
        slot.end_epoch()
        ups.append(slot.alpha)
    want = [(1 - math.cos(math.pi * k / 4)) / 2 for k in (1, 2, 3, 4)]
    assert ups[:4] == pytest.approx(want) and slot.stage is S.HOLDING and slot.alpha == 1.0
    with pytest.raises(LifecycleError):  # no ramp back down: HOLDING ends in FOSSILIZED or PRUNED
        slot._transition(S.BLENDING, "policy")


def test_advance_needs_min_training_epochs_and_healthy_gradients() -> None:
    slot = _slot(min_training_epochs=2)
    slot.germinate("conv_light")
    assert not slot.can_advance()[0]
    with pytest.raises(GateError, match="automatically"):
        slot.advance()
    slot.end_epoch()
    slot.record_seed_grad_health(True)
    slot.end_epoch()
    with pytest.raises(GateError, match="1 epochs in TRAINING, need 2"):
        slot.advance()
    slot.end_epoch()  # nothing recorded during this epoch
    ok, reason = slot.can_advance()
    assert not ok and "no seed gradient" in reason
    slot.record_seed_grad_health(torch.tensor(True))
    slot.record_seed_grad_health(torch.isfinite(torch.tensor(float("nan"))))
    assert slot.can_advance() == (True, "ok"), "one overflow in two steps is fp16 weather"
    slot.record_seed_grad_health(torch.tensor(False))
    ok, reason = slot.can_advance()
    assert not ok and "non-finite" in reason  # two of three steps: the seed is unhealthy
    slot.end_epoch()
    assert not slot.can_advance()[0], "last epoch's non-finite gradient still blocks"
    slot.record_seed_grad_health(torch.tensor(True))
    assert slot.can_advance() == (True, "ok")
    slot.advance()
    assert slot.stage is S.BLENDING


def test_min_prune_age_is_configurable() -> None:
    slot = _slot(min_prune_age=1)
    slot.germinate("norm")
    slot.end_epoch()
    assert slot.can_prune("policy") == (True, "ok")


def test_prune_needs_min_age_unless_gate_governor_or_operator() -> None:
    slot = _slot()  # the default minimum age: 3 epochs since germination (SPEC 4)
    slot.germinate("norm")
    with pytest.raises(GateError, match="age 0"):
        slot.prune("policy")
    assert slot.can_prune("gate") == (True, "ok")  # a failed health gate prunes at any age
    assert slot.can_prune("governor") == (True, "ok")
    assert slot.can_prune("operator") == (True, "ok")
    for age in (1, 2):
        slot.end_epoch()
        assert slot.can_prune("policy") == (False, f"seed age {age} epochs, minimum 3 to prune")
    slot.end_epoch()
    assert slot.can_prune("policy") == (True, "ok")
    slot.prune("policy")
    assert slot.stage is S.PRUNED and slot.seed is None
    assert not any(k.startswith("seed.") for k in slot.state_dict())


def test_fossilize_needs_holding_and_a_positive_measured_contribution() -> None:
    slot = _slot()
    _to_blending(slot, blend_epochs=1)
    with pytest.raises(LifecycleError, match="BLENDING -> FOSSILIZED"):
        slot.fossilize()
    slot.end_epoch()
    with pytest.raises(GateError, match="no counterfactual contribution"):
        slot.fossilize()
    slot.contribution = 0.0
    with pytest.raises(GateError, match="not positive"):
        slot.fossilize()
    slot.contribution = 0.02
    slot.fossilize()
    assert slot.stage is S.FOSSILIZED


def test_illegal_actions_raise_lifecycle_error() -> None:
    slot = _slot()
    with pytest.raises(LifecycleError, match="DORMANT -> PRUNED"):
        slot.prune("operator")
    with pytest.raises(LifecycleError, match="DORMANT -> FOSSILIZED"):
        slot.fossilize()
    slot.germinate("conv_light")
    with pytest.raises(LifecycleError, match="GERMINATED -> GERMINATED"):
        slot.germinate("conv_light")
    with pytest.raises(ValueError, match="unknown initiator 'tamiyo'"):
        slot.prune("tamiyo")
    with pytest.raises(ValueError, match="unknown cnn blueprint"):
        _slot().germinate("lora")


@pytest.mark.parametrize("embargo", [1, 2, 3])
def test_embargo_timing(embargo: int) -> None:
    slot = _slot(embargo_epochs=embargo)
    slot.germinate("depthwise")
    slot.prune("governor")
    slot.end_epoch()
    assert slot.stage is S.EMBARGOED
    for _ in range(embargo - 1):
        slot.end_epoch()
        assert slot.stage is S.EMBARGOED and not slot.can_germinate()[0]
    slot.end_epoch()
    assert slot.stage is S.DORMANT and slot.blueprint is None
    slot.germinate("attention")
    assert slot.stage is S.GERMINATED


# --- telemetry -----------------------------------------------------------------------------------


def test_every_transition_emits_exactly_one_event_with_the_right_fields() -> None:
    events: list[SeedTransition] = []
    slot = _slot(events, embargo_epochs=1)
    _to_holding(slot)  # germinate, auto TRAINING, advance, auto HOLDING
    slot.prune("policy")
    slot.end_epoch()
    slot.end_epoch()
    got = [(e.from_stage, e.to_stage, e.initiator, e.alpha, e.epochs_in_stage) for e in events]
    assert got == [
        ("DORMANT", "GERMINATED", "policy", 0.0, 0),
        ("GERMINATED", "TRAINING", "gate", 0.0, 1),
        ("TRAINING", "BLENDING", "policy", 0.0, 1),
        ("BLENDING", "HOLDING", "gate", 1.0, 1),
        ("HOLDING", "PRUNED", "policy", 1.0, 0),
        ("PRUNED", "EMBARGOED", "gate", 0.0, 1),
        ("EMBARGOED", "RESETTING", "gate", 0.0, 1),
        ("RESETTING", "DORMANT", "gate", 0.0, 0),
    ]
    assert all(e.slot_id == "block1" and e.blueprint == "conv_light" for e in events)
    assert all(e.env is None and e.episode == 0 and e.epoch == 0 for e in events)


def test_slot_state_reports_stage_alpha_and_params() -> None:
    slot = _slot()
    _to_blending(slot, blend_epochs=2)
    state = slot.state()
    assert (state.slot_id, state.stage, state.blueprint) == ("block1", "BLENDING", "conv_light")
    assert state.alpha == 0.5 and state.epochs_in_stage == 0
    assert state.params == sum(p.numel() for p in slot.seed.parameters()) > 0
