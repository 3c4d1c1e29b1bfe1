"""Performance figures of the engine and the console, each measured side by side on this machine.

    python bench/run.py [--quick] [--json PATH] [--threads N] [--only FIGURE,...]

Prints a table (figure, value, target, pass/fail) on stdout and progress on stderr. Every figure
is a ratio or a rate from repeated, interleaved, counterbalanced measurements after a warm-up
(see ``_timing.py``); see README.md for what each figure compares.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median

import torch
from _attribution import AttributionTimer, blending_model
from _checkpoint import checkpoint_work, with_checkpoints
from _console import SIZE, ConsoleRun, TmuxRunner, tmux_missing_reason
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

from esper_engine.config import TrainingConfig
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


# Console runs are whole processes timed over the trainer's window: with 2 x 15 batches (1.5 s)
# the per-round ratios spread 0.87-1.15, too wide to read a 5% target from; 3 x 40 still spreads
# 0.91-1.07, so the full profile runs twice as long and more rounds.
QUICK = Profile("quick", RunShape(epochs=2, batches_per_epoch=25), 5,
                RunShape(epochs=3, batches_per_epoch=40), 5, 9, 3,
                ScalingShape(epochs=3, batches_per_epoch=30), 2)
FULL = Profile("full", RunShape(epochs=3, batches_per_epoch=40), 7,
               RunShape(epochs=6, batches_per_epoch=40), 7, 21, 7,
               ScalingShape(epochs=4, batches_per_epoch=60), 4,
               many_envs=RunShape(epochs=3, batches_per_epoch=10, n_envs=32, val_batches=2),
               many_envs_repeats=5, small_terminal_repeats=3)
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
    Target("attribution_cost", 2.5, False),
    Target("console_overhead", 0.95, True),
    Target("console_overhead_32_envs", 0.95, True),
    Target("console_dropped_events", 0, False),
    Target("terminal_bytes_per_s_80x24", 5 * KIB, False, " B/s"),
    Target("terminal_bytes_per_s_120x40", 5 * KIB, False, " B/s"),
    Target("recorder_overhead", 0.99, True),
    Target("checkpoint_overhead", 0.98, True),
    Target("replay_decode_events_per_s", 500_000, True),
    Target("replay_ingest_s", 2.0, False, " s"),
    Target("proc_scaling", 1.7, True),
    Target("exchange_share", 0.01, False),
)
FIGURES = ("engine", "attribution", "console", "replay", "scaling")  # --only choices
CONSOLE_KEYS = ("console_overhead", "console_overhead_32_envs", "console_dropped_events",
                "terminal_bytes_per_s_80x24", "terminal_bytes_per_s_120x40")


class Bench:
    """Holds the figures, their details and why a figure is missing."""

    def __init__(self, profile: Profile, threads: int) -> None:
        self.profile, self.threads = profile, threads
        self.values: dict[str, float | None] = {t.key: None for t in TARGETS}
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

    def engine(self) -> None:
        """engine_overhead (trainer / bare loop), recorder_overhead (recording on / off) and
        checkpoint_overhead (recording with a checkpoint every epoch / recording only)."""
        shape, task = self.profile.engine, self.task
        config = trainer_config(shape)
        self.say(f"engine: {shape.epochs} epochs x {shape.batches_per_epoch} batches x "
                 f"{shape.n_envs} envs per run, {self.profile.engine_repeats} rounds")
        sides = {
            "bare_loop": lambda c: bare_loop_seconds(c, task),
            "trainer_recording": lambda c: trainer_seconds(c, task, record=True),
            "trainer_no_recording": lambda c: trainer_seconds(c, task, record=False),
            "trainer_checkpoints": lambda c: trainer_seconds(
                with_checkpoints(c, 1), task, record=True
            ),
        }
        warm = trainer_config(self.profile.warmup_shape)
        for name, side in sides.items():
            self.say(f"  warm-up {name}: {side(warm)}")
        times = interleave(
            {name: (lambda side=side: side(config)) for name, side in sides.items()},
            self.profile.engine_repeats, warmup=0, progress=self.say,
        )
        bare, rec, norec, ckpt = (times[n] for n in sides)
        # Same samples on every side, so a throughput ratio is the inverse ratio of times.
        self.values["engine_overhead"] = median_ratio(walls(bare), walls(rec))
        self.values["recorder_overhead"] = median_ratio(walls(norec), walls(rec))
        self.values["checkpoint_overhead"] = median_ratio(walls(rec), walls(ckpt))
        samples = shape.train_samples
        self.details["engine"] = {
            "shape": asdict(shape),
            "samples_per_run": samples,
            "bare_loop_samples_per_s": samples / median(walls(bare)),
            "trainer_samples_per_s": samples / median(walls(rec)),
            **_timed_details(times),
        }
        self.details["recorder"] = self._recorder_work(config, task, median(walls(rec)))
        work = checkpoint_work(config, task, median(walls(ckpt)))
        self.say(f"  checkpoint alone: {work['bytes'] / 1e6:.2f} MB in "
                 f"{work['seconds_each'] * 1e3:.1f} ms, {work['share_of_run']:.2%} of a run")
        self.details["checkpoint"] = work

    def _recorder_work(self, config: TrainingConfig, task: Task, run_s: float) -> dict:
        """The recorder's own work in a run, timed alone: a run-to-run spread of a few percent
        hides a cost this small in ``recorder_overhead``, so this says what it actually is."""
        events: list = []
        trainer_seconds(config, task, record=False, events=events)
        seconds = median(walls([recorder_seconds(events) for _ in range(5)]))
        share = seconds / run_s
        self.say(f"  recorder alone: {len(events)} events in {seconds * 1e3:.1f} ms, "
                 f"{share:.2%} of a run's {run_s:.2f} s")
        return {"events_per_run": len(events), "seconds_per_run": seconds, "share_of_run": share}

    def attribution(self) -> None:
        """attribution_cost: one exact attribution (3 seeds) / one plain validation pass."""
        task = self.task
        model = blending_model(task)
        val = fixed_val_batches(task, trainer_config(self.profile.engine))
        timer = AttributionTimer(model, task, val)
        self.say(f"attribution: 3 active conv_light seeds, {len(val)} validation batches, "
                 f"{self.profile.attribution_repeats} rounds")
        times = interleave(
            {"plain_pass": timer.plain_pass, "attribution": timer},
            self.profile.attribution_repeats, warmup=1,
        )
        plain, attribution = times["plain_pass"], times["attribution"]
        self.values["attribution_cost"] = median_ratio(walls(attribution), walls(plain))
        reported = timer.reported[1:]  # without the warm-up round
        self.details["attribution"] = {
            "blueprint": "conv_light",
            "val_batches": len(val),
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
                self.say(f"console: 4 envs at {SMALL_TERMINAL[0]}x{SMALL_TERMINAL[1]}, "
                         f"{profile.small_terminal_repeats} runs")
                small = [runner.run(profile.console, False, SMALL_TERMINAL)
                         for _ in range(profile.small_terminal_repeats)]
                for run in small:
                    self.say(f"  {SMALL_TERMINAL[0]}x{SMALL_TERMINAL[1]}: {run}")
            finally:
                runner.close()
        self.values["console_overhead"] = _overhead_ratio(four)
        self.values["console_overhead_32_envs"] = _overhead_ratio(many)
        # A layout may leave the count out (the 80x24 header does): the runs that show it.
        shown = [r.dropped for r in four["console"] + many["console"] + small
                 if r.dropped is not None]
        if shown:
            self.values["console_dropped_events"] = max(shown)
        else:
            self.reasons["console_dropped_events"] = "no console screen showed a dropped count"
        self.values["terminal_bytes_per_s_120x40"] = median(
            run.terminal_bytes_per_s for run in four["console"])
        self.values["terminal_bytes_per_s_80x24"] = median(
            run.terminal_bytes_per_s for run in small)
        self.details["console"] = {
            "refresh": "the console's default refresh rate, policy static",
            "4_envs": _console_details(profile.console, four, SIZE),
            "32_envs": _console_details(profile.many_envs, many, SIZE),
            "4_envs_80x24": {
                "samples_per_s": spread([r.samples_per_s for r in small]),
                "terminal_bytes_per_s": spread([r.terminal_bytes_per_s for r in small]),
                "terminal_bytes_per_sample": spread(
                    [r.terminal_bytes_per_s / r.samples_per_s for r in small]),
                "dropped": [r.dropped for r in small],
            },
        }

    def _overhead(self, runner: TmuxRunner, shape: RunShape, repeats: int) -> dict:
        self.say(f"console: {shape.n_envs} envs, {shape.epochs} epochs x "
                 f"{shape.batches_per_epoch} batches per run, {repeats} rounds of two processes "
                 f"in tmux {SIZE[0]}x{SIZE[1]}")
        return interleave(
            {"headless": lambda: runner.run(shape, True),
             "console": lambda: runner.run(shape, False)},
            repeats, warmup=0, progress=self.say,
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
                self.profile.replay_repeats, warmup=1, progress=self.say,
            )
        decode_s, ingest_s = times["decode"], times["ingest"]
        self.values["replay_decode_events_per_s"] = REPLAY_EVENTS / median(walls(decode_s))
        self.values["replay_ingest_s"] = median(walls(ingest_s))
        self.details["replay"] = {"events": REPLAY_EVENTS, "bytes": size,
                                  **_timed_details(times)}

    def scaling(self) -> None:
        """proc_scaling (env samples/s of 2 ranks / 1 process, one torch thread each, the same
        envs in total) and exchange_share (rank 0's exchange time / the training window)."""
        shape, rounds = self.profile.scaling, self.profile.scaling_repeats
        self.say(f"scaling: {shape.n_envs} envs x {shape.epochs} epochs x "
                 f"{shape.batches_per_epoch} batches, 1 process vs 2 ranks, {rounds} rounds")
        load_before = os.getloadavg()
        with tempfile.TemporaryDirectory(prefix="overwatch-bench-") as tmp:
            directory = Path(tmp)
            runs = interleave(
                {
                    "one_process": lambda: run_once(shape, 1, directory, "one"),
                    "two_ranks": lambda: run_once(shape, 2, directory, "two"),
                },
                rounds, warmup=0, progress=self.say,
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


def _overhead_ratio(runs: dict[str, list[ConsoleRun]]) -> float:
    return median_ratio([r.samples_per_s for r in runs["console"]],
                        [r.samples_per_s for r in runs["headless"]])


def _console_details(shape: RunShape, runs: dict[str, list[ConsoleRun]],
                     size: tuple[int, int]) -> dict[str, object]:
    return {
        "shape": asdict(shape),
        "terminal": f"tmux {size[0]}x{size[1]}",
        **{f"{side}_samples_per_s": spread([r.samples_per_s for r in side_runs])
           for side, side_runs in runs.items()},
        "console_terminal_bytes_per_s": spread([r.terminal_bytes_per_s for r in runs["console"]]),
        # Bytes follow the trainer's pace (more epochs and batches shown per second): per sample
        # they compare across machines and loads.
        "console_terminal_bytes_per_sample": spread(
            [r.terminal_bytes_per_s / r.samples_per_s for r in runs["console"]]),
        "headless_terminal_bytes_per_s": spread([r.terminal_bytes_per_s for r in runs["headless"]]),
        "console_dropped": [r.dropped for r in runs["console"]],
    }


def _timed_details(times: dict[str, list[Timed]]) -> dict[str, object]:
    """Wall and process CPU seconds per side, for the JSON: CPU well below wall means the
    side waited (I/O, the GIL, other processes); on a VM, time stolen by the host counts as CPU."""
    return {f"{name}_s": {"wall": spread(walls(v)), "cpu": spread(cpus(v))}
            for name, v in times.items()}


# --- output -------------------------------------------------------------------------------------


def format_value(value: float | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3f}"


def table(bench: Bench) -> str:
    rows = [("figure", "value", "target", "result")]
    for target in TARGETS:
        value = bench.values[target.key]
        passed = target.passed(value)
        result = "n/a" if passed is None else ("pass" if passed else "FAIL")
        rows.append((target.key, format_value(value), target.describe(), result))
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
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for every side (default 1)")
    parser.add_argument("--only", default=",".join(FIGURES),
                        help=f"comma-separated subset of {', '.join(FIGURES)}")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # the in-process sides; subprocesses get OMP_NUM_THREADS
    machine = machine_info(args.threads, argv)
    bench = Bench(QUICK if args.quick else FULL, args.threads)
    groups = {
        "engine": (("engine_overhead", "recorder_overhead", "checkpoint_overhead"), bench.engine),
        "attribution": (("attribution_cost",), bench.attribution),
        "console": (CONSOLE_KEYS, bench.console),
        "replay": (("replay_decode_events_per_s", "replay_ingest_s"), bench.replay),
        "scaling": (("proc_scaling", "exchange_share"), bench.scaling),
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
