"""Performance figures of the engine and the console, each measured side by side on this machine.

    python bench/run.py [--quick] [--json PATH] [--threads N] [--only FIGURE,...]
                        [--sizes tiny,base]

Prints a table (figure, value, CPU-time ratio, target, pass/fail) on stdout and progress on
stderr. Every figure is a ratio or a rate from repeated, interleaved, counterbalanced measurements
after a warm-up (see ``_timing.py``); see README.md for what each figure compares. The engine and
attribution figures are measured at each host size of ``--sizes`` (``_base`` figures: the
``base`` preset, Transformer and CNN).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import median

import torch
from _attribution import AttributionTimer, blending_model
from _checkpoint import checkpoint_work, with_checkpoints
from _console import SIZE, ConsoleRun, TmuxRunner, tmux_missing_reason
from _long_runs import measure as measure_long_runs
from _replay import build_recording, decode_seconds, ingest_seconds
from _scaling import ScalingShape, run_once
from _throughput import (
    RunShape,
    bare_loop_seconds,
    fixed_val_batches,
    recorder_seconds,
    trainer_config,
    trainer_seconds,
)
from _timing import Timed, cpus, interleave, median_ratio, spread, walls

from esper_engine.config import HostConfig, TrainingConfig
from esper_engine.host_presets import resolve_host
from esper_engine.tasks import Task, load_task

REPLAY_EVENTS = 100_000


@dataclass(frozen=True)
class Profile:
    """How long and how often each figure is measured."""

    name: str
    engine: RunShape  # engine_overhead and recorder_overhead runs
    engine_repeats: int
    console: RunShape  # console_overhead runs, 4 envs (each is a fresh process)
    console_repeats: int
    attribution_repeats: int
    replay_repeats: int
    scaling: ScalingShape  # proc_scaling runs (each a fresh process, or torchrun and 2 ranks)
    scaling_repeats: int
    # console_overhead_32_envs runs: as many env-batches as ``console``, in fewer, shorter
    # epochs with a smaller validation set (32 envs validate 8x as much per epoch).
    many_envs: RunShape = RunShape(epochs=3, batches_per_epoch=5, n_envs=32, val_batches=2)
    many_envs_repeats: int = 3
    small_terminal_repeats: int = 2  # console runs at 80x24 for terminal_bytes_per_s_80x24
    # Warms caches, the allocator and imports before the first kept round of a run figure.
    warmup_shape: RunShape = RunShape(epochs=1, batches_per_epoch=5)
    # The base host (CNN 32-64-128): its batches take ~25x as long as tiny's, so fewer of them.
    engine_base: RunShape = RunShape(epochs=2, batches_per_epoch=8, host="base")
    engine_base_repeats: int = 3
    attribution_base_repeats: int = 5


# Console runs are whole processes timed over the trainer's window: with 2 x 15 batches (1.5 s)
# the per-round ratios spread 0.87-1.15, too wide to read a 5% target from; 3 x 40 still spreads
# 0.91-1.07, so the full profile runs twice as long and more rounds.
QUICK = Profile(
    "quick",
    RunShape(epochs=2, batches_per_epoch=25),
    5,
    RunShape(epochs=3, batches_per_epoch=40),
    5,
    9,
    3,
    ScalingShape(epochs=3, batches_per_epoch=30),
    2,
)
FULL = Profile(
    "full",
    RunShape(epochs=3, batches_per_epoch=40),
    7,
    RunShape(epochs=6, batches_per_epoch=40),
    7,
    21,
    7,
    ScalingShape(epochs=4, batches_per_epoch=60),
    4,
    many_envs=RunShape(epochs=3, batches_per_epoch=10, n_envs=32, val_batches=2),
    many_envs_repeats=5,
    small_terminal_repeats=3,
    engine_base=RunShape(epochs=3, batches_per_epoch=15, host="base"),
    engine_base_repeats=5,
    attribution_base_repeats=9,
)
KIB = 1024.0
SMALL_TERMINAL = (80, 24)


@dataclass(frozen=True)
class Target:
    key: str
    threshold: float
    at_least: bool  # True: value >= threshold passes; False: value <= threshold passes
    unit: str = ""

    def describe(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.threshold:g}{self.unit}"

    def passed(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.threshold if self.at_least else value <= self.threshold


TARGETS = (
    Target("engine_overhead", 0.90, True),
    Target("engine_overhead_base", 0.97, True),
    Target("attribution_cost", 2.5, False),
    Target("attribution_cost_base_cnn", 1.5, False),
    Target("attribution_cost_base_transformer", 1.5, False),
    Target("console_overhead", 0.95, True),
    Target("console_overhead_32_envs", 0.95, True),
    Target("console_dropped_events", 0, False),
    Target("terminal_bytes_per_s_80x24", 5 * KIB, False, " B/s"),
    Target("terminal_bytes_per_s_120x40", 5 * KIB, False, " B/s"),
    Target("recorder_overhead", 0.99, True),
    Target("checkpoint_overhead", 0.98, True),
    Target("checkpoint_overhead_base", 0.98, True),
    Target("replay_decode_events_per_s", 500_000, True),
    Target("replay_ingest_s", 2.0, False, " s"),
    Target("proc_scaling", 1.7, True),
    Target("exchange_share", 0.01, False),
    Target("ps_50_recordings", 1.2, False),  # CPU of `ps`, x that of an empty directory
    Target("replay_step_back_s_200k", 0.05, False, " s"),  # CPU
    Target("replay_memory_200k", 1.3, False),  # peak RSS, x that of a short replay
)
FIGURES = ("engine", "attribution", "console", "replay", "scaling", "long_runs")  # --only
SIZES = ("tiny", "base")  # --sizes choices: host presets the engine and attribution run at
# Base attribution per host kind: task, blueprint, validation set (batch_size, val_batches) and
# attribution_batches (attributing on that many of them, every epoch), chosen from measurements
# here. The Transformer's set is smaller only so that a round takes seconds, not minutes, on one
# CPU thread (a base plain pass over 8 batches of 128 sequences is ~1.4 TFLOP): the cost is a
# ratio of passes over the same set, and attribution_batches a share of it.
BASE_ATTRIBUTION = {
    "cnn": ("synthetic-images", "conv_light", (64, 8), 4),
    "transformer": ("synthetic-stories", "lora", (16, 4), 1),
}
CONSOLE_KEYS = (
    "console_overhead",
    "console_overhead_32_envs",
    "console_dropped_events",
    "terminal_bytes_per_s_80x24",
    "terminal_bytes_per_s_120x40",
)


class Bench:
    """Holds the figures, their details and why a figure is missing."""

    def __init__(self, profile: Profile, threads: int) -> None:
        self.profile, self.threads = profile, threads
        self.values: dict[str, float | None] = {t.key: None for t in TARGETS}
        self.cpu_values: dict[str, float] = {}  # the same ratio from process CPU seconds
        self.details: dict[str, object] = {}
        self.reasons: dict[str, str] = {}
        self.notes: list[str] = []  # printed under the table
        self.errors = 0
        self._task: Task | None = None
        self._t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def say(self, message: str) -> None:
        print(f"[bench {self.elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)

    @property
    def task(self) -> Task:
        if self._task is None:
            self.say("loading task synthetic-images ...")
            self._task = load_task("synthetic-images", seed=0)
        return self._task

    def ratio(self, key: str, times: dict[str, list[Timed]], num: str, den: str) -> None:
        """``key``: the median per-round ratio num/den of wall seconds, and of CPU seconds."""
        self.values[key] = median_ratio(walls(times[num]), walls(times[den]))
        self.cpu_values[key] = median_ratio(cpus(times[num]), cpus(times[den]))

    def run_figure(self, keys: tuple[str, ...], measure: Callable[[], None]) -> None:
        """Measure one group of figures; a failure leaves them null with a one-line reason."""
        try:
            measure()
        except Exception as exc:  # noqa: BLE001 - reported in the table and the JSON
            self.errors += 1
            for key in keys:
                self.reasons[key] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            self.say(f"{', '.join(keys)} failed: {self.reasons[keys[0]]}")

    # --- the figures --------------------------------------------------------------------------

    def engine(self, size: str = "tiny") -> None:
        """engine_overhead (trainer / bare loop), recorder_overhead (recording on / off) and
        checkpoint_overhead (recording with a checkpoint every epoch / recording only), at the
        ``size`` host (``_base`` figures for base; base has no recorder figure)."""
        base = size == "base"
        shape = self.profile.engine_base if base else self.profile.engine
        repeats = self.profile.engine_base_repeats if base else self.profile.engine_repeats
        task, suffix = self.task, "_base" if base else ""
        config = trainer_config(shape)
        self.say(f"engine: {shape.label} per run, {repeats} rounds")
        sides = {
            "bare_loop": lambda c: bare_loop_seconds(c, task),
            "trainer_recording": lambda c: trainer_seconds(c, task, record=True),
            "trainer_no_recording": lambda c: trainer_seconds(c, task, record=False),
            "trainer_checkpoints": lambda c: trainer_seconds(
                with_checkpoints(c, 1), task, record=True
            ),
        }
        if base:  # the recorder's cost does not grow with the host: measured at tiny only
            del sides["trainer_no_recording"]
        warm = trainer_config(replace(self.profile.warmup_shape, host=shape.host))
        for name, side in sides.items():
            self.say(f"  warm-up {name}: {side(warm)}")
        times = interleave(
            {name: (lambda side=side: side(config)) for name, side in sides.items()},
            repeats,
            warmup=0,
            progress=self.say,
        )
        bare, rec = times["bare_loop"], times["trainer_recording"]
        ckpt = times["trainer_checkpoints"]
        # Same samples on every side, so a throughput ratio is the inverse ratio of times.
        self.ratio(f"engine_overhead{suffix}", times, "bare_loop", "trainer_recording")
        if not base:
            self.ratio("recorder_overhead", times, "trainer_no_recording", "trainer_recording")
        self.ratio(
            f"checkpoint_overhead{suffix}", times, "trainer_recording", "trainer_checkpoints"
        )
        samples = shape.train_samples
        self.details[f"engine{suffix}"] = {
            "shape": asdict(shape),
            "samples_per_run": samples,
            "bare_loop_samples_per_s": samples / median(walls(bare)),
            "trainer_samples_per_s": samples / median(walls(rec)),
            **_timed_details(times),
        }
        if not base:
            self.details["recorder"] = self._recorder_work(config, task, median(walls(rec)))
        work = checkpoint_work(config, task, median(walls(ckpt)))
        self.say(
            f"  checkpoint alone: {work['bytes'] / 1e6:.2f} MB in "
            f"{work['seconds_each'] * 1e3:.1f} ms, {work['share_of_run']:.2%} of a run"
        )
        self.details[f"checkpoint{suffix}"] = work

    def _recorder_work(self, config: TrainingConfig, task: Task, run_s: float) -> dict:
        """The recorder's own work in a run, timed alone: a run-to-run spread of a few percent
        hides a cost this small in ``recorder_overhead``, so this says what it actually is."""
        events: list = []
        trainer_seconds(config, task, record=False, events=events)
        seconds = median(walls([recorder_seconds(events) for _ in range(5)]))
        share = seconds / run_s
        self.say(
            f"  recorder alone: {len(events)} events in {seconds * 1e3:.1f} ms, "
            f"{share:.2%} of a run's {run_s:.2f} s"
        )
        return {"events_per_run": len(events), "seconds_per_run": seconds, "share_of_run": share}

    def attribution(self, size: str = "tiny") -> None:
        """attribution_cost: one exact attribution (3 seeds) / one plain validation pass; at
        base, for each host kind, both on every validation batch and as a base run attributes
        (``BASE_ATTRIBUTION``: on the first N batches)."""
        if size == "tiny":
            self._attribution(
                "attribution_cost",
                self.task,
                "conv_light",
                None,
                self.profile.engine,
                0,
                self.profile.attribution_repeats,
            )
            return
        for kind, (task_name, blueprint, (batch, val_batches), batches) in BASE_ATTRIBUTION.items():
            shape = replace(self.profile.engine, batch_size=batch, val_batches=val_batches)
            task = self.task if task_name == self.task.name else load_task(task_name, seed=0)
            spec = resolve_host(HostConfig(preset="base"), task.name, task.host_kind)
            repeats = self.profile.attribution_base_repeats
            key = f"attribution_cost_base_{kind}"
            self._attribution(key, task, blueprint, spec, shape, batches, repeats)

    def _attribution(
        self,
        key: str,
        task: Task,
        blueprint: str,
        spec,
        shape: RunShape,
        batches: int,
        repeats: int,
    ) -> None:
        """``key``: attribution on ``batches`` of the validation set (0: all) / a plain pass
        over all of it; with ``batches``, attribution on all of it is timed in the same rounds
        (``key``_all_batches in the details: what ``attribution_batches`` saves)."""
        model = blending_model(task, blueprint, spec=spec)
        val = fixed_val_batches(task, trainer_config(shape))
        timer = AttributionTimer(model, task, val, batches)
        size = "tiny" if spec is None else f"{spec.kind} {spec.sizes()}"
        self.say(
            f"{key}: {size} host, 3 active {blueprint} seeds, attributed on "
            f"{len(timer.attributed)} of {len(val)} validation batches, {repeats} rounds"
        )
        sides = {"plain_pass": timer.plain_pass, "attribution": timer}
        if batches:
            every = AttributionTimer(model, task, val, 0)

            def on_every_batch() -> Timed:
                every.last_plain_s = timer.last_plain_s  # the plain pass both are handed
                return every()

            sides["attribution_all_batches"] = on_every_batch
        times = interleave(sides, repeats, warmup=1)
        plain = times["plain_pass"]
        for side in sides.keys() - {"plain_pass"}:
            wall, cpu = (median_ratio(clock(times[side]), clock(plain)) for clock in (walls, cpus))
            self.say(f"  {side}: {wall:.3f} validation passes (cpu ratio {cpu:.3f})")
            if side == "attribution":
                self.values[key], self.cpu_values[key] = wall, cpu
            else:  # what the subset trades: its values against those of every batch
                gaps = [abs(timer.shapley[slot] - value) for slot, value in every.shapley.items()]
                self.details[f"{key}_all_batches"] = {
                    "wall_ratio": wall,
                    "cpu_ratio": cpu,
                    "shapley_all": every.shapley,
                    "shapley_subset": timer.shapley,
                    "max_abs_gap": max(gaps),
                }
                self.say(
                    f"  shapley on every batch {_rounded(every.shapley)}, on "
                    f"{batches}: {_rounded(timer.shapley)}"
                )
        reported = timer.reported[1:]  # without the warm-up round
        self.details[key] = {
            "host": size,
            "blueprint": blueprint,
            "val_batches": len(val),
            "attribution_batches": len(timer.attributed),
            "val_samples": sum(len(y) for _, y in val),
            # The engine's own figure: its solve time over the plain pass handed to it.
            "engine_reported_cost_ratio": median(reported),
            **_timed_details(times),
        }

    def console(self) -> None:
        """console_overhead at 4 and 32 envs (the console in a tmux pty / the same run
        --headless, 120x40), the events its queue dropped in those runs, and the bytes per
        second it wrote to the terminal with 4 envs at 120x40 and at 80x24."""
        missing = tmux_missing_reason()
        if missing is not None:
            for key in CONSOLE_KEYS:
                self.reasons[key] = missing
            self.say(f"console figures skipped: {missing}")
            return
        profile = self.profile
        with tempfile.TemporaryDirectory(prefix="overwatch-bench-") as tmp:
            runner = TmuxRunner(Path(tmp), threads=self.threads)
            try:
                # Each run is a fresh process and only the trainer's window is timed, so one
                # short console run is warm-up enough (page cache) and proves the path works.
                self.say(f"  warm-up console: {runner.run(profile.warmup_shape, False)}")
                four = self._overhead(runner, profile.console, profile.console_repeats)
                many = self._overhead(runner, profile.many_envs, profile.many_envs_repeats)
                self.say(
                    f"console: 4 envs at {SMALL_TERMINAL[0]}x{SMALL_TERMINAL[1]}, "
                    f"{profile.small_terminal_repeats} runs"
                )
                small = [
                    runner.run(profile.console, False, SMALL_TERMINAL)
                    for _ in range(profile.small_terminal_repeats)
                ]
                for run in small:
                    self.say(f"  {SMALL_TERMINAL[0]}x{SMALL_TERMINAL[1]}: {run}")
            finally:
                runner.close()
        self.values["console_overhead"] = _overhead_ratio(four)
        self.values["console_overhead_32_envs"] = _overhead_ratio(many)
        # A layout may leave the count out (the 80x24 header does): the runs that show it.
        shown = [
            r.dropped for r in four["console"] + many["console"] + small if r.dropped is not None
        ]
        if shown:
            self.values["console_dropped_events"] = max(shown)
        else:
            self.reasons["console_dropped_events"] = "no console screen showed a dropped count"
        self.values["terminal_bytes_per_s_120x40"] = median(
            run.terminal_bytes_per_s for run in four["console"]
        )
        self.values["terminal_bytes_per_s_80x24"] = median(
            run.terminal_bytes_per_s for run in small
        )
        self.details["console"] = {
            "refresh": "the console's default refresh rate, policy static",
            "4_envs": _console_details(profile.console, four, SIZE),
            "32_envs": _console_details(profile.many_envs, many, SIZE),
            "4_envs_80x24": {
                "samples_per_s": spread([r.samples_per_s for r in small]),
                "terminal_bytes_per_s": spread([r.terminal_bytes_per_s for r in small]),
                "terminal_bytes_per_sample": spread(
                    [r.terminal_bytes_per_s / r.samples_per_s for r in small]
                ),
                "dropped": [r.dropped for r in small],
            },
        }

    def _overhead(self, runner: TmuxRunner, shape: RunShape, repeats: int) -> dict:
        self.say(
            f"console: {shape.n_envs} envs, {shape.epochs} epochs x "
            f"{shape.batches_per_epoch} batches per run, {repeats} rounds of two processes "
            f"in tmux {SIZE[0]}x{SIZE[1]}"
        )
        return interleave(
            {
                "headless": lambda: runner.run(shape, True),
                "console": lambda: runner.run(shape, False),
            },
            repeats,
            warmup=0,
            progress=self.say,
        )

    def replay(self) -> None:
        """replay_decode_events_per_s and replay_ingest_s on a 100k-event recording."""
        with tempfile.TemporaryDirectory(prefix="overwatch-bench-") as tmp:
            path = Path(tmp) / "replay.msgpack"
            self.say(f"replay: writing a {REPLAY_EVENTS}-event recording ...")
            size = build_recording(path, REPLAY_EVENTS)
            latest: list = []

            def decode() -> Timed:
                latest.clear()  # free the previous decode first: a replay decodes once
                timed, events = decode_seconds(path, REPLAY_EVENTS)
                latest.append(events)
                return timed

            times = interleave(
                {"decode": decode, "ingest": lambda: ingest_seconds(latest[0])},
                self.profile.replay_repeats,
                warmup=1,
                progress=self.say,
            )
        decode_s, ingest_s = times["decode"], times["ingest"]
        self.values["replay_decode_events_per_s"] = REPLAY_EVENTS / median(walls(decode_s))
        self.values["replay_ingest_s"] = median(walls(ingest_s))
        self.details["replay"] = {"events": REPLAY_EVENTS, "bytes": size, **_timed_details(times)}

    def long_runs(self) -> None:
        """ps_50_recordings, replay_step_back_s_200k and replay_memory_200k (``_long_runs.py``)."""
        self.say("long runs: 50 recordings for ps, a 200k-event recording ...")
        figures = measure_long_runs(repeats=self.profile.replay_repeats)
        self.values["ps_50_recordings"] = figures.ps_ratio
        self.values["replay_step_back_s_200k"] = figures.step_back_max_s
        self.values["replay_memory_200k"] = figures.memory_ratio
        self.details["long_runs"] = asdict(figures)

    def scaling(self) -> None:
        """proc_scaling (env samples/s of 2 ranks / 1 process, one torch thread each, the same
        envs in total) and exchange_share (rank 0's exchange time / the training window)."""
        shape, rounds = self.profile.scaling, self.profile.scaling_repeats
        self.say(
            f"scaling: {shape.n_envs} envs x {shape.epochs} epochs x "
            f"{shape.batches_per_epoch} batches, 1 process vs 2 ranks, {rounds} rounds"
        )
        load_before = os.getloadavg()
        with tempfile.TemporaryDirectory(prefix="overwatch-bench-") as tmp:
            directory = Path(tmp)
            runs = interleave(
                {
                    "one_process": lambda: run_once(shape, 1, directory, "one"),
                    "two_ranks": lambda: run_once(shape, 2, directory, "two"),
                },
                rounds,
                warmup=0,
                progress=self.say,
            )
        load_after = os.getloadavg()
        one, two = runs["one_process"], runs["two_ranks"]
        ratios = [b.samples_per_s / a.samples_per_s for a, b in zip(one, two, strict=True)]
        self.values["proc_scaling"] = median(ratios)
        self.values["exchange_share"] = median(r.exchange_s / r.window_s for r in two)
        load = "load average (1, 5, 15 min) {:.2f} {:.2f} {:.2f}"
        self.notes.append(
            f"proc_scaling measured at {load.format(*load_before)} before, "
            f"{load.format(*load_after)} after, on {os.cpu_count()} cores"
        )
        self.details["scaling"] = {
            "shape": asdict(shape),
            "ratios": ratios,
            "one_process_samples_per_s": [r.samples_per_s for r in one],
            "two_ranks_samples_per_s": [r.samples_per_s for r in two],
            "two_ranks_exchange_s": [r.exchange_s for r in two],
            "load_average_before": list(load_before),
            "load_average_after": list(load_after),
        }


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 4) for key, value in values.items()}


