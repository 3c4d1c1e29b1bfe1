"""Envs sharded over processes (SPEC 13): the rank layout and the per-epoch exchanges.

Launched by torchrun; gloo carries every exchange. Rank 0 (the *leader*) holds the policy, the
recorder, the console and the control socket; every rank trains a contiguous block of global env
ids. The exchanges are point to point between the leader and each other rank (a *worker*), so a
failure names the rank it happened with. What travels is msgspec bytes in a uint8 tensor (a
length, then the bytes), never a pickle: ``torch.distributed``'s object collectives pickle.

Per epoch, in this order:
1. ``commands``: at the epoch's first safe point the leader sends the operator's accepted
   commands (possibly none) to every worker; while the run is paused it keeps sending (a
   keep-alive, so a long pause never trips ``--dist-timeout``);
2. ``choose``: after the epoch is measured each worker sends its envs' policy calls (rewards,
   penalties, truncations) and the observations to act on; the leader acts for all envs in
   global order and sends each worker its actions;
3. ``forward_events``: each worker sends the epoch's events; the leader emits them.

Faults: a rank that died fails the exchange in progress at once (gloo sees its connection
close); one that stopped answering fails it after ``--dist-timeout``. While the leader trains
between exchanges it watches the workers' heartbeats (a counter each worker bumps in the
launcher's store twice a second, ``rank_health``), so a rank lost then ends the run at the
leader's next batch, within seconds, not at the end of a long epoch.

The trainer sees only an exchange's run-side methods (``start``, ``take_commands``,
``safe_point``, ``relay``, ``forward_events``, ...): in one process they are ``NullExchange``'s,
which exchanges nothing, so the loop has no branch on the process model.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import msgspec
import torch
import torch.distributed as dist

from esper_engine.commands import CommandDesk
from esper_engine.config import TrainingConfig
from esper_engine.contracts import Event, OperatorCommand, TelemetryEvent
from esper_engine.policy.driver import PolicyDriver
from esper_engine.policy.relay import LeaderPolicy, WorkerPolicy
from esper_engine.rank_health import (
    Heartbeat,
    RankLost,
    Watchdog,
    _why,
    report_crash,
    watch,
)

LEADER = 0
DEFAULT_TIMEOUT_S = 300.0  # --dist-timeout: the bound on every exchange


@dataclass(frozen=True)
class Shard:
    """Which global envs this process trains; ``world == 1`` is the plain one-process run."""

    rank: int
    world: int
    n_envs: int
    timeout_s: float = DEFAULT_TIMEOUT_S  # --dist-timeout: the bound on every exchange

    @property
    def envs(self) -> range:
        return env_block(self.n_envs, self.world, self.rank)

    @property
    def is_leader(self) -> bool:
        return self.rank == LEADER

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def owner(self, env: int) -> int:
        """The rank that trains global env ``env``."""
        for rank in range(self.world):
            if env in env_block(self.n_envs, self.world, rank):
                return rank
        raise ValueError(f"env {env} is outside 0..{self.n_envs - 1}")


def env_block(n_envs: int, world: int, rank: int) -> range:
    """Rank ``rank``'s contiguous block of env ids; blocks differ in size by at most one."""
    if not 0 < world <= n_envs:
        raise ValueError(f"{n_envs} envs cannot be shared by {world} ranks (one env at least each)")
    return range(rank * n_envs // world, (rank + 1) * n_envs // world)


def rank_device(device: str, local_rank: int) -> str:
    """A rank's device: plain ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per rank on each
    machine); ``cpu`` and an explicit ``cuda:N`` stay as given."""
    return f"cuda:{local_rank}" if device == "cuda" else device


def resumed_rank_device(device: str, local_rank: int) -> str:
    """A rank's device in a sharded ``--resume``: the checkpoint's config holds the device rank
    0 resolved (``cuda:0``), so any CUDA device becomes this rank's ``cuda:LOCAL_RANK``."""
    return rank_device("cuda" if device.startswith("cuda") else device, local_rank)


def launched_world() -> tuple[int, int]:
    """(rank, world size) as torchrun set them; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def restart_count() -> int:
    """How many times torchrun restarted this worker group (0 the first time)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def init_group(timeout_s: float) -> None:
    """Join torchrun's process group over gloo; every exchange waits at most ``timeout_s``."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))


def close_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# --- bytes over gloo ----------------------------------------------------------------------------


def send_bytes(payload: bytes, dst: int) -> None:
    """``payload`` to rank ``dst``: its length, then its bytes (gloo's timeout bounds both)."""
    length = torch.tensor([len(payload)], dtype=torch.int64)
    dist.send(length, dst)
    dist.send(torch.frombuffer(bytearray(payload), dtype=torch.uint8), dst)


def recv_bytes(src: int) -> bytes:
    length = torch.zeros(1, dtype=torch.int64)
    dist.recv(length, src)
    data = torch.empty(int(length[0]), dtype=torch.uint8)
    dist.recv(data, src)
    return data.numpy().tobytes()


class Exchange:
    """The leader's or a worker's end of the per-epoch exchanges.

    Transfers block (gloo cannot resume a wait it timed out), bounded by the group's timeout:
    a peer that died fails them at once (its connection closed), a silent one after
    ``--dist-timeout``.
    """

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.seconds = 0.0  # spent in transfers so far, waiting for the peer included
        self.cost_s = 0.0  # leader: what the exchanges cost, without waits (forward_events)
        self._calls_s: list[float] = []  # this epoch's exchanges so far, one time each
        self._watch: Heartbeat | Watchdog | None = None

    @property
    def workers(self) -> range:
        return range(1, self.shard.world)

    def gather(self, payload: bytes) -> list[bytes]:
        """Leader: every worker's payload, in rank order (its own first). Worker: sends, []."""
        with self._timed():
            return self._gather(payload)

    def _gather(self, payload: bytes) -> list[bytes]:
        if not self.shard.is_leader:
            self._with(LEADER, send_bytes, payload)
            return []
        return [payload] + [self._with(rank, recv_bytes) for rank in self.workers]

    def scatter(self, payloads: Sequence[bytes] | None) -> bytes:
        """Leader: ``payloads[k]`` goes to rank k, returns its own. Worker: receives its one."""
        with self._timed():
            return self._scatter(payloads)

    def _scatter(self, payloads: Sequence[bytes] | None) -> bytes:
        if not self.shard.is_leader:
            return self._with(LEADER, recv_bytes)
        assert payloads is not None and len(payloads) == self.shard.world
        for rank in self.workers:
            self._with(rank, send_bytes, payloads[rank])
        return payloads[LEADER]

    def broadcast(self, payload: bytes | None) -> bytes:
        if not self.shard.is_leader:
            return self.scatter(None)
        assert payload is not None
        return self.scatter([payload] * self.shard.world)

    @contextmanager
    def _timed(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self.seconds += spent
            self._calls_s.append(spent)

    def take_call_seconds(self) -> list[float]:
        """The time of each exchange since the last call, in order (the same on every rank)."""
        calls, self._calls_s = self._calls_s, []
        return calls

    # --- the run's side: what the trainer calls (``NullExchange`` answers it in one process) ---

    distributed = True

    def start(self, run_id: str) -> str:
        """The leader's run id, on every rank; then the worker's heartbeat or the leader's
        watchdog (after the ranks first met)."""
        run_id = self.broadcast(run_id.encode()).decode()
        self._watch = watch(self.shard)
        return run_id

    def stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def report_crash(self, error: str) -> None:
        """A worker leaves its error for the leader, which names it in its RunFinished."""
        if not self.shard.is_leader:
            report_crash(self.shard.rank, error)

    def relay(self, build: Callable[[], PolicyDriver]) -> LeaderPolicy | WorkerPolicy:
        """The policy lives on the leader (built there only); a worker relays to it."""
        if not self.shard.is_leader:
            return WorkerPolicy(self)
        return LeaderPolicy(build(), self)

    def take_commands(self, desk: CommandDesk) -> None:
        """At the epoch's start the leader validates the queued commands against the global
        env range and sends the accepted ones to every rank, which applies those for its envs;
        while paused the leader goes on sending (so no exchange times out)."""
        keep_alive = max(0.05, min(1.0, self.shard.timeout_s / 4))
        while True:
            waited_from = time.perf_counter() if desk.paused else None
            accepted = None
            if self.shard.is_leader:
                accepted = desk.accepted(block=keep_alive if desk.paused else None)
            for command in send_commands(self, accepted):
                desk.apply(command)
            if waited_from is not None:  # throughput excludes the pause
                desk.paused_s += time.perf_counter() - waited_from
            if not desk.paused:
                return

    def safe_point(self, desk: CommandDesk) -> None:
        """Between batches: commands wait for the epoch's start; a lost rank ends the run now,
        not at the next exchange (the watchdog's flag, nothing else)."""
        if self._watch is not None:
            self._watch.check()

    def agree(self, leader_says: bool) -> bool:
        return agree(self, leader_says)

    def share_resume_state(self, state: dict | None) -> dict | None:
        return share_resume_state(self, state)

    def gather_env_states(self, own: list[dict]) -> list[dict]:
        return gather_env_states(self, own)

    def forward_events(self, sink) -> None:
        forward_events(self, sink)

    def _with(self, rank: int, transfer, *args):
        """``transfer(*args, rank)``; any failure is RankLost naming ``rank``."""
        try:
            return transfer(*args, rank)
        except RuntimeError as exc:  # gloo: a closed connection or the group's timeout
            raise RankLost(rank, _why(rank, exc)) from None


class NullExchange:
    """One process: nothing to exchange. Commands are taken at every safe point, the policy
    is the driver itself, the run's own sink gets every event as it happens."""

    distributed = False
    cost_s = 0.0

    def __init__(self, shard: Shard) -> None:
        self.shard = shard

    def start(self, run_id: str) -> str:
        return run_id

    def stop_watch(self) -> None:
        pass

    def report_crash(self, error: str) -> None:
        pass

    def relay(self, build: Callable[[], PolicyDriver]) -> PolicyDriver:
        return build()

    def take_commands(self, desk: CommandDesk) -> None:
        pass  # taken at every safe point instead

    def safe_point(self, desk: CommandDesk) -> None:
        desk.safe_point()

    def agree(self, leader_says: bool) -> bool:
        return leader_says

    def share_resume_state(self, state: dict | None) -> dict | None:
        return state

    def gather_env_states(self, own: list[dict]) -> list[dict]:
        return own

    def forward_events(self, sink) -> None:
        pass


def exchange_for(shard: Shard) -> Exchange | NullExchange:
    return Exchange(shard) if shard.distributed else NullExchange(shard)


# --- what travels -------------------------------------------------------------------------------


class Commands(msgspec.Struct, frozen=True, array_like=True):
    commands: list[OperatorCommand]


class EventBatch(msgspec.Struct, frozen=True, array_like=True):
    exchange_s: list[float]  # the time of each of the worker's exchanges this epoch, in order
    events: list[TelemetryEvent]


_COMMANDS = msgspec.msgpack.Decoder(Commands)
_EVENT_BATCH = msgspec.msgpack.Decoder(EventBatch)
_ENCODER = msgspec.msgpack.Encoder()


def send_commands(exchange: Exchange, commands: list[OperatorCommand] | None) -> list:
    """Leader: sends ``commands`` to every worker. Worker: receives them. Both return them."""
    payload = None if commands is None else _ENCODER.encode(Commands(commands))
    return _COMMANDS.decode(exchange.broadcast(payload)).commands


class ForwardingSink:
    """A worker's sink: keeps the epoch's events as msgpack until ``forward_events``."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events


def forward_events(exchange: Exchange, sink) -> None:
    """Worker: sends what its ``ForwardingSink`` holds. Leader: emits every worker's events
    into its own sink, rank by rank, in the order each rank made them.

    With them go the times of each rank's exchanges this epoch: the rank that came last to an
    exchange waited least, so the least of its times is what that exchange cost (without the
    wait for a slower rank); the leader sums those in ``exchange.cost_s``."""
    calls = exchange.take_call_seconds()
    if not exchange.shard.is_leader:
        exchange.gather(_ENCODER.encode(EventBatch(calls, sink.take())))
        exchange.take_call_seconds()  # this last one is counted on the leader's side
        return
    least = calls
    for payload in exchange.gather(b"")[1:]:
        batch = _EVENT_BATCH.decode(payload)
        least = [min(a, b) for a, b in zip(least, batch.exchange_s, strict=True)]
        for event in batch.events:
            sink.emit(event)
    exchange.cost_s += sum(least) + sum(exchange.take_call_seconds())


# --- checkpoints and resume (SPEC 12 over several ranks) ---------------------------------------
#
# A sharded run's checkpoint is the one-process checkpoint: the leader gathers every env's state
# and writes one file, atomically, so a kill -9 of any rank never leaves ranks at different
# epochs. On --resume the leader reads it and sends each worker its block; a worker reads no file
# (on another machine it has none). Env states travel as torch.save bytes read back with
# weights_only=True (tensors and plain values only, as in the checkpoint file): never a pickle.


_FRESH = b"-"  # no checkpoint: a fresh run (gloo sends no empty tensor)


def _state_bytes(state: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _state_from(payload: bytes) -> object:
    return torch.load(io.BytesIO(payload), weights_only=True)


def agree(exchange: Exchange, leader_says: bool) -> bool:
    """The leader's yes or no, on every rank (e.g. whether the run writes checkpoints)."""
    return exchange.broadcast(b"1" if leader_says else b"0") == b"1"


def gather_env_states(exchange: Exchange, own: list[dict]) -> list[dict]:
    """Leader: every env's state in global env order. Worker: sends its envs' states, ``[]``."""
    if not exchange.shard.is_leader:
        exchange.gather(_state_bytes(own))
        return []
    states = list(own)
    for payload in exchange.gather(b"")[1:]:
        states += _state_from(payload)
    return states


def share_resume_state(exchange: Exchange, state: dict | None) -> dict | None:
    """Leader: sends each worker its part of the checkpoint ``state`` (nothing on a fresh run)
    and returns its own. Worker: its part, or None on a fresh run. A part is the checkpoint
    with the rank's block of ``envs`` and without the policy, which lives on the leader."""
    shard = exchange.shard
    if not shard.is_leader:
        payload = exchange.scatter(None)
        return None if payload == _FRESH else _state_from(payload)  # type: ignore[return-value]
    if state is None:
        exchange.broadcast(_FRESH)
        return None
    if len(state["envs"]) != shard.n_envs:
        raise ValueError(f"checkpoint has {len(state['envs'])} envs, config {shard.n_envs}")
    shared = {key: value for key, value in state.items() if key not in ("envs", "policy")}
    payloads = [_FRESH]  # the leader's own: not sent
    for rank in range(1, shard.world):
        block = env_block(shard.n_envs, shard.world, rank)
        payloads.append(_state_bytes({**shared, "envs": state["envs"][block.start : block.stop]}))
    exchange.scatter(payloads)
    return {**state, "envs": state["envs"][shard.envs.start : shard.envs.stop]}


def share_config(rank: int, world: int, config: TrainingConfig | None) -> TrainingConfig:
    """A resumed run's config, from the checkpoint the leader read, on every rank (the group
    is joined first: a worker has no file to read it from, nor its number of envs yet)."""
    exchange = Exchange(Shard(rank, world, n_envs=world))
    payload = None if config is None else msgspec.msgpack.encode(config)
    return msgspec.msgpack.decode(exchange.broadcast(payload), type=TrainingConfig)
