"""Does growth pay? Static hosts of several widths, heuristic and PPO growth, paired per seed.

    python bench/growth.py [--quick] [--json PATH] [--svg-dir DIR] [--threads N]

Every evaluated arm trains synthetic-images for one episode (12 epochs x 40 batches of 64, one
env) from the same initial host weights on the same batches for each seed; only the policy (and,
for the static arms, the host's width) differs. Seeds 0-2 are the ones the heuristic was tuned
on, 3-5 are held out. Arms:

- ``static WxWxW``: a host of those block widths that never grows (the default host is 3-6-12;
  5-10-20 has about the grown host's final size);
- ``heuristic``: the hand-written policy;
- ``ppo``: kickstarted PPO (heuristic demonstrations, behaviour clone, imitation term decaying to
  0, then rounds at weight 0 with an entropy floor), trained once on seed 0's task with several
  envs per round, saved as a policy file, then evaluated with ``--no-learn`` by its most likely
  action (``ppo``) and by sampling (``ppo_sampled``);
- ``ppo_scratch``: PPO from a fresh agent with the same rounds and envs, no demonstrations and no
  imitation: the negative control (``ppo_scratch_sampled`` beside it).

"Final" is the validation accuracy of the episode's last epoch. Training FLOPs are counted from
the model: one forward and backward pass of a training batch under
``torch.utils.flop_counter.FlopCounterMode``, for the model as it is in each epoch (host plus the
seeds present), times the epoch's batches. Stdout gets the tables, stderr the progress.
"""

from __future__ import annotations

import argparse
import copy
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

import msgspec
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _svg import Series, plot  # noqa: E402

from esper_engine.config import PPOConfig, TrainingConfig  # noqa: E402
from esper_engine.contracts import (  # noqa: E402
    EpochSummary,
    Event,
    GovernorRollback,
    Op,
    RunFinished,
    RunStarted,
    RunStatus,
    SeedStage,
    SeedTransition,
)
from esper_engine.env_runtime import EnvRuntime  # noqa: E402
from esper_engine.model import MorphogeneticModel, create_model  # noqa: E402
from esper_engine.policy.policy_file import write_policy_file  # noqa: E402
from esper_engine.policy.rewards import capacity_rent  # noqa: E402
from esper_engine.tasks import Task, load_task  # noqa: E402
from esper_engine.trainer import VectorizedTrainer  # noqa: E402

TUNING_SEEDS = (0, 1, 2)
HELD_OUT_SEEDS = (3, 4, 5)
TRAIN_SEED = 0  # the task the PPO agents train on
DEFAULT_WIDTHS = (3, 6, 12)
OPS = tuple(Op)


@dataclass(frozen=True)
class Profile:
    """The study's size: the budget of every evaluated episode, and the agents' training."""

    name: str
    epochs: int
    batches_per_epoch: int
    seeds: tuple[int, ...]
    widths: tuple[tuple[int, ...], ...]
    train_envs: int  # envs per PPO round
    demo_rounds: int
    imitation_rounds: int
    free_rounds: int  # rounds at imitation weight 0 after the decay

    @property
    def rounds(self) -> int:
        return self.demo_rounds + self.imitation_rounds + self.free_rounds


