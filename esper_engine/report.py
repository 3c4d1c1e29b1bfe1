"""The report split (issue 24): held-out samples that only the report reads.

Each task keeps a split apart from training and validation (``Task.report_x``; see
``esper_engine/tasks``). The governor, Shapley values, the heuristic, the reward and PPO read
validation; the report's accuracy and loss (perplexity for a language model) go to
``EpochSummary`` only, on the epochs ``TrainingConfig.report_due`` names (the episode's last,
and every ``report_every``). Its FLOPs are counted apart from validation's.
"""

from __future__ import annotations

from typing import Any

import torch

from esper_engine.epoch_figures import TensorTotals
from esper_engine.training_step import evaluating, perplexity, process_val_batch

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def report_batches(task: Any, config: Any, device: torch.device) -> Batches:
    """The report split in fixed batches of 2 x batch_size, as many samples as validation
    uses at most (none when the task has no report split)."""
    if task.report_x is None or task.report_y is None:
        return []
    size = config.batch_size * 2
    n = min(len(task.report_x), size * config.val_batches)
    return [
        (
            task.prepare(task.report_x[start : start + size].to(device)),
            task.report_y[start : start + size].to(device),
        )
        for start in range(0, n, size)
    ]


def evaluate_report(env: Any, batches: Batches, task: Any) -> dict[str, float | None]:
    """One env's report (``EpochSummary``'s report fields), its FLOPs added to the env's count;
    one host sync."""
    total = TensorTotals(torch.device(env.config.device))
    with evaluating(env.model):  # one switch of modes for the pass, not per batch
        for x, y in batches:
            total.add_val(process_val_batch(env.model, x, y, task))
    env.flops.add_report(env.model, sum(len(x) for x, _ in batches))
    sums = dict(zip(total.names, total.vector().tolist(), strict=True))  # the one sync
    loss, correct, count = (sums[f"val_{name}"] for name in ("loss_sum", "correct", "count"))
    mean_loss = loss / max(count, 1)
    return {
        "report_accuracy": correct / max(count, 1),
        "report_loss": mean_loss,
        "report_perplexity": perplexity(mean_loss) if task.kind == "language_model" else None,
    }
