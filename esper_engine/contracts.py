"""Telemetry events and operator commands: the one contract the trainer and the console share.

Every event is a frozen, tagged ``msgspec.Struct``; the tag (the class name) is stored under the
``type`` key. New fields must be appended with defaults so old recordings still decode.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

import msgspec

# 2: every accuracy-like figure is a fraction in [0, 1]; version 1 carried Shapley values, their
# std, v(all) and v(none) in accuracy points (x100). recording.py converts version 1 on read.
SCHEMA_VERSION = 2


# --- the vocabulary: StrEnums, so a recording's strings are validated when it is decoded --------
# (a StrEnum member is its value: it compares equal to the string, formats as it, encodes as it)


class SeedStage(StrEnum):
    """A slot's lifecycle stage (SPEC 4), in lifecycle order; ``esper_engine.lifecycle`` holds
    the transitions between them."""

    DORMANT = "DORMANT"
    GERMINATED = "GERMINATED"
    TRAINING = "TRAINING"
    BLENDING = "BLENDING"
    HOLDING = "HOLDING"
    FOSSILIZED = "FOSSILIZED"
    PRUNED = "PRUNED"
    EMBARGOED = "EMBARGOED"
    RESETTING = "RESETTING"


# Stages in which a seed exists and is still on probation (it can be pruned).
LIVE_SEED_STAGES: frozenset[SeedStage] = frozenset(
    {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING}
)


class Initiator(StrEnum):
    """Who caused a seed transition or a rollback."""

    POLICY = "policy"
    GATE = "gate"  # a lifecycle gate or schedule (automatic transitions, failed health gates)
    GOVERNOR = "governor"
    OPERATOR = "operator"


class RunStatus(StrEnum):
    COMPLETED = "completed"
    STOPPED = "stopped"
    CRASHED = "crashed"


class PanicReason(StrEnum):
    """What the governor detected (SPEC 6)."""

    NAN = "nan"  # a non-finite validation loss
    LOBOTOMY = "lobotomy"  # the loss collapsed back to the random-guess loss
    DIVERGENCE = "divergence"


class RollbackReason(StrEnum):
    """Why an env was rolled back: the panic behind a governor rollback, or who forced it."""

    NAN = "nan"
    LOBOTOMY = "lobotomy"
    DIVERGENCE = "divergence"
    GOVERNOR = "governor"  # execute_rollback() called with no panic pending (not by the trainer)
    OPERATOR = "operator"  # ForceRollback


class Op(StrEnum):
    """A lifecycle operation, the op part of a policy action (SPEC 8), in the policy head's order
    (``esper_engine.policy.actions.OPS``)."""

    WAIT = "WAIT"
    GERMINATE = "GERMINATE"
    ADVANCE = "ADVANCE"
    PRUNE = "PRUNE"
    FOSSILIZE = "FOSSILIZE"


# Names that travel as plain strings (in configs, recordings and the console): Literal types, so
# msgspec refuses any other value wherever it decodes or converts one.
TaskKind = Literal["classification", "language_model"]
HostKind = Literal["cnn", "transformer"]
PolicyKind = Literal["heuristic", "ppo", "static"]  # static never grows: the baseline


# Units: every accuracy-like figure (accuracy, Shapley value, v(all), v(none), and differences of
# those) is a fraction in [0, 1]; losses are in nats (mean per sample, or per token for a language
# model); rewards are in accuracy points (1 point = 0.01 accuracy, the policy's unit, SPEC 8).


# gc=False: events and slot states are frozen and hold only scalars, strings and lists of those,
# so they can never be part of a reference cycle; untracked, they decode about 25% faster
# (a replay decodes 100k of them) and never make the cyclic GC walk a long recording.
class SlotState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One slot as seen at the end of an epoch (not an event: nested in ``EpochSummary``)."""

    slot_id: str
    stage: SeedStage
    blueprint: str | None = None
    alpha: float = 0.0  # blend weight, unitless in [0, 1]
    epochs_in_stage: int = 0  # count (epoch boundaries)
    params: int = 0  # count (the seed's parameters)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True, gc=False):
    """Fields common to every event; ``env`` is None for run-level events."""

    run_id: str = ""
    env: int | None = None  # index from 0
    episode: int = 0  # index from 0
    epoch: int = 0  # index from 0, within the episode
    wall_time: float = 0.0  # seconds since the Unix epoch


