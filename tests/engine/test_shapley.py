from __future__ import annotations

import itertools
import math
import random
import types
from contextlib import ExitStack, contextmanager

import msgspec
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper_engine.config import TrainingConfig
from esper_engine.contracts import Attribution, EpochSummary, decode_event, encode
from esper_engine.lifecycle import SeedStage
from esper_engine.model import create_model
from esper_engine.shapley import (
    CounterfactualEngine,
    _permutation_coalitions,
    all_coalitions,
    antithetic_pairs,
    attribution_seed,
    estimate_shapley,
    exact_shapley,
    prefix_forward,
    sampling_needs_every_coalition,
)
from esper_engine.tasks import Task, load_task
from esper_engine.telemetry import ListSink
from esper_engine.trainer import VectorizedTrainer

# ---------------------------------------------------------------------------------------------
# Toy games
# ---------------------------------------------------------------------------------------------


def table(n, value):
    """A game as the engine hands it over: a value for every coalition."""
    return {c: value(c) for c in all_coalitions(n)}


def additive(n, weights):
    return table(n, lambda c: sum(weights[i] for i in c))


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


def sampled(n, game, n_pairs, seed):
    """The engine's sampling path on a toy game: draw pairs, then estimate."""
    return estimate_shapley(n, antithetic_pairs(n, n_pairs, random.Random(seed)), game)


def test_exact_matches_average_over_all_orders():
    game = random_game(4, seed=1)
    assert exact_shapley(4, game) == pytest.approx(permutation_shapley(4, game), abs=1e-12)


def test_exact_additive_game_returns_its_weights():
    weights = [0.5, -2.0, 3.25, 0.0, 1.5]
    assert exact_shapley(5, additive(5, weights)) == pytest.approx(weights, abs=1e-12)


def test_exact_symmetric_game_gives_equal_values():
    # majority game: value depends on coalition size only
    phi = exact_shapley(5, table(5, lambda c: float(len(c) >= 3)))
    assert phi == pytest.approx([phi[0]] * 5, abs=1e-12)
    assert sum(phi) == pytest.approx(1.0, abs=1e-12)


def test_exact_unanimity_game_splits_among_carriers():
    carriers = {1, 3}
    phi = exact_shapley(4, table(4, lambda c: float(carriers <= c)))
    assert phi == pytest.approx([0.0, 0.5, 0.0, 0.5], abs=1e-12)


@pytest.mark.parametrize("n", [0, 1, 3, 6])
def test_exact_efficiency(n):
    game = random_game(n, seed=n)
    assert sum(exact_shapley(n, game)) == pytest.approx(
        game[frozenset(range(n))] - game[frozenset()], abs=1e-6
    )


def test_exact_missing_coalition_is_an_error():
    with pytest.raises(KeyError):
        exact_shapley(2, {frozenset(): 0.0, frozenset({0}): 1.0})


def test_sampled_additive_game_has_zero_variance():
    weights = [1.0, -0.5, 2.0, 0.25, 3.0, -1.5]
    values, std = sampled(6, additive(6, weights), n_pairs=4, seed=0)
    assert values == pytest.approx(weights, abs=1e-12)
    assert std == pytest.approx([0.0] * 6, abs=1e-12)


def test_sampled_is_efficient_for_any_game():
    game = random_game(6, seed=3)
    values, _ = sampled(6, game, n_pairs=5, seed=1)
    assert sum(values) == pytest.approx(game[frozenset(range(6))] - game[frozenset()], abs=1e-9)


def test_sampled_estimate_lies_within_its_standard_error():
    game = random_game(6, seed=5)
    values, std = sampled(6, game, n_pairs=200, seed=2)
    exact = permutation_shapley(6, game)
    assert all(s > 0 for s in std)
    assert all(abs(v - e) <= 4 * s for v, e, s in zip(values, exact, std, strict=True))


def test_sampled_is_reproducible_from_its_seed():
    game = random_game(6, seed=6)
    assert sampled(6, game, 8, seed=7) == sampled(6, game, 8, seed=7)
    assert sampled(6, game, 8, seed=7) != sampled(6, game, 8, seed=8)


