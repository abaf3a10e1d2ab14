"""Validation of a ``POST /api/v1/risk/events/ip`` body: pure, no I/O.

The rules are the ``RiskEvent`` / ``RiskEventSubject`` schemas (risk-api.md §3, openapi
subset) plus the prose-only limits of §4 (20 events per call, 50 subjects per event).
Every problem is reported, each as ``"<path>: <what is wrong>"`` with a path such as
``events[3].subjects[7].riskLevel``, ready to be an Okta ``errorCauses[].errorSummary``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "MAX_CAUSES",
    "MESSAGE_MAX_LENGTH",
    "RISK_LEVELS",
    "format_timestamp",
    "parse_json",
    "parse_timestamp",
    "validate_risk_events",
]

#: ``RiskEventSubjectRiskLevel``: upper case only.
RISK_LEVELS = frozenset({"HIGH", "LOW", "MEDIUM"})
#: ``RiskEventSubject.message``: ``maxLength: 512``.
MESSAGE_MAX_LENGTH = 512
#: At most this many causes are listed; the rest are summarised in one last cause.
MAX_CAUSES = 200

# RiskEventSubject.message pattern ^[a-zA-Z0-9 .\-_]*$ (spec since 2024-06); ASCII only.
_MESSAGE_RE = re.compile(r"[a-zA-Z0-9 .\-_]*")
# yyyy-MM-dd'T'HH:mm:ss.SSS'Z' (RiskEvent.timestamp / expiresAt descriptions).
_TIMESTAMP_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
_EVENT_KEYS = ("expiresAt", "subjects", "timestamp")
_SUBJECT_KEYS = ("ip", "message", "riskLevel")
_LEVELS_TEXT = ", ".join(sorted(RISK_LEVELS))
_TIMESTAMP_FORMAT = "yyyy-MM-ddTHH:mm:ss.SSSZ"


class _Problems:
    """Collects causes, listing at most :data:`MAX_CAUSES` of them."""

    def __init__(self) -> None:
        self.causes: list[str] = []
        self.dropped = 0

    def add(self, path: str, what: str) -> None:
        if len(self.causes) < MAX_CAUSES:
            self.causes.append(f"{path}: {what}")
        else:
            self.dropped += 1

    def result(self) -> list[str]:
        if self.dropped:
            return [*self.causes, f"and {self.dropped} more problems not listed"]
        return list(self.causes)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON (UTF-8, no NaN/Infinity); ``ValueError`` for anything else.

    Deep nesting and over-long integers also give ``ValueError``, never a crash.
    """
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def parse_timestamp(value: str) -> float | None:
    """Epoch seconds of a ``yyyy-MM-ddTHH:mm:ss.SSSZ`` string; None when not a real date."""
    if not _TIMESTAMP_RE.fullmatch(value):
        return None
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return moment.timestamp()


