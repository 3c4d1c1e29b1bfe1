"""The reducer: what the console shows after each kind of event, on the real engine's recording.

A few rules the recording shows only by chance (a seed germinated into a slot that had a value,
a new episode's first summary) are pinned with events built by the engine's own constructors.
"""

from __future__ import annotations

import math

import msgspec
import pytest

from esper_engine.contracts import (
    Attribution,
    BatchStats,
    CommandAck,
    EpochSummary,
    GovernorPanic,
    GovernorRollback,
    Initiator,
    RunFinished,
    SeedStage,
    SeedTransition,
    SlotState,
)
from overwatch.state import (
    HISTORY,
    LOG_SIZE,
    STALE_AFTER_S,
    ConsoleState,
    Note,
    RunPlan,
    liveness,
    log_note,
    reduce,
    reduce_many,
)
from tests.console.fixtures import (
    CRASH_ERROR,
    crashed_run,
    epoch_stops,
    real_events,
    repeated_run,
    run_started,
    running,
)


def _last(events: list, kind: type, env: int | None = None):
    return [e for e in events if type(e) is kind and (env is None or e.env == env)][-1]


def test_run_started_sets_up_one_view_per_env() -> None:
    events = real_events()
    started = run_started(events)
    state = reduce(ConsoleState(), started)
    assert (state.task, state.policy, state.n_envs) == (started.task, "heuristic", started.n_envs)
    assert [view.env for view in state.envs] == list(range(started.n_envs))
    assert list(state.envs[0].slots) == started.slot_ids
    assert state.trainer_state == "running"
    assert state.clip_threshold == started.config["max_grad_norm"]
    assert (state.host_params, state.seed_params) == (started.host_params, started.seed_params)


def test_the_reducer_never_grows_the_view_list_to_an_env_from_a_file() -> None:
    """The decoder refuses such events (recording.DeclaredRange); the reducer still refuses to
    append a billion views should one reach it."""
    summary = _last(real_events(), EpochSummary)
    with pytest.raises(ValueError, match="env 1000000000 is outside 0..1023"):
        reduce(ConsoleState(), msgspec.structs.replace(summary, env=10**9))


def test_a_plan_says_what_is_starting_before_any_event() -> None:
    plan = RunPlan("r1", "synthetic-images", "ppo", 3, 2, 5, "cpu", 1.0)
    state = ConsoleState.planned(plan)
    assert (state.run_id, state.task, state.policy, state.n_envs) == ("r1", plan.task, "ppo", 3)
    assert (state.episodes, state.epochs, state.trainer_state) == (2, 5, "starting")
    assert state.envs == [] and state.clip_threshold == 1.0
    assert ConsoleState.planned(None) == ConsoleState()


def test_the_latest_epoch_summary_is_kept_whole() -> None:
    events = running(epochs=8)  # the first episode
    state = reduce_many(ConsoleState(), events)
    for view in state.envs:
        summaries = [e for e in events if type(e) is EpochSummary and e.env == view.env]
        assert view.summary is summaries[-1]
        assert view.batch is None  # at the end of an epoch: nothing newer than the summary
        assert list(view.val_acc_history) == [s.val_accuracy for s in summaries]
        assert list(view.val_loss_history) == [s.val_loss for s in summaries]
    last_round = [_last(events, EpochSummary, env) for env in range(len(state.envs))]
    assert state.samples_per_s == pytest.approx(sum(s.samples_per_s for s in last_round))
    assert (state.episode, state.epoch) == (0, last_round[0].epoch)
    assert state.epochs_done == state.epochs


def test_batch_stats_are_the_epoch_in_progress() -> None:
    events = real_events()
    stop = epoch_stops(events)[2]
    first = next(i for i in range(stop, len(events)) if type(events[i]) is BatchStats)
    batch = events[first]
    view = reduce_many(ConsoleState(), events[: first + 1]).envs[batch.env]
    assert view.batch is batch and view.latest is batch
    assert view.grad_norm_post == batch.grad_norm_post_clip
    assert view.samples_per_s == batch.samples_per_s > 0  # from the first batches of the epoch
    assert view.summary.epoch == batch.epoch - 1  # the figures still those of the last epoch


