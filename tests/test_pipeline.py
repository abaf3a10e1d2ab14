"""End to end, in process: detector -> ingest -> store -> dispatcher -> sandbox Okta.

Real loopback HTTP, real SQLite files; daemon and sandbox share a FakeClock, so rate
windows and token lifetimes pass in milliseconds.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from forwarder.clock import FakeClock
from forwarder.okta.dpop import DPoP
from forwarder.okta.keys import generate_signing_key, private_jwk_json
from forwarder.ratelimit import max_calls_in_window
from forwarder.sandbox import SandboxOrg, serve
from forwarder.signals import RiskLevel, Signal, format_ms
from forwarder.telemetry import configure_logging
from tests.harness import Harness, harness, ips

TS_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
OKTA_MESSAGE = re.compile(r"^[a-zA-Z0-9 .\-_]*$")


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as h:
        yield h


def signals(addresses: list[str], level: str = "LOW", **extra: Any) -> list[dict[str, Any]]:
    return [{"ip": ip, "riskLevel": level, **extra} for ip in addresses]


async def post_all(h: Harness, items: list[dict[str, Any]], chunk: int = 500) -> None:
    for i in range(0, len(items), chunk):
        status, body = await h.post(items[i : i + chunk])
        assert status == 202, body


def statuses(h: Harness) -> list[int]:
    return [c.status for c in h.org.event_calls]


async def test_signals_reach_okta_with_the_right_payload(h: Harness) -> None:
    """Every IP arrives once, in schema-valid RiskEvents of at most 20 x 50, first call full."""
    cid = h.add_provider("acme")
    await h.start()
    now_ms = int(h.clock.time() * 1000)
    items = signals(ips(1200), "MEDIUM", message="brute force: 10/min «bot»")
    items += signals(
        ips(300, offset=5000),
        "HIGH",
        timestamp=format_ms(now_ms - 5000),
        expiresAt=format_ms(now_ms + 3_600_000),
    )
    await post_all(h, items)
    await h.until(lambda: len(h.delivered(cid)) >= 1500)
    assert sorted(h.delivered(cid)) == sorted(i["ip"] for i in items)
    for call in h.org.accepted:
        assert len(call.body) <= 20
        for event in call.body:
            assert 1 <= len(event["subjects"]) <= 50
            assert TS_FORMAT.match(event["timestamp"])
            if "expiresAt" in event:
                assert TS_FORMAT.match(event["expiresAt"])
            for subject in event["subjects"]:
                assert OKTA_MESSAGE.match(subject.get("message", ""))
    first = h.org.accepted[0]
    assert len(first.ips) == 1000
    levels = {
        s["ip"]: s["riskLevel"] for c in h.org.accepted for e in c.body for s in e["subjects"]
    }
    assert all(levels[ip] == "HIGH" for ip in ips(300, offset=5000))
    assert set(statuses(h)) == {202}


async def test_never_more_than_budget_in_any_window(h: Harness) -> None:
    """5,500 IPs: full calls, at most 3 in any 60 s, no 429, drained in two windows."""
    cid = h.add_provider("acme")
    await h.start()
    await post_all(h, signals(ips(5500)))
    elapsed = await h.until(lambda: len(h.delivered(cid)) >= 5500)
    times = [c.at for c in h.org.event_calls]
    assert max_calls_in_window(times, 60) <= 3
    assert set(statuses(h)) == {202}
    assert [len(c.ips) for c in h.org.accepted] == [1000] * 5 + [500]
    assert 60 <= elapsed < 130


async def test_budget_holds_across_restart(h: Harness) -> None:
    """Calls made before a restart count against the window after it."""
    cid = h.add_provider("acme")
    await h.start()
    await post_all(h, signals(ips(3000)))
    await h.until(lambda: len(h.delivered(cid)) >= 3000)
    first_call = h.org.event_calls[0].at
    await h.stop()
    await h.start()
    await post_all(h, signals(ips(1000, offset=3000)))
    await h.until(lambda: len(h.delivered(cid)) >= 4000)
    times = [c.at for c in h.org.event_calls]
    assert len(times) == 4
    assert times[3] >= first_call + 60
    assert max_calls_in_window(times, 60) <= 3
    assert set(statuses(h)) == {202}


async def test_coalescing_sends_each_ip_once_with_newest(h: Harness) -> None:
    """Re-sightings of a waiting IP are merged; the newest observation is what Okta gets."""
    cid = h.add_provider("acme")
    await h.start()
    now_ms = int(h.clock.time() * 1000)
    await post_all(
        h,
        [
            {"ip": "192.0.2.1", "riskLevel": "LOW", "timestamp": format_ms(now_ms - 3000)},
            {"ip": "192.0.2.1", "riskLevel": "MEDIUM", "timestamp": format_ms(now_ms - 1000)},
            {"ip": "192.0.2.1", "riskLevel": "HIGH", "timestamp": format_ms(now_ms - 2000)},
            {"ip": "192.0.2.2", "riskLevel": "LOW"},
        ],
    )
    await h.until(lambda: len(h.delivered(cid)) >= 2)
    subjects = [s for c in h.org.accepted for e in c.body for s in e["subjects"]]
    assert sorted((s["ip"], s["riskLevel"]) for s in subjects) == [
        ("192.0.2.1", "MEDIUM"),
        ("192.0.2.2", "LOW"),
    ]
    assert h.daemon is not None
    coalesced = h.daemon.metrics.registry.get_sample_value(
        "forwarder_signals_coalesced_total", {"provider": "acme"}
    )
    assert coalesced == 2


async def test_high_never_waits_behind_backlog(h: Harness) -> None:
    """HIGH signals posted behind a 3,500-IP LOW backlog go out in the very next call."""
    cid = h.add_provider("acme")
    await h.start()
    await post_all(h, signals(ips(3500)))
    await h.until(lambda: len(h.org.accepted) >= 3)
    high = ips(10, offset=90_000)
    await post_all(h, signals(high, "HIGH"))
    await h.until(lambda: len(h.org.accepted) >= 4)
    fourth = h.org.accepted[3]
    assert fourth.ips[:10] == high
    await h.until(lambda: len(h.delivered(cid)) >= 3510)


async def test_partial_batch_lingers_but_high_does_not(h: Harness) -> None:
    """A few LOW signals wait for the linger; a HIGH goes without waiting."""
    h.add_provider("acme")
    await h.start()
    t0 = h.clock.time()
    await post_all(h, signals(ips(10)))
    await h.until(lambda: len(h.org.accepted) >= 1)
    assert h.org.accepted[0].at - t0 == pytest.approx(2.0, abs=0.05)
    h.clock.advance(60)
    t1 = h.clock.time()
    await post_all(h, signals(ips(1, offset=100), "HIGH"))
    await h.until(lambda: len(h.org.accepted) >= 2)
    assert h.org.accepted[1].at == t1


async def test_token_is_reused_then_refreshed_after_expiry(tmp_path: Path) -> None:
    """One token serves many calls; a new one is fetched when it runs out."""
    async with harness(tmp_path, token_lifetime_s=600) as h:
        cid = h.add_provider("acme")
        await h.start()
        await post_all(h, signals(ips(4000)))
        await h.until(lambda: len(h.delivered(cid)) >= 4000)
        assert [t.status for t in h.org.token_requests] == [200]
        h.clock.advance(600)
        await post_all(h, signals(ips(10, offset=4000), "HIGH"))
        await h.until(lambda: len(h.delivered(cid)) >= 4010)
        assert [t.status for t in h.org.token_requests] == [200, 200]
        assert 401 not in statuses(h)


async def test_revoked_token_is_replaced_and_batch_retried(h: Harness) -> None:
    """A 401 drops the token, a new one is fetched, and the same batch is sent again."""
    cid = h.add_provider("acme")
    await h.start()
    await post_all(h, signals(ips(5), "HIGH"))
    await h.until(lambda: len(h.delivered(cid)) >= 5)
    h.org.revoke_tokens()
    h.clock.advance(60)
    await post_all(h, signals(ips(5, offset=10), "HIGH"))
    await h.until(lambda: len(h.delivered(cid)) >= 10)
    assert statuses(h) == [202, 401, 202]
    assert len([t for t in h.org.token_requests if t.status == 200]) == 2
    assert h.org.accepted[-1].ips == ips(5, offset=10)


async def test_wrong_key_provider_does_not_stop_another(h: Harness) -> None:
    """A provider whose key Okta refuses is failing (visible in /readyz); the other delivers."""
    good = h.add_provider("good")
    h.add_provider("bad", registered_key=generate_signing_key("RS256"))
    await h.start()
    await post_all(h, signals(ips(1500)))
    await h.until(lambda: len(h.delivered(good)) >= 1500)
    status, body = await h.get("/readyz")
    assert status == 200
    bad = body["providers"]["bad"]
    assert bad["state"] == "failing"
    assert "key" in bad["hint"]
    assert bad["pending"] == 1500
    assert body["providers"]["good"]["state"] == "ok"


async def test_slow_provider_does_not_delay_another(h: Harness) -> None:
    """While one org takes seconds to answer, the other org's calls go out and land."""
    slow_org = SandboxOrg(clock=h.clock)
    slow_org.events_delay_s = 1.5
    async with serve(slow_org) as slow_url:
        slow = h.add_provider("slow", org=(slow_org, slow_url))
        fast = h.add_provider("fast")
        daemon = await h.start()
        assert daemon.store is not None
        await post_all(h, signals(ips(5), "HIGH"))
        await h.until(lambda: len(h.delivered(fast)) >= 5 and len(slow_org.event_calls) == 1)
        await h.until(lambda: daemon.store is not None and daemon.store.pending_total() == 5)
        # fast is done while slow's call has not been answered yet
        assert daemon.dispatchers["slow"].state.last_outcome is None
        assert sum(daemon.store.pending_counts("slow").values()) == 5
        await h.until(lambda: daemon.store is not None and daemon.store.pending_total() == 0)
        assert slow_org.accepted_ips(slow) == ips(5)


