"""TrainingConfig: validation, bounds, faults, the learning-rate schedule, one default per knob,
and the components the trainer builds from it."""

from __future__ import annotations

import inspect
import math
import re
import subprocess
import sys

import msgspec
import pytest
import torch

from esper_engine import governor as governor_module
from esper_engine import slots as slots_module
from esper_engine.config import (
    MAX_CLIP_THRESHOLD,
    MAX_SEED,
    MIN_HISTORY_WINDOW,
    AlphaSchedule,
    GovernorConfig,
    HeuristicConfig,
    LifecycleConfig,
    PPOConfig,
    TaskName,
    TrainingConfig,
)
from esper_engine.config_checks import choices
from esper_engine.config_io import field_docs
from esper_engine.contracts import RunStarted
from esper_engine.governor import TolariaGovernor
from esper_engine.lifecycle import DEFAULT_MIN_PRUNE_AGE
from esper_engine.policy.heuristic import CNN_PREFERENCE, TRANSFORMER_PREFERENCE, HeuristicPolicy
from esper_engine.policy.ppo import PPOConfig as AgentPPOConfig
from esper_engine.slots import SeedSlot

GROUPS = (GovernorConfig, LifecycleConfig, HeuristicConfig, PPOConfig)


def test_cosine_schedule_starts_at_the_base_lr_and_decays_within_the_episode() -> None:
    config = TrainingConfig(epochs=12)
    scales = [config.lr_scale(epoch) for epoch in range(12)]
    assert scales[0] == 1.0
    assert all(a > b for a, b in zip(scales[:-1], scales[1:], strict=True))  # strictly decreasing
    assert 0 < scales[-1] < 0.05  # the last epoch still learns, gently
    assert config.lr_scale(6) == pytest.approx(0.5)  # half way: half the lr


def test_constant_schedule_keeps_the_base_lr() -> None:
    config = TrainingConfig(epochs=12, lr_schedule="constant")
    assert {config.lr_scale(epoch) for epoch in range(12)} == {1.0}


def test_unknown_schedule_is_a_one_line_error() -> None:
    message = "lr_schedule must be one of cosine, constant, cosine_to_zero, got 'step'"
    with pytest.raises(ValueError, match=message):
        TrainingConfig(lr_schedule="step").validate()