_DEFAULTS = TrainingConfig()
FULL = Profile(
    "full",
    _DEFAULTS.epochs,
    _DEFAULTS.batches_per_epoch,
    TUNING_SEEDS + HELD_OUT_SEEDS,
    ((3, 6, 12), (4, 8, 16), (5, 10, 20)),
    train_envs=4,
    demo_rounds=2,
    imitation_rounds=4,
    free_rounds=4,
)
QUICK = Profile(
    "quick",
    _DEFAULTS.epochs,
    20,
    (0, 3),
    ((3, 6, 12), (5, 10, 20)),
    train_envs=2,
    demo_rounds=1,
    imitation_rounds=2,
    free_rounds=2,
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


def _signature(model: MorphogeneticModel) -> tuple:
    """What decides a training step's cost: which seeds run (stage) and of what kind."""
    return tuple((str(s.stage), s.blueprint) for s in model.slot_states())


class FlopCounter:
    """FLOPs of one training step (forward + backward of a batch) per model configuration."""

    def __init__(self, task: Task, batch_size: int) -> None:
        self.x = task.prepare(task.train_x[:batch_size])
        self.y = task.train_y[:batch_size]
        self.task = task
        self._cache: dict[tuple, int] = {}

    def step_flops(self, model: MorphogeneticModel) -> int:
        key = (model.host_param_count(), _signature(model))
        if key not in self._cache:
            callback, model.on_transition = model.on_transition, None
            try:
                clone = copy.deepcopy(model)  # the run's own model, BatchNorm stats and all, stays
            finally:
                model.on_transition = callback
            clone.train()
            with FlopCounterMode(display=False) as counter:
                self.task.loss(clone(self.x), self.y).backward()
            self._cache[key] = counter.get_total_flops()
        return self._cache[key]


class StudyEnvs:
    """The study's env factory (the trainer's public seam): a host of chosen widths for the
    static arms (None: the default host); keeps the envs so the FLOP count can read env 0."""

    def __init__(self, widths: tuple[int, ...] | None = None) -> None:
        self.widths = widths
        self.envs: list[EnvRuntime] = []

    def __call__(self, index: int, config: TrainingConfig, task: Task) -> EnvRuntime:
        if self.widths is None or self.widths == DEFAULT_WIDTHS:
            env = EnvRuntime(index, config, task)
        else:
            env = WideHostEnv(index, config, task, self.widths)
        self.envs.append(env)
        return env


class StudySink(EpisodeSink):
    """An ``EpisodeSink`` that also counts env 0's training FLOPs, epoch by epoch: the model as
    RunStarted finds it trains the first epoch, the model as an EpochSummary finds it (after
    the epoch's action) the next. Neither instrument changes what the run computes."""

    def __init__(self, envs: StudyEnvs, task: Task, config: TrainingConfig) -> None:
        super().__init__()
        self._envs = envs
        self._config = config
        self._flops = FlopCounter(task, config.batch_size)
        self.train_flops = 0

    def emit(self, event: Event) -> None:
        super().emit(event)
        next_epoch = isinstance(event, RunStarted) or (
            isinstance(event, EpochSummary)
            and event.env == 0
            and event.epoch < self._config.epochs - 1
        )
        if next_epoch:
            flops = self._flops.step_flops(self._envs.envs[0].model)
            self.train_flops += flops * self._config.batches_per_epoch


class WideHostEnv(EnvRuntime):
    """An env whose host has other block widths (the static arms of other sizes)."""

    def __init__(self, index: int, config: TrainingConfig, task: Task, widths: tuple[int, ...]):
        self.widths = widths
        super().__init__(index, config, task)

    def _new_model(self) -> MorphogeneticModel:
        init_seed = (self.config.seed * 1000 + self.index) * 1000 + self.episodes_started
        with torch.random.fork_rng(devices=[]):  # as EnvRuntime: the same init stream
            torch.manual_seed(init_seed)
            return create_model(
                self.task, self.config.device, slots=self.config.slots, widths=self.widths
            )


# --- one evaluated episode ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One arm on one seed: the reported episode's accuracy, size, cost and choices."""

    seed: int
    final: float
    best: float
    germinated: int
    fossilized: int
    host_params: int
    seed_params: int
    train_flops: int
    ops: dict[str, int]
    seconds: float

    @property
    def params(self) -> int:
        return self.host_params + self.seed_params


def base_config(profile: Profile, policy: str, seed: int, **overrides: object) -> TrainingConfig:
    """Everything but the policy equal across arms (one env, the defaults' budget)."""
    fields: dict = dict(
        n_envs=1,
        episodes=1,
        epochs=profile.epochs,
        batches_per_epoch=profile.batches_per_epoch,
        policy=policy,
        seed=seed,
        batch_stats_every=0,
        checkpoint_every=0,
    )
    fields.update(overrides)
    return TrainingConfig(**fields)


def _run(trainer: VectorizedTrainer, label: str) -> None:
    finished = trainer.run()
    if finished.status != RunStatus.COMPLETED:
        raise RuntimeError(f"{label} did not complete: {finished.status}: {finished.error}")


def _ops(summaries: list[EpochSummary], epochs: int) -> dict[str, int]:
    """The ops chosen in one env's episode (no action follows the last epoch)."""
    return dict(Counter(str(s.last_op) for s in summaries if s.epoch < epochs - 1))


def evaluate(
    arm: str, profile: Profile, seed: int, task: Task, config: TrainingConfig, widths=None
) -> RunResult:
    started = time.perf_counter()
    if config.episodes != 1:
        raise ValueError("an evaluated arm is one episode (the FLOP count reads one host)")
    envs = StudyEnvs(widths)
    sink = StudySink(envs, task, config)
    trainer = VectorizedTrainer(
        config, sink, task=task, run_id=f"growth-{arm}-{seed}", env_factory=envs
    )
    _run(trainer, f"{arm}, seed {seed}")
    final = sink.summaries[-1]
    return RunResult(
        seed=seed,
        final=final.val_accuracy,
        best=max(s.val_accuracy for s in sink.summaries),
        germinated=len(sink.germinations),
        fossilized=sum(slot.stage == SeedStage.FOSSILIZED for slot in final.slots),
        host_params=final.host_params,
        seed_params=final.seed_params,
        train_flops=sink.train_flops,
        ops=_ops(sink.summaries, profile.epochs),
        seconds=time.perf_counter() - started,
    )


# --- training an agent ---------------------------------------------------------------------


@dataclass
class Training:
    """One agent's training run: its per-round figures, its wall-clock time and its file."""

    label: str
    rounds: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    policy_file: str = ""


def train_agent(
    label: str, profile: Profile, task: Task, ppo: PPOConfig, out_dir: Path
) -> Training:
    """PPO training on the training seed's task; every round's figures, the agent saved."""
    started = time.perf_counter()
    config = base_config(
        profile, "ppo", TRAIN_SEED, n_envs=profile.train_envs, episodes=profile.rounds, ppo=ppo
    )
    sink = EpisodeSink()
    trainer = VectorizedTrainer(config, sink, task=task, run_id=f"growth-train-{label}")
    _run(trainer, f"{label} training")
    driver = trainer.driver
    assert driver is not None  # one process: the trainer holds the policy itself
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


def width_label(widths: tuple[int, ...]) -> str:
    return "static " + "-".join(map(str, widths))


def run_study(profile: Profile, seeds: tuple[int, ...], out_dir: Path) -> dict:
    started = time.perf_counter()
    tasks = {seed: load_task("synthetic-images", seed=seed) for seed in {*seeds, TRAIN_SEED}}
    trainings = {
        "ppo": train_agent(
            "ppo", profile, tasks[TRAIN_SEED], kickstart_config(profile, 0), out_dir
        ),
        "ppo_scratch": train_agent(
            "ppo_scratch", profile, tasks[TRAIN_SEED], scratch_config(profile, 0), out_dir
        ),
    }
    for name, training in trainings.items():
        _progress(started, f"{name} trained: {profile.rounds} rounds in {training.seconds:.0f}s")
    arms: dict[str, tuple[dict, tuple[int, ...] | None]] = {}
    for widths in profile.widths:
        arms[width_label(widths)] = ({"policy": "static"}, widths)
    arms["heuristic"] = ({"policy": "heuristic"}, None)
    for name, training in trainings.items():
        arms[name] = ({"policy": "ppo", "ppo": eval_ppo(training.policy_file, True)}, None)
        arms[f"{name}_sampled"] = (
            {"policy": "ppo", "ppo": eval_ppo(training.policy_file, False)},
            None,
        )
    results: dict[str, list[RunResult]] = {arm: [] for arm in arms}
    for seed in seeds:
        for arm, (overrides, widths) in arms.items():
            overrides = dict(overrides)
            config = base_config(profile, overrides.pop("policy"), seed, **overrides)
            result = evaluate(arm, profile, seed, tasks[seed], config, widths)
            results[arm].append(result)
            _progress(
                started,
                f"{arm:<22} seed {seed}: final {result.final:.3f}, "
                f"{result.params} params, {result.train_flops / 1e9:.2f} GFLOP, "
                f"{result.germinated} germinated, {result.fossilized} fossilized",
            )
    return summarise(profile, seeds, results, trainings, time.perf_counter() - started)


def _progress(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:6.0f}s] {message}", file=sys.stderr, flush=True)


