"""Every knob of a run in one place (CleanRL style: one config object, a docstring per field).

``TrainingConfig``'s own fields are what the loop itself reads: the run's shape, optimisation,
the policy's kind, attribution, reward, telemetry and faults. Each nested group configures one
component the loop builds: ``governor`` (``TolariaGovernor``), ``lifecycle`` (the seed slots'
gates and blend), ``heuristic`` (``HeuristicPolicy``) and ``ppo`` (``PPOAgent``). On the command
line a nested field is a dotted key: ``--set governor.sensitivity=4``. Every field's docstring
gives its meaning and unit; ``overwatch run --print-config`` prints them with the values.

This module never imports torch: the CLI reads it for ``--help`` and ``--print-config``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from esper_engine.config_checks import (
    check_count,
    check_names,
    check_plant,
    check_real,
    check_types,
)
from esper_engine.contracts import PolicyKind
from esper_engine.faults import check_faults
from esper_engine.host_presets import HostPreset, resolve_host
from esper_engine.lifecycle import DEFAULT_MIN_PRUNE_AGE

if TYPE_CHECKING:  # the built components import torch; this module must not
    from collections.abc import Sequence

    import torch

    from esper_engine.governor import TolariaGovernor
    from esper_engine.policy.heuristic import HeuristicPolicy
    from esper_engine.policy.ppo import PPOLearner

# The choices are types: msgspec refuses any other value where it converts one (a TOML file, a
# --set, a recorded config) and ``validate()`` checks a config built in Python the same way.
TaskName = Literal["synthetic-images", "synthetic-stories", "cifar10", "tinystories"]
AmpMode = Literal["off", "bf16", "fp16"]
LrSchedule = Literal["cosine", "constant", "cosine_to_zero"]
AlphaSchedule = Literal["linear", "cosine"]
# The largest gradient-clip threshold a run accepts, from the CLI or a SetClipThreshold command.
# A threshold this high already clips nothing a healthy run produces; the trainer compares it with
# float32 norms, and above float32's range (3.4e38) that comparison overflows and crashes.
MAX_CLIP_THRESHOLD = 1e6
# The largest operator lr factor (SetLrScale): 100x already makes most hosts diverge; the
# ``diverge`` fault uses 1e4 to be sure of it.
MAX_LR_SCALE = 100.0
# The largest governor sensitivity (SetGovernorSensitivity), in standard deviations: above it
# the divergence gate's other two tests (multiplier, absolute threshold) decide alone.
MAX_GOVERNOR_SENSITIVITY = 1000.0
# Seeds are non-negative and fit in 32 bits: the per-env seeds derived from them (initial
# weights: seed * 10**6 + env * 1000 + episode) then stay inside torch's 64-bit range.
MAX_SEED = 2**32 - 1
# The governor's lobotomy rule needs this many losses in its history (governor.py,
# LOBOTOMY_MIN_HISTORY): a shorter history_window could never detect it, so the governor refuses it.
MIN_HISTORY_WINDOW = 10
# The PPO agent is a small MLP on the CPU: a wider trunk is a typo, not a controller.
MAX_PPO_HIDDEN = 4096
# Upper bounds of the run's shape: past them a run cannot fit a machine or be watched, and a typo
# (``--n-envs 100000``, ``batch_size=100000000``) would sit for minutes building or allocating
# before it failed. The recording's decoder refuses events outside them too (recording.py), so
# nothing a file says makes a reader allocate more than these allow.
# Each env is a whole model with its optimizer and seeds, built one after another in this process.
MAX_ENVS = 1024
# Samples per env per batch: one draw is n_envs x this, a validation batch 2 x this.
MAX_BATCH_SIZE = 65536
MAX_EPISODES = 100_000
MAX_EPOCHS = 100_000
MAX_BATCHES = 10_000_000
# name -> (upper bound, why), checked by TrainingConfig.validate()
_COUNTS: dict[str, tuple[int, str]] = {
    "n_envs": (MAX_ENVS, "each env is a whole model in this process"),
    "episodes": (MAX_EPISODES, "a run's length"),
    "epochs": (MAX_EPOCHS, "an episode's length"),
    "batches_per_epoch": (MAX_BATCHES, "an epoch's length"),
    "batch_size": (MAX_BATCH_SIZE, "one draw holds n_envs x this samples"),
    "val_batches": (MAX_BATCHES, "validation batches stay in memory"),
}


class GovernorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """``TolariaGovernor``'s thresholds (SPEC 6); the field names are its keyword arguments.

    Losses are the task's validation loss (nats per sample or per byte)."""

    sensitivity: float = 6.0
    """Divergence gate 2: loss > mean + sensitivity x std of the history (standard deviations)."""
    multiplier: float = 3.0
    """Divergence gate 3: loss > multiplier x the history's mean (a factor)."""
    absolute_threshold: float = 10.0
    """Divergence gate 1: loss > this (nats); a divergence panic needs all three gates."""
    history_window: int = 20
    """Clean losses kept for the divergence statistics (epochs, >= 10 for the lobotomy rule)."""
    min_panics_before_rollback: int = 2
    """Consecutive divergence panics before a rollback (epochs; NaN and lobotomy roll back at
    once)."""
    max_rollbacks_per_episode: int = 3
    """Governor rollbacks in one episode after which the env's episode ends and its host is
    re-created (a count)."""
    death_penalty: float = 10.0
    """Added as -death_penalty to the reward of the env's last action on a governor rollback
    (reward units: accuracy points)."""

    def validate(self) -> None:
        check_real("sensitivity", self.sensitivity, low=0.0)
        check_real("multiplier", self.multiplier, low=0.0)
        check_real("absolute_threshold", self.absolute_threshold)
        check_count("history_window", self.history_window, low=MIN_HISTORY_WINDOW)
        check_count("min_panics_before_rollback", self.min_panics_before_rollback, low=1)
        check_count("max_rollbacks_per_episode", self.max_rollbacks_per_episode, low=1)
        check_real("death_penalty", self.death_penalty, low=0.0)

    def build(self, model: torch.nn.Module, *args: Any, **owner: Any) -> TolariaGovernor:
        """The governor of one env's ``model`` with these thresholds; the rest are
        ``TolariaGovernor``'s (optimizer, scaler, random_guess_loss, seed_optimizers, ...)."""
        from esper_engine.governor import TolariaGovernor

        return TolariaGovernor(model, *args, config=self, **owner)


class LifecycleConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The seed slots' gates and blend (SPEC 4), the same for every slot of every env."""

    min_training_epochs: int = 1
    """Epochs a seed incubates in TRAINING before it may advance to BLENDING (epochs)."""
    blend_epochs: int = 3
    """Epochs over which alpha ramps from 0 to 1 in BLENDING (epochs, set at germination)."""
    alpha_schedule: AlphaSchedule = "linear"
    """Shape of the alpha ramp: linear | cosine."""
    embargo_epochs: int = 2
    """Epochs a pruned slot stays EMBARGOED before it can take a new seed (epochs, >= 1)."""
    min_prune_age: int = DEFAULT_MIN_PRUNE_AGE
    """Epochs since germination before the policy may prune a seed; the gate, the governor and
    the operator may prune at any age. Stops prune-after-one-epoch farming (epochs)."""
    plant: tuple[str, ...] = ()
    """Seeds germinated at the start of every episode, before epoch 0 trains, as slot:blueprint
    (e.g. block1:widen); they follow the lifecycle like any other (initiator operator)."""

    def validate(self) -> None:
        check_plant(self.plant)
        check_count("min_training_epochs", self.min_training_epochs, low=0)
        check_count("blend_epochs", self.blend_epochs, low=1)
        check_count("embargo_epochs", self.embargo_epochs, low=1)
        check_count("min_prune_age", self.min_prune_age, low=0)


# The CNN's residual seeds in the heuristic's order (its default before it stacked first).
CNN_RESIDUAL_SEEDS = ("conv_light", "depthwise", "attention", "conv_heavy", "norm")


