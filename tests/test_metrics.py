"""Prometheus metrics: the reference matches the registry, labels stay bounded, values are right.

In process (FakeClock shared with the sandbox), read through /metrics as Prometheus would.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forwarder.clock import FakeClock
from forwarder.okta.keys import generate_signing_key
from forwarder.signals import RiskLevel, Signal, format_ms
from forwarder.telemetry import Metrics
from forwarder.telemetry.labels import (
    CALL_OUTCOMES,
    INGEST_CODES,
    OTHER,
    PROVIDER_STATES,
    REJECT_REASONS,
    RETRY_REASONS,
    RISK_LEVELS,
    TOKEN_OUTCOMES,
)
from tests.exported import exported
from tests.harness import Harness, harness, ips

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \| ([^|]*) \|")


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as h:
        yield h


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for line in DOC.read_text().splitlines():
        m = _ROW.match(line)
        if m:
            name, kind, labels = m.groups()
            assert name not in out, f"{name} is documented twice"
            out[name] = (kind, frozenset(re.findall(r"`([a-z_]+)`", labels)))
    return out


async def scrape(h: Harness) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = await h.get("/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def post(h: Harness, items: list[dict[str, Any]]) -> None:
    for i in range(0, len(items), 500):
        status, body = await h.post(items[i : i + 500])
        assert status == 202, body


async def test_reference_lists_exactly_the_exported_metrics(tmp_path: Path) -> None:
    """docs/metrics.md names every exported metric with its type and labels, and nothing else."""
    live = await exported(tmp_path)
    doc = documented()
    assert sorted(set(live.metrics) - set(doc)) == [], "exported but not documented"
    assert sorted(set(doc) - set(live.metrics)) == [], "documented but not exported"
    wrong = {
        name: (doc[name], live.metrics[name]) for name in doc if doc[name] != live.metrics[name]
    }
    assert wrong == {}, "documented (type, labels) differ from the registry"


async def test_traffic_adds_no_series_and_no_ip_becomes_a_label(h: Harness) -> None:
    """Thousands of distinct IPs, messages and bad requests leave the series set unchanged."""
    cid = h.add_provider("acme")
    await h.start()
    await post(h, [{"ip": "192.0.2.1", "riskLevel": "HIGH"}])
    await h.until(lambda: len(h.delivered(cid)) >= 1)
    before = set(await scrape(h))
    addresses = ips(2500, offset=100)
    await post(
        h, [{"ip": ip, "riskLevel": "LOW", "message": f"seen from {ip}"} for ip in addresses]
    )
    status, _ = await h.post([{"ip": "not-an-ip", "riskLevel": "SEVERE"}])
    assert status == 400
    await h.until(lambda: len(h.delivered(cid)) >= 2501)
    after = set(await scrape(h))
    assert after == before
    _, text = await h.get("/metrics")
    assert not any(ip in text for ip in addresses[:50])
    assert "seen from" not in text


def test_unknown_label_values_are_counted_as_other() -> None:
    """Whatever an observer reports, every label value comes from a fixed set."""
    metrics = Metrics(clock=FakeClock(), providers=["acme"])
    signal = Signal("192.0.2.1", RiskLevel.HIGH, "m", 0, None, 0)
    for i in range(50):
        junk = f"junk-{i}"
        metrics.ingest_request(100 + i, 0.01)
        metrics.signals_received("rejected", junk, 1)
        metrics.signals_stored(junk, 2, 1)
        metrics.signals_expired(junk, 1)
        metrics.call_finished("acme", junk, 0.1)
        metrics.retried(junk, junk)
        metrics.dead_lettered(junk, 1)
        metrics.delivered(junk, [signal], 1.0)
        metrics.token_observer(junk)(junk, 1.0)
    allowed = {
        "provider": {"acme", OTHER},
        "risk_level": set(RISK_LEVELS),
        "code": {*INGEST_CODES, OTHER},
        "result": {"accepted", "rejected"},
        "state": set(PROVIDER_STATES),
    }
    reasons = {"", *REJECT_REASONS, *RETRY_REASONS, OTHER}
    outcomes = {*CALL_OUTCOMES, *TOKEN_OUTCOMES, OTHER}
    for family in metrics.registry.collect():
        if not family.name.startswith("forwarder_"):
            continue
        for s in family.samples:
            for label, v in s.labels.items():
                if label in allowed:
                    assert v in allowed[label], (s.name, label, v)
                elif label == "reason":
                    assert v in reasons, (s.name, v)
                elif label == "outcome":
                    assert v in outcomes, (s.name, v)


def test_created_series_are_not_exported() -> None:
    """Counters and histograms export no *_created series (they would double the series)."""
    metrics = Metrics(clock=FakeClock(), providers=["acme"])
    metrics.call_finished("acme", "accepted", 0.2)
    text = metrics.render().decode()
    assert 'forwarder_okta_calls_total{outcome="accepted",provider="acme"} 1.0' in text
    assert "_created" not in text


async def test_budget_gauges_during_a_burst(h: Harness) -> None:
    """5,500 IPs: after 3 full calls the budget is spent, the next slot and drain time say when."""
    cid = h.add_provider("acme")
    await h.start()
    await post(h, [{"ip": ip, "riskLevel": "LOW"} for ip in ips(5500)])
    await h.until(lambda: len(h.org.accepted) >= 3)
    s = await scrape(h)
    assert value(s, "forwarder_rate_budget_calls", provider="acme") == 3
    assert value(s, "forwarder_rate_budget_window_seconds", provider="acme") == 60
    assert value(s, "forwarder_rate_budget_remaining", provider="acme") == 0
    assert value(s, "forwarder_pending_signals", provider="acme", risk_level="LOW") == 2500
    # The first call leaves the window 60 s (+1 s margin) after it was made.
    next_slot = value(s, "forwarder_next_call_slot_seconds", provider="acme")
    assert next_slot == pytest.approx(61, abs=0.5)
    # Then two more calls of up to 1000 IPs, each window/calls = 20 s apart.
    drain = value(s, "forwarder_backlog_drain_seconds", provider="acme")
    assert drain == pytest.approx(next_slot + 2 * 20, abs=0.01)
    assert value(s, "forwarder_okta_rate_limit_remaining", provider="acme") == 0
    await h.until(lambda: len(h.delivered(cid)) >= 5500)
    s = await scrape(h)
    assert value(s, "forwarder_backlog_drain_seconds", provider="acme") == 0
    assert value(s, "forwarder_pending_signals", provider="acme", risk_level="LOW") == 0


async def test_budget_remaining_is_zero_while_okta_says_wait(h: Harness) -> None:
    """After a 429 no call is allowed until Okta's reset, though our own window has room."""
    key = generate_signing_key("RS256")
    cid = h.add_provider("acme", key=key)
    await h.spend_window(cid, key)  # another client spends the provider's window
    daemon = await h.start()
    await post(h, [{"ip": "192.0.2.1", "riskLevel": "HIGH"}])
    await h.until(lambda: daemon.dispatchers["acme"].state.status == "rate_limited")
    s = await scrape(h)
    assert daemon.dispatchers["acme"].budget.remaining() == 2  # our own window: one call
    assert value(s, "forwarder_rate_budget_remaining", provider="acme") == 0
    assert value(s, "forwarder_okta_calls_total", provider="acme", outcome="rate_limited") == 1
    assert value(s, "forwarder_retries_total", provider="acme", reason="rate_limited") == 1
    assert value(s, "forwarder_next_call_slot_seconds", provider="acme") > 30
    assert value(s, "forwarder_provider_state", provider="acme", state="rate_limited") == 1


