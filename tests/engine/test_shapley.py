from __future__ import annotations

import itertools
import math
import random
import types
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper_engine.lifecycle import SeedStage
from esper_engine.model import create_model
from esper_engine.shapley import (
    CounterfactualEngine,
    all_coalitions,
    exact_shapley,
    prefix_forward,
    sampled_shapley,
)
from esper_engine.tasks import Task

# ---------------------------------------------------------------------------------------------
# Toy games
# ---------------------------------------------------------------------------------------------


def additive(weights):
    return lambda c: sum(weights[i] for i in c)


def random_game(n, seed):
    rng = random.Random(seed)
    return {c: rng.uniform(-1, 1) for c in all_coalitions(n)}


def permutation_shapley(n, v):
    """Shapley by its definition: average marginal over all n! orders (independent reference)."""
    phi = [0.0] * n
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        before = frozenset()
        for p in perm:
            phi[p] += (v[before | {p}] - v[before]) / len(perms)
            before = before | {p}
    return phi


def test_exact_matches_average_over_all_orders():
    game = random_game(4, seed=1)
    assert exact_shapley(4, game) == pytest.approx(permutation_shapley(4, game), abs=1e-12)


def test_exact_additive_game_returns_its_weights():
    weights = [0.5, -2.0, 3.25, 0.0, 1.5]
    assert exact_shapley(5, additive(weights)) == pytest.approx(weights, abs=1e-12)


def test_exact_symmetric_game_gives_equal_values():
    # majority game: value depends on coalition size only
    phi = exact_shapley(5, lambda c: float(len(c) >= 3))
    assert phi == pytest.approx([phi[0]] * 5, abs=1e-12)
    assert sum(phi) == pytest.approx(1.0, abs=1e-12)


def test_exact_unanimity_game_splits_among_carriers():
    carriers = {1, 3}
    phi = exact_shapley(4, lambda c: float(carriers <= c))
    assert phi == pytest.approx([0.0, 0.5, 0.0, 0.5], abs=1e-12)


@pytest.mark.parametrize("n", [0, 1, 3, 6])
def test_exact_efficiency(n):
    game = random_game(n, seed=n)
    assert sum(exact_shapley(n, game)) == pytest.approx(
        game[frozenset(range(n))] - game[frozenset()], abs=1e-6
    )


def test_exact_missing_coalition_is_a_clear_error():
    with pytest.raises(KeyError, match="coalition"):
        exact_shapley(2, {frozenset(): 0.0, frozenset({0}): 1.0})


def test_sampled_additive_game_has_zero_variance():
    weights = [1.0, -0.5, 2.0, 0.25, 3.0, -1.5]
    values, std = sampled_shapley(6, additive(weights), n_permutations=4, seed=0)
    assert values == pytest.approx(weights, abs=1e-12)
    assert std == pytest.approx([0.0] * 6, abs=1e-12)


def test_sampled_is_efficient_for_any_game():
    game = random_game(6, seed=3)
    values, _ = sampled_shapley(6, game, n_permutations=5, seed=1)
    assert sum(values) == pytest.approx(game[frozenset(range(6))] - game[frozenset()], abs=1e-9)


def test_sampled_with_all_permutations_is_exact():
    game = random_game(3, seed=4)
    values, std = sampled_shapley(3, game, n_permutations=3, seed=0)  # 3 pairs = all 3! orders
    assert values == pytest.approx(exact_shapley(3, game), abs=1e-12)
    assert std == [0.0, 0.0, 0.0]


def test_sampled_estimate_lies_within_its_standard_error():
    game = random_game(6, seed=5)
    values, std = sampled_shapley(6, game, n_permutations=200, seed=2)
    exact = exact_shapley(6, game)
    assert all(s > 0 for s in std)
    assert all(abs(v - e) <= 4 * s for v, e, s in zip(values, exact, std, strict=True))


def test_sampled_is_reproducible_from_its_seed():
    game = random_game(6, seed=6)
    assert sampled_shapley(6, game, 8, seed=7) == sampled_shapley(6, game, 8, seed=7)
    assert sampled_shapley(6, game, 8, seed=7) != sampled_shapley(6, game, 8, seed=8)


