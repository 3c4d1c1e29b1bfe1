"""What the process uses (CPU, memory, the GPU's memory and busy time), sampled cheaply.

A sample is a few clock and counter reads: the process's CPU time (``time.process_time``), its
resident set from ``/proc/self/statm``, torch's allocator counters (no device sync) and, where
pynvml is installed, the device's utilisation. Nothing here waits for the device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
import time

import torch

from esper_engine.contracts import ResourceSample

# A ResourceSample at most this often per process: a few reads every 2 s cost nothing measurable.
RESOURCE_PERIOD_S = 2.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def use_one_malloc_arena() -> bool:
    """glibc: every thread of the process allocates from the main arena; True when set here.

    A run trains in a thread of its own (the console's, the session's). glibc gives such a
    thread an arena of its own, made of 64 MiB heaps, and a heap left empty when a step frees
    its activations is unmapped whatever the trim threshold, so the next step faults its pages
    back in: the bench's tiny-host loop run in a thread took 11k-117k page faults and up to
    0.1 s of system time per 2 s run, where the main thread took 5; with one arena, about 10.
    Call before the process starts its threads (one that already has an arena keeps it); an
    operator's own MALLOC_ARENA_MAX or glibc tunable wins.
    """
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    if "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # no libc by that name, or not glibc's
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_ARENA_MAX, 1) == 1


def rss_bytes() -> int:
    """The process's resident set now (Linux: /proc/self/statm), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def gpu_utilization(device: torch.device) -> float | None:
    """The device's utilisation in percent, or None where the driver cannot tell it (no CUDA,
    no pynvml, or nvml refused): a missing figure, never a failure."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except (ModuleNotFoundError, ImportError, RuntimeError, OSError):
        return None


class ResourceSampler:
    """``due(now)`` says when a sample is owed; ``sample()`` takes one (CPU % since the last)."""

    def __init__(self, device: torch.device | str, rank: int = 0) -> None:
        self.device = torch.device(device)
        self.rank = rank
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        self._due = self._wall + RESOURCE_PERIOD_S
        self._gpu_utilization = self.device.type == "cuda"  # off after the first refusal

    def due(self, now: float) -> bool:
        return now >= self._due

    def sample(self) -> ResourceSample:
        cpu, wall = time.process_time(), time.perf_counter()
        span = wall - self._wall
        percent = 100.0 * (cpu - self._cpu) / span if span > 0 else 0.0
        self._cpu, self._wall, self._due = cpu, wall, wall + RESOURCE_PERIOD_S
        allocated = reserved = utilization = None
        if self.device.type == "cuda":
            allocated = torch.cuda.memory_allocated(self.device)
            reserved = torch.cuda.memory_reserved(self.device)
            if self._gpu_utilization:
                utilization = gpu_utilization(self.device)
                self._gpu_utilization = utilization is not None
        return ResourceSample(
            rank=self.rank,
            cpu_percent=percent,
            rss_bytes=rss_bytes(),
            gpu_allocated=allocated,
            gpu_reserved=reserved,
            gpu_utilization=utilization,
        )
