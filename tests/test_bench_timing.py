"""The bench's round order: every measure takes every place in a round equally often."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from _timing import interleave, median_ratio, round_order  # noqa: E402


def test_two_measures_alternate_first_place_in_pairs() -> None:
    orders = ["".join(round_order("AB", r)) for r in range(4)]
    assert orders == ["AB", "BA", "BA", "AB"]


def test_three_measures_go_through_all_six_orders_in_six_rounds() -> None:
    orders = ["".join(round_order("ABC", r)) for r in range(6)]
    assert sorted(orders) == sorted(["ABC", "ACB", "BAC", "BCA", "CAB", "CBA"])
    middles = Counter(order[1] for order in orders)
    assert middles == {"A": 2, "B": 2, "C": 2}


def test_interleave_keeps_the_rounds_after_the_warm_up_in_run_order() -> None:
    calls: list[str] = []

    def measure(name: str):
        def run() -> float:
            calls.append(name)
            return float(len(calls))

        return run

    kept = interleave({n: measure(n) for n in "AB"}, repeats=3, warmup=1)
    assert "".join(calls) == "ABBABAAB"
    assert kept == {"A": [4.0, 6.0, 7.0], "B": [3.0, 5.0, 8.0]}
    assert median_ratio(kept["A"], kept["B"]) == 6.0 / 5.0  # of 4/3, 6/5, 7/8
