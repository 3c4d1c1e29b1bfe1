"""The reducer: what the console shows after each kind of event."""

from __future__ import annotations

import pytest

from esper_engine.contracts import (
    Attribution,
    CommandAck,
    EpochSummary,
    GovernorPanic,
    GovernorRollback,
    RunFinished,
    SeedTransition,
)
from overwatch.state import (
    HISTORY,
    LOG_SIZE,
    STALE_AFTER_S,
    ConsoleState,
    Note,
    liveness,
    log_note,
    reduce,
    reduce_many,
)
from tests.console.fixtures import CRASH_ERROR, N_ENVS, SLOT_IDS, fixture_events


def _last(events: list, kind: type, env: int | None = None):
    return [e for e in events if type(e) is kind and (env is None or e.env == env)][-1]


def test_run_started_sets_up_one_view_per_env() -> None:
    events = fixture_events()
    state = reduce(ConsoleState(), events[0])
    assert (state.task, state.policy, state.n_envs) == ("synthetic-images", "heuristic", N_ENVS)
    assert [view.env for view in state.envs] == list(range(N_ENVS))
    assert list(state.envs[0].slots) == SLOT_IDS
    assert state.trainer_state == "running"
    assert state.clip_threshold == events[0].config["max_grad_norm"]


def test_epoch_summaries_drive_figures_and_histories() -> None:
    events = fixture_events(episodes=1)
    state = reduce_many(ConsoleState(), events)
    for env in range(N_ENVS):
        summaries = [e for e in events if type(e) is EpochSummary and e.env == env]
        view = state.envs[env]
        assert view.val_accuracy == summaries[-1].val_accuracy
        assert list(view.val_acc_history) == [s.val_accuracy for s in summaries]
        assert list(view.val_loss_history) == [s.val_loss for s in summaries]
        assert view.last_action == summaries[-1].last_action
        assert view.reward == summaries[-1].reward
    last_round = [_last(events, EpochSummary, env) for env in range(N_ENVS)]
    assert state.samples_per_s == pytest.approx(sum(s.samples_per_s for s in last_round))
    assert (state.episode, state.epoch) == (0, last_round[0].epoch)
    assert state.epochs_done == state.epochs


def test_grad_history_comes_from_batch_stats_when_present() -> None:
    events = fixture_events(episodes=1)
    state = reduce_many(ConsoleState(), events)
    posts = [
        e.grad_norm_post_clip for e in events if type(e).__name__ == "BatchStats" and e.env == 1
    ]
    assert list(state.envs[1].grad_history) == posts
    without_batches = [e for e in events if type(e).__name__ != "BatchStats"]
    state = reduce_many(ConsoleState(), without_batches)
    summaries = [e for e in without_batches if type(e) is EpochSummary and e.env == 1]
    assert list(state.envs[1].grad_history) == [s.grad_norm_post_clip for s in summaries]


def test_seed_transition_shows_before_the_next_summary() -> None:
    events = fixture_events()
    index = next(i for i, e in enumerate(events) if type(e) is SeedTransition)
    state = reduce_many(ConsoleState(), events[: index + 1])
    transition = events[index]
    slot = state.envs[transition.env].slots[transition.slot_id]
    assert (slot.stage, slot.blueprint) == (transition.to_stage, transition.blueprint)
    assert state.log[-1] is transition


def test_governor_panics_then_rollback() -> None:
    events = fixture_events(episodes=1)
    panics = [i for i, e in enumerate(events) if type(e) is GovernorPanic]
    state = reduce_many(ConsoleState(), events[: panics[0] + 1])
    gov = state.envs[events[panics[0]].env].governor
    assert (gov.consecutive_panics, gov.total_panics, gov.last_reason) == (1, 1, "divergence")
    rollback = next(
        i for i, e in enumerate(events) if type(e) is GovernorRollback and e.initiator == "governor"
    )
    reduce_many(state, events[panics[0] + 1 : rollback + 1])
    gov = state.envs[events[rollback].env].governor
    assert (gov.consecutive_panics, gov.total_panics, gov.rollbacks) == (0, 2, 1)
    assert isinstance(state.log[-1], GovernorRollback)


