"""The host as a config choice: presets, size knobs, slots that follow the host, and every
blueprint checked at the real widths (128 for the CNN's last block, 384 for the Transformer)."""

from __future__ import annotations

import tomllib
from types import SimpleNamespace

import msgspec
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from esper_engine.blueprints import blueprint_names, get_blueprint
from esper_engine.config import HostConfig, TrainingConfig
from esper_engine.config_io import ConfigError, apply_set, apply_table, to_toml
from esper_engine.host_presets import TASK_HOST_KIND, HostSpec, resolve_host
from esper_engine.model import MorphogeneticModel, create_model, run_host_spec
from esper_engine.tasks import load_task

CNN_TASK = SimpleNamespace(name="synthetic-images", host_kind="cnn", num_classes=10, seq_len=None)
LM_TASK = SimpleNamespace(
    name="synthetic-stories", host_kind="transformer", num_classes=256, seq_len=64
)
# (parameters, forward FLOPs per sample) as FlopCounterMode counts them on the CPU; the README's
# host table quotes these.
MEASURED = {
    ("cnn", "tiny"): (1_063, 332_016),
    ("cnn", "small"): (6_418, 1_622_656),
    ("cnn", "base"): (94_762, 20_646_400),
    ("transformer", "tiny"): (187_200, 20_971_520),
    ("transformer", "small"): (867_328, 104_857_600),
    ("transformer", "base"): (10_868_992, 1_371_537_408),
}


def _task(kind: str) -> SimpleNamespace:
    return CNN_TASK if kind == "cnn" else LM_TASK


def _model(kind: str, preset: str) -> MorphogeneticModel:
    torch.manual_seed(0)
    task = _task(kind)
    spec = resolve_host(HostConfig(preset=preset), task.name)
    return create_model(task, "cpu", spec=spec).eval()


