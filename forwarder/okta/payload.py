"""RiskEvent payloads for ``POST /api/v1/risk/events/ip`` (pure, no I/O).

Rules (risk-api.md §3-§4, openapi-subset.yaml ``RiskEvent``):

* a JSON array of at most 20 RiskEvent objects, each with at most 50 subjects, so a
  full call carries 1000 IPs; subjects are never split into tiny events by differing
  timestamps: an event's ``timestamp`` is the newest observation among its subjects;
* ``expiresAt`` is set when subjects carry an expiry: subjects are sorted by expiry and
  grouped, and each event expires at the *earliest* expiry of its subjects, so no
  subject's expiry is ever extended; subjects without an expiry go in events without
  ``expiresAt`` (Okta then keeps them 24 h after consumption);
* times are UTC ``yyyy-MM-ddTHH:mm:ss.SSSZ``; ``riskLevel`` upper case; ``message``
  already fits ``^[a-zA-Z0-9 .\\-_]*$`` (sanitised at ingest), and is left out when empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forwarder.signals import RiskLevel, Signal, format_ms, sanitize_message

__all__ = ["build_risk_events", "group_subjects", "risk_events"]

#: Level names by value: ``Enum.name`` is a Python-level property, and 1,000 orgs each
#: sending 1,000 subjects a call made it a visible share of the daemon's CPU.
_NAMES = {int(level): level.name for level in RiskLevel}


def _chunks(items: list[Signal], size: int) -> list[list[Signal]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def group_subjects(
    signals: Sequence[Signal], *, max_events: int = 20, max_subjects: int = 50
) -> list[list[Signal]]:
    """Split ``signals`` into at most ``max_events`` groups of at most ``max_subjects``."""
    if len(signals) > max_events * max_subjects:
        raise ValueError(f"{len(signals)} subjects exceed {max_events} x {max_subjects} per call")
    expiring = sorted((s for s in signals if s.expires_ms is not None), key=_expiry)
    lasting = [s for s in signals if s.expires_ms is None]
    groups = _chunks(expiring, max_subjects) + _chunks(lasting, max_subjects)
    if len(groups) > max_events:
        # Only when both kinds end in a partial chunk: those two partial chunks fit in one
        # event, which takes the earlier expiry (shortening, never extending, the others).
        expiring_chunks = _chunks(expiring, max_subjects)
        lasting_chunks = _chunks(lasting, max_subjects)
        merged = expiring_chunks[-1] + lasting_chunks[-1]
        groups = [*expiring_chunks[:-1], merged, *lasting_chunks[:-1]]
    assert all(len(g) <= max_subjects for g in groups)
    assert len(groups) <= max_events
    return groups


def _expiry(signal: Signal) -> int:
    return signal.expires_ms if signal.expires_ms is not None else 0


def build_risk_events(
    signals: Sequence[Signal], *, max_events: int = 20, max_subjects: int = 50
) -> list[dict[str, Any]]:
    """The request body: a list of RiskEvent objects for ``signals``."""
    return risk_events(group_subjects(signals, max_events=max_events, max_subjects=max_subjects))


def risk_events(groups: Sequence[Sequence[Signal]]) -> list[dict[str, Any]]:
    """One RiskEvent per group, subjects in group order: ``events[i].subjects[j]`` is
    ``groups[i][j]`` (how an Okta 400 naming a subject is traced back to its signal)."""
    events: list[dict[str, Any]] = []
    # Detectors repeat a few messages across a batch: each is made to fit Okta once.
    fitted: dict[str, str] = {}
    for group in groups:
        newest = max(s.ts_ms for s in group)
        expiries = [s.expires_ms for s in group if s.expires_ms is not None]
        event: dict[str, Any] = {}
        if expiries:
            # An event must expire after it happened; a subject observed (with clock
            # skew) after a neighbour's expiry is dated just before that expiry.
            soonest = min(expiries)
            event["timestamp"] = format_ms(min(newest, soonest - 1))
            event["expiresAt"] = format_ms(soonest)
        else:
            event["timestamp"] = format_ms(newest)
        subjects: list[dict[str, str]] = []
        for s in group:
            subject = {"ip": s.ip, "riskLevel": _NAMES[s.risk]}
            message = fitted.get(s.message)
            if message is None:
                message = fitted[s.message] = sanitize_message(s.message)
            if message:
                subject["message"] = message
            subjects.append(subject)
        event["subjects"] = subjects
        events.append(event)
    return events
