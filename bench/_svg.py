"""A small SVG writer for the growth study's two plots (no plotting library in the core install).

``scatter`` draws labelled point series on linear or log-x axes; ``lines`` draws series joined
by lines. Both return the SVG document as a string.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 30, 50
COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    marker: str = "circle"  # circle | square | triangle
    line: bool = False  # joined by a line, no markers (whatever ``plot``'s ``joined`` says)


def _ticks(low: float, high: float, n: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / n))
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= n:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _fmt(value: float, log: bool) -> str:
    if log:
        return f"{value:.0e}".replace("e+0", "e").replace("e+", "e")
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


class _Axes:
    def __init__(self, xs: list[float], ys: list[float], log_x: bool) -> None:
        self.log_x = log_x
        fx = [math.log10(x) for x in xs] if log_x else xs
        self.x0, self.x1 = min(fx), max(fx)
        self.y0, self.y1 = min(ys), max(ys)
        pad_x = (self.x1 - self.x0) * 0.05 or 0.5
        pad_y = (self.y1 - self.y0) * 0.08 or 0.01
        self.x0, self.x1, self.y0, self.y1 = (
            self.x0 - pad_x,
            self.x1 + pad_x,
            self.y0 - pad_y,
            self.y1 + pad_y,
        )

    def px(self, x: float) -> float:
        fx = math.log10(x) if self.log_x else x
        return LEFT + (fx - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return HEIGHT - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)


def _frame(axes: _Axes, title: str, x_label: str, y_label: str) -> list[str]:
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="13">{escape(title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{HEIGHT - TOP - BOTTOM}" fill="none" stroke="#444"/>',
    ]
    if axes.log_x:
        xticks = [10.0**e for e in range(math.ceil(axes.x0), math.floor(axes.x1) + 1)]
        if len(xticks) < 2:
            xticks = [10 ** (axes.x0 + (axes.x1 - axes.x0) * f) for f in (0.2, 0.5, 0.8)]
    else:
        xticks = _ticks(axes.x0, axes.x1)
    for x in xticks:
        px = axes.px(x)
        out.append(
            f'<line x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{HEIGHT - BOTTOM}" stroke="#ddd"/>'
        )
        out.append(
            f'<text x="{px:.1f}" y="{HEIGHT - BOTTOM + 15}" text-anchor="middle">'
            f"{_fmt(x, axes.log_x and len(xticks) > 0)}</text>"
        )
    for y in _ticks(axes.y0, axes.y1):
        py = axes.py(y)
        out.append(
            f'<line x1="{LEFT}" y1="{py:.1f}" x2="{WIDTH - RIGHT}" y2="{py:.1f}" stroke="#ddd"/>'
        )
        out.append(
            f'<text x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{_fmt(y, False)}</text>'
        )
    out.append(
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 12}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    out.append(
        f'<text x="16" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {(TOP + HEIGHT - BOTTOM) / 2})">{escape(y_label)}</text>'
    )
    return out


def _marker(kind: str, x: float, y: float, colour: str) -> str:
    if kind == "square":
        return f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{colour}"/>'
    if kind == "triangle":
        return (
            f'<polygon points="{x:.1f},{y - 5:.1f} {x - 5:.1f},{y + 4:.1f} '
            f'{x + 5:.1f},{y + 4:.1f}" fill="{colour}"/>'
        )
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}" fill-opacity="0.8"/>'


def _legend(series: Sequence[Series], joined: bool) -> list[str]:
    out = []
    for i, s in enumerate(series):
        colour, y = COLOURS[i % len(COLOURS)], TOP + 12 + 16 * i
        x = WIDTH - RIGHT + 12
        if joined or s.line:
            out.append(
                f'<line x1="{x}" y1="{y}" x2="{x + 14}" y2="{y}" stroke="{colour}" '
                'stroke-width="2"/>'
            )
        else:
            out.append(_marker(s.marker, x + 7, y, colour))
        out.append(f'<text x="{x + 20}" y="{y + 4}">{escape(s.label)}</text>')
    return out


def plot(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    joined: bool = False,
) -> str:
    """The series as points (or lines when ``joined``) on shared axes, with a legend."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points if math.isfinite(y)]
    axes = _Axes(xs, ys, log_x)
    out = _frame(axes, title, x_label, y_label)
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        points = [(axes.px(x), axes.py(y)) for x, y in s.points if math.isfinite(y)]
        if (joined or s.line) and len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        if not s.line:
            out.extend(_marker(s.marker, x, y, colour) for x, y in points)
    out.extend(_legend(series, joined))
    out.append("</svg>")
    return "\n".join(out) + "\n"