def _input(kind: str, n: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if kind == "cnn":
        return torch.randn(n, 3, 32, 32, generator=g)
    return torch.randint(0, 256, (n, 64), generator=g)


def _flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


def _slot_inputs(model: MorphogeneticModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The activation each slot sees (no seed anywhere)."""
    inputs, h = {}, x
    with torch.no_grad():
        for k, sid in enumerate(model.slot_ids):
            h = model.run_segment(k, h)
            inputs[sid] = h
    return inputs


# --- presets and knobs ---------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "preset"), list(MEASURED))
def test_each_preset_has_the_documented_parameters_and_flops(kind: str, preset: str) -> None:
    model = _model(kind, preset)
    params, flops = MEASURED[kind, preset]
    assert model.host_param_count() == params
    assert _flops(model.host, _input(kind)) == flops


def test_embedded_tasks_keep_the_tiny_host_and_real_datasets_get_a_trained_size() -> None:
    assert resolve_host(HostConfig(), "synthetic-images") == HostSpec(
        kind="cnn", preset="tiny", widths=(3, 6, 12)
    )
    assert resolve_host(HostConfig(), "synthetic-stories").label() == "transformer 64x3 h4"
    assert resolve_host(HostConfig(), "cifar10").label() == "cnn 32-64-128"
    assert resolve_host(HostConfig(), "tinystories").label() == "transformer 128x4 h4"
    # the default run builds exactly the host it always built (same weights from the same seed)
    torch.manual_seed(5)
    old = create_model(CNN_TASK, "cpu")
    torch.manual_seed(5)
    new = create_model(CNN_TASK, "cpu", spec=run_host_spec(TrainingConfig(), CNN_TASK))
    assert old.state_dict().keys() == new.state_dict().keys()
    for a, b in zip(old.state_dict().values(), new.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["synthetic-images", "synthetic-stories"])
def test_the_task_table_agrees_with_the_tasks(name: str) -> None:
    assert load_task(name, scale="small").host_kind == TASK_HOST_KIND[name]


def test_knobs_override_the_preset_and_slots_follow_the_host() -> None:
    config = apply_set(TrainingConfig(), "host.widths=16,32,64,128")
    spec = run_host_spec(config, CNN_TASK)
    assert spec.widths == (16, 32, 64, 128) and spec.preset == "tiny"
    model = create_model(CNN_TASK, "cpu", spec=spec)
    assert model.slot_ids == ["block1", "block2", "block3", "block4"]
    assert [model.slots[s].dim for s in model.slot_ids] == [16, 32, 64, 128]

    base = _model("transformer", "base")  # 6 layers, 2 per segment: 3 slots
    assert base.slot_ids == ["layer2", "layer4", "layer6"]
    config = TrainingConfig(task="synthetic-stories")
    for item in ("host.preset=base", "host.layers_per_segment=3", "host.d_model=192"):
        config = apply_set(config, item)
    config.validate()
    model = create_model(LM_TASK, "cpu", spec=run_host_spec(config, LM_TASK))
    assert model.slot_ids == ["layer3", "layer6"]
    assert {model.slots[s].dim for s in model.slot_ids} == {192}


def test_a_toml_host_table_reads_back() -> None:
    table = {"task": "synthetic-stories", "host": {"preset": "small", "n_layers": 2}}
    config = apply_table(TrainingConfig(), table, "config run.toml")
    assert config.host == HostConfig(preset="small", n_layers=2)
    assert run_host_spec(config, LM_TASK).label() == "transformer 128x2 h4"
    cnn = apply_set(TrainingConfig(), "host.widths=[16, 32]")
    text = to_toml(cnn)
    assert "[host]\n" in text and "\nwidths = [16, 32]\n" in text
    assert apply_table(TrainingConfig(), tomllib.loads(text), "printed") == cnn


@pytest.mark.parametrize(
    ("task", "items", "message"),
    [
        ("synthetic-images", ["host.preset=huge"], "host.preset must be one of tiny, small, base"),
        ("synthetic-images", ["host.widths=1,2,3,4,5,6"], "host.widths must list 1..5"),
        ("synthetic-images", ["host.widths=8,0"], "host.widths must be within 1..8192 each"),
        ("synthetic-images", ["host.d_model=128"], "host.d_model sizes a transformer host"),
        ("synthetic-stories", ["host.widths=8"], "host.widths sizes a cnn host"),
        ("synthetic-stories", ["host.n_heads=5"], "host.d_model 64 must be a multiple of"),
        ("synthetic-stories", ["host.n_layers=5", "host.layers_per_segment=2"], "multiple of"),
        ("synthetic-stories", ["host.n_layers=0"], "host.n_layers must be within 1..96"),
    ],
)
def test_a_bad_host_is_one_line_naming_the_key(task: str, items: list[str], message: str) -> None:
    config = TrainingConfig(task=task)
    # A bad choice is refused where --set converts it (msgspec), a bad size by validate().
    with pytest.raises(ValueError, match=message) as caught:
        for item in items:
            config = apply_set(config, item)
        config.validate()
    assert "\n" not in str(caught.value)


def test_a_non_integer_width_is_refused_when_parsed() -> None:
    with pytest.raises(ConfigError, match="expected a list of integers"):
        apply_set(TrainingConfig(), "host.widths=32,wide")


def test_a_spec_for_the_other_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="a transformer host spec for a cnn task"):
        create_model(CNN_TASK, "cpu", spec=resolve_host(HostConfig(), "synthetic-stories"))


def test_old_configs_without_a_host_group_decode_to_the_default() -> None:
    old = msgspec.to_builtins(TrainingConfig())
    del old["host"]
    assert msgspec.convert(old, TrainingConfig).host == HostConfig()


# --- every blueprint at the real widths ----------------------------------------------------


def _seed_costs(kind: str, preset: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(seed parameters / host parameters, seed FLOPs / host FLOPs) per blueprint and slot."""
    model = _model(kind, preset)
    x = _input(kind)
    host_params, host_flops = model.host_param_count(), _flops(model.host, x)
    costs = {}
    for sid, h in _slot_inputs(model, x).items():
        for name in blueprint_names(kind):
            if get_blueprint(kind, name).operator != "residual":
                continue  # widen and stack grow the block itself: they scale with it
            seed = get_blueprint(kind, name).build(model.slots[sid].dim)
            costs[name, sid] = (
                sum(p.numel() for p in seed.parameters()) / host_params,
                _flops(seed, h) / host_flops,
            )
    return costs


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
def test_every_blueprint_counts_its_parameters_at_the_base_width(kind: str) -> None:
    model = _model(kind, "base")
    sid = model.slot_ids[-1]
    for name in blueprint_names(kind):
        expected = model.blueprint_param_count(sid, name)
        model.germinate(sid, name)
        assert model.slots[sid].param_count() == expected > 0, name
        model.prune(sid, "operator")
        for _ in range(model.slots[sid].embargo_epochs + 1):
            model.end_epoch()


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
def test_seeds_cost_no_larger_a_share_of_a_base_host_than_of_a_tiny_one(kind: str) -> None:
    """Seeds' inner sizes scale with the slot's width: a seed adds, relative to the host, no
    more parameters to a base host than to the tiny one (a few percent of slack), and no seed
    costs more compute than the whole base host. (conv_heavy after the CNN's last block is
    still 6.2x the host's parameters, as it is 6.6x the tiny one's: it is the heavy choice, and
    the rent charges it.)"""
    tiny, base = _seed_costs(kind, "tiny"), _seed_costs(kind, "base")
    for name in sorted({name for name, _ in tiny}):  # the residual seeds
        for depth in range(3):  # the first, middle and last slot of each
            t = tiny[name, sorted({s for _, s in tiny})[depth]]
            b = base[name, sorted({s for _, s in base})[depth]]
            assert b[0] <= t[0] * 1.05, (name, depth, "params", b, t)
            assert b[1] < 1.0, (name, depth, "flops", b)


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
def test_every_blueprint_is_the_identity_at_germination_in_a_base_host(kind: str) -> None:
    """Planted and blended in fully (alpha 1), a fresh seed leaves a base host's output exact."""
    x = _input(kind, 2)
    for name in blueprint_names(kind):
        model = _model(kind, "base")
        with torch.no_grad():
            expected = model.host(x)
        for sid in model.slot_ids:
            model.germinate(sid, name)
        model.end_epoch()  # GERMINATED skips the seed; TRAINING runs it
        with torch.no_grad(), model.force_alpha(model.slot_ids[0], 1.0):
            for sid in model.slot_ids[1:]:
                model.slots[sid].forced_alpha = 1.0
            assert torch.equal(model(x), expected), name