def _mean(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.mean(values) if values else math.nan


def wait_share(ops: dict[str, int]) -> float:
    return ops.get(str(Op.WAIT), 0) / max(sum(ops.values()), 1)


def summarise(
    profile: Profile,
    seeds: tuple[int, ...],
    results: dict[str, list[RunResult]],
    trainings: dict[str, Training],
    seconds: float,
) -> dict:
    static = width_label(DEFAULT_WIDTHS)
    held_out = [s for s in seeds if s in HELD_OUT_SEEDS]
    figures: dict = {
        "profile": profile.name,
        "seeds": list(seeds),
        "held_out_seeds": held_out,
        "epochs": profile.epochs,
        "batches_per_epoch": profile.batches_per_epoch,
        "train_envs": profile.train_envs,
        "rounds": profile.rounds,
        "demo_rounds": profile.demo_rounds,
        "imitation_rounds": profile.imitation_rounds,
        "free_rounds": profile.free_rounds,
        "static_acc": _mean(r.final for r in results[static]),
        "heuristic_acc": _mean(r.final for r in results["heuristic"]),
        "ppo_acc": _mean(r.final for r in results["ppo"]),
        "ppo_sampled_acc": _mean(r.final for r in results["ppo_sampled"]),
        "ppo_scratch_acc": _mean(r.final for r in results["ppo_scratch"]),
        "ppo_scratch_sampled_acc": _mean(r.final for r in results["ppo_scratch_sampled"]),
        "arms": {},
        "training": {},
    }
    for arm, runs in results.items():
        figures["arms"][arm] = {
            "acc": _mean(r.final for r in runs),
            "acc_held_out": _mean(r.final for r in runs if r.seed in HELD_OUT_SEEDS),
            "wait_share": _mean(wait_share(r.ops) for r in runs),
            "runs": [{**asdict(r), "params": r.params} for r in runs],
        }
    for name, training in trainings.items():
        free = [r for r in training.rounds if r.get("phase") == "ppo" and not r["imitation_weight"]]
        figures["training"][name] = {
            "seconds": round(training.seconds, 1),
            "rounds": training.rounds,
            "max_explained_variance": max(
                (r["explained_variance"] for r in training.rounds if "explained_variance" in r),
                default=math.nan,
            ),
            "wait_share_after_imitation": _mean(r.get("share_WAIT") for r in free),
        }
    figures["training_seconds"] = round(sum(t.seconds for t in trainings.values()), 1)
    demo = [r for r in trainings["ppo"].rounds if r.get("phase") in ("demo", "clone")]
    figures["heuristic_wait_share_in_training"] = _mean(r.get("share_WAIT") for r in demo)
    figures["criteria"] = criteria(results, figures, held_out, static)
    figures["machine"] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seconds": round(seconds, 1),
        "load_average": os.getloadavg()[0],
    }
    return figures


