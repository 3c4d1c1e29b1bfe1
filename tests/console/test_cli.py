from __future__ import annotations

import importlib.metadata
import json
import re
import signal
import subprocess
import sys
import threading
import types
import typing
from pathlib import Path

import msgspec
import pytest
import torch

from esper_engine.config import MAX_CLIP_THRESHOLD, TrainingConfig
from esper_engine.config_io import leaf_fields
from esper_engine.contracts import CommandAck, EpochSummary, RunFinished, RunStarted
from esper_engine.recording import Recorder, read_recording
from overwatch.cli import build_parser, config_from_args, main
from tests.console.fixtures import REAL_RUN

PROGRESS = re.compile(r"^env (?P<env>\d+)  episode \S+  epoch (?P<epoch>\S+)  acc ")
SMALL_RUN = ["--n-envs", "2", "--episodes", "1", "--epochs", "2", "--batches-per-epoch", "2"]


def overwatch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "overwatch.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--n-envs", "0"], "positive integer"),
        (["run", "--task", "mnist"], "invalid choice"),
        (["run", "--max-grad-norm", "nan"], "finite"),
        (["run", "--amp", "fp8"], "invalid choice"),
        pytest.param(
            ["run", "--device", "cuda", "--headless"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
        (["run", "--task", "cifar10", "--data-dir", "/nonexistent", "--headless"], "cifar10"),
        (["run", "--headless", "--record", "/proc/nope/x.msgpack"], "cannot record to"),
        (["replay", "/nonexistent.msgpack"], "no such recording"),
        (["replay", "x.msgpack", "--speed", "128"], "0.25..64 or max"),
        (["replay", "x.msgpack", "--theme", "neon"], "unknown theme 'neon'"),
        (["replay", "x.msgpack", "--speed", "nan"], "finite"),
        (["replay", "x.msgpack", "--refresh-hz", "0"], "0.1..60"),
        (["replay", "x.msgpack", "--refresh-hz", "1e9"], "0.1..60"),
        # every numeric flag of run: one line, exit 2, never a traceback
        (["run", "--max-grad-norm", "1e40"], "0..1e+06 (0 disables), got 1e40"),
        (["run", "--max-grad-norm", "1250000"], "0..1e+06"),
        (["run", "--max-grad-norm", "-1"], "0..1e+06"),
        (["run", "--max-grad-norm", "inf"], "finite"),
        (["run", "--max-grad-norm", "x"], "expected a number"),
        (["run", "--seed", "-1"], "seed within 0..4294967295, got -1"),
        (["run", "--seed", str(2**64)], "seed within"),
        (["run", "--seed", "1.5"], "expected an integer"),
        (["run", "--n-envs", "-3"], "positive integer"),
        (["run", "--episodes", str(2**64)], "below 2**63"),
        (["run", "--epochs", "0"], "positive integer"),
        (["run", "--batches-per-epoch", "many"], "positive integer"),
        (["run", "--refresh-hz", "0"], "0.1..60"),
        (["run", "--refresh-hz", "-4"], "0.1..60"),
        (["run", "--refresh-hz", "61"], "0.1..60"),
        (["run", "--refresh-hz", "nan"], "finite"),
        # faults: the syntax at parse time, the env and epoch against the run's shape
        (["run", "--fault", "nan:1"], "must be KIND:ENV:EPOCH"),
        (["run", "--fault", "melt:1:1"], "unknown kind 'melt'; expected one of nan, diverge"),
        (["run", "--fault", "nan:0:1"], "ENV is counted from 1"),
        (["run", "--fault", "nan:one:1"], "ENV must be an integer"),
        (["run", "--n-envs", "2", "--fault", "nan:3:1"], "env 3 of a run with 2 envs"),
        (["run", "--epochs", "3", "--fault", "crash:1:4"], "epoch 4 of episodes with 3 epochs"),
        (["run", "--fault", "nan:1:1", "--fault", "diverge:9:1"], "'diverge:9:1': env 9"),
        (["export", "/nonexistent.msgpack"], "no such recording"),
        (["frobnicate"], "invalid choice"),
        # the config: bad keys, values, ranges and files; --print-config checks them too
        (["run", "--set", "governor.sensitivty=3"], "(did you mean 'governor.sensitivity'?)"),
        (["run", "--set", "sensitivity=3"], "(did you mean 'governor.sensitivity'?)"),
        (["run", "--set", "n_envs=four"], "--set n_envs: expected an integer, got 'four'"),
        (["run", "--set", "heuristic.grow_from_start=maybe"], "expected true or false"),
        (["run", "--set", "ppo.lr=fast"], "--set ppo.lr: expected a number, got 'fast'"),
        (["run", "--set", "n_envs"], "--set expects KEY=VALUE"),
        (["run", "--set", "ppo=1"], "ppo is a group of settings"),
        (["run", "--set", "governor.history_window=5"], "governor.history_window must be >= 10"),
        (["run", "--set", "ppo.gamma=2"], "ppo.gamma must be a finite number within 0..1, got 2"),
        (["run", "--set", "ppo.lr=nan"], "ppo.lr must be a finite number > 0, got nan"),
        (["run", "--set", "n_envs=0", "--print-config"], "n_envs must be >= 1, got 0"),
        (["run", "--n-envs", "100000", "--headless"], "n_envs must be within 1..1024"),
        (["run", "--set", "batch_size=100000000"], "batch_size must be within 1..65536"),
        (["run", "--set", "lifecycle.alpha_schedule=step", "--print-config"], "linear, cosine"),
        (["run", "--set", "task=mnist"], "task must be one of synthetic-images"),
        (["run", "--set", "heuristic.cnn_preference=conv_lite", "--headless"], "'conv_lite'"),
        (["run", "--config", "/nonexistent/run.toml"], "cannot read config /nonexistent/run.toml"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    # progress lines ("loading task ...") may come first; the error is one last line
    lines = err.splitlines()
    assert lines[-1].startswith("overwatch: error:"), err
    assert needle in lines[-1]
    assert "Traceback" not in err and not any("error" in line for line in lines[:-1])


def test_faults_go_into_the_config_normalised_in_the_order_given():
    args = build_parser().parse_args(
        ["run", "--fault", " NaN:2:03 ", "--fault", "seed-nan:1:1", "--fault", "CRASH:4:12"]
    )
    assert config_from_args(args).faults == ("nan:2:3", "seed-nan:1:1", "crash:4:12")
    assert config_from_args(build_parser().parse_args(["run"])).faults == ()


def test_max_grad_norm_accepts_the_bound_and_zero_disables():
    args = build_parser().parse_args(["run", "--max-grad-norm", "1e6"])
    assert config_from_args(args).max_grad_norm == MAX_CLIP_THRESHOLD
    args = build_parser().parse_args(["run", "--max-grad-norm", "0"])
    assert config_from_args(args).max_grad_norm is None


def test_run_help_explains_fault(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "--fault KIND:ENV:EPOCH" in help_text
    assert "nan, diverge, seed-nan, crash" in help_text
    assert "ENV and EPOCH count from 1, as the console shows them" in help_text
    assert "fire in the first episode" in help_text
    assert "repeatable" in help_text


def run_config(*argv: str) -> TrainingConfig:
    return config_from_args(build_parser().parse_args(["run", *argv]))


# --- one config: --config, --set, --print-config, --version -------------------------------------

# Fields whose value must be one of a few: a valid one other than the default.
CHOICES = {
    "task": "synthetic-stories",
    "amp": "bf16",
    "policy": "ppo",
    "lr_schedule": "constant",
    "lifecycle.alpha_schedule": "cosine",
    "host.preset": "small",
}
# Fields that cannot be set together with the rest: CHOICES makes the task a Transformer one,
# and host.widths sizes a CNN (a knob for the other host kind is refused).
NOT_WITH_THE_REST = ("host.widths",)
# Transformer sizes that fit together and with the tiny preset (d_model a multiple of n_heads,
# n_layers of layers_per_segment); set alone, they need a Transformer task.
TRANSFORMER_SIZES = {
    "host.d_model": 96,
    "host.n_heads": 8,
    "host.n_layers": 6,
    "host.layers_per_segment": 3,
}


def other_value(path: str) -> tuple[str, object]:
    """A --set text for the field and the value it must give: valid, and not the default."""
    default: object = TrainingConfig()
    for part in path.split("."):
        default = getattr(default, part)
    tp = leaf_fields()[path]
    optional = isinstance(tp, types.UnionType)
    base = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    if path in CHOICES:
        return CHOICES[path], CHOICES[path]
    if path in TRANSFORMER_SIZES:
        return str(TRANSFORMER_SIZES[path]), TRANSFORMER_SIZES[path]
    if base is bool:
        return str(not default).lower(), not default
    if base is int:
        value = 7 if default is None else default + 1
        return str(value), value
    if base is float:
        value = 0.25 if not default else default / 2
        return repr(value), value
    if base is str:
        value = "/data/x" if default is None else f"{default}-x"
        return value, value
    assert typing.get_origin(base) is tuple, (path, tp)
    if typing.get_args(base)[0] is int:
        return "8,16", (8, 16)
    value = tuple(reversed(default)) if default and len(default) > 1 else ("nan:1:1", "block1")
    if path == "faults":
        value = ("nan:1:1", "crash:2:3")
    if path == "lifecycle.plant":
        value = ("block1:widen", "block3:stack")
    return ",".join(value), value


def leaf(config: TrainingConfig, path: str) -> object:
    value: object = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


LEAVES = list(leaf_fields())


def test_the_config_has_every_knob_the_issue_counts() -> None:
    """Issue 12 counted 29 knobs, 18 of them out of reach; PPO, heuristic and lifecycle add more."""
    assert len(LEAVES) >= 29 + 14


@pytest.mark.parametrize("path", LEAVES)
def test_every_field_is_reachable_with_set(path) -> None:
    text, value = other_value(path)
    task = ["--task", "synthetic-stories"] if path in TRANSFORMER_SIZES else []
    config = run_config(*task, "--set", f"{path}={text}")
    assert leaf(config, path) == value and leaf(config, path) != leaf(TrainingConfig(), path)


def test_every_field_at_once_is_valid_and_prints_back(tmp_path, capsys) -> None:
    leaves = [path for path in LEAVES if path not in NOT_WITH_THE_REST]
    sets = [arg for path in leaves for arg in ("--set", f"{path}={other_value(path)[0]}")]
    config = run_config(*sets)
    assert all(leaf(config, path) == other_value(path)[1] for path in leaves)
    assert main(["run", *sets, "--print-config"]) == 0
    printed = tmp_path / "all.toml"
    printed.write_text(capsys.readouterr().out)
    assert run_config("--config", str(printed)) == config


def test_precedence_is_defaults_file_flags_then_each_set_in_order(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        "n_envs = 3\nepochs = 5\nseed = 9\nfaults = ['nan:1:1']\n[governor]\nsensitivity = 2.0\n"
    )
    from_file = run_config("--config", str(path))
    assert (from_file.n_envs, from_file.epochs, from_file.seed) == (3, 5, 9)
    assert from_file.governor.sensitivity == 2.0 and from_file.faults == ("nan:1:1",)
    assert from_file.batch_size == TrainingConfig().batch_size  # the file leaves the rest
    flags = run_config("--config", str(path), "--n-envs", "2", "--fault", "crash:2:1")
    assert (flags.n_envs, flags.epochs, flags.faults) == (2, 5, ("crash:2:1",))
    sets = run_config(
        "--set", "seed=4", "--config", str(path), "--n-envs", "2", "--set", "n_envs=6",
        "--set", "seed=5", "--set", "governor.sensitivity=7",
    )  # fmt: skip
    assert (sets.n_envs, sets.epochs, sets.seed, sets.governor.sensitivity) == (6, 5, 5, 7.0)
    assert run_config("--config", str(path), "--max-grad-norm", "0").max_grad_norm is None


def test_print_config_prints_toml_that_reads_back_and_does_not_train(
    tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--n-envs", "2", "--fault", "nan:2:1", "--set", "governor.sensitivity=4.5"]
    argv += ["--set", "max_grad_norm=none", "--set", "slots=block1", "--set", "ppo.seed=3"]
    assert main([*argv, "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "sensitivity = 4.5" in out and "[ppo]" in out
    (tmp_path / "printed.toml").write_text(out)
    assert main(["run", "--config", "printed.toml", "--print-config"]) == 0
    assert capsys.readouterr().out == out
    assert run_config("--config", "printed.toml") == config_from_args(
        build_parser().parse_args(argv)
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "printed.toml"]  # no recording, no run


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("n_envs = = 2", "invalid TOML"),
        ("[governor]\nsensitivty = 2", "unknown key 'governor.sensitivty' (did you mean"),
        ("n_envs = 'four'", "n_envs: expected an integer, got 'four'"),
        ("[governor]\nhistory_window = 5", "governor.history_window must be >= 10, got 5"),
        ("[ppo]\nhidden = 100000", "ppo.hidden must be within 1..4096"),
    ],
)
def test_bad_config_files_are_one_line_and_exit_code_2(toml, needle, tmp_path, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    assert main(["run", "--config", str(path), "--print-config"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("overwatch: error:") and needle in err


def test_version_is_the_installed_packages(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    expected = importlib.metadata.version("overwatch-esper")
    assert capsys.readouterr().out.strip() == f"overwatch {expected}"


def test_run_help_shows_every_flag_with_its_default(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    options = capsys.readouterr().out.split("options:")[1]
    blocks = [" ".join(b.split()) for b in re.split(r"\n  (?=-)", options) if b.strip()]
    flags = {block.split()[0].rstrip(",") for block in blocks}
    assert {"--n-envs", "--config", "--set", "--print-config", "--fault", "--record"} <= flags
    for block in blocks:
        if not block.startswith("-h, --help"):
            assert "(default: " in block, block
    assert any(b.startswith("--n-envs") and "(default: 4)" in b for b in blocks)
    assert any(b.startswith("--max-grad-norm") and "(default: 1.0)" in b for b in blocks)


def test_headless_run_records_the_effective_config(tmp_path) -> None:
    (tmp_path / "run.toml").write_text(
        "n_envs = 1\nepochs = 2\nbatches_per_epoch = 1\nbatch_size = 8\nval_batches = 1\n"
        "[governor]\nsensitivity = 5.0\n"
    )
    argv = ["--episodes", "1", "--config", "run.toml", "--set", "lifecycle.blend_epochs=2"]
    result = overwatch("run", "--headless", *argv, "--record", "r.msgpack", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    started = next(iter(read_recording(tmp_path / "r.msgpack")))
    assert isinstance(started, RunStarted)
    expected = run_config(*[str(tmp_path / a) if a == "run.toml" else a for a in argv])
    assert msgspec.convert(started.config, TrainingConfig) == expected  # lists for tuples
    assert started.config["governor"]["sensitivity"] == 5.0
    assert started.config["lifecycle"]["blend_epochs"] == 2


def test_garbage_recording_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"this is not a recording at all")
    assert main(["export", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.msgpack" in err


@pytest.mark.parametrize("command", ["replay", "export"])
def test_a_forged_env_in_a_real_recording_is_refused_before_anything_grows(
    tmp_path, capsys, command
):
    """issue 21: one EpochSummary with env = 10**9 grew replay's view list to 3.6 GB."""
    events = list(read_recording(REAL_RUN))
    summary = next(e for e in events if isinstance(e, EpochSummary))
    forged = tmp_path / "forged.msgpack"
    with Recorder(forged) as recorder:
        for event in [*events[:5], msgspec.structs.replace(summary, env=10**9)]:
            recorder.emit(event)
    assert main([command, str(forged)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "forged.msgpack" in err
    assert "EpochSummary of env 1000000000" in err and "outside the run's" in err


def test_headless_run_records_and_exports(tmp_path):
    result = overwatch("run", "--headless", *SMALL_RUN, "--record", "run.msgpack", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "run.msgpack" in result.stderr
    events = list(read_recording(tmp_path / "run.msgpack"))
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    assert events[-1].status == "completed"
    summaries = [e for e in events if isinstance(e, EpochSummary)]
    assert len(summaries) == 4
    # stderr is a pipe here: one plain progress line per env and epoch, then the status alone.
    progress = [PROGRESS.match(line) for line in result.stderr.splitlines()]
    seen = sorted((int(m["env"]), m["epoch"]) for m in progress if m)
    assert seen == sorted((s.env + 1, f"{s.epoch + 1}/2") for s in summaries)
    assert "run completed" in result.stderr.splitlines()

    exported = overwatch("export", "run.msgpack", "--format", "jsonl", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [line["type"] for line in lines] == [type(e).__name__ for e in events]

    table = overwatch("export", "run.msgpack", "--format", "csv", "--output", "s.csv", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("run_id,env,episode,epoch")


def test_default_recording_path_is_printed(tmp_path):
    result = overwatch(
        "run",
        "--headless",
        *SMALL_RUN[:2],
        "--episodes",
        "1",
        "--epochs",
        "1",
        "--batches-per-epoch",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    recordings = list((tmp_path / "overwatch-runs").glob("*.msgpack"))
    assert len(recordings) == 1
    assert str(Path("overwatch-runs") / recordings[0].name) in result.stderr


def test_sigterm_stops_at_a_safe_point_and_closes_the_recording(tmp_path):
    long_run = ["--n-envs", "1", "--epochs", "50", "--batches-per-epoch", "5"]
    long_run += ["--record", "long.msgpack"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "overwatch.cli", "run", "--headless", *long_run],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr: list[str] = []
    first_epoch = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:
            stderr.append(line)
            if PROGRESS.match(line):
                first_epoch.set()
        first_epoch.set()  # end of output: the asserts below say what went wrong

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert first_epoch.wait(timeout=120), "no progress line within 120 s"
        assert proc.poll() is None, "".join(stderr)  # still training: 50 epochs to go
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, "".join(stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    events = list(read_recording(tmp_path / "long.msgpack"))
    assert isinstance(events[-1], RunFinished) and events[-1].status == "stopped"
    assert sum(isinstance(e, EpochSummary) for e in events) < 50
    acks = [e for e in events if isinstance(e, CommandAck)]
    assert acks and acks[-1].command == "Stop" and acks[-1].accepted
    assert "run stopped" in "".join(stderr).splitlines()