@pytest.mark.parametrize("n", range(1, 9))
def test_exact_is_chosen_exactly_when_a_sample_could_need_every_coalition(n):
    rng = random.Random(n)
    for n_pairs in range(2, 40):
        pairs = antithetic_pairs(n, n_pairs, rng)
        needed = _permutation_coalitions([p for pair in pairs for p in pair])
        bound = 2 + 2 * n_pairs * (n - 1)
        assert len(needed) <= min(bound, 2**n)  # the bound the criterion uses holds
        if not sampling_needs_every_coalition(n, n_pairs):
            assert len(needed) < 2**n  # sampling is only kept when it is cheaper than exact
        if math.factorial(n) <= 2 * n_pairs:  # all orders fit: exact was always reachable
            assert sampling_needs_every_coalition(n, n_pairs)


def test_default_budget_attributes_five_and_nine_seeds_exactly():
    assert sampling_needs_every_coalition(5, 32) and sampling_needs_every_coalition(9, 32)
    assert not sampling_needs_every_coalition(5, 3) and not sampling_needs_every_coalition(10, 32)


# ---------------------------------------------------------------------------------------------
# Attribution seeds
# ---------------------------------------------------------------------------------------------


def test_attribution_seed_is_distinct_per_env_episode_and_epoch():
    keys = list(itertools.product([0, 1, 7], range(4), range(4), range(5)))
    seeds = [attribution_seed(*k) for k in keys]
    assert len(set(seeds)) == len(keys)  # also tells (env=1, episode=2) from (2, 1)
    assert all(0 <= s < 2**63 for s in seeds)


def test_attribution_seed_is_stable_across_calls_and_processes():
    assert attribution_seed(3, 1, 2, 5) == attribution_seed(3, 1, 2, 5)
    # a fixed value: Python's salted hash() would change between interpreter runs
    assert attribution_seed(0, 0, 0, 0) == 6244629720666522522


def test_attribution_seed_rejects_non_integers():
    with pytest.raises(TypeError):
        attribution_seed(0, 1.5, 0, 0)


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

    def run_segment_io(self, k, h):
        return self.run_segment(k, h), None  # no slot here reads its block's input (no widen)

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


# ---------------------------------------------------------------------------------------------
# Oracles: v(S) the slow, obvious ways (test-only; the engine has one evaluation, prefix sharing)
# ---------------------------------------------------------------------------------------------


def coalition_alphas(model, c):
    """Each active slot's alpha within coalition c: its own when in, 0 when out."""
    return {
        sid: model.slots[sid].alpha if j in c else 0.0 for j, sid in enumerate(model.active_slots())
    }


def scores_of(task, logits, data):
    """(accuracy as a fraction, mean loss) of logits over every batch at once."""
    y = torch.cat([y for _, y in data])
    return int(task.correct(logits, y)) / task.count(y), float(task.loss(logits, y))


@contextmanager
def evaluating(model):
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def naive_scores(model, task, data):
    """One plain forward per coalition and batch, alphas forced through ``force_alpha``."""
    out = {}
    with evaluating(model):
        for c in all_coalitions(len(model.active_slots())):
            with ExitStack() as stack:
                for sid, alpha in coalition_alphas(model, c).items():
                    stack.enter_context(model.force_alpha(sid, alpha))
                out[c] = scores_of(task, torch.cat([model(x) for x, _ in data]), data)
    return out


def fused_scores(model, task, data):
    """Every coalition in one ``fused_forward`` per batch, stacked along the batch."""
    coalitions = all_coalitions(len(model.active_slots()))
    overrides = [coalition_alphas(model, c) for c in coalitions]
    with evaluating(model):
        logits = torch.cat([model.fused_forward(x, overrides) for x, _ in data], dim=1)
    return {c: scores_of(task, logits[r], data) for r, c in enumerate(coalitions)}


def oracle_shapley(scores):
    """Exact Shapley of the accuracy by the all-orders definition."""
    n = max(map(len, scores))
    return permutation_shapley(n, {c: acc for c, (acc, _) in scores.items()})


def assert_matches_oracle(result, scores):
    n = len(result.shapley)
    assert result.exact and result.std is None and result.coalitions == 2**n
    # Accuracies are fractions: 1e-7 is far below one sample's worth (1 / a few hundred).
    assert list(result.shapley.values()) == pytest.approx(oracle_shapley(scores), abs=1e-7)
    (full, full_loss), (empty, empty_loss) = scores[frozenset(range(n))], scores[frozenset()]
    assert (result.full_value, result.empty_value) == pytest.approx((full, empty), abs=1e-7)
    assert (result.full_loss, result.empty_loss) == pytest.approx((full_loss, empty_loss), abs=1e-5)
    assert sum(result.shapley.values()) == pytest.approx(
        result.full_value - result.empty_value, abs=1e-9
    )


