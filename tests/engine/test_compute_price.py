"""Policies that see and pay for compute (issue 24 item 4): the compute price in the reward, the
FLOP costs in the observation, the heuristic's cost-aware order."""

from __future__ import annotations

import math
import random
from itertools import pairwise

import pytest
import torch

from esper_engine.blueprints import blueprint_names
from esper_engine.config import HeuristicConfig, LifecycleConfig, PPOConfig, TrainingConfig
from esper_engine.contracts import EpochSummary, SeedStage, SeedTransition
from esper_engine.epoch_figures import EpochFigures
from esper_engine.flops import measure_seed_costs, train_step_flops
from esper_engine.model import create_model
from esper_engine.policy.actions import Action, Op, validate
from esper_engine.policy.driver import PolicyDriver
from esper_engine.policy.heuristic import HeuristicPolicy
from esper_engine.policy.observation import (
    COST_LIMIT,
    GLOBAL_FEATURES,
    SLOT_FEATURES,
    STAGES,
    EnvObservation,
    SlotObservation,
    obs_dim,
)
from esper_engine.policy.policy_file import read_policy_file, write_policy_file
from esper_engine.policy.rewards import capacity_rent, compute_reward, episode_price
from esper_engine.tasks import load_task
from esper_engine.telemetry import ListSink
from esper_engine.trainer import VectorizedTrainer
from tests.engine.test_flops import hand_count_tiny_cnn_train_step

SLOTS = ("block1", "block2", "block3")
NAMES = tuple(blueprint_names("cnn"))


@pytest.fixture(scope="module")
def images():
    return load_task("synthetic-images", seed=0, scale="small")


def small(**overrides) -> TrainingConfig:
    base = dict(
        n_envs=1,
        episodes=1,
        epochs=6,
        batches_per_epoch=3,
        batch_size=16,
        val_batches=2,
        lifecycle=LifecycleConfig(),
    )
    base.update(overrides)
    return TrainingConfig(**base)


def run(task, config):
    sink = ListSink()
    trainer = VectorizedTrainer(config, sink, run_id="t", task=task)
    finished = trainer.run()
    assert finished.status == "completed", finished.error
    return trainer, [e for e in sink.events if isinstance(e, EpochSummary)], sink.events


# --- what a seed would cost ---------------------------------------------------------------------


def test_seed_costs_are_what_a_training_seed_adds_over_the_bare_host(images) -> None:
    torch.manual_seed(0)
    bare = create_model(images, "cpu", slots=SLOTS)
    x = images.prepare(images.val_x[:1])
    y = images.val_y[:1]
    state = torch.get_rng_state()
    costs = measure_seed_costs(bare, images, x, y, NAMES)
    assert torch.equal(torch.get_rng_state(), state)  # no random stream of the run moved
    assert all(bare.slots[s].seed is None for s in SLOTS)  # measured on copies
    assert costs.host == hand_count_tiny_cnn_train_step(1)
    # one by hand: conv_light in block3 on a live seed, counted as the loop counts it
    twin = create_model(images, "cpu", slots=SLOTS)
    twin.germinate("block3", "conv_light")
    twin.begin_training("block3")
    added = train_step_flops(twin, images, x, y) - costs.host
    assert costs.added[("block3", "conv_light")] == added > 0
    assert costs.ratio("block3", "conv_light") == pytest.approx(added / costs.host)
    # the same blueprint costs more early in the network (larger feature maps)
    light = [costs.ratio(s, "conv_light") for s in SLOTS]
    assert light[0] > light[1] > light[2] > 0
    assert set(costs.added) == {(s, b) for s in SLOTS for b in NAMES}


# --- the reward pays the compute price ----------------------------------------------------------


def test_the_reward_charges_growths_flops_and_lambda_0_keeps_todays_rewards(images) -> None:
    """Two runs, the same seed, the heuristic growing: with lambda 0 every reward is today's
    (accuracy change minus rent change) value for value; with lambda 8 each reward is that
    minus the change of 8 x log2(training FLOPs so far / the bare host's on the same samples),
    and the episode pays 8 x log2 of its final ratio (> 0: growth spent more)."""
    _, free, _ = run(images, small(compute_price=0.0))
    trainer, priced, events = run(images, small(compute_price=8.0))
    assert [s.val_accuracy for s in free] == [s.val_accuracy for s in priced]  # same run
    assert any(isinstance(e, SeedTransition) and e.to_stage == "GERMINATED" for e in events)
    cfg = small()
    # a summary follows the epoch's action; the reward read the capacity before it
    before = [0, *(s.seed_params for s in free[:-1])]
    rents = [capacity_rent(free[0].host_params, p, cfg.param_rent) for p in before]
    today = [compute_reward(None, free[0].val_accuracy, 0.0, rents[0])] + [
        compute_reward(a.val_accuracy, b.val_accuracy, ra, rb)
        for (a, b), (ra, rb) in zip(pairwise(free), pairwise(rents), strict=True)
    ]
    assert [s.reward for s in free] == today  # exactly, value for value
    host = trainer.envs[0].seed_costs().host
    steps = cfg.batches_per_epoch * cfg.batch_size
    prices = [episode_price(s.train_flops, (s.epoch + 1) * steps * host, 8.0) for s in priced]
    assert prices[0] == 0.0  # the first epoch trains the bare host
    assert prices[-1] == pytest.approx(8.0 * math.log2(priced[-1].train_flops / (6 * steps * host)))
    assert prices[-1] > 0.1
    charged = [p - f for p, f in zip((s.reward for s in priced), today, strict=True)]
    expected = [-(b - a) for a, b in pairwise([0.0, *prices])]
    assert charged == pytest.approx(expected, abs=1e-9)
    assert sum(charged) == pytest.approx(-prices[-1])
    assert trainer.envs[0].prev_price == pytest.approx(prices[-1])