async def test_app_not_configured_as_risk_provider_is_failing(h: Harness) -> None:
    """A 403 on the events call marks the provider failing with a hint; signals are kept."""
    h.add_provider("unset", configure=False)
    daemon = await h.start()
    await post_all(h, signals(ips(3), "HIGH"))
    await h.until(lambda: daemon.dispatchers["unset"].state.status == "failing")
    assert statuses(h) == [403]
    _, body = await h.get("/readyz")
    assert "risk provider" in body["providers"]["unset"]["hint"]
    assert body["providers"]["unset"]["pending"] == 3


async def test_missing_scope_grant_is_reported(h: Harness) -> None:
    """An app without the scope grant is failing with a hint to grant it."""
    h.add_provider("nogrant", grant=False)
    await h.start()
    await post_all(h, signals(ips(3), "HIGH"))
    await h.until(lambda: any(t.status == 400 for t in h.org.token_requests))
    await h.until(
        lambda: h.daemon is not None and h.daemon.dispatchers["nogrant"].state.status == "failing"
    )
    _, body = await h.get("/readyz")
    assert "forwarder okta grant" in body["providers"]["nogrant"]["hint"]
    assert h.org.event_calls == []


async def test_someone_else_spending_the_budget_gets_a_429_obeyed(h: Harness) -> None:
    """When another client spent the window, the 429's Reset is waited out and all arrive."""
    key = generate_signing_key("RS256")
    cid = h.add_provider("acme", key=key)
    await h.spend_window(cid, key)  # another client spends the provider's window
    spent_at = h.clock.time()
    await h.start()
    await post_all(h, signals(ips(50), "HIGH"))
    await h.until(lambda: len(h.delivered(cid)) >= 53)
    assert statuses(h) == [202, 202, 202, 429, 202]
    assert h.org.event_calls[-1].at >= spent_at + 60