def _overhead_ratio(runs: dict[str, list[ConsoleRun]]) -> float:
    return median_ratio(
        [r.samples_per_s for r in runs["console"]], [r.samples_per_s for r in runs["headless"]]
    )


def _console_details(
    shape: RunShape, runs: dict[str, list[ConsoleRun]], size: tuple[int, int]
) -> dict[str, object]:
    return {
        "shape": asdict(shape),
        "terminal": f"tmux {size[0]}x{size[1]}",
        **{
            f"{side}_samples_per_s": spread([r.samples_per_s for r in side_runs])
            for side, side_runs in runs.items()
        },
        "console_terminal_bytes_per_s": spread([r.terminal_bytes_per_s for r in runs["console"]]),
        # Bytes follow the trainer's pace (more epochs and batches shown per second): per sample
        # they compare across machines and loads.
        "console_terminal_bytes_per_sample": spread(
            [r.terminal_bytes_per_s / r.samples_per_s for r in runs["console"]]
        ),
        "headless_terminal_bytes_per_s": spread([r.terminal_bytes_per_s for r in runs["headless"]]),
        "console_dropped": [r.dropped for r in runs["console"]],
    }


def _timed_details(times: dict[str, list[Timed]]) -> dict[str, object]:
    """Wall and process CPU seconds per side, for the JSON: CPU well below wall means the
    side waited (I/O, the GIL, other processes); on a VM, time stolen by the host counts as CPU."""
    return {
        f"{name}_s": {"wall": spread(walls(v)), "cpu": spread(cpus(v))} for name, v in times.items()
    }


