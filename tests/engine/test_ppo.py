"""PPO: GAE against a hand oracle, the buffer's penalty/truncation API, masks, determinism,
the factored log-probability, the first-minibatch ratio, and learning a small bandit."""

from __future__ import annotations

import itertools
import math

import msgspec
import pytest
import torch

from esper_engine.contracts import Event, PolicyUpdate
from esper_engine.policy.actions import N_OPS, ActionMasks, Op, op_index
from esper_engine.policy.driver import contract_figures
from esper_engine.policy.observation import obs_dim
from esper_engine.policy.ppo import PPOAgent, PPOConfig, PPOLearner
from esper_engine.policy.rollout import RolloutBuffer, compute_gae

N_SLOTS, N_BLUEPRINTS = 3, 3
OBS_DIM = obs_dim(N_SLOTS)
WAIT, GERMINATE = op_index(Op.WAIT), op_index(Op.GERMINATE)  # positions in the op head


def random_masks(n: int, generator: torch.Generator) -> ActionMasks:
    """Random legality with the invariants of ``action_masks``: WAIT always legal, and every
    legal op has at least one legal slot."""
    slot = torch.rand(n, N_OPS, N_SLOTS, generator=generator) < 0.5
    slot[:, :, 0] |= torch.rand(n, N_OPS, generator=generator) < 0.5
    slot[:, WAIT] = True
    op = slot.any(dim=-1) & (torch.rand(n, N_OPS, generator=generator) < 0.7)
    op[:, WAIT] = True
    blueprint = torch.rand(n, N_BLUEPRINTS, generator=generator) < 0.6
    blueprint[:, 1] = True
    return ActionMasks(op, slot, blueprint)


def all_legal(n: int) -> ActionMasks:
    return ActionMasks(
        torch.ones(n, N_OPS, dtype=torch.bool),
        torch.ones(n, N_OPS, N_SLOTS, dtype=torch.bool),
        torch.ones(n, N_BLUEPRINTS, dtype=torch.bool),
    )


def row(masks: ActionMasks, i: int) -> ActionMasks:
    return ActionMasks(*(part[i] for part in masks))


def agent(seed: int = 0, **config: object) -> PPOAgent:
    return PPOAgent(OBS_DIM, N_OPS, N_SLOTS, N_BLUEPRINTS, PPOConfig(seed=seed, **config))


def learner(seed: int = 0, **config: object) -> PPOLearner:
    return PPOConfig(seed=seed, **config).build(OBS_DIM, N_SLOTS, N_BLUEPRINTS)


