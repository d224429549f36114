"""Small statistics helpers: percentiles of latency samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of `values` by nearest rank; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return float(ordered[min(rank, len(ordered)) - 1])


def latency_ms(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50, p99, mean and max of nanosecond samples, in milliseconds."""
    if not samples_ns:
        return {"p50": math.nan, "p99": math.nan, "mean": math.nan, "max": math.nan, "n": 0}
    ordered = sorted(samples_ns)
    return {
        "p50": percentile(ordered, 50) / 1e6,
        "p99": percentile(ordered, 99) / 1e6,
        "mean": sum(ordered) / len(ordered) / 1e6,
        "max": ordered[-1] / 1e6,
        "n": len(ordered),
    }


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)
