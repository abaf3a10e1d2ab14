"""RiskEvent payloads: Okta's per-call limits, expiry grouping, timestamps."""

from __future__ import annotations

import pytest

from forwarder.okta.payload import build_risk_events
from forwarder.signals import RiskLevel, Signal, format_ms, parse_rfc3339_ms

NOW = 1_800_000_000_000


def _sig(i: int, *, ts: int = NOW, exp: int | None = None, msg: str = "") -> Signal:
    return Signal(f"198.18.{i // 256}.{i % 256}", RiskLevel.LOW, msg, ts, exp, NOW)


def test_full_call_is_twenty_events_of_fifty() -> None:
    """1000 subjects with differing timestamps still fill exactly 20 x 50."""
    events = build_risk_events([_sig(i, ts=NOW - i * 1000) for i in range(1000)])
    assert len(events) == 20
    assert all(len(e["subjects"]) == 50 for e in events)
    assert {s["ip"] for e in events for s in e["subjects"]} == {_sig(i).ip for i in range(1000)}


def test_event_timestamp_is_newest_observation() -> None:
    """An event is dated by its newest subject."""
    (event,) = build_risk_events([_sig(1, ts=NOW - 5000), _sig(2, ts=NOW - 1000)])
    assert event["timestamp"] == format_ms(NOW - 1000)
    assert "expiresAt" not in event


def test_expiry_is_never_extended() -> None:
    """Each event expires no later than any of its subjects; no-expiry subjects stay apart."""
    signals = [_sig(i, exp=NOW + 60_000 + i * 1000) for i in range(120)]
    signals += [_sig(1000 + i) for i in range(80)]
    events = build_risk_events(signals)
    by_ip = {s.ip: s for s in signals}
    for event in events:
        subjects = [by_ip[x["ip"]] for x in event["subjects"]]
        if "expiresAt" in event:
            event_exp = parse_rfc3339_ms(event["expiresAt"])
            assert all(s.expires_ms is not None and event_exp <= s.expires_ms for s in subjects)
        else:
            assert all(s.expires_ms is None for s in subjects)
    assert len(events) == 3 + 2


def test_mixed_partial_groups_fit_twenty_events() -> None:
    """990 expiring + 10 lasting subjects still fit one call."""
    signals = [_sig(i, exp=NOW + 60_000 + i) for i in range(990)] + [
        _sig(2000 + i) for i in range(10)
    ]
    events = build_risk_events(signals)
    assert len(events) == 20
    assert sum(len(e["subjects"]) for e in events) == 1000


@pytest.mark.parametrize("expiring", [1, 49, 51, 99, 101, 949, 951, 990, 999])
def test_any_mix_of_expiring_and_lasting_fits_one_call(expiring: int) -> None:
    """1000 subjects in any mix fit 20 events of at most 50, every subject exactly once."""
    signals = [_sig(i, exp=NOW + 60_000 + i) for i in range(expiring)]
    signals += [_sig(5000 + i) for i in range(1000 - expiring)]
    events = build_risk_events(signals)
    assert len(events) <= 20
    assert all(len(e["subjects"]) <= 50 for e in events)
    sent = [s["ip"] for e in events for s in e["subjects"]]
    assert sorted(sent) == sorted(s.ip for s in signals)


def test_message_is_sanitised_and_empty_left_out() -> None:
    """Okta's message pattern holds; an empty message is omitted."""
    (event,) = build_risk_events([_sig(1, msg="bad:chars/here"), _sig(2)])
    first, second = event["subjects"]
    assert first == {"ip": _sig(1).ip, "riskLevel": "LOW", "message": "bad chars here"}
    assert "message" not in second
