"""Action space, masks, validation and the observation vector."""

from __future__ import annotations

import math

import pytest
import torch

from esper_engine.contracts import SeedStage
from esper_engine.policy.actions import (
    OPS,
    Action,
    Op,
    action_masks,
    decode_actions,
    op_index,
    stack_masks,
    validate,
)
from esper_engine.policy.observation import (
    STAGES,
    EnvObservation,
    SlotObservation,
    obs_dim,
    stack_observations,
)

BLUEPRINTS = ("conv_light", "conv_heavy", "norm")
SLOT_IDS = ("block0", "block1", "block2")


def make_obs(*slots: SlotObservation, acc=(0.3, 0.4, 0.45), loss=(1.9, 1.6, 1.5)) -> EnvObservation:
    return EnvObservation(
        epoch=len(acc),
        max_epochs=12,
        val_accuracy=acc[-1],
        val_loss=loss[-1],
        train_loss=loss[-1] * 0.9,
        random_guess_loss=math.log(10),
        acc_history=tuple(acc),
        loss_history=tuple(loss),
        slots=tuple(slots),
    )


def test_fresh_host_allows_only_wait_and_germinate() -> None:
    obs = make_obs(*(SlotObservation("DORMANT") for _ in SLOT_IDS))
    masks = action_masks(obs, len(BLUEPRINTS))
    assert masks.op.tolist() == [True, True, False, False, False]
    assert masks.slot[op_index(Op.GERMINATE)].tolist() == [True, True, True]
    assert masks.blueprint.tolist() == [True, True, True]


def test_masks_follow_stages_and_gates() -> None:
    obs = make_obs(
        SlotObservation("FOSSILIZED", "conv_light", alpha=1.0, can_advance=True, can_prune=True),
        SlotObservation("TRAINING", "norm", can_advance=True, can_prune=False),
        SlotObservation("HOLDING", "conv_heavy", 1.0, 2, 1.5, can_prune=True, can_fossilize=True),
    )
    masks = action_masks(obs, len(BLUEPRINTS))
    # No DORMANT slot: GERMINATE is illegal, and gate flags on a FOSSILIZED slot are ignored.
    assert masks.op.tolist() == [True, False, True, True, True]
    assert masks.slot[op_index(Op.ADVANCE)].tolist() == [False, True, False]
    assert masks.slot[op_index(Op.PRUNE)].tolist() == [False, False, True]
    assert masks.slot[op_index(Op.FOSSILIZE)].tolist() == [False, False, True]
    assert masks.slot[op_index(Op.WAIT)].all()


def test_fossilize_needs_holding_and_the_gate() -> None:
    blending = SlotObservation("BLENDING", "norm", 0.5, 1, 2.0, can_fossilize=True)
    holding_closed = SlotObservation("HOLDING", "norm", 1.0, 1, 2.0, can_fossilize=False)
    masks = action_masks(make_obs(blending, holding_closed), len(BLUEPRINTS))
    assert not masks.op[op_index(Op.FOSSILIZE)]
    assert masks.slot[op_index(Op.FOSSILIZE)].tolist() == [False, False]


def test_validate_rejects_illegal_actions_with_the_reason() -> None:
    obs = make_obs(SlotObservation("DORMANT"), SlotObservation("TRAINING", "norm"))
    validate(Action(Op.GERMINATE, 0, 2), obs, len(BLUEPRINTS))
    validate(Action(Op.WAIT, 7, 9), obs, len(BLUEPRINTS))  # WAIT ignores its indices
    with pytest.raises(ValueError, match="stage TRAINING"):
        validate(Action(Op.GERMINATE, 1, 0), obs, len(BLUEPRINTS))
    with pytest.raises(ValueError, match="can_advance=False"):
        validate(Action(Op.ADVANCE, 1), obs, len(BLUEPRINTS))
    with pytest.raises(ValueError, match="slot index out of range"):
        validate(Action(Op.PRUNE, 5), obs, len(BLUEPRINTS))
    with pytest.raises(ValueError, match="blueprint index out of range"):
        validate(Action(Op.GERMINATE, 0, 3), obs, len(BLUEPRINTS))


def test_describe_names_only_the_parts_the_op_uses() -> None:
    assert (
        Action(Op.GERMINATE, 1, 0).describe(SLOT_IDS, BLUEPRINTS) == "GERMINATE block1 conv_light"
    )
    assert Action(Op.PRUNE, 2, 1).describe(SLOT_IDS, BLUEPRINTS) == "PRUNE block2"
    assert Action(Op.WAIT, 2, 1).describe(SLOT_IDS, BLUEPRINTS) == "WAIT"


