"""Regenerate the README's console screenshots (SVG) from the real engine's recording.

    python scripts/screenshots.py            # writes screenshots/*.svg

The recording (tests/console/fixtures/real_run.msgpack, made by scripts/make_fixture.py) is what
the trainer really emitted, replayed at the same points as the snapshot tests, so the pictures
change only when the console or the fixture does.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fixture lives in the test tree

import overwatch.keys  # noqa: E402
from tests.console.fixtures import REAL_RUN_32, live_app, replay_app, running  # noqa: E402

# Keys pressed one at a time, a second apart, as an operator presses single commands: a Pilot
# posts them in the same instant, which the console would take for typing (overwatch/keys.py).
_seconds = itertools.count(1000.0)
overwatch.keys.default_clock = lambda: float(next(_seconds))

OUT = ROOT / "screenshots"
os.environ["TZ"] = "UTC"  # the event log's wall-clock times, as in the snapshot tests
time.tzset()


def many_envs():
    return live_app(running(REAL_RUN_32))


SHOTS = {
    "live-120x40.svg": (live_app, (120, 40), []),
    "compact-80x24.svg": (live_app, (80, 24), []),
    "replay-120x40.svg": (replay_app, (120, 40), []),
    "help-80x24.svg": (live_app, (80, 24), ["a", "question_mark"]),
    "rollback-confirm-120x40.svg": (live_app, (120, 40), ["2", "r"]),
    "many-envs-120x40.svg": (many_envs, (120, 40), ["g", "2", "5", "enter", "s"]),
    "plot-200x60.svg": (live_app, (200, 60), ["2"]),
    "log-search-120x40.svg": (live_app, (120, 40), ["f", "f", "slash", *"nan", "enter"]),
}


async def shoot(name: str, make, size: tuple[int, int], keys: list[str]) -> None:
    app = make()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
        await pilot.pause()
        app.save_screenshot(filename=name, path=str(OUT))
    print(f"wrote {OUT / name}", file=sys.stderr)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, (make, size, keys) in SHOTS.items():
        asyncio.run(shoot(name, make, size, keys))


if __name__ == "__main__":
    main()
