"""Does growth pay? Final validation accuracy of the static host, heuristic growth and PPO growth.

    python bench/growth.py [--quick] [--json PATH]

Every arm trains on synthetic-images with the same epochs, batches per epoch, data and seeds
(config.seed in 0..2, one env per run); the only difference is the policy. The static arm never
plants a seed. PPO first trains for a stated number of rounds (episodes), then its last episode
is the one reported. "Final" is the validation accuracy of the last epoch of the last episode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from esper_engine.config import TrainingConfig
from esper_engine.contracts import EpochSummary, RunFinished
from esper_engine.tasks import load_task
from esper_engine.trainer import VectorizedTrainer

SEEDS = (0, 1, 2)


class LastEpoch:
    """A sink that keeps only what the study needs: every summary of the last episode."""

    def __init__(self) -> None:
        self.summaries: list[EpochSummary] = []
        self.finished: RunFinished | None = None

    def emit(self, event) -> None:
        if isinstance(event, EpochSummary):
            self.summaries.append(event)
        elif isinstance(event, RunFinished):
            self.finished = event

    def close(self) -> None:
        pass


def final_accuracy(policy: str, seed: int, epochs: int, batches: int, episodes: int) -> dict:
    task = load_task("synthetic-images", seed=seed)
    config = TrainingConfig(
        n_envs=1,
        episodes=episodes,
        epochs=epochs,
        batches_per_epoch=batches,
        policy=policy,
        seed=seed,
    )
    sink = LastEpoch()
    VectorizedTrainer(config, sink, task=task, run_id=f"growth-{policy}-{seed}").run()
    if sink.finished is None or sink.finished.status != "completed":
        raise RuntimeError(f"{policy} seed {seed} did not complete: {sink.finished}")
    last_episode = [s for s in sink.summaries if s.episode == episodes - 1]
    final = last_episode[-1]
    return {
        "final": final.val_accuracy,
        "best": max(s.val_accuracy for s in last_episode),
        "seed_params": final.seed_params,
        "fossilized": sum(slot.stage == "FOSSILIZED" for slot in final.slots),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and PPO rounds")
    parser.add_argument("--json", default=None, help="write the figures to this path")
    args = parser.parse_args(argv)
    epochs, batches, ppo_rounds = (8, 20, 2) if args.quick else (12, 40, 4)
    torch.set_num_threads(1)
    started = time.perf_counter()
    arms = {"static": 1, "heuristic": 1, "ppo": ppo_rounds}
    results: dict[str, list[dict]] = {}
    for arm, episodes in arms.items():
        policy = arm
        results[arm] = []
        for seed in SEEDS:
            print(
                f"{arm} seed {seed} ({episodes} episode(s) x {epochs} epochs) ...",
                file=sys.stderr,
                flush=True,
            )
            results[arm].append(final_accuracy(policy, seed, epochs, batches, episodes))
    figures: dict = {
        "seeds": list(SEEDS),
        "epochs": epochs,
        "batches_per_epoch": batches,
        "ppo_rounds": ppo_rounds,
    }
    for arm, runs in results.items():
        finals = [r["final"] for r in runs]
        figures[f"{arm}_acc"] = statistics.mean(finals)
        figures[f"{arm}_acc_std"] = statistics.stdev(finals)
        figures[f"{arm}_best"] = statistics.mean(r["best"] for r in runs)
        figures[f"{arm}_runs"] = runs
    gap = 100 * (figures["heuristic_acc"] - figures["static_acc"])
    figures["heuristic_gain_points"] = gap
    figures["machine"] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seconds": time.perf_counter() - started,
    }
    print(f"{'arm':<10} {'final acc':>18} {'best acc':>9}")
    for arm in arms:
        print(
            f"{arm:<10} {figures[f'{arm}_acc']:.3f} +- {figures[f'{arm}_acc_std']:.3f}"
            f"      {figures[f'{arm}_best']:.3f}"
        )
    print(f"heuristic - static: {gap:+.1f} points (target >= +3.0)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
