"""The call load's statistics and ids: nearest-rank percentiles, status-code counts, object ids."""

from __future__ import annotations

from tests.helpers.call_load import Outcome, codes, object_ids, percentile


def test_percentile_is_the_nearest_rank_and_zero_without_values() -> None:
    """p50 of 1..10 is 5, p99 and p100 are the largest, a tiny share the smallest; none: 0."""
    values = [float(n) for n in range(10, 0, -1)]
    assert percentile(values, 0.5) == 5.0
    assert percentile(values, 0.99) == 10.0
    assert percentile(values, 1.0) == 10.0
    assert percentile(values, 0.001) == 1.0
    assert percentile([], 0.99) == 0.0


def test_codes_counts_each_status_code() -> None:
    """Every outcome counts once, under ``OK`` or its code's name."""
    outcomes = [
        Outcome(0, "w-0", 0.0, 1.0, "OK", 7),
        Outcome(1, "w-1", 0.0, 1.0, "UNAVAILABLE", 0, "gone"),
        Outcome(0, "w-0", 1.0, 2.0, "OK", 7),
    ]
    assert codes(outcomes) == {"OK": 2, "UNAVAILABLE": 1}


def test_object_ids_are_numbered_from_zero_and_filtered_by_where() -> None:
    """Without a filter, the first ids in order; with one, the first ids it accepts."""
    assert object_ids("w", 3) == ["w-0", "w-1", "w-2"]
    assert object_ids("p", 2, lambda i: int(i.rpartition("-")[2]) % 3 == 2) == ["p-2", "p-5"]