def test_episode_price_is_zero_without_a_price_or_before_training() -> None:
    assert episode_price(4e9, 1e9, 0.0) == 0.0
    assert episode_price(0, 0, 8.0) == 0.0
    assert episode_price(2e9, 1e9, 8.0) == pytest.approx(8.0)
    assert compute_reward(0.5, 0.5, 0.0, 0.0, 1.0, 3.0) == pytest.approx(-2.0)
    assert compute_reward(0.5, 0.5, 0.0, 0.0, 3.0, 1.0) == pytest.approx(2.0)  # a prune pays back
    with pytest.raises(ValueError, match="must be finite"):
        compute_reward(0.5, 0.5, 0.0, 0.0, 0.0, math.inf)


# --- the observation ----------------------------------------------------------------------------


def obs(*slots: SlotObservation, blueprints=NAMES[:2], **kw) -> EnvObservation:
    return EnvObservation(
        epoch=1,  # the heuristic's early seeds are due
        max_epochs=12,
        val_accuracy=0.4,
        val_loss=1.5,
        train_loss=1.4,
        random_guess_loss=math.log(10),
        acc_history=(0.3, 0.35, 0.4),
        loss_history=(1.9, 1.6, 1.5),
        slots=slots,
        blueprints=blueprints,
        **kw,
    )


def test_the_vector_carries_flop_costs_compute_spent_and_the_blueprint_one_hot() -> None:
    a = SlotObservation("TRAINING", "conv_heavy", flop_costs=(0.6, 9.0))
    b = SlotObservation("DORMANT", flop_costs=(0.15, math.inf))
    vector = obs(a, b, flops_ratio=2.0, flops_budget_share=0.25).to_vector()
    assert vector.shape == (obs_dim(2, 2),) == (GLOBAL_FEATURES + 2 * (SLOT_FEATURES + 4),)
    assert vector[GLOBAL_FEATURES - 4].item() == pytest.approx(1.0)  # log2 of the ratio
    assert vector[GLOBAL_FEATURES - 3].item() == pytest.approx(0.25)  # of the static budget
    per_slot = SLOT_FEATURES + 4
    first = vector[GLOBAL_FEATURES : GLOBAL_FEATURES + per_slot]
    second = vector[GLOBAL_FEATURES + per_slot :]
    assert first[SLOT_FEATURES:].tolist() == pytest.approx([0.6, COST_LIMIT, 0.0, 1.0])
    assert second[SLOT_FEATURES:].tolist() == pytest.approx([0.15, COST_LIMIT, 0.0, 0.0])
    assert first[: len(STAGES)].tolist() == [float(s is SeedStage.TRAINING) for s in STAGES]
    with pytest.raises(ValueError, match="1 FLOP costs for 2 blueprints"):
        obs(SlotObservation("DORMANT", flop_costs=(0.1,))).to_vector()


def test_the_real_loop_observes_costs_and_compute_spent(images) -> None:
    config = small(epochs=3)
    trainer, summaries, _ = run(images, config)
    env = trainer.envs[0]
    costs = env.seed_costs()
    last = summaries[-1]
    names = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    figures = EpochFigures({n: getattr(last, n) for n in names}, 0)
    seen = env.observe(2, figures)
    assert seen.blueprints == NAMES
    for sid, slot in zip(env.model.slot_ids, seen.slots, strict=True):
        assert slot.flop_costs == tuple(costs.ratio(sid, b) for b in NAMES)
    steps = config.batches_per_epoch * config.batch_size
    static = 3 * steps * costs.host  # what the bare host spends on the same samples
    assert last.train_flops > static  # the heuristic grew from the start
    assert seen.flops_ratio == pytest.approx(last.train_flops / static)
    assert seen.flops_budget_share == pytest.approx(last.train_flops / static)  # budget = 3 ep
    assert seen.to_vector().shape == (obs_dim(3, len(NAMES)),)