def criteria(results: dict, figures: dict, held_out: list[int], static: str) -> dict:
    """Issue 16's done-when figures on the held-out seeds, paired per seed."""

    def on(arm: str) -> dict[int, float]:
        return {r.seed: r.final for r in results[arm] if r.seed in held_out}

    ppo, heuristic, base = on("ppo"), on("heuristic"), on(static)
    vs_heuristic = {s: 100 * (ppo[s] - heuristic[s]) for s in held_out}
    vs_static = {s: 100 * (ppo[s] - base[s]) for s in held_out}
    kick = figures["training"]["ppo"]
    heuristic_wait = _mean(wait_share(r.ops) for r in results["heuristic"])
    return {
        "ppo_minus_heuristic_points": vs_heuristic,
        "ppo_minus_static_points": vs_static,
        "ppo_within_1_5_of_heuristic": bool(held_out)
        and all(v >= -1.5 for v in vs_heuristic.values()),
        "ppo_static_plus_3": bool(held_out) and all(v >= 3.0 for v in vs_static.values()),
        "training_minutes": kick["seconds"] / 60,
        "training_within_30_min": kick["seconds"] <= 30 * 60,
        "explained_variance_above_0_5": kick["max_explained_variance"] > 0.5,
        "heuristic_wait_share": heuristic_wait,
        "ppo_wait_share_after_imitation": kick["wait_share_after_imitation"],
        "ppo_eval_wait_share": figures["arms"]["ppo"]["wait_share"],
        "wait_within_10_points": abs(kick["wait_share_after_imitation"] - heuristic_wait) <= 0.10,
    }