async def test_delivery_latency_separates_next_call_from_next_window(h: Harness) -> None:
    """IPs sent at once fall in the first bucket; those that waited a window land past 60 s."""
    cid = h.add_provider("acme")
    await h.start()
    await post(h, [{"ip": ip, "riskLevel": "LOW"} for ip in ips(4000)])
    await h.until(lambda: len(h.delivered(cid)) >= 4000)
    s = await scrape(h)

    def bucket(le: str) -> float:
        return value(
            s, "forwarder_delivery_latency_seconds_bucket", provider="acme", risk_level="LOW", le=le
        )

    assert bucket("0.1") == 3000
    assert bucket("60.0") == 3000
    assert bucket("120.0") == 4000
    assert value(s, "forwarder_subjects_sent_total", provider="acme", risk_level="LOW") == 4000


async def test_call_outcomes_match_what_okta_answered(tmp_path: Path) -> None:
    """503, 401, 400 and 202 answers are counted once each, with the matching retries."""
    async with harness(tmp_path, calls_per_minute=600) as h:
        cid = h.add_provider("acme", calls_per_minute=600)
        daemon = await h.start()
        h.org.fail_events(503, 401, 400)
        await post(h, [{"ip": ip, "riskLevel": "HIGH"} for ip in ips(4)])
        await h.until(lambda: daemon.dead_letter_count("acme") == 4)
        await post(h, [{"ip": ip, "riskLevel": "HIGH"} for ip in ips(2, offset=10)])
        await h.until(lambda: len(h.delivered(cid)) >= 2)
        s = await scrape(h)
    assert [c.status for c in h.org.event_calls] == [503, 401, 400, 202]
    calls = {
        o: value(s, "forwarder_okta_calls_total", provider="acme", outcome=o) for o in CALL_OUTCOMES
    }
    assert calls == {
        "accepted": 1,
        "rate_limited": 0,
        "client_error": 1,
        "server_error": 1,
        "timeout": 0,
        "auth_error": 1,
    }
    retries = {
        r: value(s, "forwarder_retries_total", provider="acme", reason=r) for r in RETRY_REASONS
    }
    assert retries == {
        "rate_limited": 0,
        "auth": 1,
        "token": 0,
        "server_error": 1,
        "timeout": 0,
        "client_error": 0,
        "too_large": 0,
        "failing": 0,
        "internal": 0,
    }
    assert value(s, "forwarder_signals_dead_lettered_total", provider="acme") == 4
    assert value(s, "forwarder_dead_letter_signals", provider="acme") == 4


