"""The telemetry/command contract: every struct round-trips, tags sit under "type", and payloads
written before a defaulted field was appended still decode."""

from __future__ import annotations

import inspect
import typing

import msgspec
import pytest

from esper_engine import contracts as c

EVENT_TYPES = typing.get_args(c.TelemetryEvent)
COMMAND_TYPES = typing.get_args(c.OperatorCommand)

SLOTS = [
    c.SlotState(
        slot_id="r0c0",
        stage=c.SeedStage.BLENDING,
        blueprint="conv_light",
        alpha=0.25,
        epochs_in_stage=3,
        params=1234,
    ),
    c.SlotState(
        slot_id="r0c1",
        stage=c.SeedStage.TRAINING,
        blueprint="attention",
        alpha=0.5,
        epochs_in_stage=1,
        params=99,
    ),
]
COMMON = {"run_id": "run-7", "env": 2, "episode": 4, "epoch": 11, "wall_time": 12.5}

# One instance of every struct with every field set to a non-default value.
EVENT_SAMPLES: dict[type, c.Event] = {
    c.RunStarted: c.RunStarted(
        **COMMON,
        task="synthetic-images",
        task_kind="classification",
        n_envs=3,
        slot_ids=["r0c0", "r0c1"],
        policy="heuristic",
        episodes=5,
        epochs=20,
        batches_per_epoch=8,
        random_guess_loss=2.302585,
        schema_version=7,
        blueprints=["conv_light", "attention"],
        device="cuda:0",
        config={"lr": 0.1, "nested": {"a": [1, 2]}},
        host_params=4810,
        seed_params=12,
        host_kind="cnn",
        host_preset="small",
        host_sizes="8-16-32",
        host_flops=1622656,
        memory_estimate=12_645_096,
        epoch_s_estimate=2.5,
    ),
    c.BatchStats: c.BatchStats(
        **COMMON,
        batch=6,
        loss=1.5,
        grad_norm_pre_clip=3.5,
        grad_norm_post_clip=1.0,
        clip_threshold=1.0,
        clipped=True,
        skipped=True,
        samples_per_s=812.5,
    ),
    c.EpochProgress: c.EpochProgress(
        **COMMON, phase="validate", batch=3, batches=20, elapsed_s=12.5
    ),
    c.ResourceSample: c.ResourceSample(
        **COMMON,  # env set only to prove the field survives: the trainer sends None
        rank=1,
        cpu_percent=187.5,
        rss_bytes=1_234_567_890,
        gpu_allocated=3_000_000_000,
        gpu_reserved=4_000_000_000,
        gpu_utilization=87.0,
    ),
    c.EpochSummary: c.EpochSummary(
        **COMMON,
        train_loss=0.9,
        train_accuracy=0.61,
        val_loss=1.1,
        val_accuracy=0.55,
        perplexity=3.0,
        grad_norm_pre_clip=2.5,
        grad_norm_post_clip=1.0,
        clipped_fraction=0.25,
        clip_threshold=1.0,
        slots=SLOTS,
        consecutive_panics=1,
        total_panics=4,
        rollbacks=2,
        skipped_steps=3,
        last_panic_reason=c.PanicReason.DIVERGENCE,
        last_action="GERMINATE r0c1 attention",
        reward=0.75,
        samples_per_s=1520.5,
        host_params=50000,
        seed_params=1333,
        last_op=c.Op.GERMINATE,
        train_flops=3_200_000_000_000,
        val_flops=410_000_000_000,
        attribution_flops=90_000_000_000,
        report_flops=41_000_000_000,
        report_accuracy=0.52,
        report_loss=1.2,
        report_perplexity=3.3,
        host_lr=0.04,
        lr_scale=0.5,
        governor_sensitivity=4.0,
    ),
    c.SeedTransition: c.SeedTransition(
        **COMMON,
        slot_id="r0c0",
        blueprint="conv_light",
        from_stage=c.SeedStage.TRAINING,
        to_stage=c.SeedStage.BLENDING,
        alpha=0.1,
        epochs_in_stage=5,
        initiator=c.Initiator.GATE,
    ),
    c.GovernorPanic: c.GovernorPanic(
        **COMMON,
        reason=c.PanicReason.NAN,
        loss=float("inf"),
        threshold=4.5,
        consecutive_panics=2,
        rollback_due=True,
    ),
    c.GovernorRollback: c.GovernorRollback(
        **COMMON,
        reason=c.RollbackReason.LOBOTOMY,
        initiator=c.Initiator.OPERATOR,
        loss_at_panic=9.5,
        consecutive_panics=3,
        seeds_pruned=["r0c1"],
        penalty=-1.0,
        threshold=4.5,
        episode_ended=True,
    ),
    c.Attribution: c.Attribution(
        **COMMON,
        shapley={"r0c0": 0.1, "r0c1": 0.05},
        std={"r0c0": 0.01, "r0c1": 0.02},
        full_value=0.6,
        empty_value=0.45,
        exact=True,
        coalitions=4,
        full_loss=1.0,
        empty_loss=1.4,
        cost_ratio=2.5,
    ),
    c.PolicyUpdate: c.PolicyUpdate(
        **COMMON,
        update=3,
        policy_loss=-0.02,
        value_loss=0.5,
        entropy=1.2,
        approx_kl=0.01,
        clip_fraction=0.1,
        explained_variance=0.3,
        grad_norm=0.8,
        mean_episode_reward=1.25,
        imitation_weight=0.5,
        heuristic_agreement=0.9,
    ),
    c.CommandAck: c.CommandAck(
        **COMMON,
        command="SetClipThreshold",
        accepted=False,
        reason="non-positive threshold",
        value=-1.0,
        command_id=17,
        console="attach-7",
    ),
    c.RunFinished: c.RunFinished(
        **COMMON,
        status=c.RunStatus.CRASHED,
        error="RuntimeError: boom",
        ranks=2,
        exchange_s=0.25,
        total_flops=7_400_000_000_000,
    ),
    c.RunResumed: c.RunResumed(
        **COMMON, from_episode=1, from_epoch=2, recording_bytes=4096, pid=1234
    ),
    c.OperatorNote: c.OperatorNote(
        **COMMON, text="[b]lr looks high[/b]", console="attach-7", command_id=9
    ),
}
COMMAND_SAMPLES: dict[type, c.Command] = {
    c.ForceRollback: c.ForceRollback(command_id=1, env=2, console="a"),
    c.SetClipThreshold: c.SetClipThreshold(command_id=2, value=0.5, env=1, console="b"),
    c.Pause: c.Pause(command_id=3, console="c"),
    c.Resume: c.Resume(command_id=4, console="d"),
    c.Stop: c.Stop(command_id=5, console="e"),
    c.SetLrScale: c.SetLrScale(command_id=6, value=0.5, env=1, console="f"),
    c.SetGovernorSensitivity: c.SetGovernorSensitivity(command_id=7, value=4.0, env=0, console="g"),
    c.GerminateSeed: c.GerminateSeed(
        command_id=8, env=1, slot_id="block1", blueprint="conv_light", console="h"
    ),
    c.PruneSeed: c.PruneSeed(command_id=9, env=1, slot_id="block1", console="i"),
    c.FossilizeSeed: c.FossilizeSeed(command_id=10, env=0, slot_id="block2", console="j"),
    c.CheckpointNow: c.CheckpointNow(command_id=11, console="k"),
    c.AddNote: c.AddNote(command_id=12, text="raised the lr", env=0, console="l"),
}
ALL_SAMPLES = [*EVENT_SAMPLES.values(), *COMMAND_SAMPLES.values()]