# --- output ----------------------------------------------------------------------------------


def tables(figures: dict) -> str:
    arms = figures["arms"]
    seeds = figures["seeds"]
    lines = [
        f"synthetic-images, {figures['epochs']} epochs x {figures['batches_per_epoch']} batches, "
        f"one env; PPO trained {figures['rounds']} rounds x {figures['train_envs']} envs "
        f"(kickstarted: {figures['demo_rounds']} demonstration, {figures['imitation_rounds']} "
        f"decaying imitation, {figures['free_rounds']} free)",
        "",
        "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean 0-2 | mean 3-5 "
        "| params (mean) | training GFLOP (mean) | WAIT share |",
        "|---|" + "---|" * (len(seeds) + 5),
    ]
    for arm, data in arms.items():
        runs = data["runs"]
        tuning = [r["final"] for r in runs if r["seed"] in TUNING_SEEDS]
        lines.append(
            f"| {arm} | "
            + " | ".join(f"{r['final']:.3f}" for r in runs)
            + f" | {_mean(tuning):.3f} | {data['acc_held_out']:.3f} | "
            f"{_mean(r['params'] for r in runs):,.0f} | "
            f"{_mean(r['train_flops'] for r in runs) / 1e9:.2f} | {data['wait_share']:.2f} |"
        )
    lines += [
        "",
        "| round | phase | imitation weight | final acc | return (acc, rent, penalty) "
        "| WAIT | GERM | PRUNE | FOSS | entropy | approx-KL | clip frac | EV | agree (taken, "
        "argmax) |",
        "|---|" * 1 + "---|" * 13,
    ]
    for name in ("ppo", "ppo_scratch"):
        for r in figures["training"][name]["rounds"]:
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
    c = figures["criteria"]
    lines += [
        "",
        f"held out, ppo - heuristic (points): {_pp(c['ppo_minus_heuristic_points'])}; "
        f">= -1.5 each: {c['ppo_within_1_5_of_heuristic']}",
        f"held out, ppo - static (points): {_pp(c['ppo_minus_static_points'])}; "
        f">= +3 each: {c['ppo_static_plus_3']}",
        f"kickstarted training {c['training_minutes']:.1f} min (<= 30: "
        f"{c['training_within_30_min']}); max EV > 0.5: {c['explained_variance_above_0_5']}",
        f"WAIT share: heuristic {c['heuristic_wait_share']:.2f}, ppo after imitation "
        f"{c['ppo_wait_share_after_imitation']:.2f} (training), {c['ppo_eval_wait_share']:.2f} "
        f"(evaluation); within 10 points: {c['wait_within_10_points']}",
    ]
    return "\n".join(lines)


