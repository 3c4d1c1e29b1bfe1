"""Record the console's test fixtures with the real engine: small, deterministic headless runs.

    python scripts/make_fixture.py           # writes tests/console/fixtures/real_run*.msgpack
    python scripts/make_fixture.py --out DIR # elsewhere (to compare a re-recording)

The snapshot tests, ``scripts/screenshots.py`` and the value-for-value screen test
(tests/console/test_real_recording.py) all render these recordings, so the console is tested on
what the engine really emits, in the engine's own units. Re-run this script whenever the engine's
telemetry changes, then regenerate the snapshots
(``pytest tests/console/test_snapshots.py --snapshot-update``) and the screenshots.

Two runs, CPU, one intra-op thread, fixed seeds (the figures repeat; wall times, and with them the
throughput figures, do not):
- ``real_run.msgpack``: synthetic images, 4 envs x 2 episodes x 8 epochs, heuristic policy, so
  seeds germinate, train, blend, hold, fossilize and get pruned, with Shapley attributions.
  Faults make the rare states appear: ``nan:2:4`` (env 2's weights become NaN before epoch 4: a
  governor panic and rollback) and ``seed-nan:3:3`` (env 3's incubating seed fails its health
  gate at epoch 3 and the gate prunes it). A scripted operator sends commands at fixed points
  (``OPERATOR``), so the trainer's own acknowledgements and an operator rollback are recorded.
- ``real_run_lm.msgpack``: a byte-level language model (perplexity) trained under PPO (policy
  updates), 2 envs x 2 episodes x 4 epochs.
The script checks that those states are in the recordings and says what it wrote.
"""

from __future__ import annotations

import argparse
import queue
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import msgspec  # noqa: E402
import torch  # noqa: E402

from esper_engine.config import TrainingConfig  # noqa: E402
from esper_engine.contracts import (  # noqa: E402
    Attribution,
    CommandAck,
    EpochSummary,
    Event,
    ForceRollback,
    GovernorRollback,
    OperatorCommand,
    Pause,
    PolicyUpdate,
    Resume,
    RunStatus,
    SeedStage,
    SeedTransition,
    SetClipThreshold,
)
from esper_engine.recording import Recorder, read_recording  # noqa: E402
from esper_engine.tasks import load_task  # noqa: E402
from esper_engine.trainer import VectorizedTrainer  # noqa: E402

OUT = ROOT / "tests" / "console" / "fixtures"

RUNS: dict[str, tuple[TrainingConfig, str]] = {
    "real_run.msgpack": (
        TrainingConfig(
            task="synthetic-images",
            n_envs=4,
            episodes=2,
            epochs=8,
            batches_per_epoch=20,
            batch_size=32,
            val_batches=2,
            batch_stats_every=10,
            policy="heuristic",
            seed=0,
            faults=("nan:2:4", "seed-nan:3:3"),
        ),
        "default",
    ),
    "real_run_lm.msgpack": (
        TrainingConfig(
            task="synthetic-stories",
            n_envs=2,
            episodes=2,
            epochs=4,
            batches_per_epoch=10,
            batch_size=16,
            val_batches=1,
            batch_stats_every=10,
            policy="ppo",
            seed=0,
        ),
        "small",
    ),
}
# (episode, epoch) counted from 0 -> the commands an operator sends once that epoch is summarised;
# the trainer applies them at the next safe point (the next epoch's first batch).
OPERATOR: dict[str, dict[tuple[int, int], list[OperatorCommand]]] = {
    "real_run.msgpack": {
        (0, 0): [SetClipThreshold(value=1.25)],
        (0, 4): [ForceRollback(env=3)],
        (1, 0): [Pause(), Resume()],
        (1, 1): [SetClipThreshold(value=-1.0)],  # rejected: not positive
    },
}


class ScriptedOperator:
    """The recorder's sink, plus an operator who sends commands at fixed points of the run."""

    def __init__(
        self,
        recorder: Recorder,
        script: dict[tuple[int, int], list[OperatorCommand]],
        n_envs: int,
    ) -> None:
        self.recorder = recorder
        self.commands: queue.Queue[OperatorCommand] = queue.Queue()
        self.script = dict(script)
        self.last_env = n_envs - 1
        self.sent = 0

    def emit(self, event: Event) -> None:
        self.recorder.emit(event)
        if isinstance(event, EpochSummary) and event.env == self.last_env:
            for command in self.script.pop((event.episode, event.epoch), []):
                self.sent += 1  # ids as a session gives them
                self.commands.put(msgspec.structs.replace(command, command_id=self.sent))

    def close(self) -> None:
        self.recorder.close()


def record(path: Path, config: TrainingConfig, scale: str) -> list[Event]:
    """Run the trainer to the end with a Recorder as its sink; return what was recorded."""
    name = path.name
    task = load_task(config.task, seed=config.seed, scale=scale)
    run_id = f"fixture-{path.stem.replace('_', '-')}"
    path.unlink(missing_ok=True)  # regenerated on purpose: a Recorder never overwrites
    sink = ScriptedOperator(Recorder(path), OPERATOR.get(name, {}), config.n_envs)
    try:
        trainer = VectorizedTrainer(config, sink, sink.commands, run_id=run_id, task=task)
        finished = trainer.run()
    finally:
        sink.close()
    if finished.status != RunStatus.COMPLETED:
        raise SystemExit(f"{name}: the run ended {finished.status}: {finished.error}")
    if sink.script:
        raise SystemExit(f"{name}: the run never reached {sorted(sink.script)} for its operator")
    return read_recording(path).events


def check_images_run(events: list[Event]) -> None:
    """The states the snapshots and the screen test rely on must be in the recording."""
    stages = {e.to_stage for e in events if isinstance(e, SeedTransition)}
    wanted = {SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED, SeedStage.PRUNED}
    missing = [str(stage) for stage in wanted - stages]
    if not any(isinstance(e, GovernorRollback) and e.initiator == "governor" for e in events):
        missing.append("a governor rollback")
    if not any(
        isinstance(e, SeedTransition) and e.initiator == "gate" and e.to_stage == SeedStage.PRUNED
        for e in events
    ):
        missing.append("a gate prune")
    if not any(isinstance(e, Attribution) and e.shapley for e in events):
        missing.append("a Shapley attribution")
    if not any(isinstance(e, GovernorRollback) and e.initiator == "operator" for e in events):
        missing.append("an operator rollback")
    acks = [e for e in events if isinstance(e, CommandAck)]
    if len(acks) != sum(map(len, OPERATOR["real_run.msgpack"].values())):
        missing.append("an acknowledgement for every command")
    if missing:
        lacks = ", ".join(missing)
        raise SystemExit(
            f"real_run.msgpack lacks {lacks}: adjust its run in scripts/make_fixture.py"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"directory (default {OUT})")
    out = parser.parse_args().out
    torch.set_num_threads(1)  # reproducible figures, as in the tests
    out.mkdir(parents=True, exist_ok=True)
    for name, (config, scale) in RUNS.items():
        path = out / name
        events = record(path, config, scale)
        if name == "real_run.msgpack":
            check_images_run(events)
        elif not any(isinstance(e, PolicyUpdate) for e in events):
            raise SystemExit(f"{name} has no PolicyUpdate")
        kinds = Counter(type(e).__name__ for e in events)
        summary = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        print(f"wrote {path} ({path.stat().st_size:,} bytes): {summary}")


if __name__ == "__main__":
    main()
