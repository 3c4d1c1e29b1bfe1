"""Regenerate the README's console screenshots (SVG) from the deterministic fixture run.

    python scripts/screenshots.py            # writes screenshots/*.svg

The fixture (tests/console/fixtures.py) is a fixed stream of telemetry events, so the pictures
only change when the console does.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fixture lives in the test tree

from overwatch.app import OverwatchApp  # noqa: E402
from overwatch.sources import ReplaySource  # noqa: E402
from tests.console.fixtures import FakeLiveSource, fixture_events, frozen_clock  # noqa: E402

OUT = ROOT / "screenshots"


def live_app() -> OverwatchApp:
    events = fixture_events()[:-1]  # still running
    return OverwatchApp(FakeLiveSource(events), clock=frozen_clock(events))


def replay_app() -> OverwatchApp:
    source = ReplaySource.from_events(fixture_events(), clock=lambda: 0.0)
    for _ in range(10):
        source.step_forward()
    return OverwatchApp(source, clock=lambda: 0.0)


SHOTS = {
    "live-120x40.svg": (live_app, (120, 40), []),
    "compact-80x24.svg": (live_app, (80, 24), []),
    "replay-120x40.svg": (replay_app, (120, 40), []),
    "help-80x24.svg": (live_app, (80, 24), ["question_mark"]),
    "rollback-confirm-120x40.svg": (live_app, (120, 40), ["2", "r"]),
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