async def test_server_headers_keep_a_generous_config_inside_okta_window(h: Harness) -> None:
    """Configured for 10/min against Okta's 3/min, X-Rate-Limit-Remaining: 0 still prevents 429s."""
    cid = h.add_provider("acme", calls_per_minute=10)
    await h.start()
    await post_all(h, signals(ips(6000)))
    await h.until(lambda: len(h.delivered(cid)) >= 6000)
    assert set(statuses(h)) == {202}
    assert max_calls_in_window([c.at for c in h.org.event_calls], 60) <= 3


async def test_server_errors_are_retried_with_growing_backoff(tmp_path: Path) -> None:
    """503 and 500 keep the batch; retries back off (doubling) and the batch is delivered."""
    async with harness(tmp_path, calls_per_minute=600) as h:
        cid = h.add_provider("acme", calls_per_minute=600)
        await h.start(dispatch={"backoff_base_s": 4.0})
        h.org.fail_events(503, 503, 500)
        await post_all(h, signals(ips(20), "HIGH"))
        await h.until(lambda: len(h.delivered(cid)) >= 20)
        assert statuses(h) == [503, 503, 500, 202]
        t = [c.at for c in h.org.event_calls]
        gaps = [b - a for a, b in itertools.pairwise(t)]
        # Equal jitter: attempt n waits between half and all of 4 s * 2**n.
        assert 2 <= gaps[0] <= 4
        assert 4 <= gaps[1] <= 8
        assert 8 <= gaps[2] <= 16