def count_attribution_passes(engine):
    engine._plain_pass_seconds = lambda batches: 1.0  # count attribution passes only
    return engine


BLEND3 = (["blend", "blend", "blend"], [0.9, 0.6, 1.0])
MIXED = (["blend", "fossil", "dormant", "blend", "blend"], [0.7, 1.0, 0.0, 0.4, 0.8])
BLEND5 = (["blend"] * 5, [0.9, 0.5, 0.8, 0.3, 1.0])
BLEND7 = (["blend"] * 7, [0.9, 0.5, 0.8, 0.3, 1.0, 0.6, 0.7])


@pytest.mark.parametrize("layout", [BLEND3, MIXED], ids=["blend3", "mixed"])
def test_engine_matches_naive_and_fused_oracles(layout):
    model, task, data = FakeModel(*layout), ClassTask(), batches()
    result = CounterfactualEngine(model, task).attribute(data)
    naive = naive_scores(model, task, data)
    assert list(result.shapley) == model.active_slots()
    assert_matches_oracle(result, naive)
    assert_matches_oracle(result, fused_scores(model, task, data))
    assert any(abs(v) > 0.01 for v in oracle_shapley(naive))  # the seeds matter


def test_prefix_fused_and_naive_agree_on_every_coalition_logit():
    model, data = FakeModel(*MIXED).eval(), batches(n_batches=1)
    x = data[0][0]
    active = model.active_slots()
    alphas = [model.slots[s].alpha for s in active]
    coalitions = all_coalitions(3)
    with torch.inference_mode():
        prefix, index = prefix_forward(model, x, active, alphas, coalitions)
        fused = model.fused_forward(x, [coalition_alphas(model, c) for c in coalitions])
        for r, c in enumerate(coalitions):
            with ExitStack() as stack:
                for sid, alpha in coalition_alphas(model, c).items():
                    stack.enter_context(model.force_alpha(sid, alpha))
                naive = model(x)
            torch.testing.assert_close(prefix[index[c]], naive, atol=1e-5, rtol=0)
            torch.testing.assert_close(fused[r], naive, atol=1e-5, rtol=0)


def test_prefix_sharing_runs_15_segment_passes_instead_of_32():
    model, task, data = FakeModel(*BLEND3), ClassTask(), batches(n_batches=1, b=16)
    count_attribution_passes(CounterfactualEngine(model, task)).attribute(data)
    assert sum(model.segment_rows) == (1 + 2 + 4 + 8) * 16
    model.segment_rows.clear()
    naive_scores(model, task, data)
    assert sum(model.segment_rows) == 8 * 4 * 16


def test_stacked_batch_is_chunked_to_max_rows():
    model, data = FakeModel(*BLEND3), batches(n_batches=2, b=16)
    engine = count_attribution_passes(CounterfactualEngine(model, ClassTask(), max_rows=32))
    full = CounterfactualEngine(FakeModel(*BLEND3), ClassTask()).attribute(data)
    result = engine.attribute(data)
    assert max(model.segment_rows) <= 32
    assert result.shapley == pytest.approx(full.shapley, abs=1e-7)


def test_language_model_logits():
    model, task = FakeModel(*BLEND3), ClassTask()
    data = batches(n_batches=2, b=4, seq=6)
    result = CounterfactualEngine(model, task).attribute(data)
    assert_matches_oracle(result, naive_scores(model, task, data))


def test_mode_is_restored_and_dropout_is_off_during_attribution():
    model, data = FakeModel(*BLEND3), batches()
    model.train()
    model.blocks[0].eval()  # a submodule with its own mode keeps it
    a = CounterfactualEngine(model, ClassTask()).attribute(data)
    b = CounterfactualEngine(model, ClassTask()).attribute(data)
    assert a.shapley == b.shapley  # dropout active would make repeated runs differ
    assert model.training and model.blocks[1].training and not model.blocks[0].training


