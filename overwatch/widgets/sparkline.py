"""Text sparklines and bars: one character per point, so a chart fits inline in a panel line.

Textual's ``Sparkline`` widget takes a whole widget (and a container per labelled row); the
panels need a dozen small charts inline with their figures, so they render these strings instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"
EIGHTHS = " ▏▎▍▌▋▊▉"


def sparkline(
    values: Sequence[float], width: int, lo: float | None = None, hi: float | None = None
) -> str:
    """The last ``width`` finite values as block characters scaled to [lo, hi] (default: range)."""
    if width <= 0:
        return ""
    points = [v for v in list(values)[-width:] if math.isfinite(v)]
    if not points:
        return ""
    low = min(points) if lo is None else lo
    high = max(points) if hi is None else hi
    span = high - low
    if span <= 0:
        return BLOCKS[len(BLOCKS) // 2] * len(points)
    top = len(BLOCKS) - 1
    return "".join(BLOCKS[max(0, min(top, round((v - low) / span * top)))] for v in points)


def hbar(fraction: float, width: int) -> str:
    """A horizontal bar filling ``fraction`` (clamped to [0, 1]) of ``width`` cells, in eighths."""
    if width <= 0 or not math.isfinite(fraction):
        return ""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(width)


def block_chart(
    values: Sequence[float],
    width: int,
    height: int,
    lo: float | None = None,
    hi: float | None = None,
) -> list[str]:
    """The last ``width`` values as a bar chart ``height`` rows tall (top row first), in eighths."""
    points = [v for v in list(values)[-width:] if math.isfinite(v)] if width > 0 else []
    if not points or height <= 0:
        return [""] * max(height, 0)
    low = min(points) if lo is None else lo
    high = max(points) if hi is None else hi
    span = (high - low) or 1.0
    levels = [round(max(0.0, min(1.0, (v - low) / span)) * (height * 8 - 1)) + 1 for v in points]
    rows = []
    for row in range(height - 1, -1, -1):  # top row first
        base = row * 8
        rows.append("".join(_cell(level - base) for level in levels))
    return rows


def _cell(eighths: int) -> str:
    if eighths <= 0:
        return " "
    return "█" if eighths >= 8 else BLOCKS[eighths - 1]
