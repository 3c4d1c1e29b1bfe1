"""The factored action space (op x slot x blueprint) and the masks that make illegal actions
unsampleable: illegal actions are masked, never silently rewritten into legal ones.

``Op`` is the contracts' vocabulary (telemetry carries it as ``EpochSummary.last_op``); a
tensor holds an op as its position in ``OPS`` (``op_index``), the order of the policy's op head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from esper_engine.contracts import Op, SeedStage
from esper_engine.policy.observation import EnvObservation, SlotObservation

OPS: tuple[Op, ...] = tuple(Op)  # position i of the op head (and of a mask's op axis) is OPS[i]
N_OPS = len(OPS)
_INDEX = {op: i for i, op in enumerate(OPS)}


def op_index(op: Op) -> int:
    """The op's position in ``OPS``: how tensors (actions, masks, logits) hold it."""
    return _INDEX[op]


def uses_slot(op: Op) -> bool:
    """Every op but WAIT acts on a slot; WAIT's slot index is meaningless."""
    return op is not Op.WAIT


def uses_blueprint(op: Op) -> bool:
    """Only GERMINATE chooses a blueprint."""
    return op is Op.GERMINATE


@dataclass(frozen=True)
class Action:
    """One decision; indices the op does not use are carried along but ignored."""

    op: Op
    slot_index: int = 0
    blueprint_index: int = 0

    def describe(self, slot_ids: Sequence[str], blueprints: Sequence[str]) -> str:
        """Operator-readable form, e.g. ``"GERMINATE block1 conv_light"`` or ``"WAIT"``."""
        parts = [self.op.name]
        if uses_slot(self.op):
            parts.append(slot_ids[self.slot_index])
        if uses_blueprint(self.op):
            parts.append(blueprints[self.blueprint_index])
        return " ".join(parts)

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor([op_index(self.op), self.slot_index, self.blueprint_index])


def decode_actions(actions: torch.Tensor) -> list[Action]:
    """Turn a ``[B, 3]`` (op index, slot, blueprint) tensor from ``PPOAgent.act`` into Actions."""
    return [Action(OPS[op], slot, bp) for op, slot, bp in actions.tolist()]


class ActionMasks(NamedTuple):
    """True = legal. Shapes for one env: op ``[N_OPS]``, slot ``[N_OPS, n_slots]`` (the legal
    slots *for each op*), blueprint ``[n_blueprints]``; batched masks add a leading env axis."""

    op: torch.Tensor
    slot: torch.Tensor
    blueprint: torch.Tensor


def legal_in_slot(op: Op, slot: SlotObservation) -> bool:
    """The per-slot legality rule shared by the masks, ``validate`` and the heuristic."""
    if op is Op.GERMINATE:
        return slot.stage is SeedStage.DORMANT
    if op is Op.ADVANCE:
        return slot.is_live and slot.can_advance
    if op is Op.PRUNE:
        return slot.is_live and slot.can_prune
    if op is Op.FOSSILIZE:
        return slot.stage is SeedStage.HOLDING and slot.can_fossilize
    return True  # WAIT: the slot is ignored, so any index is acceptable


def action_masks(obs: EnvObservation, n_blueprints: int) -> ActionMasks:
    """Legal ops, slots per op and blueprints for one env (WAIT is always legal)."""
    slot = torch.tensor(
        [[legal_in_slot(op, s) for s in obs.slots] for op in OPS], dtype=torch.bool
    ).reshape(N_OPS, len(obs.slots))
    op = slot.any(dim=1)
    op[op_index(Op.WAIT)] = True
    # Every blueprint fits every dormant slot; the mask exists so a caller can restrict them.
    blueprint = torch.ones(n_blueprints, dtype=torch.bool)
    return ActionMasks(op, slot, blueprint)


def stack_masks(masks: Sequence[ActionMasks]) -> ActionMasks:
    """Batch per-env masks along a new leading env axis."""
    return ActionMasks(*(torch.stack(parts) for parts in zip(*masks, strict=True)))


def validate(action: Action, obs: EnvObservation, n_blueprints: int) -> None:
    """Raise ValueError naming the action and the reason when it is illegal in ``obs``."""
    if uses_slot(action.op) and not 0 <= action.slot_index < obs.n_slots:
        raise ValueError(f"{action}: slot index out of range (n_slots={obs.n_slots})")
    if uses_blueprint(action.op) and not 0 <= action.blueprint_index < n_blueprints:
        raise ValueError(f"{action}: blueprint index out of range (n_blueprints={n_blueprints})")
    if uses_slot(action.op) and not legal_in_slot(action.op, obs.slots[action.slot_index]):
        slot = obs.slots[action.slot_index]
        raise ValueError(
            f"{action}: illegal in slot {action.slot_index} (stage {slot.stage}, "
            f"can_advance={slot.can_advance}, can_prune={slot.can_prune}, "
            f"can_fossilize={slot.can_fossilize})"
        )
