"""Number formatting: what an operator reads must fit and must be true."""

from __future__ import annotations

import math

import pytest

from overwatch.widgets.formatting import num, signed


@pytest.mark.parametrize(
    ("value", "digits", "text"),
    [
        (0.5, 3, "0.500"),
        (999_999.0, 1, "999999.0"),
        (1e40, 4, "1.00e+40"),  # a refused clip threshold in the log and its toast
        (-2.5e7, 3, "-2.50e+07"),  # a diverging loss
        (math.inf, 3, "inf"),
        (math.nan, 3, "nan"),
        (None, 3, "-"),
    ],
)
def test_num(value, digits, text) -> None:
    assert num(value, digits) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.25, "+0.250"), (-0.0001, "+0.000"), (2e7, "+2.00e+07"), (-3e9, "-3.00e+09")],
)
def test_signed(value, text) -> None:
    assert signed(value) == text