def test_grad_history_comes_from_batch_stats_when_present() -> None:
    events = running(epochs=8)
    state = reduce_many(ConsoleState(), events)
    posts = [e.grad_norm_post_clip for e in events if type(e) is BatchStats and e.env == 1]
    assert [x for x in state.envs[1].grad_history if not math.isnan(x)] == [
        x for x in posts if not math.isnan(x)
    ]
    without_batches = [e for e in events if type(e) is not BatchStats]
    state = reduce_many(ConsoleState(), without_batches)
    summaries = [e for e in without_batches if type(e) is EpochSummary and e.env == 0]
    assert list(state.envs[0].grad_history) == [s.grad_norm_post_clip for s in summaries]


def test_seed_transition_shows_before_the_next_summary() -> None:
    events = real_events()
    index = next(i for i, e in enumerate(events) if type(e) is SeedTransition)
    state = reduce_many(ConsoleState(), events[: index + 1])
    transition = events[index]
    slot = state.envs[transition.env].slots[transition.slot_id].state
    assert (slot.stage, slot.blueprint) == (transition.to_stage, transition.blueprint)
    assert state.log[-1] is transition


def test_governor_panic_then_rollback() -> None:
    events = real_events()
    panic = next(i for i, e in enumerate(events) if type(e) is GovernorPanic)
    env = events[panic].env
    state = reduce_many(ConsoleState(), events[: panic + 1])
    gov = state.envs[env].governor
    assert (gov.consecutive_panics, gov.total_panics, gov.last_reason) == (1, 1, "nan")
    rollback = next(i for i, e in enumerate(events) if type(e) is GovernorRollback)
    reduce_many(state, events[panic + 1 : rollback + 1])
    gov = state.envs[env].governor
    assert (gov.consecutive_panics, gov.total_panics, gov.rollbacks) == (0, 1, 1)
    assert isinstance(state.log[-1], GovernorRollback)
    summary = next(e for e in events[rollback:] if type(e) is EpochSummary and e.env == env)
    reduce_many(state, events[rollback + 1 : events.index(summary) + 1])
    assert state.envs[env].governor.rollbacks == summary.rollbacks == 1  # the summary agrees


def test_an_operator_rollback_counts_at_once_not_at_the_next_summary() -> None:
    events = real_events()
    index = next(
        i
        for i, e in enumerate(events)
        if type(e) is GovernorRollback and e.initiator == Initiator.OPERATOR
    )
    rollback = events[index]
    before = reduce_many(ConsoleState(), events[:index]).envs[rollback.env].governor
    after = reduce(reduce_many(ConsoleState(), events[:index]), rollback)
    gov = after.envs[rollback.env].governor
    assert (gov.rollbacks, gov.last_reason) == (before.rollbacks + 1, "operator")


def test_shown_shapley_values_add_up_to_their_own_attribution() -> None:
    """At every epoch of the real run: a value shown as current comes from the env's latest
    attribution, of the epoch on screen, and the current values add up to its v(all) - v(none);
    any other value shown is marked with the earlier epoch it was measured in."""
    events = real_events()
    seen_stale = seen_current = 0
    for stop in epoch_stops(events):
        state = reduce_many(ConsoleState(), events[:stop])
        for view in state.envs:
            figures = {sid: view.shapley(slot) for sid, slot in view.slots.items()}
            current = {sid: f for sid, f in figures.items() if f is not None and f.current}
            stale = [f for f in figures.values() if f is not None and not f.current]
            if current:
                attribution = view.attribution
                assert view.attribution_current
                assert (attribution.episode, attribution.epoch) == (
                    view.summary.episode,
                    view.summary.epoch,
                )
                assert {sid: f.value for sid, f in current.items()} == attribution.shapley
                total = sum(f.value for f in current.values())
                assert total == pytest.approx(attribution.full_value - attribution.empty_value)
            for figure in stale:
                assert (figure.episode, figure.epoch) < (view.summary.episode, view.summary.epoch)
            seen_stale += len(stale)
            seen_current += len(current)
    assert seen_current and seen_stale  # the recording has both kinds


def _common(epoch: int, episode: int = 0) -> dict:
    return {"run_id": "r", "env": 0, "episode": episode, "epoch": epoch}