def test_budget_covering_every_coalition_is_exact_above_exact_max():
    # 5 seeds, the default 32 pairs: a sample could need up to 258 coalitions, exact needs 32
    model, task, data = FakeModel(*BLEND5), ClassTask(), batches(b=24)
    result = CounterfactualEngine(model, task, exact_max=4, permutations=32).attribute(data)
    assert_matches_oracle(result, naive_scores(model, task, data))


@pytest.mark.parametrize(("n_pairs", "exact"), [(6, False), (7, True)])
def test_exact_switch_sits_where_the_sample_could_need_all_64_coalitions(n_pairs, exact):
    # 6 seeds: 2 + 2 * pairs * 5 distinct coalitions at most, against 2^6 = 64
    model, task, data = (
        FakeModel(["blend"] * 6, [0.9, 0.5, 0.8, 0.3, 1.0, 0.6]),
        ClassTask(),
        batches(),
    )
    result = CounterfactualEngine(model, task, exact_max=0, permutations=n_pairs).attribute(data)
    assert result.exact is exact and (result.std is None) is exact
    if exact:
        assert_matches_oracle(result, naive_scores(model, task, data))
    else:
        assert result.coalitions <= 2 + 2 * n_pairs * 5 < 64


def test_sampling_when_the_budget_cannot_cover_every_coalition():
    model, task, data = FakeModel(*BLEND7), ClassTask(), batches(b=24)
    result = CounterfactualEngine(model, task, exact_max=4, permutations=8).attribute(data)
    exact = CounterfactualEngine(model, task, exact_max=7).attribute(data)
    assert not result.exact and set(result.std) == set(result.shapley)
    assert exact.exact and exact.coalitions == 128
    assert 2 < result.coalitions <= 2 + 2 * 8 * 6
    assert sum(result.shapley.values()) == pytest.approx(
        result.full_value - result.empty_value, abs=1e-6
    )
    for sid, value in result.shapley.items():
        assert abs(value - exact.shapley[sid]) <= 4 * result.std[sid] + 1e-9


def test_attribution_seeds_draw_distinct_reproducible_permutations():
    model, task, data = FakeModel(*BLEND7), ClassTask(), batches()

    def attribute(env, episode, epoch):
        seed = attribution_seed(11, env, episode, epoch)
        return CounterfactualEngine(model, task, permutations=4, seed=seed).attribute(data).shapley

    first = attribute(0, 0, 1)
    assert attribute(0, 0, 1) == first
    assert all(attribute(*k) != first for k in [(1, 0, 1), (0, 1, 1), (0, 0, 2)])


def test_no_active_seed_attributes_nothing():
    model, data = FakeModel(["dormant", "fossil"], [0.0, 1.0]), batches()
    result = CounterfactualEngine(model, ClassTask()).attribute(data)
    assert result.shapley == {} and result.coalitions == 1
    assert result.full_value == result.empty_value


def test_cost_ratio_is_measured():
    result = CounterfactualEngine(FakeModel(*BLEND3), ClassTask()).attribute(batches())
    assert result.cost_ratio is not None and math.isfinite(result.cost_ratio)
    assert result.cost_ratio > 1.0  # 15 segment passes cannot beat 4


@pytest.mark.parametrize("kwargs", [{"permutations": 1}, {"exact_max": -1}, {"max_rows": 0}])
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
            model.slots[sid].record_seed_grad_health(torch.tensor(True))
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


def test_real_cnn_matches_naive_and_fused_oracles():
    model = blending_model(CNN, ["conv_light", "attention", "depthwise"])
    task, data = real_task(CNN), image_batches()
    result = CounterfactualEngine(model, task).attribute(data)
    assert list(result.shapley) == model.slot_ids
    assert result.full_loss != pytest.approx(result.empty_loss, abs=1e-3)  # the seeds matter
    assert_matches_oracle(result, naive_scores(model, task, data))
    assert_matches_oracle(result, fused_scores(model, task, data))


def test_real_attribution_is_the_contracts_event_in_fractions():
    # SPEC 9: accuracies, Shapley values, v(all) and v(none) are fractions (never points).
    model = blending_model(CNN, ["conv_light", "attention", "depthwise"])
    task, data = real_task(CNN), image_batches()
    result = CounterfactualEngine(model, task).attribute(data)
    assert type(result) is Attribution and (result.run_id, result.env) == ("", None)
    assert 0.0 <= result.empty_value <= 1.0 and 0.0 <= result.full_value <= 1.0
    assert all(-1.0 <= v <= 1.0 for v in result.shapley.values())
    assert sum(result.shapley.values()) == pytest.approx(
        result.full_value - result.empty_value, abs=1e-9
    )
    n = sum(len(y) for _, y in data)
    for value in (result.full_value, result.empty_value):  # a whole number of correct samples
        assert value * n == pytest.approx(round(value * n), abs=1e-6)
    assert decode_event(encode(msgspec.structs.replace(result, env=1))).shapley == result.shapley


