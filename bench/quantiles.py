"""Percentiles of measured values, the one way every part of the harness summarizes them."""

from collections.abc import Iterable


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of sorted `values`, interpolating linearly; None when empty."""
    if not values:
        return None
    position = q * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def summarize(values: Iterable[float], qs: Iterable[float] = (0.5, 0.95, 0.99)) -> dict:
    """`{"n", "p50", "p95", "p99", "max"}` (names follow `qs`), values rounded to 0.001."""
    ordered = sorted(values)
    summary: dict = {"n": len(ordered)}
    for q in qs:
        value = percentile(ordered, q)
        summary[f"p{round(q * 100)}"] = None if value is None else round(value, 3)
    summary["max"] = round(ordered[-1], 3) if ordered else None
    return summary
