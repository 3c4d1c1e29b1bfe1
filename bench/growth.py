"""Does growth pay? Growth arms against a tuned, fully decayed static frontier, paired per seed.

    python bench/growth.py [--quick | --large] [--task images|lm] [--ppo] [--json PATH]
                           [--svg-dir DIR] [--threads N] [--frontier-cache PATH]

Every run trains synthetic-images (the language part: synthetic-stories) for one episode (one
env, batches of 64) from the same data and batches per seed, its lr decayed to about 0 by the
end of its budget (``cosine_to_zero``).

- **The static frontier**: hosts of three widths that never grow, each at three budgets (epochs).
  Each width's host lr is tuned on seeds 0-2 at the largest budget (a small grid), then frozen for
  every seed and budget. A seed's frontier is the upper envelope of its static runs in the
  (training FLOPs, accuracy) plane, joined on log FLOPs (bench/_frontier.py). Its slope is the
  exchange rate: accuracy points per doubling of FLOPs, the compute price's default.
- **Growth arms** (``GROWTH_ARMS``: data; an arm needing a blueprint the host lacks is skipped and
  said so) on the default 3-6-12 host at two budgets, at that width's tuned lr. For each run: the
  FLOPs the same seed's frontier needs for the same accuracy, as a ratio (below 1: growth saved
  compute), with a paired bootstrap CI of the geometric mean over seeds, and the accuracy above
  the frontier at equal FLOPs. A run outside its frontier's range is shown as a bound (above /
  below), never extrapolated, and left out of the CI.
- **Headroom** (bench/_headroom.py): fixed growth plans against the heuristic and the static host
  on variants of the task, in compute-priced return (100 x accuracy - price x log2(FLOPs / static
  FLOPs)): where, if anywhere, does a plan beat the heuristic by 2 points?
- ``--large`` (opt-in): the same study from the ``small`` CNN preset (8-16-32) with frontier
  hosts up to 16-32-64, then its language part: synthetic-stories (byte-level, next-byte
  accuracy on the held-out report text) from the ``small`` Transformer preset (d_model 128, 4
  layers, 4 heads), a frontier of d_model 96 / 128 / 192 (32 units per head, MLP 4 x d_model)
  tuned and judged the same way, and the arms ``LM_ARMS``: the heuristic (its
  transformer_preference), ``stack`` and ``widen``. Printed under its own heading, in the JSON
  under ``language``, plotted to growth_lm_acc_vs_flops.svg, with its measured pace and the
  whole part's estimate. ``--large --task lm`` runs the language part alone (``--task images``
  the image study alone); ``--quick --task lm`` is its smoke size (``LM_QUICK``).
- ``--ppo`` (opt-in): kickstarted and scratch PPO agents trained on seed 0's task at the largest
  growth budget, evaluated from their policy files by argmax and by sampling.

Accuracy is read by ``report_accuracy`` (the held-out report split where the build has one) and
training FLOPs by ``episode_train_flops``; the output says which source each used. Stdout gets
the tables, stderr the progress.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgspec
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _frontier import (  # noqa: E402
    Point,
    SeedComparison,
    compare,
    envelope,
    exchange_rate,
    mean_frontier,
    ratio_cell,
    summarise_arm,
)
from _headroom import BEATS_BY, PLANS, VARIANTS, Plan, ScriptedPolicy, Variant, priced_return  # noqa: E402
from _svg import Series, plot  # noqa: E402

from esper_engine.blueprints import blueprint_names  # noqa: E402
from esper_engine.config import (  # noqa: E402
    CNN_RESIDUAL_SEEDS,
    HostConfig,
    PPOConfig,
    TrainingConfig,
)
from esper_engine.contracts import (  # noqa: E402
    EpochSummary,
    Event,
    GovernorRollback,
    Op,
    RunFinished,
    RunStatus,
    SeedStage,
    SeedTransition,
)
from esper_engine.footprint import host_cost  # noqa: E402
from esper_engine.host_presets import TASK_HOST_KIND, resolve_host  # noqa: E402
from esper_engine.model import create_model, run_host_spec  # noqa: E402
from esper_engine.policy.driver import build_policy  # noqa: E402
from esper_engine.policy.policy_file import write_policy_file  # noqa: E402
from esper_engine.policy.rewards import capacity_rent  # noqa: E402
from esper_engine.tasks import Task, load_task  # noqa: E402
from esper_engine.trainer import VectorizedTrainer  # noqa: E402

TUNING_SEEDS = (0, 1, 2)
HELD_OUT_SEEDS = (3, 4, 5)
TRAIN_SEED = 0  # the task the PPO agents train on
DEFAULT_WIDTHS = (3, 6, 12)
OPS = tuple(Op)
SCHEDULE = "cosine_to_zero"  # every run, static or growing, ends fully decayed
TASK = "synthetic-images"
LM_TASK = "synthetic-stories"  # the embedded byte-level language task (Transformer host)


@dataclass(frozen=True)
class Arm:
    """A growth arm: a policy and the config it runs with (nested groups as dicts), the
    blueprints it needs (skipped, and said so, where the host has none of them)."""

    name: str
    policy: str
    overrides: dict = field(default_factory=dict)
    needs: tuple[str, ...] = ()


def operator_arm(operator: str, host_kind: str) -> Arm:
    """The heuristic growing only by ``operator`` (a blueprint of the same name on every host
    kind): its preference for ``host_kind`` names that blueprint alone."""
    preference = {f"{host_kind}_preference": (operator,)}
    return Arm(operator, "heuristic", {"heuristic": preference}, needs=(operator,))


GROWTH_ARMS: tuple[Arm, ...] = (
    # The heuristic as it ships: stack first (HeuristicConfig.cnn_preference), in the shallowest
    # free slot, so its first seed is a copy of block1 behind a zero gate.
    Arm("heuristic", "heuristic", needs=("stack",)),
    Arm(
        "residual-first heuristic",
        "heuristic",
        {"heuristic": {"cnn_preference": CNN_RESIDUAL_SEEDS}},
        needs=("conv_light",),
    ),
    # Cost-aware: the heuristic's own cheapest-slot order (HeuristicConfig.cost_aware): its seeds
    # go where they add the fewest training FLOPs, measured by flops.measure_seed_costs (a
    # conv_light seed: block3 +16% of the host's per step, block1 +62%; a stacked copy +12% in
    # every block of the 3-6-12 host, so a tie, and the shallowest wins as in the plain order).
    Arm("cost-aware heuristic", "heuristic", {"heuristic": {"cost_aware": True}}),
    operator_arm("widen", "cnn"),
)
# The language task's arms: the heuristic (its transformer_preference: lora, mlp_small, ...),
# stacking (a copy of a segment's last decoder layer behind a zero gate) and widening (that
# layer's MLP gains 2 x d_model hidden units, zero outgoing weights).
LM_ARMS: tuple[Arm, ...] = (
    Arm("heuristic", "heuristic"),
    operator_arm("stack", "transformer"),
    operator_arm("widen", "transformer"),
)


@dataclass(frozen=True)
class Profile:
    """The study's size."""

    name: str
    batches_per_epoch: int
    seeds: tuple[int, ...]
    tuning_seeds: tuple[int, ...]  # the host lr is tuned on these, at the largest budget
    widths: tuple[tuple[int, ...], ...]  # the static frontier's hosts
    budgets: tuple[int, ...]  # the static frontier's budgets (epochs)
    growth_budgets: tuple[int, ...]  # the growth arms' budgets (epochs)
    lr_grid: tuple[float, ...]  # host lrs tried per width
    headroom_seeds: tuple[int, ...]
    variants: tuple[Variant, ...]
    plans: tuple[Plan, ...]
    train_envs: int  # envs per PPO round (--ppo)
    demo_rounds: int
    imitation_rounds: int
    free_rounds: int  # rounds at imitation weight 0 after the decay
    growth_widths: tuple[int, ...] = DEFAULT_WIDTHS  # the host the growth arms start from
    task: str = TASK
    arms: tuple[Arm, ...] = GROWTH_ARMS

    @property
    def host_kind(self) -> str:
        return TASK_HOST_KIND[self.task]

    def host(self, widths: tuple[int, ...]) -> HostConfig:
        """A host's config from its sizes: a CNN's block widths, a Transformer's (d_model,
        n_layers, n_heads) (its MLP is 4 x d_model wide, one slot per layer)."""
        if self.host_kind == "cnn":
            return HostConfig(widths=widths)
        d_model, n_layers, n_heads = widths
        return HostConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads, layers_per_segment=1)

    def label(self, widths: tuple[int, ...]) -> str:
        return width_label(widths, self.host_kind)

    @property
    def rounds(self) -> int:
        return self.demo_rounds + self.imitation_rounds + self.free_rounds

    @property
    def epochs(self) -> int:
        """The largest budget: the lr is tuned and PPO trains at it."""
        return max(self.budgets)


