"""MorphogeneticModel: a host with seed slots between its stages, and ``create_model``.

The model is cut into segments at the selected slots: segment ``k < n`` maps the output of slot
``k-1`` (or the input) to the input of slot ``k``; segment ``n`` is the head. Shapley attribution
runs segments one by one to share prefixes; ``forward`` runs them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from esper_engine.blueprints import SeedSite, get_blueprint
from esper_engine.contracts import Initiator, SeedTransition, SlotState
from esper_engine.host_presets import HostSpec, resolve_host
from esper_engine.hosts import CNNHost, TransformerHost
from esper_engine.lifecycle import DEFAULT_MIN_PRUNE_AGE, SeedStage
from esper_engine.slots import DEFAULT_EMBARGO_EPOCHS, DEFAULT_MIN_TRAINING_EPOCHS, SeedSlot

TransitionCallback = Callable[[SeedTransition], None]


class MorphogeneticModel(nn.Module):
    """A host plus one SeedSlot per selected slot id (unselected slots do not exist)."""

    def __init__(
        self,
        host: CNNHost | TransformerHost,
        slots: Sequence[str] | None = None,
        *,
        embargo_epochs: int = DEFAULT_EMBARGO_EPOCHS,
        min_training_epochs: int = DEFAULT_MIN_TRAINING_EPOCHS,
        min_prune_age: int = DEFAULT_MIN_PRUNE_AGE,
    ) -> None:
        super().__init__()
        self.host = host
        self.host_kind: str = host.host_kind
        self.slot_ids: list[str] = _select_slots(host.slot_ids, slots)
        self.slots = nn.ModuleDict(
            {
                sid: SeedSlot(
                    sid,
                    host.slot_dims[sid],
                    host.host_kind,
                    embargo_epochs=embargo_epochs,
                    min_training_epochs=min_training_epochs,
                    min_prune_age=min_prune_age,
                )
                for sid in self.slot_ids
            }
        )
        # Host stages run by each model segment: consecutive stages merge across unselected slots.
        ends = [host.slot_ids.index(sid) for sid in self.slot_ids] + [host.n_stages - 1]
        starts = [0] + [end + 1 for end in ends[:-1]]
        self._segments = [range(a, b + 1) for a, b in zip(starts, ends, strict=True)]
        self._on_transition: TransitionCallback | None = None

    # --- structure and forward ----------------------------------------------------------------

    @property
    def n_segments(self) -> int:
        return len(self.slot_ids) + 1

    def run_segment(self, k: int, h: Tensor) -> Tensor:
        for stage in self._segments[k]:
            h = self.host.run_stage(stage, h)
        return h

    def run_segment_io(self, k: int, h: Tensor) -> tuple[Tensor, Tensor | None]:
        """Segment ``k``'s output, and the input of its last block when slot ``k``'s seed reads
        it (a ``widen``; else None): pass both to the slot."""
        if k >= len(self.slot_ids) or not self.slots[self.slot_ids[k]].reads_block_input:
            return self.run_segment(k, h), None
        stages = self._segments[k]
        for stage in stages[:-1]:
            h = self.host.run_stage(stage, h)
        return self.host.run_stage_with_input(stages[-1], h)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for k, sid in enumerate(self.slot_ids):
            h, u = self.run_segment_io(k, h)
            h = self.slots[sid](h, block_input=u)
        return self.run_segment(len(self.slot_ids), h)

    def fused_forward(self, x: Tensor, alpha_overrides: Sequence[Mapping[str, float]]) -> Tensor:
        """Every alpha configuration in one pass, stacked along the batch: returns [C, B, ...].

        A slot a configuration does not mention keeps its current blend weight. Numerically equal
        to one forward per configuration under ``force_alpha`` only if the host has no
        batch-coupled layers in the current mode (call ``eval()`` for BatchNorm hosts).
        """
        n_configs = len(alpha_overrides)
        if n_configs == 0:
            raise ValueError("fused_forward needs at least one alpha configuration")
        for config in alpha_overrides:
            self._check_known(config)
        batch = x.shape[0]
        h = x.repeat(n_configs, *([1] * (x.dim() - 1)))
        for k, sid in enumerate(self.slot_ids):
            alpha = self._fused_alpha(sid, alpha_overrides, batch, x.device)
            h, u = self.run_segment_io(k, h)
            h = self.slots[sid](h, alpha=alpha, block_input=u)
        out = self.run_segment(len(self.slot_ids), h)
        return out.view(n_configs, batch, *out.shape[1:])

    @contextmanager
    def force_alpha(self, slot_id: str, value: float) -> Iterator[None]:
        """Within the block, the slot blends with ``value`` (fossilized slots ignore it)."""
        slot = self._slot(slot_id)
        previous = slot.forced_alpha
        slot.forced_alpha = float(value)
        try:
            yield
        finally:
            slot.forced_alpha = previous

    # --- lifecycle ----------------------------------------------------------------------------

    def germinate(
        self,
        slot_id: str,
        blueprint: str,
        initiator: Initiator | str = Initiator.POLICY,
        **kwargs: Any,
    ) -> None:
        """Plant ``blueprint`` in a DORMANT slot (kwargs: ``blend_epochs``, ``schedule``)."""
        device = next(self.host.parameters()).device
        slot = self._slot(slot_id)
        slot.germinate(blueprint, initiator, device=device, site=self.seed_site(slot_id), **kwargs)

    def check_plan(self, entries: Sequence[str]) -> list[tuple[str, str]]:
        """``slot:blueprint`` entries (``lifecycle.plant``) as pairs; one-line ValueError naming
        an unknown slot or blueprint."""
        plan = []
        for entry in entries:
            slot_id, _, blueprint = entry.partition(":")
            try:
                self._slot(slot_id)
                get_blueprint(self.host_kind, blueprint)
            except ValueError as error:
                raise ValueError(f"lifecycle.plant: {error}") from None
            plan.append((slot_id, blueprint))
        return plan

    def begin_training(self, slot_id: str) -> None:
        self._slot(slot_id).begin_training()

    def advance(
        self, slot_id: str, initiator: Initiator | str = Initiator.POLICY, **kwargs: Any
    ) -> None:
        self._slot(slot_id).advance(initiator, **kwargs)

    def prune(self, slot_id: str, initiator: Initiator | str = Initiator.POLICY) -> None:
        self._slot(slot_id).prune(initiator)

    def fossilize(self, slot_id: str, initiator: Initiator | str = Initiator.POLICY) -> None:
        self._slot(slot_id).fossilize(initiator)

    def end_epoch(self) -> None:
        for sid in self.slot_ids:
            self.slots[sid].end_epoch()

    @property
    def on_transition(self) -> TransitionCallback | None:
        return self._on_transition

    @on_transition.setter
    def on_transition(self, callback: TransitionCallback | None) -> None:
        self._on_transition = callback
        for sid in self.slot_ids:
            self.slots[sid].on_transition = callback

    # --- queries ------------------------------------------------------------------------------

    def live_slots(self) -> list[str]:
        return [sid for sid in self.slot_ids if self.slots[sid].is_live]

    def active_slots(self) -> list[str]:
        """Seeds blended in with alpha > 0 and not fossilized: the players Shapley attributes."""
        return [sid for sid in self.slot_ids if self.slots[sid].is_active]

    def learning_slots(self) -> list[str]:
        """Slots whose seed has an optimizer: live seeds and fossilized ones (part of the host)."""
        return [
            sid
            for sid in self.slot_ids
            if self.slots[sid].is_live or self.slots[sid].stage is SeedStage.FOSSILIZED
        ]

    def fossilized_slots(self) -> list[str]:
        return [sid for sid in self.slot_ids if self.slots[sid].stage is SeedStage.FOSSILIZED]

    def take_dropped_seed_outputs(self) -> dict[str, Tensor]:
        """Incubating seeds whose output the last training forward dropped (a 0-dim bool tensor
        each, true when dropped); clears them. The training step zeroes those seeds' grads."""
        dropped = {}
        for sid in self.slot_ids:
            slot = self.slots[sid]
            if slot.step_dropped is not None:
                dropped[sid], slot.step_dropped = slot.step_dropped, None
        return dropped

    def record_seed_grad_health(self, slot_id: str, finite: Tensor) -> None:
        self._slot(slot_id).record_seed_grad_health(finite)

    def host_parameters(self) -> list[nn.Parameter]:
        return list(self.host.parameters())

    def seed_parameters(self, slot_id: str) -> list[nn.Parameter]:
        seed = self._slot(slot_id).seed
        return [] if seed is None else list(seed.parameters())

    def live_seed_key_prefixes(self) -> list[str]:
        """State-dict key prefixes of live seeds (the governor's snapshot leaves them out)."""
        return [
            f"slots.{sid}.seed." for sid in self.live_slots() if self.slots[sid].seed is not None
        ]

    def slot_states(self) -> list[SlotState]:
        return [self.slots[sid].state() for sid in self.slot_ids]

    def seed_site(self, slot_id: str) -> SeedSite:
        """The slot's width and the host block it follows (what growth operators build from)."""
        k = self.slot_ids.index(slot_id)
        return SeedSite(self.slots[slot_id].dim, host=self.host, stage=self._segments[k][-1])

    def seed_lr_source(self, slot_id: str) -> str:
        """``"host"``: the seed trains at the host's lr (growth operators); else ``"seed"``."""
        return self._slot(slot_id).lr_source

    def blueprint_param_count(self, slot_id: str, blueprint: str) -> int:
        """Parameters a ``blueprint`` seed would have in the slot: a built module's ``numel()``
        (built without drawing from the global random stream)."""
        with torch.random.fork_rng(devices=[]):
            seed = get_blueprint(self.host_kind, blueprint).build(self.seed_site(slot_id))
        return sum(p.numel() for p in seed.parameters())

    def host_param_count(self) -> int:
        return sum(p.numel() for p in self.host.parameters())

    def seed_param_count(self) -> int:
        """Parameters of every seed present (live and fossilized)."""
        return sum(self.slots[sid].param_count() for sid in self.slot_ids)

    # --- checkpoints --------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, object]:
        """Weights (live seeds included) and every slot's lifecycle state."""
        return {
            "weights": self.state_dict(),
            "slots": {sid: self.slots[sid].lifecycle_state() for sid in self.slot_ids},
        }

    def load_checkpoint_state(self, state: dict) -> None:
        """Rebuild the seeds the checkpoint holds, then load every weight strictly."""
        device = next(self.host.parameters()).device
        if list(state["slots"]) != self.slot_ids:
            raise ValueError(
                f"checkpoint slots {list(state['slots'])} do not match the model's {self.slot_ids}"
            )
        for sid, slot_state in state["slots"].items():
            self.slots[sid].load_lifecycle_state(slot_state, device, self.seed_site(sid))
        self.load_state_dict(state["weights"], strict=True)

    # --- internals ----------------------------------------------------------------------------

    def _slot(self, slot_id: str) -> SeedSlot:
        if slot_id not in self.slots:
            raise ValueError(f"unknown slot {slot_id!r}; known slots: {', '.join(self.slot_ids)}")
        return self.slots[slot_id]

    def _check_known(self, config: Mapping[str, float]) -> None:
        for sid in config:
            self._slot(sid)

    def _fused_alpha(
        self,
        slot_id: str,
        configs: Sequence[Mapping[str, float]],
        batch: int,
        device: torch.device,
    ) -> Tensor | None:
        if not any(slot_id in config for config in configs):
            return None
        default = self.slots[slot_id].effective_alpha()
        values = torch.tensor([float(c.get(slot_id, default)) for c in configs], device=device)
        return values.repeat_interleave(batch)


