"""One interface over the heuristic and the PPO policy, as the trainer's loop sees them.

The loop asks for one action per env each epoch, reports each env's reward an epoch later,
blames governor rollbacks, cuts episodes short for operator rollbacks and, at the end of a round of
episodes, asks for an update (PPO only).
"""

from __future__ import annotations

from collections.abc import Sequence

from esper_engine.config import HeuristicConfig, PPOConfig
from esper_engine.policy.actions import (
    N_OPS,
    Action,
    Op,
    action_masks,
    decode_actions,
    stack_masks,
)
from esper_engine.policy.heuristic import HeuristicPolicy
from esper_engine.policy.observation import EnvObservation, obs_dim, stack_observations
from esper_engine.policy.ppo import PPOAgent, RolloutBuffer


class PolicyDriver:
    """Heuristic: acts, ignores rewards. PPO: acts, records transitions, updates per round.
    Static: always WAIT (the no-growth baseline the growth benchmark compares against)."""

    def __init__(
        self,
        kind: str,
        *,
        n_envs: int,
        slot_ids: Sequence[str],
        blueprints: Sequence[str],
        host_kind: str,
        heuristic: HeuristicConfig,
        ppo: PPOConfig,
    ) -> None:
        """``ppo.seed`` must be set (the trainer fills in the run's seed when it is None)."""
        self.kind = kind
        self.blueprints = tuple(blueprints)
        self.slot_ids = tuple(slot_ids)
        self._has_pending = [False] * n_envs
        self.heuristic: HeuristicPolicy | None = None
        self.agent: PPOAgent | None = None
        self.buffer: RolloutBuffer | None = None
        if kind == "heuristic":
            self.heuristic = build_heuristic(heuristic, len(slot_ids), blueprints, host_kind)
        elif kind == "static":
            pass
        elif kind == "ppo":
            if ppo.seed is None:
                raise ValueError("PolicyDriver needs ppo.seed set (TrainingConfig.ppo_seed())")
            self.agent = PPOAgent(
                obs_dim(len(slot_ids)), N_OPS, len(slot_ids), len(blueprints), ppo
            )
            self.buffer = RolloutBuffer(n_envs)
        else:
            raise ValueError(f"unknown policy {kind!r}; expected heuristic, ppo or static")

    def choose(self, envs: Sequence[int], observations: Sequence[EnvObservation]) -> list[Action]:
        """One legal action per listed env (the masks make illegal actions unsampleable)."""
        if self.heuristic is not None:
            return [self.heuristic.act(obs) for obs in observations]
        if self.agent is None:
            return [Action(Op.WAIT) for _ in observations]
        assert self.agent is not None and self.buffer is not None
        masks = [action_masks(obs, len(self.blueprints)) for obs in observations]
        vectors = stack_observations(observations)
        out = self.agent.act(vectors, stack_masks(masks))
        for i, env in enumerate(envs):
            self.buffer.add(
                env, vectors[i], masks[i], out.actions[i], out.log_prob[i], out.value[i]
            )
            self._has_pending[env] = True
        return decode_actions(out.actions)

    def reward(self, env: int, value: float) -> None:
        """The reward for the env's previous action, known one epoch after it."""
        if self.buffer is not None and self._has_pending[env]:
            self.buffer.set_reward(env, value)
            self._has_pending[env] = False

    def penalize(self, env: int, penalty: float) -> None:
        """Governor rollback: the env's latest action is blamed and its episode is terminal."""
        # Only an action not yet paid for is to blame: a second rollback before the env acts
        # again must not pile another penalty on an already terminal step.
        if self.buffer is not None and self._has_pending[env]:
            self._settle(env)
            self.buffer.add_penalty_to_last(env, penalty)

    def end_episode(self, env: int) -> None:
        """The episode's last epoch is over: terminal, no bootstrap (the host is discarded)."""
        if self.buffer is not None and self.buffer.transitions(env):
            self._settle(env)
            self.buffer.finish_episode(env, 0.0, truncated=False)

    def truncate(self, env: int, obs: EnvObservation) -> None:
        """Operator rollback: cut the episode short, bootstrapping from V(obs)."""
        if self.buffer is not None and self.buffer.transitions(env):
            assert self.agent is not None
            self._settle(env)
            value = float(self.agent.value(obs.to_vector().unsqueeze(0))[0])
            self.buffer.finish_episode(env, value, truncated=True)

    def _settle(self, env: int) -> None:
        # An action whose next epoch never came (cut short) earns no reward beyond what is added.
        if self._has_pending[env]:
            self.reward(env, 0.0)

    def update(self) -> dict[str, float] | None:
        """PPO update over the finished round; None for the heuristic or an empty buffer."""
        if self.agent is None or self.buffer is None or len(self.buffer) == 0:
            return None
        return self.agent.update(self.buffer)

    def state_dict(self) -> dict[str, object]:
        """The agent, its optimizer and generator, the round's buffer and the pending flags.
        The heuristic and the static policy are stateless: only the flags are kept."""
        state: dict[str, object] = {"kind": self.kind, "pending": list(self._has_pending)}
        if self.agent is not None and self.buffer is not None:
            state["agent"] = self.agent.state_dict()
            state["optimizer"] = self.agent.optimizer.state_dict()
            state["generator"] = self.agent.generator.get_state()
            state["buffer"] = self.buffer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"checkpoint policy is {state['kind']!r}, this run's is {self.kind!r}")
        if len(state["pending"]) != len(self._has_pending):
            raise ValueError(f"checkpoint has {len(state['pending'])} envs' pending flags")
        self._has_pending = [bool(flag) for flag in state["pending"]]
        if self.agent is not None and self.buffer is not None:
            self.agent.load_state_dict(state["agent"])
            self.agent.optimizer.load_state_dict(state["optimizer"])
            self.agent.generator.set_state(state["generator"])
            self.buffer.load_state_dict(state["buffer"])


def build_heuristic(
    config: HeuristicConfig, n_slots: int, blueprints: Sequence[str], host_kind: str
) -> HeuristicPolicy:
    """The heuristic policy with every rule from the run's config."""
    preference = config.cnn_preference if host_kind == "cnn" else config.transformer_preference
    return HeuristicPolicy(
        n_slots,
        blueprints,
        preference=preference,
        plateau_window=config.plateau_window,
        plateau_delta=config.plateau_delta,
        fossilize_threshold=config.fossilize_threshold,
        prune_threshold=config.prune_threshold,
        min_prune_age=config.min_blending_epochs,
        holding_patience=config.holding_patience,
        max_live=config.max_live,
        grow_from_start=config.grow_from_start,
        min_epochs_left=config.min_epochs_left,
    )
