"""Detector input validation and the wire forms of text and time."""

from __future__ import annotations

import re

import pytest

from forwarder.signals import (
    EXPIRY_MARGIN_MS,
    MIN_DELIVERY_MS,
    RiskLevel,
    Signal,
    format_ms,
    parse_items,
    parse_rfc3339_ms,
    refusal_reason,
    sanitize_message,
    sendable,
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
    assert (s0.ip, s0.risk, s0.ts_ms, targets0) == ("2001:db8::1", RiskLevel.HIGH, NOW, ())
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


@pytest.mark.parametrize(
    "ip",
    [
        "198.51.100.\u0664",  # ARABIC-INDIC DIGIT FOUR
        "\uff11.2.3.4",  # FULLWIDTH DIGIT ONE
        "\u0661\u0669\u0668.51.100.4",
        "::ffff:\u0661.2.3.4",
        "2001:db8::\uff11",
        "\u00a0203.0.113.7",  # NO-BREAK SPACE
    ],
)
def test_ip_with_non_ascii_characters_is_refused(ip: str) -> None:
    """Only ASCII addresses pass: a Unicode digit would get a whole Okta call refused."""
    signals, problems = parse_items([{"ip": ip, "riskLevel": "HIGH"}], now_ms=NOW, providers=["a"])
    assert signals == []
    assert [(p.index, p.field) for p in problems] == [(0, "ip")]


def test_ipv4_mapped_ipv6_is_the_ipv4_address() -> None:
    """::ffff:a.b.c.d (any spelling) is stored as a.b.c.d, so both coalesce into one subject."""
    items = [
        {"ip": "::ffff:198.51.100.4", "riskLevel": "LOW"},
        {"ip": "::FFFF:c633:6404", "riskLevel": "LOW"},
        {"ip": "0:0:0:0:0:ffff:198.51.100.4", "riskLevel": "LOW"},
        {"ip": "198.51.100.4", "riskLevel": "LOW"},
    ]
    signals, problems = parse_items(items, now_ms=NOW, providers=["a"])
    assert problems == []
    assert {s.ip for _, s in signals} == {"198.51.100.4"}


def test_risk_level_is_ascii_only() -> None:
    """ "hıgh" (dotless i) upper-cases to HIGH in Python; it is refused like any unknown level."""
    _, problems = parse_items(
        [{"ip": "203.0.113.7", "riskLevel": "h\u0131gh"}], now_ms=NOW, providers=["a"]
    )
    assert [p.field for p in problems] == ["riskLevel"]


def test_timestamp_digits_are_ascii_only() -> None:
    """An RFC 3339 time written with fullwidth digits is not a time."""
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339_ms("2026-01-31T12:00:0\uff10Z")


def test_refusal_reason_judges_a_stored_signal_like_ingest() -> None:
    """A stored signal ingest would take has no reason; one it would refuse names the field."""
    good = Signal("203.0.113.7", RiskLevel.HIGH, "x", NOW - 1000, None, NOW - 1000)
    assert refusal_reason(good, NOW) is None
    assert refusal_reason(good._replace(ip="::ffff:203.0.113.7"), NOW) is None
    bad_ip = refusal_reason(good._replace(ip="198.51.100.\u0664"), NOW)
    assert bad_ip is not None
    assert bad_ip.startswith("ip: ")
    expired = refusal_reason(good._replace(expires_ms=NOW - 1), NOW)
    assert expired is not None
    assert expired.startswith("expiresAt: ")
    too_old = refusal_reason(good, NOW + 86_400_000, max_age_ms=86_400_000)
    assert too_old is not None
    assert too_old.startswith("timestamp: ")


def test_what_ingest_accepts_stays_sendable_for_one_delivery_time() -> None:
    """The earliest expiry and oldest timestamp ingest takes are still leasable 60 s later."""
    day = 86_400_000
    items = [
        {"ip": "203.0.113.7", "riskLevel": "LOW", "expiresAt": format_ms(NOW + 65_001)},
        {"ip": "203.0.113.8", "riskLevel": "LOW", "timestamp": format_ms(NOW - day + 60_000)},
    ]
    signals, problems = parse_items(items, now_ms=NOW, providers=["a"], max_age_ms=day)
    assert problems == []
    for _, s in signals:
        assert sendable(s, NOW + MIN_DELIVERY_MS, max_age_ms=day, margin_ms=EXPIRY_MARGIN_MS)
        assert not sendable(s, NOW + MIN_DELIVERY_MS + 1, max_age_ms=day)
