"""Export: a recording written by the Recorder comes out as exact JSON Lines and CSV."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from esper_engine import contracts as c
from esper_engine.recording import Recorder
from overwatch.cli import main
from overwatch.export import export_recording
from tests.console.fixtures import REAL_RUN

RUN_STARTED = c.RunStarted(
    run_id="r1",
    wall_time=0.5,
    task="tiny-lm",
    task_kind="language_model",
    n_envs=2,
    slot_ids=["s0", "s1"],
    policy="heuristic",
    episodes=1,
    epochs=2,
    batches_per_epoch=4,
    random_guess_loss=5.5,
)
SUMMARY_0 = c.EpochSummary(
    run_id="r1",
    env=0,
    episode=0,
    epoch=1,
    wall_time=2.0,
    train_loss=2.5,
    train_accuracy=0.25,
    val_loss=3.0,
    val_accuracy=0.125,
    perplexity=float("inf"),
    grad_norm_pre_clip=4.0,
    grad_norm_post_clip=1.0,
    clipped_fraction=0.75,
    clip_threshold=1.0,
    slots=[
        c.SlotState(slot_id="s0", stage="TRAINING", blueprint="mlp", alpha=0.0),
        c.SlotState(slot_id="s1", stage="DORMANT"),
    ],
    consecutive_panics=1,
    total_panics=2,
    rollbacks=0,
    skipped_steps=3,
    last_action="GERMINATE s0 mlp",
    reward=None,
    samples_per_s=800.0,
)
SUMMARY_1 = c.EpochSummary(
    run_id="r1",
    env=1,
    episode=0,
    epoch=1,
    wall_time=2.5,
    train_loss=2.0,
    train_accuracy=0.5,
    val_loss=2.25,
    val_accuracy=0.375,
    perplexity=9.5,
    grad_norm_pre_clip=0.5,
    grad_norm_post_clip=0.5,
    clipped_fraction=0.0,
    clip_threshold=None,
    slots=[c.SlotState(slot_id="s1", stage="BLENDING", blueprint="attn", alpha=0.5)],
    consecutive_panics=0,
    total_panics=0,
    rollbacks=1,
    reward=-0.5,
)
FINISHED = c.RunFinished(run_id="r1", wall_time=3.0, status="completed")
EVENTS = [RUN_STARTED, SUMMARY_0, SUMMARY_1, FINISHED]

CSV_HEADER = (
    "run_id,env,episode,epoch,wall_time,train_loss,train_accuracy,val_loss,val_accuracy,"
    "perplexity,grad_norm_pre_clip,grad_norm_post_clip,clipped_fraction,clip_threshold,"
    "consecutive_panics,total_panics,rollbacks,last_panic_reason,last_action,reward,"
    "samples_per_s,host_params,seed_params,skipped_steps,last_op,"
    "train_flops,val_flops,attribution_flops,report_flops,report_accuracy,report_loss,"
    "report_perplexity,host_lr,lr_scale,governor_sensitivity,"
    "s0.stage,s0.blueprint,s0.alpha,s0.epochs_in_stage,s0.params,"
    "s1.stage,s1.blueprint,s1.alpha,s1.epochs_in_stage,s1.params,notes"
)
# env, episode and epoch counted from 1, as the console shows them (recorded: 0, 0, 1 and 1, 0, 1)
CSV_ROWS = [
    "r1,1,1,2,2.0,2.5,0.25,3.0,0.125,inf,4.0,1.0,0.75,1.0,1,2,0,,GERMINATE s0 mlp,,800.0,0,0,3,,"
    "0,0,0,0,,,,,1.0,,"
    "TRAINING,mlp,0.0,0,0,DORMANT,,0.0,0,0,",
    "r1,2,1,2,2.5,2.0,0.5,2.25,0.375,9.5,0.5,0.5,0.0,,0,0,1,,WAIT,-0.5,0.0,0,0,0,,"
    "0,0,0,0,,,,,1.0,,"
    ",,,,,BLENDING,attn,0.5,0,0,",
]


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "run.ovwrec"
    with Recorder(path) as recorder:
        for event in EVENTS:
            recorder.emit(event)
    return path


def test_jsonl_has_one_tagged_object_per_event(recording: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert export_recording(recording, "jsonl", out) == len(EVENTS)
    lines = out.read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == [
        "RunStarted",
        "EpochSummary",
        "EpochSummary",
        "RunFinished",
    ]
    assert lines[3] == (
        '{"type":"RunFinished","run_id":"r1","env":null,"episode":0,"epoch":0,'
        '"wall_time":3.0,"status":"completed","error":null,"ranks":1,"exchange_s":0.0,'
        '"total_flops":0}'
    )
    summary = json.loads(lines[1])
    assert summary["perplexity"] is None  # inf has no JSON spelling: written as null
    assert summary["reward"] is None
    assert summary["slots"][1] == {
        "slot_id": "s1",
        "stage": "DORMANT",
        "blueprint": None,
        "alpha": 0.0,
        "epochs_in_stage": 0,
        "params": 0,
    }
    assert json.loads(lines[2])["perplexity"] == 9.5
    assert json.loads(lines[0])["slot_ids"] == ["s0", "s1"]


def test_jsonl_to_stdout(recording: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export_recording(recording, "jsonl")
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == len(EVENTS)
    assert captured.err == ""


def test_csv_has_one_row_per_epoch_summary(recording: Path, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "out.csv"  # parent directory is created
    assert export_recording(recording, "csv", out) == 2
    assert out.read_text() == "\n".join([CSV_HEADER, *CSV_ROWS]) + "\n"


def test_csv_to_stdout(recording: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export_recording(recording, fmt="csv")
    assert capsys.readouterr().out.splitlines() == [CSV_HEADER, *CSV_ROWS]


def test_truncated_recording_warns_and_still_exports(
    recording: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = recording.read_bytes()
    recording.write_bytes(data[:-5])  # kill -9 in the middle of RunFinished
    assert export_recording(recording, "csv") == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [CSV_HEADER, *CSV_ROWS]
    assert captured.err.startswith("warning: ") and "truncated" in captured.err


def test_unknown_format_is_rejected(recording: Path) -> None:
    with pytest.raises(ValueError, match="unknown export format 'xml'"):
        export_recording(recording, "xml")


def test_csv_columns_are_the_fields_of_the_structs() -> None:
    """A field added to EpochSummary (or SlotState) is exported with no change to export.py."""
    header = CSV_HEADER.split(",")
    summary_fields = [f.name for f in msgspec.structs.fields(c.EpochSummary) if f.name != "slots"]
    slot_fields = [f.name for f in msgspec.structs.fields(c.SlotState) if f.name != "slot_id"]
    slots = [f"{s}.{f}" for s in ("s0", "s1") for f in slot_fields]
    assert header == [*summary_fields, *slots, "notes"]


def test_a_reader_that_stops_early_ends_the_export_quietly() -> None:
    """`overwatch export FILE | head -n 1`: a real pipe whose reader leaves after one line."""
    export = subprocess.Popen(
        [sys.executable, "-m", "overwatch.cli", "export", str(REAL_RUN)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    head = subprocess.run(["head", "-n", "1"], stdin=export.stdout, capture_output=True, timeout=20)
    export.stdout.close()  # only head holds the read end now: its exit breaks the pipe
    _, err = export.communicate(timeout=20)
    assert head.stdout.count(b"\n") == 1
    assert (export.returncode, err) == (0, b"")


def test_the_jsonl_of_the_fixture_is_larger_than_a_pipe_buffer() -> None:
    """Else the pipe test above would pass without ever breaking the pipe."""
    out = subprocess.run(
        [sys.executable, "-m", "overwatch.cli", "export", str(REAL_RUN)],
        capture_output=True,
        check=True,
        timeout=20,
    ).stdout
    assert len(out) > 65536  # a Linux pipe buffers 64 KiB


def test_tensorboard_without_the_extra_is_one_line_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    argv = ["export", str(REAL_RUN), "--format", "tensorboard", "--output", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'overwatch-esper[tensorboard]'" in err
    assert not (tmp_path / "x").exists()
