"""Signals: the model, detector input validation, and the wire forms of time and text.

Pure functions, no I/O. A detector's item becomes a :class:`Signal` here or yields
:class:`Problem` records naming the item index and the field, so the ingest API can
answer 400 with every bad item at once.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, NamedTuple

__all__ = [
    "EXPIRY_MARGIN_MS",
    "FIELDS",
    "MAX_EXPIRY_AHEAD_MS",
    "MAX_MESSAGE_CHARS",
    "MIN_DELIVERY_MS",
    "Problem",
    "RiskLevel",
    "Signal",
    "format_ms",
    "parse_items",
    "parse_rfc3339_ms",
    "refusal_reason",
    "sanitize_message",
    "send_deadline_ms",
    "sendable",
]

#: Okta's ``RiskEventSubject.message``: ``maxLength: 512`` (openapi-subset.yaml).
MAX_MESSAGE_CHARS = 512
#: Okta's pattern ``^[a-zA-Z0-9 .\-_]*$``; everything else is replaced, never rejected.
_NOT_ALLOWED = re.compile(r"[^a-zA-Z0-9 .\-_]+")
#: A message that already fits: allowed characters, single spaces, no padding, <= 512.
_PLAIN_MESSAGE = re.compile(r"(?=.{0,512}\Z)[a-zA-Z0-9.\-_]+(?: [a-zA-Z0-9.\-_]+)*", re.DOTALL)
#: Canonical dotted-quad IPv4 (no leading zeros): already in normal form. ``[0-9]``, never
#: ``\d``: ``\d`` matches every Unicode digit ("198.51.100.\u0664"), which Okta refuses.
_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)
_SPACES = re.compile(r" {2,}")
#: Timestamps further ahead than this are refused: a future time would win coalescing forever.
MAX_FUTURE_SKEW_MS = 300_000
#: expiresAt further ahead than this is refused (Okta documents no bound; a year is ample,
#: and it keeps every time we ever format inside the years Okta's format can express).
MAX_EXPIRY_AHEAD_MS = 366 * 86_400_000
#: A subject is never sent within this margin of its own expiry: a lease drops it instead
#: (it would expire on the way, or be refused by an org whose clock runs ahead).
EXPIRY_MARGIN_MS = 5_000
#: Ingest accepts a signal only if it stays sendable at least this long after receipt:
#: one Okta rate window (3 calls a minute), the longest a signal with nothing ahead of it
#: waits for a call. So a 202 means "deliverable", not "expires before its first chance".
MIN_DELIVERY_MS = 60_000

FIELDS = ("ip", "riskLevel", "message", "timestamp", "expiresAt", "provider")


class RiskLevel(IntEnum):
    """Okta's risk levels; the integer order is the send priority (HIGH first)."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3


_LEVELS = {level.name: level for level in RiskLevel}
_LEVEL_SPELLINGS = {
    spelling: level
    for level in RiskLevel
    for spelling in (level.name, level.name.lower(), level.name.capitalize())
}
_FIELD_SET = frozenset(FIELDS)


class Signal(NamedTuple):
    """One observation of an IP, as stored. Times are integer epoch milliseconds.

    A NamedTuple rather than a dataclass: ingest builds hundreds of thousands a second.
    """

    ip: str
    risk: RiskLevel
    message: str
    ts_ms: int
    expires_ms: int | None
    received_ms: int


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one item of an ingest request."""

    index: int
    field: str
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "field": self.field, "message": self.message}


def sanitize_message(text: str) -> str:
    """Make ``text`` fit Okta's message rule by transliterating, replacing and truncating.

    Accents fold to ASCII (``é`` -> ``e``); any other character outside
    ``[a-zA-Z0-9 .-_]`` becomes a space; runs of spaces collapse; at most 512 characters.
    """
    if not text:
        return ""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = _NOT_ALLOWED.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    return text[:MAX_MESSAGE_CHARS].rstrip()


def parse_rfc3339_ms(value: str) -> int:
    """Parse an RFC 3339 date-time with an explicit offset into epoch milliseconds."""
    # RFC 3339 digits are ASCII; never rely on a parser's idea of a digit.
    if len(value) < 20 or value[10] not in "Tt " or not value.isascii():
        raise ValueError("must be an RFC 3339 date-time such as 2026-01-31T12:00:00Z")
    try:
        dt = datetime.fromisoformat(value.upper() if value.endswith("z") else value)
        if dt.tzinfo is None:
            raise ValueError("must carry a time zone offset (Z or +hh:mm)")
        return int(dt.timestamp() * 1000)
    except (ValueError, OverflowError) as exc:
        if "offset" in str(exc):
            raise
        raise ValueError("must be an RFC 3339 date-time such as 2026-01-31T12:00:00Z") from None


def format_ms(ms: int) -> str:
    """Okta's wire format: ``yyyy-MM-ddTHH:mm:ss.SSSZ`` in UTC."""
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def _parse_ip(value: object) -> str:
    """The canonical ASCII text of an IPv4 or IPv6 address; IPv4-mapped IPv6 as IPv4.

    ``::ffff:a.b.c.d`` is the IPv4 host ``a.b.c.d`` seen through a dual-stack socket:
    both spellings must coalesce into one subject, so the mapped form becomes IPv4.
    """
    if not isinstance(value, str):
        raise ValueError("must be a string holding an IPv4 or IPv6 address")
    if not value.isascii():
        # Only ASCII digits and hex: "１.2.3.4" or "198.51.100.\u0664" are not addresses
        # Okta accepts, and one of them in a call gets the whole call refused.
        raise ValueError(
            f"{value[:64]!r} is not an IPv4 or IPv6 address (ASCII digits and letters only)"
        )
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"{value[:64]!r} is not an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            raise ValueError("IPv6 zone ids (%...) are not accepted")
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
    return str(addr)


