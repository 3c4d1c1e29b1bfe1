"""Every knob of a run in one place (CleanRL style: one config object, a comment per field)."""

from __future__ import annotations

import math

import msgspec

from esper_engine.faults import check_faults
from esper_engine.lifecycle import DEFAULT_MIN_PRUNE_AGE

LR_SCHEDULES = ("cosine", "constant")
# The largest gradient-clip threshold a run accepts, from the CLI or a SetClipThreshold command.
# A threshold this high already clips nothing a healthy run produces; the trainer compares it with
# float32 norms, and above float32's range (3.4e38) that comparison overflows and crashes.
MAX_CLIP_THRESHOLD = 1e6
# Seeds are non-negative and fit in 32 bits: the per-env seeds derived from them (initial
# weights: seed * 10**6 + env * 1000 + episode) then stay inside torch's 64-bit range.
MAX_SEED = 2**32 - 1
# Counts are recorded as 64-bit integers.
MAX_COUNT = 2**63 - 1
_COUNTS = ("n_envs", "episodes", "epochs", "batches_per_epoch", "batch_size", "val_batches")


class TrainingConfig(msgspec.Struct, frozen=True, kw_only=True):
    # --- run shape ---
    task: str = "synthetic-images"  # synthetic-images | synthetic-stories | cifar10 | tinystories
    data_dir: str | None = None  # local dataset directory for cifar10 / tinystories
    n_envs: int = 4  # independent training runs side by side
    episodes: int = 3  # episodes per env (a PPO update follows each round of episodes)
    epochs: int = 12  # host epochs per episode (one RL step each)
    batches_per_epoch: int = 40  # training batches per env per epoch
    batch_size: int = 64  # samples per env per batch (SharedBatchIterator draws n_envs x this)
    val_batches: int = 8  # validation batches of 2 x batch_size (a fixed set, same every epoch)
    seed: int = 0  # every random source derives from this (0..MAX_SEED)
    device: str = "cpu"  # torch device string; "cuda" where none exists is a clear error
    # --- optimisation ---
    host_lr: float | None = None  # None: the task's default
    seed_lr: float | None = None  # None: the task's default
    # global clip over host + live seeds, at most MAX_CLIP_THRESHOLD; None or 0 disables
    max_grad_norm: float | None = 1.0
    amp: str = "off"  # off | bf16 | fp16 (fp16 uses a GradScaler per env)
    # --- policy ---
    policy: str = "heuristic"  # heuristic | ppo | static (never grows: the baseline)
    slots: tuple[str, ...] | None = None  # None: every slot of the host
    # --- attribution ---
    attribution_every: int = 1  # epochs between Shapley attributions (0 disables)
    shapley_exact_max: int = 4  # exact Shapley up to this many active seeds, sampled above
    shapley_permutations: int = 32  # antithetic permutation pairs when sampling
    # --- governor ---
    sensitivity: float = 6.0  # divergence: loss > mean + sensitivity * std
    multiplier: float = 3.0  # divergence: loss > multiplier * mean
    absolute_threshold: float = 10.0  # divergence: loss > absolute_threshold
    death_penalty: float = 10.0  # reward added to the last transition on a governor rollback
    history_window: int = 20  # losses kept for the divergence statistics
    min_panics_before_rollback: int = 2  # consecutive divergence panics before a rollback
    max_rollbacks_per_episode: int = 3  # after this many, the env's episode ends (host re-created)
    # --- reward ---
    param_rent: float = 0.5  # reward (accuracy points) paid per doubling of the host's parameters
    # --- telemetry ---
    batch_stats_every: int = 10  # a BatchStats event every k batches per env (0 disables)
    # --- optimisation (appended: older recordings' configs still decode) ---
    # cosine: host and seed lrs follow 0.5 * (1 + cos(pi * epoch / epochs)) within each episode, so
    # the last epochs settle instead of swinging; constant: the base lrs throughout.
    lr_schedule: str = "cosine"
    # --- fault injection (appended; SPEC 11) ---
    # KIND:ENV:EPOCH strings as the operator typed them (normalised), ENV and EPOCH counted from 1;
    # they fire in the first episode. See esper_engine.faults.
    faults: tuple[str, ...] = ()
    # --- lifecycle (appended) ---
    # epochs since germination before the policy may prune a seed (the gate, the governor and
    # the operator may prune at any age): stops prune-after-one-epoch farming (SPEC 4)
    min_prune_age: int = DEFAULT_MIN_PRUNE_AGE

    def lr_scale(self, epoch: int) -> float:
        """The factor applied to every base lr during ``epoch`` of an episode."""
        if self.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))

    def clip_enabled(self) -> bool:
        return self.max_grad_norm is not None and self.max_grad_norm > 0

    def validate(self) -> None:
        """Raise ValueError with a one-line message naming the bad value."""
        for name in _COUNTS:
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
            if value > MAX_COUNT:
                raise ValueError(f"{name} must be <= 2**63 - 1 (recorded as int64), got {value}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be within 0..{MAX_SEED}, got {self.seed}")
        self._validate_max_grad_norm()
        if self.amp not in ("off", "bf16", "fp16"):
            raise ValueError(f"amp must be off, bf16 or fp16, got {self.amp!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be cosine or constant, got {self.lr_schedule!r}")
        if self.policy not in ("heuristic", "ppo", "static"):
            raise ValueError(f"policy must be heuristic, ppo or static, got {self.policy!r}")
        check_faults(self.faults, self.n_envs, self.epochs)
        if not 0 <= self.min_prune_age <= MAX_COUNT:
            raise ValueError(f"min_prune_age must be >= 0, got {self.min_prune_age}")

    def _validate_max_grad_norm(self) -> None:
        value = self.max_grad_norm
        if value is None:
            return
        if not math.isfinite(value) or not 0 <= value <= MAX_CLIP_THRESHOLD:
            raise ValueError(
                f"max_grad_norm must be within 0..{MAX_CLIP_THRESHOLD:g} (0 disables), got {value}"
            )