def test_attribution_keeps_fossilized_and_drops_gone_seeds() -> None:
    state = reduce(ConsoleState(), fixture_events()[0])
    common = {"run_id": "r", "env": 0, "episode": 0, "epoch": 3}
    for slot_id, stage in (("block1", "BLENDING"), ("block2", "FOSSILIZED")):
        state.envs[0].slots[slot_id].stage = stage
    reduce(
        state,
        Attribution(
            **common,
            shapley={"block1": 0.02, "block2": 0.04},
            std=None,
            full_value=0.8,
            empty_value=0.74,
            exact=True,
            coalitions=4,
        ),
    )
    reduce(
        state,
        Attribution(
            **common,
            shapley={"block3": -0.01},
            std={"block3": 0.002},
            full_value=0.8,
            empty_value=0.81,
            exact=False,
            coalitions=8,
        ),
    )
    slots = state.envs[0].slots
    assert slots["block1"].shapley is None  # no longer attributed: not active any more
    assert slots["block2"].shapley == 0.04  # fossilized keeps its last contribution
    assert (slots["block3"].shapley, slots["block3"].shapley_std) == (-0.01, 0.002)
    reduce(
        state,
        SeedTransition(
            **common,
            slot_id="block3",
            blueprint="norm",
            from_stage="BLENDING",
            to_stage="PRUNED",
            alpha=0.0,
            epochs_in_stage=2,
            initiator="policy",
        ),
    )
    assert slots["block3"].shapley is None


def test_command_acks_change_trainer_state_and_threshold() -> None:
    state = reduce(ConsoleState(), fixture_events()[0])
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


def test_run_finished_crashed_keeps_the_error() -> None:
    state = reduce_many(ConsoleState(), fixture_events(crash=True))
    assert (state.trainer_state, state.finished_status, state.error) == (
        "crashed",
        "crashed",
        CRASH_ERROR,
    )
    assert state.finished
    assert isinstance(state.log[-1], RunFinished)


def test_envs_appear_without_run_started() -> None:
    events = fixture_events()
    summary = _last(events, EpochSummary, env=3)
    state = reduce(ConsoleState(), summary)
    assert len(state.envs) == 4
    assert state.envs[3].val_accuracy == summary.val_accuracy
    assert set(state.envs[3].slots) == {s.slot_id for s in summary.slots}


def test_log_and_histories_are_bounded() -> None:
    events = fixture_events(episodes=40)
    state = reduce_many(ConsoleState(), events)
    logged = [
        e for e in events if type(e).__name__ not in ("BatchStats", "EpochSummary", "Attribution")
    ]
    assert len(logged) > LOG_SIZE
    assert len(state.log) == LOG_SIZE
    assert state.log[-1] is events[-1]
    assert len(state.envs[0].val_acc_history) == HISTORY


def test_reducing_in_two_parts_equals_reducing_at_once() -> None:
    """Replay seeks rebuild the state from the start: it must not matter where a batch ends."""
    events = fixture_events()
    whole = reduce_many(ConsoleState(), events)
    split = reduce_many(reduce_many(ConsoleState(), events[:137]), events[137:])
    assert split == whole


def test_log_note_records_console_actions() -> None:
    state = reduce_many(ConsoleState(), fixture_events(episodes=1))
    log_note(state, "sent Pause (#1)")
    assert state.log[-1] == Note("sent Pause (#1)", state.episode, state.epoch, None)


def test_liveness() -> None:
    state = ConsoleState()
    assert liveness(state, 0.0, is_live=True, read_only=False) == "WAITING"
    reduce_many(state, fixture_events()[:-1])
    last = state.last_wall_time
    assert liveness(state, last + 1.0, is_live=True, read_only=False) == "LIVE"
    assert liveness(state, last + STALE_AFTER_S + 1, is_live=True, read_only=False) == "STALE"
    assert liveness(state, last + STALE_AFTER_S + 1, is_live=False, read_only=True) == "REPLAY"
    state.trainer_state = "paused"  # a paused trainer is quiet on purpose
    assert liveness(state, last + STALE_AFTER_S + 1, is_live=True, read_only=False) == "LIVE"
    reduce(state, fixture_events()[-1])
    assert liveness(state, last + STALE_AFTER_S + 1, is_live=True, read_only=False) == "ENDED"


def test_reduces_a_long_run_to_bounded_state() -> None:
    """100k events (the bench's size; its timing lives in bench/run.py) keep the state bounded."""
    events = fixture_events(episodes=460, epochs=10)
    assert len(events) >= 100_000
    prefix = events[:100_000]
    state = reduce_many(ConsoleState(), prefix)
    assert state.events_seen == 100_000
    last = [e for e in prefix if isinstance(e, EpochSummary) and e.env == 0][-1]
    assert state.envs[0].val_accuracy == last.val_accuracy
    assert len(state.log) == state.log.maxlen  # full, and no longer than its bound
