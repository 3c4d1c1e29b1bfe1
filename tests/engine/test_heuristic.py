"""The heuristic controller: legal on anything, and the four behaviours the spec names."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from esper_engine.config import HeuristicConfig
from esper_engine.policy.actions import Action, Op, action_masks, op_index, validate
from esper_engine.policy.heuristic import TRANSFORMER_PREFERENCE, HeuristicPolicy, plateaued
from esper_engine.policy.observation import STAGES, EnvObservation, SlotObservation

BLUEPRINTS = ("norm", "conv_heavy", "conv_light")  # the preferred conv_light is not first
RISING = (0.30, 0.40, 0.50, 0.60, 0.70)
FLAT = (0.30, 0.50, 0.60, 0.60, 0.59, 0.602)  # best of last 3 beats 0.60 by 0.002 < 0.005


def make_obs(*slots: SlotObservation, acc: tuple[float, ...] = RISING) -> EnvObservation:
    return EnvObservation(
        epoch=len(acc),
        max_epochs=12,
        val_accuracy=acc[-1],
        val_loss=1.0,
        train_loss=0.9,
        random_guess_loss=math.log(10),
        acc_history=acc,
        loss_history=tuple(1.0 for _ in acc),
        slots=slots,
    )


def policy(n_slots: int = 3, **kwargs: object) -> HeuristicPolicy:
    return HeuristicPolicy(n_slots, BLUEPRINTS, HeuristicConfig(**kwargs))


def dormant(n: int) -> list[SlotObservation]:
    return [SlotObservation("DORMANT") for _ in range(n)]


def random_obs(rng: random.Random, n_slots: int) -> EnvObservation:
    """Arbitrary, even inconsistent, combinations of stages, flags and contributions."""
    slots = tuple(
        SlotObservation(
            stage=rng.choice(STAGES),
            blueprint=rng.choice([None, *BLUEPRINTS]),
            alpha=rng.random(),
            epochs_in_stage=rng.randrange(6),
            contribution=rng.choice([None, rng.uniform(-0.03, 0.03)]),
            can_advance=rng.random() < 0.5,
            can_prune=rng.random() < 0.5,
            can_fossilize=rng.random() < 0.5,
        )
        for _ in range(n_slots)
    )
    acc = tuple(rng.uniform(0.1, 0.9) for _ in range(rng.randrange(1, 10)))
    return make_obs(*slots, acc=acc)


def test_plateau_detection_is_smoothed_over_a_window() -> None:
    assert not plateaued(RISING, window=3, delta=0.005)
    assert plateaued(FLAT, window=3, delta=0.005)
    assert not plateaued(FLAT[:3], window=3, delta=0.005)  # too short to judge
    # One noisy dip does not hide steady progress: the best of the window still improves.
    assert not plateaued((0.3, 0.4, 0.5, 0.35, 0.56, 0.45), window=3, delta=0.005)


def test_actions_are_legal_on_random_observations() -> None:
    rng = random.Random(0)
    heuristic = policy(max_live=2)
    ops_seen = set()
    for _ in range(2000):
        obs = random_obs(rng, 3)
        action = heuristic.act(obs)
        validate(action, obs, len(BLUEPRINTS))
        masks = action_masks(obs, len(BLUEPRINTS))
        op = op_index(action.op)
        assert masks.op[op] and masks.slot[op, action.slot_index]
        ops_seen.add(action.op)
    assert ops_seen == set(Op)  # the sample exercised every branch


def test_waits_while_accuracy_still_rises() -> None:
    assert policy().act(make_obs(*dormant(3), acc=RISING)) == Action(Op.WAIT)


def test_germinates_on_plateau_into_shallowest_dormant_slot_with_preferred_blueprint() -> None:
    slots = [SlotObservation("FOSSILIZED", "norm", alpha=1.0), *dormant(2)]
    action = policy().act(make_obs(*slots, acc=FLAT))
    assert action == Action(Op.GERMINATE, 1, BLUEPRINTS.index("conv_light"))


def test_the_first_seeds_go_in_one_per_epoch_from_the_start_without_a_plateau() -> None:
    conv_light = BLUEPRINTS.index("conv_light")
    first_epoch = dataclasses.replace(make_obs(*dormant(3), acc=(0.3,)), epoch=0)
    assert policy().act(first_epoch) == Action(Op.GERMINATE, 0, conv_light)
    assert policy(grow_from_start=False).act(first_epoch) == Action(Op.WAIT)
    # the second epoch plants the second seed (max_live is 2 by default) next to the first
    growing = SlotObservation("GERMINATED", "conv_light")
    second_epoch = dataclasses.replace(
        first_epoch, epoch=1, acc_history=(0.3, 0.4), slots=(growing, *dormant(2))
    )
    assert policy().act(second_epoch) == Action(Op.GERMINATE, 1, conv_light)
    assert policy(max_live=1).act(second_epoch) == Action(Op.WAIT)
    # later in the episode, or once a slot was used, growth waits for a plateau again
    later = dataclasses.replace(first_epoch, epoch=2)
    assert policy().act(later) == Action(Op.WAIT)
    used = dataclasses.replace(
        first_epoch, slots=(SlotObservation("EMBARGOED", "norm"), *dormant(2))
    )
    assert policy().act(used) == Action(Op.WAIT)


def test_no_seed_is_planted_too_late_to_be_blended_in_and_judged() -> None:
    flat = make_obs(*dormant(3), acc=FLAT)  # epoch 6 of 12: five epochs left
    assert policy().act(flat).op == Op.GERMINATE
    late = dataclasses.replace(flat, epoch=7)
    assert policy().act(late) == Action(Op.WAIT)
    assert policy(min_epochs_left=4).act(late).op == Op.GERMINATE
    # a plateau in a short episode plants nothing, but the early seeds still go in
    plateau_in_a_short_episode = dataclasses.replace(flat, epoch=1, max_epochs=5)
    assert policy(grow_from_start=False).act(plateau_in_a_short_episode) == Action(Op.WAIT)
    start_of_a_short_episode = dataclasses.replace(flat, epoch=0, max_epochs=4)
    assert policy().act(start_of_a_short_episode).op == Op.GERMINATE


def test_transformer_preference_picks_lora() -> None:
    blueprints = ("attention", "norm", "lora", "mlp_small")
    heuristic = HeuristicPolicy(2, blueprints, preference=TRANSFORMER_PREFERENCE)
    action = heuristic.act(make_obs(*dormant(2), acc=FLAT))
    assert action.describe(("seg0", "seg1"), blueprints) == "GERMINATE seg0 lora"


def test_at_most_max_live_seeds_grow_at_once() -> None:
    training = SlotObservation("TRAINING", "conv_light", epochs_in_stage=1)
    one = [training, *dormant(2)]
    two = [training, training, *dormant(1)]
    assert policy().act(make_obs(*one, acc=FLAT)).op == Op.GERMINATE  # default max_live is 2
    assert policy().act(make_obs(*two, acc=FLAT)) == Action(Op.WAIT)
    assert policy(max_live=1).act(make_obs(*one, acc=FLAT)) == Action(Op.WAIT)


def test_advances_when_the_gate_allows() -> None:
    slots = [*dormant(1), SlotObservation("TRAINING", "conv_light", 0.0, 3, can_advance=True)]
    assert policy(2).act(make_obs(*slots, acc=FLAT)) == Action(Op.ADVANCE, 1)


def test_prunes_a_seed_with_negative_contribution_once_old_enough() -> None:
    def blending(age: int) -> SlotObservation:
        return SlotObservation(
            "BLENDING", "conv_light", 0.4, age, contribution=-0.008, can_prune=True
        )

    assert policy(1).act(make_obs(blending(age=1))) == Action(Op.WAIT)
    assert policy(1).act(make_obs(blending(age=2))) == Action(Op.PRUNE, 0)


def test_never_prunes_an_unmeasured_seed_or_against_the_gate() -> None:
    unmeasured = SlotObservation(
        "TRAINING", "conv_light", 0.0, 5, contribution=None, can_prune=True
    )
    gated = SlotObservation("HOLDING", "conv_light", 1.0, 5, contribution=-0.02, can_prune=False)
    assert policy(2).act(make_obs(unmeasured, gated)) == Action(Op.WAIT)


# Contributions are fractions of accuracy, as attribution measures them: 0.015 = 1.5 points.
@pytest.mark.parametrize(
    ("contribution", "expected"), [(0.015, Op.FOSSILIZE), (0.003, Op.WAIT), (0.005, Op.WAIT)]
)
def test_fossilizes_only_a_clearly_positive_seed(contribution: float, expected: Op) -> None:
    holding = SlotObservation(
        "HOLDING", "conv_light", 1.0, 1, contribution, can_prune=True, can_fossilize=True
    )
    assert policy(1).act(make_obs(holding)).op == expected


def test_a_lukewarm_holding_seed_is_pruned_after_the_patience() -> None:
    holding = SlotObservation("HOLDING", "conv_light", 1.0, 3, 0.003, can_prune=True)
    assert policy(1, holding_patience=3).act(make_obs(holding)) == Action(Op.PRUNE, 0)
    assert policy(1, holding_patience=4).act(make_obs(holding)) == Action(Op.WAIT)


def test_slot_count_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="observation has 2 slots, policy expects 3"):
        policy(3).act(make_obs(*dormant(2)))