def test_actions_round_trip_through_tensors() -> None:
    actions = [Action(Op.GERMINATE, 2, 1), Action(Op.WAIT), Action(Op.FOSSILIZE, 1, 0)]
    assert decode_actions(torch.stack([a.to_tensor() for a in actions])) == actions
    assert all(type(a.op) is Op for a in decode_actions(torch.tensor([[4, 0, 0]])))


def test_ops_are_the_contracts_vocabulary_in_the_heads_order() -> None:
    from esper_engine import contracts

    assert Op is contracts.Op
    assert OPS == (Op.WAIT, Op.GERMINATE, Op.ADVANCE, Op.PRUNE, Op.FOSSILIZE)
    assert [op_index(op) for op in OPS] == [0, 1, 2, 3, 4]
    assert Action(Op.PRUNE, 1).to_tensor().tolist() == [3, 1, 0]


def test_slot_observation_holds_the_stage_member_and_refuses_unknown_names() -> None:
    assert SlotObservation("HOLDING").stage is SeedStage.HOLDING
    assert SlotObservation(SeedStage.PRUNED).stage is SeedStage.PRUNED
    with pytest.raises(ValueError, match="unknown seed stage 'SPROUTING'"):
        SlotObservation("SPROUTING")


def test_stacked_masks_gain_an_env_axis() -> None:
    obs = make_obs(SlotObservation("DORMANT"), SlotObservation("DORMANT"))
    batched = stack_masks([action_masks(obs, 3), action_masks(obs, 3)])
    assert [tuple(part.shape) for part in batched] == [(2, 5), (2, 5, 2), (2, 3)]


@pytest.mark.parametrize("n_slots", [1, 3, 5])
def test_vector_length_matches_obs_dim(n_slots: int) -> None:
    obs = make_obs(*(SlotObservation("DORMANT") for _ in range(n_slots)))
    vector = obs.to_vector()
    assert vector.dtype == torch.float32
    assert vector.shape == (obs_dim(n_slots),)
    assert stack_observations([obs, obs]).shape == (2, obs_dim(n_slots))


def test_vector_encodes_slot_stage_and_contribution() -> None:
    measured = SlotObservation("BLENDING", "norm", alpha=0.25, epochs_in_stage=2, contribution=0.0)
    unmeasured = SlotObservation("TRAINING", "norm", can_advance=True)
    plain = make_obs(SlotObservation("DORMANT"), SlotObservation("DORMANT"))
    vector = make_obs(measured, unmeasured).to_vector()
    per_slot = (len(vector) - obs_dim(0)) // 2
    first, second = vector[obs_dim(0) :].split(per_slot)
    assert first[STAGES.index("BLENDING")] == 1 and first[: len(STAGES)].sum() == 1
    assert second[STAGES.index("TRAINING")] == 1
    assert first[len(STAGES)] == 0.25  # alpha
    # A measured contribution of exactly 0 differs from "not measured".
    assert not torch.equal(first[len(STAGES) + 2 :], second[len(STAGES) + 2 :])
    assert torch.equal(vector[: obs_dim(0)], plain.to_vector()[: obs_dim(0)])


def test_vector_scales_a_contribution_fraction_to_tenths_of_a_point() -> None:
    # Attribution carries fractions: 0.05 (5 points) encodes as 0.5, and the clamp is at 3.0.
    def encoded(contribution: float) -> float:
        slot = SlotObservation("BLENDING", "norm", alpha=0.5, contribution=contribution)
        return float(make_obs(slot).to_vector()[obs_dim(0) + len(STAGES) + 2])

    assert encoded(0.05) == pytest.approx(0.5)
    assert encoded(-0.02) == pytest.approx(-0.2)
    assert encoded(0.9) == 3.0


def test_vector_pads_short_history_and_survives_a_nan_loss() -> None:
    short = make_obs(SlotObservation("DORMANT"), acc=(0.1,), loss=(2.3,))
    diverged = make_obs(SlotObservation("DORMANT"), loss=(1.9, 1.6, float("nan")))
    assert torch.isfinite(short.to_vector()).all()
    vector = diverged.to_vector()
    assert torch.isfinite(vector).all()
    assert vector.abs().max() <= 5.0


def test_unknown_stage_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown seed stage 'SPROUTING'"):
        SlotObservation("SPROUTING")
