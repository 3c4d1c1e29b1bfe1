"""The GPU check's Python steps (bench/gpu_check.sh runs them): compare two recordings, wait for
a run's epoch summaries, and measure samples/s of 1, 2, 4, 8 envs on one device against a bare
PyTorch loop, with peak device memory.

    python bench/_gpu.py compare A.msgpack B.msgpack
    python bench/_gpu.py wait PATH.msgpack N [--timeout S]
    python bench/_gpu.py throughput --device cuda --preset base --envs 1,2,4,8 [--json F]

Needs torch and msgspec only (no Textual): it runs against the GPU machine's own torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import msgspec
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esper_engine.batching import SharedBatchIterator  # noqa: E402
from esper_engine.config import HostConfig, TrainingConfig  # noqa: E402
from esper_engine.contracts import (  # noqa: E402
    EpochProgress,
    EpochSummary,
    ResourceSample,
    RunResumed,
    RunStatus,
)
from esper_engine.model import create_model, run_host_spec  # noqa: E402
from esper_engine.recording import RecordingError, RecordingFollower, read_recording  # noqa: E402
from esper_engine.session import TrainingSession  # noqa: E402
from esper_engine.tasks import Task, load_task  # noqa: E402

# Fields that measure time (the estimate timed at start-up too) and the run's id: never equal
# between two runs.
TIMING = ("wall_time", "samples_per_s", "cost_ratio", "epoch_s_estimate", "run_id")


# --- compare and wait --------------------------------------------------------------------------


def comparable(path: Path) -> list[dict]:
    """The recording's events without RunResumed and EpochProgress (how many there are depends
    on the wall clock) and without timing fields, as JSON values (a NaN loss then equals the
    same NaN loss)."""
    out = []
    for event in read_recording(path).events:
        if isinstance(event, RunResumed | EpochProgress | ResourceSample):
            continue
        fields = msgspec.to_builtins(event)
        for name in TIMING:
            fields.pop(name, None)
        out.append(msgspec.json.decode(msgspec.json.encode(fields)))
    return out


def compare(a: Path, b: Path) -> int:
    """0 when the two recordings hold the same events (timing aside), else 1 with the first
    difference."""
    left, right = comparable(a), comparable(b)
    for index, (x, y) in enumerate(zip(left, right, strict=False)):
        if x != y:
            keys = [k for k in x.keys() | y.keys() if x.get(k) != y.get(k)]
            print(f"DIFFER at event {index} of {len(left)} ({x.get('type')}), fields:")
            for key in sorted(keys):
                print(f"  {key}: {str(x.get(key))[:200]} | {str(y.get(key))[:200]}")
            return 1
    if len(left) != len(right):
        print(f"DIFFER: {len(left)} events against {len(right)}")
        return 1
    print(f"EQUAL: {len(left)} events, timing fields aside")
    return 0


def wait_for_summaries(path: Path, count: int, timeout: float) -> int:
    """Poll (bounded) until the recording holds ``count`` epoch summaries; 0 when it does."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        if path.exists():
            follower = RecordingFollower(path)
            try:
                seen = sum(isinstance(e, EpochSummary) for e in follower.poll())
            except RecordingError:
                seen = 0
            finally:
                follower.close()
            if seen >= count:
                print(f"{path}: {seen} epoch summaries")
                return 0
        time.sleep(0.2)
    print(f"{path}: {seen} of {count} epoch summaries after {timeout:.0f} s")
    return 1


# --- throughput ----------------------------------------------------------------------------------


def run_config(task: str, preset: str, n_envs: int, device: str, amp: str) -> TrainingConfig:
    """One episode of the full trainer without growth or attribution (both sides do the same
    work): static policy, attribution and checkpoints off; governor and telemetry on."""
    return TrainingConfig(
        task=task,
        n_envs=n_envs,
        episodes=1,
        epochs=2,
        batches_per_epoch=40,
        batch_size=64,
        val_batches=4,
        device=device,
        amp=amp,
        policy="static",
        attribution_every=0,
        checkpoint_every=0,
        host=HostConfig(preset=preset),
    )


def train_samples(config: TrainingConfig) -> int:
    return config.epochs * config.batches_per_epoch * config.batch_size * config.n_envs


def trainer_rate(config: TrainingConfig, task: Task) -> tuple[float, int]:
    """(training samples/s over the whole run, peak device bytes) of the engine's trainer."""
    device = torch.device(config.device)
    _reset_peak(device)
    session = TrainingSession(config, task, run_id="gpu-check")
    start = time.perf_counter()
    session.start()
    session.wait()
    wall = time.perf_counter() - start
    finished = session.finished
    if finished is None or finished.status != RunStatus.COMPLETED:
        raise RuntimeError(f"trainer run did not complete: {finished}")
    return train_samples(config) / wall, _peak(device)