def test_sampled_needs_two_pairs():
    with pytest.raises(ValueError, match="2 permutation pairs"):
        sampled_shapley(6, random_game(6, 0), n_permutations=1)


# ---------------------------------------------------------------------------------------------
# A tiny model with the MorphogeneticModel interface
# ---------------------------------------------------------------------------------------------


class FakeSlot(nn.Module):
    """lerp(h, seed(h), alpha); 'dormant' is the identity, 'fossil' is fully on."""

    def __init__(self, dim, stage, alpha):
        super().__init__()
        self.stage, self.alpha, self.forced = stage, alpha, None
        self.seed = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())

    def forward(self, h, alpha=None):
        if self.stage == "dormant":
            return h
        if self.stage == "fossil":
            return self.seed(h)
        a = self.alpha if alpha is None else alpha
        a = self.forced if alpha is None and self.forced is not None else a
        if isinstance(a, torch.Tensor):
            a = a.view(-1, *[1] * (h.dim() - 1))
        return torch.lerp(h, self.seed(h.detach()), torch.as_tensor(a, dtype=h.dtype))


class FakeModel(nn.Module):
    """Linear/ReLU blocks with dropout (so eval mode matters), a slot after each block."""

    def __init__(self, stages, alphas, d_in=5, dim=8, classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.slot_ids = [f"s{i}" for i in range(len(stages))]
        widths = [d_in] + [dim] * len(stages)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(widths[i], dim), nn.Tanh(), nn.Dropout(0.5))
            for i in range(len(stages))
        )
        self.head = nn.Linear(dim, classes)
        self.slots = nn.ModuleDict(
            {
                sid: FakeSlot(dim, st, a)
                for sid, st, a in zip(self.slot_ids, stages, alphas, strict=True)
            }
        )
        self.segment_rows: list[int] = []
        for module in self.modules():  # strong weights, no biases: predictions vary per sample
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=2.0 / module.in_features**0.5)
                nn.init.zeros_(module.bias)

    @property
    def n_segments(self):
        return len(self.slot_ids) + 1

    def run_segment(self, k, h):
        self.segment_rows.append(h.shape[0])
        return self.blocks[k](h) if k < len(self.blocks) else self.head(h)

    def forward(self, x):
        h = x
        for k, sid in enumerate(self.slot_ids):
            h = self.slots[sid](self.run_segment(k, h))
        return self.run_segment(len(self.slot_ids), h)

    def fused_forward(self, x, alpha_overrides):
        c, b = len(alpha_overrides), x.shape[0]
        h = x.repeat(c, *[1] * (x.dim() - 1))
        for k, sid in enumerate(self.slot_ids):
            slot = self.slots[sid]
            alpha = torch.tensor([o.get(sid, slot.alpha) for o in alpha_overrides])
            h = slot(self.run_segment(k, h), alpha=alpha.repeat_interleave(b))
        out = self.run_segment(len(self.slot_ids), h)
        return out.view(c, b, *out.shape[1:])

    @contextmanager
    def force_alpha(self, slot_id, value):
        self.slots[slot_id].forced = value
        try:
            yield
        finally:
            self.slots[slot_id].forced = None

    def active_slots(self):
        return [
            sid
            for sid in self.slot_ids
            if self.slots[sid].stage == "blend" and self.slots[sid].alpha > 0
        ]