async def test_rejected_batch_is_dead_lettered_not_retried(h: Harness) -> None:
    """A 400 moves the batch to the dead-letter store with Okta's causes; no retry loop."""
    h.add_provider("acme")
    daemon = await h.start()
    h.org.fail_events(400)
    await post_all(h, signals(ips(7), "HIGH"))
    assert daemon.store is not None
    await h.until(lambda: daemon.store is not None and daemon.store.dead_letter_count("acme") == 7)
    h.clock.advance(300)
    assert statuses(h) == [400]
    assert daemon.store.pending_total() == 0
    (letter, *_) = await daemon.store.dead_letters("acme")
    assert letter.causes


async def test_rejected_subject_is_dead_lettered_alone(h: Harness) -> None:
    """A 400 naming one subject dead-letters it with its cause; the other 1,599 are sent."""
    cid = h.add_provider("acme")
    daemon = await h.start()
    assert daemon.store is not None
    now = int(h.clock.time() * 1000)
    bad = "198.51.100.\u0664"  # what ingest used to accept: ARABIC-INDIC DIGIT FOUR
    high = ips(499)
    low = ips(1100, offset=1000)
    stored = [Signal(bad, RiskLevel.HIGH, "", now, None, now)]
    stored += [Signal(ip, RiskLevel.HIGH, "", now, None, now) for ip in high]
    stored += [Signal(ip, RiskLevel.LOW, "", now, None, now) for ip in low]
    await daemon.store.add([(["acme"], s) for s in stored])
    await h.until(lambda: len(h.delivered(cid)) >= 1599)
    assert statuses(h) == [400, 202, 202]
    assert set(high) <= set(h.org.accepted[0].ips)
    assert sorted(h.delivered(cid)) == sorted(high + low)
    (letter,) = await daemon.store.dead_letters("acme")
    assert letter.signal.ip == bad
    assert len(letter.causes) == 1
    assert re.match(r"events\[\d+\]\.subjects\[\d+\]\.ip: ", letter.causes[0])


async def test_expired_signal_is_dropped_not_sent(h: Harness) -> None:
    """A signal whose expiresAt passes while it waits behind a backlog is never sent, and
    counted."""
    cid = h.add_provider("acme")
    daemon = await h.start()
    await post_all(h, signals(ips(3000)))
    await h.until(lambda: len(h.delivered(cid)) >= 3000)
    # The window is spent and 3,000 older signals wait: two windows before its turn.
    now_ms = int(h.clock.time() * 1000)
    await post_all(h, signals(ips(3000, offset=3000), timestamp=format_ms(now_ms - 1000)))
    await post_all(h, signals(["192.0.2.77"], expiresAt=format_ms(now_ms + 70_000)))
    await post_all(h, signals(["192.0.2.78"]))
    await h.until(lambda: len(h.delivered(cid)) >= 6001)
    assert "192.0.2.77" not in h.delivered(cid)
    expired = daemon.metrics.registry.get_sample_value(
        "forwarder_signals_expired_total", {"provider": "acme"}
    )
    assert expired == 1


async def test_metrics_match_what_okta_accepted(h: Harness) -> None:
    """subjects_sent and calls_total agree with the sandbox; health endpoints answer."""
    cid = h.add_provider("acme")
    await h.start()
    await post_all(h, signals(ips(1200), "MEDIUM"))
    await h.until(lambda: len(h.delivered(cid)) >= 1200)
    status, text = await h.get("/metrics")
    assert status == 200
    assert 'forwarder_subjects_sent_total{provider="acme",risk_level="MEDIUM"} 1200.0' in text
    assert 'forwarder_okta_calls_total{outcome="accepted",provider="acme"} 2.0' in text
    assert 'forwarder_pending_signals{provider="acme",risk_level="MEDIUM"} 0.0' in text
    assert (await h.get("/healthz"))[0] == 200