def test_the_defaults_are_valid() -> None:
    TrainingConfig().validate()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_envs": 0}, "n_envs must be >= 1, got 0"),
        ({"epochs": 2**63}, "epochs must be within 1..100000 (an episode's length), got"),
        # upper bounds on the run's shape (issue 21): refused before anything is built
        ({"n_envs": 100_000}, "n_envs must be within 1..1024 (each env is a whole model in"),
        ({"batch_size": 100_000_000}, "batch_size must be within 1..65536 (one draw holds"),
        ({"episodes": 10**9}, "episodes must be within 1..100000"),
        ({"val_batches": 10**9}, "val_batches must be within 1..10000000"),
        ({"val_batches": 0}, "val_batches must be >= 1"),
        ({"seed": -1}, "seed must be within 0..4294967295, got -1"),
        ({"seed": MAX_SEED + 1}, "seed must be within"),
        ({"max_grad_norm": math.nan}, "max_grad_norm must be within 0..1e+06"),
        ({"max_grad_norm": math.inf}, "max_grad_norm must be within"),
        ({"max_grad_norm": -0.5}, "max_grad_norm must be within"),
        ({"max_grad_norm": 1e40}, "max_grad_norm must be within"),
        ({"max_grad_norm": MAX_CLIP_THRESHOLD * 1.25}, "max_grad_norm must be within"),
        ({"faults": ("nan:5:1",)}, "env 5 of a run with 4 envs"),
        ({"faults": ("crash:1:13",)}, "epoch 13 of episodes with 12 epochs"),
        ({"faults": ("melt:1:1",)}, "unknown kind 'melt'"),
        ({"task": "mnist"}, "task must be one of synthetic-images, synthetic-stories"),
        ({"amp": "fp8"}, "amp must be one of off, bf16, fp16, got 'fp8'"),
        ({"policy": "random"}, "policy must be one of heuristic, ppo, static"),
        ({"host_lr": 0.0}, "host_lr must be a finite number > 0, got 0.0"),
        ({"seed_lr": math.inf}, "seed_lr must be a finite number > 0, got inf"),
        ({"slots": ()}, "slots must name at least one (or be none for all)"),
        ({"slots": ("block1", " ")}, "slots must not contain an empty name"),
        ({"attribution_every": -1}, "attribution_every must be >= 0, got -1"),
        ({"shapley_permutations": 0}, "shapley_permutations must be >= 1"),
        ({"param_rent": -0.1}, "param_rent must be a finite number >= 0, got -0.1"),
        ({"batch_stats_every": -1}, "batch_stats_every must be >= 0"),
        ({"event_queue_size": 0}, "event_queue_size must be >= 1"),
        # the nested groups: the key in the message is the dotted one the CLI takes
        ({"governor": GovernorConfig(history_window=5)}, "governor.history_window must be >= 10"),
        ({"governor": GovernorConfig(sensitivity=math.nan)}, "governor.sensitivity must be a"),
        ({"governor": GovernorConfig(multiplier=-1.0)}, "governor.multiplier must be a finite"),
        ({"governor": GovernorConfig(absolute_threshold=math.inf)}, "absolute_threshold must"),
        ({"governor": GovernorConfig(min_panics_before_rollback=0)}, "min_panics_before_rollback"),
        ({"governor": GovernorConfig(max_rollbacks_per_episode=0)}, "max_rollbacks_per_episode"),
        ({"governor": GovernorConfig(death_penalty=-1.0)}, "governor.death_penalty must be a"),
        ({"lifecycle": LifecycleConfig(min_prune_age=-1)}, "lifecycle.min_prune_age must be >= 0"),
        ({"lifecycle": LifecycleConfig(min_training_epochs=-1)}, "lifecycle.min_training_epochs"),
        ({"lifecycle": LifecycleConfig(blend_epochs=0)}, "lifecycle.blend_epochs must be >= 1"),
        ({"lifecycle": LifecycleConfig(embargo_epochs=0)}, "lifecycle.embargo_epochs must be >="),
        ({"lifecycle": LifecycleConfig(alpha_schedule="step")}, "alpha_schedule must be one of"),
        ({"heuristic": HeuristicConfig(plateau_window=0)}, "heuristic.plateau_window must be >= 1"),
        ({"heuristic": HeuristicConfig(plateau_delta=-0.1)}, "heuristic.plateau_delta must be"),
        ({"heuristic": HeuristicConfig(fossilize_threshold=math.nan)}, "fossilize_threshold"),
        ({"heuristic": HeuristicConfig(prune_threshold=math.inf)}, "heuristic.prune_threshold"),
        ({"heuristic": HeuristicConfig(min_blending_epochs=-1)}, "heuristic.min_blending_epochs"),
        ({"heuristic": HeuristicConfig(holding_patience=-1)}, "heuristic.holding_patience"),
        ({"heuristic": HeuristicConfig(max_live=-1)}, "heuristic.max_live must be >= 0"),
        ({"heuristic": HeuristicConfig(min_epochs_left=-1)}, "heuristic.min_epochs_left"),
        ({"heuristic": HeuristicConfig(cnn_preference=("",))}, "heuristic.cnn_preference must"),
        ({"ppo": PPOConfig(lr=0.0)}, "ppo.lr must be a finite number > 0, got 0.0"),
        ({"ppo": PPOConfig(gamma=1.5)}, "ppo.gamma must be a finite number within 0..1, got 1.5"),
        ({"ppo": PPOConfig(gae_lambda=-0.1)}, "ppo.gae_lambda must be a finite number within"),
        ({"ppo": PPOConfig(clip_coef=0.0)}, "ppo.clip_coef must be a finite number > 0"),
        ({"ppo": PPOConfig(ent_coef=-1.0)}, "ppo.ent_coef must be a finite number >= 0"),
        ({"ppo": PPOConfig(vf_coef=math.nan)}, "ppo.vf_coef must be a finite number"),
        ({"ppo": PPOConfig(max_grad_norm=0.0)}, "ppo.max_grad_norm must be a finite number > 0"),
        ({"ppo": PPOConfig(update_epochs=0)}, "ppo.update_epochs must be >= 1"),
        ({"ppo": PPOConfig(minibatch_size=0)}, "ppo.minibatch_size must be >= 1"),
        ({"ppo": PPOConfig(target_kl=0.0)}, "ppo.target_kl must be a finite number > 0"),
        ({"ppo": PPOConfig(hidden=0)}, "ppo.hidden must be within 1..4096, got 0"),
        ({"ppo": PPOConfig(seed=-1)}, "ppo.seed must be within 0..4294967295, got -1"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        TrainingConfig(**overrides).validate()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("max_grad_norm", [None, 0.0, 1e-3, MAX_CLIP_THRESHOLD])
def test_clip_threshold_bounds_are_inclusive(max_grad_norm) -> None:
    TrainingConfig(max_grad_norm=max_grad_norm).validate()


def test_the_config_round_trips_nested_and_old_flat_recordings_still_decode() -> None:
    config = TrainingConfig(
        faults=("nan:2:3", "crash:1:12"),
        governor=GovernorConfig(sensitivity=4.0),
        ppo=PPOConfig(target_kl=0.02, seed=7),
    )
    config.validate()
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(config), type=TrainingConfig) == config
    # RunStarted records it as plain nested builtins, which convert back to the same config.
    recorded = msgspec.to_builtins(config)
    assert recorded["governor"]["sensitivity"] == 4.0 and recorded["faults"] == config.faults
    assert msgspec.convert(recorded, TrainingConfig) == config
    # A recording made before the groups existed: its config is a flat dict and stays one.
    old = {"n_envs": 4, "max_grad_norm": 1.0, "sensitivity": 6.0, "min_prune_age": 3}
    event = RunStarted(
        run_id="old",
        task="synthetic-images",
        task_kind="classification",
        n_envs=4,
        slot_ids=["block1"],
        policy="heuristic",
        episodes=1,
        epochs=1,
        batches_per_epoch=1,
        random_guess_loss=math.log(10),
        config=old,
    )
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(event), type=RunStarted)
    assert decoded.config == old