class HeuristicConfig(msgspec.Struct, frozen=True, kw_only=True):
    """``HeuristicPolicy``'s rules (SPEC 8): germinate on plateau, keep winners, cut losers.

    Accuracies and Shapley values are fractions in [0, 1] (0.005 is half an accuracy point)."""

    plateau_window: int = 3
    """A plateau: the best accuracy of the last plateau_window epochs beats the best before them
    by at most plateau_delta (epochs)."""
    plateau_delta: float = 0.005
    """Accuracy gain that still counts as a plateau (fraction of accuracy)."""
    fossilize_threshold: float = 0.005
    """Fossilize a HOLDING seed whose Shapley value is above this (fraction of accuracy)."""
    prune_threshold: float = 0.0
    """Prune a judged seed whose Shapley value is below this (fraction of accuracy)."""
    min_blending_epochs: int = 2
    """Epochs a seed blends before a negative value may prune it (epochs in BLENDING; the
    lifecycle's min_prune_age applies as well)."""
    holding_patience: int = 3
    """Epochs a HOLDING seed may stay at or below fossilize_threshold before it is pruned
    (epochs)."""
    max_live: int = 2
    """Live seeds at most at once (a count; 0 never grows)."""
    grow_from_start: bool = True
    """Plant the first max_live seeds one per epoch from the episode's start, not on a plateau."""
    min_epochs_left: int = 5
    """No plateau germination with fewer epochs than this left in the episode (epochs)."""
    cnn_preference: tuple[str, ...] = ("stack", *CNN_RESIDUAL_SEEDS)
    """Blueprints to germinate on a CNN host, the first available one wins (blueprint names):
    ``stack`` first, the growth study's best (README, "Growth, judged against ...")."""
    transformer_preference: tuple[str, ...] = ("lora", "mlp_small", "attention", "norm")
    """Blueprints to germinate on a transformer host, the first available one wins."""
    cost_aware: bool = False
    """Germinate in the slot where the chosen blueprint adds the fewest training FLOPs (the
    observation's per-slot cost), not the shallowest; a slot where it cannot grow is skipped.
    Off by default: with residual seeds it saved 20-33% of FLOPs but lost 6 points at 12 epochs
    (bench/growth.py, a tie in priced return); with stack first it changes nothing on the tiny
    host (a stacked copy adds 12% of its FLOPs in every block)."""

    def validate(self) -> None:
        check_count("plateau_window", self.plateau_window, low=1)
        check_real("plateau_delta", self.plateau_delta, low=0.0)
        check_real("fossilize_threshold", self.fossilize_threshold)
        check_real("prune_threshold", self.prune_threshold)
        check_count("min_blending_epochs", self.min_blending_epochs, low=0)
        check_count("holding_patience", self.holding_patience, low=0)
        check_count("max_live", self.max_live, low=0)
        check_count("min_epochs_left", self.min_epochs_left, low=0)
        check_names("cnn_preference", self.cnn_preference)
        check_names("transformer_preference", self.transformer_preference)
        if not isinstance(self.cost_aware, bool):
            raise ValueError(f"heuristic.cost_aware must be true or false, got {self.cost_aware!r}")

    def build(self, n_slots: int, blueprints: Sequence[str], host_kind: str) -> HeuristicPolicy:
        """The heuristic with these rules, preferring the blueprints of ``host_kind``."""
        from esper_engine.policy.heuristic import HeuristicPolicy

        preference = self.cnn_preference if host_kind == "cnn" else self.transformer_preference
        return HeuristicPolicy(n_slots, blueprints, self, preference=preference)


class PPOConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Every PPO hyperparameter in one place (CleanRL's, with kickstarting). One RL step is one
    host epoch; a round is one episode of every env, then one update."""

    lr: float = 1e-4
    """Adam learning rate of the PPO updates (per step). Lower than CleanRL's 3e-4: it fine-tunes
    a clone, and at 3e-4 two rounds at imitation weight 0 moved its most likely op away from the
    heuristic's on 23% of states (bench/growth.py --quick)."""
    gamma: float = 1.0
    """Discount per RL step (one host epoch), in [0, 1]. 1: the return is the episode's final
    accuracy gain minus its final rent, the quantity the reward is built to pay."""
    gae_lambda: float = 0.95
    """GAE lambda: bias/variance trade-off of the advantage estimate, in [0, 1]."""
    clip_coef: float = 0.2
    """Surrogate clipping range for the probability ratio (and for the value loss), > 0."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus in the loss (a factor)."""
    vf_coef: float = 0.5
    """Weight of the value loss in the loss (a factor)."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip over all agent parameters (L2 norm)."""
    update_epochs: int = 4
    """Passes over the rollout per update (a count)."""
    minibatch_size: int = 16
    """Fewest transitions in a minibatch: each pass splits the reshuffled rollout into as many
    equal minibatches as hold this many (one when the rollout is smaller) (transitions)."""
    norm_adv: bool = True
    """Normalise advantages to zero mean and unit std over the whole rollout (not per minibatch:
    a handful of noisy advantages normalised among themselves is noise)."""
    clip_vloss: bool = False
    """Clip the value prediction's change around the rollout value by clip_coef, as PPO2 does."""
    target_kl: float | None = None
    """Stop the update early after a pass whose approx-KL exceeds this (nats; None: never)."""
    hidden: int = 64
    """Width of the two tanh layers of the shared trunk (units)."""
    seed: int | None = None
    """Seeds the weight init, action sampling and minibatch shuffling (0..2**32-1; None: the
    run's seed)."""
    reward_scale: float = 0.02
    """Rewards (accuracy points) are multiplied by this for the agent: an episode gains some 50
    points from its first epoch to its last, so its return is about 1 (a factor)."""
    demo_rounds: int = 2
    """Kickstarting: rounds in which the heuristic acts and its episodes are recorded; after the
    last, the agent (actor and critic) is behaviour-cloned on them (rounds; 0: from scratch)."""
    bc_steps: int = 500
    """Full-batch Adam steps of the behaviour clone (a count)."""
    bc_lr: float = 3e-3
    """Adam learning rate of the behaviour clone."""
    imitation_coef: float = 1.0
    """Weight of the imitation term (cross-entropy of the heuristic's action on the agent's own
    observations) in the first PPO round after the clone (a factor)."""
    imitation_rounds: int = 4
    """PPO rounds over which the imitation weight decays linearly to 0 (rounds)."""
    entropy_floor: float = 0.1
    """Mean joint-action entropy below which a penalty pulls the policy back up, in the clone
    and in every PPO round (nats per step)."""
    entropy_floor_coef: float = 1.0
    """Weight of that penalty, ``coef * max(0, floor - entropy)`` (a factor; 0 disables)."""
    greedy: bool = False
    """Act with the most likely legal action instead of sampling (evaluation)."""
    learn: bool = True
    """Update the agent after each round (False: evaluate only, the heuristic never acts)."""
    init_file: str | None = None
    """Start from this saved policy (a RUN.policy.pt file) instead of a fresh agent (a path)."""

    def validate(self) -> None:
        check_real("lr", self.lr, low=0.0, open_low=True)
        check_real("gamma", self.gamma, low=0.0, high=1.0)
        check_real("gae_lambda", self.gae_lambda, low=0.0, high=1.0)
        check_real("clip_coef", self.clip_coef, low=0.0, open_low=True)
        check_real("ent_coef", self.ent_coef, low=0.0)
        check_real("vf_coef", self.vf_coef, low=0.0)
        check_real("max_grad_norm", self.max_grad_norm, low=0.0, open_low=True)
        check_count("update_epochs", self.update_epochs, low=1)
        check_count("minibatch_size", self.minibatch_size, low=1)
        if self.target_kl is not None:
            check_real("target_kl", self.target_kl, low=0.0, open_low=True)
        check_count("hidden", self.hidden, low=1, high=MAX_PPO_HIDDEN)
        if self.seed is not None:
            check_count("seed", self.seed, low=0, high=MAX_SEED)
        check_real("reward_scale", self.reward_scale, low=0.0, open_low=True)
        check_count("demo_rounds", self.demo_rounds, low=0)
        check_count("bc_steps", self.bc_steps, low=0)
        check_real("bc_lr", self.bc_lr, low=0.0, open_low=True)
        check_real("imitation_coef", self.imitation_coef, low=0.0)
        check_count("imitation_rounds", self.imitation_rounds, low=0)
        check_real("entropy_floor", self.entropy_floor, low=0.0)
        check_real("entropy_floor_coef", self.entropy_floor_coef, low=0.0)
        if self.init_file is not None and not self.init_file.strip():
            raise ValueError("init_file must be a path (or none), got an empty string")

    def imitation_weight(self, ppo_round: int) -> float:
        """The imitation term's weight in the ``ppo_round``-th PPO round after the clone."""
        if self.imitation_rounds == 0:
            return 0.0
        return self.imitation_coef * max(0.0, 1.0 - ppo_round / self.imitation_rounds)

    def build(self, obs_dim: int, n_slots: int, n_blueprints: int) -> PPOLearner:
        """The agent (seeded by ``seed``) and its optimizer; ``seed`` must be set."""
        from esper_engine.policy.actions import N_OPS
        from esper_engine.policy.ppo import PPOAgent, PPOLearner

        return PPOLearner(PPOAgent(obs_dim, N_OPS, n_slots, n_blueprints, self))


class HostConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The host network each env trains (esper_engine/host_presets.py): a preset, and sizes that
    override it. A size for the other host kind is refused; slots follow the host."""

    preset: HostPreset | None = None
    """tiny | small | base (None: the task's default: tiny on the embedded tasks, base on
    cifar10, small on tinystories). The README's host section gives each one's size."""
    widths: tuple[int, ...] | None = None
    """CNN block widths, one slot after each block (channels, 1-5 blocks; None: the preset's)."""
    d_model: int | None = None
    """Transformer width (units, a multiple of n_heads; None: the preset's)."""
    n_layers: int | None = None
    """Transformer decoder layers (a multiple of layers_per_segment; None: the preset's)."""
    n_heads: int | None = None
    """Transformer attention heads per layer (a count; None: the preset's)."""
    layers_per_segment: int | None = None
    """Transformer layers between two slots: n_layers / this slots (None: the preset's)."""

    def validate(self, task: str) -> None:
        """One-line ValueErrors naming the ``host.`` key (the sizes depend on the task's kind)."""
        resolve_host(self, task)


class TrainingConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob of a run: checked by ``validate()``, recorded whole in ``RunStarted.config``."""

    # --- run shape ---
    task: TaskName = "synthetic-images"
    """synthetic-images | synthetic-stories | cifar10 | tinystories."""
    data_dir: str | None = None
    """Local dataset directory for cifar10 / tinystories (a path)."""
    n_envs: int = 4
    """Independent training runs side by side (a count)."""
    episodes: int = 3
    """Episodes per env; a PPO update follows each round of episodes (a count)."""
    epochs: int = 12
    """Host epochs per episode, one RL step each (epochs)."""
    batches_per_epoch: int = 40
    """Training batches per env per epoch (batches)."""
    batch_size: int = 64
    """Samples per env per batch; SharedBatchIterator draws n_envs x this (samples)."""
    val_batches: int = 8
    """Validation batches of 2 x batch_size, a fixed set, the same every epoch (batches)."""
    seed: int = 0
    """Every random source derives from this (0..2**32-1)."""
    device: str = "cpu"
    """Torch device string; "cuda" where none exists is a clear error."""
    # --- optimisation ---
    host_lr: float | None = None
    """SGD (momentum 0.9) learning rate of the host (None: the task's default)."""
    seed_lr: float | None = None
    """SGD (momentum 0.9) learning rate of each seed (None: the task's default)."""
    max_grad_norm: float | None = 1.0
    """Global clip over host + live seeds (L2 norm, at most 1e6; None or 0 disables)."""
    amp: AmpMode = "off"
    """Mixed precision: off | bf16 | fp16 (fp16 uses a GradScaler per env)."""
    # --- policy ---
    policy: PolicyKind = "heuristic"
    """heuristic | ppo | static (never grows: the baseline)."""
    slots: tuple[str, ...] | None = None
    """Slot ids that may hold seeds (None: every slot of the host)."""
    # --- attribution ---
    attribution_every: int = 1
    """Epochs between Shapley attributions (epochs; 0 disables)."""
    shapley_exact_max: int = 4
    """Exact Shapley values up to this many active seeds, sampled above (a count)."""
    shapley_permutations: int = 32
    """Antithetic permutation pairs when sampling (a count)."""
    # --- reward ---
    param_rent: float = 1.0
    """Rent of added capacity per doubling of the host's parameters, charged once per episode on
    the capacity it ends with (accuracy points; see policy/rewards.py)."""
    # --- telemetry ---
    batch_stats_every: int = 10
    """A BatchStats event every k batches per env (batches; 0 disables)."""
    # --- optimisation (appended: older recordings' configs still decode) ---
    lr_schedule: LrSchedule = "cosine"
    """cosine: host and seed lrs follow 0.5 * (1 + cos(pi * epoch / epochs)) within each episode,
    so the last epochs settle instead of swinging; constant: the base lrs throughout;
    cosine_to_zero: the same curve read at each epoch's middle, 0.5 * (1 + cos(pi * (epoch + 0.5)
    / epochs)), so the last epoch trains at about 0 (fully decayed: the growth study's runs)."""
    # --- fault injection (appended; SPEC 11) ---
    faults: tuple[str, ...] = ()
    """KIND:ENV:EPOCH strings as the operator typed them (normalised), ENV and EPOCH counted
    from 1; they fire in the first episode. See esper_engine.faults."""
    # --- appended ---
    event_queue_size: int = 20_000
    """Telemetry events the console's queue holds before it drops (and counts) the newest
    (events; the recorder never drops)."""
    # --- components (nested: dotted keys on the command line) ---
    governor: GovernorConfig = GovernorConfig()
    """The per-env watchdog's thresholds."""
    lifecycle: LifecycleConfig = LifecycleConfig()
    """The seed slots' gates and blend."""
    heuristic: HeuristicConfig = HeuristicConfig()
    """The heuristic policy's rules (policy = heuristic)."""
    ppo: PPOConfig = PPOConfig()
    """The PPO agent's hyperparameters (policy = ppo)."""
    # --- durable runs (appended; SPEC 12) ---
    checkpoint_every: int = 1
    """Epochs between checkpoints next to the recording (epochs; 0 disables; a run without a
    recording writes none). ``overwatch run --resume`` continues from the latest one."""
    # --- the host (appended; issue 23) ---
    host: HostConfig = HostConfig()
    """The host network: a preset and its sizes."""
    # --- attribution at real sizes (appended; issue 23) ---
    attribution_batches: int = 0
    """Validation batches each attribution scores its coalitions on: the first N of the fixed
    set (batches; 0: all). Exact Shapley values of accuracy on those, at about N / val_batches
    of the cost (the README's performance section measures the trade)."""
    # --- the report split (appended; issue 24) ---
    report_every: int = 0
    """Epochs between report evaluations on the task's held-out report split (epochs; 0: the
    episode's last epoch only, which is always reported). Never read by a decision."""

    # --- compute price (appended; issue 24) ---
    compute_price: float = 10.7
    """Price of compute: the episode pays this per doubling of its training FLOPs over the static
    host's on the same samples (accuracy points; the reward pays its change each step,
    policy/rewards.py episode_price; 0 disables and leaves every reward as before). The default
    is the static frontier's exchange rate, accuracy points per doubling of training FLOPs, as
    the full bench/growth.py study measured it: 10.67, the mean of seeds 0-5 (8.5 to 14.5)."""

    def lr_scale(self, epoch: int) -> float:
        """The factor applied to every base lr during ``epoch`` of an episode."""
        match self.lr_schedule:
            case "constant":
                return 1.0
            case "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))
            case "cosine_to_zero":
                return 0.5 * (1.0 + math.cos(math.pi * (epoch + 0.5) / self.epochs))

    def report_due(self, epoch: int) -> bool:
        """Whether ``epoch`` (from 0) of an episode evaluates the report split."""
        every = self.report_every
        return epoch == self.epochs - 1 or (every > 0 and (epoch + 1) % every == 0)

    def clip_enabled(self) -> bool:
        return self.max_grad_norm is not None and self.max_grad_norm > 0

    def ppo_seed(self) -> int:
        """The PPO agent's seed: ``ppo.seed`` when set, else the run's."""
        return self.seed if self.ppo.seed is None else self.ppo.seed

    def validate(self) -> None:
        """Raise ValueError with a one-line message naming the bad value (dotted if nested)."""
        check_types(self)
        for name, (high, why) in _COUNTS.items():
            check_count(name, getattr(self, name), low=1, high=high, why=why)
        check_count("seed", self.seed, low=0, high=MAX_SEED)
        for name in ("host_lr", "seed_lr"):
            value = getattr(self, name)
            if value is not None:
                check_real(name, value, low=0.0, open_low=True)
        self._validate_max_grad_norm()
        if self.slots is not None:
            check_names("slots", self.slots, allow_empty=False)
        check_count("attribution_every", self.attribution_every, low=0)
        check_count("shapley_exact_max", self.shapley_exact_max, low=0)
        check_count("shapley_permutations", self.shapley_permutations, low=1)
        check_real("param_rent", self.param_rent, low=0.0)
        check_real("compute_price", self.compute_price, low=0.0)
        check_count("batch_stats_every", self.batch_stats_every, low=0)
        check_count("event_queue_size", self.event_queue_size, low=1)
        check_count("checkpoint_every", self.checkpoint_every, low=0)
        check_count("attribution_batches", self.attribution_batches, low=0)
        check_count("report_every", self.report_every, low=0)
        check_faults(self.faults, self.n_envs, self.epochs)
        for group in ("governor", "lifecycle", "heuristic", "ppo"):
            try:
                getattr(self, group).validate()
            except ValueError as exc:
                raise ValueError(f"{group}.{exc}") from None
        self.host.validate(self.task)

    def _validate_max_grad_norm(self) -> None:
        value = self.max_grad_norm
        if value is None:
            return
        if not math.isfinite(value) or not 0 <= value <= MAX_CLIP_THRESHOLD:
            raise ValueError(
                f"max_grad_norm must be within 0..{MAX_CLIP_THRESHOLD:g} (0 disables), got {value}"
            )
