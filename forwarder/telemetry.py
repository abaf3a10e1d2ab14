"""Telemetry at the edge: Prometheus metrics, logging setup, and the health side port.

``Metrics`` owns its own ``CollectorRegistry`` (no globals) and implements the observer
protocols that ingest, the store, the dispatchers and the token sources call. Live
values (pending, budget, provider state) are read at scrape time by a collector.
Labels are bounded: provider names come from the config, risk levels and outcomes from
fixed sets; an IP or a message never becomes a label.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol, TextIO

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from forwarder import __version__
from forwarder.clock import Clock
from forwarder.signals import RiskLevel, Signal

__all__ = [
    "LiveSource",
    "Metrics",
    "configure_logging",
    "health_app",
    "redact",
]

_LEVELS = tuple(level.name for level in RiskLevel)
PROVIDER_STATES = ("ok", "failing", "rate_limited", "backing_off")


class LiveSource(Protocol):
    """What the scrape-time collector reads (implemented by ``app.Daemon``)."""

    def providers(self) -> Sequence[str]: ...

    def pending_counts(self, provider: str) -> Mapping[RiskLevel, int]: ...

    def dead_letter_count(self, provider: str) -> int: ...

    def oldest_pending_ms(self, provider: str) -> Mapping[RiskLevel, int]: ...

    def budget(self, provider: str) -> tuple[int, int, float, int | None]:
        """(calls per window, remaining, seconds to next slot, last server Remaining)."""
        ...

    def provider_status(self, provider: str) -> str: ...

    async def refresh(self) -> None:
        """Update values that need I/O (oldest pending ages) before a scrape."""
        ...


class _LiveCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[GaugeMetricFamily]:
        source = self._metrics.live
        if source is None:
            return
        now_ms = int(self._metrics.clock.time() * 1000)
        pending = GaugeMetricFamily(
            "forwarder_pending_signals",
            "Distinct IPs waiting to be sent (in flight included), by provider and risk level.",
            labels=["provider", "risk_level"],
        )
        oldest = GaugeMetricFamily(
            "forwarder_oldest_pending_age_seconds",
            "Age of the oldest pending signal (by its observation time); 0 when none waits.",
            labels=["provider", "risk_level"],
        )
        dead = GaugeMetricFamily(
            "forwarder_dead_letter_signals",
            "Signals in the dead-letter store (Okta rejected them with 400).",
            labels=["provider"],
        )
        calls = GaugeMetricFamily(
            "forwarder_rate_budget_calls",
            "Calls allowed per budget window (calls_per_minute).",
            labels=["provider"],
        )
        remaining = GaugeMetricFamily(
            "forwarder_rate_budget_remaining",
            "Calls still allowed in the current sliding window.",
            labels=["provider"],
        )
        next_slot = GaugeMetricFamily(
            "forwarder_next_call_slot_seconds",
            "Seconds until the provider may make its next call (0 = now).",
            labels=["provider"],
        )
        okta_remaining = GaugeMetricFamily(
            "forwarder_okta_rate_limit_remaining",
            "Last X-Rate-Limit-Remaining Okta sent for the events endpoint.",
            labels=["provider"],
        )
        state = GaugeMetricFamily(
            "forwarder_provider_state",
            "1 for the provider's current state (ok, failing, rate_limited, backing_off).",
            labels=["provider", "state"],
        )
        for provider in source.providers():
            counts = source.pending_counts(provider)
            ages = source.oldest_pending_ms(provider)
            for level in RiskLevel:
                pending.add_metric([provider, level.name], counts.get(level, 0))
                first = ages.get(level)
                age = max(0.0, (now_ms - first) / 1000) if first is not None else 0.0
                oldest.add_metric([provider, level.name], age)
            dead.add_metric([provider], source.dead_letter_count(provider))
            per_window, left, wait_s, server_left = source.budget(provider)
            calls.add_metric([provider], per_window)
            remaining.add_metric([provider], left)
            next_slot.add_metric([provider], wait_s)
            if server_left is not None:
                okta_remaining.add_metric([provider], server_left)
            current = source.provider_status(provider)
            for name in PROVIDER_STATES:
                state.add_metric([provider, name], 1.0 if name == current else 0.0)
        yield from (pending, oldest, dead, calls, remaining, next_slot, okta_remaining, state)


class Metrics:
    """Every metric forwarder exports, on a registry of its own."""

    def __init__(self, *, clock: Clock, registry: CollectorRegistry | None = None) -> None:
        self.clock = clock
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
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.coalesced = Counter(
            "forwarder_signals_coalesced",
            "Signals merged into an IP already waiting (replacing it or older than it).",
            ["provider"],
            registry=r,
        )
        self.expired = Counter(
            "forwarder_signals_expired",
            "Signals dropped unsent because expiresAt passed or they exceeded max_age_s.",
            ["provider"],
            registry=r,
        )
        self.capacity = Gauge(
            "forwarder_store_capacity",
            "Maximum distinct (provider, ip) pairs the store holds (max_pending).",
            registry=r,
        )
        self.calls = Counter(
            "forwarder_okta_calls",
            "Events calls made, by outcome.",
            ["provider", "outcome"],
            registry=r,
        )
        self.call_duration = Histogram(
            "forwarder_okta_call_duration_seconds",
            "Duration of events calls.",
            ["provider"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.subjects_sent = Counter(
            "forwarder_subjects_sent",
            "IPs delivered (accepted with 202), by risk level.",
            ["provider", "risk_level"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "forwarder_delivery_latency_seconds",
            "Time from ingest to Okta's 202, by risk level.",
            ["provider", "risk_level"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.retries = Counter(
            "forwarder_retries",
            "Batches kept for a later attempt, by reason.",
            ["provider", "reason"],
            registry=r,
        )
        self.dead_lettered_total = Counter(
            "forwarder_signals_dead_lettered",
            "Signals moved to the dead-letter store.",
            ["provider"],
            registry=r,
        )
        self.token_requests = Counter(
            "forwarder_token_requests",
            "Token requests to /oauth2/v1/token, by outcome.",
            ["provider", "outcome"],
            registry=r,
        )
        self.token_expiry = Gauge(
            "forwarder_token_expiry_timestamp_seconds",
            "When the cached access token will be renewed (epoch seconds).",
            ["provider"],
            registry=r,
        )
        r.register(_LiveCollector(self))

    def attach(self, live: LiveSource, *, providers: Sequence[str], capacity: int) -> None:
        """Connect the scrape-time collector and pre-create every labelled series."""
        self.live = live
        self.capacity.set(capacity)
        for p in providers:
            self.coalesced.labels(p)
            self.expired.labels(p)
            self.dead_lettered_total.labels(p)
            self.call_duration.labels(p)
            for outcome in (
                "accepted",
                "rate_limited",
                "client_error",
                "server_error",
                "timeout",
                "auth_error",
            ):
                self.calls.labels(p, outcome)
            for level in _LEVELS:
                self.subjects_sent.labels(p, level)
                self.delivery_latency.labels(p, level)

    # -- IngestObserver --------------------------------------------------------------
    def ingest_request(self, code: int, duration_s: float) -> None:
        self.ingest_requests.labels(str(code)).inc()
        self.ingest_duration.observe(duration_s)

    def signals_received(self, result: str, reason: str, count: int) -> None:
        if count:
            self.received_total.labels(result, reason).inc(count)

    # -- StoreObserver ---------------------------------------------------------------
    def signals_stored(self, provider: str, signals: int, new_rows: int) -> None:
        if signals > new_rows:
            self.coalesced.labels(provider).inc(signals - new_rows)

    def signals_expired(self, provider: str, count: int) -> None:
        self.expired.labels(provider).inc(count)

    # -- DispatchObserver ------------------------------------------------------------
    def call_finished(self, provider: str, outcome: str, duration_s: float) -> None:
        self.calls.labels(provider, outcome).inc()
        self.call_duration.labels(provider).observe(duration_s)

    def delivered(self, provider: str, signals: Sequence[Signal], now: float) -> None:
        now_ms = now * 1000
        for s in signals:
            level = s.risk.name
            self.subjects_sent.labels(provider, level).inc()
            self.delivery_latency.labels(provider, level).observe(
                max(0.0, (now_ms - s.received_ms) / 1000)
            )

    def retried(self, provider: str, reason: str) -> None:
        self.retries.labels(provider, reason).inc()

    def dead_lettered(self, provider: str, count: int) -> None:
        self.dead_lettered_total.labels(provider).inc(count)

    # -- tokens ----------------------------------------------------------------------
    def token_observer(self, provider: str) -> Callable[[str, float | None], None]:
        def observe(outcome: str, expires_at: float | None) -> None:
            self.token_requests.labels(provider, outcome).inc()
            if expires_at is not None:
                self.token_expiry.labels(provider).set(expires_at)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- logging -------------------------------------------------------------------------

_SECRET_KEYS = frozenset(
    {
        "token",
        "access_token",
        "assertion",
        "client_assertion",
        "authorization",
        "api_token",
        "password",
        "private_key",
        "secret",
        "d",
    }
)
_SECRET_TEXT = re.compile(
    r"(?i)\b(bearer|ssws|dpop)\s+[A-Za-z0-9._~+/=-]{8,}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
)


def redact(text: str) -> str:
    """Mask bearer/SSWS credentials and JWTs inside free text."""
    return _SECRET_TEXT.sub(
        lambda m: f"{m.group(1)} [redacted]" if m.group(1) else "[redacted-jwt]", text
    )


def _redact_processor(
    _logger: object, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif isinstance(value, str):
            event[key] = redact(value)
    return event


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once, from the CLI: JSON lines unless on a TTY (or asked)."""
    import logging  # noqa: PLC0415

    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_processor,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


# -- health side port ----------------------------------------------------------------

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def health_app(metrics: Metrics, readiness: Readiness) -> web.Application:
    """``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (store + ingest + providers)."""

    async def metrics_handler(_: web.Request) -> web.Response:
        if metrics.live is not None:
            await metrics.live.refresh()
        resp = web.Response(body=metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(_: web.Request) -> web.Response:
        # Liveness: the event loop answers. Never fails because Okta is down.
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, body = await readiness()
        return web.Response(
            text=json.dumps(body, indent=2),
            status=200 if ready else 503,
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
