"""The growth operators ``widen`` and ``stack`` (issue 24 item 3) on real hosts: identity at
germination, alpha blending, fossilize keeps and prune removes them, checkpoints follow the new
shapes, the host's optimizer state survives, and they train at the host's lr."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from esper_engine.blueprints import GatedBlock, WidenConv, WidenMLP
from esper_engine.lifecycle import SeedStage
from esper_engine.model import MorphogeneticModel, create_model
from esper_engine.training_step import ParallelEnvState

CNN_TASK = SimpleNamespace(host_kind="cnn", num_classes=10, seq_len=None)
LM_TASK = SimpleNamespace(host_kind="transformer", num_classes=256, seq_len=12)
KINDS = ["cnn", "transformer"]
OPERATORS = ["widen", "stack"]


def _model(kind: str, **kwargs: object) -> MorphogeneticModel:
    torch.manual_seed(0)
    if kind == "cnn":
        return create_model(CNN_TASK, "cpu", **kwargs)
    return create_model(LM_TASK, "cpu", d_model=16, n_heads=2, **kwargs)


def _input(kind: str, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if kind == "cnn":
        return torch.randn(n, 3, 32, 32, generator=g)
    return torch.randint(0, 256, (n, 12), generator=g)


def _perturb(params: list[torch.nn.Parameter], seed: int = 8) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.5 * torch.randn(p.shape, generator=g))


def _to_holding(model: MorphogeneticModel, slot_id: str) -> None:
    model.end_epoch()  # GERMINATED -> TRAINING
    model.slots[slot_id].record_seed_grad_health(torch.tensor(True))
    model.end_epoch()
    model.advance(slot_id)
    while model.slots[slot_id].stage is SeedStage.BLENDING:
        model.end_epoch()
    assert model.slots[slot_id].stage is SeedStage.HOLDING


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operator", OPERATORS)
def test_germination_is_the_identity_in_every_slot_at_every_alpha(kind: str, operator: str) -> None:
    """Germinated, incubating, forced fully on (alpha 1) and even fossilized, a fresh widen or
    stack leaves the host's output bit for bit, in train and eval mode."""
    model = _model(kind).eval()
    x = _input(kind)
    with torch.no_grad():
        before = model(x)
    for sid in model.slot_ids:
        model.germinate(sid, operator)
    with torch.no_grad():
        assert torch.equal(model(x), before)
        model.end_epoch()  # TRAINING: the straight-through forward
        assert torch.equal(model(x), before)
        for sid in model.slot_ids:
            with model.force_alpha(sid, 1.0):
                assert torch.equal(model(x), before)
    # A stacked block must be able to act once its gate moves (the copy is not inert).
    for sid in model.slot_ids:
        seed = model.slots[sid].seed
        kinds = {"widen": (WidenConv, WidenMLP), "stack": (GatedBlock,)}[operator]
        assert isinstance(seed, kinds)
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in seed.modules())
    train_model = _model(kind).train()
    bare = copy.deepcopy(train_model)
    for sid in train_model.slot_ids:
        train_model.germinate(sid, operator)
    train_model.end_epoch()
    assert torch.equal(train_model(x), bare(x))  # BatchNorm in train mode: same batch statistics


@pytest.mark.parametrize("kind", KINDS)
def test_stack_is_a_copy_of_the_block_behind_a_zero_gate(kind: str) -> None:
    model = _model(kind)
    sid = model.slot_ids[-1]
    model.germinate(sid, "stack")
    seed = model.slots[sid].seed
    assert torch.equal(seed.gate, torch.zeros(1))
    if kind == "transformer":
        layer = model.host.layers[-1]
        for (name, mine), theirs in zip(
            seed.block.named_parameters(), layer.parameters(), strict=True
        ):
            assert torch.equal(mine, theirs), name
            assert mine.data_ptr() != theirs.data_ptr()  # a copy, not a shared tensor
    else:
        conv, norm = model.host.blocks[-1][0], model.host.blocks[-1][1]
        c_in = conv.in_channels
        new = seed.block[0].weight
        assert new.shape == (conv.out_channels, conv.out_channels, 3, 3)
        # every copied input channel carries block k's weights, shared among its copies
        copies = conv.out_channels // c_in
        assert torch.allclose(new[:, :c_in] * copies, conv.weight)
        assert torch.equal(seed.block[1].weight, norm.weight)


@pytest.mark.parametrize("kind", KINDS)
def test_widen_reads_the_blocks_input_not_its_output(kind: str) -> None:
    """The new units sit beside the block's: they read what the block reads (the CNN block's
    input; the last layer's ln2 output), so the slot's seed gets a second input."""
    model = _model(kind).eval()
    sid = model.slot_ids[1]
    model.germinate(sid, "widen")
    assert model.slots[sid].reads_block_input
    x = _input(kind)
    h0 = model.run_segment(0, x)
    out, u = model.run_segment_io(1, h0)
    assert torch.equal(out, model.run_segment(1, h0))
    if kind == "cnn":
        assert torch.equal(u, h0)
    else:
        layer = model.host.layers[1]
        assert torch.equal(u, layer.ln2(layer._attend(h0)))
    model.end_epoch()
    with pytest.raises(ValueError, match="needs block_input"):
        model.slots[sid](out)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operator", OPERATORS)
