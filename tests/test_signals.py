"""Detector input validation and the wire forms of text and time."""

from __future__ import annotations

import re

from forwarder.signals import (
    RiskLevel,
    format_ms,
    parse_items,
    parse_rfc3339_ms,
    sanitize_message,
)

NOW = 1_800_000_000_000
OKTA_MESSAGE = re.compile(r"^[a-zA-Z0-9 .\-_]*$")


def test_message_is_made_to_fit_okta_pattern() -> None:
    """Disallowed characters are replaced, accents folded, length capped at 512."""
    text = "Crédential stuffing: 42/min «botnet» — see https://x.example/a?b=c " + "x" * 600
    out = sanitize_message(text)
    assert OKTA_MESSAGE.match(out)
    assert len(out) <= 512
    assert out.startswith("Credential stuffing 42 min botnet see https x.example a b c")


def test_timestamps_use_okta_format() -> None:
    """UTC, milliseconds, Z."""
    assert format_ms(1_787_306_160_007) == "2026-08-21T09:56:00.007Z"
    assert parse_rfc3339_ms("2026-08-21T11:56:00.007+02:00") == 1_787_306_160_007


def test_valid_items_are_normalised() -> None:
    """IPs are normalised, risk levels accepted in any case, default timestamp is receipt."""
    signals, problems = parse_items(
        [
            {"ip": "2001:DB8:0:0::1", "riskLevel": "high"},
            {"ip": "203.0.113.7", "riskLevel": "Low", "message": "ok", "provider": "b"},
        ],
        now_ms=NOW,
        providers=["a", "b"],
    )
    assert problems == []
    (targets0, s0), (targets1, s1) = signals
    assert (s0.ip, s0.risk, s0.ts_ms, targets0) == ("2001:db8::1", RiskLevel.HIGH, NOW, ("a", "b"))
    assert (s1.ip, s1.risk, targets1) == ("203.0.113.7", RiskLevel.LOW, ("b",))


def test_every_bad_item_and_field_is_named() -> None:
    """Each problem names its item index and field."""
    _, problems = parse_items(
        [
            {"ip": "203.0.113.7", "riskLevel": "HIGH"},
            {"ip": "999.1.1.1", "riskLevel": "SEVERE"},
            {"riskLevel": "LOW", "timestamp": "yesterday"},
            {"ip": "203.0.113.8", "riskLevel": "LOW", "expiresAt": "2020-01-01T00:00:00Z"},
            {"ip": "203.0.113.9", "riskLevel": "LOW", "provider": "nope", "colour": "red"},
            "not an object",
        ],
        now_ms=NOW,
        providers=["a"],
    )
    named = {(p.index, p.field) for p in problems}
    assert named == {
        (1, "ip"),
        (1, "riskLevel"),
        (2, "ip"),
        (2, "timestamp"),
        (3, "expiresAt"),
        (4, "provider"),
        (4, "colour"),
        (5, ""),
    }


def test_timestamp_needs_an_offset_and_not_the_future() -> None:
    """A naive or far-future timestamp is refused."""
    _, problems = parse_items(
        [
            {"ip": "203.0.113.7", "riskLevel": "LOW", "timestamp": "2026-01-01T00:00:00"},
            {"ip": "203.0.113.7", "riskLevel": "LOW", "timestamp": "2100-01-01T00:00:00Z"},
        ],
        now_ms=NOW,
        providers=["a"],
    )
    assert [(p.index, p.field) for p in problems] == [(0, "timestamp"), (1, "timestamp")]


def test_expiry_must_follow_timestamp() -> None:
    """expiresAt before timestamp is refused."""
    _, problems = parse_items(
        [
            {
                "ip": "203.0.113.7",
                "riskLevel": "LOW",
                "timestamp": format_ms(NOW),
                "expiresAt": format_ms(NOW - 1000),
            }
        ],
        now_ms=NOW,
        providers=["a"],
    )
    assert [p.field for p in problems] == ["expiresAt"]