_DEFAULTS = TrainingConfig()
FULL = Profile(
    "full",
    _DEFAULTS.batches_per_epoch,
    TUNING_SEEDS + HELD_OUT_SEEDS,
    TUNING_SEEDS,
    ((3, 6, 12), (4, 8, 16), (5, 10, 20)),
    budgets=(6, 9, 12),
    growth_budgets=(6, 12),
    lr_grid=(0.1, 0.2, 0.4),
    headroom_seeds=TUNING_SEEDS,
    variants=VARIANTS,
    plans=PLANS,
    train_envs=4,
    demo_rounds=2,
    imitation_rounds=4,
    free_rounds=4,
)
QUICK = Profile(
    "quick",
    20,
    (0, 3),
    (0,),
    ((3, 6, 12), (4, 8, 16), (5, 10, 20)),
    budgets=(4, 6, 8),
    growth_budgets=(4, 8),
    lr_grid=(0.2, 0.4),
    headroom_seeds=(0,),
    variants=VARIANTS[:2],
    plans=PLANS[:4],
    train_envs=2,
    demo_rounds=1,
    imitation_rounds=2,
    free_rounds=2,
)

# Opt-in (--large): the study on the ``small`` CNN preset (8-16-32, the size users train) and
# hosts up to twice its width; about 7x the default's FLOPs per run (hours on one CPU thread).
LARGE = dataclasses.replace(
    FULL,
    name="large",
    widths=((8, 16, 32), (12, 24, 48), (16, 32, 64)),
    variants=(*VARIANTS[:2], Variant("host 12-24-48", widths=(12, 24, 48)), VARIANTS[3]),
    growth_widths=(8, 16, 32),
)

# The language part of --large: synthetic-stories from the ``small`` Transformer preset (d_model
# 128, 4 layers, 4 heads), the frontier's widths at 32 units per head (MLP 4 x d_model): about
# 0.56x, 1x and 2.25x the preset's FLOPs per step. No headroom plans (they are CNN plans) and no
# PPO here. Hours per seed on one CPU thread: ``--large --task lm`` prints the measured pace.
LM_LARGE = dataclasses.replace(
    FULL,
    name="large-lm",
    widths=((96, 4, 3), (128, 4, 4), (192, 4, 6)),
    variants=(),
    plans=(),
    growth_widths=(128, 4, 4),
    task=LM_TASK,
    arms=LM_ARMS,
)
# A smoke size of it (--quick --task lm): the ``tiny`` preset's 3 layers at 16 units per head,
# growth from the preset itself (64x3 h4), 16 batches per epoch, 2 budgets, seeds 0 and 1; lr
# 0.4 left the smoke's hosts at the most frequent byte's accuracy (0.20), so its grid is 0.1, 0.2.
LM_QUICK = dataclasses.replace(
    QUICK,
    name="quick-lm",
    batches_per_epoch=16,
    seeds=(0, 1),
    widths=((48, 3, 3), (64, 3, 4), (80, 3, 5)),
    budgets=(3, 6),
    growth_budgets=(3, 6),
    lr_grid=(0.1, 0.2),
    variants=(),
    plans=(),
    growth_widths=(64, 3, 4),
    task=LM_TASK,
    arms=LM_ARMS,
)

# --- what a run leaves behind ---------------------------------------------------------------


class EpisodeSink:
    """Keeps what the study reads: epoch summaries, germinations, rollbacks, the end."""

    def __init__(self) -> None:
        self.summaries: list[EpochSummary] = []
        self.germinations: list[SeedTransition] = []
        self.rollbacks: list[GovernorRollback] = []
        self.finished: RunFinished | None = None

    def emit(self, event: Event) -> None:
        if isinstance(event, EpochSummary):
            self.summaries.append(event)
        elif isinstance(event, SeedTransition) and event.to_stage == SeedStage.GERMINATED:
            self.germinations.append(event)
        elif isinstance(event, GovernorRollback):
            self.rollbacks.append(event)
        elif isinstance(event, RunFinished):
            self.finished = event

    def close(self) -> None:
        pass


# --- what the study reads: one place each, so the telemetry's own figures replace the fallbacks


def report_accuracy(summary: EpochSummary) -> float:
    """The accuracy the study reports: the held-out report split's, where the build has one
    (``EpochSummary.report_accuracy``, issue 24), else validation's (``accuracy_source`` says)."""
    value = getattr(summary, "report_accuracy", None)
    return summary.val_accuracy if value is None else value


def accuracy_source(summary: EpochSummary, task_kind: str = "classification") -> str:
    if getattr(summary, "report_accuracy", None) is None:
        return "validation (no report split in this build: the decisions read the same images)"
    if task_kind == "language_model":
        # EpochSummary.report_accuracy is argmax next-byte accuracy (Task.correct); the
        # perplexity is carried apart (report_perplexity) and not what the study reads.
        return "report split: next-byte accuracy on held-out text (not perplexity-based)"
    return "report split"


def episode_train_flops(sink: EpisodeSink) -> tuple[int, str]:
    """Training FLOPs of the episode (forward + backward): the telemetry's own count."""
    return int(sink.summaries[-1].train_flops), "telemetry (EpochSummary.train_flops)"