class RunStarted(Event, frozen=True, kw_only=True):
    task: str
    task_kind: TaskKind
    n_envs: int  # count
    slot_ids: list[str]
    policy: PolicyKind
    episodes: int  # count
    epochs: int  # count, per episode
    batches_per_epoch: int  # count
    random_guess_loss: float  # nats: ln(classes) or ln(vocab)
    schema_version: int = SCHEMA_VERSION
    blueprints: list[str] = []
    device: str = "cpu"
    config: dict[str, Any] = {}
    host_params: int = 0  # count: env 0's host as built
    seed_params: int = 0  # count: env 0's seeds as built (0 unless a slot starts seeded)
    # the host, resolved from the config's [host] group (appended; "" / 0 in older recordings)
    host_kind: HostKind | Literal[""] = ""
    host_preset: str = ""  # tiny | small | base: the preset its sizes start from
    host_sizes: str = ""  # "32-64-128" (CNN widths), "384x6 h6 /2" (d_model x layers, heads,
    # layers per slot when not 1)
    host_flops: int = 0  # forward FLOPs per sample (torch's FlopCounterMode)
    memory_estimate: int = 0  # bytes the run was estimated to need (esper_engine/footprint.py)
    epoch_s_estimate: float = 0.0  # seconds per epoch from one timed batch; 0.0: not timed


class BatchStats(Event, frozen=True, kw_only=True):
    batch: int  # index from 0, within the epoch
    loss: float  # nats: this batch's mean training loss
    grad_norm_pre_clip: float  # L2 norm (gradient units) over host + live seeds
    grad_norm_post_clip: float  # L2 norm
    clip_threshold: float | None  # L2 norm; None: clipping disabled
    clipped: bool
    skipped: bool = False  # fp16 overflow: no optimizer moved; the grad norms are not finite
    # this env's training samples since the epoch's training started, over the wall time since
    # then (pauses excluded); 0.0 in recordings older than the field
    samples_per_s: float = 0.0  # samples/s


class EpochSummary(Event, frozen=True, kw_only=True):
    train_loss: float  # nats
    train_accuracy: float  # fraction
    val_loss: float  # nats
    val_accuracy: float  # fraction
    perplexity: float | None  # unitless, exp(val_loss); language models only
    grad_norm_pre_clip: float  # L2 norm, mean over the epoch's finite steps
    grad_norm_post_clip: float  # L2 norm, mean over the epoch's finite steps
    clipped_fraction: float  # fraction of the epoch's steps that were clipped
    clip_threshold: float | None  # L2 norm; None: clipping disabled
    slots: list[SlotState]
    consecutive_panics: int  # count
    total_panics: int  # count
    rollbacks: int  # count
    last_panic_reason: PanicReason | None = None
    last_action: str = "WAIT"  # e.g. "GERMINATE block1 conv_light"; its op is ``last_op``
    reward: float | None = None  # accuracy points
    samples_per_s: float = 0.0  # samples/s: training samples over the epoch's wall time
    host_params: int = 0  # count
    seed_params: int = 0  # count
    skipped_steps: int = 0  # count: fp16 overflows, steps of the epoch in which no optimizer moved
    last_op: Op | None = None  # the op of ``last_action``; None in recordings older than it
    # Compute (appended; issue 24): FLOPs this env spent in the episode so far, by kind, counted
    # by FlopCounterMode per architecture (esper_engine/flops.py); 0 in older recordings.
    train_flops: int = 0  # FLOPs: training steps (forward + backward)
    val_flops: int = 0  # FLOPs: validation passes (the decisions' data)
    attribution_flops: int = 0  # FLOPs: Shapley attribution passes
    report_flops: int = 0  # FLOPs: report evaluations (the held-out report split)
    # The report split (appended; issue 24): held out, read only by the report, never by a
    # decision; None on epochs without a report (``report_every``) and in older recordings.
    report_accuracy: float | None = None  # fraction
    report_loss: float | None = None  # nats
    report_perplexity: float | None = None  # unitless, exp(report_loss); language models only
    # Learning rate (appended; issue 25): the host optimizer's lr at the epoch's end (the
    # schedule's factor x the operator's SetLrScale); None in older recordings.
    host_lr: float | None = None  # lr (SGD step size)
    lr_scale: float = 1.0  # factor: the operator's SetLrScale on this env
    governor_sensitivity: float | None = None  # standard deviations; None in older recordings


