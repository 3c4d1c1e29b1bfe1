"""One interface over the heuristic and the PPO policy, as the trainer's loop sees them.

The loop asks for one action per env each epoch, reports each env's reward an epoch later,
blames governor rollbacks, cuts episodes short for operator rollbacks and, at the end of a round of
episodes, asks for an update (PPO only).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import torch

from esper_engine.blueprints import blueprint_names
from esper_engine.config import HeuristicConfig, PPOConfig, TrainingConfig
from esper_engine.host_presets import HostSpec
from esper_engine.policy.actions import (
    Action,
    Op,
    action_masks,
    decode_actions,
    stack_masks,
)
from esper_engine.policy.heuristic import HeuristicPolicy
from esper_engine.policy.observation import EnvObservation, obs_dim, stack_observations
from esper_engine.policy.policy_file import read_policy_file
from esper_engine.policy.ppo import PPOAgent, PPOLearner, op_shares
from esper_engine.policy.rollout import RolloutBuffer

CONTRACT_KEYS = (  # the figures contracts.PolicyUpdate carries; the rest stay in ``history``
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "grad_norm",
    "mean_episode_reward",
)
# contracts.PolicyUpdate's kickstarting figures and the ``history`` keys they are read from.
KICKSTART_KEYS = {"imitation_weight": "imitation_weight", "heuristic_agreement": "greedy_agreement"}


class PolicyDriver:
    """Heuristic: acts, ignores rewards. PPO: acts, records transitions, updates per round.
    Static: always WAIT (the no-growth baseline the growth benchmark compares against).

    PPO is kickstarted (Schmitt et al. 2018): for ``ppo.demo_rounds`` rounds the heuristic acts
    and its episodes are recorded; after the last, the agent is behaviour-cloned on them; then
    PPO rounds add an imitation term whose weight decays to 0 (``PPOConfig.imitation_weight``).
    The heuristic also labels every PPO transition with its own choice (the imitation target and
    the agreement figure); it never decides what the agent does.
    """

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
        self.learner: PPOLearner | None = None  # the agent and its optimizer
        self.buffer: RolloutBuffer | None = None
        self.rounds = 0  # rounds finished (demonstrations and PPO updates alike)
        self.history: list[dict[str, float]] = []  # every round's figures, for the bench
        if kind == "heuristic":
            self.heuristic = heuristic.build(len(slot_ids), blueprints, host_kind)
        elif kind == "static":
            pass
        elif kind == "ppo":
            if ppo.seed is None:
                raise ValueError("PolicyDriver needs ppo.seed set (TrainingConfig.ppo_seed())")
            self.ppo = ppo
            self.learner = ppo.build(
                obs_dim(len(slot_ids), len(blueprints)), len(slot_ids), len(blueprints)
            )
            self.agent = self.learner.agent
            self.buffer = RolloutBuffer(n_envs)
            self.demos = RolloutBuffer(n_envs)  # heuristic episodes not yet cloned
            self.teacher = heuristic.build(len(slot_ids), blueprints, host_kind)
        else:
            raise ValueError(f"unknown policy {kind!r}; expected heuristic, ppo or static")

    @property
    def demonstrating(self) -> bool:
        """This round the heuristic acts and is recorded (kickstarting's first phase)."""
        return self.agent is not None and self.ppo.learn and self.rounds < self.ppo.demo_rounds

    def choose(self, envs: Sequence[int], observations: Sequence[EnvObservation]) -> list[Action]:
        """One legal action per listed env (the masks make illegal actions unsampleable)."""
        if not envs:
            return []
        if self.heuristic is not None:
            return [self.heuristic.act(obs) for obs in observations]
        if self.agent is None:
            return [Action(Op.WAIT) for _ in observations]
        assert self.buffer is not None
        masks = [action_masks(obs, len(self.blueprints)) for obs in observations]
        vectors = stack_observations(observations)
        out = self.agent.act(vectors, stack_masks(masks), deterministic=self.ppo.greedy)
        teacher = [self.teacher.act(obs).to_tensor() for obs in observations]
        taken = torch.stack(teacher) if self.demonstrating else out.actions
        for i, env in enumerate(envs):
            self.buffer.add(
                env,
                vectors[i],
                masks[i],
                taken[i],
                out.log_prob[i],
                out.value[i],
                teacher=teacher[i],
            )
            self._has_pending[env] = True
        return decode_actions(taken)

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

    def update(self) -> dict[str, float | None] | None:
        """The round's learning step: record (demonstration rounds), clone (after the last of
        them) or a PPO update with the scheduled imitation weight. Returns the PolicyUpdate
        figures, or None when nothing was learned (heuristic, --no-learn, an empty buffer or a
        demonstration round before the clone). Every round's full figures go to ``history``."""
        if self.learner is None or self.buffer is None or len(self.buffer) == 0:
            return None
        if not self.ppo.learn:
            self.history.append({"phase": "eval", **self._round_figures(self.buffer)})
            self.buffer.clear()
            return None
        if self.demonstrating:
            figures = self._round_figures(self.buffer)
            self.demos.absorb(self.buffer)
            self.buffer.clear()
            self.rounds += 1
            if self.rounds < self.ppo.demo_rounds:
                self.history.append({"phase": "demo", **figures})
                return None
            stats = {**self.learner.behaviour_clone(self.demos), "phase": "clone"}
            stats["mean_episode_reward"] = figures["mean_episode_reward"]  # this round's
        else:
            weight = self.ppo.imitation_weight(self.rounds - self.ppo.demo_rounds)
            stats = {**self.learner.update(self.buffer, weight), "phase": "ppo"}
            self.rounds += 1
        self.history.append(stats)
        return contract_figures(stats)

    @staticmethod
    def _round_figures(buffer: RolloutBuffer) -> dict[str, float]:
        """A round that is not learned from: its return and op shares (as ``update`` reports)."""
        returns = buffer.episode_returns()
        steps = [step for env in range(buffer.n_envs) for step in buffer.transitions(env)]
        actions = torch.stack([step.action for step in steps])
        figures = {
            "mean_episode_reward": sum(returns) / max(len(returns), 1),
            "transitions": len(actions),
            **op_shares(actions),
        }
        if all(step.teacher is not None for step in steps):
            teacher_op = torch.stack([step.teacher for step in steps])[:, 0]
            agreement = (actions[:, 0] == teacher_op).float().mean().item()
            figures["heuristic_agreement"] = agreement
        return figures

    # --- state: the policy file and the checkpoint --------------------------------------------

    def policy_state(self) -> dict[str, object]:
        """What a policy file holds (``policy_file.write_policy_file``): the agent, its
        optimizer, generator, the kickstarting schedule's position and the config it used."""
        assert self.learner is not None
        return {
            "slot_ids": list(self.slot_ids),
            "blueprints": list(self.blueprints),
            "obs_dim": obs_dim(len(self.slot_ids), len(self.blueprints)),
            "ppo": msgspec.to_builtins(self.ppo),
            "normalisation": {"reward_scale": self.ppo.reward_scale},
            **self.learner.state_dict(),  # agent, optimizer, generator
            "rounds": self.rounds,
            "demos": self.demos.state_dict(),
        }

    def load_policy_state(self, state: dict, source: str = "policy file") -> None:
        """Start from a saved policy; ValueError (one line) when it does not fit this run."""
        if self.learner is None:
            raise ValueError(f"{source}: only a ppo run can load a policy, this one is {self.kind}")
        for key, mine in (
            ("slot_ids", list(self.slot_ids)),
            ("blueprints", list(self.blueprints)),
            ("obs_dim", obs_dim(len(self.slot_ids), len(self.blueprints))),
        ):
            if state.get(key) != mine:
                raise ValueError(f"{source}: {key} {state.get(key)!r}, this run's are {mine!r}")
        try:
            self.learner.load_state_dict(state)
            self.rounds = int(state["rounds"])
            if len(state["demos"]) == self.demos.n_envs:
                self.demos.load_state_dict(state["demos"])
            else:  # recorded with another number of envs: keep them, one env after another
                self.demos = RolloutBuffer(self.demos.n_envs)
                self.demos.load_state_dict(
                    [[s for env in state["demos"] for s in env]]
                    + [[] for _ in range(self.demos.n_envs - 1)]
                )
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"{source}: does not fit this agent ({first[:160]})") from None

    def state_dict(self) -> dict[str, object]:
        """The agent, its optimizer and generator, the round's buffer and the pending flags.
        The heuristic and the static policy are stateless: only the flags are kept."""
        state: dict[str, object] = {"kind": self.kind, "pending": list(self._has_pending)}
        if self.learner is not None and self.buffer is not None:
            state.update(self.learner.state_dict())
            state["buffer"] = self.buffer.state_dict()
            state["rounds"] = self.rounds
            state["demos"] = self.demos.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"checkpoint policy is {state['kind']!r}, this run's is {self.kind!r}")
        if len(state["pending"]) != len(self._has_pending):
            raise ValueError(f"checkpoint has {len(state['pending'])} envs' pending flags")
        self._has_pending = [bool(flag) for flag in state["pending"]]
        if self.learner is not None and self.buffer is not None:
            self.learner.load_state_dict(state)
            self.buffer.load_state_dict(state["buffer"])
            self.rounds = int(state.get("rounds", 0))
            if "demos" in state:
                self.demos.load_state_dict(state["demos"])