class ClassTask:
    def correct(self, logits, y):
        return (logits.argmax(-1) == y).sum()

    def count(self, y):
        return y.numel()

    def loss(self, logits, y):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def batches(n_batches=3, b=16, d_in=5, classes=4, seq=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (b, d_in) if seq is None else (b, seq, d_in)
    return [
        (torch.randn(*shape, generator=g), torch.randint(0, classes, shape[:-1], generator=g))
        for _ in range(n_batches)
    ]


def reference_values(model, task, data):
    """(accuracy points, loss) per coalition by hand: one forward per coalition and batch."""
    active = model.active_slots()
    out = {}
    model.eval()
    with torch.no_grad():
        for c in all_coalitions(len(active)):
            for j, sid in enumerate(active):
                model.slots[sid].forced = model.slots[sid].alpha if j in c else 0.0
            logits = torch.cat([model(x) for x, _ in data])
            y = torch.cat([y for _, y in data])
            out[c] = (
                100.0 * int(task.correct(logits, y)) / task.count(y),
                float(task.loss(logits, y)),
            )
    for sid in active:
        model.slots[sid].forced = None
    return out


BLEND3 = (["blend", "blend", "blend"], [0.9, 0.6, 1.0])
MIXED = (["blend", "fossil", "dormant", "blend", "blend"], [0.7, 1.0, 0.0, 0.4, 0.8])


@pytest.mark.parametrize("method", ["prefix", "fused", "naive"])
@pytest.mark.parametrize("layout", [BLEND3, MIXED], ids=["blend3", "mixed"])
def test_engine_matches_hand_evaluation(method, layout):
    model, task, data = FakeModel(*layout), ClassTask(), batches()
    result = CounterfactualEngine(model, task, method=method).attribute(data)
    ref = reference_values(model, task, data)
    expected = exact_shapley(3, {c: acc for c, (acc, _) in ref.items()})
    assert result.exact and result.std is None and result.coalitions == 8
    assert list(result.shapley) == model.active_slots()
    assert list(result.shapley.values()) == pytest.approx(expected, abs=1e-5)
    assert any(abs(v) > 1.0 for v in expected)  # the seeds matter: the test can tell them apart
    full, empty = ref[frozenset({0, 1, 2})], ref[frozenset()]
    assert (result.full_value, result.full_loss) == pytest.approx(full, abs=1e-5)
    assert (result.empty_value, result.empty_loss) == pytest.approx(empty, abs=1e-5)
    assert sum(result.shapley.values()) == pytest.approx(
        result.full_value - result.empty_value, abs=1e-6
    )


def test_three_methods_agree_on_every_coalition_logit():
    model, data = FakeModel(*MIXED).eval(), batches(n_batches=1)
    x = data[0][0]
    active = model.active_slots()
    alphas = [model.slots[s].alpha for s in active]
    coalitions = all_coalitions(3)
    with torch.inference_mode():
        prefix, index = prefix_forward(model, x, active, alphas, coalitions)
        overrides = [
            {s: alphas[j] if j in c else 0.0 for j, s in enumerate(active)} for c in coalitions
        ]
        fused = model.fused_forward(x, overrides)
        for r, c in enumerate(coalitions):
            for j, sid in enumerate(active):
                model.slots[sid].forced = alphas[j] if j in c else 0.0
            naive = model(x)
            torch.testing.assert_close(prefix[index[c]], naive, atol=1e-5, rtol=0)
            torch.testing.assert_close(fused[r], naive, atol=1e-5, rtol=0)


def test_prefix_sharing_runs_15_segment_passes_instead_of_32():
    model, data = FakeModel(*BLEND3), batches(n_batches=1, b=16)
    for method, expected in [("prefix", 1 + 2 + 4 + 8), ("naive", 8 * 4)]:
        model.segment_rows.clear()
        engine = CounterfactualEngine(model, ClassTask(), method=method)
        engine._plain_pass_seconds = lambda batches: 1.0  # count attribution passes only
        engine.attribute(data)
        assert sum(model.segment_rows) == expected * 16, method


def test_stacked_batch_is_chunked_to_max_rows():
    model, data = FakeModel(*BLEND3), batches(n_batches=2, b=16)
    engine = CounterfactualEngine(model, ClassTask(), max_rows=32)
    engine._plain_pass_seconds = lambda batches: 1.0
    full = CounterfactualEngine(FakeModel(*BLEND3), ClassTask()).attribute(data)
    result = engine.attribute(data)
    assert max(model.segment_rows) <= 32
    assert result.shapley == pytest.approx(full.shapley, abs=1e-5)


def test_language_model_logits():
    model, task = FakeModel(*BLEND3), ClassTask()
    data = batches(n_batches=2, b=4, seq=6)
    results = [
        CounterfactualEngine(model, task, method=m).attribute(data) for m in ("prefix", "naive")
    ]
    assert results[0].shapley == pytest.approx(results[1].shapley, abs=1e-5)
    assert results[0].full_loss == pytest.approx(results[1].full_loss, abs=1e-5)
    assert results[0].empty_loss == pytest.approx(results[1].empty_loss, abs=1e-5)


def test_mode_is_restored_and_dropout_is_off_during_attribution():
    model, data = FakeModel(*BLEND3), batches()
    model.train()
    model.blocks[0].eval()  # a submodule with its own mode keeps it
    a = CounterfactualEngine(model, ClassTask()).attribute(data)
    b = CounterfactualEngine(model, ClassTask()).attribute(data)
    assert a.shapley == b.shapley  # dropout active would make repeated runs differ
    assert model.training and model.blocks[1].training and not model.blocks[0].training


def test_sampling_above_exact_max():
    stages, alphas = ["blend"] * 6, [0.9, 0.5, 0.8, 0.3, 1.0, 0.6]
    model, task, data = FakeModel(stages, alphas), ClassTask(), batches(b=24)
    result = CounterfactualEngine(model, task, exact_max=4, permutations=8).attribute(data)
    exact = CounterfactualEngine(model, task, exact_max=6).attribute(data)
    assert not result.exact and set(result.std) == set(result.shapley)
    assert exact.exact and exact.coalitions == 64
    assert 2 < result.coalitions <= 64
    assert sum(result.shapley.values()) == pytest.approx(
        result.full_value - result.empty_value, abs=1e-6
    )
    for sid, value in result.shapley.items():
        assert abs(value - exact.shapley[sid]) <= 4 * result.std[sid] + 1e-9


def test_sampled_engine_with_all_orders_matches_exact():
    model, task, data = FakeModel(*BLEND3), ClassTask(), batches()
    sampled = CounterfactualEngine(model, task, exact_max=2, permutations=3).attribute(data)
    exact = CounterfactualEngine(model, task).attribute(data)
    assert not sampled.exact and sampled.std == {s: 0.0 for s in exact.shapley}
    assert sampled.shapley == pytest.approx(exact.shapley, abs=1e-9)


def test_no_active_seed_attributes_nothing():
    model, data = FakeModel(["dormant", "fossil"], [0.0, 1.0]), batches()
    result = CounterfactualEngine(model, ClassTask()).attribute(data)
    assert result.shapley == {} and result.coalitions == 1
    assert result.full_value == result.empty_value


def test_cost_ratio_is_measured():
    result = CounterfactualEngine(FakeModel(*BLEND3), ClassTask()).attribute(batches())
    assert result.cost_ratio is not None and math.isfinite(result.cost_ratio)
    assert result.cost_ratio > 1.0  # 15 segment passes cannot beat 4


@pytest.mark.parametrize(
    "kwargs", [{"method": "fast"}, {"permutations": 1}, {"exact_max": -1}, {"max_rows": 0}]
)
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        CounterfactualEngine(FakeModel(*BLEND3), ClassTask(), **kwargs)


def test_empty_batch_list_is_rejected():
    with pytest.raises(ValueError, match="at least one validation batch"):
        CounterfactualEngine(FakeModel(*BLEND3), ClassTask()).attribute([])


# ---------------------------------------------------------------------------------------------
# The real MorphogeneticModel
# ---------------------------------------------------------------------------------------------

CNN = types.SimpleNamespace(host_kind="cnn", num_classes=10, seq_len=None)
LM = types.SimpleNamespace(host_kind="transformer", num_classes=256, seq_len=8)


def real_task(spec):
    """The real Task's loss/correct/count, without generating a data set."""
    empty = torch.zeros(0)
    return Task(
        name="tiny",
        kind="classification" if spec.seq_len is None else "language_model",
        host_kind=spec.host_kind,
        num_classes=spec.num_classes,
        random_guess_loss=math.log(spec.num_classes),
        host_lr=0.05,
        seed_lr=0.05,
        train_x=empty,
        train_y=empty,
        val_x=empty,
        val_y=empty,
        seq_len=spec.seq_len,
    )


def blending_model(spec, blueprints, **host_kwargs):
    """A real model with a seed in BLENDING in every slot, moved away from the identity."""
    torch.manual_seed(0)
    model = create_model(spec, "cpu", **host_kwargs)
    for sid, bp in zip(model.slot_ids, blueprints, strict=True):
        model.germinate(sid, bp, blend_epochs=3)
    for _ in range(3):  # GERMINATED -> TRAINING, then the minimum training epochs
        for sid in model.slot_ids:
            model.slots[sid].record_seed_grad_health(True)
        model.end_epoch()
    for sid in model.slot_ids:
        model.advance(sid)
    model.end_epoch()  # alpha 1/3 -> 2/3
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for sid in model.slot_ids:
            for p in model.seed_parameters(sid):
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    assert all(model.slots[s].stage is SeedStage.BLENDING for s in model.slot_ids)
    assert model.active_slots() == model.slot_ids
    return model


def image_batches(n_batches=2, b=8):
    g = torch.Generator().manual_seed(3)
    return [
        (torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 10, (b,), generator=g))
        for _ in range(n_batches)
    ]


