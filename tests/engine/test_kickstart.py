"""Kickstarting and policy files: the clone replays the heuristic on unseen episodes, a saved
policy reloads to the same actions, a hostile file is refused, and building an agent leaves
every generator the envs draw from where it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from esper_engine.config import HeuristicConfig, PPOConfig, TrainingConfig
from esper_engine.contracts import EpochSummary, PolicyUpdate
from esper_engine.env_runtime import EnvRuntime
from esper_engine.policy.actions import N_OPS, action_masks, stack_masks
from esper_engine.policy.driver import PolicyDriver
from esper_engine.policy.observation import EnvObservation, SlotObservation, obs_dim
from esper_engine.policy.policy_file import (
    PolicyFileError,
    policy_path,
    read_policy_file,
    write_policy_file,
)
from esper_engine.policy.ppo import PPOAgent
from esper_engine.policy.rewards import capacity_rent, episode_price
from esper_engine.tasks import load_task
from esper_engine.telemetry import ListSink
from esper_engine.trainer import VectorizedTrainer
from overwatch.cli import main

SLOTS = ("block1", "block2", "block3")
BLUEPRINTS = ("conv_light", "conv_heavy", "attention", "depthwise", "norm")


@pytest.fixture(scope="module")
def images():
    return load_task("synthetic-images", seed=0, scale="small")


@pytest.fixture(scope="module")
def held_out_images():
    return load_task("synthetic-images", seed=3, scale="small")


def tiny(**overrides) -> TrainingConfig:
    base = dict(
        n_envs=3,
        episodes=2,
        epochs=12,
        batches_per_epoch=2,
        batch_size=16,
        val_batches=1,
        batch_stats_every=0,
        checkpoint_every=0,
    )
    base.update(overrides)
    return TrainingConfig(**base)


def run(task, config: TrainingConfig) -> tuple[VectorizedTrainer, ListSink]:
    sink = ListSink()
    trainer = VectorizedTrainer(config, sink, run_id="kick", task=task)
    finished = trainer.run()
    assert finished.status == "completed", finished.error
    return trainer, sink


def driver(**ppo: object) -> PolicyDriver:
    return PolicyDriver(
        "ppo",
        n_envs=2,
        slot_ids=SLOTS,
        blueprints=BLUEPRINTS,
        host_kind="cnn",
        heuristic=HeuristicConfig(),
        ppo=PPOConfig(seed=7, **ppo),
    )


def observation(epoch: int, stage: str = "DORMANT") -> EnvObservation:
    history = tuple(0.3 + 0.04 * e for e in range(epoch + 1))
    return EnvObservation(
        epoch=epoch,
        max_epochs=12,
        val_accuracy=history[-1],
        val_loss=1.0,
        train_loss=1.1,
        random_guess_loss=2.3,
        acc_history=history,
        loss_history=tuple(2.0 - 0.1 * e for e in range(epoch + 1)),
        slots=(SlotObservation(stage, can_advance=stage != "DORMANT"),)
        + 2 * (SlotObservation("DORMANT"),),
        host_params=1063,
        blueprints=BLUEPRINTS,  # the catalogue the driver's agent is sized for
    )


def test_a_scripted_episode_earns_its_final_gain_minus_its_final_capacitys_rent(images):
    """The heuristic's episodes (germinations, blends, maybe prunes): every env's rewards sum
    to its accuracy gain from the first epoch to the last minus the rent of what it ends with
    and the compute price of the FLOPs it spent (over the bare host's on the same samples)."""
    config = tiny(episodes=1, policy="heuristic")
    trainer, sink = run(images, config)
    host = trainer.envs[0].seed_costs().host  # the bare host's training FLOPs per sample
    static = config.epochs * config.batches_per_epoch * config.batch_size * host
    for env in range(config.n_envs):
        summaries = [e for e in sink.events if isinstance(e, EpochSummary) and e.env == env]
        first, last = summaries[0], summaries[-1]
        assert max(s.seed_params for s in summaries) > 0  # it grew: rent was charged
        paid = sum(s.reward for s in summaries[1:])
        rent = capacity_rent(last.host_params, last.seed_params, config.param_rent)
        price = episode_price(last.train_flops, static, config.compute_price)
        assert price > 0  # it grew: it spent more than the bare host
        gain = 100 * (last.val_accuracy - first.val_accuracy)
        assert paid == pytest.approx(gain - rent - price, abs=1e-9)


class ObservationsSeen(VectorizedTrainer):
    """A trainer that keeps every observation its policy acted on."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[EnvObservation] = []

    def _act(self, envs, observations) -> None:
        self.seen.extend(observations[env.index] for env in envs)
        super()._act(envs, observations)


def test_the_clone_replays_the_heuristic_on_held_out_observations(images, held_out_images):
    """Sixteen rounds of recorded heuristic episodes, the clone; then the heuristic's own
    episodes on another task seed with other host inits: the clone's most likely op is the
    heuristic's on >= 95% of those observations.

    On this tiny host accuracy is near chance and quantised to 1/64, so most decisions turn on
    contributions of exactly 0 or one quantum either side; three rounds (132 transitions) were
    fitted perfectly but replayed only 78% of the unseen ops."""
    shape = dict(n_envs=4, val_batches=2)
    rounds = 16
    config = tiny(**shape, episodes=rounds, policy="ppo", ppo=PPOConfig(demo_rounds=rounds))
    trainer, _ = run(images, config)
    clone = trainer.policy.history[-1]
    assert clone["phase"] == "clone" and clone["transitions"] == rounds * 4 * 11
    assert clone["greedy_agreement"] == 1.0  # the demonstrations themselves are fitted
    # The critic learns the demonstrations' returns (near-chance accuracy: mostly noise); with
    # the default 500 steps it explained 0.42-0.46 of their variance over PPO seeds 0, 1, 7.
    assert clone["explained_variance"] > 0.3
    held_out = ObservationsSeen(
        tiny(**shape, policy="heuristic", seed=3),
        ListSink(),
        run_id="held-out",
        task=held_out_images,
    )
    assert held_out.run().status == "completed"
    observations = held_out.seen
    assert len(observations) == 2 * 4 * 11
    teacher = torch.tensor([trainer.policy.teacher.act(o).to_tensor()[0] for o in observations])
    masks = stack_masks([action_masks(o, len(trainer.blueprints)) for o in observations])
    vectors = torch.stack([o.to_vector() for o in observations])
    chosen = trainer.policy.agent.act(vectors, masks, deterministic=True).actions[:, 0]
    assert (chosen == teacher).float().mean().item() >= 0.95


def test_a_kickstarted_runs_updates_carry_a_decaying_imitation_weight_and_agreement(images):
    """One demonstration round, the clone, then PPO rounds whose imitation weight decays to 0:
    every PolicyUpdate says the weight it used and how often the agent's most likely op was the
    heuristic's on that update's transitions."""
    ppo = PPOConfig(demo_rounds=1, imitation_coef=1.0, imitation_rounds=2)
    _, sink = run(images, tiny(n_envs=2, episodes=4, policy="ppo", ppo=ppo))
    updates = [e for e in sink.events if isinstance(e, PolicyUpdate)]
    assert [u.update for u in updates] == [1, 2, 3, 4]  # the clone, then three PPO rounds
    assert [u.imitation_weight for u in updates[1:]] == [1.0, 0.5, 0.0]
    assert updates[0].imitation_weight == 0.0  # the clone is fitted by its own loss
    for u in updates:
        assert u.heuristic_agreement is not None and 0.0 <= u.heuristic_agreement <= 1.0
    assert updates[0].heuristic_agreement == 1.0  # the clone fits its demonstrations


def test_a_saved_policy_reloads_to_identical_actions(tmp_path):
    first = driver(demo_rounds=0)
    path = policy_path(tmp_path / "run.msgpack")
    assert path.name == "run.policy.pt"
    write_policy_file(path, first.policy_state())
    second = driver(demo_rounds=0)  # then moved away from the first in every saved part
    with torch.no_grad():
        for p in second.agent.parameters():
            p.add_(1.0)
    second.agent.generator.manual_seed(123)
    second.rounds = 5
    second.load_policy_state(read_policy_file(path))
    observations = [observation(e, "TRAINING" if e % 2 else "DORMANT") for e in range(8)]
    vectors = torch.stack([o.to_vector() for o in observations])
    masks = stack_masks([action_masks(o, len(BLUEPRINTS)) for o in observations])
    for greedy in (True, False):  # sampling too: the generator's state is in the file
        a = first.agent.act(vectors, masks, deterministic=greedy)
        b = second.agent.act(vectors, masks, deterministic=greedy)
        assert torch.equal(a.actions, b.actions)
        assert torch.equal(a.log_prob, b.log_prob)
    assert second.rounds == first.rounds


def test_a_policy_for_another_host_is_refused(tmp_path):
    path = tmp_path / "p.policy.pt"
    write_policy_file(path, driver().policy_state())
    other = PolicyDriver(
        "ppo",
        n_envs=2,
        slot_ids=SLOTS[:2],
        blueprints=BLUEPRINTS,
        host_kind="cnn",
        heuristic=HeuristicConfig(),
        ppo=PPOConfig(seed=0),
    )
    with pytest.raises(ValueError, match="slot_ids"):
        other.load_policy_state(read_policy_file(path), str(path))


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/nonexistent")  # set per test below


def test_a_hostile_policy_file_is_refused_with_one_line_and_exit_2(tmp_path, capsys):
    global MARKER
    MARKER = tmp_path / "ran"
    hostile = tmp_path / "evil.policy.pt"
    torch.save({"format": "esper-policy/1", "agent": _RunsCode()}, hostile)
    with pytest.raises(PolicyFileError, match="refused, not a policy file that loads safely"):
        read_policy_file(hostile)
    assert not MARKER.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(PolicyFileError, match="refused"):
        read_policy_file(tmp_path / "junk.pt")
    code = main(
        ["run", "--headless", "--no-record", "--policy", "ppo", "--policy-file", str(hostile)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("overwatch: error: ") and "refused" in err[-1]
    assert not MARKER.exists()


def test_building_an_agent_leaves_the_env_generators_untouched(images):
    config = tiny(n_envs=1)
    env = EnvRuntime(0, config, images)
    global_before, env_before = torch.get_rng_state(), env.generator.get_state()
    PPOAgent(obs_dim(len(SLOTS)), N_OPS, len(SLOTS), len(BLUEPRINTS), PPOConfig(seed=5))
    driver()
    assert torch.equal(torch.get_rng_state(), global_before)
    assert torch.equal(env.generator.get_state(), env_before)
