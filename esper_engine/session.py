"""A training run in a background thread, with its telemetry queue, recorder and command queue.

The console and the headless view both drive a run through this object, so neither touches the
trainer's internals: they poll events, send commands and ask it to stop.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec

from esper_engine.blueprints import blueprint_names
from esper_engine.checkpoint import ResumePlan, checkpoint_path
from esper_engine.config import TrainingConfig
from esper_engine.contracts import (
    OperatorCommand,
    RunFinished,
    RunStatus,
    Stop,
    TelemetryEvent,
)
from esper_engine.control import ControlServer
from esper_engine.distributed import Shard
from esper_engine.footprint import RunEstimate
from esper_engine.model import resolve_device
from esper_engine.preflight import validate_run
from esper_engine.recording import Recorder, RecordingError, read_recording
from esper_engine.resources import use_one_malloc_arena
from esper_engine.run_files import RunLock
from esper_engine.tasks import Task, load_task
from esper_engine.telemetry import FanOutSink, QueueSink
from esper_engine.trainer import VectorizedTrainer


class TrainingSession:
    """Owns the trainer thread; everything it offers is safe to call from the UI thread."""

    def __init__(
        self,
        config: TrainingConfig,
        task: Task,
        *,
        run_id: str,
        record_path: Path | None = None,
        resume: ResumePlan | None = None,
        shard: Shard | None = None,
        lock: RunLock | None = None,
        overwrite: bool = False,
        estimate: RunEstimate | None = None,
    ) -> None:
        """``lock``: the recording's, taken by the caller before anything else (else taken
        here: RunLockedError when a live run holds it); released when the run ends.
        ``overwrite``: an existing recording at ``record_path`` (and its checkpoint) is removed
        here, once the run is set up, so a run refused in set-up leaves the old one whole.
        ``resume``: continue that plan's run (its recording is ``record_path``, cut back to the
        checkpoint); ``history`` then holds the recording's events up to the checkpoint.
        ``shard``: the leader's (rank 0's) block when torchrun runs several ranks; its
        checkpoint holds every rank's envs (the workers send theirs)."""
        self.config = config
        self.task = task
        self.run_id = run_id
        self.record_path = record_path
        self.events = QueueSink(maxsize=config.event_queue_size)
        if lock is None and record_path is not None:
            lock = RunLock.acquire(record_path)  # before anything is written
        self.lock = lock
        resume_at = None if resume is None else resume.recording_bytes
        try:
            if overwrite and record_path is not None:
                for old in (record_path, checkpoint_path(record_path)):
                    old.unlink(missing_ok=True)
            self.recorder = (
                Recorder(record_path, resume_at=resume_at) if record_path is not None else None
            )
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        self.history: list[TelemetryEvent] = (
            [] if resume is None else list(read_recording(resume.recording).events)
        )
        self._unseen_history = list(self.history)  # poll() hands these out first
        sinks = [self.events] + ([self.recorder] if self.recorder is not None else [])
        self._commands: queue.Queue[OperatorCommand] = queue.Queue()
        self._stop = threading.Event()  # set with a queued Stop: the trainer checks it per env
        self._ids = itertools.count(1)
        # One send at a time, its reply and its queueing together: a command whose id a client
        # already holds is queued before any later one (a Stop cannot overtake it unacked).
        self._sending = threading.Lock()
        self._trainer = VectorizedTrainer(
            config,
            FanOutSink(*sinks),
            commands=self._commands,
            run_id=run_id,
            task=task,
            checkpoint=None if record_path is None else checkpoint_path(record_path),
            recording_bytes=None if self.recorder is None else self.recorder.sync,
            resume_from=None if resume is None else resume.checkpoint,
            shard=shard,
            stop=self._stop,
            estimate=estimate,
        )
        use_one_malloc_arena()  # the trainer thread keeps its pages between steps (resources)
        self._thread = threading.Thread(target=self._run, name="esper-trainer", daemon=True)
        self.finished: RunFinished | None = None
        self.control: ControlServer | None = None  # the socket attached consoles send to
        self.control_error: str | None = None  # why the run has none (it trains anyway)
        # Told the control socket's path (None: no socket) as the run starts: the CLI's run
        # registry, so `overwatch ps` and `attach` find the run from any directory.
        self.on_start: Callable[[str | None], None] | None = None

    def _run(self) -> None:
        try:
            self.finished = self._trainer.run()
        except Exception as exc:  # noqa: BLE001 - the trainer reports its own crashes; this is
            # the last line of defence (e.g. the disk under the recorder filled up).
            self.finished = RunFinished(
                run_id=self.run_id, status=RunStatus.CRASHED, error=repr(exc)
            )
            self.events.emit(self.finished)
        finally:
            if self.control is not None:
                self.control.close()
            if self.recorder is not None:
                try:
                    self.recorder.close()
                except RecordingError:  # its last fsync failed: kept in recording_error
                    pass
            if self.lock is not None:
                self.lock.release()

    def start(self) -> None:
        """Start the trainer thread, and a recorded run's control socket (``overwatch attach``)."""
        if self.record_path is not None:
            try:
                self.control = ControlServer(self.send, self.record_path, self.run_id)
            except OSError as exc:
                self.control_error = f"no control socket: {exc}"
            if self.on_start is not None:
                self.on_start(None if self.control is None else str(self.control.path))
        self._thread.start()

    @property
    def thread_state(self) -> str:
        if not self._thread.is_alive():
            return "finished" if self.finished is not None else "idle"
        return "paused" if self._trainer.paused else "running"

    @property
    def setup_status(self) -> str:
        """What the trainer is setting up ("building env 37/1024"); "" once it trains."""
        return self._trainer.setup_status

    @property
    def dropped(self) -> int:
        return self.events.dropped

    def poll(self, max_items: int | None = None) -> list[TelemetryEvent]:
        """New events; a resumed run's history comes first, so every view shows it."""
        if self._unseen_history:
            count = len(self._unseen_history) if max_items is None else max_items
            batch, self._unseen_history = (
                self._unseen_history[:count],
                self._unseen_history[count:],
            )
            return batch
        return self.events.drain(max_items)

    def send(self, command: OperatorCommand, reply: Callable[[int], bool] | None = None) -> int:
        """Queue a command for the trainer's next safe point; returns its command id.

        ``reply`` (the control socket's) is told the id first; when it returns False (the
        client gave up waiting) the command is dropped, not applied behind its back."""
        with self._sending:
            command_id = next(self._ids)
            if reply is None or reply(command_id):
                self._commands.put(msgspec.structs.replace(command, command_id=command_id))
                if isinstance(command, Stop):
                    self._stop.set()
        return command_id

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the trainer to stop at a safe point and wait; True when the thread has ended."""
        if self._thread.is_alive():
            self.send(Stop())
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def recording_error(self) -> str | None:
        """One line, when the recording could not be written to the end (a full disk)."""
        return None if self.recorder is None else self.recorder.error

    @property
    def exit_code(self) -> int:
        if self.finished is None or self.finished.status == RunStatus.CRASHED:
            return 1
        return 1 if self.recording_error else 0


def prepare_session(
    config: TrainingConfig,
    *,
    run_id: str,
    record_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
    shard: Shard | None = None,
    lock: RunLock | None = None,
    overwrite: bool = False,
) -> TrainingSession:
    """Load the task and check the config before any thread starts (errors raise ValueError)."""
    resolve_device(config.device)  # fail fast, before generating or reading any data
    if progress is not None:
        progress(f"loading task {config.task} ...")
    task = load_task(config.task, data_dir=config.data_dir, seed=config.seed)
    estimate = validate_run(config, task)
    check_blueprint_preferences(config)
    return TrainingSession(
        config,
        task,
        run_id=run_id,
        record_path=record_path,
        shard=shard,
        lock=lock,
        overwrite=overwrite,
        estimate=estimate,
    )


def prepare_resume(
    plan: ResumePlan,
    *,
    progress: Callable[[str], None] | None = None,
    lock: RunLock | None = None,
    shard: Shard | None = None,
    config: TrainingConfig | None = None,
) -> TrainingSession:
    """The session continuing ``plan``'s run, with the checkpoint's config (ValueError if the
    task or device is not available here); the recording is cut back only once this succeeds.
    ``shard`` and ``config``: rank 0's block of a sharded run and its config (its device)."""
    config = config or plan.config
    resolve_device(config.device)
    if progress is not None:
        progress(f"loading task {config.task} ...")
    task = load_task(config.task, data_dir=config.data_dir, seed=config.seed)
    validate_run(config, task, timed=False)  # RunResumed tells no estimate
    return TrainingSession(
        config,
        task,
        run_id=plan.run_id,
        record_path=plan.recording,
        resume=plan,
        lock=lock,
        shard=shard,
    )


def check_blueprint_preferences(config: TrainingConfig) -> None:
    """A misspelt blueprint in the heuristic's preference would be skipped without a word."""
    for host_kind, preference in (
        ("cnn", config.heuristic.cnn_preference),
        ("transformer", config.heuristic.transformer_preference),
    ):
        known = blueprint_names(host_kind)
        for name in preference:
            if name not in known:
                raise ValueError(
                    f"heuristic.{host_kind}_preference: unknown blueprint {name!r}; "
                    f"{host_kind} blueprints: {', '.join(known)}"
                )
