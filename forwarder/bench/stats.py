"""Small numeric helpers shared by the scenarios: percentiles, ratios, summing counts, merging
load results."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["add_counts", "merge_load", "percentile", "ratio"]


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) of already sorted values by nearest rank; None when empty."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` rounded to 3 places; None when either is missing or 0."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def add_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Counts by key (e.g. HTTP status) summed over several such mappings."""
    total: dict[str, int] = {}
    for mapping in counts:
        for key, n in mapping.items():
            total[key] = total.get(key, 0) + n
    return total


def merge_load(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several load processes that shared a measurement window."""
    seconds = max((r["seconds"] for r in results), default=0.0)
    requests = sum(r["requests"] for r in results)
    signals = sum(r["signals"] for r in results)
    latencies = sorted(x for r in results for x in r["latencies_ms"])
    statuses = add_counts(r["statuses"] for r in results)
    return {
        "requests_per_s": round(requests / seconds, 1) if seconds else None,
        "signals_per_s": round(signals / seconds, 1) if seconds else None,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "seconds": round(seconds, 3),
        "requests": requests,
        "statuses": statuses,
        "accepted_signals": sum(r["accepted_signals"] for r in results),
        "load_cpu": round(sum(r["cpu_s"] for r in results) / seconds, 2) if seconds else None,
    }
