"""The policy as a sharded run's ranks see it (SPEC 13): it lives on the leader.

A worker's ``WorkerPolicy`` keeps its envs' calls (rewards, penalties, truncations) until the
epoch's ``choose``, sends them with the observations to act on, and receives its actions; the
leader's ``LeaderPolicy`` replays every worker's calls on the one ``PolicyDriver`` and acts for
every env at once, in global order. In one process the policy is the driver itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import msgspec

from esper_engine.policy.actions import Action
from esper_engine.policy.driver import PolicyDriver
from esper_engine.policy.observation import EnvObservation

if TYPE_CHECKING:
    from esper_engine.distributed import Exchange


class PolicyCall(msgspec.Struct, frozen=True, array_like=True):
    """A worker's call on the leader's policy, for one of its envs."""

    kind: Literal["reward", "penalize", "truncate"]
    env: int  # global env id
    value: float = 0.0  # the reward or the (negative) penalty
    observation: EnvObservation | None = None  # truncate: what V bootstraps from


class ActRequest(msgspec.Struct, frozen=True, array_like=True):
    env: int
    observation: EnvObservation


class EpochReport(msgspec.Struct, frozen=True, array_like=True):
    calls: list[PolicyCall]
    requests: list[ActRequest]


class Actions(msgspec.Struct, frozen=True, array_like=True):
    actions: list[Action]


_REPORT = msgspec.msgpack.Decoder(EpochReport)
_ACTIONS = msgspec.msgpack.Decoder(Actions)
_ENCODER = msgspec.msgpack.Encoder()


class WorkerPolicy:
    """A worker's stand-in for the policy: its calls wait for the epoch's exchange."""

    agent = None  # no PPO update happens here

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self._calls: list[PolicyCall] = []

    def reward(self, env: int, value: float) -> None:
        self._calls.append(PolicyCall("reward", env, value))

    def penalize(self, env: int, penalty: float) -> None:
        self._calls.append(PolicyCall("penalize", env, penalty))

    def truncate(self, env: int, obs: EnvObservation) -> None:
        self._calls.append(PolicyCall("truncate", env, observation=obs))

    def end_episode(self, env: int) -> None:
        """The leader ends every env's episode itself (see ``LeaderPolicy.update``)."""

    def choose(self, envs: Sequence[int], observations: Sequence[EnvObservation]) -> list[Action]:
        requests = [ActRequest(env, obs) for env, obs in zip(envs, observations, strict=True)]
        report, self._calls = EpochReport(self._calls, requests), []
        self.exchange.gather(_ENCODER.encode(report))
        return _ACTIONS.decode(self.exchange.scatter(None)).actions

    def update(self) -> None:
        return None


class LeaderPolicy:
    """The leader's policy: its own envs call it directly; the workers' calls arrive with
    the epoch's exchange, and the leader acts for every env at once, in global order."""

    def __init__(self, driver: PolicyDriver, exchange: Exchange) -> None:
        self.driver = driver
        self.exchange = exchange
        self.agent = driver.agent

    def reward(self, env: int, value: float) -> None:
        self.driver.reward(env, value)

    def penalize(self, env: int, penalty: float) -> None:
        self.driver.penalize(env, penalty)

    def truncate(self, env: int, obs: EnvObservation) -> None:
        self.driver.truncate(env, obs)

    def end_episode(self, env: int) -> None:
        self.driver.end_episode(env)

    def choose(self, envs: Sequence[int], observations: Sequence[EnvObservation]) -> list[Action]:
        indices, chosen_for = list(envs), list(observations)
        counts = [len(indices)]
        for payload in self.exchange.gather(b"")[1:]:
            report = _REPORT.decode(payload)
            for call in report.calls:
                self._replay(call)
            indices += [r.env for r in report.requests]
            chosen_for += [r.observation for r in report.requests]
            counts.append(len(report.requests))
        actions = self.driver.choose(indices, chosen_for) if indices else []
        payloads, start = [], 0
        for count in counts:
            payloads.append(_ENCODER.encode(Actions(actions[start : start + count])))
            start += count
        self.exchange.scatter(payloads)
        return actions[: counts[0]]

    def _replay(self, call: PolicyCall) -> None:
        if call.kind == "reward":
            self.driver.reward(call.env, call.value)
        elif call.kind == "penalize":
            self.driver.penalize(call.env, call.value)
        else:
            assert call.observation is not None
            self.driver.truncate(call.env, call.observation)

    def update(self) -> dict[str, float] | None:
        """The round's PPO update from every env's transitions; the workers' envs' episodes
        end here (their last calls arrived with the last epoch's exchange)."""
        shard = self.exchange.shard
        for env in range(shard.n_envs):
            if env not in shard.envs:
                self.driver.end_episode(env)
        return self.driver.update()

    def state_dict(self) -> dict[str, object]:
        return self.driver.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.driver.load_state_dict(state)