@dataclass(frozen=True)
class RunResult:
    """One run: the reported episode's accuracy, size, cost and choices."""

    arm: str
    seed: int
    epochs: int
    lr: float
    final: float  # report_accuracy of the last epoch
    val_final: float
    best: float  # best validation accuracy of the episode
    germinated: int
    fossilized: int
    host_params: int
    seed_params: int
    train_flops: int
    ops: dict[str, int]
    seconds: float
    acc_source: str
    flops_source: str
    blueprints: dict[str, int] = field(default_factory=dict)  # germinations per blueprint

    @property
    def params(self) -> int:
        return self.host_params + self.seed_params

    @property
    def point(self) -> Point:
        return Point(self.train_flops, self.final)


def base_config(
    profile: Profile, policy: str, seed: int, *, epochs: int | None = None, **overrides: object
) -> TrainingConfig:
    """Everything but the policy equal across arms: one env, one episode, decayed to 0.

    A nested group (``heuristic``, ``lifecycle``, ``host``, ...) may be given as a dict of its
    fields: they replace the defaults' and keep the rest."""
    fields: dict = dict(
        task=profile.task,
        n_envs=1,
        episodes=1,
        epochs=profile.epochs if epochs is None else epochs,
        batches_per_epoch=profile.batches_per_epoch,
        policy=policy,
        seed=seed,
        batch_stats_every=0,
        checkpoint_every=0,
        lr_schedule=SCHEDULE,
    )
    for name, value in overrides.items():
        if isinstance(value, dict):
            value = msgspec.structs.replace(getattr(_DEFAULTS, name), **value)
        fields[name] = value
    return TrainingConfig(**fields)


def static_config(profile: Profile, seed: int, widths: tuple[int, ...], epochs: int, lr: float):
    return base_config(
        profile, "static", seed, epochs=epochs, host_lr=lr, host=profile.host(widths)
    )


def make_trainer(
    config: TrainingConfig, sink: EpisodeSink, task: Task, run_id: str, actor_factory=None
) -> VectorizedTrainer:
    """The one place the study builds a trainer. ``actor_factory(slot_ids, blueprints)`` gives
    a scripted policy (config.policy must be "heuristic"), seated where the heuristic acts and
    handed to the trainer through its public ``policy=`` seam."""
    policy = None
    if actor_factory is not None:
        spec = run_host_spec(config, task)
        with torch.random.fork_rng(devices=[]):  # only the slot ids: no stream of the run moves
            slot_ids = create_model(task, config.device, slots=config.slots, spec=spec).slot_ids
        policy = build_policy(config, slot_ids, task.host_kind, spec)
        policy.heuristic = actor_factory(slot_ids, tuple(blueprint_names(task.host_kind)))
    return VectorizedTrainer(config, sink, task=task, run_id=run_id, policy=policy)


def _run(trainer: VectorizedTrainer, label: str) -> None:
    finished = trainer.run()
    if finished.status != RunStatus.COMPLETED:
        raise RuntimeError(f"{label} did not complete: {finished.status}: {finished.error}")


def _ops(summaries: list[EpochSummary], epochs: int) -> dict[str, int]:
    """The ops chosen in one env's episode (no action follows the last epoch)."""
    return dict(Counter(str(s.last_op) for s in summaries if s.epoch < epochs - 1))


def evaluate(
    arm: str, seed: int, task: Task, config: TrainingConfig, actor_factory=None
) -> RunResult:
    started = time.perf_counter()
    sink = EpisodeSink()
    trainer = make_trainer(config, sink, task, f"growth-{arm}-{seed}", actor_factory)
    _run(trainer, f"{arm}, seed {seed}")
    final = sink.summaries[-1]
    flops, flops_source = episode_train_flops(sink)
    return RunResult(
        arm=arm,
        seed=seed,
        epochs=config.epochs,
        lr=config.host_lr or task.host_lr,
        final=report_accuracy(final),
        val_final=final.val_accuracy,
        best=max(s.val_accuracy for s in sink.summaries),
        germinated=len(sink.germinations),
        fossilized=sum(slot.stage == SeedStage.FOSSILIZED for slot in final.slots),
        host_params=final.host_params,
        seed_params=final.seed_params,
        train_flops=flops,
        ops=_ops(sink.summaries, config.epochs),
        seconds=time.perf_counter() - started,
        acc_source=accuracy_source(final, task.kind),
        flops_source=flops_source,
        blueprints=dict(Counter(str(t.blueprint) for t in sink.germinations)),
    )


# --- training an agent (--ppo) -------------------------------------------------------------------


@dataclass
class Training:
    """One agent's training run: its per-round figures, its wall-clock time and its file."""

    label: str
    rounds: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    policy_file: str = ""


def train_agent(
    label: str, profile: Profile, task: Task, ppo: PPOConfig, out_dir: Path, lr: float
) -> Training:
    """PPO training on the training seed's task; every round's figures, the agent saved."""
    started = time.perf_counter()
    config = base_config(
        profile,
        "ppo",
        TRAIN_SEED,
        n_envs=profile.train_envs,
        episodes=profile.rounds,
        ppo=ppo,
        host_lr=lr,
        host=profile.host(profile.growth_widths),
    )
    sink = EpisodeSink()
    trainer = VectorizedTrainer(config, sink, task=task, run_id=f"growth-train-{label}")
    _run(trainer, f"{label} training")
    driver = trainer.policy
    path = out_dir / f"{label}.policy.pt"
    write_policy_file(path, driver.policy_state())
    training = Training(label, seconds=time.perf_counter() - started, policy_file=str(path))
    for episode, stats in enumerate(driver.history):
        training.rounds.append(
            {"round": episode + 1, **round_outcome(sink, episode, config), **stats}
        )
    return training


def round_outcome(sink: EpisodeSink, episode: int, config: TrainingConfig) -> dict:
    """A round's episodes, their return split into its parts (accuracy points per episode)."""
    by_env: dict[int, list[EpochSummary]] = {}
    for s in sink.summaries:
        if s.episode == episode:
            by_env.setdefault(s.env, []).append(s)
    gains, rents, finals = [], [], []
    for summaries in by_env.values():
        first, last = summaries[0], summaries[-1]
        finals.append(last.val_accuracy)
        gains.append(100 * (last.val_accuracy - first.val_accuracy))
        rents.append(capacity_rent(last.host_params, last.seed_params, config.param_rent))
    penalties = [r.penalty for r in sink.rollbacks if r.episode == episode]
    n = max(len(by_env), 1)
    return {
        "final_acc": statistics.mean(finals),
        "return_accuracy": statistics.mean(gains),
        "return_rent": -statistics.mean(rents),
        "return_penalty": -sum(penalties) / n,
    }


# --- the study -----------------------------------------------------------------------------


def kickstart_config(profile: Profile, seed: int) -> PPOConfig:
    return PPOConfig(
        seed=seed,
        demo_rounds=profile.demo_rounds,
        imitation_rounds=profile.imitation_rounds,
    )


def scratch_config(profile: Profile, seed: int) -> PPOConfig:
    return PPOConfig(seed=seed, demo_rounds=0, imitation_coef=0.0, imitation_rounds=0)


def eval_ppo(policy_file: str, greedy: bool) -> PPOConfig:
    return PPOConfig(init_file=policy_file, learn=False, greedy=greedy)


