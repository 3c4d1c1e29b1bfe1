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
        # Too small for its decimals: significant digits, never a zero that means "clip off".
        (1e-6, 2, "1e-06"),
        (1e-6, 4, "1e-06"),
        (1.234e-5, 3, "1.2e-05"),
        (0.00049, 3, "0.00049"),
        (-3e-7, 2, "-3e-07"),
        (0.0, 3, "0.000"),  # a true zero stays one
        (0.004, 2, "0.004"),
    ],
)
def test_num(value, digits, text) -> None:
    assert num(value, digits) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.25, "+0.250"),
        (-0.0001, "-0.0001"),  # small, not zero: its sign and size are the news
        (0.0, "+0.000"),
        (-0.0, "+0.000"),  # never -0.000
        (2e7, "+2.00e+07"),
        (-3e9, "-3.00e+09"),
    ],
)
def test_signed(value, text) -> None:
    assert signed(value) == text
