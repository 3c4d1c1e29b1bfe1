"""The console's terminal output is rewritten to fewer bytes and the terminal shows the same:
every character with the same style, the same style in force at the end. Checked with a model
of a terminal on the real console's screens (the real engine's recording) and on random
segment streams rendered by Textual's own renderer."""

from __future__ import annotations

import random
import re

from rich.color import Color
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from textual._compositor import Compositor
from textual.drivers.headless_driver import HeadlessDriver
from textual.drivers.linux_driver import LinuxDriver
from textual.strip import Strip

from overwatch.app import OverwatchApp
from overwatch.sources import ReplaySource
from overwatch.terminal_output import compact_sgr, compacting, parse_style
from tests.console.fixtures import FakeLiveSource, real_events, run_async, running

TOKEN = re.compile(r"\x1b\[([0-9;:?]*)([A-Za-z])|(\n)|(.)", re.DOTALL)


def screen_of(stream: str) -> tuple[dict, tuple]:
    """What a terminal shows after ``stream``: each written cell's (character, SGR state),
    and the SGR state in force at the end. Cursor positioning, newlines and SGR are modelled
    (every SGR code applied in order, as a terminal does); anything else is an error."""
    cells: dict[tuple[int, int], tuple[str, tuple]] = {}
    state: dict[str, object] = {}
    row = col = 0
    for match in TOKEN.finditer(stream):
        params, final, newline, char = match.groups()
        if char is not None:
            cells[row, col] = (char, tuple(sorted(state.items())))
            col += 1
        elif newline:
            row, col = row + 1, 0
        elif final == "H":
            r, _, c = params.partition(";")
            row, col = int(r or 1) - 1, int(c or 1) - 1
        elif final == "m":
            apply_sgr(state, params)
        else:
            raise AssertionError(f"unmodelled sequence {match.group(0)!r}")
    return cells, tuple(sorted(state.items()))


def apply_sgr(state: dict, params: str) -> None:
    codes = [int(c) for c in params.replace(":", ";").split(";") if c] or [0]
    i = 0
    while i < len(codes):
        code = codes[i]
        if code == 0:
            state.clear()
        elif code in (38, 48):
            width = 3 if codes[i + 1] == 5 else 5
            state["fg" if code == 38 else "bg"] = tuple(codes[i + 2 : i + width])
            i += width
            continue
        elif 30 <= code <= 37 or 90 <= code <= 97:
            state["fg"] = code
        elif 40 <= code <= 47 or 100 <= code <= 107:
            state["bg"] = code
        elif code == 39:
            state.pop("fg", None)
        elif code == 49:
            state.pop("bg", None)
        elif code == 22:
            state.pop("1", None)
            state.pop("2", None)
        elif 23 <= code <= 29:
            state.pop(str(code - 20), None)
        else:
            state[str(code)] = True
        i += 1


def assert_same_screen(stream: str) -> str:
    compacted = compact_sgr(stream)
    assert screen_of(compacted) == screen_of(stream)
    return compacted


@run_async
async def test_the_real_consoles_screens_show_the_same_in_a_third_fewer_bytes() -> None:
    """Full repaints of the console on the real engine's recording (panels, the compact
    table, the help screen): the same cells, and at least 30% fewer bytes."""
    events = real_events()
    source = ReplaySource.from_events(events, clock=lambda: 0.0)
    app = OverwatchApp(source, clock=lambda: 0.0)
    console = Console(color_system="256", force_terminal=True, width=200)
    before = after = 0
    async with app.run_test(size=(120, 40)) as pilot:
        source.playing = False
        source.seek(len(events) // 2)
        for size, key in (((120, 40), None), ((80, 24), None), ((80, 24), "question_mark")):
            await pilot.resize_terminal(*size)
            if key:
                await pilot.press(key)
            await app.tick()
            await pilot.pause()
            stream = app.screen._compositor.render_update(full=True).render_segments(console)
            compacted = assert_same_screen(stream)
            before, after = before + len(stream.encode()), after + len(compacted.encode())
    assert after <= 0.7 * before, (before, after)


def test_random_styled_segments_show_the_same() -> None:
    """Lines of random segments (bold, dim, italic, underline, reverse; 256-colour, truecolour,
    standard and default colours) at random places, rendered by Textual's Strip."""
    rng = random.Random(7)
    console = Console(color_system="truecolor", force_terminal=True)
    colours = [
        None,
        Color.parse("red"),
        Color.parse("color(214)"),
        Color.parse("#3a7bd5"),
        Color.parse("bright_white"),
        Color.parse("default"),
    ]
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(1, 6)):
            parts.append(f"\x1b[{rng.randint(1, 40)};{rng.randint(1, 100)}H")
            segments = [
                Segment(
                    rng.choice(["a", "bc", "━━", " ", "▁▂█"]),
                    None
                    if rng.random() < 0.05
                    else Style(
                        bold=rng.random() < 0.3,
                        dim=rng.random() < 0.1,
                        italic=rng.random() < 0.1,
                        underline=rng.random() < 0.1,
                        reverse=rng.random() < 0.1,
                        color=rng.choice(colours),
                        bgcolor=rng.choice(colours),
                    ),
                )
                for _ in range(rng.randint(1, 12))
            ]
            parts.append(Strip(segments).render(console))
        assert_same_screen("".join(parts))


