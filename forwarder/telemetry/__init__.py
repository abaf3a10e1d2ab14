"""Telemetry at the edge: Prometheus metrics, the health side port, logging setup.

* :mod:`~forwarder.telemetry.metrics`: ``Metrics`` (its own ``CollectorRegistry``, no
  globals) implementing the observer protocols.
* :mod:`~forwarder.telemetry.live`: scrape-time gauges read from a ``LiveSource``.
* :mod:`~forwarder.telemetry.labels`: the fixed label values (bounded cardinality).
* :mod:`~forwarder.telemetry.health`: ``/metrics``, ``/healthz``, ``/readyz``.
* :mod:`~forwarder.telemetry.logs`: ``configure_logging`` and secret redaction.
"""

from __future__ import annotations

from forwarder.telemetry.health import Readiness, health_app, readiness_body
from forwarder.telemetry.live import BudgetView, LiveSource, drain_estimate_s
from forwarder.telemetry.logs import configure_logging, redact
from forwarder.telemetry.metrics import Metrics

__all__ = [
    "BudgetView",
    "LiveSource",
    "Metrics",
    "Readiness",
    "configure_logging",
    "drain_estimate_s",
    "health_app",
    "readiness_body",
    "redact",
]
