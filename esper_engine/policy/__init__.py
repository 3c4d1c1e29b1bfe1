"""The lifecycle controller (Tamiyo): action space, observations, heuristic and PPO (Simic).

Pure: imports torch only, never the model or the trainer, so the trainer plugs it in.
"""

from __future__ import annotations

from esper_engine.policy.actions import (
    N_OPS,
    OPS,
    Action,
    ActionMasks,
    Op,
    action_masks,
    decode_actions,
    op_index,
    stack_masks,
    validate,
)
from esper_engine.policy.heuristic import (
    CNN_PREFERENCE,
    TRANSFORMER_PREFERENCE,
    HeuristicPolicy,
    plateaued,
)
from esper_engine.policy.observation import (
    STAGES,
    EnvObservation,
    SlotObservation,
    obs_dim,
    stack_observations,
)
from esper_engine.policy.ppo import (
    ActOutput,
    PPOAgent,
    PPOConfig,
    PPOLearner,
    explained_variance,
)
from esper_engine.policy.rewards import capacity_rent, compute_reward
from esper_engine.policy.rollout import RolloutBuffer, compute_gae

__all__ = [
    "CNN_PREFERENCE",
    "N_OPS",
    "OPS",
    "STAGES",
    "TRANSFORMER_PREFERENCE",
    "Action",
    "ActionMasks",
    "ActOutput",
    "EnvObservation",
    "HeuristicPolicy",
    "Op",
    "PPOAgent",
    "PPOConfig",
    "PPOLearner",
    "RolloutBuffer",
    "SlotObservation",
    "action_masks",
    "capacity_rent",
    "compute_gae",
    "compute_reward",
    "decode_actions",
    "explained_variance",
    "obs_dim",
    "op_index",
    "plateaued",
    "stack_masks",
    "stack_observations",
    "validate",
]
