"""Whether the other ranks are alive (SPEC 13): heartbeats, the leader's watchdog, and a
crashed worker's own error left for the leader, all in torchrun's key-value store.

A worker bumps its counter in the launcher's store twice a second; while the leader trains
between exchanges its watchdog reads them, so a rank lost then ends the run at the leader's
next batch, within seconds, not at the end of a long epoch.
"""

from __future__ import annotations

import threading
import time

import torch.distributed as dist

_CRASH_KEY = "esper/crash/{rank}"  # a worker's own error, left in the launcher's store
_BEAT_KEY = "esper/beat/{rank}"  # a worker's heartbeat counter
BEAT_S = 0.5  # seconds between heartbeats
LOST_AFTER_S = 3.0  # seconds without a heartbeat after which a rank is lost (died or stopped)


class RankLost(Exception):
    """An exchange with another rank failed: it died, hung past the timeout, or crashed."""

    def __init__(self, rank: int, detail: str) -> None:
        super().__init__(f"rank {rank} lost: {detail}")
        self.rank = rank


def _why(rank: int, exc: BaseException) -> str:
    """The lost rank's own error when it left one, else what gloo said (first line)."""
    store = _store()
    key = _CRASH_KEY.format(rank=rank)
    if store is not None:
        try:
            if store.check([key]):
                return store.get(key).decode(errors="replace")
        except RuntimeError:
            pass  # the store went with the launcher: gloo's words are all there is
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"the exchange failed ({first[:200]})"


def report_crash(rank: int, error: str) -> None:
    """A worker whose trainer crashed leaves its error for the leader before it exits."""
    store = _store()
    if store is not None:
        try:
            store.set(_CRASH_KEY.format(rank=rank), error.splitlines()[0][:500])
        except RuntimeError:
            pass  # the leader is gone too: nobody to tell


def _store():
    """The launcher's key-value store (torchrun's rendezvous), when the group has one."""
    if not dist.is_initialized():
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, ValueError):
        return None


class Heartbeat:
    """A worker's proof of life: bumps its counter every ``BEAT_S`` until ``stop``."""

    def __init__(self, rank: int) -> None:
        self._key = _BEAT_KEY.format(rank=rank)
        self._store = _store()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="esper-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while self._store is not None and not self._stopped.is_set():
            try:
                self._store.add(self._key, 1)
            except RuntimeError:
                return  # the launcher's store is gone: the run is over
            self._stopped.wait(BEAT_S)

    def check(self) -> None:
        """Workers learn of a lost leader from the next exchange."""

    def stop(self) -> None:
        self._stopped.set()


class Watchdog:
    """The leader's view of the workers' heartbeats; ``check`` raises RankLost for a rank
    silent for ``LOST_AFTER_S`` (called at every batch: it reads a flag, nothing else)."""

    def __init__(self, workers: range, lost_after_s: float = LOST_AFTER_S) -> None:
        self._store = _store()
        self._lost_after_s = lost_after_s
        self._seen = {rank: (-1, time.monotonic()) for rank in workers}
        self.lost: RankLost | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="esper-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while self._store is not None and self.lost is None and not self._stopped.is_set():
            now = time.monotonic()
            for rank, (count, since) in self._seen.items():
                try:
                    latest = self._store.add(_BEAT_KEY.format(rank=rank), 0)
                except RuntimeError:
                    return  # no store: the exchanges' own errors and timeouts still apply
                if latest != count:
                    self._seen[rank] = (latest, now)
                elif now - since > self._lost_after_s:
                    silent = f"no heartbeat for {now - since:.1f} s (died or stopped)"
                    self.lost = RankLost(rank, silent)
                    return
            self._stopped.wait(BEAT_S)

    def check(self) -> None:
        if self.lost is not None:
            raise self.lost

    def stop(self) -> None:
        self._stopped.set()


def watch(shard) -> Heartbeat | Watchdog:
    """Start the worker's heartbeat or the leader's watchdog (after the ranks first met)."""
    if shard.is_leader:
        return Watchdog(range(1, shard.world))
    return Heartbeat(shard.rank)