def width_label(widths: tuple[int, ...], host_kind: str = "cnn") -> str:
    """``static 3-6-12`` (CNN block widths), ``static 128x4 h4`` (Transformer d_model x
    layers, heads)."""
    if host_kind == "cnn":
        return "static " + "-".join(map(str, widths))
    d_model, n_layers, n_heads = widths
    return f"static {d_model}x{n_layers} h{n_heads}"


def arm_key(name: str, epochs: int) -> str:
    return f"{name} @{epochs}"


class Study:
    """Runs episodes for the study: the seeds' tasks built once, progress to stderr."""

    def __init__(self, profile: Profile, seeds: tuple[int, ...], out_dir: Path) -> None:
        self.profile, self.seeds, self.out_dir = profile, seeds, out_dir
        self.started = time.perf_counter()
        self._tasks: dict[int, Task] = {}
        self.blueprints = tuple(blueprint_names(profile.host_kind))

    def task(self, seed: int) -> Task:
        if seed not in self._tasks:
            self._tasks[seed] = load_task(self.profile.task, seed=seed)
        return self._tasks[seed]

    def run(
        self,
        arm: str,
        seed: int,
        config: TrainingConfig,
        task: Task | None = None,
        actor_factory=None,
    ) -> RunResult:
        result = evaluate(arm, seed, task or self.task(seed), config, actor_factory)
        self.progress(
            f"{arm:<32} @{config.epochs:<2} seed {seed} lr {result.lr:g}: final {result.final:.3f}"
            f", {result.train_flops / 1e9:.2f} GFLOP, {result.germinated} germinated, "
            f"{result.fossilized} fossilized ({result.seconds:.0f}s)"
        )
        return result

    def progress(self, message: str) -> None:
        _progress(self.started, message)


def tune_lr(study: Study) -> tuple[dict[tuple[int, ...], float], dict[str, dict[float, list]]]:
    """Each width's host lr: the grid's best mean accuracy on the tuning seeds, largest budget."""
    p = study.profile
    chosen, grid = {}, {}
    for widths in p.widths:
        runs = {
            lr: [
                study.run(p.label(widths), s, static_config(p, s, widths, p.epochs, lr))
                for s in p.tuning_seeds
            ]
            for lr in p.lr_grid
        }
        chosen[widths] = max(p.lr_grid, key=lambda lr: _mean(r.final for r in runs[lr]))
        grid[p.label(widths)] = runs
        study.progress(f"{p.label(widths)}: host lr {chosen[widths]:g}")
    return chosen, grid


def static_runs(study: Study, chosen: dict, grid: dict) -> dict[int, list[RunResult]]:
    """Every seed's static runs: each width at each budget at its tuned lr (tuning runs reused)."""
    p = study.profile
    out: dict[int, list[RunResult]] = {}
    for seed in study.seeds:
        out[seed] = []
        for widths in p.widths:
            lr = chosen[widths]
            for epochs in p.budgets:
                tuned = grid[p.label(widths)][lr]
                reuse = [r for r in tuned if r.seed == seed and r.epochs == epochs]
                out[seed].append(
                    reuse[0]
                    if reuse
                    else study.run(
                        p.label(widths), seed, static_config(p, seed, widths, epochs, lr)
                    )
                )
    return out


def growth_runs(study: Study, lr: float) -> tuple[dict[str, list[RunResult]], dict[str, str]]:
    """Each available growth arm at each growth budget on every seed; the skipped, and why."""
    p = study.profile
    runs: dict[str, list[RunResult]] = {}
    skipped: dict[str, str] = {}
    for arm in p.arms:
        missing = sorted(set(arm.needs) - set(study.blueprints))
        if missing:
            skipped[arm.name] = f"no blueprint {', '.join(missing)} in this build"
            continue
        for epochs in p.growth_budgets:
            runs[arm_key(arm.name, epochs)] = [
                study.run(
                    arm.name,
                    seed,
                    base_config(
                        p,
                        arm.policy,
                        seed,
                        epochs=epochs,
                        host_lr=lr,
                        host=p.host(p.growth_widths),
                        **arm.overrides,
                    ),
                )
                for seed in study.seeds
            ]
    return runs, skipped


def ppo_runs(study: Study, lr: float) -> tuple[dict[str, list[RunResult]], dict[str, Training]]:
    """--ppo: both agents trained on seed 0's task, evaluated at the largest growth budget."""
    p = study.profile
    task = study.task(TRAIN_SEED)
    trainings = {
        "ppo": train_agent("ppo", p, task, kickstart_config(p, 0), study.out_dir, lr),
        "ppo_scratch": train_agent("ppo_scratch", p, task, scratch_config(p, 0), study.out_dir, lr),
    }
    for name, training in trainings.items():
        study.progress(f"{name} trained: {p.rounds} rounds in {training.seconds:.0f}s")
    epochs = max(p.growth_budgets)
    runs = {}
    for name, training in trainings.items():
        for label, greedy in ((name, True), (f"{name}_sampled", False)):
            runs[arm_key(label, epochs)] = [
                study.run(
                    label,
                    seed,
                    base_config(
                        p,
                        "ppo",
                        seed,
                        epochs=epochs,
                        host_lr=lr,
                        host=p.host(p.growth_widths),
                        ppo=eval_ppo(training.policy_file, greedy),
                    ),
                )
                for seed in study.seeds
            ]
    return runs, trainings


def headroom(study: Study, chosen: dict, price: float) -> dict:
    """Every plan, the heuristic and the static host on each variant: compute-priced returns."""
    p = study.profile
    out: dict = {"price": price, "variants": {}, "skipped": {}}
    plans = []
    for plan in p.plans:
        missing = sorted(plan.blueprints() - set(study.blueprints))
        if missing:
            out["skipped"][plan.name] = f"no blueprint {', '.join(missing)} in this build"
        else:
            plans.append(plan)
    for variant in p.variants:
        widths = variant.widths or p.growth_widths
        epochs = variant.epochs or p.epochs
        lr = chosen.get(widths, study.task(p.headroom_seeds[0]).host_lr)
        rows: dict[str, list[dict]] = {}
        for seed in p.headroom_seeds:
            task = variant.task(study.task(seed), seed)
            common = dict(epochs=epochs, host_lr=lr, host=p.host(widths))
            label = f"[{variant.name}]"
            static = study.run(
                f"{label} static", seed, base_config(p, "static", seed, **common), task
            )
            runs = {
                "static": static,
                "heuristic": study.run(
                    f"{label} heuristic", seed, base_config(p, "heuristic", seed, **common), task
                ),
            }
            for plan in plans:
                runs[plan.name] = study.run(
                    f"{label} {plan.name}",
                    seed,
                    base_config(p, "heuristic", seed, **common, **plan.overrides()),
                    task,
                    actor_factory=_actor(plan),
                )
            for name, run in runs.items():
                value = priced_return(run.final, run.train_flops, static.train_flops, price)
                rows.setdefault(name, []).append({"seed": seed, "return": value, **asdict(run)})
        out["variants"][variant.name] = {
            **asdict(variant),
            "epochs": epochs,
            "lr": lr,
            "rows": rows,
        }
    return out


def _actor(plan: Plan):
    return lambda slot_ids, blueprints: ScriptedPolicy(plan, slot_ids, blueprints)


