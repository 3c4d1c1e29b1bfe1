"""Telemetry events and operator commands: the one contract the trainer and the console share.

Every event is a frozen, tagged ``msgspec.Struct``; the tag (the class name) is stored under the
``type`` key. New fields must be appended with defaults so old recordings still decode.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

SCHEMA_VERSION = 1

Initiator = Literal["policy", "gate", "governor", "operator"]
RunStatus = Literal["completed", "stopped", "crashed"]

# Seed lifecycle stage names in lifecycle order, as SlotState.stage and SeedTransition carry them
# (esper_engine.lifecycle.SeedStage has exactly these members).
SEED_STAGES: tuple[str, ...] = (
    "DORMANT",
    "GERMINATED",
    "TRAINING",
    "BLENDING",
    "HOLDING",
    "FOSSILIZED",
    "PRUNED",
    "EMBARGOED",
    "RESETTING",
)
LIVE_SEED_STAGES: frozenset[str] = frozenset({"GERMINATED", "TRAINING", "BLENDING", "HOLDING"})


# gc=False: events and slot states are frozen and hold only scalars, strings and lists of those,
# so they can never be part of a reference cycle; untracked, they decode about 25% faster
# (a replay decodes 100k of them) and never make the cyclic GC walk a long recording.
class SlotState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One slot as seen at the end of an epoch (not an event: nested in ``EpochSummary``)."""

    slot_id: str
    stage: str
    blueprint: str | None = None
    alpha: float = 0.0
    epochs_in_stage: int = 0
    params: int = 0


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True, gc=False):
    """Fields common to every event; ``env`` is None for run-level events."""

    run_id: str = ""
    env: int | None = None
    episode: int = 0
    epoch: int = 0
    wall_time: float = 0.0


class RunStarted(Event, frozen=True, kw_only=True):
    task: str
    task_kind: str  # "classification" | "language_model"
    n_envs: int
    slot_ids: list[str]
    policy: str
    episodes: int
    epochs: int
    batches_per_epoch: int
    random_guess_loss: float
    schema_version: int = SCHEMA_VERSION
    blueprints: list[str] = []
    device: str = "cpu"
    config: dict[str, Any] = {}


class BatchStats(Event, frozen=True, kw_only=True):
    batch: int
    loss: float
    grad_norm_pre_clip: float
    grad_norm_post_clip: float
    clip_threshold: float | None
    clipped: bool
    skipped: bool = False  # fp16 overflow: no optimizer moved; the grad norms are not finite


class EpochSummary(Event, frozen=True, kw_only=True):
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    perplexity: float | None
    grad_norm_pre_clip: float
    grad_norm_post_clip: float
    clipped_fraction: float
    clip_threshold: float | None
    slots: list[SlotState]
    consecutive_panics: int
    total_panics: int
    rollbacks: int
    last_panic_reason: str | None = None
    last_action: str = "WAIT"
    reward: float | None = None
    samples_per_s: float = 0.0
    host_params: int = 0
    seed_params: int = 0
    skipped_steps: int = 0  # fp16 overflows: steps of the epoch in which no optimizer moved


class SeedTransition(Event, frozen=True, kw_only=True):
    slot_id: str
    blueprint: str | None
    from_stage: str
    to_stage: str
    alpha: float
    epochs_in_stage: int
    initiator: str


class GovernorPanic(Event, frozen=True, kw_only=True):
    reason: str  # "nan" | "lobotomy" | "divergence"
    loss: float
    threshold: float | None
    consecutive_panics: int
    rollback_due: bool


class GovernorRollback(Event, frozen=True, kw_only=True):
    reason: str
    initiator: str
    loss_at_panic: float | None
    consecutive_panics: int
    seeds_pruned: list[str]
    penalty: float
    threshold: float | None = None
    episode_ended: bool = False


class Attribution(Event, frozen=True, kw_only=True):
    shapley: dict[str, float]  # slot id -> contribution in accuracy points
    std: dict[str, float] | None
    full_value: float
    empty_value: float
    exact: bool
    coalitions: int
    full_loss: float | None = None
    empty_loss: float | None = None
    cost_ratio: float | None = None  # cost relative to one plain validation pass


class PolicyUpdate(Event, frozen=True, kw_only=True):
    update: int
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    explained_variance: float
    grad_norm: float
    mean_episode_reward: float


class CommandAck(Event, frozen=True, kw_only=True):
    command: str  # the command's tag, e.g. "ForceRollback"
    accepted: bool
    reason: str = ""
    value: float | None = None
    command_id: int = 0


class RunFinished(Event, frozen=True, kw_only=True):
    status: str  # RunStatus
    error: str | None = None


TelemetryEvent = (
    RunStarted
    | BatchStats
    | EpochSummary
    | SeedTransition
    | GovernorPanic
    | GovernorRollback
    | Attribution
    | PolicyUpdate
    | CommandAck
    | RunFinished
)

EVENT_TYPES: tuple[type[Event], ...] = (
    RunStarted,
    BatchStats,
    EpochSummary,
    SeedTransition,
    GovernorPanic,
    GovernorRollback,
    Attribution,
    PolicyUpdate,
    CommandAck,
    RunFinished,
)


# --- commands: console -> trainer -------------------------------------------------------------


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    command_id: int = 0


class ForceRollback(Command, frozen=True, kw_only=True):
    env: int


class SetClipThreshold(Command, frozen=True, kw_only=True):
    value: float
    env: int | None = None  # None: every env


class Pause(Command, frozen=True, kw_only=True):
    pass


class Resume(Command, frozen=True, kw_only=True):
    pass


class Stop(Command, frozen=True, kw_only=True):
    pass


OperatorCommand = ForceRollback | SetClipThreshold | Pause | Resume | Stop
COMMAND_TYPES: tuple[type[Command], ...] = (ForceRollback, SetClipThreshold, Pause, Resume, Stop)


# --- one reusable encoder/decoder -------------------------------------------------------------

_ENCODER = msgspec.msgpack.Encoder()
EVENT_DECODER = msgspec.msgpack.Decoder(TelemetryEvent)  # reused: building one is costly
_COMMAND_DECODER = msgspec.msgpack.Decoder(OperatorCommand)


def encode(obj: Event | Command) -> bytes:
    """Encode an event or a command to msgpack."""
    return _ENCODER.encode(obj)


def decode_event(data: bytes) -> TelemetryEvent:
    """Decode one msgpack event; raises ``msgspec.DecodeError`` (or ValidationError) on garbage."""
    return EVENT_DECODER.decode(data)


def decode_command(data: bytes) -> OperatorCommand:
    return _COMMAND_DECODER.decode(data)


def event_type(event: Event | Command) -> str:
    """The struct tag, as written under the ``type`` key."""
    return type(event).__struct_config__.tag
