"""What the console writes to its terminal, made smaller without changing what the terminal shows.

Textual renders every segment of a line as ``ESC[0m ESC[<full style>m text``: a reset and the
whole style again, even when the next segment has the same style or differs only in its
foreground colour. Over SSH that is most of the bytes. ``compact_sgr`` rewrites each such
reset-and-restyle into the smallest change from the style in force (nothing when the styles are
equal), as curses does; when it cannot be sure what is in force, it leaves the text as it is.

The terminal state after the rewritten text equals the state after the original at every
character written (tests/console/test_terminal_output.py replays both through a model of the
terminal). The Linux driver of the console's app writes through it (``compacting``).
"""

from __future__ import annotations

import re

from textual.driver import Driver

# SGR sequences (colon sub-parameters included, so that they are seen and not mistaken for text)
_SGR = re.compile(r"\x1b\[([0-9;:]*)m")
# a reset, any cursor positionings (they leave the style alone), then a style
_RESTYLE = re.compile(r"\x1b\[0?m((?:\x1b\[\d+;\d+H)*)\x1b\[([0-9;]*)m")
# codes that switch an attribute on; a style made only of these (and colours) is a set, so the
# order its codes come in does not matter
_ATTRIBUTES_ON = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 21, 51, 52, 53})

Style = tuple[frozenset[int], tuple[int, ...] | None, tuple[int, ...] | None]  # attrs, fg, bg


def parse_style(spec: str) -> Style | None:
    """The style ``ESC[<spec>m`` sets from a reset, or None when it is not one this module can
    reason about (an off code, a default colour, sub-parameters, a malformed colour)."""
    if ":" in spec:
        return None
    attributes: set[int] = set()
    fg = bg = None
    codes = [int(code) for code in spec.split(";") if code]
    i = 0
    while i < len(codes):
        code = codes[i]
        if code in (38, 48):
            width = {5: 3, 2: 5}.get(codes[i + 1] if i + 1 < len(codes) else -1)
            if width is None or i + width > len(codes):
                return None
            colour = tuple(codes[i : i + width])
            fg, bg = (colour, bg) if code == 38 else (fg, colour)
            i += width
            continue
        if 30 <= code <= 37 or 90 <= code <= 97:
            fg = (code,)
        elif 40 <= code <= 47 or 100 <= code <= 107:
            bg = (code,)
        elif code in _ATTRIBUTES_ON:
            attributes.add(code)
        else:
            return None
        i += 1
    return frozenset(attributes), fg, bg


def _change(current: Style, wanted: Style) -> str | None:
    """The shortest SGR taking ``current`` to ``wanted`` without a reset ("" when equal), or None
    when an attribute would have to be switched off (then the reset stays)."""
    (on, fg, bg), (want_on, want_fg, want_bg) = current, wanted
    if not on <= want_on:
        return None
    codes = [str(code) for code in sorted(want_on - on)]
    if fg != want_fg:
        codes += [str(c) for c in want_fg] if want_fg else ["39"]
    if bg != want_bg:
        codes += [str(c) for c in want_bg] if want_bg else ["49"]
    return f"\x1b[{';'.join(codes)}m" if codes else ""


def compact_sgr(text: str) -> str:
    """``text`` with every reset-and-restyle replaced by the change from the style in force."""
    out: list[str] = []
    pos = 0
    current: Style | None = None  # the style in force, when known exactly
    while (match := _SGR.search(text, pos)) is not None:
        spec = match.group(1)
        if spec in ("", "0"):
            restyle = _RESTYLE.match(text, match.start())
            wanted = parse_style(restyle.group(2)) if restyle else None
            change = _change(current, wanted) if current and wanted else None
            if change is not None:
                out += (text[pos : match.start()], restyle.group(1), change)
                current, pos = wanted, restyle.end()
                continue
            current = (frozenset(), None, None)
        else:
            # After a reset, one style is known; on top of another one it is not (kept as is).
            start = current == (frozenset(), None, None)
            current = parse_style(spec) if start else None
        out.append(text[pos : match.end()])
        pos = match.end()
    out.append(text[pos:])
    return "".join(out)


def compacting(driver_class: type[Driver]) -> type[Driver]:
    """``driver_class`` writing through ``compact_sgr`` when it drives a terminal (the Linux
    driver); any other driver (headless, web, Windows) as it is."""
    try:
        from textual.drivers.linux_driver import LinuxDriver  # termios: POSIX only
    except ImportError:
        return driver_class
    if not issubclass(driver_class, LinuxDriver):
        return driver_class

    class CompactingDriver(driver_class):  # type: ignore[misc, valid-type]
        def write(self, data: str) -> None:
            super().write(compact_sgr(data))

    CompactingDriver.__name__ = f"Compacting{driver_class.__name__}"
    return CompactingDriver
