"""Headroom for a controller: fixed growth plans against the heuristic on variants of the task.

A plan is data: which operator (a blueprint name), in which slot, when (a fraction of the
budget, so one plan fits every budget) and how fast it blends. ``ScriptedPolicy`` carries it out
through the same legality rule the heuristic and PPO's masks use (``legal_in_slot``): a planting
whose slot is not DORMANT waits, for at most ``LATE_WINDOW`` epochs, and an illegal action is
never sent. New operators are new plan rows: a plan naming a blueprint the host does not have
is skipped and reported as such.

A variant changes one thing of the embedded image task (train-set size, noise, host width or
budget). If some plan beats the heuristic by 2 points of compute-priced return on a variant,
a learned controller has room there; if none does, it has little to find.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from esper_engine.contracts import Op
from esper_engine.policy.actions import Action, legal_in_slot
from esper_engine.policy.observation import EnvObservation
from esper_engine.policy.rewards import compute_price
from esper_engine.tasks import Task
from esper_engine.tasks.synthetic_images import channel_stats

LATE_WINDOW = 3  # epochs a planting may wait for its slot (a rollback, an earlier planting)
BEATS_BY = 2.0  # points of compute-priced return that count as room for a controller


@dataclass(frozen=True)
class Planting:
    slot: str  # slot id, e.g. "block3"
    blueprint: str  # the operator: any blueprint of the host's kind ("widen", "stack" later)
    at: float = 0.0  # when, as a fraction of the budget: epoch floor(at * epochs)

    def epoch(self, epochs: int) -> int:
        return math.floor(self.at * epochs)


@dataclass(frozen=True)
class Plan:
    name: str
    plantings: tuple[Planting, ...]
    blend_epochs: int = 3  # the lifecycle's blend ramp for this plan's seeds (epochs)

    def blueprints(self) -> set[str]:
        return {p.blueprint for p in self.plantings}

    def overrides(self) -> dict:
        return {"lifecycle": {"blend_epochs": self.blend_epochs}}


PLANS: tuple[Plan, ...] = (
    Plan("block3 light, now, blend 1", (Planting("block3", "conv_light"),), blend_epochs=1),
    Plan("widen block3, now, blend 2", (Planting("block3", "widen"),), blend_epochs=2),
    Plan("stack block1, now, blend 2", (Planting("block1", "stack"),), blend_epochs=2),
    Plan("block3 light, at 1/3, blend 2", (Planting("block3", "conv_light", 1 / 3),), 2),
    Plan("block2 light, now, blend 2", (Planting("block2", "conv_light"),), blend_epochs=2),
    Plan("block1 light, now, blend 2", (Planting("block1", "conv_light"),), blend_epochs=2),
    Plan(
        "widen block2+3, now, blend 2",
        (Planting("block3", "widen"), Planting("block2", "widen")),
        blend_epochs=2,
    ),
    Plan(
        "stack block2+3, now, blend 2",
        (Planting("block3", "stack"), Planting("block2", "stack")),
        blend_epochs=2,
    ),
)


class ScriptedPolicy:
    """Carries out one plan: plant when due, advance as soon as the gate opens, fossilize when
    allowed; otherwise WAIT. Same ``act(obs) -> Action`` as the heuristic."""

    def __init__(self, plan: Plan, slot_ids: Sequence[str], blueprints: Sequence[str]) -> None:
        missing = plan.blueprints() - set(blueprints)
        if missing:
            raise ValueError(f"plan {plan.name!r}: no blueprint {sorted(missing)} on this host")
        unknown = {p.slot for p in plan.plantings} - set(slot_ids)
        if unknown:
            raise ValueError(f"plan {plan.name!r}: no slot {sorted(unknown)} on this host")
        self.plan = plan
        self._plantings = [
            (p, list(slot_ids).index(p.slot), list(blueprints).index(p.blueprint))
            for p in plan.plantings
        ]

    def act(self, obs: EnvObservation) -> Action:
        for planting, slot, blueprint in self._plantings:
            due = planting.epoch(obs.max_epochs)
            if due <= obs.epoch < due + LATE_WINDOW and legal_in_slot(
                Op.GERMINATE, obs.slots[slot]
            ):
                return Action(Op.GERMINATE, slot, blueprint)
        for op in (Op.ADVANCE, Op.FOSSILIZE):
            for index, slot in enumerate(obs.slots):
                if legal_in_slot(op, slot):
                    return Action(op, index)
        return Action(Op.WAIT)


@dataclass(frozen=True)
class Variant:
    """The embedded image task with one thing changed (None / 0: as the study's base)."""

    name: str
    train_size: int | None = None  # training images kept (of 8,000)
    noise: float = 0.0  # extra Gaussian pixel noise, std as a fraction of the 0-255 range
    widths: tuple[int, ...] | None = None  # the host's block widths
    epochs: int | None = None  # the budget

    def task(self, task: Task, seed: int) -> Task:
        if self.train_size is not None:
            task = dataclasses.replace(
                task,
                train_x=task.train_x[: self.train_size],
                train_y=task.train_y[: self.train_size],
            )
        if self.noise > 0:
            generator = torch.Generator().manual_seed(10_000 + seed)
            train_x = _noisy(task.train_x, self.noise, generator)
            val_x = _noisy(task.val_x, self.noise, generator)
            mean, std = channel_stats(train_x)
            task = dataclasses.replace(
                task, train_x=train_x, val_x=val_x, pixel_mean=mean, pixel_std=std
            )
        return task


def _noisy(images: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=generator) * (255.0 * std)
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


VARIANTS: tuple[Variant, ...] = (
    Variant("2,000 images", train_size=2000),
    Variant("noise +0.15", noise=0.15),
    Variant("host 4-8-16", widths=(4, 8, 16)),
    Variant("6 epochs", epochs=6),
)


def priced_return(acc: float, flops: float, static_flops: float, price: float) -> float:
    """100 x accuracy - price x log2(FLOPs / the static host's FLOPs): accuracy points net of
    the compute the episode spent beyond the static host's (rent left out)."""
    return 100.0 * acc - compute_price(flops, static_flops, price)
