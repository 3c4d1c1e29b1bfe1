"""The end-of-run summary: envs ranked by final accuracy, and what the run did and cost.

One function builds it from the console state (``run_summary``) and one writes it as plain lines
(``summary_lines``): the console's summary screen, the print when the console exits and the end
of a headless run all show these same lines. No Textual here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from overwatch.state import ConsoleState
from overwatch.widgets.formatting import duration, env_label, flops, pct


@dataclass(frozen=True)
class EnvResult:
    """One env over the whole run (every episode)."""

    env: int  # index from 0
    final_accuracy: float  # fraction: the val accuracy of its last epoch summarised
    best_accuracy: float | None  # fraction: the best val accuracy of any epoch (None: all NaN)
    best_at: tuple[int, int] | None  # (episode, epoch) of the best, from 0
    fossilized: int
    pruned: int
    rollbacks: int
    flops: int  # every kind, summed over its episodes (0: not recorded)


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    status: str  # completed | stopped | crashed, or the trainer's state if it has not ended
    epochs_done: int
    epochs_planned: int
    elapsed_s: float | None  # training time, pauses left out
    total_flops: int
    envs: tuple[EnvResult, ...]  # ranked: best final accuracy first

    @property
    def best(self) -> EnvResult:
        return self.envs[0]

    @property
    def worst(self) -> EnvResult:
        return self.envs[-1]

    @property
    def fossilized(self) -> int:
        return sum(e.fossilized for e in self.envs)

    @property
    def pruned(self) -> int:
        return sum(e.pruned for e in self.envs)

    @property
    def rollbacks(self) -> int:
        return sum(e.rollbacks for e in self.envs)


def _rank_key(result: EnvResult) -> tuple[float, int]:
    """Best final accuracy first; a NaN accuracy ranks last; ties by env."""
    acc = result.final_accuracy
    return (-acc if math.isfinite(acc) else math.inf, result.env)


def run_summary(state: ConsoleState) -> RunSummary | None:
    """The summary of the run so far; None before any env's first epoch summary."""
    results = [
        EnvResult(
            env=view.env,
            final_accuracy=view.summary.val_accuracy,
            best_accuracy=view.best_val_accuracy,
            best_at=view.best_at,
            fossilized=view.fossilized,
            pruned=view.pruned,
            rollbacks=view.run_rollbacks,
            flops=view.run_flops,
        )
        for view in state.envs
        if view.summary is not None
    ]
    if not results:
        return None
    end = state.last_wall_time if state.last_wall_time is not None else 0.0
    return RunSummary(
        run_id=state.run_id,
        status=state.finished_status or state.trainer_state,
        epochs_done=state.epochs_done,
        epochs_planned=state.episodes * state.epochs,
        elapsed_s=state.elapsed(end),
        total_flops=state.total_flops,
        envs=tuple(sorted(results, key=_rank_key)),
    )


def _best(result: EnvResult) -> str:
    if result.best_accuracy is None or result.best_at is None:
        return "-"
    episode, epoch = result.best_at
    return f"{pct(result.best_accuracy)} e{episode + 1}/{epoch + 1}"


def summary_lines(summary: RunSummary, *, max_rows: int | None = None) -> list[str]:
    """The summary as plain text lines, at most 78 characters wide: a headline, the totals,
    best and worst env, then the ranked table (``max_rows`` envs of it, the rest counted)."""
    best, worst = summary.best, summary.worst
    spent = flops(summary.total_flops) if summary.total_flops else "not recorded"
    lines = [
        f"run {summary.run_id} {summary.status}: "
        f"{summary.epochs_done}/{summary.epochs_planned} epochs in {duration(summary.elapsed_s)}",
        f"seeds fossilized {summary.fossilized}, pruned {summary.pruned}; "
        f"rollbacks {summary.rollbacks}; FLOPs {spent}",
        f"best {env_label(best.env)} {pct(best.final_accuracy)}, "
        f"worst {env_label(worst.env)} {pct(worst.final_accuracy)}",
        f"{'rank':>4} {'env':>6} {'final':>7} {'best (ep/epoch)':>16} "
        f"{'fossil':>6} {'pruned':>6} {'rollb':>5} {'FLOPs':>7}",
    ]
    shown = summary.envs if max_rows is None else summary.envs[:max_rows]
    for rank, r in enumerate(shown, start=1):
        lines.append(
            f"{rank:>4} {env_label(r.env):>6} {pct(r.final_accuracy):>7} {_best(r):>16} "
            f"{r.fossilized:>6} {r.pruned:>6} {r.rollbacks:>5} "
            f"{flops(r.flops) if r.flops else '-':>7}"
        )
    if len(shown) < len(summary.envs):
        lines.append(f"     ... and {len(summary.envs) - len(shown)} more envs")
    return lines
