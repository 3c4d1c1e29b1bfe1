"""Counterfactual attribution: how much accuracy each active seed is worth (Shapley values).

A coalition S of active seeds is scored by v(S) = validation accuracy (a fraction in [0, 1]) with
exactly the seeds in S at their current alpha and every other active seed at alpha 0 (fossilized
seeds stay on), so the values are fractions too. Up to ``exact_max`` seeds the exact formula over
all 2^n coalitions is used, above it antithetic permutation sampling with a standard error, unless
the sample could need every coalition anyway.

Evaluation shares prefixes: coalitions that agree on the seeds before depth k share every
activation up to depth k, so the stacked batch only doubles at an active slot (with 3 active slots
and 4 segments: 1 + 2 + 4 + 8 = 15 segment passes instead of 32).
"""

from __future__ import annotations

import hashlib
import math
import operator
import random
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from esper_engine.contracts import Attribution

if TYPE_CHECKING:  # annotations only: tests drive the engine with small stand-in models
    from esper_engine.config import TrainingConfig
    from esper_engine.env_runtime import EnvRuntime
    from esper_engine.model import MorphogeneticModel
    from esper_engine.tasks import Task

Coalition = frozenset[int]
Game = Mapping[Coalition, float]  # a value per coalition
Permutation = tuple[int, ...]
Pair = tuple[Permutation, Permutation]  # a permutation and its reverse


def attribution_seed(run_seed: int, env: int, episode: int, epoch: int) -> int:
    """The permutation seed of one attribution: distinct per (run, env, episode, epoch).

    A keyed hash rather than ``run_seed + epoch`` (every env and episode replayed the same
    permutations) or ``hash()`` (salted per process). Below 2**63, so it fits any int64 field.
    """
    key = ",".join(str(operator.index(v)) for v in (run_seed, env, episode, epoch))
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"esper.shapley").digest()
    return int.from_bytes(digest, "big") >> 1


# --------------------------------------------------------------------------------------------
# The math: players are 0..n-1, a game is a value per coalition.
# --------------------------------------------------------------------------------------------


def all_coalitions(n: int) -> list[Coalition]:
    """Every subset of n players, indexed so bit j of the list position is membership of j."""
    return [frozenset(j for j in range(n) if mask >> j & 1) for mask in range(1 << n)]


def exact_shapley(n: int, value: Game) -> list[float]:
    """Exact Shapley values: weighted marginals over all 2^n coalitions."""
    table = [float(value[c]) for c in all_coalitions(n)]  # a gap raises KeyError(coalition)
    # weight of a coalition of size s that player i joins: s! (n - s - 1)! / n!
    weights = [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]
    phi = [0.0] * n
    for mask, v_mask in enumerate(table):
        w = weights[mask.bit_count()] if mask != (1 << n) - 1 else 0.0
        for i in range(n):
            if not mask >> i & 1:
                phi[i] += w * (table[mask | 1 << i] - v_mask)
    return phi


def sampling_needs_every_coalition(n: int, n_pairs: int) -> bool:
    """Whether ``n_pairs`` antithetic pairs over n players could need all 2^n coalitions.

    Each of the 2 * n_pairs permutations needs its n + 1 prefixes, of which the empty and the full
    coalition are common to all, so a sample needs at most 2 + 2 * n_pairs * (n - 1) distinct
    coalitions, and that worst case is the cost the budget grants. When it reaches 2^n the exact
    values cost no more than the budget allows, so they replace the noisy estimate. The choice
    depends on (n, n_pairs) only, never on the draw, so whether a run's attributions are exact
    is known up front. It also covers every budget that fits all n! orders.
    """
    return 2 + 2 * n_pairs * (n - 1) >= 1 << n


def antithetic_pairs(n: int, n_pairs: int, rng: random.Random) -> list[Pair]:
    """``n_pairs`` random permutations of n players, each paired with its reverse."""
    pairs = []
    for _ in range(n_pairs):
        p = tuple(rng.sample(range(n), n))
        pairs.append((p, p[::-1]))
    return pairs


def _permutation_coalitions(perms: Sequence[Permutation]) -> set[Coalition]:
    """The coalitions whose values a set of permutations needs (every prefix of each)."""
    needed: set[Coalition] = set()
    for perm in perms:
        for k in range(len(perm) + 1):
            needed.add(frozenset(perm[:k]))
    return needed


def _marginals(perm: Permutation, value: Game) -> list[float]:
    """Each player's marginal contribution when players join in the order ``perm``."""
    out = [0.0] * len(perm)
    before = frozenset()
    for player in perm:
        after = before | {player}
        out[player] = float(value[after]) - float(value[before])
        before = after
    return out


def estimate_shapley(n: int, pairs: Sequence[Pair], value: Game) -> tuple[list[float], list[float]]:
    """Antithetic permutation estimate of Shapley values and their standard errors.

    Every permutation's marginals sum to v(all) - v(none), so efficiency holds exactly for the
    estimate too. A standard error needs two pairs or more (the engine checks its budget).
    """
    # A pair's two marginals are correlated, so the i.i.d. samples are the pair averages.
    samples = []
    for forward, backward in pairs:
        a, b = _marginals(forward, value), _marginals(backward, value)
        samples.append([(x + y) / 2 for x, y in zip(a, b, strict=True)])
    values = [statistics.fmean(s[i] for s in samples) for i in range(n)]
    root = math.sqrt(len(samples))
    return values, [statistics.stdev(s[i] for s in samples) / root for i in range(n)]