# --- the static frontier, cached (--frontier-cache) ---------------------------------------------

FRONTIER_VERSION = 1  # bump when what a static run computes changes without a config change
# Settings a static run never reads (its policy never acts or learns): left out of the key.
_POLICY_ONLY = frozenset({"heuristic", "ppo", "compute_price", "param_rent"})


class StaleCache(ValueError):
    """A frontier cache made for another profile, seeds or settings."""


def frontier_key(profile: Profile, seeds: tuple[int, ...]) -> dict:
    """What the static frontier depends on: the profile's frontier settings, the seeds, the
    full config of a static run (every default included), the task, torch's version."""
    sample = static_config(profile, seeds[0], profile.widths[0], profile.budgets[0], 0.1)
    key = {
        "version": FRONTIER_VERSION,
        "task": profile.task,
        "profile": profile.name,
        "seeds": list(seeds),
        "tuning_seeds": list(profile.tuning_seeds),
        "batches_per_epoch": profile.batches_per_epoch,
        "widths": [list(w) for w in profile.widths],
        "budgets": list(profile.budgets),
        "lr_grid": list(profile.lr_grid),
        "static_config": {
            name: value
            for name, value in msgspec.to_builtins(
                msgspec.structs.replace(sample, seed=0, host_lr=None, epochs=0)
            ).items()
            if name not in _POLICY_ONLY
        },
        "torch": torch.__version__,
    }
    return json.loads(json.dumps(key, default=_jsonable))


def _result(data: dict) -> RunResult:
    fields = {f.name for f in dataclasses.fields(RunResult)}
    return RunResult(**{k: v for k, v in data.items() if k in fields})