def contract_figures(stats: dict[str, float]) -> dict[str, float | None]:
    """The figures of a round's ``history`` entry that ``contracts.PolicyUpdate`` carries."""
    figures: dict[str, float | None] = {key: stats[key] for key in CONTRACT_KEYS}
    for field, key in KICKSTART_KEYS.items():
        figures[field] = stats.get(key)  # None: no heuristic labels in this rollout
    return figures


def build_policy(
    config: TrainingConfig, slot_ids: Sequence[str], host_kind: str, host: HostSpec
) -> PolicyDriver:
    """The run's policy from its config (PPO seeded by the run's seed unless set); a ppo run
    with ``--policy-file`` starts from it (ValueError, one line, when it does not fit)."""
    driver = PolicyDriver(
        config.policy,
        n_envs=config.n_envs,
        slot_ids=slot_ids,
        blueprints=tuple(blueprint_names(host_kind)),
        host_kind=host_kind,
        heuristic=config.heuristic,
        ppo=msgspec.structs.replace(config.ppo, seed=config.ppo_seed()),
    )
    if config.policy == "ppo" and config.ppo.init_file is not None:  # --policy-file
        state = read_policy_file(config.ppo.init_file, host=host)
        driver.load_policy_state(state, config.ppo.init_file)
    return driver