async def test_unanswered_call_is_counted_as_timeout(tmp_path: Path) -> None:
    """An events call that outlives timeout_s counts as a timeout and is retried."""
    async with harness(tmp_path, calls_per_minute=600) as h:
        h.add_provider("acme", calls_per_minute=600, timeout_s=0.2)
        daemon = await h.start()
        h.org.events_delay_s = 0.5
        await post(h, [{"ip": "192.0.2.1", "riskLevel": "HIGH"}])
        await h.until(lambda: daemon.dispatchers["acme"].state.last_outcome == "timeout")
        h.org.events_delay_s = 0.0
        await h.until(lambda: daemon.dispatchers["acme"].state.last_outcome == "accepted")
        s = await scrape(h)
    assert value(s, "forwarder_okta_calls_total", provider="acme", outcome="timeout") == 1
    assert value(s, "forwarder_retries_total", provider="acme", reason="timeout") == 1
    assert value(s, "forwarder_okta_calls_total", provider="acme", outcome="accepted") == 1


async def test_token_metrics_follow_issue_and_refusal(h: Harness) -> None:
    """A token issue sets its renewal time; a refused key counts as invalid_credentials."""
    good = h.add_provider("good")
    h.add_provider("bad", registered_key=generate_signing_key("RS256"))
    daemon = await h.start()
    t0 = h.clock.time()
    await post(h, [{"ip": "192.0.2.1", "riskLevel": "HIGH"}])
    await h.until(
        lambda: len(h.delivered(good)) >= 1 and daemon.dispatchers["bad"].state.status == "failing"
    )
    s = await scrape(h)
    assert value(s, "forwarder_token_requests_total", provider="good", outcome="success") == 1
    # Okta's hour, renewed 60 s early.
    expiry = value(s, "forwarder_token_expiry_timestamp_seconds", provider="good")
    assert expiry == pytest.approx(t0 + 3600 - 60, abs=1)
    assert (
        value(s, "forwarder_token_requests_total", provider="bad", outcome="invalid_credentials")
        == 1
    )
    assert value(s, "forwarder_provider_state", provider="bad", state="failing") == 1
    assert value(s, "forwarder_okta_calls_total", provider="bad", outcome="auth_error") == 0


async def test_oldest_pending_age_shows_a_stuck_high(h: Harness) -> None:
    """A HIGH kept by a failing provider ages by its own timestamp; empty levels read 0."""
    h.add_provider("bad", registered_key=generate_signing_key("RS256"))
    daemon = await h.start()
    observed = int(h.clock.time() * 1000) - 30_000
    await post(h, [{"ip": "192.0.2.1", "riskLevel": "HIGH", "timestamp": format_ms(observed)}])
    await h.until(lambda: daemon.dispatchers["bad"].state.status == "failing")
    h.clock.advance(100)
    s = await scrape(h)
    age = value(s, "forwarder_oldest_pending_age_seconds", provider="bad", risk_level="HIGH")
    assert age == pytest.approx(130, abs=0.5)
    assert value(s, "forwarder_oldest_pending_age_seconds", provider="bad", risk_level="LOW") == 0
    assert value(s, "forwarder_pending_signals", provider="bad", risk_level="HIGH") == 1


async def test_store_gauges_count_every_stored_entry(h: Harness) -> None:
    """Store entries count a broadcast once (pending for every provider) against max_pending."""
    h.add_provider("a", registered_key=generate_signing_key("RS256"))
    h.add_provider("b", registered_key=generate_signing_key("RS256"))
    await h.start(store={"max_pending": 5000})
    await post(h, [{"ip": ip, "riskLevel": "LOW"} for ip in ips(30)])
    s = await scrape(h)
    assert value(s, "forwarder_store_entries") == 30
    for provider in ("a", "b"):
        assert value(s, "forwarder_pending_signals", provider=provider, risk_level="LOW") == 30
    assert value(s, "forwarder_store_capacity") == 5000
    assert value(s, "forwarder_signal_max_age_seconds") == 86400
    assert value(s, "forwarder_ready") == 1
    assert value(s, "forwarder_signals_received_total", result="accepted", reason="") == 30
