"""An epoch's figures: named sums kept on the device, read back once per epoch.

Every field of a step's result (``training_step.TrainStepResult`` / ``ValStepResult``) is summed
per env as a named device scalar (``train_<field>``, ``val_<field>``), so the batch loop never
synchronises. ``synchronise`` stacks every env's sums once, copies them to the host in one go
and reads them back by name; ``training_step.EPOCH_FIGURES`` says how each of EpochSummary's
figures is made from them. A figure computed on the device is added there, beside the result
that carries it, and nowhere here.
"""

from __future__ import annotations

import torch

from esper_engine.training_step import EPOCH_FIGURES, TrainStepResult, ValStepResult

STEPS = "steps"  # a divisor: the epoch's training steps (counted on the host)


class TensorTotals:
    """One env's per-epoch sums: name -> a float64 device scalar."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, prefix: str, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            key = f"{prefix}{name}"
            if key not in self.sums:
                self.sums[key] = torch.zeros((), device=self.device, dtype=torch.float64)
            self.sums[key] += value

    def add_train(self, result: TrainStepResult) -> None:
        values = result._asdict()
        # A step the GradScaler skipped (inf/NaN norm) must not turn the epoch's mean into inf.
        finite = torch.isfinite(result.grad_norm_pre)
        values["grad_norm_pre"] = torch.where(finite, result.grad_norm_pre, 0.0)
        values["grad_norm_post"] = torch.where(finite, result.grad_norm_post, 0.0)
        values["finite_steps"] = finite
        self.add("train_", values)
        self.steps += 1

    def add_val(self, result: ValStepResult) -> None:
        self.add("val_", result._asdict())


def _figure(name: str) -> property:
    return property(lambda self: self.values[name], doc=f"EpochSummary.{name}")


class EpochFigures:
    """One env's epoch after the single host sync: EpochSummary's figures as plain numbers
    (``values``, keyed by the summary's field names) and the samples it trained on."""

    def __init__(self, values: dict[str, float], samples: int) -> None:
        self.values = values
        self.samples = samples

    # what the loop itself reads (the governor, the reward, the observation)
    train_loss = _figure("train_loss")
    train_accuracy = _figure("train_accuracy")
    val_loss = _figure("val_loss")
    val_accuracy = _figure("val_accuracy")


def synchronise(totals: list[TensorTotals], batch_size: int) -> list[EpochFigures]:
    """The epoch's one device-to-host copy: every env's sums at once, read back by name."""
    names = list(totals[0].sums)
    rows = torch.stack([torch.stack([t.sums[name] for name in names]) for t in totals]).tolist()
    figures = []
    for t, row in zip(totals, rows, strict=True):
        sums = {**dict(zip(names, row, strict=True)), STEPS: float(t.steps)}
        values: dict[str, float] = {}
        for figure, (total, divisor) in EPOCH_FIGURES.items():
            if divisor is None:  # a count
                values[figure] = round(sums[total])
            else:
                values[figure] = sums[total] / max(sums[divisor], 1)
        figures.append(EpochFigures(values, t.steps * batch_size))
    return figures


def batch_stats_tensor(result: TrainStepResult) -> torch.Tensor:
    """BatchStats' figures in one tensor, stacked on the env's stream where they were made."""
    return torch.stack(
        [
            result.loss_sum / result.count,
            result.grad_norm_pre,
            result.grad_norm_post,
            result.clipped,
            result.skipped,
        ]
    )