class SeedTransition(Event, frozen=True, kw_only=True):
    slot_id: str
    blueprint: str | None
    from_stage: SeedStage
    to_stage: SeedStage
    alpha: float  # blend weight in the stage left, unitless in [0, 1]
    epochs_in_stage: int  # count: epochs spent in the stage left
    initiator: Initiator


class GovernorPanic(Event, frozen=True, kw_only=True):
    reason: PanicReason
    loss: float  # nats: the validation loss judged
    threshold: float | None  # nats: the value the loss crossed; None for a non-finite loss
    consecutive_panics: int  # count
    rollback_due: bool


class GovernorRollback(Event, frozen=True, kw_only=True):
    """What a rollback did (``esper_engine.governor.GovernorReport`` is this struct)."""

    reason: RollbackReason
    initiator: Initiator  # governor or operator
    loss_at_panic: float | None  # nats; None when no panic led to it
    consecutive_panics: int  # count, at the rollback
    seeds_pruned: list[str]  # slot ids
    penalty: float  # accuracy points, a magnitude: the reward added is -penalty (0 for operator)
    threshold: float | None = None  # nats: the threshold the panic's loss crossed
    episode_ended: bool = False  # max_rollbacks_per_episode reached: the host is re-created


class Attribution(Event, frozen=True, kw_only=True):
    shapley: dict[str, float]  # slot id -> Shapley value, a fraction of accuracy (in [-1, 1])
    std: dict[str, float] | None  # slot id -> standard error (fraction); None when exact
    full_value: float  # fraction: v(all), validation accuracy with every active seed on
    empty_value: float  # fraction: v(none), every active seed at alpha 0
    exact: bool
    coalitions: int  # count of coalitions evaluated
    full_loss: float | None = None  # nats, with every active seed on
    empty_loss: float | None = None  # nats, with every active seed at alpha 0
    cost_ratio: float | None = None  # unitless ratio: wall time / one plain validation pass


class PolicyUpdate(Event, frozen=True, kw_only=True):
    update: int  # count of updates so far (from 1)
    policy_loss: float  # unitless (clipped surrogate objective)
    value_loss: float  # half squared error of returns (accuracy points squared)
    entropy: float  # nats
    approx_kl: float  # nats
    clip_fraction: float  # fraction of samples whose ratio was clipped
    explained_variance: float  # unitless ratio (1 = perfect value function)
    grad_norm: float  # L2 norm, before the policy's clip
    mean_episode_reward: float  # accuracy points
    # Kickstarting (None: not recorded, a recording from before these were added).
    imitation_weight: float | None = None  # factor: the imitation term's weight in this update
    # The agent's most likely op is the heuristic's on this fraction of the update's transitions
    # (the agent before the update; for the behaviour clone, after it, on its demonstrations).
    heuristic_agreement: float | None = None  # fraction of transitions, in [0, 1]


class CommandAck(Event, frozen=True, kw_only=True):
    command: str  # the command's tag, e.g. "ForceRollback" (or the class name of an unknown one)
    accepted: bool
    reason: str = ""
    value: float | None = None  # the command's value (SetClipThreshold: an L2 norm)
    command_id: int = 0
    console: str = ""  # who sent it: "" the run's own console or script, else an attached one


class RunFinished(Event, frozen=True, kw_only=True):
    status: RunStatus
    error: str | None = None
    ranks: int = 1  # processes the run's envs were sharded over (torchrun's world size)
    exchange_s: float = 0.0  # seconds: what the exchanges cost (each: the least-waiting rank's)
    # appended (issue 24); 0 in older recordings
    total_flops: int = 0  # FLOPs the run spent: over envs and episodes, each episode's last
    # EpochSummary's train + val + attribution + report FLOPs


class RunResumed(Event, frozen=True, kw_only=True):
    """The run continues from its checkpoint: the events before this one are its history, the
    recording was cut back to ``recording_bytes`` and everything after is the resumed process.
    ``episode`` / ``epoch`` (the common fields) equal ``from_episode`` / ``from_epoch``."""

    from_episode: int  # index from 0: the first episode the resumed process runs (or finishes)
    from_epoch: int  # index from 0, within that episode: the first epoch it trains
    recording_bytes: int = 0  # bytes: the recording's length at the checkpoint
    pid: int = 0  # the resumed process's id