def test_real_cnn_prefix_runs_15_segment_passes():
    model = blending_model(CNN, ["conv_light", "conv_heavy", "norm"])
    rows = []
    run_segment = model.run_segment

    def counting(k, h):
        rows.append(h.shape[0])
        return run_segment(k, h)

    model.run_segment = counting
    engine = count_attribution_passes(CounterfactualEngine(model, real_task(CNN)))
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


def test_real_lm_matches_naive_oracle():
    model = blending_model(LM, ["attention", "lora", "mlp_small"], d_model=16, n_heads=2)
    task, data = real_task(LM), token_batches()
    result = CounterfactualEngine(model, task).attribute(data)
    assert result.full_loss != pytest.approx(result.empty_loss, abs=1e-3)
    assert_matches_oracle(result, naive_scores(model, task, data))


def test_prefix_forward_needs_players_in_depth_order():
    model, data = FakeModel(*BLEND3).eval(), batches(n_batches=1)
    with pytest.raises(ValueError, match="depth order"):
        prefix_forward(model, data[0][0], ["s2", "s0"], [1.0, 1.0], all_coalitions(2))


def _attributions_and_accuracies(task, config) -> tuple[list[Attribution], dict]:
    sink = ListSink()
    finished = VectorizedTrainer(config, sink, run_id="t", task=task).run()
    assert finished.status == "completed", finished.error
    summaries = [e for e in sink.events if isinstance(e, EpochSummary)]
    accuracy = {(e.env, e.epoch): e.val_accuracy for e in summaries}
    attributions = [e for e in sink.events if isinstance(e, Attribution)]
    assert attributions, "the heuristic should have blended a seed within 10 epochs"
    return attributions, accuracy


def test_the_trainer_attributes_on_the_first_attribution_batches():
    """attribution_batches=1 of 2 validation batches of 32: exact Shapley values of accuracy on
    the first 32 samples (multiples of 1/32), where every batch gives the epoch's accuracy."""
    task = load_task("synthetic-images", seed=0, scale="small")
    config = TrainingConfig(
        n_envs=1, episodes=1, epochs=10, batches_per_epoch=4, batch_size=16, val_batches=2
    )
    on_all, accuracy = _attributions_and_accuracies(task, config)
    assert all(a.full_value == pytest.approx(accuracy[a.env, a.epoch]) for a in on_all)
    subset = msgspec.structs.replace(config, attribution_batches=1)
    on_first, accuracy = _attributions_and_accuracies(task, subset)
    for a in on_first:
        assert a.exact
        assert sum(a.shapley.values()) == pytest.approx(a.full_value - a.empty_value, abs=1e-9)
        for value in (a.full_value, a.empty_value):
            assert value * 32 == pytest.approx(round(value * 32), abs=1e-9)
    assert any(a.full_value != pytest.approx(accuracy[a.env, a.epoch]) for a in on_first)


@pytest.mark.parametrize(
    ("spec", "blueprints", "host_kwargs"),
    [
        (CNN, ["widen", "stack", "conv_light"], {}),
        (LM, ["stack", "widen", "lora"], {"d_model": 16, "n_heads": 2}),
    ],
)
def test_growth_operators_match_naive_and_fused_oracles(spec, blueprints, host_kwargs):
    """widen (whose units read the block's input) and stack seeds are attributed like any seed:
    the prefix-sharing engine, one forward per coalition and the fused forward agree exactly."""
    model = blending_model(spec, blueprints, **host_kwargs)
    task = real_task(spec)
    data = image_batches() if spec is CNN else token_batches()
    result = CounterfactualEngine(model, task).attribute(data)
    assert list(result.shapley) == model.slot_ids
    assert result.full_loss != pytest.approx(result.empty_loss, abs=1e-3)  # the seeds matter
    assert_matches_oracle(result, naive_scores(model, task, data))
    assert_matches_oracle(result, fused_scores(model, task, data))
