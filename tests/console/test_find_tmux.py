"""Find and focus in a real terminal at 80x24: the env filter, the palette and the config screen
on the replay of a real run with faults (``test_find`` says how it was recorded)."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.console.test_tmux_e2e import Console, wait_until

pytestmark = [
    pytest.mark.tmux,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


def env_rows(screen: str) -> list[str]:
    """The table's env labels on screen, in order ("env3", "env6")."""
    return re.findall(r"^[ ▶](env\d+) ", screen, flags=re.MULTILINE)


def test_filter_palette_and_config_at_80x24() -> None:
    console = Console("real_run_faults.msgpack", (80, 24))
    try:
        console.wait_for("100.0%")
        assert env_rows(console.screen())[:3] == ["env1", "env2", "env3"]
        console.keys("\\")
        console.wait_for("Filter the envs")
        console.keys("panic", "Enter")
        console.wait_for("filter panic (2/8)")  # in the header, at 80 columns
        # the envs the governor hit (the header can reach the terminal a frame before the rows)
        wanted = ["env3", "env6"]
        wait_until(lambda: env_rows(console.screen()) == wanted, f"only {wanted} listed", 30)
        console.keys("Escape")
        wait_until(lambda: "filter" not in console.screen(), "the filter cleared", 30)
        console.keys("C-p")
        console.wait_for("Search for commands")
        console.keys("config")
        console.wait_for("Config (i)")
        console.keys("Enter")
        console.wait_for("Run config (as recorded)")
        console.keys("sensitiv")
        console.wait_for("governor.sensitivity = 6.0")
        console.wait_for(" 1 of ")  # one line matches: the count says so
        console.keys("Escape")
        wait_until(lambda: "Run config" not in console.screen(), "the config screen closed", 30)
    finally:
        console.close()
