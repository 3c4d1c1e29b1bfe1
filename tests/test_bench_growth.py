"""The growth study's statistics: the frontier, readings on log FLOPs, out-of-range runs, the
bootstrap, and the compute price the reward charges."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from _frontier import (  # noqa: E402
    ABOVE,
    BELOW,
    IN,
    Point,
    acc_at,
    bootstrap_ci,
    compare,
    envelope,
    exchange_rate,
    flops_at,
    geometric_mean,
    ratio_cell,
    summarise_arm,
)

from esper_engine.config import TrainingConfig  # noqa: E402
from esper_engine.policy.rewards import compute_price  # noqa: E402

# A seed's static runs: accuracy rises 10 points per doubling of FLOPs (1e9 -> 0.60, 2e9 ->
# 0.70, 4e9 -> 0.80); a costlier run that is worse (8e9 -> 0.75) and a duplicate cost that is
# worse (2e9 -> 0.65) are not on the frontier.
RUNS = [
    Point(2e9, 0.70),
    Point(8e9, 0.75),
    Point(1e9, 0.60),
    Point(4e9, 0.80),
    Point(2e9, 0.65),
]


def test_envelope_keeps_the_runs_no_cheaper_run_matches() -> None:
    assert envelope(RUNS) == [Point(1e9, 0.60), Point(2e9, 0.70), Point(4e9, 0.80)]


def test_flops_at_interpolates_on_log_flops() -> None:
    frontier = envelope(RUNS)
    # 0.75 is halfway between 2e9 and 4e9 on log FLOPs: 2e9 * sqrt(2), not the linear 3e9.
    reading = flops_at(frontier, 0.75)
    assert reading.where == IN
    assert reading.value == pytest.approx(2e9 * math.sqrt(2))
    assert flops_at(frontier, 0.70) == flops_at(frontier, 0.70)
    assert flops_at(frontier, 0.70).value == pytest.approx(2e9)


def test_acc_at_interpolates_on_log_flops() -> None:
    frontier = envelope(RUNS)
    reading = acc_at(frontier, 2e9 * math.sqrt(2))
    assert reading.where == IN
    assert reading.value == pytest.approx(0.75)
    assert acc_at(frontier, 1e9).value == pytest.approx(0.60)


def test_readings_outside_the_range_are_bounds_not_extrapolations() -> None:
    frontier = envelope(RUNS)
    above = flops_at(frontier, 0.85)
    assert (above.where, above.value) == (ABOVE, 4e9)
    below = flops_at(frontier, 0.50)
    assert (below.where, below.value) == (BELOW, 1e9)
    assert acc_at(frontier, 1e10).where == ABOVE
    assert acc_at(frontier, 5e8).where == BELOW


def test_a_growth_run_reads_as_a_ratio_and_an_accuracy_gain() -> None:
    frontier = envelope(RUNS)
    # 0.75 accuracy with 2e9 FLOPs: the frontier needs 2.83e9 for it, and gives 0.70 at 2e9.
    row = compare(3, Point(2e9, 0.75), frontier)
    assert row.ratio == pytest.approx(1 / math.sqrt(2))
    assert row.acc_gain == pytest.approx(5.0)
    assert ratio_cell(row) == "0.71"
    above = compare(4, Point(3e9, 0.90), frontier)
    assert ratio_cell(above) == "<0.75 (above)"
    below = compare(5, Point(3e9, 0.50), frontier)
    assert ratio_cell(below) == ">3.00 (below)"


def test_the_summary_leaves_out_of_range_seeds_out_of_the_ci_and_counts_them() -> None:
    frontier = envelope(RUNS)
    rows = [
        compare(0, Point(2e9, 0.75), frontier),
        compare(1, Point(2e9, 0.75), frontier),
        compare(2, Point(3e9, 0.90), frontier),
        compare(3, Point(3e9, 0.50), frontier),
    ]
    summary = summarise_arm(rows)
    assert (summary.n, summary.n_ratio, summary.above, summary.below) == (4, 2, 1, 1)
    assert summary.ratio == pytest.approx(1 / math.sqrt(2))
    assert summary.ratio_ci == pytest.approx((1 / math.sqrt(2), 1 / math.sqrt(2)))


def test_exchange_rate_is_points_per_doubling() -> None:
    assert exchange_rate(envelope(RUNS)) == pytest.approx(10.0)
    assert math.isnan(exchange_rate([Point(1e9, 0.5)]))


def test_bootstrap_ci_of_a_constant_is_that_constant() -> None:
    assert bootstrap_ci([0.8] * 6, resamples=500) == pytest.approx((0.8, 0.8))


def test_bootstrap_ci_matches_the_exact_resampling_distribution() -> None:
    # Six values, three -1 and three +1: a resample's mean is (2K - 6) / 6 with K ~ Bin(6, 1/2).
    # P(K <= 0) = 1/64 < 2.5% < P(K <= 1) = 7/64, so the 2.5th percentile is K = 1 (-2/3) and,
    # by symmetry, the 97.5th is K = 5 (+2/3).
    low, high = bootstrap_ci([-1.0, 1.0] * 3, resamples=20_000, seed=7)
    assert (low, high) == pytest.approx((-2 / 3, 2 / 3))


def test_bootstrap_ci_of_ratios_uses_the_geometric_mean() -> None:
    # Log ratios -1 and +1 (ratios e^-1, e): the geometric mean's CI is e^(-2/3) .. e^(2/3).
    ratios = [math.exp(-1), math.e] * 3
    low, high = bootstrap_ci(ratios, geometric_mean, resamples=20_000, seed=3)
    assert (low, high) == pytest.approx((math.exp(-2 / 3), math.exp(2 / 3)))


def test_envelope_refuses_nothing_to_read() -> None:
    with pytest.raises(ValueError, match="at least one"):
        envelope([])


def test_compute_price_charges_lambda_per_doubling() -> None:
    assert compute_price(4e9, 1e9, 8.0) == pytest.approx(16.0)
    assert compute_price(1e9, 1e9, 8.0) == 0.0
    assert compute_price(5e8, 1e9, 8.0) == pytest.approx(-8.0)
    with pytest.raises(ValueError, match="static_flops"):
        compute_price(1e9, 0, 8.0)


def test_cosine_to_zero_decays_to_about_zero_by_the_budgets_end() -> None:
    for epochs in (6, 9, 12):
        config = TrainingConfig(epochs=epochs, lr_schedule="cosine_to_zero")
        scales = [config.lr_scale(e) for e in range(epochs)]
        assert scales == sorted(scales, reverse=True)
        assert scales[-1] < 0.02
        assert scales[0] > 0.98
    # the default cosine never gets there: its last epoch still trains at a few percent
    assert TrainingConfig(epochs=6).lr_scale(5) > 0.06


# --- the headroom's scripted plans and the study's readings ---------------------------------

from _headroom import Plan, Planting, ScriptedPolicy, Variant  # noqa: E402

from esper_engine.contracts import Op, SeedStage  # noqa: E402
from esper_engine.policy.actions import Action, validate  # noqa: E402
from esper_engine.policy.observation import EnvObservation, SlotObservation  # noqa: E402

SLOT_IDS = ("block1", "block2", "block3")
BLUEPRINTS = ("conv_light", "conv_heavy", "attention", "depthwise", "norm")


def _obs(epoch: int, *slots: SlotObservation, max_epochs: int = 12) -> EnvObservation:
    return EnvObservation(
        epoch=epoch,
        max_epochs=max_epochs,
        val_accuracy=0.5,
        val_loss=1.0,
        train_loss=1.0,
        random_guess_loss=2.3,
        acc_history=(0.5,) * (epoch + 1),
        loss_history=(1.0,) * (epoch + 1),
        slots=slots,
    )


DORMANT = SlotObservation(SeedStage.DORMANT)


def _act(policy: ScriptedPolicy, obs: EnvObservation) -> Action:
    action = policy.act(obs)
    validate(action, obs, len(BLUEPRINTS))  # never an illegal action
    return action


def test_a_plan_plants_in_order_then_advances_then_fossilizes() -> None:
    plan = Plan(
        "two", (Planting("block3", "depthwise"), Planting("block2", "conv_light")), blend_epochs=2
    )
    policy = ScriptedPolicy(plan, SLOT_IDS, BLUEPRINTS)
    assert _act(policy, _obs(0, DORMANT, DORMANT, DORMANT)) == Action(Op.GERMINATE, 2, 3)
    germinated = SlotObservation(SeedStage.GERMINATED, "depthwise")
    assert _act(policy, _obs(1, DORMANT, DORMANT, germinated)) == Action(Op.GERMINATE, 1, 0)
    training = SlotObservation(SeedStage.TRAINING, "depthwise", can_advance=True)
    other = SlotObservation(SeedStage.GERMINATED, "conv_light")
    assert _act(policy, _obs(2, DORMANT, other, training)) == Action(Op.ADVANCE, 2)
    holding = SlotObservation(SeedStage.HOLDING, "depthwise", alpha=1.0, can_fossilize=True)
    blending = SlotObservation(SeedStage.BLENDING, "conv_light", alpha=0.5)
    assert _act(policy, _obs(5, DORMANT, blending, holding)) == Action(Op.FOSSILIZE, 2)


def test_a_plan_waits_for_its_epoch_and_gives_up_after_the_late_window() -> None:
    policy = ScriptedPolicy(
        Plan("late", (Planting("block1", "conv_light", 0.5),)), SLOT_IDS, BLUEPRINTS
    )
    slots = (DORMANT, DORMANT, DORMANT)
    assert _act(policy, _obs(5, *slots)) == Action(Op.WAIT)
    assert _act(policy, _obs(6, *slots)) == Action(Op.GERMINATE, 0, 0)
    assert _act(policy, _obs(8, *slots)) == Action(Op.GERMINATE, 0, 0)
    assert _act(policy, _obs(9, *slots)) == Action(Op.WAIT)
    # the slot is taken (an embargo, a rollback's leftovers): no germination is sent
    embargoed = SlotObservation(SeedStage.EMBARGOED)
    assert _act(policy, _obs(6, embargoed, DORMANT, DORMANT)) == Action(Op.WAIT)


def test_a_plan_naming_an_operator_the_host_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="no blueprint \\['widen'\\]"):
        ScriptedPolicy(Plan("w", (Planting("block1", "widen"),)), SLOT_IDS, BLUEPRINTS)
    with pytest.raises(ValueError, match="no slot \\['block9'\\]"):
        ScriptedPolicy(Plan("s", (Planting("block9", "norm"),)), SLOT_IDS, BLUEPRINTS)


def test_variants_change_the_task_they_name_and_nothing_else() -> None:
    import torch

    from esper_engine.tasks import load_task

    task = load_task("synthetic-images", seed=0, scale="small")
    small = Variant("small", train_size=100).task(task, 0)
    assert len(small.train_x) == 100 and small.val_x is task.val_x
    noisy = Variant("noisy", noise=0.15).task(task, 0)
    assert noisy.train_x.shape == task.train_x.shape and noisy.train_x.dtype == torch.uint8
    assert torch.equal(noisy.train_y, task.train_y)
    extra = (noisy.val_x.float() - task.val_x.float()).std().item() / 255
    assert 0.08 < extra < 0.16  # clamping at 0 and 255 trims some of the 0.15
    assert torch.equal(Variant("again", noise=0.15).task(task, 0).val_x, noisy.val_x)


def test_the_study_reads_the_report_split_where_the_summary_has_one() -> None:
    from types import SimpleNamespace

    from growth import accuracy_source, report_accuracy

    old = SimpleNamespace(val_accuracy=0.7)
    assert report_accuracy(old) == 0.7
    assert accuracy_source(old).startswith("validation")
    new = SimpleNamespace(val_accuracy=0.7, report_accuracy=0.65)
    assert report_accuracy(new) == 0.65
    assert accuracy_source(new) == "report split"


def _run(arm: str, seed: int, flops: float, acc: float, epochs: int = 12):
    from growth import RunResult

    return RunResult(
        arm=arm,
        seed=seed,
        epochs=epochs,
        lr=0.2,
        final=acc,
        val_final=acc,
        best=acc,
        germinated=0,
        fossilized=0,
        host_params=1000,
        seed_params=0,
        train_flops=int(flops),
        ops={"WAIT": 11},
        seconds=1.0,
        acc_source="validation",
        flops_source="bench counter",
    )


def test_the_tables_and_the_plot_read_the_comparisons(tmp_path: Path) -> None:
    import growth

    seeds = (0, 1)
    widths = ((3, 6, 12), (4, 8, 16), (5, 10, 20))
    static = {
        s: [
            _run(growth.width_label(w), s, flops, acc)
            for w, flops, acc in zip(widths, (1e9, 2e9, 4e9), (0.6, 0.7, 0.8), strict=True)
        ]
        for s in seeds
    }
    grid = {growth.width_label(w): {0.2: [static[0][i]]} for i, w in enumerate(widths)}
    frontiers = {s: envelope([r.point for r in runs]) for s, runs in static.items()}
    arms = {
        "heuristic @12": [_run("heuristic", s, 2e9, 0.75) for s in seeds],
        "cost-aware heuristic @12": [_run("c", 0, 3e9, 0.9), _run("c", 1, 3e9, 0.7)],
    }
    room = {
        "price": 10.0,
        "variants": {
            "2,000 images": {
                "epochs": 12,
                "lr": 0.2,
                "rows": {
                    "static": [{"seed": 0, "return": 70.0}],
                    "heuristic": [{"seed": 0, "return": 65.0}],
                    "a plan": [{"seed": 0, "return": 66.5}],
                },
            }
        },
        "skipped": {"widen plan": "no blueprint widen in this build"},
    }
    figures = growth.summarise(
        growth.QUICK,
        seeds,
        {w: 0.2 for w in widths},
        grid,
        static,
        frontiers,
        {s: exchange_rate(f) for s, f in frontiers.items()},
        arms,
        {"widen": "no blueprint widen in this build"},
        {},
        room,
        1.0,
    )
    out = growth.tables(figures)
    assert "| heuristic @12 | 0.71 | 0.71 | 0.71 [0.71, 0.71] (2/2) | +5.0 [+5.0, +5.0]" in out
    assert "| cost-aware heuristic @12 | <0.75 (above) | 1.50 | 1.50 [1.50, 1.50] (1/2)" in out
    assert "| widen | skipped: no blueprint widen in this build |" in out
    assert "met by heuristic @12" in out
    assert "longer budget on the frontier would read: cost-aware heuristic @12 (1)" in out
    assert "mean 10.00" in out  # the exchange rate, points per doubling
    assert "| static | +5.0 ** |" in out
    assert "| a plan | +1.5 |" in out
    assert "- 2,000 images: static" in out
    (svg,) = growth.write_plots(figures, tmp_path)
    text = svg.read_text()
    assert "static frontier (mean)" in text and "heuristic @12" in text
    assert text.count("<polyline") == 1


def test_a_plan_drives_the_real_loop_at_its_epochs_and_blend_speed() -> None:
    import growth

    from esper_engine.tasks import load_task

    plan = Plan(
        "two",
        (Planting("block3", "depthwise"), Planting("block2", "conv_light", 0.5)),
        blend_epochs=1,
    )
    profile = dataclasses.replace(growth.QUICK, batches_per_epoch=2)
    config = growth.base_config(
        profile, "heuristic", 0, epochs=6, val_batches=1, **plan.overrides()
    )
    assert config.lr_schedule == "cosine_to_zero" and config.lifecycle.blend_epochs == 1
    sink = growth.EpisodeSink()
    task = load_task("synthetic-images", seed=0, scale="small")
    trainer = growth.make_trainer(
        config, sink, task, "plan-test", lambda slots, bps: ScriptedPolicy(plan, slots, bps)
    )
    growth._run(trainer, "plan test")
    planted = [(t.epoch, t.slot_id, t.blueprint) for t in sink.germinations]
    # acted after epoch 0 and after epoch 3 (half of 6), each in its slot with its operator
    assert planted == [(0, "block3", "depthwise"), (3, "block2", "conv_light")]
    ops = [str(s.last_op) for s in sink.summaries]
    assert ops[:3] == ["GERMINATE", "WAIT", "ADVANCE"]


def test_the_frontier_cache_is_read_back_for_its_settings_and_refused_for_others(
    tmp_path: Path, capsys
) -> None:
    """--frontier-cache: the static frontier (tuned lrs, the lr grid's runs, every seed's static
    runs) is written once and read back as it was for the same profile, seeds and config; a
    cache made for other settings is refused with one line naming what differs, exit 2."""
    import growth

    profile = growth.QUICK
    seeds = (0, 3)
    key = growth.frontier_key(profile, seeds)
    widths = profile.widths
    chosen = {w: 0.2 for w in widths}
    static = {
        s: [_run(growth.width_label(w), s, 1e9 * (i + 1), 0.6) for i, w in enumerate(widths)]
        for s in seeds
    }
    grid = {growth.width_label(w): {0.2: [static[0][i]], 0.4: []} for i, w in enumerate(widths)}
    path = tmp_path / "frontier.json"
    growth.save_frontier(path, key, chosen, grid, static)
    assert growth.load_frontier(path, key) == (chosen, grid, static)

    class Study:  # frontier() reads it from the cache: no run is started
        def __init__(self, seeds):
            self.profile, self.seeds, self.messages = profile, seeds, []

        def progress(self, message):
            self.messages.append(message)

    study = Study(seeds)
    assert growth.frontier(study, path) == (chosen, grid, static)
    assert study.messages == [f"static frontier read from {path} (not rerun)"]
    # another seed list, another budget, another config default: stale
    with pytest.raises(growth.StaleCache, match=r"other settings \(seeds differ\)"):
        growth.frontier(Study((0, 1)), path)
    other = growth.frontier_key(dataclasses.replace(profile, budgets=(4, 6, 9)), seeds)
    with pytest.raises(growth.StaleCache, match=r"\(budgets differ\)"):
        growth.load_frontier(path, other)
    # a policy-only setting (the compute price) does not change what a static run computes
    assert key == growth.frontier_key(profile, seeds)
    assert "compute_price" not in key["static_config"] and "heuristic" not in key["static_config"]
    assert key["static_config"]["lr_schedule"] == growth.SCHEDULE
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(growth.StaleCache, match="not a frontier cache"):
        growth.load_frontier(tmp_path / "junk.json", key)
    code = growth.main(["--quick", "--seeds", "0,1", "--frontier-cache", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("bench/growth.py: error: --frontier-cache ") and "seeds" in err[-1]


def test_the_growth_arms_and_plans_use_the_real_operators() -> None:
    import growth
    from _headroom import PLANS

    from esper_engine.blueprints import blueprint_names

    names = set(blueprint_names("cnn"))
    arms = {arm.name: arm for arm in growth.GROWTH_ARMS}
    assert arms["cost-aware heuristic"].overrides == {"heuristic": {"cost_aware": True}}
    assert arms["widen"].overrides["heuristic"]["cnn_preference"] == ("widen",)
    # The shipped heuristic (no overrides) grows by stacking; the previous order is an arm.
    assert arms["heuristic"].overrides == {}
    assert growth.base_config(growth.QUICK, "heuristic", 0).heuristic.cnn_preference[0] == "stack"
    residual = arms["residual-first heuristic"].overrides["heuristic"]["cnn_preference"]
    assert residual[0] == "conv_light"
    for arm in arms.values():
        assert set(arm.needs) <= names
    used = set().union(*(plan.blueprints() for plan in PLANS))
    assert {"widen", "stack"} <= used <= names
    assert len(PLANS) == 8
    # the quick profile's plans include both operators
    assert {"widen", "stack"} <= set().union(*(p.blueprints() for p in growth.QUICK.plans))
    config = growth.base_config(
        growth.QUICK, "heuristic", 0, **arms["cost-aware heuristic"].overrides
    )
    assert config.heuristic.cost_aware and config.lr_schedule == growth.SCHEDULE


def test_the_language_part_stacks_a_transformer_against_its_own_frontier(tmp_path: Path) -> None:
    """The language part on the real loop at a tiny size: the stack arm germinates ``stack``
    seeds in the Transformer, its ratio is read from the telemetry's FLOPs against the same
    seed's static frontier, and the JSON and the plot have a language section of their own."""
    import json

    import growth

    profile = dataclasses.replace(
        growth.LM_QUICK,
        batches_per_epoch=2,
        seeds=(0,),
        tuning_seeds=(0,),
        widths=((16, 2, 2), (24, 2, 3), (32, 2, 4)),
        growth_widths=(16, 2, 2),
        budgets=(1, 3),
        growth_budgets=(3,),
        lr_grid=(0.2,),
    )
    measured = growth.measure(profile, (0,), tmp_path, False)
    (stack,) = measured.arms["stack @3"]
    static = {r.arm: r for r in measured.static[0] if r.epochs == 3}
    host = static["static 16x2 h2"]
    # the heuristic plants from the episode's start: two stack seeds, each a copy of a layer
    assert stack.blueprints == {"stack": 2} and stack.seed_params > 0
    # grown from the profile's growth host (not the task's default preset), at its tuned lr
    assert stack.host_params == host.host_params and stack.lr == host.lr
    assert stack.train_flops > host.train_flops  # the stacked layers train too
    assert measured.profile.host_kind == "transformer"
    assert "next-byte accuracy" in stack.acc_source
    figures = growth.summarise(*measured)
    row = figures["arms"]["stack @3"]["comparisons"][0]
    frontier = [Point(f, a) for f, a in figures["frontiers"]["0"]]
    assert row == growth._comparison_dict(
        compare(0, Point(stack.train_flops, stack.final), frontier)
    )
    assert figures["flops_source"] == ["telemetry (EpochSummary.train_flops)"]
    config = growth.base_config(profile, "heuristic", 0, **growth.LM_ARMS[1].overrides)
    assert config.task == "synthetic-stories"
    assert config.heuristic.transformer_preference == ("stack",)
    figures["pace"] = growth.pace(measured, profile, load_task_for(profile))
    assert figures["pace"]["runs"] == len(measured.every_run()) == 6 + 3
    assert figures["pace"]["target_seconds"] > 0
    out = growth.language_tables(figures)
    assert out.startswith("## The language task: synthetic-stories")
    assert "| stack @3 |" in out and "| static 32x2 h4 | 3 |" in out
    assert "- stack @3: stack x2" in out and "time: 9 runs in" in out
    (svg,) = growth.write_plots(figures, tmp_path, "growth_lm_acc_vs_flops.svg")
    assert "synthetic-stories: final accuracy" in svg.read_text()
    json.dumps({"language": figures}, default=growth._jsonable)


def load_task_for(profile):
    from esper_engine.tasks import load_task

    return load_task(profile.task, seed=0)


def test_the_language_part_is_asked_for_with_a_size(capsys: pytest.CaptureFixture[str]) -> None:
    import growth

    with pytest.raises(SystemExit) as exit_info:
        growth.main(["--task", "lm"])
    assert exit_info.value.code == 2
    assert "--task lm: the language part is in the --large study" in capsys.readouterr().err
    assert growth.parse_args(["--large", "--task", "lm"]).task == "lm"
    from esper_engine.host_presets import CNN_PRESETS, TRANSFORMER_PRESETS

    assert growth.LM_LARGE.growth_widths == TRANSFORMER_PRESETS["small"][:3]
    assert growth.LARGE.growth_widths == CNN_PRESETS["small"]
    assert growth.LM_LARGE.host_kind == "transformer" and growth.LARGE.host_kind == "cnn"
