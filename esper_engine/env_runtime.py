"""One env inside the vectorized loop: its host, optimizers, governor and the epoch's figures.

The loop (``trainer.py``) reads as a story; the per-env bookkeeping it needs lives here.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from esper_engine.blueprints import blueprint_names
from esper_engine.config import TrainingConfig
from esper_engine.contracts import Initiator
from esper_engine.epoch_figures import EpochFigures
from esper_engine.flops import EnvFlops, SeedCosts
from esper_engine.governor import TolariaGovernor
from esper_engine.lifecycle import SeedStage
from esper_engine.model import MorphogeneticModel, create_model, run_host_spec
from esper_engine.policy.actions import Action, Op, legal_in_slot
from esper_engine.policy.observation import EnvObservation, SlotObservation
from esper_engine.policy.rewards import episode_price
from esper_engine.tasks import Task
from esper_engine.training_step import ParallelEnvState


@dataclass
class EnvRuntime:
    """Everything the loop tracks for one env across an episode."""

    index: int
    config: TrainingConfig
    task: Task
    state: ParallelEnvState = field(init=False)
    governor: TolariaGovernor = field(init=False)
    # This env's own random stream (seed weights at germination): no env's draws depend on what
    # another env drew, so the envs can run in any order, in any process (SPEC 13).
    generator: torch.Generator = field(init=False)
    acc_history: list[float] = field(default_factory=list)
    loss_history: list[float] = field(default_factory=list)
    last_action: str = "WAIT"
    last_op: Op = Op.WAIT  # the op of last_action (telemetry: EpochSummary.last_op)
    last_reward: float | None = None  # accuracy points (the reward's unit)
    prev_val_acc: float | None = None
    prev_rent: float = 0.0  # capacity_rent when prev_val_acc was measured (accuracy points)
    prev_price: float = 0.0  # rewards.episode_price then (accuracy points)
    cut_by_operator: bool = False  # an operator rollback this epoch: the episode is truncated
    val_pass_s: float | None = None  # this epoch's plain validation pass, in seconds
    episodes_started: int = 0
    flops: EnvFlops = field(init=False)  # its FLOPs by kind, this episode (esper_engine.flops)

    def __post_init__(self) -> None:
        self.flops = EnvFlops(self.task, self.config.device)
        self.generator = torch.Generator().manual_seed(env_seed(self.config.seed, self.index))
        model = self._new_model()
        clip = self.config.max_grad_norm if self.config.clip_enabled() else None
        self.state = self._new_state(model, clip)
        self.governor = self.config.governor.build(
            model,
            self.state.host_optimizer,
            self.state.scaler,
            seed_optimizers=self.state.seed_optimizers,
            random_guess_loss=self.task.random_guess_loss,
        )

    @property
    def model(self) -> MorphogeneticModel:
        return self.state.model

    @property
    def clip_threshold(self) -> float | None:
        """The training step's (its one owner), kept across episodes and rollbacks."""
        return self.state.clip_threshold

    def _new_model(self) -> MorphogeneticModel:
        """Fresh weights for each env and episode, reproducible from the run's seed.

        The host's initialisation draws from its own generator state (fork_rng), so creating a
        host never disturbs the global stream.
        """
        init_seed = (self.config.seed * 1000 + self.index) * 1000 + self.episodes_started
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            lifecycle = self.config.lifecycle
            return create_model(
                self.task,
                self.config.device,
                slots=self.config.slots,
                min_prune_age=lifecycle.min_prune_age,
                min_training_epochs=lifecycle.min_training_epochs,
                embargo_epochs=lifecycle.embargo_epochs,
                spec=run_host_spec(self.config, self.task),
            )

    def _new_state(self, model: MorphogeneticModel, clip: float | None) -> ParallelEnvState:
        host_lr = self.config.host_lr or self.task.host_lr
        optimizer = torch.optim.SGD(model.host_parameters(), lr=host_lr, momentum=0.9)
        return ParallelEnvState(
            model,
            optimizer,
            seed_lr=self.config.seed_lr or self.task.seed_lr,
            amp=self.config.amp,
            clip_threshold=clip,
            device=self.config.device,
        )

    def reset_episode(self) -> None:
        """A fresh host (all slots dormant) at the start of every episode; counters keep running."""
        callback = self.model.on_transition
        self.episodes_started += 1
        model = self._new_model()
        model.on_transition = callback
        operator_lr_scale = self.state.operator_lr_scale
        self.state = self._new_state(model, self.state.clip_threshold)
        self.state.operator_lr_scale = operator_lr_scale  # the operator's, like the threshold
        self.governor.reset_episode(
            model, self.state.host_optimizer, self.state.scaler, self.state.seed_optimizers
        )
        self.acc_history.clear()
        self.loss_history.clear()
        self.prev_val_acc, self.prev_rent, self.prev_price = None, 0.0, 0.0
        self.cut_by_operator = False
        self.last_action, self.last_op, self.last_reward = "WAIT", Op.WAIT, None

    def state_dict(self) -> dict[str, object]:
        """This env at an epoch boundary: model with live seeds, optimizers (in the order the
        training step sums their norms), scaler, governor and the loop's bookkeeping."""
        state = self.state
        return {
            "episodes_started": self.episodes_started,
            "generator": self.generator.get_state(),
            "model": self.model.checkpoint_state(),
            "host_optimizer": state.host_optimizer.state_dict(),
            "seed_optimizers": [
                [slot_id, optimizer.state_dict()]
                for slot_id, optimizer in state.seed_optimizers.items()
            ],
            "scaler": state.scaler.state_dict(),  # {} unless fp16
            "lr_scale": state.lr_scale,
            "lr_multiplier": state.lr_multiplier,
            "clip_threshold": self.clip_threshold,
            "operator_lr_scale": state.operator_lr_scale,
            "governor_sensitivity": self.governor.sensitivity,
            "governor": self.governor.state_dict(),
            "acc_history": list(self.acc_history),
            "loss_history": list(self.loss_history),
            "last_action": self.last_action,
            "last_op": str(self.last_op),
            "last_reward": self.last_reward,
            "prev_val_acc": self.prev_val_acc,
            "prev_rent": self.prev_rent,
            "prev_price": self.prev_price,
            "cut_by_operator": self.cut_by_operator,
            "val_pass_s": self.val_pass_s,
            "flops": self.flops.state_dict(),
        }

    def load_state_dict(self, saved: dict) -> None:
        """Restore ``state_dict`` onto a freshly built env of the same config and task."""
        self.episodes_started = int(saved["episodes_started"])
        self.generator.set_state(saved["generator"])
        self.model.load_checkpoint_state(saved["model"])
        state = self.state
        state.host_optimizer.load_state_dict(saved["host_optimizer"])
        state.seed_optimizers.clear()
        for slot_id, optimizer_state in saved["seed_optimizers"]:
            state.add_seed_optimizer(slot_id).load_state_dict(optimizer_state)
        scaler = saved["scaler"] or {}  # None: a checkpoint from before the scaler was always there
        if bool(scaler) != state.scaler.is_enabled():
            raise ValueError("checkpoint and config disagree on the fp16 GradScaler")
        state.scaler.load_state_dict(scaler)
        state.forget_step_parameters()
        state.lr_scale = float(saved["lr_scale"])
        state.lr_multiplier = float(saved["lr_multiplier"])
        state.clip_threshold = saved["clip_threshold"]
        state.operator_lr_scale = float(saved.get("operator_lr_scale", 1.0))
        self.governor.load_state_dict(saved["governor"])
        self.governor.sensitivity = float(
            saved.get("governor_sensitivity", self.config.governor.sensitivity)
        )
        self.acc_history = [float(v) for v in saved["acc_history"]]
        self.loss_history = [float(v) for v in saved["loss_history"]]
        self.last_action = saved["last_action"]
        self.last_op = Op(saved["last_op"])
        self.last_reward = saved["last_reward"]
        self.prev_val_acc = saved["prev_val_acc"]
        self.prev_rent = float(saved.get("prev_rent", 0.0))
        self.prev_price = float(saved.get("prev_price", 0.0))
        self.cut_by_operator = bool(saved["cut_by_operator"])
        self.val_pass_s = saved["val_pass_s"]
        self.flops.load_state_dict(saved.get("flops"))

    def set_clip_threshold(self, value: float) -> None:
        self.state.clip_threshold = value

    def prune_failed_seeds(self) -> None:
        """An incubating seed that failed its health gate (non-finite outputs or gradients) is
        pruned by the gate; the host, which never saw its output, trains on."""
        for slot_id in self.model.live_slots():
            slot = self.model.slots[slot_id]
            if slot.stage is SeedStage.TRAINING and slot.healthy() is False:
                self.model.prune(slot_id, initiator=Initiator.GATE)

    def set_operator_lr_scale(self, value: float) -> None:
        """The operator's factor, applied to every optimizer now and kept across episodes."""
        self.state.operator_lr_scale = float(value)
        self.state.set_lr_scale(self.state.lr_scale)

    def seed_command_refusal(self, op: Op, slot_id: str, blueprint: str | None) -> str | None:
        """Why an operator's seed command is illegal now, by the policy's own rules (its
        masks' ``legal_in_slot`` and the slot's gates, the minimum prune age included)."""
        model = self.model
        if slot_id not in model.slot_ids:
            return f"unknown slot {slot_id!r}; slots are {', '.join(model.slot_ids)}"
        if blueprint is not None and blueprint not in blueprint_names(self.task.host_kind):
            known = ", ".join(blueprint_names(self.task.host_kind))
            return f"unknown blueprint {blueprint!r}; blueprints are {known}"
        slot = model.slots[slot_id]
        gate = {
            Op.GERMINATE: slot.can_germinate,
            Op.PRUNE: lambda: slot.can_prune(Initiator.POLICY),
            Op.FOSSILIZE: slot.can_fossilize,
        }[op]()
        if not gate[0]:
            return f"{op.name.lower()} {slot_id}: {gate[1]}"
        blueprints = tuple(blueprint_names(self.task.host_kind))
        observation = _slot_observation(model, slot_id, self.seed_costs(), blueprints)
        if not legal_in_slot(op, observation):  # the policy's mask says no
            return f"{op.name.lower()} {slot_id}: masked for the policy in {slot.stage}"
        return None

    def apply_operator(self, op: Op, slot_id: str, blueprint: str | None) -> None:
        """An operator's (checked) seed command, recorded with initiator ``operator``; the
        policy learns nothing from the epoch it changed (``cut_by_operator``: a truncation)."""
        model = self.model
        if op is Op.GERMINATE:
            with drawing_from(self.generator):
                model.germinate(
                    slot_id,
                    blueprint,
                    initiator=Initiator.OPERATOR,
                    blend_epochs=self.config.lifecycle.blend_epochs,
                    schedule=self.config.lifecycle.alpha_schedule,
                )
        elif op is Op.PRUNE:
            model.prune(slot_id, initiator=Initiator.OPERATOR)
        elif op is Op.FOSSILIZE:
            model.fossilize(slot_id, initiator=Initiator.OPERATOR)
        self.cut_by_operator = True

    def record(self, figures: EpochFigures) -> None:
        self.acc_history.append(figures.val_accuracy)
        self.loss_history.append(figures.val_loss)

    def seed_costs(self) -> SeedCosts:
        """What a seed of each blueprint would add in each slot (measured once per process, on
        a bare host: ``flops.measure_seed_costs``)."""
        return self.flops.seed_costs(self._new_model, blueprint_names(self.task.host_kind))

    def compute_spent(self) -> tuple[float, float]:
        """This episode's training FLOPs so far over the bare host's on the same samples (1.0
        before any training), and over the bare host's whole budget (epochs x batches)."""
        costs = self.seed_costs()
        static = self.flops.static_train_flops()
        spent = self.flops.totals["train"]
        ratio = spent / static if static > 0 else 1.0
        per_epoch = self.config.batches_per_epoch * self.config.batch_size
        budget = costs.host * per_epoch * max(self.config.epochs, 1)
        return ratio, spent / budget if budget > 0 else 0.0

    def price_so_far(self, price: float) -> float:
        """``rewards.episode_price`` of this episode's training FLOPs so far (points)."""
        if price == 0.0:
            return 0.0
        self.seed_costs()  # the bare host's per-sample FLOPs
        return episode_price(self.flops.totals["train"], self.flops.static_train_flops(), price)

    def observe(self, epoch: int, figures: EpochFigures) -> EnvObservation:
        model = self.model
        costs = self.seed_costs()
        blueprints = tuple(blueprint_names(self.task.host_kind))
        slots = tuple(_slot_observation(model, sid, costs, blueprints) for sid in model.slot_ids)
        ratio, budget_share = self.compute_spent()
        return EnvObservation(
            epoch=epoch,
            max_epochs=self.config.epochs,
            val_accuracy=figures.val_accuracy,
            val_loss=figures.val_loss,
            train_loss=figures.train_loss,
            random_guess_loss=self.task.random_guess_loss,
            acc_history=tuple(self.acc_history),
            loss_history=tuple(self.loss_history),
            slots=slots,
            consecutive_panics=self.governor.consecutive_panics,
            total_panics=self.governor.total_panics,
            rollbacks=self.governor.rollbacks,
            host_params=model.host_param_count(),
            seed_params=model.seed_param_count(),
            blueprints=blueprints,
            flops_ratio=ratio,
            flops_budget_share=budget_share,
        )

    def plant_at_start(self) -> None:
        """Germinate ``lifecycle.plant``'s seeds before the episode's first epoch and start
        their training at once, so they learn from epoch 0."""
        lifecycle = self.config.lifecycle
        for slot_id, blueprint in self.model.check_plan(lifecycle.plant):
            with drawing_from(self.generator):  # the seed's initial weights are this env's
                self.model.germinate(
                    slot_id,
                    blueprint,
                    initiator=Initiator.OPERATOR,
                    blend_epochs=lifecycle.blend_epochs,
                    schedule=lifecycle.alpha_schedule,
                )
            self.model.begin_training(slot_id)  # it trains in epoch 0 already

    def apply(self, action: Action, blueprints: tuple[str, ...]) -> None:
        """Carry out a (legal, masked) policy action on the model.

        Seed optimizers follow the lifecycle by themselves: the training step gives every live
        seed one and drops the rest (``ParallelEnvState.sync_seed_optimizers``).
        """
        if action.op is Op.WAIT:
            return
        model = self.model
        slot_id = model.slot_ids[action.slot_index]
        match action.op:
            case Op.GERMINATE:
                with drawing_from(self.generator):  # the seed's initial weights are this env's
                    model.germinate(
                        slot_id,
                        blueprints[action.blueprint_index],
                        initiator=Initiator.POLICY,
                        blend_epochs=self.config.lifecycle.blend_epochs,
                        schedule=self.config.lifecycle.alpha_schedule,
                    )
            case Op.ADVANCE:
                model.advance(slot_id, initiator=Initiator.POLICY)
            case Op.PRUNE:
                model.prune(slot_id, initiator=Initiator.POLICY)
            case Op.FOSSILIZE:
                model.fossilize(slot_id, initiator=Initiator.POLICY)


