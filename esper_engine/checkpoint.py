"""Checkpoints: a run's whole state at an epoch boundary, next to its recording (SPEC 12).

``RUN.msgpack`` gets ``RUN.ckpt``: one ``torch.save`` file holding tensors and plain values only
(dicts, lists, str, int, float, bool, None), written atomically (a temporary file in the same
directory, flushed and fsynced, then ``os.replace``), so a ``kill -9`` at any instant leaves
either the previous checkpoint or the new one, never half of one. It is read back with
``torch.load(weights_only=True)``: a file holding anything else (a pickled object whose
``__reduce__`` would run code) is refused before any of it is executed.

What goes in is assembled (``assemble``) from the run's header and each part's own
``state_dict`` (the ``Stateful`` shape: the loader, the envs, the policy) and goes back with
each part's ``load_state_dict`` (``restore``). This module owns the file, its format check
and the resume plan: the checks that a recording, its checkpoint and each other agree before
anything is changed; ``run_checkpoints`` is the running trainer's side (when, what, the restore).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
import torch

from esper_engine.config import TrainingConfig
from esper_engine.contracts import RunFinished, RunStarted, RunStatus
from esper_engine.host_presets import HostSpec, resolve_host
from esper_engine.recording import RecordingError, read_recording
from esper_engine.run_files import UnsafeFileError, open_owned, temporary_beside
from esper_engine.state_file import read_state_file

CHECKPOINT_FORMAT = 2  # of the checkpoint's layout; bumped when a part's state changes shape
SUFFIX = ".ckpt"
# Tests only: "POINT:N:MARKER" blocks the N-th pass through POINT (checkpoint-write: between the
# temporary file's fsync and the rename; policy-update: before a PPO update; train-batch: before
# a training batch) after creating the file MARKER, so a test can kill -9 the process there.
HOLD_ENV = "ESPER_TEST_HOLD"
_HOLD = os.environ.get(HOLD_ENV)  # read once: hold_point sits in the batch loop
_holds: dict[str, int] = {}
_SHARE_MIN = 1024  # elements: smaller tensors are not worth comparing


class Stateful(Protocol):
    """A part of the run that saves and restores itself (torch's ``state_dict`` shape)."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class Each:
    """Several parts of one kind as one (``name``: what they are, for the error): their states
    in order; ``before`` runs before each one loads (a stop point, between envs)."""

    def __init__(self, parts: list, name: str, before: Callable[[], None] | None = None) -> None:
        self.parts, self.name, self.before = parts, name, before

    def state_dict(self) -> list:
        return [part.state_dict() for part in self.parts]

    def load_state_dict(self, states: list) -> None:
        if len(states) != len(self.parts):
            raise ValueError(f"checkpoint has {len(states)} {self.name}, config {len(self.parts)}")
        for part, state in zip(self.parts, states, strict=True):
            if self.before is not None:
                self.before()
            part.load_state_dict(state)


def assemble(
    header: Mapping[str, Any], parts: Mapping[str, Stateful], **given: Any
) -> dict[str, Any]:
    """A checkpoint: the run's ``header`` (what ``plan_resume`` checks, where the run goes on)
    and each part's own state under its name; ``given``: a part's state already taken (a
    sharded leader's envs, gathered from every rank)."""
    states = {
        name: given[name] if name in given else part.state_dict() for name, part in parts.items()
    }
    return {"format": CHECKPOINT_FORMAT, **header, **states}


def restore(state: Mapping[str, Any], parts: Mapping[str, Stateful]) -> None:
    """Each part loads its own state; one the checkpoint lacks is left as built (a sharded
    worker's part has no policy: it lives on the leader)."""
    for name, part in parts.items():
        if name in state:
            part.load_state_dict(state[name])


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line naming the file."""


def checkpoint_path(recording: str | os.PathLike[str]) -> Path:
    """Where a recording's checkpoint lives: ``RUN.msgpack`` -> ``RUN.ckpt``."""
    return Path(recording).with_suffix(SUFFIX)


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: the old file stays whole until the rename."""
    tmp, fd = temporary_beside(path)  # created exclusively: never a planted file or link
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        hold_point("checkpoint-write")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)  # the rename itself survives a power cut


class CheckpointWriter:
    """Writes a run's checkpoints off the training thread, one at a time, in order.

    ``submit`` copies the state's tensors at once (the run goes on changing its own) and hands
    the serialising and the fsync to a thread; the next ``submit`` and ``wait`` wait for it, and
    raise what it raised. A ``kill -9`` while it writes leaves the previous checkpoint in place,
    whose recording length is shorter: a resume simply starts one checkpoint earlier.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a killed writer's leftovers
            stale.unlink(missing_ok=True)

    def submit(self, state: dict[str, Any]) -> None:
        self.wait()
        copy = _detached(state)
        self._thread = threading.Thread(
            target=self._write, args=(copy,), name="esper-checkpoint", daemon=True
        )
        self._thread.start()

    def wait(self) -> None:
        """Until the last submitted checkpoint is on disk; re-raises its writer's error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self, state: dict[str, Any]) -> None:
        try:
            write_checkpoint(self.path, share_equal_tensors(state))
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread by wait()
            self._error = exc


def _detached(value: Any) -> Any:
    """A copy of a nested state whose tensors no later training step can change (on CPU)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        return {key: _detached(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_detached(item) for item in value]
    return value  # numbers, strings, None, tuples of numbers: immutable


def share_equal_tensors(state: Any) -> Any:
    """``state`` with every tensor equal (same dtype, shape and values) to an earlier one
    replaced by that one, so ``torch.save`` writes the bytes once. Right after a clean epoch the
    governor's snapshot equals the live weights and optimizer state: a checkpoint of a base
    Transformer env holds them twice otherwise. Only for the writer's private copies: the
    tensors become shared (``read_checkpoint`` gives each its own again)."""
    kept: dict[tuple, list[torch.Tensor]] = {}

    def share(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if value.numel() < _SHARE_MIN or value.layout is not torch.strided:
                return value
            flat = value.reshape(-1)
            probe = flat[:: max(1, flat.numel() // 16)][:16].tolist()  # a cheap first filter
            for candidate in kept.setdefault((value.dtype, tuple(value.shape), *probe), []):
                if torch.equal(candidate, value):
                    return candidate
            kept[value.dtype, tuple(value.shape), *probe].append(value)
            return value
        if isinstance(value, Mapping):
            return {key: share(item) for key, item in value.items()}
        if isinstance(value, list):
            return [share(item) for item in value]
        return value

    return share(state)


def _unshared(state: Any) -> Any:
    """``state`` with a copy of each tensor whose storage an earlier one already uses, so no
    two live tensors of a resumed run (a weight and its snapshot) ever alias."""
    seen: set[int] = set()

    def own(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if value.layout is not torch.strided:
                return value
            pointer = value.untyped_storage().data_ptr()
            if pointer in seen:
                return value.clone()
            seen.add(pointer)
            return value
        if isinstance(value, Mapping):
            return {key: own(item) for key, item in value.items()}
        if isinstance(value, list):
            return [own(item) for item in value]
        return value

    return own(state)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's state; CheckpointError (one line) for a missing, foreign or unsafe file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (checkpoint_every 0, or no epoch finished)")
    try:
        os.close(open_owned(path))  # another user's checkpoint is never loaded
    except OSError as exc:
        message = str(exc) if isinstance(exc, UnsafeFileError) else f"{path}: {exc}"
        raise CheckpointError(message) from None
    return _unshared(read_state_file(path, CheckpointError, "checkpoint", CHECKPOINT_FORMAT))


@dataclass
class ResumePlan:
    """A recording and its checkpoint that agree: what ``--resume`` continues from."""

    recording: Path
    checkpoint: dict[str, Any]
    config: TrainingConfig
    run_id: str
    recording_bytes: int  # the recording is cut back to this length before appending

    @property
    def position(self) -> tuple[int, int]:
        """(episode, epoch) the resumed run starts with."""
        return int(self.checkpoint["episode"]), int(self.checkpoint["epoch"])


def plan_resume(recording: str | os.PathLike[str]) -> ResumePlan:
    """Check a recording and its checkpoint without changing either; CheckpointError if unfit."""
    recording = Path(recording)
    if not recording.is_file():
        raise CheckpointError(f"{recording}: no such recording")
    try:
        events = read_recording(recording).events
    except RecordingError as exc:
        raise CheckpointError(str(exc)) from None
    if not events or not isinstance(events[0], RunStarted):
        raise CheckpointError(f"{recording}: the recording does not start with RunStarted")
    started, last = events[0], events[-1]
    if isinstance(last, RunFinished) and last.status == RunStatus.COMPLETED:
        raise CheckpointError(f"{recording}: run {started.run_id} already completed")
    path = checkpoint_path(recording)
    state = read_checkpoint(path)
    if state["run_id"] != started.run_id:
        raise CheckpointError(
            f"{path}: checkpoint of run {state['run_id']}, the recording is run {started.run_id}"
        )
    if state["config"] != started.config:
        raise CheckpointError(f"{path}: checkpoint config differs from the recording's")
    size, wanted = recording.stat().st_size, int(state["recording_bytes"])
    if size < wanted:
        raise CheckpointError(
            f"{recording}: {size} bytes, shorter than the {wanted} the checkpoint recorded"
        )
    try:
        config = msgspec.convert(state["config"], TrainingConfig)
        config.validate()
    except (msgspec.ValidationError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint config is not valid here ({exc})") from None
    check_checkpoint_host(state, resolve_host(config.host, config.task), str(path))
    return ResumePlan(recording, state, config, started.run_id, wanted)


def check_checkpoint_host(state: dict[str, Any], spec: HostSpec, source: str) -> None:
    """CheckpointError (one line) when the checkpoint's host is not the one this run builds (a
    preset whose sizes changed between versions, or a state from another run)."""
    saved = state.get("host")
    if saved is None:  # older than the field: those runs all trained today's tiny hosts
        return
    try:
        theirs = msgspec.convert(saved, HostSpec)
    except msgspec.ValidationError:
        raise CheckpointError(f"{source}: unreadable host record {saved!r}") from None
    if theirs != spec:
        raise CheckpointError(
            f"{source}: the checkpoint's host is {theirs.label()}, this run builds {spec.label()}"
        )


def hold_point(name: str) -> None:
    """Block forever at the N-th pass through ``name`` when ``ESPER_TEST_HOLD`` asks (tests)."""
    spec = _HOLD
    if not spec:
        return
    point, count, marker = spec.split(":", 2)
    if point != name:
        return
    _holds[name] = _holds.get(name, 0) + 1
    if _holds[name] != int(count):
        return
    Path(marker).write_text(name)
    while True:  # the test kills the process here
        time.sleep(3600)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