def _parse_level(value: object) -> RiskLevel:
    # ASCII only: str.upper() folds "hıgh" (dotless i) into "HIGH".
    if isinstance(value, str) and value.isascii():
        level = _LEVELS.get(value.strip().upper())
        if level is not None:
            return level
    raise ValueError("must be one of LOW, MEDIUM, HIGH")


def _parse_providers(value: object, known: Collection[str]) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError("must be a provider name or a non-empty list of names")
    unknown = sorted({n for n in names if n not in known})
    if unknown:
        # Names only what the request sent (at most a few): with 1,000 orgs configured,
        # listing them would make every such answer huge and show callers every customer.
        shown = ", ".join(repr(n[:64]) for n in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(
            f"unknown provider {shown}{more}; {len(known)} providers are configured"
            " (`forwarder status` lists them)"
        )
    return tuple(dict.fromkeys(names))


def _problems(
    index: int, item: Mapping[str, Any], now_ms: int, max_age_ms: int, known: Collection[str]
) -> list[Problem]:
    """Everything wrong with one item (the slow, thorough path)."""
    bad = [
        Problem(index, str(key), f"unknown field; allowed: {', '.join(FIELDS)}")
        for key in item
        if key not in FIELDS
    ]
    checks: list[tuple[str, Any]] = [
        ("ip", lambda: _parse_ip(item["ip"]) if "ip" in item else _missing("")),
        (
            "riskLevel",
            lambda: (
                _parse_level(item["riskLevel"])
                if "riskLevel" in item
                else _missing(" (LOW, MEDIUM or HIGH)")
            ),
        ),
    ]
    for field, check in checks:
        try:
            check()
        except ValueError as exc:
            bad.append(Problem(index, field, str(exc)))
    message = item.get("message")
    if message is not None and not isinstance(message, str):
        bad.append(Problem(index, "message", "must be a string"))
    ts_ms = now_ms
    try:
        ts_ms = _timestamp(item.get("timestamp"), now_ms, max_age_ms)
    except ValueError as exc:
        bad.append(Problem(index, "timestamp", str(exc)))
    try:
        _expiry(item.get("expiresAt"), ts_ms, now_ms)
    except ValueError as exc:
        bad.append(Problem(index, "expiresAt", str(exc)))
    if item.get("provider") is not None:
        try:
            _parse_providers(item["provider"], known)
        except ValueError as exc:
            bad.append(Problem(index, "provider", str(exc)))
    return bad


def _missing(what: str) -> None:
    raise ValueError(f"is required{what}")


def send_deadline_ms(signal: Signal, *, max_age_ms: int, margin_ms: int = EXPIRY_MARGIN_MS) -> int:
    """The last epoch millisecond at which ``signal`` may still be leased for a call.

    A signal goes no later than ``max_age`` after its timestamp, and never within
    ``margin_ms`` of its own expiry. The store's lease and the ingest rules both use this.
    """
    deadline = signal.ts_ms + max_age_ms
    if signal.expires_ms is not None:
        deadline = min(deadline, signal.expires_ms - margin_ms - 1)
    return deadline


def sendable(
    signal: Signal, now_ms: int, *, max_age_ms: int, margin_ms: int = EXPIRY_MARGIN_MS
) -> bool:
    """``signal`` may go in a call leased at ``now_ms`` (not too old, not about to expire)."""
    return now_ms <= send_deadline_ms(signal, max_age_ms=max_age_ms, margin_ms=margin_ms)


def _lead_ms(max_age_ms: int) -> int:
    # With a (silly) max_age below two minimum delivery times, half of it still leaves
    # room to accept a signal stamped "now".
    return min(MIN_DELIVERY_MS, max_age_ms // 2)


def _timestamp(raw: object, now_ms: int, max_age_ms: int) -> int:
    if raw is None:
        return now_ms
    if not isinstance(raw, str):
        raise ValueError("must be an RFC 3339 date-time string")
    ts_ms = parse_rfc3339_ms(raw)
    if ts_ms > now_ms + MAX_FUTURE_SKEW_MS:
        raise ValueError("is more than 5 minutes in the future; check the clock")
    lead_ms = _lead_ms(max_age_ms)
    if ts_ms < now_ms - max_age_ms + lead_ms:
        # Accepting it would mean a 202 for a signal that is dropped, never sent.
        raise ValueError(
            f"is older than max_age_s ({max_age_ms // 1000} s) minus {lead_ms // 1000} s"
            " to deliver it; it would expire before it could be sent"
        )
    return ts_ms


def _expiry(raw: object, ts_ms: int, now_ms: int) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ValueError("must be an RFC 3339 date-time string")
    expires_ms = parse_rfc3339_ms(raw)
    if expires_ms <= ts_ms:
        raise ValueError("must be after timestamp")
    if expires_ms <= now_ms:
        raise ValueError("is already in the past")
    least_ms = EXPIRY_MARGIN_MS + MIN_DELIVERY_MS
    if expires_ms <= now_ms + least_ms:
        # The same rule as the lease's (send_deadline_ms): a 202 must be deliverable.
        raise ValueError(
            f"must be more than {least_ms // 1000} s in the future: a signal is never sent"
            f" within {EXPIRY_MARGIN_MS // 1000} s of its expiry, and sending may take"
            f" up to {MIN_DELIVERY_MS // 1000} s (one rate window)"
        )
    if expires_ms > now_ms + MAX_EXPIRY_AHEAD_MS:
        raise ValueError("is more than a year ahead")
    return expires_ms


def refusal_reason(signal: Signal, now_ms: int, *, max_age_ms: int = 86_400_000) -> str | None:
    """Why ingest would refuse ``signal`` (as stored) if it arrived at ``now_ms``; None if not.

    The signal is judged exactly as a detector item carrying its ip, level, message,
    timestamp and expiry would be (``dead-letters requeue`` uses this to keep back what
    ingest would refuse). The answer lists each problem as ``field: why``.
    """
    try:
        item: dict[str, Any] = {
            "ip": signal.ip,
            "riskLevel": signal.risk.name,
            "message": signal.message,
            "timestamp": format_ms(signal.ts_ms),
        }
        if signal.expires_ms is not None:
            item["expiresAt"] = format_ms(signal.expires_ms)
    except (ValueError, OverflowError, OSError):
        return "timestamp: not a time ingest can express (a damaged row?)"
    _, problems = parse_items([item], now_ms=now_ms, providers=(), max_age_ms=max_age_ms)
    if not problems:
        return None
    return "; ".join(f"{p.field}: {p.message}" for p in problems)


def parse_items(
    items: Iterable[Any],
    *,
    now_ms: int,
    providers: Sequence[str],
    max_age_ms: int = 86_400_000,
) -> tuple[list[tuple[tuple[str, ...], Signal]], list[Problem]]:
    """Validate detector items; return (signals with their target providers, problems).

    A signal without ``provider`` has no targets (an empty tuple): it is a broadcast.

    When ``problems`` is non-empty the caller must store nothing of the request.
    The common case (canonical IPv4, upper-case level, plain message, no times) takes a
    fast path; anything else is parsed fully, and any item that fails is re-examined by
    the thorough path so every problem of every item is named.
    """
    out: list[tuple[tuple[str, ...], Signal]] = []
    problems: list[Problem] = []
    everyone: tuple[str, ...] = ()  # no targets: a broadcast, stored once for every provider
    known = frozenset(providers)
    fields = _FIELD_SET
    for index, item in enumerate(items):
        try:
            if type(item) is not dict or not item.keys() <= fields:
                raise ValueError
            raw_ip = item["ip"]
            ip = raw_ip if type(raw_ip) is str and _IPV4.fullmatch(raw_ip) else _parse_ip(raw_ip)
            level = _LEVEL_SPELLINGS.get(item["riskLevel"]) or _parse_level(item["riskLevel"])
            message = item.get("message")
            if message is None:
                message = ""
            elif type(message) is not str:
                raise ValueError
            elif not _PLAIN_MESSAGE.fullmatch(message):
                message = sanitize_message(message)
            raw_ts = item.get("timestamp")
            ts_ms = now_ms if raw_ts is None else _timestamp(raw_ts, now_ms, max_age_ms)
            raw_exp = item.get("expiresAt")
            expires_ms = None if raw_exp is None else _expiry(raw_exp, ts_ms, now_ms)
            raw_targets = item.get("provider")
            targets = everyone if raw_targets is None else _parse_providers(raw_targets, known)
        except (ValueError, KeyError, TypeError):
            if not isinstance(item, Mapping):
                problems.append(Problem(index, "", "each signal must be a JSON object"))
            else:
                problems.extend(_problems(index, item, now_ms, max_age_ms, known))
            continue
        out.append((targets, Signal(ip, level, message, ts_ms, expires_ms, now_ms)))
    return out, problems
