"""How figures read on screen: one place for number formats, env labels and stage styles."""

from __future__ import annotations

import math

from rich.text import Text

from esper_engine.contracts import EpochProgress, SeedStage

# Component classes (styled in overwatch.tcss) for each lifecycle stage.
STAGE_COMPONENTS = frozenset(f"stage--{stage.lower()}" for stage in SeedStage)
# One glyph per stage for the compact one-line env rows.
STAGE_GLYPHS: dict[SeedStage, str] = {
    SeedStage.DORMANT: "·",
    SeedStage.GERMINATED: "g",
    SeedStage.TRAINING: "T",
    SeedStage.BLENDING: "B",
    SeedStage.HOLDING: "H",
    SeedStage.FOSSILIZED: "F",
    SeedStage.PRUNED: "x",
    SeedStage.EMBARGOED: "e",
    SeedStage.RESETTING: "r",
}


def stage_component(stage: SeedStage) -> str:
    return f"stage--{stage.lower()}"


def env_label(env: int | None) -> str:
    """Envs are shown 1-based so that key N focuses the panel labelled "env N"."""
    return "run" if env is None else f"env {env + 1}"


def episode_number(episode: int) -> int:
    """Episodes count from 0 in telemetry and from 1 on screen ("episode 3/3" is the last)."""
    return episode + 1


def epoch_number(epoch: int) -> int:
    """Epochs within an episode likewise: telemetry 0..E-1, on screen 1..E."""
    return epoch + 1


LARGE = 1e6  # from here on numbers are shown in scientific notation
SIGNIFICANT = 2  # digits kept of a figure too small for its decimals (1.2e-06)


def num(value: float | None, digits: int = 3) -> str:
    """A figure with ``digits`` decimals; one so small that it would read as zero, or so large
    that it would need forty digits, in significant digits instead (a 1e-06 clip threshold is
    ``1e-06``, never ``0.000``, which would pass for "clipping off")."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if abs(value) >= LARGE:  # a diverging loss or a refused 1e40: not forty digits on screen
        return f"{value:.{min(digits, 2)}e}"
    if _rounds_to_zero(value, digits):
        return f"{value:.{SIGNIFICANT}g}"
    return f"{value:.{digits}f}"


def signed(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return num(value, digits)
    if abs(value) >= LARGE:
        return f"{value:+.{min(digits, 2)}e}"
    if value == 0:
        return f"{0.0:+.{digits}f}"  # +0.000, never -0.000
    if _rounds_to_zero(value, digits):
        return f"{value:+.{SIGNIFICANT}g}"
    return f"{value:+.{digits}f}"


def _rounds_to_zero(value: float, digits: int) -> bool:
    """A non-zero value below one unit of the last decimal shown: ``digits`` decimals would
    show it as zero or as a rounding of it."""
    return value != 0 and abs(value) < 10.0**-digits


def pct(fraction: float | None, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage."""
    if fraction is None or not math.isfinite(fraction):
        return num(fraction)
    return f"{100 * fraction:.{digits}f}%"


def points(fraction: float | None) -> str:
    """An accuracy difference (fraction) in percentage points, signed."""
    if fraction is None or not math.isfinite(fraction):
        return num(fraction)
    return f"{signed(100 * fraction, 1)}pp"


def measured_at(epoch: int) -> str:
    """Marks a figure measured in an earlier epoch: ``@e4`` (epoch counted from 1)."""
    return f"@e{epoch_number(epoch)}"


def rate(samples_per_s: float) -> str:
    return f"{samples_per_s:,.0f}/s"


def duration(seconds: float | None) -> str:
    """A span of wall time, to the second below an hour: ``42s``, ``3m07s``, ``2h05m``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    total = int(round(max(seconds, 0.0)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def plural(count: int, noun: str) -> str:
    """``1 env``, ``4 envs``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def fit(text: Text, width: int) -> Text:
    """``text`` cut to ``width`` cells (in place) without cutting a word in two: a cut that
    falls inside a word goes back to the last separator (`` · `` in the right half, else a
    space) and ends with ``…``, so ``exact, 2 coalitions`` never reads ``exact, 2 coaliti``."""
    if text.cell_len <= width:
        return text
    plain = text.plain
    if width <= 1 or not all(_in_word(char) for char in plain[width - 1 : width + 1]):
        text.truncate(width)  # at a word's edge (or in a chart): nothing is misread
        return text
    cut = plain.rfind(" · ", 0, width - 1)
    if cut < width // 2:
        cut = plain.rfind(" ", 0, width - 1)
    if cut <= 0:
        text.truncate(width)
        return text
    kept = plain[:cut].rstrip(" ·,;:")
    text.truncate(len(kept))
    text.append("…")
    return text


def _in_word(char: str) -> bool:
    """Part of a word or a figure (not a space, not a chart's block)."""
    return not char.isspace() and not "\u2580" <= char <= "\u259f"


def progress_label(progress: EpochProgress) -> str:
    """Where an epoch is: ``28/40`` batches trained, or ``val 2/5`` while it validates."""
    done = f"{progress.batch}/{progress.batches}"
    return done if progress.phase == "train" else f"val {done}"


def short_count(n: int) -> str:
    """``1,063`` -> ``1.1k``, ``94,762`` -> ``95k``, ``10,868,992`` -> ``10.9M``."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            value = n / scale
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return str(n)


SI_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def flops(n: int) -> str:
    """FLOPs with an SI prefix: ``3.2T``, ``950G``, ``12M``; ``0`` for none (an old recording).
    A figure that would round up to 1000 takes the next prefix (``1.0T``, not ``1000G``)."""
    for scale, prefix in SI_PREFIXES:
        if n >= scale * 0.9995:
            value = n / scale
            return f"{value:.1f}{prefix}" if value < 9.95 else f"{value:.0f}{prefix}"
    return str(n)


def host_label(kind: str, sizes: str, params: int) -> str:
    """``cnn 32-64-128 · 95k params``; ``""`` for a recording older than the host fields."""
    if not kind:
        return ""
    return f"{kind} {sizes} · {short_count(params)} params"


def memory_size(n: int) -> str:
    """``12 MiB``, ``4.3 GiB``."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{max(n / 2**20, 1):.0f} MiB"


def short_bytes(n: int) -> str:
    """``594M``, ``1.2G``, ``12G``: a size in a few cells (binary units), for the header."""
    for unit, scale in (("T", 2**40), ("G", 2**30), ("M", 2**20)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return f"{max(n / 2**10, 1):.0f}K"


def estimate_duration(seconds: float) -> str:
    """An estimated span: ``duration``, or ``<1s`` for a short one (never a plain ``0s``)."""
    return duration(seconds) if seconds >= 0.5 else "<1s"