# --------------------------------------------------------------------------------------------
# The evaluation: v(S) on a model, sharing activations across coalitions.
# --------------------------------------------------------------------------------------------


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then every submodule's own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


class _Scores:
    """Per-coalition correct and loss sums, kept as tensors until the end (one sync)."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.correct: dict[Coalition, Tensor] = {}
        self.loss: dict[Coalition, Tensor] = {}
        self.count: dict[Coalition, int] = {}

    def add(self, coalition: Coalition, logits: Tensor, y: Tensor) -> None:
        count = int(self.task.count(y))
        correct = self.task.correct(logits, y)
        loss = self.task.loss(logits, y).float() * count  # task.loss is a mean
        if coalition in self.count:
            correct, loss = self.correct[coalition] + correct, self.loss[coalition] + loss
            count += self.count[coalition]
        self.correct[coalition], self.loss[coalition], self.count[coalition] = correct, loss, count

    def values(self) -> dict[Coalition, tuple[float, float]]:
        """Accuracy (a fraction) and mean loss (nats) per coalition."""
        return {
            c: (float(self.correct[c]) / n, float(self.loss[c]) / n) for c, n in self.count.items()
        }


def _alpha(model: MorphogeneticModel, slot_id: str) -> float:
    return float(model.slots[slot_id].alpha)


def _chunks(x: Tensor, y: Tensor, rows: int) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, x.shape[0], rows):
        yield x[start : start + rows], y[start : start + rows]


def _select(h: Tensor, rows: list[int], n_prefixes: int, b: int) -> Tensor:
    """The stacked activations of the prefixes listed in ``rows`` (each prefix owns b rows)."""
    if len(rows) == n_prefixes:
        return h
    return h.reshape(n_prefixes, b, *h.shape[1:])[rows].reshape(len(rows) * b, *h.shape[1:])


def prefix_forward(
    model: MorphogeneticModel,
    x: Tensor,
    active: Sequence[str],
    alphas: Sequence[float],
    coalitions: Sequence[Coalition],
) -> tuple[Tensor, dict[Coalition, int]]:
    """Logits ``[K, B, ...]`` for K distinct coalitions, sharing activations across prefixes.

    ``active`` are the players' slot ids in depth order. At an active slot each prefix branches
    into "seed off" (identity, i.e. alpha 0) and "seed on at its alpha", but only into branches
    some requested coalition needs; other slots run once per prefix with their own semantics.
    """
    depth = {sid: k for k, sid in enumerate(model.slot_ids)}
    if [depth[sid] for sid in active] != sorted(depth[sid] for sid in active):
        raise ValueError(f"active slots must be in depth order, got {list(active)}")
    player_at = {depth[sid]: j for j, sid in enumerate(active)}
    b = x.shape[0]
    h, prefixes = x, [frozenset()]
    for k, sid in enumerate(model.slot_ids):
        h, u = model.run_segment_io(k, h)  # u: the block input a widen seed reads, else None
        j = player_at.get(k)
        if j is None:
            h = model.slots[sid](h) if u is None else model.slots[sid](h, block_input=u)
            continue
        wanted = {frozenset(i for i in c if i <= j) for c in coalitions}
        off = [r for r, p in enumerate(prefixes) if p in wanted]
        on = [r for r, p in enumerate(prefixes) if p | {j} in wanted]
        parts = []
        if off:
            parts.append(_select(h, off, len(prefixes), b))
        if on:
            h_on = _select(h, on, len(prefixes), b)
            extra = {} if u is None else {"block_input": _select(u, on, len(prefixes), b)}
            parts.append(model.slots[sid](h_on, alpha=alphas[j], **extra))
        prefixes = [prefixes[r] for r in off] + [prefixes[r] | {j} for r in on]
        h = torch.cat(parts) if len(parts) > 1 else parts[0]
    logits = model.run_segment(len(model.slot_ids), h)
    logits = logits.reshape(len(prefixes), b, *logits.shape[1:])
    return logits, {p: r for r, p in enumerate(prefixes)}


class CounterfactualEngine:
    """Shapley attribution of the active seeds of one model on a fixed validation batch set."""

    def __init__(
        self,
        model: MorphogeneticModel,
        task: Task,
        exact_max: int = 4,
        permutations: int = 32,
        seed: int = 0,
        max_rows: int = 1024,
    ) -> None:
        if exact_max < 0 or permutations < 2 or max_rows < 1:
            raise ValueError(
                f"need exact_max >= 0, permutations >= 2, max_rows >= 1; got {exact_max}, "
                f"{permutations}, {max_rows}"
            )
        self.model, self.task = model, task
        self.exact_max, self.permutations, self.max_rows = exact_max, permutations, max_rows
        # one stream across calls: each attribution draws fresh permutations, reproducibly
        self._rng = random.Random(seed)
        self.evaluated: list[Coalition] = []  # the last attribution's coalitions (its FLOPs)

    def attribute(
        self,
        val_batches: Sequence[tuple[Tensor, Tensor]],
        plain_pass_s: float | None = None,
    ) -> Attribution:
        """Attribute accuracy to every active seed; batches are prepared (x, y) pairs.

        Returns the ``Attribution`` event with its common fields (run id, env, epoch...) at their
        defaults: the caller knows them and sets them with ``msgspec.structs.replace``.
        ``plain_pass_s`` is the time of one ordinary validation pass over the same batches, when
        the caller has just measured it (the trainer has); otherwise one is timed here.
        """
        if not val_batches:
            raise ValueError("attribution needs at least one validation batch")
        order = {sid: k for k, sid in enumerate(self.model.slot_ids)}
        active = sorted(self.model.active_slots(), key=order.__getitem__)
        n = len(active)
        with _eval_mode(self.model), torch.inference_mode():
            start = time.perf_counter()
            scores, phi, errors = self._solve(active, val_batches)
            elapsed = time.perf_counter() - start
            plain = plain_pass_s if plain_pass_s else self._plain_pass_seconds(val_batches)
        full, empty = scores[frozenset(range(n))], scores[frozenset()]
        return Attribution(
            shapley=dict(zip(active, phi, strict=True)),
            std=None if errors is None else dict(zip(active, errors, strict=True)),
            full_value=full[0],
            empty_value=empty[0],
            exact=errors is None,
            coalitions=len(scores),
            full_loss=full[1],
            empty_loss=empty[1],
            cost_ratio=elapsed / max(plain, 1e-9),
        )

    def _solve(
        self, active: list[str], batches: Sequence[tuple[Tensor, Tensor]]
    ) -> tuple[dict[Coalition, tuple[float, float]], list[float], list[float] | None]:
        """(scores per coalition, Shapley values, standard errors or None when exact)."""
        n = len(active)
        if n <= self.exact_max or sampling_needs_every_coalition(n, self.permutations):
            scores = self._evaluate(active, all_coalitions(n), batches)
            return scores, exact_shapley(n, {c: acc for c, (acc, _) in scores.items()}), None
        pairs = antithetic_pairs(n, self.permutations, self._rng)
        needed = _permutation_coalitions([p for pair in pairs for p in pair])
        scores = self._evaluate(active, sorted(needed, key=sorted), batches)
        phi, errors = estimate_shapley(n, pairs, {c: acc for c, (acc, _) in scores.items()})
        return scores, phi, errors

    def _evaluate(
        self,
        active: list[str],
        coalitions: Sequence[Coalition],
        batches: Sequence[tuple[Tensor, Tensor]],
    ) -> dict[Coalition, tuple[float, float]]:
        self.evaluated = list(coalitions)
        alphas = [_alpha(self.model, sid) for sid in active]
        scores = _Scores(self.task)
        # the stacked batch reaches len(coalitions) * rows at the head: bound it
        rows = max(1, self.max_rows // len(coalitions))
        for x_full, y_full in batches:
            for x, y in _chunks(x_full, y_full, rows):
                logits, index = prefix_forward(self.model, x, active, alphas, coalitions)
                for c in coalitions:
                    scores.add(c, logits[index[c]], y)
        return scores.values()

    def _plain_pass_seconds(self, batches: Sequence[tuple[Tensor, Tensor]]) -> float:
        """Wall time of one ordinary validation pass: the unit of ``cost_ratio``."""
        start = time.perf_counter()
        scores = _Scores(self.task)
        for x, y in batches:
            scores.add(frozenset(), self.model(x), y)
        scores.values()  # forces the device to finish
        return time.perf_counter() - start


def attribute_env(
    env: EnvRuntime,
    task: Task,
    config: TrainingConfig,
    val_batches: Sequence[tuple[Tensor, Tensor]],
    episode: int,
    epoch: int,
) -> Attribution | None:
    """The env's seeds' Shapley values on the first ``attribution_batches`` of the fixed
    validation batches, on the epochs that attribute (``attribution_every``), set on its slots
    (the policy reads them) and their FLOPs counted; None when nothing is attributed."""
    every = config.attribution_every
    if not every or epoch % every or not env.model.active_slots():
        return None
    engine = CounterfactualEngine(
        env.model,
        task,
        exact_max=config.shapley_exact_max,
        permutations=config.shapley_permutations,
        seed=attribution_seed(config.seed, env.index, episode, epoch),
    )
    on_cpu = torch.device(config.device).type == "cpu"  # CUDA times need a sync
    batches = list(val_batches[: config.attribution_batches or None])  # 0: all
    attribution = engine.attribute(batches, env.val_pass_s if on_cpu else None)
    samples = sum(len(x) for x, _ in batches)
    env.flops.add_attribution(env.model, samples, env.model.active_slots(), engine.evaluated)
    for slot_id, value in attribution.shapley.items():
        env.model.slots[slot_id].contribution = value
    return attribution