def load_frontier(path: Path, key: dict) -> tuple[dict, dict, dict[int, list[RunResult]]]:
    """``tune_lr``'s and ``static_runs``' results from a cache written for ``key``; a
    ``StaleCache`` naming the first setting that differs otherwise."""
    try:
        saved = json.loads(path.read_text())
        cached_key = saved["key"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StaleCache(f"--frontier-cache {path}: not a frontier cache ({error})") from None
    if cached_key != key:
        differs = sorted(
            k for k in key.keys() | cached_key.keys() if key.get(k) != cached_key.get(k)
        )
        raise StaleCache(
            f"--frontier-cache {path} was made for other settings ({', '.join(differs)} "
            f"differ): delete it or name another path"
        )
    chosen = {tuple(widths): float(lr) for widths, lr in saved["chosen"]}
    grid = {
        label: {float(lr): [_result(r) for r in runs] for lr, runs in by_lr.items()}
        for label, by_lr in saved["grid"].items()
    }
    static = {int(seed): [_result(r) for r in runs] for seed, runs in saved["static"].items()}
    return chosen, grid, static


def save_frontier(path: Path, key: dict, chosen: dict, grid: dict, static: dict) -> None:
    data = {
        "key": key,
        "chosen": [[list(widths), lr] for widths, lr in chosen.items()],
        "grid": {
            label: {str(lr): [asdict(r) for r in runs] for lr, runs in by_lr.items()}
            for label, by_lr in grid.items()
        },
        "static": {str(seed): [asdict(r) for r in runs] for seed, runs in static.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
    tmp.replace(path)


def frontier(study: Study, cache: Path | None) -> tuple[dict, dict, dict[int, list[RunResult]]]:
    """The tuned lrs, the lr grid's runs and every seed's static runs: from ``cache`` where it
    exists (refused if made for other settings), else run (and written there)."""
    key = frontier_key(study.profile, study.seeds) if cache is not None else None
    if cache is not None and cache.exists():
        chosen, grid, static = load_frontier(cache, key)
        study.progress(f"static frontier read from {cache} (not rerun)")
        return chosen, grid, static
    chosen, grid = tune_lr(study)
    static = static_runs(study, chosen, grid)
    if cache is not None:
        save_frontier(cache, key, chosen, grid, static)
        study.progress(f"static frontier written to {cache}")
    return chosen, grid, static


class Measured(NamedTuple):
    """Everything a study ran, in ``summarise``'s order."""

    profile: Profile
    seeds: tuple[int, ...]
    chosen: dict
    grid: dict
    static: dict[int, list[RunResult]]
    frontiers: dict[int, list[Point]]
    rates: dict[int, float]
    arms: dict[str, list[RunResult]]
    skipped: dict[str, str]
    trainings: dict[str, Training]
    room: dict
    seconds: float

    def every_run(self) -> list[RunResult]:
        """Each run once: the lr grid's, the static runs not taken from it, the arms'."""
        runs = {_run_key(r): r for by_lr in self.grid.values() for rs in by_lr.values() for r in rs}
        for rs in [*self.static.values(), *self.arms.values()]:
            runs.update({_run_key(r): r for r in rs})
        return list(runs.values())


def _run_key(r: RunResult) -> tuple:
    return (r.arm, r.seed, r.epochs, r.lr)


def run_study(
    profile: Profile,
    seeds: tuple[int, ...],
    out_dir: Path,
    with_ppo: bool,
    frontier_cache: Path | None = None,
) -> dict:
    return summarise(*measure(profile, seeds, out_dir, with_ppo, frontier_cache))


def measure(
    profile: Profile,
    seeds: tuple[int, ...],
    out_dir: Path,
    with_ppo: bool,
    frontier_cache: Path | None = None,
) -> Measured:
    study = Study(profile, seeds, out_dir)
    chosen, grid, static = frontier(study, frontier_cache)
    frontiers = {seed: envelope([r.point for r in runs]) for seed, runs in static.items()}
    rates = {seed: exchange_rate(f) for seed, f in frontiers.items()}
    price = _mean(rates.values())
    if not math.isfinite(price):
        price = _DEFAULTS.compute_price
    study.progress(f"exchange rate {price:.2f} points per doubling of FLOPs")
    lr = chosen.get(profile.growth_widths, study.task(seeds[0]).host_lr)
    arms, skipped = growth_runs(study, lr)
    trainings: dict[str, Training] = {}
    if with_ppo:
        ppo, trainings = ppo_runs(study, lr)
        arms.update(ppo)
    room = headroom(study, chosen, price)
    seconds = time.perf_counter() - study.started
    return Measured(
        profile,
        seeds,
        chosen,
        grid,
        static,
        frontiers,
        rates,
        arms,
        skipped,
        trainings,
        room,
        seconds,
    )


# --- the language part's pace and the whole study's estimate ---------------------------------


def planned_runs(
    profile: Profile, seeds: tuple[int, ...]
) -> list[tuple[tuple[int, ...], str, int]]:
    """Every run ``run_study`` makes at this size, as (host sizes, arm, epochs): the lr grid on
    the tuning seeds, the static runs it does not reuse from it, each growth arm (PPO and the
    headroom runs left out)."""
    runs = []
    for widths in profile.widths:
        tuning = len(profile.lr_grid) * len(profile.tuning_seeds)
        runs += [(widths, "static", profile.epochs)] * tuning
        for seed in seeds:
            for epochs in profile.budgets:
                if seed not in profile.tuning_seeds or epochs != profile.epochs:
                    runs.append((widths, "static", epochs))
    for arm in profile.arms:
        runs += [
            (profile.growth_widths, arm.name, e) for e in profile.growth_budgets for _ in seeds
        ]
    return runs


def host_step_flops(profile: Profile, widths: tuple[int, ...], task: Task) -> int:
    """A training batch's forward FLOPs on this host (footprint.host_cost: FlopCounterMode)."""
    spec = resolve_host(profile.host(widths), profile.task, profile.host_kind)
    return host_cost(task, spec).flops_per_sample * _DEFAULTS.batch_size


def pace(measured: Measured, target: Profile, task: Task) -> dict:
    """How long this part's runs took (each run's own clock, a cached frontier's included), and
    ``target``'s runs (its default seeds) estimated at the same seconds per training FLOP: a
    static run's FLOPs from its host's forward FLOPs at the ratio measured here, a growth arm's
    at its measured share over its static host at the same budget and seed."""
    p = measured.profile
    runs = measured.every_run()
    seconds = sum(r.seconds for r in runs)
    per_flop = seconds / sum(r.train_flops for r in runs)
    forward = {w: host_step_flops(p, w, task) for w in p.widths}
    train_per_forward = _mean(
        r.train_flops / (forward[w] * r.epochs * p.batches_per_epoch)
        for w in p.widths
        for r in runs
        if r.arm == p.label(w)
    )
    host = {(r.epochs, r.seed): r.train_flops for r in runs if r.arm == p.label(p.growth_widths)}
    growth = {
        arm.name: _mean(
            r.train_flops / host[r.epochs, r.seed]
            for r in runs
            if r.arm == arm.name and (r.epochs, r.seed) in host
        )
        for arm in p.arms
    }
    steps = {w: host_step_flops(target, w, task) for w in {*target.widths, target.growth_widths}}
    planned = planned_runs(target, target.seeds)
    target_flops = sum(
        steps[w]
        * train_per_forward
        * e
        * target.batches_per_epoch
        * (1.0 if arm == "static" or not math.isfinite(growth.get(arm, math.nan)) else growth[arm])
        for w, arm, e in planned
    )
    return {
        "runs": len(runs),
        "seconds": round(seconds, 1),
        "seconds_per_run": round(seconds / len(runs), 1),
        "seconds_per_epoch": round(seconds / sum(r.epochs for r in runs), 2),
        "ns_per_train_flop": per_flop * 1e9,
        "train_per_forward_flop": train_per_forward,
        "growth_flops_share": growth,
        "target": target.name,
        "target_seeds": list(target.seeds),
        "target_runs": len(planned),
        "target_train_flops": target_flops,
        "target_seconds": round(per_flop * target_flops),
    }


def run_language(
    profile: Profile,
    seeds: tuple[int, ...],
    out_dir: Path,
    frontier_cache: Path | None = None,
    target: Profile | None = None,
) -> dict:
    """The language part: the study's frontier and growth arms on the language task (no PPO,
    no headroom plans: they are CNN plans), its pace and the estimate for ``target`` (the
    language part of --large unless named)."""
    measured = measure(profile, seeds, out_dir, False, frontier_cache)
    figures = summarise(*measured)
    task = load_task(profile.task, seed=seeds[0])
    figures["pace"] = pace(measured, target or LM_LARGE, task)
    return figures


def _progress(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:6.0f}s] {message}", file=sys.stderr, flush=True)


def _mean(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.mean(values) if values else math.nan


def wait_share(ops: dict[str, int]) -> float:
    return ops.get(str(Op.WAIT), 0) / max(sum(ops.values()), 1)


def _run_dict(r: RunResult) -> dict:
    return {**asdict(r), "params": r.params}


def summarise(
    profile: Profile,
    seeds: tuple[int, ...],
    chosen: dict,
    grid: dict,
    static: dict[int, list[RunResult]],
    frontiers: dict[int, list[Point]],
    rates: dict[int, float],
    arms: dict[str, list[RunResult]],
    skipped: dict[str, str],
    trainings: dict[str, Training],
    room: dict,
    seconds: float,
) -> dict:
    every = [r for runs in static.values() for r in runs] + [r for rs in arms.values() for r in rs]
    figures: dict = {
        "task": profile.task,
        "host_kind": profile.host_kind,
        "profile": profile.name,
        "seeds": list(seeds),
        "batches_per_epoch": profile.batches_per_epoch,
        "budgets": list(profile.budgets),
        "growth_budgets": list(profile.growth_budgets),
        "lr_schedule": SCHEDULE,
        "acc_source": sorted({r.acc_source for r in every}),
        "flops_source": sorted({r.flops_source for r in every}),
        "lr": {
            label: {
                "chosen": chosen[widths],
                "grid": {str(lr): _mean(r.final for r in runs) for lr, runs in grid[label].items()},
            }
            for widths in profile.widths
            for label in [profile.label(widths)]
        },
        "static": {str(seed): [_run_dict(r) for r in runs] for seed, runs in static.items()},
        "frontiers": {str(s): [[p.flops, p.acc] for p in f] for s, f in frontiers.items()},
        "exchange_rate": {str(s): v for s, v in rates.items()},
        "exchange_rate_mean": _mean(rates.values()),
        "arms": {},
        "skipped_arms": skipped,
        "headroom": room,
        "training": {},
    }
    for key, runs in arms.items():
        rows = [compare(r.seed, r.point, frontiers[r.seed]) for r in runs]
        figures["arms"][key] = {
            "acc": _mean(r.final for r in runs),
            "train_flops": _mean(r.train_flops for r in runs),
            "wait_share": _mean(wait_share(r.ops) for r in runs),
            "runs": [_run_dict(r) for r in runs],
            "comparisons": [_comparison_dict(row) for row in rows],
            "summary": asdict(summarise_arm(rows)),
        }
    for name, training in trainings.items():
        figures["training"][name] = {
            "seconds": round(training.seconds, 1),
            "rounds": training.rounds,
        }
    figures["machine"] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seconds": round(seconds, 1),
        "load_average": os.getloadavg()[0],
    }
    return figures


def _comparison_dict(row: SeedComparison) -> dict:
    return {
        "seed": row.seed,
        "ratio": row.ratio,
        "ratio_where": row.static_flops.where,
        "ratio_cell": ratio_cell(row),
        "acc_gain": row.acc_gain,
        "acc_gain_where": row.static_acc.where,
    }


# --- output ----------------------------------------------------------------------------------


def tables(figures: dict) -> str:
    return "\n".join(
        _header(figures)
        + _lr_table(figures)
        + _frontier_table(figures)
        + _growth_table(figures)
        + _headroom_table(figures)
        + _training_table(figures)
    )


def language_tables(figures: dict) -> str:
    """The language part, under a heading of its own: the same tables (no headroom, no PPO)
    and its pace."""
    heading = (
        f"## The language task: {figures['task']} (byte-level LM, Transformer host; hosts are "
        f"d_model x layers, heads, MLP 4 x d_model), growth by stacking and widening"
    )
    return "\n".join(
        [heading, ""]
        + _header(figures)
        + _lr_table(figures)
        + _frontier_table(figures)
        + _growth_table(figures)
        + _germination_lines(figures)
        + _pace_lines(figures)
    )


def _germination_lines(figures: dict) -> list[str]:
    """What each arm planted (from its runs' germinations), summed over its seeds."""
    lines = ["seeds germinated, per arm over its seeds (blueprint x count):", ""]
    for key, data in figures["arms"].items():
        counts: Counter = Counter()
        for r in data["runs"]:
            counts.update(r["blueprints"])
        planted = ", ".join(f"{name} x{n}" for name, n in sorted(counts.items()))
        lines.append(f"- {key}: {planted or 'none'}")
    return [*lines, ""]


def _pace_lines(figures: dict) -> list[str]:
    pace = figures.get("pace")
    if not pace:
        return []
    return [
        f"time: {pace['runs']} runs in {pace['seconds'] / 60:.1f} min "
        f"({pace['seconds_per_run']:.0f} s per run, {pace['seconds_per_epoch']:.1f} s per epoch of "
        f"{figures['batches_per_epoch']} batches; {pace['ns_per_train_flop']:.2f} ns per "
        f"training FLOP, {torch.get_num_threads()} torch thread(s))",
        f"estimate at that pace: {pace['target']} (seeds {_seeds(pace['target_seeds'])}, "
        f"{pace['target_runs']} runs, {pace['target_train_flops'] / 1e15:.2f} PFLOP of training) "
        f"about {pace['target_seconds'] / 3600:.1f} h on this machine",
        "",
    ]


def _header(figures: dict) -> list[str]:
    per_batch = "64" if figures.get("host_kind", "cnn") == "cnn" else "64 windows of 64 bytes"
    return [
        f"{figures.get('task', TASK)}, one env, {figures['batches_per_epoch']} batches of "
        f"{per_batch} per epoch, "
        f"seeds {_seeds(figures['seeds'])}; every lr decayed to about 0 by its budget's end "
        f"({figures['lr_schedule']})",
        f"accuracy: {'; '.join(figures['acc_source'])}",
        f"training FLOPs: {'; '.join(figures['flops_source'])}",
        "",
    ]


def _lr_table(figures: dict) -> list[str]:
    lrs = list(next(iter(figures["lr"].values()))["grid"])
    lines = [
        "Host lr per width: mean final accuracy on the tuning seeds at the largest budget "
        "(* chosen, then frozen for every seed and budget)",
        "",
        "| host | " + " | ".join(f"lr {lr}" for lr in lrs) + " |",
        "|---|" + "---|" * len(lrs),
    ]
    for label, data in figures["lr"].items():
        cells = [
            f"{acc:.3f}{'*' if float(lr) == data['chosen'] else ''}"
            for lr, acc in data["grid"].items()
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _frontier_table(figures: dict) -> list[str]:
    by_cell: dict[tuple[str, int], list[dict]] = {}
    for runs in figures["static"].values():
        for r in runs:
            by_cell.setdefault((r["arm"], r["epochs"]), []).append(r)
    lines = [
        "The static runs (the frontier is each seed's upper envelope of them)",
        "",
        "| host | epochs | lr | accuracy (mean) | min-max | training GFLOP |",
        "|---|---|---|---|---|---|",
    ]
    for (arm, epochs), runs in by_cell.items():
        accs = [r["final"] for r in runs]
        lines.append(
            f"| {arm} | {epochs} | {runs[0]['lr']:g} | {_mean(accs):.3f} | "
            f"{min(accs):.3f}-{max(accs):.3f} | {_mean(r['train_flops'] for r in runs) / 1e9:.2f} |"
        )
    rates = ", ".join(f"seed {s} {v:.1f}" for s, v in figures["exchange_rate"].items())
    lines += [
        "",
        f"exchange rate (accuracy points per doubling of training FLOPs along the frontier): "
        f"{rates}; mean {figures['exchange_rate_mean']:.2f} (TrainingConfig.compute_price's "
        f"default is {_DEFAULTS.compute_price:g})",
        "",
    ]
    return lines


def _growth_table(figures: dict) -> list[str]:
    seeds = figures["seeds"]
    lines = [
        "Growth against the same seed's static frontier: FLOPs(growth) / FLOPs(static at equal "
        "accuracy) per seed (<x (above): more accurate than every static run, x bounds the "
        "ratio; >x (below): less accurate than the cheapest), its geometric mean over the seeds "
        "in range with a paired bootstrap 95% CI, and accuracy above the frontier at equal FLOPs",
        "",
        "| arm @epochs | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | ratio [95% CI] (seeds in range) | points at equal FLOPs [95% CI] | accuracy "
        "| training GFLOP | WAIT share |",
        "|---|" + "---|" * (len(seeds) + 5),
    ]
    met, unread = [], []
    for key, data in figures["arms"].items():
        s = data["summary"]
        cells = [c["ratio_cell"] for c in data["comparisons"]]
        lo, hi = s["ratio_ci"]
        glo, ghi = s["acc_gain_ci"]
        lines.append(
            f"| {key} | " + " | ".join(cells) + f" | {s['ratio']:.2f} [{lo:.2f}, {hi:.2f}] "
            f"({s['n_ratio']}/{s['n']}) | {s['acc_gain']:+.1f} [{glo:+.1f}, {ghi:+.1f}] "
            f"({s['n_gain']}/{s['n']}) | {data['acc']:.3f} | {data['train_flops'] / 1e9:.2f} | "
            f"{data['wait_share']:.2f} |"
        )
        if s["n_ratio"] == s["n"] and s["ratio"] <= 0.8 and hi < 1.0:
            met.append(key)
        if s["above"]:
            unread.append(f"{key} ({s['above']})")
    for name, why in figures["skipped_arms"].items():
        lines.append(f"| {name} | skipped: {why} |")
    lines += [
        "",
        "goal (FLOPs ratio <= 0.8, the CI's upper end below 1, every seed within its frontier's "
        "range): " + (f"met by {', '.join(met)}" if met else "met by no arm"),
    ]
    if unread:
        lines.append(
            "runs above every static run of their seed, which a wider host or a longer budget "
            f"on the frontier would read: {', '.join(unread)}"
        )
    lines.append("")
    return lines


def _headroom_table(figures: dict) -> list[str]:
    room = figures["headroom"]
    variants = room["variants"]
    if not variants:
        return []
    names = list(next(iter(variants.values()))["rows"])
    seeds = sorted({r["seed"] for v in variants.values() for r in v["rows"]["static"]})
    lines = [
        f"Headroom: compute-priced return, 100 x accuracy - {room['price']:.2f} x "
        f"log2(FLOPs / the static host's FLOPs), mean over seeds {_seeds(seeds)}: the heuristic's "
        f"absolute, every other policy's as the difference from the heuristic's on the same seed "
        f"(never growing, static, is one of them; ** at least +{BEATS_BY:g}: room for a "
        f"controller)",
        "",
        "| policy | "
        + " | ".join(f"{v} ({d['epochs']} ep, lr {d['lr']:g})" for v, d in variants.items())
        + " |",
        "|---|" + "---|" * len(variants),
    ]
    beats: dict[str, list[str]] = {variant: [] for variant in variants}
    for name in ["heuristic", *(n for n in names if n != "heuristic")]:
        cells = []
        for variant, data in variants.items():
            mine = data["rows"][name]
            if name == "heuristic":
                cells.append(f"{_mean(r['return'] for r in mine):.1f}")
                continue
            theirs = {r["seed"]: r["return"] for r in data["rows"]["heuristic"]}
            delta = _mean(r["return"] - theirs[r["seed"]] for r in mine)
            mark = " **" if delta >= BEATS_BY else ""
            if mark:
                beats[variant].append(name)
            cells.append(f"{delta:+.1f}{mark}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, why in room["skipped"].items():
        lines.append(f"| {name} | skipped: {why} |")
    lines += ["", f"beating the heuristic by {BEATS_BY:g} points of compute-priced return:"]
    lines += [f"- {v}: {'; '.join(names) if names else 'none'}" for v, names in beats.items()]
    return [*lines, ""]


def _training_table(figures: dict) -> list[str]:
    if not figures["training"]:
        return []
    lines = [
        "| round | phase | imitation weight | final acc | return (acc, rent, penalty) "
        "| WAIT | GERM | PRUNE | FOSS | entropy | approx-KL | clip frac | EV | agree (taken, "
        "argmax) |",
        "|---|" * 1 + "---|" * 13,
    ]
    for name, training in figures["training"].items():
        for r in training["rounds"]:
            lines.append(
                f"| {name} {r['round']} | {r['phase']} | {r.get('imitation_weight', 0):.2f} | "
                f"{r['final_acc']:.3f} | {r['return_accuracy']:+.1f}, {r['return_rent']:+.1f}, "
                f"{r['return_penalty']:+.1f} | {_f(r, 'share_WAIT')} | "
                f"{_f(r, 'share_GERMINATE')} | {_f(r, 'share_PRUNE')} | "
                f"{_f(r, 'share_FOSSILIZE')} | {_f(r, 'entropy')} | "
                f"{_f(r, 'approx_kl', 4)} | {_f(r, 'clip_fraction')} | "
                f"{_f(r, 'explained_variance')} | {_f(r, 'heuristic_agreement')}, "
                f"{_f(r, 'greedy_agreement')} |"
            )
    return [*lines, ""]


def _seeds(seeds) -> str:
    return ", ".join(map(str, seeds))


def _f(r: dict, key: str, digits: int = 2) -> str:
    value = r.get(key)
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


MARKERS = ("square", "triangle", "circle")


def write_plots(figures: dict, out_dir: Path, name: str = "growth_acc_vs_flops.svg") -> list[Path]:
    """Accuracy vs training FLOPs (log x): the seeds' mean frontier, every static run, every
    growth arm at each budget (one point per seed)."""
    frontiers = [[Point(f, a) for f, a in pts] for pts in figures["frontiers"].values()]
    low = max(f[0].flops for f in frontiers)
    high = min(f[-1].flops for f in frontiers)
    grid = [low * (high / low) ** (i / 40) for i in range(41)] if high > low else [low]
    mean = mean_frontier(frontiers, grid)
    series = [
        Series("static frontier (mean)", [(p.flops, p.acc) for p in mean], line=True),
        Series(
            "static runs",
            [(r["train_flops"], r["final"]) for rs in figures["static"].values() for r in rs],
        ),
    ]
    for i, (key, data) in enumerate(figures["arms"].items()):
        if key.split(" @")[0].endswith("_sampled"):
            continue
        points = [(r["train_flops"], r["final"]) for r in data["runs"]]
        series.append(Series(key, points, MARKERS[i % len(MARKERS)]))
    path = out_dir / name
    task = "" if figures.get("task", TASK) == TASK else f"{figures['task']}: "
    path.write_text(
        plot(
            series,
            title=f"{task}final accuracy vs training FLOPs (one point per run and seed)",
            x_label="training FLOPs of the episode (forward + backward)",
            y_label=(
                f"final accuracy ({figures['acc_source'][0].split(' ')[0]})"
                if not task
                else "final next-byte accuracy (report split)"
            ),
            log_x=True,
        )
    )
    return [path]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/growth.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI size: 20 batches per epoch, budgets 4/6/8, seeds 0 and 3, 2 variants x 4 plans",
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help="opt-in: the small CNN preset (8-16-32) and wider hosts, then the language part "
        "(the small Transformer preset, stack and widen): hours on one CPU thread",
    )
    parser.add_argument(
        "--task",
        choices=("images", "lm"),
        default=None,
        help="with --large (or --quick, at a smoke size): only the image study or only the "
        "language part (synthetic-stories, stacking and widening a Transformer); --large runs "
        "both unless named",
    )
    parser.add_argument(
        "--ppo", action="store_true", help="also train and evaluate the PPO agents (slow)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--svg-dir", type=Path, default=None, help="write the plot here (default: none)"
    )
    parser.add_argument(
        "--frontier-cache",
        type=Path,
        default=None,
        help="read the static frontier (lr tuning and static runs, the expensive part) from this "
        "JSON file, or write it there if absent; refused if made for another profile, seeds or "
        "config (the language part's: the same name with _lm before its suffix)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument(
        "--seeds", default=None, help="comma-separated evaluation seeds (default: the profile's)"
    )
    args = parser.parse_args(argv)
    if args.quick and args.large:
        parser.error("--quick and --large are two sizes: choose one")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.task == "lm" and not (args.large or args.quick):
        parser.error("--task lm: the language part is in the --large study (--quick: a smoke size)")
    if args.task == "lm" and args.ppo:
        parser.error("--ppo trains on the image task: not with --task lm")
    if args.seeds is not None:
        try:
            args.seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        except ValueError:
            parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
        if not args.seeds or len(set(args.seeds)) != len(args.seeds):
            parser.error("--seeds: at least one seed, none repeated")
        if any(s < 0 for s in args.seeds):
            parser.error(f"--seeds: seeds are >= 0, got {args.seeds}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # One thread: results are reproducible run to run (thread counts change float reductions).
    torch.set_num_threads(args.threads)
    profile = QUICK if args.quick else LARGE if args.large else FULL
    images = args.task != "lm"
    language = args.task == "lm" or (args.large and args.task is None)
    lm_profile = LM_QUICK if args.quick else LM_LARGE
    cache = args.frontier_cache
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="growth-") as tmp:
        try:
            if images:
                seeds = args.seeds or profile.seeds
                figures = run_study(profile, seeds, Path(tmp), args.ppo, cache)
            if language:
                lm_cache = None if cache is None else cache.with_stem(cache.stem + "_lm")
                seeds = args.seeds or lm_profile.seeds
                figures["language"] = run_language(lm_profile, seeds, Path(tmp), lm_cache)
        except StaleCache as error:
            print(f"bench/growth.py: error: {error}", file=sys.stderr)
            return 2
    if images:
        print(tables(figures))
    if language:
        print(language_tables(figures["language"]))
    if args.svg_dir is not None:
        args.svg_dir.mkdir(parents=True, exist_ok=True)
        paths = write_plots(figures, args.svg_dir) if images else []
        if language:
            paths += write_plots(figures["language"], args.svg_dir, "growth_lm_acc_vs_flops.svg")
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=_jsonable) + "\n")
    return 0


def _jsonable(value: object) -> object:
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