async def test_calls_carry_each_ip_once_when_expired_rows_are_skipped(h: Harness) -> None:
    """A backlog with expired rows between fresh ones: no IP twice in a call, and
    subjects_sent counts exactly what Okta accepted."""
    cid = h.add_provider("acme")
    daemon = await h.start()
    assert daemon.store is not None
    now = int(h.clock.time() * 1000)
    rows = []
    for i, ip in enumerate(ips(2000)):
        # Ascending timestamps, every other row already expired: lease order alternates.
        exp = now - 1 if i % 2 else None
        rows.append((["acme"], Signal(ip, RiskLevel.MEDIUM, "", now - 5000 + i, exp, now)))
    await daemon.store.add(rows)
    await h.until(lambda: daemon.store is not None and daemon.store.pending_total() == 0)
    for call in h.org.accepted:
        assert len(call.ips) == len(set(call.ips))
    assert sorted(h.delivered(cid)) == sorted(ips(2000)[::2])
    sent = daemon.metrics.registry.get_sample_value(
        "forwarder_subjects_sent_total", {"provider": "acme", "risk_level": "MEDIUM"}
    )
    assert sent == 1000


async def test_logs_never_contain_secrets(tmp_path: Path) -> None:
    """Tokens, assertions, key material and ingest tokens never reach the logs."""
    log = io.StringIO()
    configure_logging("debug", "json", stream=log)
    ingest_token = "ingest-secret-4b1d"
    (tmp_path / "tokens").write_text(ingest_token + "\n")
    async with harness(tmp_path) as h:
        key = generate_signing_key("RS256")
        cid = h.add_provider("acme", key=key)
        h.add_provider("bad", registered_key=generate_signing_key("ES256"))
        # A DPoP-required app, with resource nonces: proofs, DPoP tokens and nonces too.
        dpop_key = generate_signing_key("ES256")
        (tmp_path / "dpop.jwk.json").write_text(private_jwk_json(dpop_key))
        dpop_cid = h.add_provider(
            "strict", dpop_app=True, dpop="always", dpop_key_file=str(tmp_path / "dpop.jwk.json")
        )
        h.org.dpop.resource_nonce = True
        daemon = await h.start(ingest={"tokens_file": str(tmp_path / "tokens")})
        async with aiohttp.ClientSession() as s:
            for auth in (f"Bearer {ingest_token}", "Bearer wrong-token"):
                async with s.post(
                    f"{daemon.ingest_url}/v1/signals",
                    json=signals(ips(5), "HIGH"),
                    headers={"Authorization": auth},
                ) as resp:
                    await resp.read()
        await h.until(lambda: len(h.delivered(cid)) >= 5)
        h.org.revoke_tokens()
        h.clock.advance(60)
        async with aiohttp.ClientSession() as s:
            async with s.post(
                f"{daemon.ingest_url}/v1/signals",
                json=signals(ips(5, offset=5), "HIGH"),
                headers={"Authorization": f"Bearer {ingest_token}"},
            ) as resp:
                assert resp.status == 202
        await h.until(lambda: len(h.delivered(cid)) >= 10)
        await h.until(lambda: len(h.delivered(dpop_cid)) >= 10)
        issued = h.org.issued_tokens()
        nonce = h.org.dpop.nonce
    text = log.getvalue()
    assert "dpop_required_by_app" not in text  # "always": no detour
    assert nonce not in text
    assert "batch_delivered" in text
    assert "provider_failing" in text
    assert len(issued) >= 2
    for secret in [*issued, ingest_token]:
        assert secret not in text
    assert "eyJ" not in text  # no JWT (client assertion) of any kind
    private = private_jwk_json(key)
    for field in ("d", "p", "q", "dp", "dq", "qi"):
        value = re.search(rf'"{field}": "([^"]+)"', private)
        assert value is not None
        assert value.group(1)[:24] not in text
    dpop_private = re.search(r'"d": "([^"]+)"', private_jwk_json(dpop_key))
    assert dpop_private is not None
    assert dpop_private.group(1)[:24] not in text


def test_dpop_headers_and_proofs_are_redacted_wherever_they_are_logged() -> None:
    """A DPoP Authorization value, a proof (a JWT) and a dpop=/proof= field are masked."""
    log = io.StringIO()
    configure_logging("debug", "json", stream=log)
    proof = DPoP(mode="always", clock=FakeClock()).proof(
        method="POST", url="https://acme.okta.com/oauth2/v1/token", server="token"
    )
    structlog.get_logger("t").warning(
        "x", error=f"Authorization: DPoP abcdefgh12345678 DPoP: {proof}", dpop=proof, proof=proof
    )
    text = log.getvalue()
    assert "abcdefgh12345678" not in text
    assert proof.split(".")[2][:16] not in text
    assert "eyJ" not in text