def bare_rate(config: TrainingConfig, task: Task) -> tuple[float, int]:
    """The same work for one env in plain PyTorch: SGD with momentum, clip, a validation pass
    per epoch, the same batches and the same host; in a thread of its own, as the session runs
    the trainer (on a loaded CPU the main thread's OpenMP team ran steps up to 30x slower)."""
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(_bare_rate(config, task)))
    worker.start()
    worker.join()
    if not outcome:
        raise RuntimeError("the bare loop failed (its traceback is above)")
    return outcome[0]


def _bare_rate(config: TrainingConfig, task: Task) -> tuple[float, int]:
    device = torch.device(config.device)
    _reset_peak(device)
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    host = create_model(task, device, spec=run_host_spec(config, task)).host
    optimizer = torch.optim.SGD(host.parameters(), lr=task.host_lr, momentum=0.9)
    batches = SharedBatchIterator(
        task.train_x,
        task.train_y,
        1,
        config.batch_size,
        seed=config.seed,
        device=device,
        prepare=task.prepare,
    )
    size = 2 * config.batch_size
    val = [
        (task.prepare(task.val_x[i : i + size].to(device)), task.val_y[i : i + size].to(device))
        for i in range(0, size * config.val_batches, size)
    ]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    # Disabled (no fp16), the scaler's calls are the plain backward and step.
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    for _ in range(config.epochs):
        host.train()
        for _ in range(config.batches_per_epoch):
            ((x, y),) = next(batches)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = task.loss(host(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(host.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
        host.eval()
        with torch.inference_mode():
            total = sum(task.loss(host(x), y) for x, y in val)
        float(total)  # one sync per epoch, as the trainer's
    _synchronize(device)
    wall = time.perf_counter() - start
    one_env = msgspec.structs.replace(config, n_envs=1)
    return train_samples(one_env) / wall, _peak(device)


def throughput(tasks: list[str], preset: str, envs: list[int], device: str, amp: str) -> dict:
    results: dict = {"device": _device_name(device), "torch": torch.__version__, "runs": []}
    for name in tasks:
        task = load_task(name, seed=0)
        warm = run_config(name, preset, 1, device, amp)
        trainer_rate(warm, task)  # CUDA context, kernels' first launches, cuDNN's choices
        bare, bare_peak = bare_rate(warm, task)
        rows = []
        for n in envs:
            rate, peak = trainer_rate(run_config(name, preset, n, device, amp), task)
            rows.append({"n_envs": n, "samples_per_s": rate, "peak_bytes": peak})
        one = rows[0]["samples_per_s"] if rows and rows[0]["n_envs"] == 1 else None
        for row in rows:
            row["vs_one_env"] = row["samples_per_s"] / one if one else None
            row["vs_bare_loop"] = row["samples_per_s"] / bare
        label = run_host_spec(warm, task).label()
        run = {"task": name, "host": label, "amp": amp, "bare_samples_per_s": bare}
        results["runs"].append({**run, "bare_peak_bytes": bare_peak, "envs": rows})
        print(
            f"{name} ({label}, amp {amp}) on {results['device']}: bare loop "
            f"{bare:,.0f} samples/s, peak {bare_peak / 2**20:,.0f} MiB"
        )
        for row in rows:
            ratio = "" if row["vs_one_env"] is None else f"  x{row['vs_one_env']:.2f} of 1 env"
            print(
                f"  {row['n_envs']} envs: {row['samples_per_s']:,.0f} samples/s{ratio}"
                f"  x{row['vs_bare_loop']:.2f} of the bare loop"
                f"  peak {row['peak_bytes'] / 2**20:,.0f} MiB"
            )
    return results


def _device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{dev.type} ({torch.get_num_threads()} threads)"


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/_gpu.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="same events, timing aside? (exit 1 if not)")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    w = sub.add_parser("wait", help="until a recording holds N epoch summaries")
    w.add_argument("path", type=Path)
    w.add_argument("count", type=int)
    w.add_argument("--timeout", type=float, default=120.0)
    t = sub.add_parser("throughput", help="samples/s of 1..N envs against a bare loop")
    t.add_argument("--device", default="cuda")
    t.add_argument("--preset", default="base")
    t.add_argument("--amp", default="off")
    t.add_argument("--envs", default="1,2,4,8")
    t.add_argument("--tasks", default="synthetic-images,synthetic-stories")
    t.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "compare":
        return compare(args.a, args.b)
    if args.command == "wait":
        return wait_for_summaries(args.path, args.count, args.timeout)
    envs = [int(n) for n in args.envs.split(",")]
    results = throughput(args.tasks.split(","), args.preset, envs, args.device, args.amp)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
