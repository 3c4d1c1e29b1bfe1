"""The rank layout and what travels between ranks, without starting any (the 2-rank runs are
in tests/console/test_distributed.py)."""

from __future__ import annotations

import pickle

import msgspec
import pytest

from esper_engine.contracts import ForceRollback, Initiator, SeedStage, SeedTransition, Stop
from esper_engine.distributed import (
    _COMMANDS,
    _ENCODER,
    _EVENT_BATCH,
    Commands,
    EventBatch,
    Shard,
    env_block,
    rank_device,
    resumed_rank_device,
)
from esper_engine.policy.actions import Action, Op
from esper_engine.policy.observation import EnvObservation, SlotObservation
from esper_engine.policy.relay import (
    _ACTIONS,
    _REPORT,
    Actions,
    ActRequest,
    EpochReport,
    PolicyCall,
)


@pytest.mark.parametrize("n_envs,world", [(2, 2), (3, 2), (7, 3), (8, 8), (5, 1)])
def test_blocks_are_contiguous_cover_every_env_once_and_differ_by_at_most_one(n_envs, world):
    blocks = [env_block(n_envs, world, rank) for rank in range(world)]
    assert [env for block in blocks for env in block] == list(range(n_envs))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    shard = Shard(0, world, n_envs)
    assert all(shard.owner(env) == rank for rank, b in enumerate(blocks) for env in b)


def test_a_gpu_rank_takes_the_gpu_of_its_local_rank():
    assert rank_device("cuda", 3) == "cuda:3"
    assert rank_device("cpu", 3) == "cpu"
    assert rank_device("cuda:1", 3) == "cuda:1"  # an explicit index is the user's choice


def test_a_sharded_resume_puts_each_rank_on_its_own_gpu() -> None:
    # The checkpoint's config holds rank 0's resolved cuda:0; rank 3 must not land on it.
    assert resumed_rank_device("cuda:0", 3) == "cuda:3"
    assert resumed_rank_device("cuda", 1) == "cuda:1"
    assert resumed_rank_device("cpu", 3) == "cpu"


def test_fewer_envs_than_ranks_is_refused():
    with pytest.raises(ValueError, match="3 envs cannot be shared by 4 ranks"):
        env_block(3, 4, 0)


def _observation() -> EnvObservation:
    slots = (
        SlotObservation(SeedStage.TRAINING, "conv_light", 0.0, 2, 0.0125, True, True, False),
        SlotObservation(SeedStage.DORMANT),
    )
    return EnvObservation(
        epoch=3,
        max_epochs=10,
        val_accuracy=0.1 + 0.2,
        val_loss=2.302585092994046,
        train_loss=float("inf"),
        random_guess_loss=2.302585092994046,
        acc_history=(0.1, 0.30000000000000004),
        loss_history=(2.5, 2.4),
        slots=slots,
        consecutive_panics=1,
        total_panics=2,
        rollbacks=1,
        host_params=1234,
        seed_params=56,
    )


def test_what_travels_decodes_to_the_same_values_bit_for_bit():
    """The policy must see exactly what it would see in one process: floats, enums, tuples."""
    obs = _observation()
    report = EpochReport(
        [PolicyCall("reward", 1, 0.1 + 0.2), PolicyCall("truncate", 2, observation=obs)],
        [ActRequest(1, obs)],
    )
    assert _REPORT.decode(_ENCODER.encode(report)) == report
    actions = Actions([Action(Op.GERMINATE, 1, 2), Action(Op.WAIT)])
    assert _ACTIONS.decode(_ENCODER.encode(actions)) == actions
    commands = Commands([ForceRollback(env=1, command_id=3, console="a"), Stop(command_id=4)])
    assert _COMMANDS.decode(_ENCODER.encode(commands)) == commands
    event = SeedTransition(
        run_id="r",
        env=1,
        episode=0,
        epoch=2,
        wall_time=1.5,
        slot_id="block1",
        from_stage=SeedStage.DORMANT,
        to_stage=SeedStage.GERMINATED,
        alpha=0.0,
        epochs_in_stage=0,
        initiator=Initiator.POLICY,
        blueprint="conv_light",
    )
    batch = EventBatch([0.001, 0.002], [event])
    assert _EVENT_BATCH.decode(_ENCODER.encode(batch)) == batch


def test_a_pickle_is_not_accepted_as_a_message():
    with pytest.raises(msgspec.DecodeError):
        _REPORT.decode(pickle.dumps({"calls": [], "requests": []}))
