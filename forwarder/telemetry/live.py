"""Scrape-time gauges: backlog, budget and provider state read from the running daemon.

These values change without an event (time passes, a window reopens), so they are not
kept in metric objects: ``LiveCollector`` asks a :class:`LiveSource` (``app.Daemon``) at
every scrape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from forwarder.clock import Clock
from forwarder.signals import RiskLevel
from forwarder.telemetry.labels import PROVIDER_STATES

__all__ = ["BudgetView", "LiveCollector", "LiveSource", "drain_estimate_s"]


def drain_estimate_s(
    *, pending: int, per_call: int, calls: int, window_s: float, next_call_s: float
) -> float:
    """Seconds to send ``pending`` IPs at this budget if nothing else arrives.

    The wait for the next call slot, then ``window_s / calls`` for every further full
    call: the steady-state rate, which overstates a burst that fits in one window by
    less than a window.
    """
    if pending <= 0:
        return 0.0
    needed = math.ceil(pending / per_call)
    return max(0.0, next_call_s) + (needed - 1) * window_s / calls


@dataclass(frozen=True, slots=True)
class BudgetView:
    """One provider's call budget as the scrape sees it."""

    calls: int
    window_s: float
    remaining: int
    next_call_s: float
    server_remaining: int | None
    drain_s: float


class LiveSource(Protocol):
    """What the scrape-time collector reads (implemented by ``app.Daemon``)."""

    def providers(self) -> Sequence[str]: ...

    def is_ready(self) -> bool:
        """What ``/readyz`` last knew: store writable and ingest listening."""
        ...

    def store_entries(self) -> int:
        """Entries stored (a broadcast once, a targeted one per provider): capacity use."""
        ...

    def pending_counts(self, provider: str) -> Mapping[RiskLevel, int]: ...

    def oldest_pending_ms(self, provider: str) -> Mapping[RiskLevel, int]: ...

    def dead_letter_count(self, provider: str) -> int: ...

    def budget(self, provider: str) -> BudgetView: ...

    def provider_status(self, provider: str) -> str: ...

    async def refresh(self) -> None:
        """Update values that need I/O (oldest pending ages) before a scrape."""
        ...


class LiveCollector(Collector):
    """Gauges computed at scrape time from the daemon's live state (none until attached)."""

    def __init__(self, source: Callable[[], LiveSource | None], clock: Clock) -> None:
        self._source = source
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return self._families()

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        def gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        return [
            gauge("forwarder_ready", "1 when /readyz answers 200 (store writable, ingest up)."),
            gauge(
                "forwarder_store_entries",
                "Entries stored (a broadcast once, a targeted one per provider); compare with "
                "forwarder_store_capacity.",
            ),
            gauge(
                "forwarder_pending_signals",
                "Distinct IPs waiting to be sent (in flight included).",
                "provider",
                "risk_level",
            ),
            gauge(
                "forwarder_oldest_pending_age_seconds",
                "Age of the oldest waiting signal by its observation timestamp; 0 when none.",
                "provider",
                "risk_level",
            ),
            gauge(
                "forwarder_dead_letter_signals",
                "Signals in the dead-letter store (Okta rejected them with 400).",
                "provider",
            ),
            gauge(
                "forwarder_rate_budget_calls",
                "Calls allowed per budget window (calls_per_minute).",
                "provider",
            ),
            gauge(
                "forwarder_rate_budget_window_seconds",
                "Length of the budget window (window_s).",
                "provider",
            ),
            gauge(
                "forwarder_rate_budget_remaining",
                "Calls still allowed now in the sliding window (0 while Okta said wait).",
                "provider",
            ),
            gauge(
                "forwarder_next_call_slot_seconds",
                "Seconds until the next call may go (budget, Okta's reset, backoff, pacing).",
                "provider",
            ),
            gauge(
                "forwarder_okta_rate_limit_remaining",
                "Last X-Rate-Limit-Remaining Okta sent on the events endpoint.",
                "provider",
            ),
            gauge(
                "forwarder_backlog_drain_seconds",
                "Estimated seconds to send every pending IP at the current budget.",
                "provider",
            ),
            gauge(
                "forwarder_provider_state",
                "1 for the provider's current state (ok, failing, rate_limited, backing_off).",
                "provider",
                "state",
            ),
        ]

    def collect(self) -> Iterable[Metric]:
        source = self._source()
        if source is None:
            return
        families = self._families()
        by_name = {f.name: f for f in families}
        now_ms = int(self._clock.time() * 1000)
        by_name["forwarder_ready"].add_metric([], 1.0 if source.is_ready() else 0.0)
        by_name["forwarder_store_entries"].add_metric([], source.store_entries())
        for provider in source.providers():
            p = [provider]
            counts = source.pending_counts(provider)
            oldest = source.oldest_pending_ms(provider)
            for level in RiskLevel:
                by_name["forwarder_pending_signals"].add_metric(
                    [provider, level.name], counts.get(level, 0)
                )
                first = oldest.get(level) if counts.get(level, 0) else None
                age = max(0.0, (now_ms - first) / 1000) if first is not None else 0.0
                by_name["forwarder_oldest_pending_age_seconds"].add_metric(
                    [provider, level.name], age
                )
            by_name["forwarder_dead_letter_signals"].add_metric(
                p, source.dead_letter_count(provider)
            )
            budget = source.budget(provider)
            by_name["forwarder_rate_budget_calls"].add_metric(p, budget.calls)
            by_name["forwarder_rate_budget_window_seconds"].add_metric(p, budget.window_s)
            by_name["forwarder_rate_budget_remaining"].add_metric(p, budget.remaining)
            by_name["forwarder_next_call_slot_seconds"].add_metric(p, budget.next_call_s)
            if budget.server_remaining is not None:
                by_name["forwarder_okta_rate_limit_remaining"].add_metric(
                    p, budget.server_remaining
                )
            by_name["forwarder_backlog_drain_seconds"].add_metric(p, budget.drain_s)
            current = source.provider_status(provider)
            for state in PROVIDER_STATES:
                by_name["forwarder_provider_state"].add_metric(
                    [provider, state], 1.0 if state == current else 0.0
                )
        yield from families
