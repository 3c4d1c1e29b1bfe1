from __future__ import annotations

import itertools

import pytest

from esper_engine.lifecycle import LIVE_SEED_STAGES, LifecycleError, SeedStage, check_transition

S = SeedStage
# Restated from SPEC section 4, not imported, so the table in the code is checked against it.
SPEC_TRANSITIONS = {
    (S.DORMANT, S.GERMINATED),
    (S.GERMINATED, S.TRAINING),
    (S.TRAINING, S.BLENDING),
    (S.BLENDING, S.HOLDING),
    (S.HOLDING, S.FOSSILIZED),
    (S.GERMINATED, S.PRUNED),
    (S.TRAINING, S.PRUNED),
    (S.BLENDING, S.PRUNED),
    (S.HOLDING, S.PRUNED),
    (S.PRUNED, S.EMBARGOED),
    (S.EMBARGOED, S.RESETTING),
    (S.RESETTING, S.DORMANT),
}


@pytest.mark.parametrize("pair", sorted(SPEC_TRANSITIONS))
def test_allowed_transitions_pass(pair: tuple[SeedStage, SeedStage]) -> None:
    check_transition(*pair)


@pytest.mark.parametrize(
    "pair",
    [p for p in itertools.product(SeedStage, SeedStage) if p not in SPEC_TRANSITIONS],
)
def test_every_other_pair_raises_naming_both_stages(pair: tuple[SeedStage, SeedStage]) -> None:
    with pytest.raises(LifecycleError) as info:
        check_transition(*pair)
    assert info.value.from_stage is pair[0] and info.value.to_stage is pair[1]
    assert f"{pair[0].value} -> {pair[1].value}" in str(info.value)


def test_fossilized_is_terminal_and_live_stages_are_the_probation_ones() -> None:
    assert all(p[0] is not S.FOSSILIZED for p in SPEC_TRANSITIONS)
    assert LIVE_SEED_STAGES == {S.GERMINATED, S.TRAINING, S.BLENDING, S.HOLDING}
    # Exactly the live stages can be pruned.
    assert {a for a, b in SPEC_TRANSITIONS if b is S.PRUNED} == LIVE_SEED_STAGES


def test_the_lifecycle_uses_the_telemetry_contracts_stages() -> None:
    from esper_engine import contracts

    assert SeedStage is contracts.SeedStage  # one vocabulary, re-exported
    assert LIVE_SEED_STAGES is contracts.LIVE_SEED_STAGES
    assert all(type(stage) is SeedStage for stage in LIVE_SEED_STAGES)