def test_ppo_sizes_follow_the_catalogue_and_an_old_policy_file_is_refused(tmp_path) -> None:
    def driver(blueprints):
        return PolicyDriver(
            "ppo",
            n_envs=1,
            slot_ids=list(SLOTS),
            blueprints=list(blueprints),
            host_kind="cnn",
            heuristic=HeuristicConfig(),
            ppo=PPOConfig(seed=0),
        )

    agent = driver(NAMES).agent
    assert next(agent.parameters()).shape[-1] == obs_dim(3, len(NAMES))
    path = tmp_path / "old.policy.pt"
    state = driver(NAMES).policy_state()
    state["obs_dim"] = obs_dim(3)  # a file written before the observation saw compute
    write_policy_file(path, state)
    with pytest.raises(ValueError, match=f"obs_dim {obs_dim(3)}, this run's are"):
        driver(NAMES).load_policy_state(read_policy_file(path), str(path))


# --- the heuristic's cost-aware order -----------------------------------------------------------


def costed(stage: str, *costs: float, **kw) -> SlotObservation:
    return SlotObservation(stage, flop_costs=costs, **kw)


def test_cost_aware_heuristic_plants_where_its_blueprint_is_cheapest() -> None:
    blueprints = ("conv_light", "widen")
    slots = (costed("DORMANT", 0.6, 0.4), costed("DORMANT", 0.3, 0.2), costed("DORMANT", 0.15, 0.2))
    plain = HeuristicPolicy(3, blueprints, HeuristicConfig())
    aware = HeuristicPolicy(3, blueprints, HeuristicConfig(cost_aware=True))
    o = obs(*slots, blueprints=blueprints)
    assert plain.act(o) == Action(Op.GERMINATE, 0, 0)  # the shallowest
    assert aware.act(o) == Action(Op.GERMINATE, 2, 0)  # the cheapest for conv_light
    widen = HeuristicPolicy(3, blueprints, HeuristicConfig(cost_aware=True), preference=("widen",))
    assert widen.act(o) == Action(Op.GERMINATE, 1, 1)  # a tie: the shallowest of the cheapest
    # where it cannot grow (inf) or the slot is taken, it goes to the next cheapest
    slots = (
        costed("DORMANT", 0.6, 0.4),
        costed("DORMANT", 0.3, 0.2),
        costed("DORMANT", math.inf, 0),
    )
    assert aware.act(obs(*slots, blueprints=blueprints)) == Action(Op.GERMINATE, 1, 0)
    slots = (
        costed("DORMANT", 0.6, 0.4),
        costed("TRAINING", 0.3, 0.2, blueprint="conv_light"),
        costed("DORMANT", math.inf, 0),
    )
    assert aware.act(obs(*slots, blueprints=blueprints)) == Action(Op.GERMINATE, 0, 0)
    roomy = HeuristicPolicy(3, blueprints, HeuristicConfig(cost_aware=True, max_live=3))
    slots = (
        costed("TRAINING", 0.6, 0.4, blueprint="conv_light"),
        costed("TRAINING", 0.3, 0.2, blueprint="conv_light"),
        costed("DORMANT", math.inf, 0),
    )
    assert roomy.act(obs(*slots, blueprints=blueprints)) == Action(Op.WAIT)


def test_cost_aware_heuristic_is_legal_on_anything() -> None:
    rng = random.Random(7)
    blueprints = ("conv_light", "widen")
    aware = HeuristicPolicy(3, blueprints, HeuristicConfig(cost_aware=True))
    for _ in range(500):
        slots = tuple(
            SlotObservation(
                stage=rng.choice(STAGES),
                blueprint=rng.choice([None, *blueprints]),
                contribution=rng.choice([None, rng.uniform(-0.03, 0.03)]),
                can_advance=rng.random() < 0.5,
                can_prune=rng.random() < 0.5,
                can_fossilize=rng.random() < 0.5,
                flop_costs=tuple(rng.choice([0.1, 0.5, math.inf]) for _ in blueprints),
            )
            for _ in range(3)
        )
        o = obs(*slots, blueprints=blueprints)
        validate(aware.act(o), o, len(blueprints))


def test_cost_aware_is_a_config_knob_and_the_real_loop_plants_in_the_cheapest_slot(images) -> None:
    with pytest.raises(ValueError, match="cost_aware must be true or false"):
        HeuristicConfig(cost_aware="yes").validate()
    # conv_light seeds: block3 is their cheapest slot (the default grows by stacking, and a
    # copy of this host's block1 is no dearer than one of block3, so it would not move).
    light = ("conv_light",)
    cfg = small(heuristic=HeuristicConfig(cost_aware=True, max_live=1, cnn_preference=light))
    _, _, events = run(images, cfg)
    planted = [e for e in events if isinstance(e, SeedTransition) and e.to_stage == "GERMINATED"]
    assert planted and planted[0].slot_id == "block3"
    assert planted[0].blueprint == "conv_light"
    cfg = small(heuristic=HeuristicConfig(max_live=1, cnn_preference=light))
    _, _, events = run(images, cfg)
    planted = [e for e in events if isinstance(e, SeedTransition) and e.to_stage == "GERMINATED"]
    assert planted and planted[0].slot_id == "block1"  # the default: the shallowest
