from __future__ import annotations

import pytest
import torch
from torch import nn

from esper_engine.blueprints import BLUEPRINTS, blueprint_names, get_blueprint

# Residual adapters: built from the slot width alone (widen and stack need the host block: their
# tests are in test_growth_operators.py).
ALL = [
    (kind, name)
    for kind in BLUEPRINTS
    for name in BLUEPRINTS[kind]
    if BLUEPRINTS[kind][name].operator == "residual"
]


def _input(kind: str, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (3, dim, 8, 8) if kind == "cnn" else (3, 6, dim)
    return torch.randn(shape, generator=g)


def _perturb(module: nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_each_host_kind_has_at_least_four_blueprints() -> None:
    assert set(BLUEPRINTS) == {"cnn", "transformer"}
    assert {"conv_light", "conv_heavy", "attention", "depthwise", "norm"} <= set(
        blueprint_names("cnn")
    )
    assert {"lora", "mlp_small", "attention", "norm"} <= set(blueprint_names("transformer"))


def test_blueprints_carry_no_parameter_formula() -> None:
    """Parameters are counted with numel() on a built module, never by a per-blueprint formula."""
    for kind in BLUEPRINTS:
        for bp in BLUEPRINTS[kind].values():
            assert not hasattr(bp, "param_count"), bp.name


def test_growth_operators_are_listed_for_both_host_kinds_and_train_at_the_host_lr() -> None:
    for kind in BLUEPRINTS:
        assert {"widen", "stack"} <= set(blueprint_names(kind))
        assert get_blueprint(kind, "widen").operator == "widen"
        assert get_blueprint(kind, "stack").operator == "stack"
        assert get_blueprint(kind, "widen").lr_source == "host"
        assert get_blueprint(kind, "conv_light" if kind == "cnn" else "lora").lr_source == "seed"
        with pytest.raises(ValueError, match="needs the host"):
            get_blueprint(kind, "stack").build(16)


@pytest.mark.parametrize(("kind", "name"), ALL)
def test_seed_is_exactly_identity_at_germination_and_not_after_training(
    kind: str, name: str
) -> None:
    torch.manual_seed(0)
    seed = get_blueprint(kind, name).build(16)
    h = _input(kind, 16)
    assert torch.equal(seed(h), h)
    _perturb(seed)
    assert not torch.allclose(seed(h), h), "the seed must be able to learn a non-identity map"


@pytest.mark.parametrize(("kind", "name"), ALL)
def test_seeds_never_use_batchnorm(kind: str, name: str) -> None:
    seed = get_blueprint(kind, name).build(8)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in seed.modules())


@pytest.mark.parametrize("name", [name for kind, name in ALL if kind == "transformer"])
def test_transformer_seeds_are_causal(name: str) -> None:
    torch.manual_seed(0)
    seed = get_blueprint("transformer", name).build(16)
    _perturb(seed)
    h = _input("transformer", 16)
    changed = h.clone()
    changed[:, 4] += 1.0
    a, b = seed(h), seed(changed)
    assert torch.equal(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4], b[:, 4])


def test_unknown_blueprint_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown cnn blueprint 'lora'.*conv_light"):
        get_blueprint("cnn", "lora")
    with pytest.raises(ValueError, match="unknown host kind 'rnn'"):
        blueprint_names("rnn")