def test_every_contract_type_has_a_sample() -> None:
    # every type the decoders accept: the unions they are built from
    assert set(EVENT_SAMPLES) == set(EVENT_TYPES)
    assert set(COMMAND_SAMPLES) == set(COMMAND_TYPES)


@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda s: type(s).__name__)
def test_samples_set_every_field(sample: msgspec.Struct) -> None:
    # A field left at its default would not prove that it survives the round trip.
    for field in msgspec.structs.fields(sample):
        if field.default is not msgspec.NODEFAULT:
            assert getattr(sample, field.name) != field.default, field.name


@pytest.mark.parametrize("event", EVENT_SAMPLES.values(), ids=lambda e: type(e).__name__)
def test_event_round_trip(event: c.Event) -> None:
    data = c.encode(event)
    assert c.decode_event(data) == event
    assert msgspec.msgpack.decode(data)["type"] == type(event).__name__
    assert c.event_type(event) == type(event).__name__


@pytest.mark.parametrize("command", COMMAND_SAMPLES.values(), ids=lambda e: type(e).__name__)
def test_command_round_trip(command: c.Command) -> None:
    data = c.encode(command)
    assert c.decode_command(data) == command
    assert msgspec.msgpack.decode(data)["type"] == type(command).__name__


@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda s: type(s).__name__)
def test_payload_without_defaulted_fields_still_decodes(sample: msgspec.Struct) -> None:
    # An old recording lacks fields appended later (all with defaults): they take the default.
    fields = msgspec.structs.fields(sample)
    defaulted = {f.name: f.default for f in fields if f.default is not msgspec.NODEFAULT}
    payload = {k: v for k, v in msgspec.to_builtins(sample).items() if k not in defaulted}
    decode = c.decode_event if isinstance(sample, c.Event) else c.decode_command
    decoded = decode(msgspec.msgpack.encode(payload))
    assert decoded == msgspec.structs.replace(sample, **defaulted)