def format_timestamp(epoch_s: float) -> str:
    """``epoch_s`` in Okta's ``yyyy-MM-ddTHH:mm:ss.SSSZ`` format."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _short(key: str) -> str:
    return key if len(key) <= 64 else key[:61] + "..."


def _unknown_keys(
    obj: Mapping[str, Any], allowed: tuple[str, ...], path: str, out: _Problems
) -> None:
    for key in obj:
        if key not in allowed:
            out.add(f"{path}.{_short(key)}", f"unknown property (allowed: {', '.join(allowed)})")


def _check_time(value: Any, path: str, out: _Problems) -> float | None:
    if not isinstance(value, str):
        out.add(path, f"must be a string in the format {_TIMESTAMP_FORMAT}")
        return None
    if not _TIMESTAMP_RE.fullmatch(value):
        out.add(path, f"must be in the format {_TIMESTAMP_FORMAT} (UTC, milliseconds)")
        return None
    epoch = parse_timestamp(value)
    if epoch is None:
        out.add(path, "is not a real date")
    return epoch


def _check_event(event: Any, path: str, now: float, max_subjects: int, out: _Problems) -> None:
    if not isinstance(event, dict):
        out.add(path, "must be a RiskEvent object")
        return
    _unknown_keys(event, _EVENT_KEYS, path, out)
    timestamp = (
        _check_time(event["timestamp"], f"{path}.timestamp", out) if "timestamp" in event else None
    )
    if "expiresAt" in event:
        expires_at = _check_time(event["expiresAt"], f"{path}.expiresAt", out)
        if expires_at is not None:
            if timestamp is not None and expires_at <= timestamp:
                out.add(f"{path}.expiresAt", "must be after timestamp")
            # A subject must never be sent after its expiry: the sandbox refuses it so that
            # a sender forwarding stale signals fails loudly (Okta itself does not document this).
            if expires_at <= now:
                out.add(
                    f"{path}.expiresAt",
                    f"must be in the future (the org's clock reads {format_timestamp(now)})",
                )
    if "subjects" not in event:
        out.add(f"{path}.subjects", "is required")
        return
    subjects = event["subjects"]
    if not isinstance(subjects, list):
        out.add(f"{path}.subjects", "must be an array of RiskEventSubject objects")
        return
    if not subjects:
        out.add(f"{path}.subjects", "must contain at least 1 subject")
    elif len(subjects) > max_subjects:
        # Legacy risk-events reference: at most 50 subjects per event.
        out.add(
            f"{path}.subjects",
            f"must contain at most {max_subjects} subjects (got {len(subjects)})",
        )
    for j, subject in enumerate(subjects):
        _check_subject(subject, f"{path}.subjects[{j}]", out)


def _check_ip(value: Any, path: str, out: _Problems) -> None:
    if not isinstance(value, str):
        out.add(path, "must be a string holding an IPv4 or IPv6 address")
        return
    # ipaddress accepts an IPv6 zone id ("fe80::1%eth0"); an IP risk signal has none.
    valid = "%" not in value
    if valid:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            valid = False
    if not valid:
        out.add(path, f"must be a valid IPv4 or IPv6 address (got {_short(value)!r})")


def _check_subject(subject: Any, path: str, out: _Problems) -> None:
    if not isinstance(subject, dict):
        out.add(path, "must be a RiskEventSubject object")
        return
    _unknown_keys(subject, _SUBJECT_KEYS, path, out)
    if "ip" in subject:
        _check_ip(subject["ip"], f"{path}.ip", out)
    else:
        out.add(f"{path}.ip", "is required")
    if "riskLevel" not in subject:
        out.add(f"{path}.riskLevel", "is required")
    else:
        level = subject["riskLevel"]
        if not isinstance(level, str) or level not in RISK_LEVELS:
            out.add(f"{path}.riskLevel", f"must be one of {_LEVELS_TEXT}")
    if "message" in subject:
        message = subject["message"]
        if not isinstance(message, str):
            out.add(f"{path}.message", "must be a string")
            return
        if len(message) > MESSAGE_MAX_LENGTH:
            out.add(
                f"{path}.message",
                f"must be at most {MESSAGE_MAX_LENGTH} characters (got {len(message)})",
            )
        if not _MESSAGE_RE.fullmatch(message):
            out.add(
                f"{path}.message",
                "must match ^[a-zA-Z0-9 .\\-_]*$ (ASCII letters, digits, space, '.', '-', '_')",
            )


def validate_risk_events(body: Any, *, now: float, max_events: int, max_subjects: int) -> list[str]:
    """Every problem of a parsed events body; an empty list means Okta would accept it.

    ``now`` is the org's clock at receipt, against which ``expiresAt`` is checked.
    """
    out = _Problems()
    if not isinstance(body, list):
        out.add("events", "the body must be a JSON array of RiskEvent objects")
        return out.result()
    if not body:
        out.add("events", "must contain at least 1 event")
    elif len(body) > max_events:
        # Spec operation description: up to a maximum of 20 events in a single payload.
        out.add("events", f"must contain at most {max_events} events (got {len(body)})")
    for i, event in enumerate(body):
        _check_event(event, f"events[{i}]", now, max_subjects, out)
    return out.result()
