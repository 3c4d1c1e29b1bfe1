"""Issue 25 in a real terminal at 80x24: a note, an operator germinate (and a refused one) and
a learning-rate factor typed into a live console, then read back from the recording."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from esper_engine.contracts import (
    CommandAck,
    EpochSummary,
    OperatorNote,
    RunFinished,
    SeedTransition,
)
from tests.console.test_tmux_e2e import Recording, tmux, wait_until

pytestmark = [
    pytest.mark.tmux,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


def _acked(rec: Recording, command: str, n: int = 1) -> bool:
    return sum(isinstance(e, CommandAck) and e.command == command for e in rec.refresh()) >= n


def test_notes_seeds_and_lr_from_a_live_console_at_80x24(tmp_path: Path) -> None:
    session = f"ow-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "controls.msgpack"
    exit_file = tmp_path / "exit_code"
    command = (
        f"cd {tmp_path} && {sys.executable} -m overwatch.cli run --n-envs 2 --episodes 1 "
        f"--epochs 500 --batches-per-epoch 4 --policy static --record {record}; "
        f"echo $? > {exit_file}"
    )
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", command)
    try:
        screen = lambda: tmux("capture-pane", "-p", "-t", session)  # noqa: E731
        keys = lambda *k: tmux("send-keys", "-t", session, *k)  # noqa: E731
        rec = Recording(record)
        wait_until(lambda: rec.has(lambda e: isinstance(e, EpochSummary)), "a first epoch")
        wait_until(lambda: "LIVE" in screen(), "the console to show LIVE")
        keys("2")
        wait_until(lambda: "▶" in screen() and "env 2" in screen(), "env 2 focused")

        keys("m")
        wait_until(lambda: "Note on env 2" in screen(), "the note prompt")
        keys("-l", "[b]lr too high?[/b]")
        keys("Enter")
        wait_until(lambda: rec.has(lambda e: isinstance(e, OperatorNote)), "the note recorded")
        wait_until(lambda: "[b]lr too high?[/b]" in screen(), "the note in the log, as text")

        keys("o")
        wait_until(lambda: "Seed of env 2" in screen(), "the seed prompt")
        keys("-l", "germinate block1 conv_light")
        keys("Enter")
        wait_until(lambda: _acked(rec, "GerminateSeed"), "the germinate ack")
        keys("o")
        wait_until(lambda: "Seed of env 2" in screen(), "the seed prompt again")
        keys("-l", "germinate block1 norm")
        keys("Enter")
        wait_until(lambda: _acked(rec, "GerminateSeed", 2), "the refusal")

        keys("L")
        wait_until(lambda: "Learning-rate factor" in screen(), "the lr prompt")
        keys("-l", "0.5")
        keys("Enter")
        wait_until(lambda: _acked(rec, "SetLrScale"), "the lr ack")
        wait_until(
            lambda: any(
                isinstance(e, EpochSummary) and e.env == 1 and e.lr_scale == 0.5
                for e in rec.refresh()
            ),
            "a summary at the new lr",
        )
        keys("q")
        wait_until(lambda: "type stop then enter" in screen(), "the quit confirmation")
        keys("stop", "Enter")
        wait_until(exit_file.exists, "the process to exit")
        assert exit_file.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)

    events = rec.refresh()
    (note,) = [e for e in events if isinstance(e, OperatorNote)]
    assert (note.text, note.env, note.console) == ("[b]lr too high?[/b]", 1, "")
    acks = [(a.command, a.accepted, a.env) for a in events if isinstance(a, CommandAck)]
    assert acks[:4] == [
        ("AddNote", True, 1),
        ("GerminateSeed", True, 1),
        ("GerminateSeed", False, 1),
        ("SetLrScale", True, 1),
    ]
    refused = [a for a in events if isinstance(a, CommandAck) and not a.accepted][0]
    assert "block1 is" in refused.reason and "not DORMANT" in refused.reason
    seeds = [e for e in events if isinstance(e, SeedTransition)]
    assert [(t.env, t.slot_id, t.to_stage, t.initiator) for t in seeds][0] == (
        1,
        "block1",
        "GERMINATED",
        "operator",
    )
    summaries = [e for e in events if isinstance(e, EpochSummary)]
    assert all(s.lr_scale == 1.0 for s in summaries if s.env == 0)
    env2 = [s for s in summaries if s.env == 1 and s.lr_scale == 0.5]
    assert env2 and all(s.host_lr is not None for s in summaries)
    assert isinstance(events[-1], RunFinished) and events[-1].status == "stopped"
