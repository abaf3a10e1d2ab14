"""Every Prometheus metric forwarder exports, on a registry of its own.

``Metrics`` implements the observer protocols that ingest, the store, the dispatchers
and the token sources call; values that change without an event (backlog, budget,
provider state) are read at scrape time from a :class:`LiveSource` (``app.Daemon``).

Per-org series are limited to what SREs alert and graph on (29 per provider, counted in
docs/metrics.md): at 1,000 orgs a scrape stays a few MB. Call durations, delivery
latency, retries, token requests and coalescing are exported for the whole process;
``forwarder status`` and ``/readyz`` give the per-org detail.

Labels are bounded by construction: ``provider`` is a configured provider name,
``risk_level``, ``outcome``, ``reason``, ``code`` and ``state`` come from the fixed
tuples in :mod:`~forwarder.telemetry.labels`, and anything else an observer reports is
counted as ``other``. An IP, a message or an error text never becomes a label. The
reference is ``docs/metrics.md`` (a test keeps it equal to what this module exports).
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from forwarder import __version__
from forwarder.clock import Clock
from forwarder.signals import RiskLevel, Signal
from forwarder.telemetry.labels import (
    CALL_OUTCOMES,
    INGEST_CODES,
    REJECT_REASONS,
    RETRY_REASONS,
    RISK_LEVELS,
    TOKEN_OUTCOMES,
    bounded,
)
from forwarder.telemetry.live import LiveCollector, LiveSource

__all__ = ["Metrics"]

# Buckets for a world of three calls a minute: an immediate HIGH (< 1 s), the next call
# slot (20 s), the next window (60 s), a backlog of minutes to hours, up to max_age_s.
_LATENCY_BUCKETS = (
    0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600,
    7200, 14400, 28800, 86400,
)  # fmt: skip
_CALL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _WithoutCreated(Collector):
    """The registry minus ``*_created`` samples, which would double every counter's series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            suffix = f"{family.name}_created"
            family.samples = [s for s in family.samples if s.name != suffix]
            yield family