# --- output -------------------------------------------------------------------------------------


def format_value(value: float | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3f}"


def table(bench: Bench) -> str:
    """One row per figure: the wall-time value (what the target reads), the same ratio from
    CPU seconds where the figure is a ratio of in-process times, the target, the result."""
    rows = [("figure", "value", "cpu ratio", "target", "result")]
    for target in TARGETS:
        value = bench.values[target.key]
        passed = target.passed(value)
        result = "n/a" if passed is None else ("pass" if passed else "FAIL")
        cpu = bench.cpu_values.get(target.key)
        rows.append(
            (
                target.key,
                format_value(value),
                "" if cpu is None else format_value(cpu),
                target.describe(),
                result,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"{key}: null ({reason})" for key, reason in bench.reasons.items()]
    lines += bench.notes
    return "\n".join(lines)


def machine_info(threads: int, argv: list[str]) -> dict[str, object]:
    return {
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/run.py", *argv]),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def report(bench: Bench, machine: dict[str, object]) -> dict[str, object]:
    return {
        **bench.values,
        "cpu_ratios": bench.cpu_values,
        "targets": {t.key: t.describe() for t in TARGETS},
        "passed": {t.key: t.passed(bench.values[t.key]) for t in TARGETS},
        "null_reasons": bench.reasons,
        "profile": bench.profile.name,
        "details": bench.details,
        "machine": machine,
    }


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (under 3 minutes)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads for every side (default 1)"
    )
    parser.add_argument(
        "--only", default=",".join(FIGURES), help=f"comma-separated subset of {', '.join(FIGURES)}"
    )
    parser.add_argument(
        "--sizes",
        default=",".join(SIZES),
        help="host presets the engine and attribution figures run at "
        f"(comma-separated subset of {', '.join(SIZES)})",
    )
    args = parser.parse_args(argv)
    args.sizes = [name.strip() for name in args.sizes.split(",") if name.strip()]
    if not args.sizes or set(args.sizes) - set(SIZES):
        parser.error(f"--sizes: choose from {', '.join(SIZES)}, got {','.join(args.sizes)}")
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def _at_sizes(
    bench: Bench, measure: Callable[[str], None], sizes: list[str], sized: dict, name: str
) -> None:
    """``measure`` at each size, one failure not stopping the next size."""
    for size in sizes:
        bench.run_figure(sized[name, size], lambda size=size: measure(size))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # the in-process sides; subprocesses get OMP_NUM_THREADS
    machine = machine_info(args.threads, argv)
    bench = Bench(QUICK if args.quick else FULL, args.threads)
    sized = {
        ("engine", "tiny"): ("engine_overhead", "recorder_overhead", "checkpoint_overhead"),
        ("engine", "base"): ("engine_overhead_base", "checkpoint_overhead_base"),
        ("attribution", "tiny"): ("attribution_cost",),
        ("attribution", "base"): ("attribution_cost_base_cnn", "attribution_cost_base_transformer"),
    }
    for (_, size), keys in sized.items():
        if size not in args.sizes:
            for key in keys:
                bench.reasons[key] = "not measured (--sizes)"
    groups = {
        "engine": (
            sized["engine", "tiny"] + sized["engine", "base"],
            lambda: _at_sizes(bench, bench.engine, args.sizes, sized, "engine"),
        ),
        "attribution": (
            sized["attribution", "tiny"] + sized["attribution", "base"],
            lambda: _at_sizes(bench, bench.attribution, args.sizes, sized, "attribution"),
        ),
        "console": (CONSOLE_KEYS, bench.console),
        "replay": (("replay_decode_events_per_s", "replay_ingest_s"), bench.replay),
        "scaling": (("proc_scaling", "exchange_share"), bench.scaling),
        "long_runs": (
            ("ps_50_recordings", "replay_step_back_s_200k", "replay_memory_200k"),
            bench.long_runs,
        ),
    }
    for name in FIGURES:
        if name in args.only:
            bench.run_figure(*groups[name])
        else:
            for key in groups[name][0]:
                bench.reasons[key] = "not measured (--only)"
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    machine["seconds"] = round(bench.elapsed, 1)
    print(table(bench))
    if args.json is not None:
        args.json.write_text(json.dumps(report(bench, machine), indent=2) + "\n")
        bench.say(f"wrote {args.json}")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