def test_unknown_type_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError):
        c.decode_event(msgspec.msgpack.encode({"type": "NoSuchEvent"}))
    with pytest.raises(msgspec.ValidationError):
        c.decode_command(c.encode(EVENT_SAMPLES[c.RunFinished]))


def test_the_vocabulary_decodes_to_its_enum_members() -> None:
    transition = c.decode_event(c.encode(EVENT_SAMPLES[c.SeedTransition]))
    assert type(transition.from_stage) is c.SeedStage and type(transition.initiator) is c.Initiator
    summary = c.decode_event(c.encode(EVENT_SAMPLES[c.EpochSummary]))
    assert type(summary.slots[0].stage) is c.SeedStage and summary.last_op is c.Op.GERMINATE
    assert c.decode_event(c.encode(EVENT_SAMPLES[c.RunFinished])).status is c.RunStatus.CRASHED
    # On the wire they are the plain names a human (or an older reader) expects.
    wire = msgspec.msgpack.decode(c.encode(EVENT_SAMPLES[c.SeedTransition]))
    assert (wire["from_stage"], wire["initiator"]) == ("TRAINING", "gate")


@pytest.mark.parametrize(
    ("sample", "field", "bad"),
    [
        (c.SeedTransition, "to_stage", "SPROUTING"),
        (c.SeedTransition, "initiator", "someone"),
        (c.RunFinished, "status", "exploded"),
        (c.GovernorPanic, "reason", "boredom"),
        (c.GovernorRollback, "reason", "boredom"),
        (c.EpochSummary, "last_op", "DANCE"),
    ],
)
def test_an_unknown_name_in_the_vocabulary_does_not_decode(
    sample: type, field: str, bad: str
) -> None:
    payload = msgspec.to_builtins(EVENT_SAMPLES[sample]) | {field: bad}
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value"):
        c.decode_event(msgspec.msgpack.encode(payload))


def test_live_stages_are_enum_members() -> None:
    assert not hasattr(c, "SEED_STAGES")  # the string tuple is gone: iterate SeedStage
    assert c.LIVE_SEED_STAGES == {"GERMINATED", "TRAINING", "BLENDING", "HOLDING"}
    assert all(type(stage) is c.SeedStage for stage in c.LIVE_SEED_STAGES)


def test_every_numeric_field_states_its_unit_where_declared() -> None:
    # SPEC 9: a comment on the declaration line of every int/float field (inherited ones too).
    identifiers = {"schema_version", "command_id"}  # not measurements
    for struct in (c.SlotState, *EVENT_TYPES, *COMMAND_TYPES):
        for field in msgspec.structs.fields(struct):
            if field.name in identifiers or not _is_number(field.type):
                continue
            owner = next(k for k in struct.__mro__ if field.name in vars(k)["__annotations__"])
            lines = inspect.getsource(owner).splitlines()
            declared = next(line for line in lines if line.lstrip().startswith(f"{field.name}:"))
            assert "  # " in declared, f"{owner.__name__}.{field.name} states no unit"


def _is_number(annotation: object) -> bool:
    """int or float, optionally ``| None`` (containers of numbers carry their unit too, but
    the check keeps to scalars)."""
    return set(typing.get_args(annotation) or (annotation,)) - {type(None)} <= {int, float}


def test_events_are_frozen() -> None:
    with pytest.raises(AttributeError):
        EVENT_SAMPLES[c.BatchStats].loss = 0.0  # type: ignore[misc]