def test_alpha_scales_the_new_units_while_blending(kind: str, operator: str) -> None:
    model = _model(kind).eval()
    sid = model.slot_ids[0]
    model.germinate(sid, operator)
    _perturb(model.seed_parameters(sid))
    model.end_epoch()
    x = _input(kind)
    with torch.no_grad():
        h, u = model.run_segment_io(0, x)
        slot = model.slots[sid]
        at = {a: slot(h, alpha=a, block_input=u) for a in (0.0, 0.25, 1.0)}
    assert torch.equal(at[0.0], h)
    assert not torch.allclose(at[1.0], h)
    torch.testing.assert_close(at[0.25] - h, 0.25 * (at[1.0] - h))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operator", OPERATORS)
def test_fossilize_keeps_the_units_and_prune_removes_them(kind: str, operator: str) -> None:
    model = _model(kind).eval()
    keep, drop = model.slot_ids[0], model.slot_ids[1]
    host_params = model.host_param_count()
    for sid in (keep, drop):
        model.germinate(sid, operator, blend_epochs=1)
        _perturb(model.seed_parameters(sid))
    assert model.slots[keep].param_count() == model.blueprint_param_count(keep, operator) > 0
    model.end_epoch()
    for sid in (keep, drop):
        model.slots[sid].record_seed_grad_health(torch.tensor(True))
    model.end_epoch()
    for sid in (keep, drop):
        model.advance(sid)
    model.end_epoch()
    model.slots[keep].contribution = 0.02
    model.fossilize(keep)
    x = _input(kind)
    with torch.no_grad():
        fossil_out = model(x)
    kept = sum(p.numel() for p in model.seed_parameters(keep))
    model.prune(drop, "operator")
    assert model.slots[drop].seed is None
    assert not any(k.startswith(f"slots.{drop}.seed.") for k in model.state_dict())
    assert any(k.startswith(f"slots.{keep}.seed.") for k in model.state_dict())
    assert model.host_param_count() == host_params  # the host's own tensors never change shape
    assert model.seed_param_count() == kept
    # The fossil is fully on (alpha ignored) and part of the host's function from now on.
    with torch.no_grad(), model.force_alpha(keep, 0.0):
        assert not torch.allclose(model(x), fossil_out)  # the pruned seed's blend is gone
        assert torch.equal(model.slots[keep](*_slot_io(model, keep, x)), _fossil(model, keep, x))


def _slot_io(model: MorphogeneticModel, sid: str, x: torch.Tensor) -> tuple:
    h = x
    k = model.slot_ids.index(sid)
    for j in range(k):
        h, u = model.run_segment_io(j, h)
        h = model.slots[model.slot_ids[j]](h, block_input=u)
    h, u = model.run_segment_io(k, h)
    return (h,) if u is None else (h, None, u)


def _fossil(model: MorphogeneticModel, sid: str, x: torch.Tensor) -> torch.Tensor:
    args = _slot_io(model, sid, x)
    seed = model.slots[sid].seed
    return seed(args[0]) if len(args) == 1 else seed(args[0], args[2])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operator", OPERATORS)
def test_checkpoint_rebuilds_the_grown_model_exactly(kind: str, operator: str) -> None:
    model = _model(kind).eval()
    sid = model.slot_ids[-1]
    model.germinate(sid, operator, blend_epochs=2)
    _perturb(model.seed_parameters(sid))
    _to_holding(model, sid)
    saved = copy.deepcopy(model.checkpoint_state())
    fresh = _model(kind).eval()
    _perturb(list(fresh.host.parameters()), seed=3)  # the rebuild must not depend on the host
    fresh.load_checkpoint_state(saved)
    x = _input(kind)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert fresh.slots[sid].stage is SeedStage.HOLDING and fresh.slots[sid].blueprint == operator


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operator", OPERATORS)
def test_host_optimizer_state_survives_and_the_operator_trains_at_the_host_lr(
    kind: str, operator: str
) -> None:
    model = _model(kind)
    host_opt = torch.optim.SGD(model.host_parameters(), lr=0.2, momentum=0.9)
    env = ParallelEnvState(model, host_opt, seed_lr=0.05, device="cpu")
    x = _input(kind)
    model(x).float().square().mean().backward()
    host_opt.step()
    momentum = {id(p): host_opt.state[p]["momentum_buffer"].clone() for p in host_opt.state}
    model.germinate(model.slot_ids[0], operator)
    model.germinate(model.slot_ids[1], "conv_light" if kind == "cnn" else "lora")
    env.sync_seed_optimizers()
    for p in model.host_parameters():  # same tensors, same momentum: nothing was rebuilt
        assert torch.equal(host_opt.state[p]["momentum_buffer"], momentum[id(p)])
    assert env.seed_optimizers[model.slot_ids[0]].param_groups[0]["lr"] == 0.2
    assert env.seed_optimizers[model.slot_ids[1]].param_groups[0]["lr"] == 0.05
    env.set_lr_scale(0.5)
    assert env.seed_optimizers[model.slot_ids[0]].param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("operator", OPERATORS)
def test_transformer_operators_stay_causal(operator: str) -> None:
    model = _model("transformer").eval()
    for sid in model.slot_ids:
        model.germinate(sid, operator)
        _perturb(model.seed_parameters(sid))
    model.end_epoch()
    model.slots[model.slot_ids[0]].record_seed_grad_health(torch.tensor(True))
    x = _input("transformer", 2)
    changed = x.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 256
    with torch.no_grad(), model.force_alpha(model.slot_ids[0], 1.0):
        a, b = model(x), model(changed)
    assert torch.equal(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6], b[:, 6])