def test_importing_the_config_does_not_import_torch() -> None:
    """The CLI reads it for --help and --print-config, which must not pay for torch."""
    code = "import sys, esper_engine.config, esper_engine.config_io; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- one default per knob: the config's defaults are the components' --------------------------


def _defaults(function) -> dict[str, object]:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_the_governor_takes_its_thresholds_from_governor_config_alone() -> None:
    """No default is restated: the governor's keywords are not the config's fields."""
    fields = {field.name for field in msgspec.structs.fields(GovernorConfig)}
    assert not fields & set(inspect.signature(TolariaGovernor.__init__).parameters)
    assert TolariaGovernor(torch.nn.Linear(2, 2)).config == GovernorConfig()
    config = GovernorConfig(sensitivity=2.0, history_window=12, death_penalty=4.0)
    governor = config.build(torch.nn.Linear(2, 2), random_guess_loss=1.5)
    assert (governor.sensitivity, governor.death_penalty) == (2.0, 4.0)
    assert governor.loss_history == () and governor.random_guess_loss == 1.5
    assert MIN_HISTORY_WINDOW == governor_module.LOBOTOMY_MIN_HISTORY


def test_the_heuristic_takes_its_rules_from_heuristic_config_alone() -> None:
    """No default is restated (HeuristicPolicy once restated every one, and passed
    min_blending_epochs as a keyword named min_prune_age)."""
    fields = {field.name for field in msgspec.structs.fields(HeuristicConfig)}
    assert not fields & set(_defaults(HeuristicPolicy.__init__))
    assert HeuristicPolicy(2, ["conv_light"]).config == HeuristicConfig()
    config = HeuristicConfig()
    assert config.cnn_preference == CNN_PREFERENCE
    assert config.transformer_preference == TRANSFORMER_PREFERENCE
    built = config.build(3, ["norm", "lora"], "transformer")
    assert built.config is config and built.blueprint_index == 1  # lora: the LM's first


def test_lifecycle_has_one_default_per_knob() -> None:
    """min_training_epochs used to default to 2 in SeedSlot and to 1 in MorphogeneticModel."""
    config = LifecycleConfig()
    slot = _defaults(SeedSlot.__init__)
    germinate = _defaults(SeedSlot.germinate)
    assert config.min_training_epochs == slot["min_training_epochs"] == 1
    assert config.embargo_epochs == slot["embargo_epochs"]
    assert config.min_prune_age == slot["min_prune_age"] == DEFAULT_MIN_PRUNE_AGE
    assert config.blend_epochs == germinate["blend_epochs"]
    assert config.alpha_schedule == germinate["schedule"]
    assert choices(AlphaSchedule) == slots_module.SCHEDULES


def test_the_ppo_agent_reads_the_config_struct() -> None:
    assert AgentPPOConfig is PPOConfig  # one definition, not a parallel copy
    assert PPOConfig().seed is None  # None: the run's seed
    assert TrainingConfig(seed=5).ppo_seed() == 5
    assert TrainingConfig(seed=5, ppo=PPOConfig(seed=9)).ppo_seed() == 9


def test_the_task_names_are_the_tasks() -> None:
    from esper_engine.tasks import TASK_NAMES  # imports torch

    assert choices(TaskName) == TASK_NAMES


@pytest.mark.parametrize("struct_type", (TrainingConfig, *GROUPS))
def test_every_field_has_a_docstring(struct_type) -> None:
    docs = field_docs(struct_type)
    for field in msgspec.structs.fields(struct_type):
        assert docs.get(field.name, "").strip(), f"{struct_type.__name__}.{field.name}"


# --- the components are built from the config ---------------------------------------------------