def test_what_it_cannot_reason_about_is_left_as_it_is() -> None:
    """Off codes, colon sub-parameters and malformed colours keep their reset."""
    for stream in (
        "\x1b[1mA\x1b[0m\x1b[22;31mB\x1b[0m",
        "\x1b[0m\x1b[4:3mA\x1b[0m\x1b[4:3mB\x1b[0m",
        "\x1b[0m\x1b[38;5mA\x1b[0m\x1b[38;5mB\x1b[0m",
    ):
        assert compact_sgr(stream) == stream
    assert parse_style("1;38;5;214;48;2;1;2;3") == (frozenset({1}), (38, 5, 214), (48, 2, 1, 2, 3))
    assert parse_style("22") is None and parse_style("4:3") is None


def test_equal_and_near_styles_become_nothing_or_a_colour_change() -> None:
    same = "\x1b[0m\x1b[38;5;231;48;5;233mgrad \x1b[0m\x1b[38;5;231;48;5;233m0.87\x1b[0m"
    assert compact_sgr(same) == "\x1b[0m\x1b[38;5;231;48;5;233mgrad 0.87\x1b[0m"
    near = "\x1b[0m\x1b[38;5;231;48;5;233mA\x1b[0m\x1b[5;9H\x1b[38;5;75;48;5;233mB\x1b[0m"
    assert compact_sgr(near) == "\x1b[0m\x1b[38;5;231;48;5;233mA\x1b[5;9H\x1b[38;5;75mB\x1b[0m"
    bold_off = "\x1b[0m\x1b[1;38;5;231mA\x1b[0m\x1b[38;5;231mB\x1b[0m"
    assert compact_sgr(bold_off) == bold_off  # bold must go: only a reset does that here


def test_only_a_terminals_driver_writes_through_it() -> None:
    driver = compacting(LinuxDriver)
    assert issubclass(driver, LinuxDriver) and driver is not LinuxDriver
    assert compacting(HeadlessDriver) is HeadlessDriver
    assert issubclass(OverwatchApp(ReplaySource.from_events([])).driver_class, LinuxDriver)


@run_async
async def test_what_the_console_writes_tick_by_tick_adds_up_to_its_screen(monkeypatch) -> None:
    """The real engine's run shown live at 120x40, a few events per tick with the clock
    moving: every update Textual renders (rows cut short where a line's end did not change,
    per-batch figures held back, styles compacted), played in order through the terminal
    model, leaves the screen one full repaint shows."""
    events = running()
    written: list[str] = []
    console = Console(color_system="256", force_terminal=True, width=200)
    render_update = Compositor.render_update

    def recorded(self, *args, **kwargs):
        update = render_update(self, *args, **kwargs)
        if update is not None:
            written.append(compact_sgr(update.render_segments(console)))
        return update

    monkeypatch.setattr(Compositor, "render_update", recorded)
    now = [events[0].wall_time]
    source = FakeLiveSource([])
    app = OverwatchApp(source, clock=lambda: now[0], refresh_hz=0.1)
    async with app.run_test(size=(120, 40)) as pilot:
        for start in range(0, len(events), 7):
            source.push(*events[start : start + 7])
            now[0] += 0.3
            await app.tick()
            await pilot.pause()
        stream = "".join(written)
        full = render_update(app.screen._compositor, full=True).render_segments(console)
    assert screen_of(stream)[0] == screen_of(full)[0]
    assert len(written) > 20  # it was drawn tick by tick
