"""The rollout: each env's transitions, their rewards as they arrive, and GAE over them.

The driver fills a ``RolloutBuffer`` one epoch at a time (an action now, its reward an epoch
later); at the end of a round ``batch`` turns every env's finished episodes into one training
batch of advantages and returns (``compute_gae``) for ``ppo.PPOLearner.update``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from esper_engine.policy.actions import ActionMasks, stack_masks


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_value: float,
    *,
    truncated: torch.Tensor | None = None,
    bootstrap_values: torch.Tensor | None = None,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns for one env's sequence of T steps.

    ``dones[t]``: the episode ended after step t (terminated *or* truncated), so no advantage
    flows back across it. ``truncated[t]``: that end was a truncation (time limit, operator
    rollback), so step t still bootstraps from ``bootstrap_values[t]`` = V(s_{t+1}); a
    termination bootstraps from 0. ``last_value`` = V(s_T) is used when the last step is not done.
    """
    steps = len(rewards)
    truncated = torch.zeros(steps, dtype=torch.bool) if truncated is None else truncated.bool()
    if bootstrap_values is None:
        bootstrap_values = torch.zeros(steps)
    advantages = torch.zeros(steps)
    running = 0.0
    for t in reversed(range(steps)):
        if dones[t]:
            next_value, continues = (float(bootstrap_values[t]) if truncated[t] else 0.0), 0.0
        else:
            next_value = float(values[t + 1]) if t + 1 < steps else last_value
            continues = 1.0
        delta = float(rewards[t]) + gamma * next_value - float(values[t])
        running = delta + gamma * lam * continues * running
        advantages[t] = running
    return advantages, advantages + values.float()


@dataclass
class Transition:
    """One RL step of one env; the reward arrives an epoch later via ``set_reward``."""

    obs: torch.Tensor
    masks: ActionMasks
    action: torch.Tensor
    log_prob: float
    value: float
    reward: float | None = None
    penalty: float = 0.0  # the governor's death penalty, kept apart so set_reward can't erase it
    terminal: bool = False  # no bootstrap past this step
    truncated: bool = False  # the episode was cut here; bootstrap from ``bootstrap_value``
    bootstrap_value: float = 0.0
    episode_end: bool = False  # finish_episode was called here (for episode-return stats)
    teacher: torch.Tensor | None = None  # the heuristic's action here (kickstarting)

    @property
    def total_reward(self) -> float:
        return (self.reward or 0.0) + self.penalty

    @property
    def done(self) -> bool:
        return self.terminal or self.truncated


@dataclass
class RolloutBatch:
    """The flattened rollout with its advantages and returns, ready for minibatching."""

    obs: torch.Tensor
    masks: ActionMasks
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    teacher: torch.Tensor | None = None  # [N, 3] the heuristic's actions, when all are known

    def select(self, index: torch.Tensor) -> RolloutBatch:
        return RolloutBatch(
            self.obs[index],
            ActionMasks(*(part[index] for part in self.masks)),
            self.actions[index],
            self.log_probs[index],
            self.values[index],
            self.advantages[index],
            self.returns[index],
            None if self.teacher is None else self.teacher[index],
        )


