"""What a running daemon exports on /metrics, for tests that check files against it.

The reference (docs/metrics.md), the alert rules and the dashboard may only name series
that appear here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.harness import harness, ips

__all__ = ["Exported", "exported", "metric_names_in"]

#: PromQL identifiers that name a series of ours (functions and labels never match).
_SERIES = re.compile(r"\b((?:forwarder|process|python)_[a-z0-9_]+)")


@dataclass(frozen=True)
class Exported:
    """The exposition text and, per metric, its type and label names."""

    text: str
    #: Documented name (counters with ``_total``) -> (type, label names without ``le``).
    metrics: dict[str, tuple[str, frozenset[str]]]
    #: Every sample name a query can use (``_total``, ``_bucket``, ``_sum``, ``_count``...).
    sample_names: frozenset[str]


async def exported(tmp: Path) -> Exported:
    """Run a daemon with one provider until it delivered HIGH and LOW, then read /metrics."""
    async with harness(tmp) as h:
        cid = h.add_provider("acme")
        await h.start()
        status, _ = await h.post(
            [{"ip": ip, "riskLevel": "HIGH"} for ip in ips(3)]
            + [{"ip": ip, "riskLevel": "LOW"} for ip in ips(3, offset=10)]
        )
        assert status == 202
        await h.until(lambda: len(h.delivered(cid)) >= 6)
        status, text = await h.get("/metrics")
        assert status == 200
    metrics: dict[str, tuple[str, frozenset[str]]] = {}
    samples: set[str] = set()
    for family in text_string_to_metric_families(text):
        name = family.name
        if family.type == "counter" and not name.endswith("_total"):
            name += "_total"
        labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
        metrics[name] = (family.type, labels)
        samples.update(s.name for s in family.samples)
    return Exported(text=text, metrics=metrics, sample_names=frozenset(samples))


def metric_names_in(query: str) -> set[str]:
    """Series names a PromQL expression refers to (ours and the process collectors')."""
    return set(_SERIES.findall(query))