def resolve_device(device: torch.device | str) -> torch.device:
    """Parse a device and check it exists here; one-line ValueError otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    name = str(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA devices exist"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} requested but MPS is not available")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    return dev


def create_model(
    task: Any,
    device: torch.device | str,
    slots: Sequence[str] | None = None,
    *,
    min_prune_age: int = DEFAULT_MIN_PRUNE_AGE,
    min_training_epochs: int = DEFAULT_MIN_TRAINING_EPOCHS,
    embargo_epochs: int = DEFAULT_EMBARGO_EPOCHS,
    spec: HostSpec | None = None,
    **host_kwargs: Any,
) -> MorphogeneticModel:
    """Build the task's host with seed slots, on ``device``.

    Only ``task.host_kind``, ``task.num_classes`` and (for language models) ``task.seq_len`` are
    read. The host's sizes come from ``spec`` (``run_host_spec``) or ``host_kwargs`` (e.g.
    ``widths`` for the CNN, ``d_model`` for the LM); with neither, the ``tiny`` host.
    """
    dev = resolve_device(device)
    if spec is not None:
        if spec.kind != task.host_kind:
            raise ValueError(f"a {spec.kind} host spec for a {task.host_kind} task")
        host_kwargs = {**spec.host_kwargs(), **host_kwargs}
    if task.host_kind == "cnn":
        host: CNNHost | TransformerHost = CNNHost(num_classes=task.num_classes, **host_kwargs)
    elif task.host_kind == "transformer":
        if task.seq_len is None:
            raise ValueError("a transformer host needs task.seq_len")
        host = TransformerHost(vocab=task.num_classes, seq_len=task.seq_len, **host_kwargs)
    else:
        raise ValueError(f"unknown host kind {task.host_kind!r}; expected cnn or transformer")
    return MorphogeneticModel(
        host,
        slots,
        embargo_epochs=embargo_epochs,
        min_training_epochs=min_training_epochs,
        min_prune_age=min_prune_age,
    ).to(dev)


def run_host_spec(config: Any, task: Any) -> HostSpec:
    """The host a run's config (``TrainingConfig``) trains on ``task``."""
    return resolve_host(config.host, task.name, task.host_kind)


def _select_slots(known: list[str], slots: Sequence[str] | None) -> list[str]:
    """The selected slot ids in depth order; ValueError naming a bad id and the known ones."""
    if slots is None:
        return list(known)
    if isinstance(slots, str):
        slots = [slots]
    if len(slots) == 0:
        raise ValueError(f"no slots selected; known slots: {', '.join(known)}")
    for sid in slots:
        if sid not in known:
            raise ValueError(f"unknown slot {sid!r}; known slots: {', '.join(known)}")
    return [sid for sid in known if sid in slots]
