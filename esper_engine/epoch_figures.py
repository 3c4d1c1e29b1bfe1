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
    """One env's per-epoch sums: a float64 device vector per prefix, one named column each.

    A step's figures are stacked and added in one go (two kernels, not one per figure: at a
    tiny host the per-figure adds were a measurable share of a step's Python, issue 22)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._names: dict[str, tuple[str, ...]] = {}  # prefix -> its columns' names
        self._vectors: dict[str, torch.Tensor] = {}  # prefix -> float64 sums, one per name
        self.steps = 0

    @property
    def names(self) -> tuple[str, ...]:
        """Every sum's name (``<prefix><field>``), in the order of ``vector()``."""
        return tuple(f"{prefix}{name}" for prefix, names in self._names.items() for name in names)

    def vector(self) -> torch.Tensor:
        """Every sum in one float64 device vector, in the order of ``names``."""
        return torch.cat(list(self._vectors.values()))

    def _add_row(self, prefix: str, names: tuple[str, ...], row: torch.Tensor) -> None:
        """Add a step's stacked figures (``names``, the same every step of a prefix) to the
        prefix's columns."""
        vector = self._vectors.get(prefix)
        if vector is None:
            vector = torch.zeros(len(names), device=self.device, dtype=torch.float64)
            self._names[prefix], self._vectors[prefix] = names, vector
        elif names != self._names[prefix]:
            raise ValueError(f"{prefix} figures {names} after {self._names[prefix]}")
        vector += row

    def add_train(self, result: TrainStepResult) -> None:
        pre, post = result.grad_norm_pre, result.grad_norm_post
        finite = torch.isfinite(pre)
        row = torch.stack([pre, post, finite, *(result[i] for i in _OTHER_FIELDS)])
        # A step the GradScaler skipped (inf/NaN norm) must not turn the epoch's mean into inf:
        # its norms count 0 (post is finite exactly when pre is, so the two columns go alike).
        torch.nan_to_num_(row[:2], nan=0.0, posinf=0.0, neginf=0.0)
        self._add_row("train_", TRAIN_COLUMNS, row)
        self.steps += 1

    def add_val(self, result: ValStepResult) -> None:
        self._add_row("val_", VAL_COLUMNS, torch.stack(list(result)))


# The columns of a training step's row (TensorTotals.add_train): the two norms, whose non-finite
# values count 0, and the count of the steps whose norm was finite, then every other field of
# the step's result; a validation batch's row is its result's fields.
_NORMS = ("grad_norm_pre", "grad_norm_post")
_OTHER_FIELDS = tuple(i for i, f in enumerate(TrainStepResult._fields) if f not in _NORMS)
TRAIN_COLUMNS = (*_NORMS, "finite_steps", *(TrainStepResult._fields[i] for i in _OTHER_FIELDS))
VAL_COLUMNS = ValStepResult._fields


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
    names = totals[0].names
    if any(t.names != names for t in totals):
        raise ValueError(f"envs summed different figures: {[t.names for t in totals]}")
    rows = torch.stack([t.vector() for t in totals]).tolist()
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
