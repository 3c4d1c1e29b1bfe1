"""`overwatch serve`: the replay console in a real (headless Chromium) browser, one replay
process per visitor, bound to 127.0.0.1, never a trainer.

The browser test skips when Chromium is not installed (``apt-get install chromium``; `.ci/run`
tries). ``OVERWATCH_UPDATE_SCREENSHOTS=1`` makes it save its screenshot as
``screenshots/serve-browser.png``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from overwatch.cli import main
from overwatch.serve import replay_command
from tests.console.browser import Chromium, find_chromium
from tests.console.fixtures import REAL_RUN

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "screenshots" / "serve-browser.png"
RUN_ID = "fixture-real-run"  # REAL_RUN's; the header shows it
EVENTS = 315  # REAL_RUN's event count: the replay bar says 315/315 at the end
# Collects what the page's websocket receives (the console's terminal output) as text.
RECORD_TERMINAL = """
(() => {
  const Native = window.WebSocket;
  const decoder = new TextDecoder();
  window.__terminal = '';
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (e) => {
        if (e.data instanceof ArrayBuffer) {
          window.__terminal += decoder.decode(new Uint8Array(e.data), {stream: true});
        }
      });
    }
  };
})();
"""
TERMINAL_SHOWN = "getComputedStyle(document.querySelector('.textual-terminal')).opacity === '1'"
TWO_FRAMES = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"


def test_each_visitor_runs_a_read_only_replay_of_the_file() -> None:
    command = shlex.split(replay_command("tests/../tests/console/fixtures/real_run.msgpack"))
    assert command == [sys.executable, "-m", "overwatch.cli", "replay", str(REAL_RUN)]
    assert shlex.split(replay_command(REAL_RUN, follow=True))[-1] == "--follow"


def test_missing_recording_and_bad_port_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "no-such.msgpack"]) == 2
    assert main(["serve", str(REAL_RUN), "--port", "70000"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "overwatch: error: no such recording: no-such.msgpack"
    assert "1..65535" in err[1] and len(err) == 2


def test_without_the_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "textual_serve.server", None)  # as if not installed
    assert main(["serve", str(REAL_RUN)]) == 2
    assert capsys.readouterr().err == (
        "overwatch: error: serve needs the serve extra: pip install 'overwatch-esper[serve]'\n"
    )


def test_a_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("textual_serve", reason="the [serve] extra is not installed")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(REAL_RUN), "--port", str(port)]) == 2
    assert capsys.readouterr() == (
        "",
        f"overwatch: error: cannot serve on 127.0.0.1:{port}: Address already in use\n",
    )


# --- in a real browser --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`overwatch serve REAL_RUN` on a free port; its URL once it answers, and its process."""
    pytest.importorskip("textual_serve", reason="the [serve] extra is not installed")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "overwatch.cli", "serve", str(REAL_RUN), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as page:
                    assert page.status == 200
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"serve did not answer: {server.stderr.read().decode()[-500:]}")
                time.sleep(0.1)  # polling the port: the server has no readiness signal
        yield url, server
    finally:
        server.send_signal(signal.SIGTERM)  # textual-serve's graceful exit
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # its own session: the server and its replays
            server.wait()
        server.stderr.close()


def replays_of(server: subprocess.Popen[bytes]) -> list[str]:
    """Command lines of the replay processes the server started (its descendants)."""
    children, found = [server.pid], []
    while children:
        pid = children.pop()
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            children.append(kid)
            try:
                cmdline = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"overwatch.cli" in cmdline:
                found.append(" ".join(part.decode() for part in cmdline if part))
    return found


def open_console(browser: Chromium, url: str) -> None:
    """Load the page and wait until the console's header has reached the page's terminal."""
    browser.call("Page.addScriptToEvaluateOnNewDocument", source=RECORD_TERMINAL)
    browser.call("Page.navigate", url=url)
    browser.wait_for(f"window.__terminal.includes({RUN_ID!r})")
    browser.wait_for(TERMINAL_SHOWN)


def press(browser: Chromium, key: str, code: int) -> None:
    browser.evaluate("document.querySelector('.xterm-helper-textarea').focus()")
    for kind in ("keyDown", "keyUp"):
        browser.call(
            "Input.dispatchKeyEvent",
            type=kind,
            key=key,
            code=key,
            windowsVirtualKeyCode=code,
            nativeVirtualKeyCode=code,
        )


chromium_missing = pytest.mark.skipif(
    find_chromium() is None, reason="chromium is not installed (apt-get install chromium)"
)


@chromium_missing
def test_the_browser_shows_the_run_and_each_visitor_gets_its_own_replay(
    served: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    url, server = served
    executable = find_chromium()
    assert executable is not None
    with Chromium(executable) as first, Chromium(executable) as second:
        open_console(first, url)
        open_console(second, url)
        replays = replays_of(server)
        assert len(replays) == 2, replays  # one app process per visitor
        assert all(" replay " in f" {line} " and " run " not in f" {line} " for line in replays)

        text = first.evaluate("window.__terminal")
        for shown in (RUN_ID, "synthetic-images", "REPLAY", "env 1", "env 4"):
            assert shown in text, f"{shown!r} not on the page"

        # The page is live: `end` typed in the browser jumps this visitor's replay to the end.
        before = first.evaluate("window.__terminal.length")
        press(first, "End", 35)
        first.wait_for(f"window.__terminal.slice({before}).includes('{EVENTS}/{EVENTS}')")
        assert f"{EVENTS}/{EVENTS}" not in second.evaluate("window.__terminal")
        first.evaluate(TWO_FRAMES, await_promise=True)  # xterm paints on animation frames
        shot = first.screenshot(tmp_path / "serve-browser.png")

    assert shot.startswith(b"\x89PNG") and len(shot) > 50_000  # a blank page is a few KB
    if os.environ.get("OVERWATCH_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(tmp_path / "serve-browser.png", SCREENSHOT)
