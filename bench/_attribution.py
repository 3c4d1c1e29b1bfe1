"""Attribution cost: one exact Shapley attribution over 3 active seeds against one plain
validation pass, both on the trainer's fixed validation set.

The model is a real synthetic-images host with a seed in BLENDING in each of its 3 slots, of the
blueprint the heuristic policy plants first (``conv_light``), moved away from the identity so no
coalition is trivially equal to another. Timing does not depend on the weights' quality.
"""

from __future__ import annotations

import torch
from _timing import Timed, stopwatch
from torch import Tensor

from esper_engine.host_presets import HostSpec
from esper_engine.model import MorphogeneticModel, create_model
from esper_engine.shapley import CounterfactualEngine
from esper_engine.tasks import Task
from esper_engine.training_step import process_val_batch

ValBatches = list[tuple[Tensor, Tensor]]


def blending_model(
    task: Task, blueprint: str = "conv_light", seed: int = 0, spec: HostSpec | None = None
) -> MorphogeneticModel:
    """A host (``spec``: of that size; the tiny one without) with one BLENDING seed per slot
    (alpha 2/3), reached through the real lifecycle."""
    torch.manual_seed(seed)
    model = create_model(task, "cpu", spec=spec)
    for slot_id in model.slot_ids:
        model.germinate(slot_id, blueprint, blend_epochs=3)
    for _ in range(3):  # GERMINATED -> TRAINING, then the minimum training epochs
        for slot_id in model.slot_ids:
            model.slots[slot_id].record_seed_grad_health(True)
        model.end_epoch()
    for slot_id in model.slot_ids:
        model.advance(slot_id)  # TRAINING -> BLENDING
    model.end_epoch()  # alpha 1/3 -> 2/3
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for slot_id in model.slot_ids:
            for p in model.seed_parameters(slot_id):
                p.add_(0.5 * torch.randn(p.shape, generator=generator))
    active = model.active_slots()
    if len(active) != 3:
        raise RuntimeError(f"expected 3 active seeds for the attribution bench, got {active}")
    return model


def plain_pass_seconds(model: MorphogeneticModel, task: Task, val: ValBatches) -> Timed:
    """One validation pass as the trainer runs it: every batch, then one host sync."""
    with stopwatch() as watch:
        sums = []
        for x, y in val:
            result = process_val_batch(model, x, y, task)
            sums += [result.loss_sum, result.correct]
        torch.stack(sums).tolist()
    return watch.result


class AttributionTimer:
    """Times ``CounterfactualEngine.attribute`` exactly as the trainer calls it (a fresh engine
    per attribution) and keeps the cost ratio the engine reports about itself."""

    def __init__(
        self, model: MorphogeneticModel, task: Task, val: ValBatches, batches: int = 0
    ) -> None:
        """``batches``: attribute on the first that many of ``val`` (``attribution_batches``;
        0: all of it); the plain pass is always the whole of ``val``, as in the trainer."""
        self.model, self.task, self.val = model, task, val
        self.attributed = val[:batches] if batches else val
        self.reported: list[float] = []
        self.shapley: dict[str, float] = {}  # the last attribution's values
        self.last_plain_s: float | None = None  # the trainer hands over its epoch's val pass

    def plain_pass(self) -> Timed:
        """A plain validation pass, remembered as the trainer remembers its epoch's pass."""
        timed = plain_pass_seconds(self.model, self.task, self.val)
        self.last_plain_s = timed.wall
        return timed

    def __call__(self) -> Timed:
        with stopwatch() as watch:
            engine = CounterfactualEngine(self.model, self.task)
            result = engine.attribute(self.attributed, plain_pass_s=self.last_plain_s)
        if not result.exact or result.coalitions != 8:
            raise RuntimeError(
                f"expected an exact attribution over 8 coalitions, got exact={result.exact}, "
                f"coalitions={result.coalitions}"
            )
        if result.cost_ratio is not None:
            self.reported.append(result.cost_ratio)
        self.shapley = dict(result.shapley)
        return watch.result