def token_batches(n_batches=2, b=3, seq=8):
    g = torch.Generator().manual_seed(3)
    return [
        (torch.randint(0, 256, (b, seq), generator=g), torch.randint(0, 256, (b, seq), generator=g))
        for _ in range(n_batches)
    ]


def assert_same_attribution(a, b):
    assert a.shapley == pytest.approx(b.shapley, abs=1e-5)
    assert (a.full_value, a.empty_value) == pytest.approx((b.full_value, b.empty_value), abs=1e-5)
    assert (a.full_loss, a.empty_loss) == pytest.approx((b.full_loss, b.empty_loss), abs=1e-5)
    assert a.coalitions == b.coalitions


def test_real_cnn_three_methods_agree():
    model = blending_model(CNN, ["conv_light", "attention", "depthwise"])
    task, data = real_task(CNN), image_batches()
    results = {
        m: CounterfactualEngine(model, task, method=m).attribute(data)
        for m in ("prefix", "fused", "naive")
    }
    prefix = results["prefix"]
    assert prefix.exact and prefix.coalitions == 8 and list(prefix.shapley) == model.slot_ids
    assert prefix.full_loss != pytest.approx(prefix.empty_loss, abs=1e-3)  # the seeds matter
    assert sum(prefix.shapley.values()) == pytest.approx(
        prefix.full_value - prefix.empty_value, abs=1e-6
    )
    assert_same_attribution(prefix, results["naive"])
    assert_same_attribution(results["fused"], results["naive"])