class RolloutBuffer:
    """Per-env transition lists for one PPO round.

    Protocol per env and epoch: after the epoch, ``set_reward`` for the previous action, then
    ``add`` the new one (``add`` refuses while the previous reward is missing, so a reward can
    never land on the wrong step). A governor rollback calls ``add_penalty_to_last`` (adds the
    penalty and marks the step terminal; every transition is kept). At episode end, or on an
    operator-forced rollback, ``finish_episode(env, V(final obs), truncated=True)`` bootstraps.
    """

    def __init__(self, n_envs: int) -> None:
        self.n_envs = n_envs
        self._steps: list[list[Transition]] = [[] for _ in range(n_envs)]

    def __len__(self) -> int:
        return sum(len(steps) for steps in self._steps)

    def transitions(self, env: int) -> Sequence[Transition]:
        return tuple(self._steps[env])

    def absorb(self, other: RolloutBuffer) -> None:
        """Append ``other``'s finished episodes env by env (recorded demonstrations pile up)."""
        if other.n_envs != self.n_envs:
            raise ValueError(f"buffer has {other.n_envs} envs, expected {self.n_envs}")
        for env in range(self.n_envs):
            self._steps[env].extend(other._steps[env])

    def clear(self) -> None:
        self._steps = [[] for _ in range(self.n_envs)]

    def add(
        self,
        env: int,
        obs: torch.Tensor,
        masks: ActionMasks,
        action: torch.Tensor,
        log_prob: float | torch.Tensor,
        value: float | torch.Tensor,
        reward: float | None = None,
        teacher: torch.Tensor | None = None,
    ) -> None:
        steps = self._steps[env]
        if steps and steps[-1].reward is None:
            raise ValueError(f"env {env}: the previous transition has no reward; set_reward first")
        teacher = None if teacher is None else teacher.long()
        steps.append(
            Transition(
                obs, masks, action.long(), float(log_prob), float(value), reward, teacher=teacher
            )
        )

    def _last(self, env: int) -> Transition:
        if not self._steps[env]:
            raise ValueError(f"env {env} has no transition yet")
        return self._steps[env][-1]

    def set_reward(self, env: int, reward: float) -> None:
        last = self._last(env)
        if last.reward is not None:
            raise ValueError(f"env {env}: the last transition already has reward {last.reward}")
        last.reward = float(reward)

    def add_penalty_to_last(self, env: int, penalty: float) -> None:
        """Blame the env's most recent action for a governor rollback; it becomes terminal."""
        last = self._last(env)
        last.penalty += penalty
        last.terminal = True

    def finish_episode(self, env: int, last_value: float, truncated: bool = True) -> None:
        """End the env's episode: a truncation bootstraps from ``last_value``, else terminal."""
        if not self._steps[env] or self._steps[env][-1].episode_end:
            return  # nothing since the last episode ended
        last = self._last(env)
        last.episode_end = True
        if last.terminal:
            return  # already terminal (a penalised rollback): nothing to bootstrap
        if truncated:
            last.truncated, last.bootstrap_value = True, float(last_value)
        else:
            last.terminal = True

    def state_dict(self) -> list[list[dict[str, object]]]:
        """Every env's transitions as tensors and plain values (a checkpoint's round so far)."""
        return [[_transition_state(step) for step in steps] for steps in self._steps]

    def load_state_dict(self, state: Sequence[Sequence[dict]]) -> None:
        if len(state) != self.n_envs:
            raise ValueError(f"checkpoint buffer has {len(state)} envs, expected {self.n_envs}")
        self._steps = [[_transition_from_state(step) for step in steps] for steps in state]

    def episode_returns(self) -> list[float]:
        """Undiscounted reward sum of every finished episode (rollback penalties included)."""
        returns: list[float] = []
        for steps in self._steps:
            total = 0.0
            for step in steps:
                total += step.total_reward
                if step.episode_end:
                    returns.append(total)
                    total = 0.0
        return returns

    def batch(self, gamma: float, lam: float, reward_scale: float = 1.0) -> RolloutBatch:
        """Flatten every env's steps with GAE on rewards x ``reward_scale``; every step needs its
        reward, every env an end."""
        if len(self) == 0:
            raise ValueError("the rollout buffer is empty")
        advantages, returns, steps = [], [], []
        for env, env_steps in enumerate(self._steps):
            if not env_steps:
                continue
            self._check_complete(env, env_steps)
            adv, ret = compute_gae(
                torch.tensor([s.total_reward for s in env_steps]) * reward_scale,
                torch.tensor([s.value for s in env_steps]),
                torch.tensor([s.done for s in env_steps]),
                last_value=0.0,  # unused: the last step is always done
                truncated=torch.tensor([s.truncated for s in env_steps]),
                bootstrap_values=torch.tensor([s.bootstrap_value for s in env_steps]),
                gamma=gamma,
                lam=lam,
            )
            advantages.append(adv)
            returns.append(ret)
            steps.extend(env_steps)
        return RolloutBatch(
            obs=torch.stack([s.obs for s in steps]).float(),
            masks=stack_masks([s.masks for s in steps]),
            actions=torch.stack([s.action for s in steps]),
            log_probs=torch.tensor([s.log_prob for s in steps]),
            values=torch.tensor([s.value for s in steps]),
            advantages=torch.cat(advantages),
            returns=torch.cat(returns),
            teacher=(
                torch.stack([s.teacher for s in steps])
                if all(s.teacher is not None for s in steps)
                else None
            ),
        )

    @staticmethod
    def _check_complete(env: int, steps: list[Transition]) -> None:
        for index, step in enumerate(steps):
            if step.reward is None:
                raise ValueError(f"env {env}: transition {index} has no reward")
        if not steps[-1].done:
            raise ValueError(f"env {env}: episode not finished; call finish_episode first")


def _transition_state(step: Transition) -> dict[str, object]:
    return {
        "obs": step.obs,
        "masks": list(step.masks),
        "action": step.action,
        "log_prob": step.log_prob,
        "value": step.value,
        "reward": step.reward,
        "penalty": step.penalty,
        "terminal": step.terminal,
        "truncated": step.truncated,
        "bootstrap_value": step.bootstrap_value,
        "episode_end": step.episode_end,
        "teacher": step.teacher,
    }


def _transition_from_state(state: dict) -> Transition:
    return Transition(**{**state, "masks": ActionMasks(*state["masks"])})