def _attribution(epoch: int, values: dict[str, float], episode: int = 0) -> Attribution:
    return Attribution(
        **_common(epoch, episode),
        shapley=values,
        std=None,
        full_value=0.6,
        empty_value=0.6 - sum(values.values()),
        exact=True,
        coalitions=2 ** len(values),
    )


def _transition(epoch: int, slot_id: str, to: SeedStage, blueprint: str = "norm") -> SeedTransition:
    return SeedTransition(
        **_common(epoch),
        slot_id=slot_id,
        blueprint=blueprint,
        from_stage=SeedStage.DORMANT,
        to_stage=to,
        alpha=0.0,
        epochs_in_stage=1,
        initiator=Initiator.POLICY,
    )


def _summary(like: EpochSummary, epoch: int, episode: int = 0, **slots: SeedStage) -> EpochSummary:
    states = [SlotState(slot_id=sid, stage=stage, alpha=1.0) for sid, stage in slots.items()]
    return msgspec.structs.replace(like, env=0, episode=episode, epoch=epoch, slots=states)


def test_a_new_seed_never_shows_the_previous_seeds_value() -> None:
    events = real_events()
    like = _last(events, EpochSummary, 0)
    state = reduce(ConsoleState(), run_started(events))
    view = state.envs[0]
    reduce_many(state, [_attribution(3, {"block1": 0.04}), _summary(like, 3, block1="HOLDING")])
    assert view.shapley(view.slots["block1"]).value == 0.04
    # Its prune, embargo and reset were dropped by a full queue: the germination alone must do.
    reduce(state, _transition(6, "block1", SeedStage.GERMINATED))
    assert view.shapley(view.slots["block1"]) is None
    reduce(state, _transition(7, "block1", SeedStage.PRUNED))
    assert view.shapley(view.slots["block1"]) is None


def test_values_of_earlier_epochs_are_marked_and_a_new_episode_forgets_them() -> None:
    events = real_events()
    like = _last(events, EpochSummary, 0)
    state = reduce(ConsoleState(), run_started(events))
    view = state.envs[0]
    reduce_many(
        state,
        [
            _attribution(3, {"block1": 0.04, "block2": -0.01}),
            _summary(like, 3, block1=SeedStage.FOSSILIZED, block2=SeedStage.HOLDING),
            _attribution(4, {"block2": 0.02}),  # a fossil is no longer attributed
            _summary(like, 4, block1=SeedStage.FOSSILIZED, block2=SeedStage.HOLDING),
        ],
    )
    fossil, holding = (view.shapley(view.slots[s]) for s in ("block1", "block2"))
    assert (fossil.value, fossil.epoch, fossil.current) == (0.04, 3, False)
    assert (holding.value, holding.epoch, holding.current) == (0.02, 4, True)
    reduce(state, _summary(like, 5, block1=SeedStage.FOSSILIZED, block2=SeedStage.HOLDING))
    assert not view.attribution_current  # no attribution for epoch 5 (a panic, say)
    assert not view.shapley(view.slots["block2"]).current
    reduce(state, _summary(like, 0, 1, block1=SeedStage.FOSSILIZED, block2=SeedStage.HOLDING))
    assert view.attribution is None  # another episode, another host
    assert all(view.shapley(slot) is None for slot in view.slots.values())


def test_command_acks_change_trainer_state_and_threshold() -> None:
    state = reduce(ConsoleState(), run_started(real_events()))
    common = {"run_id": "r", "episode": 0, "epoch": 1}
    reduce(state, CommandAck(**common, command="Pause", accepted=True, command_id=1))
    assert state.trainer_state == "paused"
    reduce(state, CommandAck(**common, command="Resume", accepted=True, command_id=2))
    assert state.trainer_state == "running"
    reduce(state, CommandAck(**common, command="SetClipThreshold", accepted=True, value=0.5))
    assert state.clip_threshold == 0.5
    assert {view.clip_threshold for view in state.envs} == {0.5}
    reduce(state, CommandAck(**common, env=2, command="SetClipThreshold", accepted=True, value=2.0))
    assert (state.clip_threshold, state.envs[2].clip_threshold, state.envs[1].clip_threshold) == (
        0.5,
        2.0,
        0.5,
    )
    reduce(
        state,
        CommandAck(
            **common,
            command="SetClipThreshold",
            accepted=False,
            value=-1.0,
            reason="clip threshold must be positive, got -1.0",
        ),
    )
    assert state.clip_threshold == 0.5
    assert [type(entry) for entry in list(state.log)[-5:]] == [CommandAck] * 5


