"""/healthz and /readyz: liveness never depends on Okta; readiness is the store and ingest,
with every provider's state in the body (in process, FakeClock shared with the sandbox)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.okta.keys import generate_signing_key
from forwarder.signals import format_ms
from tests.harness import Harness, harness, ips


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as h:
        yield h


async def high(h: Harness, count: int = 1, offset: int = 0) -> int:
    status, _ = await h.post([{"ip": ip, "riskLevel": "HIGH"} for ip in ips(count, offset)])
    return status


async def test_ready_provider_reports_its_last_call(h: Harness) -> None:
    """A healthy provider is `ok` with the time and outcome of its last call."""
    cid = h.add_provider("acme")
    await h.start()
    assert await high(h) == 202
    await h.until(lambda: len(h.delivered(cid)) >= 1)
    status, body = await h.get("/readyz")
    assert status == 200
    assert body["status"] == "ready"
    assert body["store"] == "writable"
    assert body["ingest"] == "listening"
    acme = body["providers"]["acme"]
    assert acme["state"] == "ok"
    assert acme["last_outcome"] == "accepted"
    assert acme["last_call_at"] == format_ms(int(h.org.event_calls[0].at * 1000))
    assert acme["pending"] == 0
    assert "hint" not in acme


async def test_failing_provider_is_visible_but_pod_stays_ready(h: Harness) -> None:
    """Refused credentials: 200 overall; the provider is `failing` with the error and a hint."""
    h.add_provider("bad", registered_key=generate_signing_key("RS256"))
    daemon = await h.start()
    assert await high(h, 2) == 202
    await h.until(lambda: daemon.dispatchers["bad"].state.status == "failing")
    status, body = await h.get("/readyz")
    assert status == 200
    bad = body["providers"]["bad"]
    assert bad["state"] == "failing"
    assert "invalid_client" in bad["last_error"]
    assert "key" in bad["hint"]
    assert bad["pending"] == 2
    assert bad["retry_in_s"] > 0
    assert (await h.get("/healthz"))[0] == 200


async def test_rate_limited_provider_says_until_when(h: Harness) -> None:
    """After a 429 the provider is `rate_limited` until Okta's reset, and the pod is ready."""
    key = generate_signing_key("RS256")
    cid = h.add_provider("acme", key=key)
    await h.spend_window(cid, key)  # another client spends the provider's window
    spent_at = h.clock.time()
    daemon = await h.start()
    assert await high(h) == 202
    await h.until(lambda: daemon.dispatchers["acme"].state.status == "rate_limited")
    status, body = await h.get("/readyz")
    assert status == 200
    acme = body["providers"]["acme"]
    assert acme["state"] == "rate_limited"
    assert acme["last_outcome"] == "rate_limited"
    assert "429" in acme["last_error"]
    until = daemon.dispatchers["acme"].state.until
    assert until is not None
    assert until >= spent_at + 60
    assert acme["until"] == format_ms(int(until * 1000))
    assert acme["retry_in_s"] == pytest.approx(until - h.clock.time(), abs=0.01)


async def test_backing_off_provider_says_until_when(tmp_path: Path) -> None:
    """A 503 from Okta: the provider is `backing_off` with the retry time; the pod is ready."""
    async with harness(tmp_path, calls_per_minute=600) as h:
        h.add_provider("acme", calls_per_minute=600)
        daemon = await h.start(dispatch={"backoff_base_s": 8.0})
        h.org.fail_events(503)
        assert await high(h) == 202
        await h.until(lambda: daemon.dispatchers["acme"].state.status == "backing_off")
        status, body = await h.get("/readyz")
        assert status == 200
        acme = body["providers"]["acme"]
        assert acme["state"] == "backing_off"
        assert acme["last_outcome"] == "server_error"
        assert "503" in acme["last_error"]
        assert 4 <= acme["retry_in_s"] <= 8  # equal jitter on the first 8 s step
        assert acme["until"] is not None


async def test_unwritable_store_makes_pod_unready_until_a_write_commits(h: Harness) -> None:
    """Failed writes: /readyz 503 (liveness stays 200); once writes work it is ready, unprompted."""
    h.add_provider("acme")
    daemon = await h.start()
    db = sqlite3.connect(h.tmp / "forwarder.db", isolation_level=None)
    try:
        # A disk that refuses every write, simulated for the tables a write touches.
        db.executescript(
            """
            CREATE TRIGGER no_signals BEFORE INSERT ON signals
            BEGIN SELECT RAISE(ABORT, 'simulated disk full'); END;
            CREATE TRIGGER no_probe_insert BEFORE INSERT ON write_probe
            BEGIN SELECT RAISE(ABORT, 'simulated disk full'); END;
            CREATE TRIGGER no_probe_update BEFORE UPDATE ON write_probe
            BEGIN SELECT RAISE(ABORT, 'simulated disk full'); END;
            """
        )
        status, body = await h.post([{"ip": "192.0.2.1", "riskLevel": "HIGH"}])
        assert status == 503
        status, body = await h.get("/readyz")
        assert status == 503
        assert body["status"] == "not_ready"
        assert body["store"] == "unavailable"
        assert body["providers"]["acme"]["state"] == "ok"
        _, metrics = await h.get("/metrics")
        assert "forwarder_ready 0.0" in metrics
        assert (await h.get("/healthz"))[0] == 200
        db.executescript("DROP TRIGGER no_signals; DROP TRIGGER no_probe_insert;")
        db.executescript("DROP TRIGGER no_probe_update;")
    finally:
        db.close()
    status, body = await h.get("/readyz")
    assert status == 200
    assert body["store"] == "writable"
    assert daemon.is_ready()
    assert await high(h) == 202


async def test_draining_daemon_is_not_ready(h: Harness) -> None:
    """After SIGTERM, while a call finishes, /readyz says ingest is not accepting."""
    cid = h.add_provider("acme")
    daemon = await h.start(dispatch={"shutdown_grace_s": 5.0})
    h.org.events_delay_s = 1.0
    assert await high(h) == 202
    await h.until(lambda: daemon.dispatchers["acme"].budget.last_call() is not None)
    stopping = asyncio.create_task(h.stop())
    answers: list[tuple[int, Any]] = []
    while not stopping.done():
        async with h.session.get(f"{daemon.metrics_url}/readyz") as resp:
            answers.append((resp.status, await resp.json()))
        if answers[-1][0] == 503:
            break
        await asyncio.sleep(0.01)
    status, body = answers[-1]
    assert status == 503
    assert body["ingest"] == "not_accepting"
    assert body["store"] == "writable"
    await stopping
    assert h.delivered(cid) == ips(1)
