"""ResourceSample: what each process uses, sampled in a real run's loop (issue 25)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from esper_engine import resources
from esper_engine.contracts import ResourceSample, decode_event, encode
from esper_engine.resources import ResourceSampler, rss_bytes
from esper_engine.tasks import load_task
from esper_engine.telemetry import ListSink
from esper_engine.trainer import VectorizedTrainer
from tests.engine.test_trainer import small_config


def test_a_sample_reads_this_process():
    sampler = ResourceSampler("cpu", rank=3)
    work = torch.randn(256, 256)
    for _ in range(50):  # some CPU time to measure
        work = work @ work.T / 256
    sample = sampler.sample()
    assert sample.rank == 3
    assert sample.cpu_percent > 0
    assert 10_000_000 < sample.rss_bytes == pytest.approx(rss_bytes(), rel=0.2)
    assert (sample.gpu_allocated, sample.gpu_reserved, sample.gpu_utilization) == (None,) * 3
    assert not sampler.due(sampler._due - 0.01) and sampler.due(sampler._due)


def test_a_run_reports_its_resources_at_its_progress_points(monkeypatch):
    """A real run with a zero period: samples arrive at every training and validation batch,
    are run-level, cover every epoch, and decode back."""
    monkeypatch.setattr(resources, "RESOURCE_PERIOD_S", 0.0)
    sink = ListSink()
    config = small_config()
    task = load_task("synthetic-images", seed=0, scale="small")
    VectorizedTrainer(config, sink, run_id="r", task=task).run()
    samples = [e for e in sink.events if isinstance(e, ResourceSample)]
    batches = config.episodes * config.epochs * config.batches_per_epoch
    assert len(samples) >= batches
    assert all(s.env is None and s.rank == 0 and s.run_id == "r" for s in samples)
    assert all(s.rss_bytes > 0 and s.cpu_percent >= 0 for s in samples)
    assert {(s.episode, s.epoch) for s in samples} == {
        (ep, e) for ep in range(config.episodes) for e in range(config.epochs)
    }
    assert decode_event(encode(samples[-1])) == samples[-1]


def test_a_cuda_sample_reads_torchs_counters_and_skips_a_missing_nvml(monkeypatch):
    """No GPU here: torch's own counters stand in (the sampler calls them, never syncs); a
    driver without nvml (torch.cuda.utilization raises) leaves utilisation out, asked once."""
    asked = []

    def no_nvml(device):
        asked.append(device)
        raise ModuleNotFoundError("pynvml does not seem to be installed")

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 4 * 2**30)
    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    sampler = ResourceSampler("cuda:0", rank=1)
    first, second = sampler.sample(), sampler.sample()
    assert (first.gpu_allocated, first.gpu_reserved) == (3 * 2**30, 4 * 2**30)
    assert first.gpu_utilization is None and second.gpu_utilization is None
    assert len(asked) == 1  # refused once: not asked again every 2 s
    monkeypatch.setattr(torch.cuda, "utilization", lambda device: 87)
    assert ResourceSampler("cuda:0").sample().gpu_utilization == 87.0


# Threads that each allocate, then glibc's own account of its arenas (malloc_stats, on stderr).
ARENA_PROBE = """
import ctypes, ctypes.util, sys, threading
import torch
from esper_engine.resources import use_one_malloc_arena
print(use_one_malloc_arena() if sys.argv[1] == "one" else None)
held = []
def allocate():
    held.append(torch.ones(1 << 18))  # 1 MiB through the CPU allocator's malloc
threads = [threading.Thread(target=allocate) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's arenas")
@pytest.mark.parametrize("arenas", ["one", "default"])
def test_one_malloc_arena_serves_every_thread(arenas):
    """A run trains in a thread: with one arena it allocates from the main arena, as the main
    thread does (resources.use_one_malloc_arena says why)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    done = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, arenas], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == (["True"] if arenas == "one" else ["None"])
    count = len(re.findall(r"^Arena \d+:", done.stderr, flags=re.MULTILINE))
    assert count == 1 if arenas == "one" else count > 1


def test_an_operators_own_arena_setting_is_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not resources.use_one_malloc_arena()
