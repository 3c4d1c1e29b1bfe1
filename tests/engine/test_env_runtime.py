"""Every env draws from its own random stream: no env's numbers depend on what another env (or
anything else in the process) drew, which is what lets envs run in any order or process."""

from __future__ import annotations

import msgspec
import pytest
import torch

from esper_engine.blueprints import blueprint_names
from esper_engine.config import TrainingConfig
from esper_engine.contracts import SeedTransition
from esper_engine.env_runtime import EnvRuntime, env_seed
from esper_engine.policy.actions import Action, Op
from esper_engine.tasks import load_task
from esper_engine.telemetry import ListSink
from esper_engine.trainer import VectorizedTrainer
from esper_engine.training_step import process_train_batch
from tests.engine.test_resume import comparable_events

CONFIG = TrainingConfig(n_envs=2, episodes=2, epochs=3, batches_per_epoch=2, batch_size=16)
GERMINATE = Action(Op.GERMINATE, slot_index=0, blueprint_index=0)


@pytest.fixture(scope="module")
def task():
    return load_task("synthetic-images", seed=0, scale="small")


def _blueprints(task) -> tuple[str, ...]:
    return tuple(blueprint_names(task.host_kind))


def _seed_weights(env: EnvRuntime) -> dict[str, torch.Tensor]:
    slot_id = env.model.slot_ids[0]
    return {k: v.clone() for k, v in env.model.slots[slot_id].seed.state_dict().items()}


def test_env_seeds_are_distinct_per_run_and_env_and_stable():
    seeds = {env_seed(run, env) for run in range(4) for env in range(8)}
    assert len(seeds) == 32
    assert env_seed(3, 1) == env_seed(3, 1) < 2**63


def test_an_env_germinates_the_same_seed_whether_or_not_another_env_germinated(task):
    blueprints = _blueprints(task)
    alone = EnvRuntime(1, CONFIG, task)
    torch.manual_seed(123)  # whatever the global stream holds does not matter either
    alone.apply(GERMINATE, blueprints)

    other, beside = EnvRuntime(0, CONFIG, task), EnvRuntime(1, CONFIG, task)
    torch.manual_seed(456)
    other.apply(GERMINATE, blueprints)
    beside.apply(GERMINATE, blueprints)

    expected, got = _seed_weights(alone), _seed_weights(beside)
    assert expected.keys() == got.keys()
    assert any(v.abs().sum() > 0 for v in got.values())  # a real random draw, not all zeros
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    # and env 0's seed is its own draw, not a copy of env 1's
    assert any(not torch.equal(v, got[k]) for k, v in _seed_weights(other).items())


def test_germinating_leaves_the_global_stream_untouched(task):
    env = EnvRuntime(0, CONFIG, task)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    env.apply(GERMINATE, _blueprints(task))
    assert torch.equal(torch.get_rng_state(), before)


def test_the_generator_is_part_of_the_env_state(task):
    blueprints = _blueprints(task)
    first = EnvRuntime(1, CONFIG, task)
    first.apply(GERMINATE, blueprints)  # one draw: the stream has moved on
    saved = first.state_dict()
    restored = EnvRuntime(1, CONFIG, task)
    restored.load_state_dict(saved)
    slot = first.model.slot_ids[1]
    for env in (first, restored):
        env.apply(Action(Op.GERMINATE, slot_index=1), blueprints)
    a, b = (env.model.slots[slot].seed.state_dict() for env in (first, restored))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _events(task, global_seed: int) -> list[str]:
    """The run's events, timing aside (EpochProgress too: how many follows the wall clock)."""
    torch.manual_seed(global_seed)
    sink = ListSink()
    config = msgspec.structs.replace(CONFIG, policy="ppo")
    VectorizedTrainer(config, sink, run_id="r", task=task).run()
    assert any(isinstance(e, SeedTransition) for e in sink.events)  # seeds were drawn
    return comparable_events(sink.events)


def test_a_run_does_not_read_the_global_random_stream(task):
    assert _events(task, 1) == _events(task, 2)


# --- the training step's parameter lists, kept between seed transitions ------------------------


def _batch(task, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    start = 16 * step
    return task.prepare(task.train_x[start : start + 16]), task.train_y[start : start + 16]


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_the_step_lists_follow_a_germinate_and_a_rollback(task):
    env = EnvRuntime(0, CONFIG, task)
    state = env.state
    process_train_batch(state, *_batch(task), task)
    host_only = state.step_parameters()
    assert state.step_parameters() is host_only  # no transition: kept, not rebuilt
    assert _ids(host_only.clip_params) == _ids(env.model.host_parameters())
    env.governor.snapshot()  # the last good epoch: no seed yet

    env.apply(GERMINATE, _blueprints(task))
    env.model.end_epoch()  # GERMINATED -> TRAINING: the seed learns
    slot_id = env.model.slot_ids[0]
    seed_params = list(env.model.seed_parameters(slot_id))
    process_train_batch(state, *_batch(task, 1), task)
    grown = state.step_parameters()
    assert grown is not host_only
    assert _ids(grown.clip_params) == _ids(env.model.host_parameters()) | _ids(seed_params)
    assert grown.optimizers == (state.host_optimizer, state.seed_optimizers[slot_id])
    assert all(p.grad is not None for p in seed_params)  # the seed took part in the step

    env.governor.execute_rollback(initiator="operator")  # prunes the live seed
    state.after_rollback()
    assert state.seed_optimizers == {}
    before = [p.detach().clone() for p in seed_params]
    process_train_batch(state, *_batch(task, 2), task)
    rolled_back = state.step_parameters()
    assert _ids(rolled_back.clip_params) == _ids(env.model.host_parameters())
    assert rolled_back.optimizers == (state.host_optimizer,)
    assert all(torch.equal(a, b) for a, b in zip(before, seed_params, strict=True))


def test_a_resumed_env_steps_its_own_seed_not_the_saved_one(task):
    env = EnvRuntime(0, CONFIG, task)
    env.apply(GERMINATE, _blueprints(task))
    process_train_batch(env.state, *_batch(task), task)
    resumed = EnvRuntime(0, CONFIG, task)
    process_train_batch(resumed.state, *_batch(task), task)  # its lists, before the load
    resumed.load_state_dict(env.state_dict())
    process_train_batch(resumed.state, *_batch(task, 1), task)
    slot_id = resumed.model.slot_ids[0]
    lists = resumed.state.step_parameters()
    assert _ids(resumed.model.seed_parameters(slot_id)) <= _ids(lists.clip_params)
    assert not _ids(env.model.seed_parameters(slot_id)) & _ids(lists.params)


def test_kept_step_lists_train_exactly_like_lists_rebuilt_every_step(task):
    kept, rebuilt = EnvRuntime(0, CONFIG, task), EnvRuntime(0, CONFIG, task)
    for step in range(6):
        if step == 2:
            for env in (kept, rebuilt):
                env.apply(GERMINATE, _blueprints(task))
        if step == 4:
            for env in (kept, rebuilt):
                env.model.end_epoch()  # GERMINATED -> TRAINING: the lists are rebuilt
        rebuilt.state.forget_step_parameters()
        a = process_train_batch(kept.state, *_batch(task, step), task)
        b = process_train_batch(rebuilt.state, *_batch(task, step), task)
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    for (name, p), q in zip(kept.model.named_parameters(), rebuilt.model.parameters(), strict=True):
        assert torch.equal(p, q), name
