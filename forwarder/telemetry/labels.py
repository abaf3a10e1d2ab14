"""The fixed label values forwarder's metrics use: nothing else ever becomes a label.

An observer reporting a value outside these sets is counted as ``OTHER``, so no label
can grow without bound. docs/metrics.md explains each value.
"""

from __future__ import annotations

from collections.abc import Iterable

from forwarder.signals import RiskLevel

__all__ = [
    "CALL_OUTCOMES",
    "INGEST_CODES",
    "OTHER",
    "PROVIDER_STATES",
    "REJECT_REASONS",
    "RETRY_REASONS",
    "RISK_LEVELS",
    "TOKEN_OUTCOMES",
    "bounded",
]

OTHER = "other"
RISK_LEVELS = tuple(level.name for level in RiskLevel)
PROVIDER_STATES = ("ok", "failing", "rate_limited", "backing_off")
#: How an events call ended: 202; 429; 400 and other 4xx; 5xx or a broken connection;
#: no answer within timeout_s; 401/403/404 (token refused, app not allowed, no endpoint).
CALL_OUTCOMES = (
    "accepted",
    "rate_limited",
    "client_error",
    "server_error",
    "timeout",
    "auth_error",
)
#: Why a batch was kept for later: 429; a 401 (new token, same batch); no token could be
#: had; 5xx or connection error; timeout; another 4xx that says nothing of the payload;
#: a 413 (the next call carries half); the provider is failing (operator must act); an
#: unexpected error in forwarder itself or its store (logged as dispatch_failed).
RETRY_REASONS = (
    "rate_limited",
    "auth",
    "token",
    "server_error",
    "timeout",
    "client_error",
    "too_large",
    "failing",
    "internal",
)
TOKEN_OUTCOMES = ("success", "error", "timeout", "invalid_credentials")
#: Rejections that carry a signal count (401/413/415/malformed bodies are only requests).
REJECT_REASONS = ("invalid", "store_full", "store_error")
INGEST_CODES = ("202", "400", "401", "413", "415", "503")


def bounded(value: str, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed``, else ``OTHER``."""
    return value if value in allowed else OTHER
