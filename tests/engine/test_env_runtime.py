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
