"""The config's checks: each raises ValueError("<name> must ..., got <value>"), one line that
the CLI prints as it is (exit 2)."""

from __future__ import annotations

import math
import re
import typing
from typing import Any, Literal

import msgspec

MAX_COUNT = 2**63 - 1  # the largest count a recording holds (int64)


def check_count(name: str, value: int, *, low: int, high: int = MAX_COUNT, why: str = "") -> None:
    if low <= value <= high:
        return
    if why and value > high:  # a bound on size: the reason says why it is there
        raise ValueError(f"{name} must be within {low}..{high} ({why}), got {value}")
    if high != MAX_COUNT and not why:
        raise ValueError(f"{name} must be within {low}..{high}, got {value}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    raise ValueError(f"{name} must be <= 2**63 - 1 (recorded as int64), got {value}")


def check_real(
    name: str,
    value: float,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    open_low: bool = False,
) -> None:
    above_low = value > low if open_low else value >= low
    if math.isfinite(value) and above_low and value <= high:
        return
    if high != math.inf:
        wanted = f"a finite number within {low:g}..{high:g}"
    elif low != -math.inf:
        wanted = f"a finite number {'>' if open_low else '>='} {low:g}"
    else:
        wanted = "a finite number"
    raise ValueError(f"{name} must be {wanted}, got {value}")


def choices(tp: Any) -> tuple[str, ...] | None:
    """The values a ``Literal`` type (or an optional one) allows; None for any other type."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is Literal:
        return tuple(args)
    if len(args) == 1 and typing.get_origin(args[0]) is Literal:
        return typing.get_args(args[0])
    return None


def check_types(struct: msgspec.Struct) -> None:
    """msgspec's validation of every field's type, for a struct built in Python (which msgspec
    does not check): a ValueError naming the dotted key, e.g. ``amp must be one of ...``."""
    try:
        msgspec.convert(msgspec.to_builtins(struct), type(struct))
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at `$.")
        path = where.rstrip("`")
        if not message or not re.fullmatch(r"[a-z_.]+", path):  # not a field: say it as it is
            raise ValueError(str(exc)) from None
        value: Any = struct
        tp: Any = type(struct)
        for part in path.split("."):
            tp = typing.get_type_hints(tp)[part]
            value = getattr(value, part)
        allowed = choices(tp)
        if allowed is not None:
            raise ValueError(f"{path} must be one of {', '.join(allowed)}, got {value!r}") from None
        raise ValueError(f"{path}: {message[0].lower()}{message[1:]}") from None  # the type


def check_plant(entries: tuple[str, ...]) -> None:
    slots = []
    for entry in entries:
        slot, sep, blueprint = entry.partition(":")
        if not sep or not slot.strip() or not blueprint.strip() or ":" in blueprint:
            raise ValueError(f"plant entries are slot:blueprint, got {entry!r}")
        slots.append(slot)
    if len(set(slots)) != len(slots):
        raise ValueError(f"plant names a slot twice: {list(entries)}")


def check_names(name: str, values: tuple[str, ...], *, allow_empty: bool = True) -> None:
    if not values and not allow_empty:
        raise ValueError(f"{name} must name at least one (or be none for all)")
    for value in values:
        if not value.strip():
            raise ValueError(f"{name} must not contain an empty name, got {list(values)}")