class EpochProgress(Event, frozen=True, kw_only=True):
    """Life inside an epoch: where one env's epoch is, a few times a second at most
    (``esper_engine.reports.PROGRESS_PERIOD_S``), read off the batch loop's counter with no
    device sync. Made for the console's progress bars and its STALE test, not for analysis:
    how many are recorded depends on the wall clock, so a re-run records a different number."""

    phase: str  # "train" (the epoch's training batches) or "validate" (its validation batches)
    batch: int  # count of the phase's batches done so far (from 1: "batch 3 of 20")
    batches: int  # count of the phase's batches in all
    elapsed_s: float = 0.0  # seconds since the epoch started, its pauses left out


class OperatorNote(Event, frozen=True, kw_only=True):
    """A note an operator wrote on the run (``env``: about that env; None: about the run),
    recorded where the trainer was when it arrived. Shown as text, never as markup."""

    text: str
    console: str = ""  # who wrote it: "" the run's own console or script, else an attached one
    command_id: int = 0


class ResourceSample(Event, frozen=True, kw_only=True):
    """What one process uses, every ``esper_engine.resources.RESOURCE_PERIOD_S`` at most (issue
    25): a run-level event (``env`` None), one per rank in a sharded run. GPU figures are None
    on a CPU run and where the driver does not tell them (utilisation needs pynvml)."""

    rank: int = 0  # the process's rank (0: the leader, or the only process)
    cpu_percent: float = 0.0  # percent of one core: process CPU time over wall time since the last
    rss_bytes: int = 0  # bytes: resident set size now
    gpu_allocated: int | None = None  # bytes: torch's allocated device memory now
    gpu_reserved: int | None = None  # bytes: held by torch's caching allocator now
    gpu_utilization: float | None = None  # percent: the device's busy time (nvml's sample)


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
    | RunResumed
    | EpochProgress
    | OperatorNote
    | ResourceSample
)

# --- commands: console -> trainer -------------------------------------------------------------


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    command_id: int = 0
    console: str = ""  # the attached console that sent it (set by the control socket)


class ForceRollback(Command, frozen=True, kw_only=True):
    env: int  # index from 0


class SetClipThreshold(Command, frozen=True, kw_only=True):
    value: float  # L2 norm, at most config.MAX_CLIP_THRESHOLD
    env: int | None = None  # index from 0; None: every env


class Pause(Command, frozen=True, kw_only=True):
    pass


class Resume(Command, frozen=True, kw_only=True):
    pass


class Stop(Command, frozen=True, kw_only=True):
    pass


class SetLrScale(Command, frozen=True, kw_only=True):
    """The operator's factor on the learning rates (host and seeds), on top of the schedule."""

    value: float  # factor, at most config.MAX_LR_SCALE
    env: int | None = None  # index from 0; None: every env


class SetGovernorSensitivity(Command, frozen=True, kw_only=True):
    """The governor's divergence gate: loss > mean + value x std of its history."""

    value: float  # standard deviations, at most config.MAX_GOVERNOR_SENSITIVITY
    env: int | None = None  # index from 0; None: every env


class GerminateSeed(Command, frozen=True, kw_only=True):
    """Plant a seed of ``blueprint`` in ``slot_id`` of ``env``, under the policy's legality."""

    env: int  # index from 0
    slot_id: str
    blueprint: str


class PruneSeed(Command, frozen=True, kw_only=True):
    """Prune the live seed in ``slot_id`` of ``env``, under the policy's gates (minimum age)."""

    env: int  # index from 0
    slot_id: str


class FossilizeSeed(Command, frozen=True, kw_only=True):
    """Fossilize the HOLDING seed in ``slot_id`` of ``env``, under the policy's gates."""

    env: int  # index from 0
    slot_id: str


class CheckpointNow(Command, frozen=True, kw_only=True):
    """Write a checkpoint at the next epoch boundary, whatever ``checkpoint_every`` says."""


class AddNote(Command, frozen=True, kw_only=True):
    """Record an ``OperatorNote`` with ``text`` (about ``env``; None: the run)."""

    text: str  # at most commands.MAX_NOTE_CHARS characters
    env: int | None = None  # index from 0


OperatorCommand = (
    ForceRollback
    | SetClipThreshold
    | Pause
    | Resume
    | Stop
    | SetLrScale
    | SetGovernorSensitivity
    | GerminateSeed
    | PruneSeed
    | FossilizeSeed
    | CheckpointNow
    | AddNote
)


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
