"""Long runs stay cheap: `overwatch ps` over many recordings, a replay's step back and its memory
at 200k events (issue 25, item 8).

    python bench/_long_runs.py [--events 200000] [--runs 50] [--repeats 5]

The inputs are built from a recording of the real engine (``tests/console/fixtures/real_run.
msgpack``: 4 envs x 2 episodes x 8 epochs, every kind of event the console shows) repeated with
its episodes and wall times moved on (``long_run_events``), written with the real ``Recorder``:

- ``ps``: 50 recordings of that run repeated to ~1 MB each, in one directory, against an empty
  directory; the CPU time (user + system) of a whole `python -m overwatch.cli ps` process each,
  interleaved, median over the repeats. Goal: within 1.2x.
- step back: a ``ReplaySource`` opened at the end of the 200k-event recording, the CPU time of
  stepping back one epoch and rebuilding the console state as the app does (``Polled.state``,
  then the events after it reduced). Goal: under 50 ms.
- memory: the peak RSS of a process running the console (``OverwatchApp`` under Textual's
  Pilot, 120x40) on the recording: to the end, 20 epochs back, 5 forward; against the same on the
  short recording itself. Goal: within 1.3x.

Each figure prints what was measured, whatever it is.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import msgspec

ROOT = Path(__file__).resolve().parents[1]
REAL_RUN = ROOT / "tests" / "console" / "fixtures" / "real_run.msgpack"

PS_RUNS = 50
PS_EVENTS = 3_000  # per recording: ~1 MB each
LONG_EVENTS = 200_000
PS_GOAL, STEP_BACK_GOAL_S, MEMORY_GOAL = 1.2, 0.050, 1.3


def long_run_events(events: list, n_events: int) -> list:
    """``events`` (a whole recording, RunStarted first) repeated until ``n_events``: each copy's
    episodes follow the last copy's and its wall times go on from them; one RunStarted (declaring
    every episode) and at most one RunFinished, last."""
    from esper_engine.contracts import RunFinished, RunStarted

    started, body = events[0], [e for e in events[1:] if type(e) not in (RunStarted, RunFinished)]
    if type(started) is not RunStarted or not body:
        raise ValueError("a recording of a run, RunStarted first, with events after it")
    finished = next((e for e in events if type(e) is RunFinished), None)
    episodes = max(e.episode for e in body) + 1
    span = body[-1].wall_time - started.wall_time + 1.0
    copies = -(-(n_events - 2) // len(body))
    out = [msgspec.structs.replace(started, episodes=episodes * copies)]
    for copy in range(copies):
        shift, later = copy * episodes, copy * span
        for event in body:
            out.append(
                msgspec.structs.replace(
                    event, episode=event.episode + shift, wall_time=event.wall_time + later
                )
            )
            if len(out) == n_events - (finished is not None):
                break
        else:
            continue
        break
    if finished is not None:
        last = out[-1]
        out.append(
            msgspec.structs.replace(
                finished, episode=last.episode, epoch=last.epoch, wall_time=last.wall_time + 1.0
            )
        )
    return out


def write_recording(path: Path, events: list) -> int:
    from esper_engine.recording import Recorder

    with Recorder(path) as recorder:
        for event in events:
            recorder.emit(event)
    return path.stat().st_size


def _real_events() -> list:
    from esper_engine.recording import read_recording

    return read_recording(REAL_RUN).events


# --- ps ---------------------------------------------------------------------------------------


def _child_cpu(argv: list[str], env: dict[str, str]) -> float:
    """CPU seconds (user + system) of one child process run to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ps_ratio(work: Path, repeats: int) -> tuple[float, float, float, int]:
    """(ratio, median CPU s over 50 recordings, median CPU s of an empty directory, bytes)."""
    full, empty = work / "runs", work / "empty"
    full.mkdir()
    empty.mkdir()
    events = long_run_events(_real_events(), PS_EVENTS)
    total = 0
    for i in range(PS_RUNS):
        # Half of them ended, half crashed (no RunFinished): both reach back to a summary.
        total += write_recording(full / f"run{i:02d}.msgpack", events[: len(events) - i % 2])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(work / "state")}
    cmd = [sys.executable, "-m", "overwatch.cli", "ps", "--dir"]
    _child_cpu([*cmd, str(full)], env)  # warm the page cache and the bytecode
    runs, nothing = [], []
    for _ in range(repeats):
        runs.append(_child_cpu([*cmd, str(full)], env))
        nothing.append(_child_cpu([*cmd, str(empty)], env))
    return median(runs) / median(nothing), median(runs), median(nothing), total


# --- step back and memory ---------------------------------------------------------------------


