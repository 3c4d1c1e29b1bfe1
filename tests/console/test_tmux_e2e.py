"""End to end in a real terminal: a live run in tmux, driven by keys, checked in the recording."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from esper_engine.contracts import CommandAck, EpochSummary, GovernorRollback, RunFinished
from esper_engine.recording import RecordingFollower

pytestmark = [
    pytest.mark.tmux,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

DEADLINE_S = 180.0


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll a condition of the outside world (screen, file) until it holds or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        # The console runs in another process behind a terminal: polling its screen and its
        # recording is the only way to observe it. The deadline, not the interval, is the limit.
        time.sleep(0.1)


class Recording:
    """Events of a recording as it grows (the recorder flushes every epoch and every ack)."""

    def __init__(self, path: Path) -> None:
        self.follower = RecordingFollower(path)
        self.events: list = []

    def refresh(self) -> list:
        self.events.extend(self.follower.poll())
        return self.events

    def has(self, predicate: Callable[[object], bool]) -> bool:
        return any(predicate(e) for e in self.refresh())


def test_live_console_keys_reach_the_trainer_and_the_recording(tmp_path: Path) -> None:
    session = f"ow-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "live.msgpack"
    exit_file = tmp_path / "exit_code"
    command = (
        f"cd {tmp_path} && {sys.executable} -m overwatch.cli run --n-envs 2 --episodes 1 "
        f"--epochs 500 --batches-per-epoch 4 --record {record}; echo $? > {exit_file}"
    )
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
    try:
        screen = lambda: tmux("capture-pane", "-p", "-t", session)  # noqa: E731
        rec = Recording(record)
        wait_until(lambda: rec.has(lambda e: isinstance(e, EpochSummary)), "a first epoch")
        wait_until(lambda: "LIVE" in screen(), "the console to show LIVE")

        tmux("send-keys", "-t", session, "2")  # focus env 2 (env index 1)
        wait_until(lambda: "▶ env 2" in screen(), "env 2 focused")  # a key, then another
        tmux("send-keys", "-t", session, "r")
        wait_until(lambda: "type 2 then enter" in screen(), "the confirmation")
        tmux("send-keys", "-t", session, "2", "Enter")
        wait_until(
            lambda: rec.has(lambda e: isinstance(e, CommandAck) and e.command == "ForceRollback"),
            "the rollback ack",
        )
        tmux("send-keys", "-t", session, "]")
        wait_until(
            lambda: rec.has(
                lambda e: isinstance(e, CommandAck) and e.command == "SetClipThreshold"
            ),
            "the clip ack",
        )
        ack_index = next(
            i
            for i, e in enumerate(rec.events)
            if isinstance(e, CommandAck) and e.command == "SetClipThreshold"
        )
        wait_until(
            lambda: any(isinstance(e, EpochSummary) for e in rec.refresh()[ack_index:]),
            "a summary after the clip change",
        )
        tmux("send-keys", "-t", session, "q")
        wait_until(lambda: "type stop then enter" in screen(), "the quit confirmation")
        tmux("send-keys", "-t", session, "stop", "Enter")
        wait_until(exit_file.exists, "the process to exit")
        assert exit_file.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)

    events = rec.refresh()
    acks = [e for e in events if isinstance(e, CommandAck)]
    assert [(a.command, a.accepted) for a in acks] == [
        ("ForceRollback", True),
        ("SetClipThreshold", True),
        ("Stop", True),
    ]
    assert acks[0].env == 1 and acks[1].value == pytest.approx(1.25)
    rollbacks = [e for e in events if isinstance(e, GovernorRollback)]
    assert len(rollbacks) == 1
    assert (rollbacks[0].env, rollbacks[0].initiator, rollbacks[0].penalty) == (1, "operator", 0.0)
    clip_ack = events.index(acks[1])
    later = [e for e in events[clip_ack:] if isinstance(e, EpochSummary)]
    earlier = [e for e in events[:clip_ack] if isinstance(e, EpochSummary)]
    # ] acts on the focused env only (issue 25): env 2's threshold moves, env 1's stays
    assert later and all(s.clip_threshold == pytest.approx(1.25) for s in later if s.env == 1)
    assert all(s.clip_threshold == pytest.approx(1.0) for s in later if s.env == 0)
    assert all(s.clip_threshold == pytest.approx(1.0) for s in earlier)
    assert isinstance(events[-1], RunFinished) and events[-1].status == "stopped"


def test_dropped_terminal_stops_the_run_and_exits(tmp_path: Path) -> None:
    """Killing the tmux session hangs up the console's terminal, as a dropped SSH session does;
    with --on-hangup stop the run ends with it."""
    session = f"ow-{uuid.uuid4().hex[:8]}"
    record = tmp_path / "hup.msgpack"
    command = (
        f"cd {tmp_path} && exec {sys.executable} -m overwatch.cli run --n-envs 2 --episodes 1 "
        f"--epochs 500 --batches-per-epoch 4 --record {record} --on-hangup stop"
    )  # exec: the pane's process is the console itself, so its exit is what we wait for
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", command)
    pane_pid = int(tmux("display-message", "-p", "-t", session, "#{pane_pid}").strip())
    rec = Recording(record)
    try:
        wait_until(lambda: rec.has(lambda e: isinstance(e, EpochSummary)), "a first epoch")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)

    def gone() -> bool:
        return subprocess.run(["kill", "-0", str(pane_pid)], capture_output=True).returncode != 0

    try:
        wait_until(gone, "the console process to exit after the hang-up", timeout=90)
    finally:
        subprocess.run(["kill", "-9", str(pane_pid)], capture_output=True)  # never leave it behind
    events = rec.refresh()
    assert isinstance(events[-1], RunFinished) and events[-1].status == "stopped"


def overwatch(*args: str) -> str:
    return f"{sys.executable} -m overwatch.cli " + " ".join(args)


def summaries(rec: Recording) -> int:
    return sum(isinstance(e, EpochSummary) for e in rec.refresh())


def acked(rec: Recording, command: str, console: str) -> bool:
    return rec.has(
        lambda e: isinstance(e, CommandAck) and (e.command, e.console) == (command, console)
    )


def test_attach_steers_a_headless_run_across_two_terminals(tmp_path: Path) -> None:
    """headless run; attach, r y; drop that terminal; attach again, ], S y: stopped, exit 0."""
    record = tmp_path / "bg.msgpack"
    args = "--n-envs 2 --episodes 1 --epochs 500 --batches-per-epoch 4"
    with open(tmp_path / "headless.log", "w") as log:
        run = subprocess.Popen(
            overwatch("run --headless", args, f"--record {record}").split(),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    sessions = [f"ow-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    rec = Recording(record)
    try:
        wait_until(lambda: summaries(rec) > 0 and record.with_suffix(".pid").exists(), "a run")
        first, second = sessions
        tmux(
            "new-session",
            "-d",
            "-s",
            first,
            "-x",
            "120",
            "-y",
            "40",
            overwatch("attach", str(record), "--console first"),
        )
        screen = lambda s: tmux("capture-pane", "-p", "-t", s)  # noqa: E731
        wait_until(lambda: "LIVE" in screen(first), "the attached console")
        tmux("send-keys", "-t", first, "r")
        wait_until(lambda: "type 1 then enter" in screen(first), "the confirmation")
        tmux("send-keys", "-t", first, "1", "Enter")
        wait_until(lambda: acked(rec, "ForceRollback", "first"), "the rollback ack")
        subprocess.run(["tmux", "kill-session", "-t", first], capture_output=True)
        after_drop = summaries(rec)
        wait_until(lambda: summaries(rec) > after_drop, "epochs after the console went away")

        tmux(
            "new-session",
            "-d",
            "-s",
            second,
            "-x",
            "120",
            "-y",
            "40",
            overwatch("attach", str(record), "--console second"),
        )
        wait_until(lambda: "LIVE" in screen(second), "the second attached console")
        tmux("send-keys", "-t", second, "]")
        wait_until(lambda: acked(rec, "SetClipThreshold", "second"), "the clip ack")
        tmux("send-keys", "-t", second, "S")
        wait_until(lambda: "type stop then enter" in screen(second), "the stop confirmation")
        tmux("send-keys", "-t", second, "stop", "Enter")
        assert run.wait(timeout=60) == 0
        tmux("send-keys", "-t", second, "q")
    finally:
        for name in sessions:
            subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        if run.poll() is None:
            run.kill()
    events = rec.refresh()
    rollbacks = [e for e in events if isinstance(e, GovernorRollback)]
    assert [(r.env, r.initiator) for r in rollbacks] == [(0, "operator")]
    acks = [(e.command, e.accepted, e.console) for e in events if isinstance(e, CommandAck)]
    assert acks == [
        ("ForceRollback", True, "first"),
        ("SetClipThreshold", True, "second"),
        ("Stop", True, "second"),
    ]
    assert isinstance(events[-1], RunFinished) and events[-1].status == "stopped"
    assert not record.with_suffix(".pid").exists()


def test_a_hung_up_console_keeps_training_detached_and_can_be_attached(tmp_path: Path) -> None:
    record = tmp_path / "detach.msgpack"
    sessions = [f"ow-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    live, attach = sessions
    command = "exec " + overwatch(
        "run --n-envs 2 --episodes 1 --epochs 500 --batches-per-epoch 4", f"--record {record}"
    )  # the default: --on-hangup detach
    tmux("new-session", "-d", "-s", live, "-x", "100", "-y", "30", f"cd {tmp_path} && {command}")
    pane_pid = int(tmux("display-message", "-p", "-t", live, "#{pane_pid}").strip())
    rec = Recording(record)

    def alive() -> bool:
        return subprocess.run(["kill", "-0", str(pane_pid)], capture_output=True).returncode == 0

    try:
        wait_until(lambda: summaries(rec) > 0, "a first epoch")
        subprocess.run(["tmux", "kill-session", "-t", live], capture_output=True)
        after_hangup = summaries(rec) + 2
        wait_until(lambda: summaries(rec) > after_hangup, "epochs after the hang-up", timeout=60)
        assert alive()
        tmux(
            "new-session",
            "-d",
            "-s",
            attach,
            "-x",
            "120",
            "-y",
            "40",
            overwatch("attach", str(record), "--console later"),
        )
        screen = lambda: tmux("capture-pane", "-p", "-t", attach)  # noqa: E731
        wait_until(lambda: "LIVE" in screen(), "the attached console")
        tmux("send-keys", "-t", attach, "S")
        wait_until(lambda: "type stop then enter" in screen(), "the stop confirmation")
        tmux("send-keys", "-t", attach, "stop", "Enter")
        wait_until(lambda: not alive(), "the detached run to end", timeout=60)
    finally:
        for name in sessions:
            subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        subprocess.run(["kill", "-9", str(pane_pid)], capture_output=True)  # never leave it
    events = rec.refresh()
    assert acked(rec, "Stop", "later")
    assert isinstance(events[-1], RunFinished) and events[-1].status == "stopped"


# --- text typed or pasted into the wrong window --------------------------------------------------

WORDS = ("history", "ps aux", "sort -r things", "top")  # s, t, p, r, y, a, o... all keys here
PASTES = ("ps aux | grep python\n", "r\ny\nstop\n")  # pasted as a terminal does, bracketed


def type_and_paste(session: str, screen: Callable[[], str]) -> None:
    """Type each word with its Enter and paste each line, into the console in ``session``: each
    is ignored as a whole, with its toast."""
    for word in WORDS:
        tmux("send-keys", "-t", session, word, "Enter")  # one write: a word typed fast
        toast = f"ignored {len(word) + 1} keys typed"
        wait_until(lambda toast=toast: toast in screen(), f"{word!r} ignored")
    for n, text in enumerate(PASTES):
        tmux("set-buffer", "-b", f"ow{n}", text)
        tmux("paste-buffer", "-p", "-d", "-b", f"ow{n}", "-t", session)  # -p: bracketed
        toast = f"ignored {len(text)} keys pasted"
        wait_until(lambda toast=toast: toast in screen(), f"paste {n} ignored")
    tmux("send-keys", "-t", session, "-l", PASTES[1])  # unbracketed: the lines as keys
    wait_until(lambda: f"ignored {len(PASTES[1])} keys typed" in screen(), "an unbracketed paste")


def test_typing_and_pasting_never_steer_a_live_or_attached_run(tmp_path: Path) -> None:
    """Words and shell lines into a live console, an attached one and a read-only one: not one
    command in the recording; then the deliberate keys and their confirmations still work."""
    sessions = [f"ow-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    live, attached, watcher = sessions
    live_record, record = tmp_path / "live.msgpack", tmp_path / "bg.msgpack"
    args = "--n-envs 2 --episodes 1 --epochs 500 --batches-per-epoch 4"
    exit_file = tmp_path / "exit_code"
    live_command = f"cd {tmp_path} && {overwatch('run', args, f'--record {live_record}')}"
    tmux("new-session", "-d", "-s", live, "-x", "120", "-y", "40",
         f"{live_command}; echo $? > {exit_file}")  # fmt: skip
    with open(tmp_path / "headless.log", "w") as log:
        run = subprocess.Popen(
            overwatch("run --headless", args, f"--record {record}").split(),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    live_rec, rec = Recording(live_record), Recording(record)
    screen = lambda s: lambda: tmux("capture-pane", "-p", "-t", s)  # noqa: E731
    try:
        wait_until(lambda: "LIVE" in screen(live)(), "the live console")
        type_and_paste(live, screen(live))

        wait_until(lambda: summaries(rec) > 0 and record.with_suffix(".pid").exists(), "a run")
        for name, flags in ((attached, "--console first"), (watcher, "--console ro --read-only")):
            tmux("new-session", "-d", "-s", name, "-x", "80", "-y", "24",
                 overwatch("attach", str(record), flags))  # fmt: skip
        wait_until(lambda: "LIVE" in screen(attached)(), "the attached console")
        type_and_paste(attached, screen(attached))
        wait_until(lambda: "read-only" in screen(watcher)(), "the read-only console")
        type_and_paste(watcher, screen(watcher))
        for key in ("p", "]", "c", "S", "r"):  # deliberate keys, an epoch apart
            after = summaries(rec)
            tmux("send-keys", "-t", watcher, key)
            wait_until(lambda after=after: summaries(rec) > after, "an epoch after a key")
        assert "Stop the run?" not in screen(watcher)() and "Force" not in screen(watcher)()
        assert not any(isinstance(e, CommandAck) for e in live_rec.refresh() + rec.refresh())

        # The deliberate keys and their confirmations, in the live and the attached console.
        tmux("send-keys", "-t", live, "2")
        wait_until(lambda: "▶ env 2" in screen(live)(), "env 2 focused")
        tmux("send-keys", "-t", live, "r")
        wait_until(lambda: "type 2 then enter" in screen(live)(), "the rollback confirmation")
        tmux("send-keys", "-t", live, "2", "Enter")
        wait_until(lambda: live_rec.has(lambda e: isinstance(e, CommandAck)), "the rollback ack")
        # A word typed slowly (`qu...`): its q asks, its next key cancels, the run goes on.
        tmux("send-keys", "-t", live, "q")
        wait_until(lambda: "type stop then enter" in screen(live)(), "the quit confirmation")
        tmux("send-keys", "-t", live, "u")
        wait_until(lambda: "quit not confirmed" in screen(live)(), "the quit cancelled")
        tmux("send-keys", "-t", live, "q")  # alone: a question, then the answer typed
        wait_until(lambda: "type stop then enter" in screen(live)(), "the quit confirmation")
        tmux("send-keys", "-t", live, "stop", "Enter")
        wait_until(exit_file.exists, "the live console to exit")
        assert exit_file.read_text().strip() == "0"

        tmux("send-keys", "-t", attached, "S")
        wait_until(lambda: "type stop then enter" in screen(attached)(), "the stop confirmation")
        tmux("send-keys", "-t", attached, "stop", "Enter")
        assert run.wait(timeout=60) == 0
    finally:
        for name in sessions:
            subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        if run.poll() is None:
            run.kill()
    live_acks = [(e.command, e.env) for e in live_rec.refresh() if isinstance(e, CommandAck)]
    assert live_acks == [("ForceRollback", 1), ("Stop", None)]
    acks = [(e.command, e.console) for e in rec.refresh() if isinstance(e, CommandAck)]
    assert acks == [("Stop", "first")]  # nothing from the typing, nothing from "ro"
    assert isinstance(rec.events[-1], RunFinished) and rec.events[-1].status == "stopped"


def test_an_attached_console_that_paused_the_run_resumes_it_when_its_terminal_goes(
    tmp_path: Path,
) -> None:
    """p in an attached console, then its terminal is closed: the run is not left paused."""
    record = tmp_path / "bg.msgpack"
    args = "--n-envs 2 --episodes 1 --epochs 500 --batches-per-epoch 4"
    with open(tmp_path / "headless.log", "w") as log:
        run = subprocess.Popen(
            overwatch("run --headless", args, f"--record {record}").split(),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    session = f"ow-{uuid.uuid4().hex[:8]}"
    rec = Recording(record)
    try:
        wait_until(lambda: summaries(rec) > 0 and record.with_suffix(".pid").exists(), "a run")
        tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40",
             overwatch("attach", str(record), "--console hup"))  # fmt: skip
        wait_until(lambda: "LIVE" in tmux("capture-pane", "-p", "-t", session), "the console")
        tmux("send-keys", "-t", session, "p")
        wait_until(lambda: acked(rec, "Pause", "hup"), "the pause ack")
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        wait_until(lambda: acked(rec, "Resume", "hup"), "the resume as the console went", 60)
        after = summaries(rec)
        wait_until(lambda: summaries(rec) > after, "training again")
        run.terminate()  # SIGTERM: the run stops at a safe point
        assert run.wait(timeout=60) == 0
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        if run.poll() is None:
            run.kill()


# --- the console in a real terminal: log search, 32 envs, 16 colours ------------------------------

FIXTURES = Path(__file__).parent / "fixtures"


class Console:
    """`overwatch replay FIXTURE --speed max` in a tmux pane of a given size and TERM."""

    def __init__(self, fixture: str, size: tuple[int, int], term: str = "xterm-256color") -> None:
        self.session = f"ow-{uuid.uuid4().hex[:8]}"
        command = (
            f"env -u COLORTERM -u COLUMNS -u LINES TERM={term} {sys.executable} -m overwatch.cli"
            f" replay {FIXTURES / fixture} --speed max; sleep 60"
        )
        width, height = size
        # The window is sized first and the console started in it after: a console started
        # at tmux's default size would draw its first screens at 80x24.
        new = ["tmux", "new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height)]
        # A server still exiting after the last test's session was killed refuses it: retry.
        wait_until(lambda: subprocess.run(new, capture_output=True).returncode == 0, "tmux", 10)
        tmux("set-option", "-t", self.session, "window-size", "manual")
        tmux("resize-window", "-t", self.session, "-x", str(width), "-y", str(height))
        tmux("respawn-pane", "-k", "-t", self.session, command)

    def screen(self, escapes: bool = False) -> str:
        return tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", self.session)

    def keys(self, *keys: str) -> None:
        tmux("send-keys", "-t", self.session, *keys)

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        wait_until(lambda: text in self.screen(), f"{text!r} on screen", timeout)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.session], capture_output=True)


def test_log_search_in_a_real_terminal() -> None:
    console = Console("real_run.msgpack", (120, 40))
    try:
        console.wait_for("100.0%")  # as fast as possible: the whole recording is on screen
        console.keys("/")
        console.wait_for("Search the event log")
        console.keys("BY OPERATOR", "Enter")  # any case
        console.wait_for("events: /BY OPERATOR")
        screen = console.screen().splitlines()
        top = next(i for i, line in enumerate(screen) if "events: /BY OPERATOR" in line)
        shown = [line for line in screen[top + 1 :] if re.match(r" \d\d:\d\d:\d\d ", line)]
        # the fixture's operator rollback, and nothing else
        assert len(shown) == 1 and "env 4 ROLLBACK by operator" in shown[0], shown
        assert "events: /BY OPERATOR · 1/" in screen[top]  # the title counts what matched
    finally:
        console.close()


def test_32_envs_at_120x40_in_a_real_terminal() -> None:
    console = Console("real_run_32.msgpack", (120, 40))
    try:
        console.wait_for("100.0%")
        screen = console.screen()
        assert "32 envs" in screen and "env21" in screen  # the table, as many rows as fit
        assert "env22" not in screen  # the rest scroll
        console.keys("g")
        console.wait_for("Go to env")
        console.keys("30", "Enter")
        wait_until(lambda: "▶env30" in console.screen(), "env 30 focused and in view")
        assert "env 30" in console.screen()  # its panel below the table
        console.keys("s")
        console.wait_for("sort accuracy")
    finally:
        console.close()


@pytest.mark.parametrize("term", ["xterm", "screen", "vt100"])
def test_the_footer_is_legible_in_16_colours(term: str) -> None:
    console = Console("real_run.msgpack", (160, 30), term=term)
    try:
        console.wait_for("100.0%")
        # The replay's alerts toast on the footer's line, over its keys: `a` clears them.
        console.keys("a")
        wait_until(
            lambda: "r Rollback" in console.screen().splitlines()[-1], "the footer's keys", 30
        )
        footer = console.screen(escapes=True).splitlines()[-1]
        assert "38;2" not in footer and "48;2" not in footer  # no 24-bit colour at all
        # live keys bold bright yellow on bright blue, greyed-out keys bright black, not dim;
        # the blue is set before or after the yellow (after "read-only", before its space)
        assert re.search(r"(\x1b\[1m\x1b\[93m\x1b\[104m|\x1b\[104m \x1b\[1m\x1b\[93m)\?", footer)
        assert "\x1b[1m\x1b[93mread-only" in footer  # a replay's footer says so first
        assert "\x1b[90mr Rollback" in footer
        assert "\x1b[2m" not in footer
    finally:
        console.close()
