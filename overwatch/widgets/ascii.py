"""`--ascii`: every character the console draws, mapped to ASCII as the screen is composed, for
terminals without box drawing, block elements or arrows (a vt100, a serial console).

One line filter instead of an ASCII twin of every widget: each glyph the widgets use has a
one-cell ASCII stand-in here, so columns and layouts stay exactly as they are.
"""

from __future__ import annotations

from rich.segment import Segment
from textual.color import Color
from textual.filter import LineFilter

_GROUPS = {
    "-": "─━═╌╍┄┅┈┉╴╶╸╺▔—–",
    "|": "│┃║╎╏┆┇┊┋╵╷╹╻❚",
    "+": "┌┐└┘├┤┬┴┼┏┓┗┛┣┫┳┻╋╭╮╰╯╔╗╚╝╠╣╦╩╬┍┑┕┙┎┒┖┚┝┥┯┷┿┞┟┠┡┢┦┧┨┩┪┭┮┱┲┵┶┹┺┽┾╀╁╂╃╄╅╆╇╈╉╊",
    ">": "▶▸►→",
    "<": "◀◂◄←",
    "^": "↑▲",
    "v": "↓▼✓",
    "*": "●•■",
    ".": "·░",
    ":": "▏▎▍▌▋▊▉▒▓",  # the partial cell at the end of a bar
}
# Sparklines and bars: the eight block heights as a ramp of ASCII marks.
_BLOCKS = dict(zip("▁▂▃▄▅▆▇█", "_.,-=+*#", strict=True))
_SINGLE = {
    "✗": "x",
    "α": "a",
    "∅": "0",
    "÷": "/",
    "×": "x",
    "…": ".",
    "⚠": "!",
    **_BLOCKS,
}
TABLE: dict[int, str] = {ord(c): ascii_ for ascii_, chars in _GROUPS.items() for c in chars}
TABLE.update({ord(c): a for c, a in _SINGLE.items()})


def to_ascii(text: str) -> str:
    """``text`` with every known glyph replaced, and any other non-ASCII character as ``?``."""
    text = text.translate(TABLE)
    if text.isascii():
        return text
    return "".join(c if c.isascii() else "?" for c in text)


class AsciiFilter(LineFilter):
    """Replaces what a line draws with ASCII; colours and styles are left as they are."""

    def apply(self, segments: list[Segment], background: Color) -> list[Segment]:
        return [
            segment if segment.text.isascii() else Segment(to_ascii(segment.text), *segment[1:])
            for segment in segments
        ]
