"""Compute in the telemetry: the FLOPs each env spends, by kind (issue 24).

Every count comes from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls and
attention at 2 FLOPs per multiply-accumulate; a training step counts its backward pass, about
twice the forward, less where no input gradient is needed: the first layer, a seed's detached
input). It is measured on **one sample** of the model as it is built, once per architecture
(``architecture``: which slots run a seed, which blueprint, fossilized or live) and cached; a
batch then costs its sample count times that figure, which is exact because every counted op
is linear in the batch (the last, partial batch included). The loop adds per batch from the
cache: no counter runs per batch.

- ``EnvFlops``: one env's episode totals (training, validation, attribution, report),
  checkpointed with the env, and the cache (``FlopCache``) the envs of a process share.
- ``RunFlops``: the leader's sink wrapper that sums what the ``EpochSummary`` events report, so
  ``RunFinished.total_flops`` is the sum, over envs and episodes, of each episode's last
  summary (sharded runs included: worker summaries pass through the leader's sink).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from esper_engine.contracts import EpochSummary, Event, SeedStage
from esper_engine.lifecycle import LifecycleError
from esper_engine.shapley import Coalition, prefix_forward

Architecture = tuple[tuple[str, str, str], ...]
KINDS = ("train", "val", "attribution", "report")


def architecture(model: Any) -> Architecture:
    """What decides a forward's compute: the slots whose seed runs, with its blueprint and how
    it runs (fossilized: on the host's path, whose gradient flows through it; live: on a
    detached input; a germinated seed is skipped by the forward, a dormant or pruned slot has
    none). Growth operators that reshape the host (widen, stack) are blueprints in a slot, so
    they are named here too. Cheap (a few attribute reads, about 10 us: no parameter is
    walked), so the loop asks it every batch."""
    running = []
    for sid in model.slot_ids:
        slot = model.slots[sid]
        if slot.seed is None or slot.stage is SeedStage.GERMINATED:
            continue
        how = "fossil" if slot.stage is SeedStage.FOSSILIZED else "live"
        running.append((sid, str(slot.blueprint), how))
    return tuple(running)


@contextmanager
def _modes(model: nn.Module, training: bool) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for module, was in modes:
            module.training = was


def _forked_rng(device: torch.device) -> Any:
    devices = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def train_step_flops(model: nn.Module, task: Any, x: Tensor, y: Tensor) -> int:
    """FLOPs of one training step (forward, loss, backward) on ``x``: measured on a copy of
    the model, so no weight, gradient, BatchNorm statistic, seed health record or random
    stream of the run moves."""
    with _forked_rng(x.device):
        twin = copy.deepcopy(model)
        twin.train()
        for p in twin.parameters():
            p.grad = None
        with FlopCounterMode(display=False) as counter:
            loss = task.loss(twin(x), y)
            loss.backward()
    return int(counter.get_total_flops())


def forward_flops(model: nn.Module, x: Tensor) -> int:
    """FLOPs of one evaluation forward (validation, report) on ``x``, in eval mode."""
    with _modes(model, False), torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def attribution_flops(
    model: Any, x: Tensor, active: Sequence[str], coalitions: Sequence[Coalition]
) -> int:
    """FLOPs of one attribution pass (``shapley.prefix_forward``: shared prefixes, a branch per
    coalition that needs it) on ``x``. Blend weights do not change the count."""
    alphas = [1.0] * len(active)
    with _modes(model, False), torch.inference_mode(), FlopCounterMode(display=False) as counter:
        prefix_forward(model, x, list(active), alphas, list(coalitions))
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class SeedCosts:
    """What a seed would cost, measured once on the bare host (issue 24: the observation's
    per-slot FLOP cost, the heuristic's cost-aware order, the compute price's static host).

    ``host``: training FLOPs per sample of the bare host (no seed). ``added[(slot, blueprint)]``:
    the training FLOPs per sample a live (training or blending) seed of that blueprint adds in
    that slot, over the bare host's; None where the blueprint cannot grow there. Measured on the
    bare host, so a slot's figure does not follow other slots' seeds (a widened block makes the
    next block's seeds slightly dearer: not counted)."""

    host: int
    added: dict[tuple[str, str], int | None]

    def ratio(self, slot: str, blueprint: str) -> float:
        """The added FLOPs as a fraction of the host's (inf where it cannot grow)."""
        added = self.added.get((slot, blueprint))
        return math.inf if added is None else added / self.host


def measure_seed_costs(
    bare: Any, task: Any, x: Tensor, y: Tensor, blueprints: Sequence[str]
) -> SeedCosts:
    """``SeedCosts`` of a host with no seed: one counted training step per (slot, blueprint),
    each on a copy germinated there (the run's weights and random streams untouched)."""
    host = train_step_flops(bare, task, x, y)
    added: dict[tuple[str, str], int | None] = {}
    for slot_id in bare.slot_ids:
        for blueprint in blueprints:
            with _forked_rng(x.device):
                twin = copy.deepcopy(bare)
                twin.on_transition = None
                try:
                    twin.germinate(slot_id, blueprint)
                    twin.begin_training(slot_id)
                except (ValueError, RuntimeError, LifecycleError):
                    added[(slot_id, blueprint)] = None
                    continue
            added[(slot_id, blueprint)] = max(0, train_step_flops(twin, task, x, y) - host)
    return SeedCosts(host, added)


# SeedCosts by (task type, the bare host's structure, sample shape, blueprints, device): they
# depend on shapes alone, so every run of one host in a process measures them once.
_SEED_COSTS: dict[tuple, SeedCosts] = {}


class FlopCache:
    """Per-sample FLOPs by architecture and kind, measured once each; shared by the envs of a
    process (they train the same host on the same task, so the same architecture costs the
    same everywhere)."""

    def __init__(self, task: Any, device: torch.device | str) -> None:
        self.task = task
        self.device = torch.device(device)
        self._sample: tuple[Tensor, Tensor] | None = None
        self.counts: dict[tuple, int] = {}  # (kind, architecture[, coalitions]) -> FLOPs
        self.measurements = 0  # how many times a counter ran (tests: once per architecture)
        self.seed_costs: SeedCosts | None = None  # measured once, on the bare host

    def sample(self) -> tuple[Tensor, Tensor]:
        """One validation sample, prepared, on the run's device (the unit of every count)."""
        if self._sample is None:
            task = self.task
            x = task.prepare(task.val_x[:1].to(self.device))
            self._sample = (x, task.val_y[:1].to(self.device))
        return self._sample

    def get(self, key: tuple, measure: Any) -> int:
        if key not in self.counts:
            self.counts[key] = measure()
            self.measurements += 1
        return self.counts[key]


class EnvFlops:
    """One env's per-sample FLOPs by architecture (cached) and its episode's totals."""

    def __init__(self, task: Any, device: torch.device | str) -> None:
        self.task = task
        self.cache = FlopCache(task, device)
        self.episode = 0
        self.totals = dict.fromkeys(KINDS, 0)
        self.train_samples = 0  # samples trained this episode (the static host's FLOPs: x host)

    def share(self, other: EnvFlops) -> None:
        """Use ``other``'s cache (an env of the same run: same host, same task)."""
        self.cache = other.cache

    @property
    def measurements(self) -> int:
        return self.cache.measurements

    # --- per sample, cached -------------------------------------------------------------------

    def train_per_sample(self, model: Any) -> int:
        cache = self.cache
        return cache.get(
            ("train", architecture(model)),
            lambda: train_step_flops(model, self.task, *cache.sample()),
        )

    def forward_per_sample(self, model: Any) -> int:
        cache = self.cache
        return cache.get(
            ("forward", architecture(model)), lambda: forward_flops(model, cache.sample()[0])
        )

    def attribution_per_sample(
        self, model: Any, active: Sequence[str], coalitions: Sequence[Coalition]
    ) -> int:
        cache = self.cache
        players = tuple(sorted(tuple(sorted(c)) for c in coalitions))
        return cache.get(
            ("attribution", architecture(model), players),
            lambda: attribution_flops(model, cache.sample()[0], active, coalitions),
        )

    def seed_costs(self, bare: Any, blueprints: Sequence[str]) -> SeedCosts:
        """The cache's ``SeedCosts``, measured on first use; ``bare()`` builds a host with no
        seed (called only then)."""
        cache = self.cache
        if cache.seed_costs is None:
            host = bare()
            x, y = cache.sample()
            key = (type(self.task).__name__, repr(host), tuple(x.shape), tuple(blueprints))
            key = (*key, str(cache.device))
            if key not in _SEED_COSTS:  # the process's runs of one host share it (the study)
                _SEED_COSTS[key] = measure_seed_costs(host, self.task, x, y, blueprints)
            cache.seed_costs = _SEED_COSTS[key]
        return cache.seed_costs

    def static_train_flops(self) -> int:
        """What the bare host would have spent on this episode's training samples so far (0
        before the seed costs are measured)."""
        costs = self.cache.seed_costs
        return 0 if costs is None else self.train_samples * costs.host

    # --- the episode's totals -----------------------------------------------------------------

    def start_episode(self, episode: int) -> None:
        """Totals count from zero in a new episode (a resumed one keeps its restored totals)."""
        if episode != self.episode:
            self.episode = episode
            self.totals = dict.fromkeys(KINDS, 0)
            self.train_samples = 0

    def add_train(self, model: Any, samples: int) -> None:
        self.totals["train"] += samples * self.train_per_sample(model)
        self.train_samples += samples

    def add_validation(self, model: Any, samples: int) -> None:
        self.totals["val"] += samples * self.forward_per_sample(model)

    def add_report(self, model: Any, samples: int) -> None:
        self.totals["report"] += samples * self.forward_per_sample(model)

    def add_attribution(
        self, model: Any, samples: int, active: Sequence[str], coalitions: Sequence[Coalition]
    ) -> None:
        self.totals["attribution"] += samples * self.attribution_per_sample(
            model, active, coalitions
        )

    def summary_fields(self) -> dict[str, int]:
        """``EpochSummary``'s FLOPs fields: this episode's totals so far."""
        t = self.totals
        return {
            "train_flops": t["train"],
            "val_flops": t["val"],
            "attribution_flops": t["attribution"],
            "report_flops": t["report"],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "episode": self.episode,
            "totals": dict(self.totals),
            "train_samples": self.train_samples,
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """A checkpoint's totals (None: a checkpoint older than them, which counts from 0)."""
        if state is None:
            return
        self.episode = int(state["episode"])
        self.totals = {kind: int(state["totals"].get(kind, 0)) for kind in KINDS}
        self.train_samples = int(state.get("train_samples", 0))


def summary_total(event: EpochSummary) -> int:
    """Every FLOP an env spent in the episode so far, by the event's own figures."""
    return event.train_flops + event.val_flops + event.attribution_flops + event.report_flops


class RunFlops:
    """The run's sink, wrapped: it passes every event on and sums the FLOPs ``EpochSummary``
    events report (per env, the growth since that env's previous summary of the episode)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.total = 0
        self._last: dict[int, tuple[int, int]] = {}  # env -> (episode, its summary total)

    def emit(self, event: Event) -> None:
        if isinstance(event, EpochSummary) and event.env is not None:
            now = summary_total(event)
            episode, before = self._last.get(event.env, (event.episode, 0))
            if episode != event.episode:
                before = 0
            self.total += max(0, now - before)
            self._last[event.env] = (event.episode, now)
        self.sink.emit(event)

    def close(self) -> None:
        self.sink.close()

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "last": [[e, ep, t] for e, (ep, t) in self._last.items()]}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        self.total = int(state["total"])
        self._last = {int(e): (int(ep), int(t)) for e, ep, t in state["last"]}