@pytest.fixture(scope="module")
def images():
    from esper_engine.tasks import load_task

    return load_task("synthetic-images", seed=0, scale="small")


NON_DEFAULT = TrainingConfig(
    n_envs=1,
    governor=GovernorConfig(
        sensitivity=4.0,
        multiplier=2.0,
        absolute_threshold=7.0,
        history_window=12,
        min_panics_before_rollback=3,
        max_rollbacks_per_episode=5,
        death_penalty=2.5,
    ),
    lifecycle=LifecycleConfig(
        min_training_epochs=2,
        blend_epochs=5,
        alpha_schedule="cosine",
        embargo_epochs=4,
        min_prune_age=6,
    ),
    heuristic=HeuristicConfig(
        plateau_window=4,
        plateau_delta=0.01,
        fossilize_threshold=0.02,
        prune_threshold=-0.01,
        min_blending_epochs=1,
        holding_patience=6,
        max_live=1,
        grow_from_start=False,
        min_epochs_left=2,
        cnn_preference=("depthwise", "conv_light"),
    ),
    ppo=PPOConfig(lr=1e-3, gamma=0.9, hidden=32, update_epochs=2),
)


def test_the_env_builds_its_governor_and_slots_from_the_config(images) -> None:
    from esper_engine.env_runtime import EnvRuntime
    from esper_engine.policy.actions import Action, Op

    env = EnvRuntime(0, NON_DEFAULT, images)
    gov = env.governor
    expected = NON_DEFAULT.governor
    assert (gov.sensitivity, gov.multiplier, gov.absolute_threshold) == (4.0, 2.0, 7.0)
    assert gov.min_panics_before_rollback == expected.min_panics_before_rollback
    assert gov.max_rollbacks_per_episode == expected.max_rollbacks_per_episode
    assert gov.death_penalty == expected.death_penalty
    assert gov._history.maxlen == expected.history_window
    for episode in range(2):  # the settings survive the host's re-creation
        for slot in env.model.slots.values():
            assert slot.min_training_epochs == 2
            assert slot.embargo_epochs == 4
            assert slot.min_prune_age == 6
        env.apply(Action(Op.GERMINATE, 0, 0), ("conv_light",))
        slot = env.model.slots[env.model.slot_ids[0]]
        assert (slot.blend_epochs, slot.schedule) == (5, "cosine")
        if episode == 0:
            env.reset_episode()


def test_the_policies_are_built_from_the_config() -> None:
    from esper_engine.policy.driver import PolicyDriver

    def driver(kind: str, host_kind: str = "cnn") -> PolicyDriver:
        return PolicyDriver(
            kind,
            n_envs=2,
            slot_ids=("block1", "block2"),
            blueprints=("conv_light", "depthwise", "norm"),
            host_kind=host_kind,
            heuristic=NON_DEFAULT.heuristic,
            ppo=msgspec.structs.replace(NON_DEFAULT.ppo, seed=NON_DEFAULT.ppo_seed()),
        )

    heuristic = driver("heuristic").heuristic
    rules = NON_DEFAULT.heuristic
    assert heuristic is not None
    assert heuristic.blueprint_index == 1  # depthwise: the config's first preference
    rules_used = heuristic.config
    assert (rules_used.plateau_window, rules_used.plateau_delta) == (4, 0.01)
    assert (rules_used.fossilize_threshold, rules_used.prune_threshold) == (0.02, -0.01)
    assert rules_used.min_blending_epochs == rules.min_blending_epochs
    assert (rules_used.holding_patience, rules_used.max_live) == (6, 1)
    assert (rules_used.grow_from_start, rules_used.min_epochs_left) == (False, 2)
    agent = driver("ppo").agent
    assert agent is not None
    assert agent.config == msgspec.structs.replace(NON_DEFAULT.ppo, seed=0)
    assert agent.trunk[0].out_features == 32
    assert driver("ppo").learner.optimizer.param_groups[0]["lr"] == 1e-3


def test_run_started_records_the_effective_config_nested(images) -> None:
    from esper_engine.telemetry import ListSink
    from esper_engine.trainer import VectorizedTrainer

    config = msgspec.structs.replace(
        NON_DEFAULT,
        episodes=1,
        epochs=1,
        batches_per_epoch=1,
        batch_size=8,
        val_batches=1,
        policy="ppo",
        seed=3,
    )
    sink = ListSink()
    trainer = VectorizedTrainer(config, sink, run_id="cfg", task=images)
    assert trainer.run().status == "completed"
    started = next(e for e in sink.events if isinstance(e, RunStarted))
    assert started.config == msgspec.to_builtins(config)
    assert started.config["governor"]["sensitivity"] == 4.0
    assert trainer.policy.agent is not None and trainer.policy.agent.config.seed == 3
