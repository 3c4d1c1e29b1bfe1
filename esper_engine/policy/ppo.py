"""PPO for the lifecycle controller, after CleanRL's ``ppo.py`` and its implementation details.

What follows the reference: orthogonal init (sqrt 2 for the trunk, 0.01 for the policy heads,
1 for the value head), Adam with eps 1e-5, GAE, the clipped surrogate, an optional clipped value
loss, an entropy bonus, a global gradient clip, shuffled minibatches over several epochs,
optional early stop on approx-KL (k3 estimator), explained variance. Rollouts here are small (an
episode is 11 steps), so advantages are normalised over the whole rollout and a minibatch holds
at least ``minibatch_size`` transitions; rewards are scaled to unit-size returns.

Kickstarting (Schmitt et al. 2018): ``behaviour_clone`` fits actor and critic to recorded
heuristic episodes; afterwards ``update`` adds an imitation term (the cross-entropy of the
heuristic's action on the agent's own observations, recorded as each transition's ``teacher``)
whose weight the driver decays to 0, and an entropy floor keeps the policy from collapsing.

What is specific here: a *factored* action (op, slot, blueprint) with one masked categorical per
head. A head only counts when the op uses it (the slot head is ignored for WAIT, the blueprint
head is used only for GERMINATE), so the log-probability and the entropy are those of the joint
distribution over *distinct* actions, not of the three independent draws. The slot head has one
row of logits per op, because "prune block2" and "germinate block2" are different decisions.

One RL step is one host epoch of one env; the tiny network lives on the CPU.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

# Every hyperparameter, with its docstring and bounds, lives in the run's config (torch-free).
from esper_engine.config import PPOConfig
from esper_engine.policy.actions import N_OPS, OPS, ActionMasks, Op, op_index
from esper_engine.policy.rollout import RolloutBatch, RolloutBuffer

MASKED_LOGIT = -1e9  # finite, so fully masked rows stay NaN-free; exp() underflows to exactly 0


class ActOutput(NamedTuple):
    actions: torch.Tensor  # [B, 3] long: op, slot, blueprint
    log_prob: torch.Tensor  # [B] joint log-probability of the action (heads that matter only)
    entropy: torch.Tensor  # [B] entropy of the joint action distribution
    value: torch.Tensor  # [B] state-value estimate


class _Heads(NamedTuple):
    op: torch.Tensor  # [B, N_OPS] masked log-probabilities
    slot: torch.Tensor  # [B, N_OPS, n_slots] per-op masked log-probabilities
    blueprint: torch.Tensor  # [B, n_blueprints]
    value: torch.Tensor  # [B]


def _layer(n_in: int, n_out: int, std: float, generator: torch.Generator) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, std, generator=generator)
    nn.init.zeros_(layer.bias)
    return layer


def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(torch.where(mask, logits, MASKED_LOGIT), dim=-1)


def _entropy(log_p: torch.Tensor) -> torch.Tensor:
    """Entropy over the last axis; masked entries (p == 0) contribute exactly 0."""
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, 0.0).sum(-1)


_USES_SLOT = torch.tensor([op is not Op.WAIT for op in OPS])
_GERMINATE = op_index(Op.GERMINATE)


class PPOAgent(nn.Module):
    """Actor-critic with a shared tanh trunk, three masked action heads and a value head."""

    def __init__(
        self,
        obs_dim: int,
        n_ops: int,
        n_slots: int,
        n_blueprints: int,
        config: PPOConfig | None = None,
    ) -> None:
        super().__init__()
        if n_ops != N_OPS:
            raise ValueError(f"n_ops must be {N_OPS} (the ops of Op), got {n_ops}")
        self.config = config or PPOConfig()
        self.n_slots, self.n_blueprints = n_slots, n_blueprints
        seed = 0 if self.config.seed is None else self.config.seed  # None: the run's seed, or 0
        # nn.Linear's own init draws from the global stream before orthogonal_ overwrites it:
        # fork it, so building an agent never moves a generator the envs draw from.
        with torch.random.fork_rng(devices=[]):
            self._build(obs_dim, n_slots, n_blueprints, torch.Generator().manual_seed(seed))
        self.generator = torch.Generator().manual_seed(seed + 1)

    def _build(self, obs_dim: int, n_slots: int, n_blueprints: int, init: torch.Generator) -> None:
        hidden = self.config.hidden
        self.trunk = nn.Sequential(
            _layer(obs_dim, hidden, math.sqrt(2), init),
            nn.Tanh(),
            _layer(hidden, hidden, math.sqrt(2), init),
            nn.Tanh(),
        )
        # Small policy-head init: near-uniform initial policy over the legal actions.
        self.op_head = _layer(hidden, N_OPS, 0.01, init)
        self.slot_head = _layer(hidden, N_OPS * n_slots, 0.01, init)
        self.blueprint_head = _layer(hidden, n_blueprints, 0.01, init)
        self.value_head = _layer(hidden, 1, 1.0, init)

    def heads(self, obs: torch.Tensor, masks: ActionMasks) -> _Heads:
        if not bool(masks.op.any(dim=-1).all()):
            raise ValueError("every env needs at least one legal op (WAIT is always legal)")
        h = self.trunk(obs)
        slot_logits = self.slot_head(h).view(-1, N_OPS, self.n_slots)
        return _Heads(
            op=_masked_log_softmax(self.op_head(h), masks.op),
            slot=_masked_log_softmax(slot_logits, masks.slot),
            blueprint=_masked_log_softmax(self.blueprint_head(h), masks.blueprint),
            value=self.value_head(h).squeeze(-1),
        )

    @staticmethod
    def log_prob(heads: _Heads, actions: torch.Tensor) -> torch.Tensor:
        op, slot, blueprint = actions.unbind(-1)
        rows = torch.arange(len(actions))
        log_p = heads.op[rows, op]
        log_p = log_p + torch.where(_USES_SLOT[op], heads.slot[rows, op, slot], 0.0)
        return log_p + torch.where(op == _GERMINATE, heads.blueprint[rows, blueprint], 0.0)

    @staticmethod
    def joint_entropy(heads: _Heads) -> torch.Tensor:
        """H(op) + sum over slot-using ops of p(op) H(slot | op) + p(GERMINATE) H(blueprint)."""
        p_op = heads.op.exp()
        slot_term = (p_op * _USES_SLOT * _entropy(heads.slot)).sum(-1)
        return _entropy(heads.op) + slot_term + p_op[:, _GERMINATE] * _entropy(heads.blueprint)

    @torch.no_grad()
    def act(
        self,
        obs: torch.Tensor,
        masks: ActionMasks,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> ActOutput:
        """Choose one action per env (``obs [B, obs_dim]``, batched masks); no gradients.

        Sampling uses ``generator`` (default: the agent's own, seeded by ``config.seed``);
        ``deterministic`` takes the most likely legal op, then its most likely slot and blueprint.
        """
        heads = self.heads(obs, masks)
        generator = self.generator if generator is None else generator
        op = _choose(heads.op, deterministic, generator)
        slot = _choose(heads.slot[torch.arange(len(op)), op], deterministic, generator)
        blueprint = _choose(heads.blueprint, deterministic, generator)
        actions = torch.stack([op, slot, blueprint], dim=1)
        return ActOutput(
            actions, self.log_prob(heads, actions), self.joint_entropy(heads), heads.value
        )

    def evaluate(
        self, obs: torch.Tensor, masks: ActionMasks, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probability, entropy and value of given actions, with gradients (for the update)."""
        heads = self.heads(obs, masks)
        return self.log_prob(heads, actions), self.joint_entropy(heads), heads.value

    @torch.no_grad()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """State value ``[B]``, e.g. to bootstrap a truncated episode."""
        return self.value_head(self.trunk(obs)).squeeze(-1)

    def loss(
        self, batch: RolloutBatch, imitation_weight: float = 0.0
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """PPO loss on one minibatch (advantages already normalised over the rollout), plus the
        imitation term, and its diagnostics (the ratio is 1 before any step)."""
        cfg = self.config
        heads = self.heads(batch.obs, batch.masks)
        new_log_prob = self.log_prob(heads, batch.actions)
        entropy, new_value = self.joint_entropy(heads), heads.value
        log_ratio = new_log_prob - batch.log_probs
        ratio = log_ratio.exp()
        advantages = batch.advantages
        clipped_ratio = ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)
        policy_loss = torch.max(-advantages * ratio, -advantages * clipped_ratio).mean()
        value_loss = _value_loss(new_value, batch.values, batch.returns, cfg)
        entropy_mean = entropy.mean()
        floor_gap = torch.relu(cfg.entropy_floor - entropy_mean)
        loss = (
            policy_loss
            - cfg.ent_coef * entropy_mean
            + cfg.entropy_floor_coef * floor_gap
            + cfg.vf_coef * value_loss
        )
        imitation = torch.zeros(())
        if imitation_weight > 0:
            if batch.teacher is None:
                raise ValueError("an imitation weight needs the heuristic's action per transition")
            imitation = -self.log_prob(heads, batch.teacher).mean()
            loss = loss + imitation_weight * imitation
        with torch.no_grad():
            stats = {
                "policy_loss": policy_loss.item(),
                "value_loss": value_loss.item(),
                "entropy": entropy_mean.item(),
                "approx_kl": ((ratio - 1) - log_ratio).mean().item(),
                "clip_fraction": ((ratio - 1).abs() > cfg.clip_coef).float().mean().item(),
                "max_ratio_deviation": (ratio - 1).abs().max().item(),
                "imitation_loss": imitation.item(),
            }
        return loss, stats

    @torch.no_grad()
    def agreement(self, batch: RolloutBatch) -> dict[str, float]:
        """How often the taken op, and the agent's most likely op, are the heuristic's."""
        if batch.teacher is None:
            return {}
        teacher_op = batch.teacher[:, 0]
        greedy = self.heads(batch.obs, batch.masks).op.argmax(dim=-1)
        return {
            "heuristic_agreement": (batch.actions[:, 0] == teacher_op).float().mean().item(),
            "greedy_agreement": (greedy == teacher_op).float().mean().item(),
        }


class PPOLearner:
    """The agent and the optimizer that trains it, side by side (the agent only acts).

    ``update`` is one PPO round from a finished rollout; ``behaviour_clone`` is kickstarting's
    fit to the heuristic's episodes. Its state (the checkpoint's and the policy file's part) is
    the agent's weights, the optimizer's moments and the sampling generator."""

    def __init__(self, agent: PPOAgent) -> None:
        self.agent = agent
        self.config = agent.config
        self.optimizer = torch.optim.Adam(agent.parameters(), lr=self.config.lr, eps=1e-5)

    def update(self, buffer: RolloutBuffer, imitation_weight: float = 0.0) -> dict[str, float]:
        """One PPO update from a finished rollout, which it consumes (the buffer is cleared).

        Returns minibatch means keyed like ``contracts.PolicyUpdate``'s fields (without the
        update counter, which the trainer owns), plus diagnostics the contract does not carry.
        """
        cfg = self.config
        batch = buffer.batch(cfg.gamma, cfg.gae_lambda, cfg.reward_scale)
        episode_returns = buffer.episode_returns()
        buffer.clear()
        size = len(batch.actions)
        if cfg.norm_adv and size > 1:
            adv = batch.advantages
            batch.advantages = (adv - adv.mean()) / (adv.std() + 1e-8)
        pre = self.agent.agreement(batch)
        chunks = max(1, size // cfg.minibatch_size)
        history: list[dict[str, float]] = []
        for _ in range(cfg.update_epochs):
            order = torch.randperm(size, generator=self.agent.generator)
            for index in torch.tensor_split(order, chunks):
                history.append(self._step(batch.select(index), imitation_weight))
            if cfg.target_kl is not None and history[-1]["approx_kl"] > cfg.target_kl:
                break
        keys = (
            "policy_loss",
            "value_loss",
            "entropy",
            "approx_kl",
            "clip_fraction",
            "grad_norm",
            "imitation_loss",
        )
        stats = {key: sum(h[key] for h in history) / len(history) for key in keys}
        stats["explained_variance"] = explained_variance(batch.values, batch.returns)
        stats["mean_episode_reward"] = sum(episode_returns) / len(episode_returns)
        stats["imitation_weight"] = imitation_weight
        stats["transitions"] = size
        stats["minibatch_transitions"] = size / chunks
        return {**stats, **pre, **op_shares(batch.actions)}

    def _step(self, batch: RolloutBatch, imitation_weight: float) -> dict[str, float]:
        loss, stats = self.agent.loss(batch, imitation_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.agent.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return {**stats, "grad_norm": grad_norm.item()}  # norm before clipping

    def behaviour_clone(self, buffer: RolloutBuffer) -> dict[str, float]:
        """Fit the actor to the recorded actions and the critic to their returns (kickstarting).

        ``buffer`` holds the heuristic's episodes (the action taken is its action); it is
        consumed. Full-batch Adam for ``config.bc_steps`` steps, on an optimizer of its own, so
        PPO starts with fresh moments; the entropy floor applies. Returns ``PolicyUpdate``-keyed
        figures of the fit.
        """
        cfg = self.config
        batch = buffer.batch(cfg.gamma, 1.0, cfg.reward_scale)  # lambda 1: Monte Carlo returns
        episode_returns = buffer.episode_returns()
        buffer.clear()
        optimizer = torch.optim.Adam(self.agent.parameters(), lr=cfg.bc_lr, eps=1e-5)
        grad_norm = torch.zeros(())
        for _ in range(cfg.bc_steps):
            heads = self.agent.heads(batch.obs, batch.masks)
            actor = -self.agent.log_prob(heads, batch.actions).mean()
            critic = 0.5 * ((heads.value - batch.returns) ** 2).mean()
            # The floor holds here too: a clone with zero entropy leaves PPO nothing to explore
            # (every ratio stays 1) and no entropy gradient to climb back with.
            floor_gap = torch.relu(cfg.entropy_floor - self.agent.joint_entropy(heads).mean())
            optimizer.zero_grad(set_to_none=True)
            (actor + cfg.vf_coef * critic + cfg.entropy_floor_coef * floor_gap).backward()
            grad_norm = nn.utils.clip_grad_norm_(self.agent.parameters(), 10.0 * cfg.max_grad_norm)
            optimizer.step()
        with torch.no_grad():
            heads = self.agent.heads(batch.obs, batch.masks)
            actor = -self.agent.log_prob(heads, batch.actions).mean()
            greedy = heads.op.argmax(dim=-1)
        return {
            "policy_loss": actor.item(),
            "value_loss": (0.5 * ((heads.value - batch.returns) ** 2).mean()).item(),
            "entropy": self.agent.joint_entropy(heads).mean().item(),
            "approx_kl": 0.0,
            "clip_fraction": 0.0,
            "grad_norm": grad_norm.item(),
            "explained_variance": explained_variance(heads.value, batch.returns),
            "mean_episode_reward": sum(episode_returns) / max(len(episode_returns), 1),
            "imitation_loss": actor.item(),
            "imitation_weight": 0.0,
            "transitions": len(batch.actions),
            "heuristic_agreement": 1.0,
            "greedy_agreement": (greedy == batch.actions[:, 0]).float().mean().item(),
            **op_shares(batch.actions),
        }

    def state_dict(self) -> dict[str, object]:
        return {
            "agent": self.agent.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.agent.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.agent.load_state_dict(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.agent.generator.set_state(state["generator"])


def op_shares(actions: torch.Tensor) -> dict[str, float]:
    """The share of each op among the rollout's actions (the round's op histogram)."""
    counts = torch.bincount(actions[:, 0], minlength=N_OPS).float() / max(len(actions), 1)
    return {f"share_{op.name}": counts[i].item() for i, op in enumerate(OPS)}


def _choose(log_p: torch.Tensor, deterministic: bool, generator: torch.Generator) -> torch.Tensor:
    if deterministic:
        return log_p.argmax(dim=-1)
    # Masked entries have probability exactly 0, so multinomial can never pick them.
    return torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(-1)


def _value_loss(
    new_value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor, cfg: PPOConfig
) -> torch.Tensor:
    unclipped = (new_value - returns) ** 2
    if not cfg.clip_vloss:
        return 0.5 * unclipped.mean()
    clipped_value = old_value + (new_value - old_value).clamp(-cfg.clip_coef, cfg.clip_coef)
    return 0.5 * torch.max(unclipped, (clipped_value - returns) ** 2).mean()


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); NaN when the targets do not vary."""
    var_target = target.var(unbiased=False)
    if len(target) < 2 or var_target.item() == 0:
        return math.nan
    return (1 - (target - predicted).var(unbiased=False) / var_target).item()