def env_seed(run_seed: int, env: int) -> int:
    """The seed of env ``env``'s own generator: a keyed hash, distinct per (run, env), stable
    across processes (``hash()`` is salted per process). Below 2**63, like every torch seed."""
    key = f"{operator.index(run_seed)},{operator.index(env)}"
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"esper.env").digest()
    return int.from_bytes(digest, "big") >> 1


@contextmanager
def drawing_from(generator: torch.Generator) -> Iterator[None]:
    """Inside the block the global CPU stream (which ``nn.Module`` initialisers draw from) is
    seeded from one draw of ``generator``; outside it the global stream is as it was."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _slot_observation(
    model: MorphogeneticModel, slot_id: str, costs: SeedCosts, blueprints: tuple[str, ...]
) -> SlotObservation:
    slot = model.slots[slot_id]
    state = slot.state()
    return SlotObservation(
        stage=state.stage,
        blueprint=state.blueprint,
        alpha=state.alpha,
        epochs_in_stage=state.epochs_in_stage,
        contribution=slot.contribution,
        can_advance=slot.can_advance()[0],
        can_prune=slot.can_prune(Initiator.POLICY)[0],
        can_fossilize=slot.can_fossilize()[0],
        flop_costs=tuple(costs.ratio(slot_id, b) for b in blueprints),
    )