def test_the_recorded_acks_move_the_threshold_and_the_trainer_state() -> None:
    events = real_events()
    acks = [e for e in events if type(e) is CommandAck]
    clip = next(a for a in acks if a.command == "SetClipThreshold" and a.accepted)
    state = reduce_many(ConsoleState(), events[: events.index(clip) + 1])
    assert state.clip_threshold == clip.value
    pause = next(a for a in acks if a.command == "Pause")
    state = reduce_many(state, events[events.index(clip) + 1 : events.index(pause) + 1])
    assert state.trainer_state == "paused"


def test_run_finished_crashed_keeps_the_error() -> None:
    state = reduce_many(ConsoleState(), crashed_run())
    assert (state.trainer_state, state.finished_status, state.error) == (
        "crashed",
        "crashed",
        CRASH_ERROR,
    )
    assert state.finished
    assert isinstance(state.log[-1], RunFinished)


def test_envs_appear_without_run_started() -> None:
    events = real_events()
    summary = _last(events, EpochSummary, env=3)
    state = reduce(ConsoleState(), summary)
    assert len(state.envs) == 4
    assert state.envs[3].summary is summary
    assert set(state.envs[3].slots) == {s.slot_id for s in summary.slots}


def test_log_and_histories_are_bounded() -> None:
    events = repeated_run(30)
    state = reduce_many(ConsoleState(), events)
    logged = [e for e in events if type(e) not in (BatchStats, EpochSummary, Attribution)]
    assert len(logged) > LOG_SIZE
    assert len(state.log) == LOG_SIZE
    assert state.log[-1] is events[-1]
    assert len(state.envs[0].val_acc_history) == HISTORY


def test_reducing_in_two_parts_equals_reducing_at_once() -> None:
    """Replay seeks rebuild the state from the start: it must not matter where a batch ends."""
    events = real_events()
    whole = reduce_many(ConsoleState(), events)
    split = reduce_many(reduce_many(ConsoleState(), events[:137]), events[137:])
    assert _comparable(split) == _comparable(whole)


def _comparable(state: ConsoleState) -> tuple:
    """The state with NaN figures (a NaN-poisoned env's grad norms) spelled so == holds."""
    return (
        [(v.summary, v.batch, v.attribution, v.slots, v.governor) for v in state.envs],
        [[str(x) for x in v.grad_history] for v in state.envs],
        list(state.log),
        state.epochs_done,
        state.trainer_state,
    )


def test_log_note_records_console_actions() -> None:
    state = reduce_many(ConsoleState(), running(epochs=8))
    log_note(state, "sent Pause (#1)")
    assert state.log[-1] == Note("sent Pause (#1)", state.episode, state.epoch, None)


def test_liveness() -> None:
    events = real_events()
    state = ConsoleState()
    assert liveness(state, 0.0, is_live=True, read_only=False) == "WAITING"
    reduce_many(state, events[:-1])
    last = state.last_wall_time
    assert liveness(state, last + 1.0, is_live=True, read_only=False) == "LIVE"
    assert liveness(state, last + STALE_AFTER_S + 1, is_live=True, read_only=False) == "STALE"
    assert liveness(state, last + STALE_AFTER_S + 1, is_live=False, read_only=True) == "REPLAY"
    state.trainer_state = "paused"  # a paused trainer is quiet on purpose
    assert liveness(state, last + STALE_AFTER_S + 1, is_live=True, read_only=False) == "LIVE"
    reduce(state, events[-1])
    assert liveness(state, last + STALE_AFTER_S + 1, is_live=True, read_only=False) == "ENDED"


def test_reduces_a_long_run_to_bounded_state() -> None:
    """100k events (the bench's size; its timing lives in bench/run.py) keep the state bounded."""
    events = repeated_run(100_000 // (len(real_events()) - 2) + 1)
    prefix = events[:100_000]
    state = reduce_many(ConsoleState(), prefix)
    assert state.events_seen == 100_000
    last = [e for e in prefix if isinstance(e, EpochSummary) and e.env == 0][-1]
    assert state.envs[0].summary is last
    assert len(state.log) == state.log.maxlen  # full, and no longer than its bound