class Metrics:
    """Every metric forwarder exports, on a registry of its own."""

    def __init__(
        self,
        *,
        clock: Clock,
        providers: Sequence[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.clock = clock
        self.providers: set[str] = set(providers)
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.live: LiveSource | None = None
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge(
            "forwarder_build_info",
            "Build information (value is always 1).",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        # -- intake
        self.received_total = Counter(
            "forwarder_signals_received",
            "Signals received on the ingest API, by result and rejection reason.",
            ["result", "reason"],
            registry=r,
        )
        self.ingest_requests = Counter(
            "forwarder_ingest_requests",
            "Ingest API requests by HTTP status code.",
            ["code"],
            registry=r,
        )
        self.ingest_duration = Histogram(
            "forwarder_ingest_request_duration_seconds",
            "Ingest request duration, including the durable commit.",
            buckets=_INGEST_BUCKETS,
            registry=r,
        )
        # -- store
        self.coalesced = Counter(
            "forwarder_signals_coalesced",
            "Signals merged into an IP already waiting (replacing it or older than it).",
            registry=r,
        )
        self.expired = Counter(
            "forwarder_signals_expired",
            "Signals dropped unsent because expiresAt passed or they exceeded max_age_s.",
            ["provider"],
            registry=r,
        )
        self.dead_lettered_total = Counter(
            "forwarder_signals_dead_lettered",
            "Signals moved to the dead-letter store.",
            ["provider"],
            registry=r,
        )
        self.capacity = Gauge(
            "forwarder_store_capacity",
            "Entries the store holds before ingest answers 503 (a broadcast counts once).",
            registry=r,
        )
        self.max_age = Gauge(
            "forwarder_signal_max_age_seconds",
            "Signals older than this (by timestamp) are dropped unsent (max_age_s).",
            registry=r,
        )
        # -- delivery
        self.calls = Counter(
            "forwarder_okta_calls",
            "Events calls made (each spends budget), by outcome.",
            ["provider", "outcome"],
            registry=r,
        )
        self.call_duration = Histogram(
            "forwarder_okta_call_duration_seconds",
            "Duration of events calls, request sent to answer read (every provider).",
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.subjects_sent = Counter(
            "forwarder_subjects_sent",
            "IPs delivered (in calls Okta answered 202), by risk level.",
            ["provider", "risk_level"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "forwarder_delivery_latency_seconds",
            "Time from ingest to Okta's 202, by risk level (every provider).",
            ["risk_level"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "forwarder_retries",
            "Batches kept for a later attempt, by reason (every provider).",
            ["reason"],
            registry=r,
        )
        # -- tokens
        self.token_requests = Counter(
            "forwarder_token_requests",
            "Token requests to /oauth2/v1/token, by outcome (every provider).",
            ["outcome"],
            registry=r,
        )
        self.token_expiry = Gauge(
            "forwarder_token_expiry_timestamp_seconds",
            "When the cached access token is renewed (epoch s; shortly before Okta's expiry).",
            ["provider"],
            registry=r,
        )
        # -- configuration (Prometheus's own names for the same facts)
        self.reload_ok = Gauge(
            "forwarder_config_last_reload_successful",
            "1 when the last config load (start or SIGHUP) was applied, 0 when it was refused.",
            registry=r,
        )
        self.reload_at = Gauge(
            "forwarder_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded and applied (epoch seconds).",
            registry=r,
        )
        r.register(LiveCollector(lambda: self.live, clock))
        self._precreate()

    def _precreate(self) -> None:
        # Every series exists from the start, so rate() and absent() behave from scrape one.
        self.received_total.labels("accepted", "")
        for reason in REJECT_REASONS:
            self.received_total.labels("rejected", reason)
        for code in INGEST_CODES:
            self.ingest_requests.labels(code)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        for outcome in TOKEN_OUTCOMES:
            self.token_requests.labels(outcome)
        for level in RISK_LEVELS:
            self.delivery_latency.labels(level)
        for p in sorted(self.providers):
            self._precreate_provider(p)

    def _precreate_provider(self, p: str) -> None:
        self.expired.labels(p)
        self.dead_lettered_total.labels(p)
        for outcome in CALL_OUTCOMES:
            self.calls.labels(p, outcome)
        for level in RISK_LEVELS:
            self.subjects_sent.labels(p, level)

    def add_providers(self, names: Iterable[str]) -> None:
        """Providers added by a reload: their series exist from now on, at 0."""
        for name in names:
            if name not in self.providers:
                self.providers.add(name)
                self._precreate_provider(name)

    def remove_providers(self, names: Iterable[str]) -> None:
        """Providers removed by a reload (their dispatcher has stopped): drop their series."""
        for name in names:
            if name not in self.providers:
                continue
            self.providers.discard(name)
            self.expired.remove(name)
            self.dead_lettered_total.remove(name)
            for outcome in CALL_OUTCOMES:
                self.calls.remove(name, outcome)
            for level in RISK_LEVELS:
                self.subjects_sent.remove(name, level)
            with contextlib.suppress(KeyError):
                self.token_expiry.remove(name)

    def config_loaded(self, *, ok: bool, at: float) -> None:
        """A config load (start or SIGHUP) was applied (``ok``) or refused."""
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_at.set(at)

    def attach(self, live: LiveSource, *, capacity: int, max_age_s: float) -> None:
        """Connect the scrape-time collector and record the static limits."""
        self.live = live
        self.capacity.set(capacity)
        self.max_age.set(max_age_s)

    def _provider(self, provider: str) -> str:
        return bounded(provider, self.providers)

    # -- IngestObserver --------------------------------------------------------------
    def ingest_request(self, code: int, duration_s: float) -> None:
        self.ingest_requests.labels(bounded(str(code), INGEST_CODES)).inc()
        self.ingest_duration.observe(duration_s)

    def signals_received(self, result: str, reason: str, count: int) -> None:
        if not count:
            return
        if result == "accepted":
            self.received_total.labels("accepted", "").inc(count)
        else:
            self.received_total.labels("rejected", bounded(reason, REJECT_REASONS)).inc(count)

    # -- StoreObserver ---------------------------------------------------------------
    def signals_stored(self, provider: str, signals: int, new_rows: int) -> None:
        if signals > new_rows:
            self.coalesced.inc(signals - new_rows)

    def signals_expired(self, provider: str, count: int) -> None:
        self.expired.labels(self._provider(provider)).inc(count)

    # -- DispatchObserver ------------------------------------------------------------
    def call_finished(self, provider: str, outcome: str, duration_s: float) -> None:
        p = self._provider(provider)
        self.calls.labels(p, bounded(outcome, CALL_OUTCOMES)).inc()
        self.call_duration.observe(duration_s)

    def delivered(self, provider: str, signals: Sequence[Signal], now: float) -> None:
        p = self._provider(provider)
        now_ms = now * 1000
        # One series lookup per level, not per subject (1,000 orgs x 1,000 subjects a call).
        by_level: dict[int, list[int]] = {}
        for s in signals:
            by_level.setdefault(s.risk, []).append(s.received_ms)
        for risk, received in by_level.items():
            level = RiskLevel(risk).name
            self.subjects_sent.labels(p, level).inc(len(received))
            observe = self.delivery_latency.labels(level).observe
            for received_ms in received:
                observe(max(0.0, (now_ms - received_ms) / 1000))

    def retried(self, provider: str, reason: str) -> None:
        self.retries.labels(bounded(reason, RETRY_REASONS)).inc()

    def dead_lettered(self, provider: str, count: int) -> None:
        self.dead_lettered_total.labels(self._provider(provider)).inc(count)

    # -- tokens ----------------------------------------------------------------------
    def token_observer(self, provider: str) -> Callable[[str, float | None], None]:
        """The ``TokenSource`` observer for ``provider``."""

        def observe(outcome: str, expires_at: float | None) -> None:
            self.token_requests.labels(bounded(outcome, TOKEN_OUTCOMES)).inc()
            p = self._provider(provider)
            if expires_at is not None and p in self.providers:
                self.token_expiry.labels(p).set(expires_at)

        return observe

    def render(self) -> bytes:
        """The text exposition served on ``/metrics``."""
        return generate_latest(_WithoutCreated(self.registry))