def _f(r: dict, key: str, digits: int = 2) -> str:
    value = r.get(key)
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _pp(values: dict) -> str:
    return ", ".join(f"seed {s} {v:+.1f}" for s, v in values.items())


def write_plots(figures: dict, out_dir: Path) -> list[Path]:
    markers = {"heuristic": "square", "ppo": "triangle"}
    arms = {a: d for a, d in figures["arms"].items() if not a.endswith("_sampled")}
    series_flops, series_params = [], []
    for arm, data in arms.items():
        runs = data["runs"]
        marker = markers.get(arm, "circle")
        series_flops.append(Series(arm, [(r["train_flops"], r["final"]) for r in runs], marker))
        series_params.append(Series(arm, [(r["params"], r["final"]) for r in runs], marker))
    paths = [out_dir / "growth_acc_vs_flops.svg", out_dir / "growth_acc_vs_params.svg"]
    paths[0].write_text(
        plot(
            series_flops,
            title="final accuracy vs training FLOPs (one point per arm and seed)",
            x_label="training FLOPs of the episode (forward + backward)",
            y_label="final validation accuracy",
            log_x=True,
        )
    )
    paths[1].write_text(
        plot(
            series_params,
            title="final accuracy vs parameters at the end (one point per arm and seed)",
            x_label="parameters (host + seeds)",
            y_label="final validation accuracy",
        )
    )
    curve = []
    for name in ("ppo", "ppo_scratch"):
        rounds = figures["training"][name]["rounds"]
        curve.append(Series(f"{name}: final acc", [(r["round"], r["final_acc"]) for r in rounds]))
    for name in ("ppo",):
        rounds = figures["training"][name]["rounds"]
        curve.append(
            Series(
                f"{name}: EV",
                [
                    (r["round"], r["explained_variance"])
                    for r in rounds
                    if "explained_variance" in r
                ],
            )
        )
        curve.append(
            Series(
                f"{name}: imitation w",
                [(r["round"], r.get("imitation_weight", 0.0)) for r in rounds],
            )
        )
    paths.append(out_dir / "growth_ppo_learning_curve.svg")
    paths[2].write_text(
        plot(
            curve,
            title="PPO learning curve (training rounds, seed 0's task)",
            x_label="round",
            y_label="final acc (mean over envs) / EV / weight",
            joined=True,
        )
    )
    return paths


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/growth.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="20 batches per epoch, seeds 0 and 3, 5 rounds"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--svg-dir", type=Path, default=None, help="write the plots here (default: none)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument(
        "--seeds", default=None, help="comma-separated evaluation seeds (default: the profile's)"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.seeds is not None:
        try:
            args.seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        except ValueError:
            parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
        if not args.seeds or len(set(args.seeds)) != len(args.seeds):
            parser.error("--seeds: at least one seed, none repeated")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # One thread: results are reproducible run to run (thread counts change float reductions).
    torch.set_num_threads(args.threads)
    profile = QUICK if args.quick else FULL
    seeds = args.seeds or profile.seeds
    with tempfile.TemporaryDirectory(prefix="growth-") as tmp:
        figures = run_study(profile, seeds, Path(tmp))
    print(tables(figures))
    if args.svg_dir is not None:
        args.svg_dir.mkdir(parents=True, exist_ok=True)
        for path in write_plots(figures, args.svg_dir):
            print(f"wrote {path}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=_jsonable) + "\n")
    return 0


def _jsonable(value: object) -> object:
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
