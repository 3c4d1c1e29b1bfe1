"""`overwatch run --nprocs 2`: real torchrun + gloo runs on this machine (SPEC 13).

Each test launches two ranks (``pytest -m distributed`` runs just these). Same events as one
process, a killed rank ends the run as crashed with a recording that replays, a command for an
env of rank 1 lands there, and bad input is one line before anything starts.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import pytest

from esper_engine.checkpoint import HOLD_ENV, checkpoint_path
from esper_engine.contracts import (
    CommandAck,
    EpochProgress,
    EpochSummary,
    ForceRollback,
    GovernorRollback,
    Initiator,
    Pause,
    ResourceSample,
    Resume,
    RunFinished,
    RunResumed,
    RunStatus,
    Stop,
)
from esper_engine.control import ControlClient, read_pid_file, socket_alive
from esper_engine.recording import read_recording
from overwatch import cli

pytestmark = pytest.mark.distributed
TIMING = ("wall_time", "samples_per_s", "cost_ratio", "ranks", "exchange_s", "epoch_s_estimate")
TINY = ["--batches-per-epoch", "2", "--set", "batch_size=16", "--set", "val_batches=1"]


@pytest.fixture
def socket_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """A short socket directory (sun_path holds 108 bytes; pytest's tmp paths are long)."""
    directory = Path(tempfile.mkdtemp(prefix="owd")) / "s"
    monkeypatch.setenv("OVERWATCH_SOCKET_DIR", str(directory))
    return directory


def launch(tmp_path: Path, *args: str, run_id: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", OVERWATCH_RUN_ID=run_id or "")
    return subprocess.Popen(
        [sys.executable, "-m", "overwatch", "run", "--nprocs", "2", "--headless", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, stderr


def wait_for(condition, what: str, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # another process's progress: the deadline is the limit


def events(path: Path) -> list:
    return list(read_recording(path).events) if path.exists() else []


def per_env(path: Path) -> dict[int | None, list[str]]:
    """Each env's events (and the run's, under None) in order, timing and run id aside, and
    EpochProgress aside: how many there are depends on the wall clock (a worker sends none)."""
    out: dict[int | None, list[str]] = {}
    for event in read_recording(path).events:
        if isinstance(event, EpochProgress | ResourceSample):
            continue
        fields = msgspec.to_builtins(event)
        for name in (*TIMING, "run_id"):
            fields.pop(name, None)
        out.setdefault(event.env, []).append(msgspec.json.encode(fields).decode())
    return out


def rank_pid(run_id: str, rank: int) -> int | None:
    """The pid of the worker torchrun started as ``rank`` for the run ``run_id``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"OVERWATCH_RUN_ID={run_id}".encode() in environ and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.parametrize(
    "run",
    [
        ["--policy", "ppo", "--n-envs", "3", "--episodes", "2", "--epochs", "3"],
        ["--task", "synthetic-stories", "--n-envs", "2", "--episodes", "1", "--epochs", "4"],
    ],
    ids=["ppo-images", "heuristic-stories"],
)
def test_two_ranks_record_the_events_of_one_process(tmp_path: Path, run: list[str]) -> None:
    sharded, single = tmp_path / "two.msgpack", tmp_path / "one.msgpack"
    process = launch(tmp_path, *run, *TINY, "--record", str(sharded))
    assert cli.main(["run", "--headless", *run, *TINY, "--record", str(single)]) == 0
    code, stderr = finish(process)
    assert code == 0, stderr
    one, two = per_env(single), per_env(sharded)
    assert sorted(one, key=str) == sorted(two, key=str)
    for env in one:
        assert one[env] == two[env], f"env {env}"
    assert type(read_recording(sharded).events[-1]) is RunFinished
    if "ppo" in run:  # the leader updated from every env's transitions, the workers' included
        assert any('"PolicyUpdate"' in line for line in two[None])


def test_a_killed_rank_ends_the_run_as_crashed_with_a_replayable_recording(
    tmp_path: Path,
) -> None:
    run_id, path = f"kill-{secrets.token_hex(3)}", tmp_path / "run.msgpack"
    process = launch(
        tmp_path, "--n-envs", "2", "--epochs", "200", *TINY, "--record", str(path), run_id=run_id
    )
    wait_for(
        lambda: any(isinstance(e, EpochSummary) and e.env == 1 for e in events(path)),
        "rank 1's first epoch in the recording",
    )
    pid = rank_pid(run_id, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    code, stderr = finish(process)
    recording = read_recording(path)  # replays cleanly: no truncated frame, no garbage
    assert recording.warning is None
    last = recording.events[-1]
    assert isinstance(last, RunFinished) and last.status is RunStatus.CRASHED, last
    assert "rank 1" in (last.error or "")
    assert last.wall_time - killed < 5.0
    assert code == 1, stderr
    assert cli.main(["export", str(path), "--output", str(tmp_path / "run.jsonl")]) == 0


def test_a_rollback_of_an_env_of_rank_1_lands_on_it(tmp_path: Path, socket_dir: Path) -> None:
    path = tmp_path / "run.msgpack"
    process = launch(tmp_path, "--n-envs", "2", "--epochs", "200", *TINY, "--record", str(path))
    wait_for(lambda: (read_pid_file(path) or {}).get("socket"), "the control socket")
    socket_path = read_pid_file(path)["socket"]
    wait_for(lambda: socket_alive(socket_path), "the control socket listening")
    client = ControlClient(socket_path, "probe")
    pause = client.send(Pause())  # every rank waits at the epoch's start, kept alive by rank 0
    rollback = client.send(ForceRollback(env=1))
    outside = client.send(ForceRollback(env=2))  # checked against the global range: 0..1
    resume = client.send(Resume())
    wait_for(
        lambda: any(isinstance(e, GovernorRollback) for e in events(path)),
        "the operator's rollback in the recording",
    )
    stop = client.send(Stop())
    code, stderr = finish(process)
    assert code == 0, stderr
    recorded = events(path)
    rollbacks = [e for e in recorded if isinstance(e, GovernorRollback)]
    assert [(e.env, e.initiator) for e in rollbacks] == [(1, Initiator.OPERATOR)]
    acks = {e.command_id: e for e in recorded if isinstance(e, CommandAck)}
    assert all(acks[c].accepted for c in (pause, rollback, resume, stop))
    assert not acks[outside].accepted and "env" in (acks[outside].reason or "")
    assert sum(isinstance(e, CommandAck) for e in recorded) == 5  # one ack each, from rank 0
    assert recorded[-1].status is RunStatus.STOPPED


def test_more_processes_than_envs_is_one_line_and_exit_2(capsys) -> None:
    assert cli.main(["run", "--nprocs", "3", "--n-envs", "2", "--no-record"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--nprocs 3" in err, err


def _started(tmp_path: Path, run_id: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """A long 2-rank run, once rank 1's first epoch is in the recording."""
    path = tmp_path / "run.msgpack"
    process = launch(
        tmp_path,
        "--n-envs",
        "2",
        "--epochs",
        "200",
        *TINY,
        *args,
        "--record",
        str(path),
        run_id=run_id,
    )
    wait_for(
        lambda: any(isinstance(e, EpochSummary) and e.env == 1 for e in events(path)),
        "rank 1's first epoch in the recording",
    )
    return process, path


def test_a_hung_rank_ends_the_run_within_the_dist_timeout(tmp_path: Path) -> None:
    run_id = f"hang-{secrets.token_hex(3)}"
    process, path = _started(tmp_path, run_id, "--dist-timeout", "4")
    pid = rank_pid(run_id, 1)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # hung: alive and silent
    stopped = time.time()
    try:
        wait_for(lambda: isinstance((events(path) or [None])[-1], RunFinished), "RunFinished")
    finally:
        os.kill(pid, signal.SIGCONT)  # let it find the leader gone and exit
    last = events(path)[-1]
    assert last.status is RunStatus.CRASHED and "rank 1" in (last.error or ""), last
    assert last.wall_time - stopped < 4 + 5
    code, stderr = finish(process)
    assert code == 1, stderr


def test_sigterm_stops_every_rank_at_one_safe_point_and_exits_0(tmp_path: Path) -> None:
    run_id = f"term-{secrets.token_hex(3)}"
    process, path = _started(tmp_path, run_id)
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == 0, stderr
    assert "Traceback" not in stderr  # a Stop on the control socket: torchrun was not signalled
    recorded = events(path)
    assert recorded[-1].status is RunStatus.STOPPED, recorded[-1]
    last_epochs = {e.env: e.epoch for e in recorded if isinstance(e, EpochSummary)}
    assert last_epochs[0] == last_epochs[1]  # both ranks stopped after the same epoch


def test_a_restarted_rank_0_never_overwrites_the_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """torchrun restarting the workers (TORCHELASTIC_RESTART_COUNT > 0): rank 0 refuses to
    record over the file the first attempt wrote, before the ranks meet (one line, exit 2)."""
    path = tmp_path / "run.msgpack"
    path.write_bytes(b"the first attempt's recording")
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(name, value)
    code = cli.main(["run", "--headless", "--n-envs", "2", *TINY, "--record", str(path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not overwritten" in err[0], err
    assert path.read_bytes() == b"the first attempt's recording"


def _kill_run(launcher: subprocess.Popen, run_id: str) -> None:
    """kill -9 the launcher, torchrun and every rank of ``run_id`` (no one cleans up)."""
    launcher.kill()
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and f"OVERWATCH_RUN_ID={run_id}".encode() in environ:
            os.kill(int(entry.name), signal.SIGKILL)
    launcher.wait(30)


def test_a_killed_sharded_run_resumes_to_the_events_of_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    """kill -9 of the launcher, torchrun and both ranks (each held at its 7th batch: the 4th
    epoch, after 3 checkpoints), then `--nprocs 2 --resume`: the same events, env by env."""
    run = ["--policy", "ppo", "--n-envs", "3", "--episodes", "2", "--epochs", "3", *TINY]
    reference, killed = tmp_path / "reference.msgpack", tmp_path / "killed.msgpack"
    marker, run_id = tmp_path / "held", f"resume-{secrets.token_hex(3)}"
    uninterrupted = launch(tmp_path, *run, "--record", str(reference))
    assert finish(uninterrupted, timeout=120)[0] == 0
    victim = subprocess.Popen(
        [sys.executable, "-m", "overwatch", "run", "--nprocs", "2", "--headless", *run]
        + ["--record", str(killed)],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1", OVERWATCH_RUN_ID=run_id)
        | {HOLD_ENV: f"train-batch:7:{marker}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(marker.exists, "a rank held at its 7th batch", timeout=120)
    _kill_run(victim, run_id)
    assert checkpoint_path(killed).exists()
    assert not any(isinstance(e, RunFinished) for e in events(killed))
    resumed = launch(tmp_path, "--resume", str(killed))
    code, stderr = finish(resumed, timeout=120)
    assert code == 0, stderr
    recorded = read_recording(killed).events
    (resumed_at,) = [e for e in recorded if isinstance(e, RunResumed)]
    assert (resumed_at.from_episode, resumed_at.from_epoch) > (0, 0)  # from a checkpoint
    assert len({e.run_id for e in recorded}) == 1  # the killed run's id, kept
    assert recorded[-1].status is RunStatus.COMPLETED
    one, two = per_env(reference), per_env(killed)
    two[None] = [line for line in two[None] if '"RunResumed"' not in line]
    assert sorted(one, key=str) == sorted(two, key=str)
    for env in one:
        assert one[env] == two[env], f"env {env}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_on_one_machine_record_the_events_of_one_process(tmp_path: Path) -> None:
    """The README's multi-node launch: two torchrun launchers (one rank each), a c10d
    rendezvous on 127.0.0.1, each in its own directory, as two machines would be."""
    run = ["--task", "synthetic-stories", "--n-envs", "2", "--episodes", "1", "--epochs", "3"]
    port, nodes = _free_port(), [tmp_path / "node-a", tmp_path / "node-b"]
    launchers = []
    for node in nodes:
        node.mkdir()
        launchers.append(
            subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes=2"]
                + ["--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-id=two-{port}"]
                + [f"--rdzv-endpoint=127.0.0.1:{port}", "-m", "overwatch", "run", "--headless"]
                + [*run, *TINY, "--record", "run.msgpack"],
                cwd=node,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    single = tmp_path / "one.msgpack"
    assert cli.main(["run", "--headless", *run, *TINY, "--record", str(single)]) == 0
    for launcher in launchers:
        code, stderr = finish(launcher, timeout=120)
        assert code == 0, stderr
    (recorded,) = [node / "run.msgpack" for node in nodes if (node / "run.msgpack").exists()]
    assert read_recording(recorded).events[-1].ranks == 2  # rank 0's node alone records
    one, two = per_env(single), per_env(recorded)
    assert sorted(one, key=str) == sorted(two, key=str)
    for env in one:
        assert one[env] == two[env], f"env {env}"


def test_a_sharded_resume_of_a_missing_run_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing.msgpack"
    assert cli.main(["run", "--nprocs", "2", "--headless", "--resume", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such recording" in err[0], err