def fill(buffer: RolloutBuffer, ppo: PPOAgent, steps: int, seed: int) -> None:
    """Run ``steps`` epochs per env with rewards and end every episode as a truncation."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        obs = torch.randn(buffer.n_envs, OBS_DIM, generator=g)
        masks = random_masks(buffer.n_envs, g)
        out = ppo.act(obs, masks)
        for env in range(buffer.n_envs):
            buffer.add(
                env,
                obs[env],
                row(masks, env),
                out.actions[env],
                out.log_prob[env],
                out.value[env],
                reward=float(torch.randn(1, generator=g)),
            )
    for env in range(buffer.n_envs):
        buffer.finish_episode(env, last_value=0.3, truncated=True)


# --- GAE ----------------------------------------------------------------------------------


def test_gae_matches_a_hand_computed_oracle() -> None:
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    rewards = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.5])
    values = torch.tensor([0.5, 0.4, 0.3, 0.2, 0.1])
    dones = torch.tensor([False, True, False, True, False])  # terminal at 1, truncated at 3
    truncated = torch.tensor([False, False, False, True, False])
    bootstrap = torch.tensor([0.0, 0.0, 0.0, 0.7, 0.0])
    adv, ret = compute_gae(
        rewards,
        values,
        dones,
        0.6,
        truncated=truncated,
        bootstrap_values=bootstrap,
        gamma=gamma,
        lam=lam,
    )
    # t=4: not done, bootstraps from last_value: 0.5 + 0.9*0.6 - 0.1           = 0.94
    # t=3: truncated, bootstraps from 0.7:       1 + 0.9*0.7 - 0.2             = 1.43
    # t=2: delta 2 + 0.9*0.2 - 0.3 = 1.88; plus 0.72 * A3 = 1.0296            = 2.9096
    # t=1: terminal, no bootstrap:               0 - 0.4                       = -0.4
    # t=0: delta 1 + 0.9*0.4 - 0.5 = 0.86; plus 0.72 * A1 = -0.288            = 0.572
    expected = torch.tensor([0.572, -0.4, 2.9096, 1.43, 0.94])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_gae_with_lambda_one_is_the_discounted_return_minus_value() -> None:
    rewards = torch.tensor([1.0, 2.0, 3.0])
    values = torch.tensor([0.1, 0.2, 0.3])
    adv, ret = compute_gae(
        rewards, values, torch.zeros(3, dtype=torch.bool), 4.0, gamma=0.5, lam=1.0
    )
    # Monte Carlo with a bootstrap of 4.0 after the last step:
    #   t=0: 1 + 0.5*2 + 0.25*3 + 0.125*4 = 3.25
    #   t=1: 2 + 0.5*3 + 0.25*4 = 4.5
    #   t=2: 3 + 0.5*4 = 5
    torch.testing.assert_close(ret, torch.tensor([3.25, 4.5, 5.0]))
    torch.testing.assert_close(adv, ret - values)


# --- buffer -------------------------------------------------------------------------------


def test_penalty_changes_only_that_envs_last_transition_and_keeps_everything() -> None:
    buffer = RolloutBuffer(n_envs=2)
    fill(buffer, agent(), steps=3, seed=0)
    before = [[(t.total_reward, t.terminal) for t in buffer.transitions(e)] for e in range(2)]
    buffer.add_penalty_to_last(1, -10.0)
    after = [[(t.total_reward, t.terminal) for t in buffer.transitions(e)] for e in range(2)]
    assert after[0] == before[0]
    assert after[1][:-1] == before[1][:-1]
    assert after[1][-1] == (pytest.approx(before[1][-1][0] - 10.0), True)
    assert len(buffer) == 6


def test_penalty_before_the_reward_arrives_is_kept_and_cuts_the_bootstrap() -> None:
    ppo, buffer = agent(), RolloutBuffer(n_envs=1)
    g = torch.Generator().manual_seed(0)
    obs, masks = torch.randn(2, OBS_DIM, generator=g), all_legal(2)
    out = ppo.act(obs, masks)
    buffer.add(0, obs[0], row(masks, 0), out.actions[0], out.log_prob[0], out.value[0])
    buffer.add_penalty_to_last(0, -10.0)  # the governor rolled back during the next epoch
    buffer.set_reward(0, 0.5)
    buffer.add(0, obs[1], row(masks, 1), out.actions[1], out.log_prob[1], out.value[1], 1.0)
    buffer.finish_episode(0, last_value=2.0, truncated=True)
    batch = buffer.batch(gamma=0.9, lam=0.95)
    # The terminal step does not see the next step's value; the last one bootstraps from 2.0.
    expected = torch.tensor([-9.5 - out.value[0], 1.0 + 0.9 * 2.0 - out.value[1]])
    torch.testing.assert_close(batch.advantages, expected)
    assert buffer.episode_returns() == [pytest.approx(-8.5)]


def test_truncation_bootstraps_and_termination_does_not() -> None:
    advantages = {}
    for truncated in (True, False):
        buffer = RolloutBuffer(n_envs=1)
        buffer.add(
            0,
            torch.zeros(OBS_DIM),
            row(all_legal(1), 0),
            torch.tensor([0, 0, 0]),
            log_prob=-1.0,
            value=0.5,
            reward=1.0,
        )
        buffer.finish_episode(0, last_value=3.0, truncated=truncated)
        advantages[truncated] = buffer.batch(gamma=0.9, lam=0.95).advantages.item()
    assert advantages[False] == pytest.approx(1.0 - 0.5)
    assert advantages[True] == pytest.approx(1.0 + 0.9 * 3.0 - 0.5)


def test_buffer_refuses_misattributed_or_incomplete_data() -> None:
    buffer = RolloutBuffer(n_envs=2)
    masks, action = row(all_legal(1), 0), torch.tensor([0, 0, 0])
    buffer.add(0, torch.zeros(OBS_DIM), masks, action, -1.0, 0.0)
    with pytest.raises(ValueError, match="env 0: the previous transition has no reward"):
        buffer.add(0, torch.zeros(OBS_DIM), masks, action, -1.0, 0.0)
    with pytest.raises(ValueError, match="env 0: transition 0 has no reward"):
        buffer.batch(0.99, 0.95)
    buffer.set_reward(0, 1.0)
    with pytest.raises(ValueError, match="already has reward 1.0"):
        buffer.set_reward(0, 2.0)
    with pytest.raises(ValueError, match="env 0: episode not finished"):
        buffer.batch(0.99, 0.95)
    with pytest.raises(ValueError, match="env 1 has no transition yet"):
        buffer.add_penalty_to_last(1, -10.0)


# --- acting -------------------------------------------------------------------------------


def test_masked_actions_are_never_sampled() -> None:
    g = torch.Generator().manual_seed(0)
    masks = random_masks(4000, g)
    obs = torch.randn(4000, OBS_DIM, generator=g)
    ppo = agent()
    for deterministic in (False, True):
        op, slot, bp = ppo.act(obs, masks, deterministic=deterministic).actions.unbind(1)
        rows = torch.arange(4000)
        assert masks.op[rows, op].all()
        assert (masks.slot[rows, op, slot] | (op == WAIT)).all()
        assert (masks.blueprint[rows, bp] | (op != GERMINATE)).all()
    assert len(op.unique()) == N_OPS  # every op was drawn somewhere


def test_same_seed_gives_the_same_actions() -> None:
    g = torch.Generator().manual_seed(5)
    obs, masks = torch.randn(16, OBS_DIM, generator=g), random_masks(16, g)

    def draws(seed: int) -> list[torch.Tensor]:
        ppo = agent(seed)
        return [ppo.act(obs, masks).actions for _ in range(5)]

    first, again, other = draws(3), draws(3), draws(4)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(first, other, strict=True))


def test_log_prob_and_entropy_are_those_of_the_joint_action_distribution() -> None:
    """Sum p over all *distinct* legal actions is 1 and -sum p log p equals the entropy: the
    slot head must not count for WAIT, the blueprint head only for GERMINATE."""
    g = torch.Generator().manual_seed(2)
    ppo = agent(1)
    # Larger logits than the 0.01 init so the distribution is far from uniform.
    with torch.no_grad():
        for head in (ppo.op_head, ppo.slot_head, ppo.blueprint_head):
            head.weight.mul_(200.0)
    obs, masks = torch.randn(1, OBS_DIM, generator=g), random_masks(1, g)
    legal = []
    for op in range(N_OPS):
        slots = range(N_SLOTS) if op != WAIT else [0]
        bps = range(N_BLUEPRINTS) if op == GERMINATE else [0]
        for slot, bp in itertools.product(slots, bps):
            ok = masks.op[0, op] and (op == WAIT or masks.slot[0, op, slot])
            if ok and (op != GERMINATE or masks.blueprint[0, bp]):
                legal.append([op, slot, bp])
    actions = torch.tensor(legal)
    repeated = ActionMasks(*(part.expand(len(legal), *part.shape[1:]) for part in masks))
    log_p, entropy, _ = ppo.evaluate(obs.expand(len(legal), -1), repeated, actions)
    p = log_p.exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert entropy[0].item() == pytest.approx(-(p * log_p).sum().item(), abs=1e-4)


def test_act_rejects_an_env_without_any_legal_op() -> None:
    masks = all_legal(1)._replace(op=torch.zeros(1, N_OPS, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one legal op"):
        agent().act(torch.zeros(1, OBS_DIM), masks)


# --- update -------------------------------------------------------------------------------


def test_ratio_is_exactly_one_on_the_first_minibatch() -> None:
    ppo, buffer = agent(), RolloutBuffer(n_envs=4)
    fill(buffer, ppo, steps=5, seed=1)
    batch = buffer.batch(0.99, 0.95)
    first = torch.randperm(len(batch.actions), generator=torch.Generator().manual_seed(0))[:5]
    _, stats = ppo.loss(batch.select(first))
    assert stats["max_ratio_deviation"] == 0.0
    assert stats["clip_fraction"] == 0.0
    assert stats["approx_kl"] == 0.0


def test_update_reports_policy_update_fields_and_consumes_the_buffer() -> None:
    ppo, buffer = learner(), RolloutBuffer(n_envs=3)
    fill(buffer, ppo.agent, steps=4, seed=2)
    returns = buffer.episode_returns()
    stats = ppo.update(buffer)
    base = {f.name for f in msgspec.structs.fields(Event)}
    wanted = {f.name for f in msgspec.structs.fields(PolicyUpdate)} - base - {"update"}
    figures = contract_figures(stats)
    assert set(figures) == wanted  # the contract's figures; the diagnostics stay beside them
    assert all(math.isfinite(v) for v in stats.values())
    assert stats["mean_episode_reward"] == pytest.approx(sum(returns) / 3)
    assert figures["heuristic_agreement"] is None  # no heuristic labels in this rollout
    assert len(buffer) == 0
    PolicyUpdate(update=1, **figures)


def test_target_kl_stops_the_update_after_the_first_pass() -> None:
    ppo, buffer = learner(target_kl=0.0, update_epochs=4, minibatch_size=4), RolloutBuffer(2)
    fill(buffer, ppo.agent, steps=4, seed=3)
    ppo.update(buffer)
    first_param = next(ppo.agent.parameters())
    assert ppo.optimizer.state[first_param]["step"].item() == 2  # one pass: 8 steps in 2 x 4


def test_learns_a_contextual_bandit() -> None:
    """Only GERMINATE into slot 2 with blueprint 1 pays (+1); a 1-in-45 action at the start."""
    # Its rewards are unit-size already; no entropy floor: it asks for a near-certain choice.
    ppo = learner(seed=0, lr=1e-2, minibatch_size=16, reward_scale=1.0, entropy_floor_coef=0.0)
    g = torch.Generator().manual_seed(0)
    target = torch.tensor([GERMINATE, 2, 1])
    n_envs = 32
    for _ in range(50):
        buffer = RolloutBuffer(n_envs)
        obs, masks = torch.randn(n_envs, OBS_DIM, generator=g), all_legal(n_envs)
        out = ppo.agent.act(obs, masks)
        for env in range(n_envs):
            reward = float(torch.equal(out.actions[env], target))
            buffer.add(
                env,
                obs[env],
                row(masks, env),
                out.actions[env],
                out.log_prob[env],
                out.value[env],
                reward,
            )
            buffer.finish_episode(env, last_value=0.0, truncated=False)
        ppo.update(buffer)
    test_obs = torch.randn(200, OBS_DIM, generator=g)
    sampled = ppo.agent.act(test_obs, all_legal(200)).actions
    assert (sampled == target).all(dim=1).float().mean().item() > 0.9