def test_real_cnn_prefix_runs_15_segment_passes():
    model = blending_model(CNN, ["conv_light", "conv_heavy", "norm"])
    rows = []
    run_segment = model.run_segment

    def counting(k, h):
        rows.append(h.shape[0])
        return run_segment(k, h)

    model.run_segment = counting
    engine = CounterfactualEngine(model, real_task(CNN))
    engine._plain_pass_seconds = lambda batches: 1.0  # count attribution passes only
    engine.attribute(image_batches(n_batches=1, b=8))
    assert model.n_segments == 4
    assert sum(rows) == (1 + 2 + 4 + 8) * 8


def test_real_cnn_attribution_leaves_the_model_as_it_was():
    model = blending_model(CNN, ["conv_light", "attention", "depthwise"]).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    alphas = [model.slots[s].alpha for s in model.slot_ids]
    CounterfactualEngine(model, real_task(CNN)).attribute(image_batches())
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats untouched
    assert [model.slots[s].alpha for s in model.slot_ids] == alphas
    assert all(model.slots[s].forced_alpha is None for s in model.slot_ids)


def test_real_lm_prefix_matches_naive():
    model = blending_model(LM, ["attention", "lora", "mlp_small"], d_model=16, n_heads=2)
    task, data = real_task(LM), token_batches()
    prefix = CounterfactualEngine(model, task).attribute(data)
    naive = CounterfactualEngine(model, task, method="naive").attribute(data)
    assert prefix.full_loss != pytest.approx(prefix.empty_loss, abs=1e-3)
    assert_same_attribution(prefix, naive)


def test_prefix_forward_needs_players_in_depth_order():
    model, data = FakeModel(*BLEND3).eval(), batches(n_batches=1)
    with pytest.raises(ValueError, match="depth order"):
        prefix_forward(model, data[0][0], ["s2", "s0"], [1.0, 1.0], all_coalitions(2))