def step_back_seconds(path: Path, repeats: int) -> list[float]:
    """CPU seconds of each of ``repeats`` steps back from the end of ``path``, state rebuilt."""
    from overwatch.sources import ReplayAction, ReplaySource
    from overwatch.state import ConsoleState, reduce_many

    source = ReplaySource(path)
    source.replay(ReplayAction.END)
    state = ConsoleState()
    reduce_many(state, source.poll().events)  # the whole recording, as playing it does
    times = []
    for _ in range(repeats):
        start = time.process_time()
        source.replay(ReplayAction.STEP_BACK)
        polled = source.poll()
        state = polled.state if polled.state is not None else ConsoleState()
        reduce_many(state, polled.events)
        times.append(time.process_time() - start)
    return times


def _replay_through(path: str) -> None:
    """Child process: the console (``OverwatchApp`` under Textual's headless Pilot, 120x40) on
    ``path``: to the end, 20 epochs back, 5 forward; then print the peak RSS in KiB."""
    import asyncio

    from overwatch.app import OverwatchApp
    from overwatch.sources import ReplaySource

    async def drive() -> None:
        keys = itertools.count(1000.0)  # a second between keys: each is a key, not a burst
        app = OverwatchApp(ReplaySource(path), clock=time.time, key_clock=lambda: next(keys))
        async with app.run_test(size=(120, 40)) as pilot:
            for key in ["space", "end"] + ["comma"] * 20 + ["full_stop"] * 5:
                await pilot.press(key)
                await app.key_settler.settle()
                await pilot.pause()
            source = app.source
            if not app.state.events_seen or source.at_end or not source.cursor:
                raise RuntimeError("the console did not step back from the end")

    asyncio.run(drive())
    print(_peak_rss_kib())


def _peak_rss_kib() -> int:
    """This process's peak RSS: VmHWM, which starts afresh at exec (ru_maxrss on Linux keeps the
    peak of the process that forked it, a bench that has loaded torch)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kib(path: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.split()[-1])


@dataclass(frozen=True)
class Figures:
    ps_ratio: float
    ps_cpu_s: float
    ps_empty_cpu_s: float
    ps_bytes: int
    step_back_s: float  # median CPU
    step_back_max_s: float
    long_events: int
    long_bytes: int
    rss_long_kib: int
    rss_short_kib: int

    @property
    def memory_ratio(self) -> float:
        return self.rss_long_kib / self.rss_short_kib


def measure(n_events: int = LONG_EVENTS, repeats: int = 5) -> Figures:
    with tempfile.TemporaryDirectory(prefix="long_runs") as tmp:
        work = Path(tmp)
        ratio, ps_cpu, ps_empty, ps_bytes = ps_ratio(work, repeats)
        long_path = work / "long.msgpack"
        long_bytes = write_recording(long_path, long_run_events(_real_events(), n_events))
        steps = step_back_seconds(long_path, max(repeats, 10))
        return Figures(
            ps_ratio=ratio,
            ps_cpu_s=ps_cpu,
            ps_empty_cpu_s=ps_empty,
            ps_bytes=ps_bytes,
            step_back_s=median(steps),
            step_back_max_s=max(steps),
            long_events=n_events,
            long_bytes=long_bytes,
            rss_long_kib=peak_rss_kib(long_path),
            rss_short_kib=peak_rss_kib(REAL_RUN),
        )


def report(f: Figures) -> str:
    def verdict(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    return "\n".join(
        [
            f"ps over {PS_RUNS} recordings ({f.ps_bytes / 2**20:.1f} MiB): "
            f"{f.ps_cpu_s * 1e3:.0f} ms CPU vs {f.ps_empty_cpu_s * 1e3:.0f} ms for an empty "
            f"directory = {f.ps_ratio:.2f}x (goal <= {PS_GOAL}x) {verdict(f.ps_ratio <= PS_GOAL)}",
            f"step back at {f.long_events} events ({f.long_bytes / 2**20:.1f} MiB): "
            f"{f.step_back_s * 1e3:.1f} ms CPU median, {f.step_back_max_s * 1e3:.1f} ms max "
            f"(goal < {STEP_BACK_GOAL_S * 1e3:.0f} ms) "
            f"{verdict(f.step_back_max_s < STEP_BACK_GOAL_S)}",
            f"replay memory at {f.long_events} events: peak RSS {f.rss_long_kib / 1024:.1f} MiB "
            f"vs {f.rss_short_kib / 1024:.1f} MiB for the short recording = "
            f"{f.memory_ratio:.2f}x (goal <= {MEMORY_GOAL}x) "
            f"{verdict(f.memory_ratio <= MEMORY_GOAL)}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=LONG_EVENTS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _replay_through(args.child)
        return 0
    print(report(measure(args.events, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
