"""The detector API over real loopback HTTP, with a real SQLite store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from forwarder.clock import FakeClock
from forwarder.ingest import IngestApi
from forwarder.signals import RiskLevel, format_ms
from forwarder.store.sqlite import SqliteStore

TOKEN = "detector-secret-token-1"


@dataclass
class Api:
    url: str
    store: SqliteStore
    ingest: IngestApi
    session: aiohttp.ClientSession

    async def post(
        self, body: object, *, ctype: str = "application/json", token: str | None = TOKEN
    ) -> tuple[int, dict[str, object], dict[str, str]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": ctype}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.post(f"{self.url}/v1/signals", data=data, headers=headers) as r:
            return r.status, await r.json(), dict(r.headers)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with SqliteStore(tmp_path / "f.db", max_pending=50, providers=["a", "b"]) as store:
        ingest = IngestApi(
            store=store,
            providers=["a", "b"],
            clock=FakeClock(),
            tokens=[TOKEN, "other-token"],
            max_body_bytes=4096,
        )
        runner = web.AppRunner(ingest.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            yield Api(f"http://127.0.0.1:{port}", store, ingest, session)
        await runner.cleanup()


async def test_accepted_signals_are_stored(api: Api) -> None:
    """202 {"accepted": N} and the rows are in the store for every provider."""
    status, body, _ = await api.post(
        [
            {"ip": "192.0.2.1", "riskLevel": "high"},
            {"ip": "192.0.2.2", "riskLevel": "LOW", "provider": "b"},
        ]
    )
    assert (status, body) == (202, {"accepted": 2})
    assert api.store.pending_counts("a") == {RiskLevel.HIGH: 1}
    assert api.store.pending_counts("b") == {RiskLevel.HIGH: 1, RiskLevel.LOW: 1}


async def test_single_object_and_ndjson(api: Api) -> None:
    """One object, or newline-delimited JSON, is accepted too."""
    status, body, _ = await api.post({"ip": "192.0.2.1", "riskLevel": "MEDIUM"})
    assert (status, body) == (202, {"accepted": 1})
    nd = b'{"ip": "192.0.2.2", "riskLevel": "LOW"}\n\n{"ip": "192.0.2.3", "riskLevel": "LOW"}\n'
    status, body, _ = await api.post(nd, ctype="application/x-ndjson")
    assert (status, body) == (202, {"accepted": 2})
    # Broadcast signals are stored once, and pending for each provider.
    assert api.store.pending_total() == 3
    assert (
        api.store.pending_counts("a")
        == api.store.pending_counts("b")
        == {
            RiskLevel.MEDIUM: 1,
            RiskLevel.LOW: 2,
        }
    )


async def test_bad_items_are_all_named_and_nothing_stored(api: Api) -> None:
    """400 lists every bad item with index and field; the good ones are not stored either."""
    status, body, _ = await api.post(
        [
            {"ip": "192.0.2.1", "riskLevel": "HIGH"},
            {"ip": "not-an-ip", "riskLevel": "HIGH"},
            {"ip": "192.0.2.3", "riskLevel": "URGENT", "provider": "zzz"},
        ]
    )
    assert status == 400
    details = body["details"]
    assert isinstance(details, list)
    assert {(d["index"], d["field"]) for d in details} == {
        (1, "ip"),
        (2, "riskLevel"),
        (2, "provider"),
    }
    assert "2 of 3 signals are invalid" in str(body["error"])
    assert api.store.pending_total() == 0


@pytest.mark.parametrize(
    ("body", "ctype", "token", "status"),
    [
        ([{"ip": "192.0.2.1", "riskLevel": "LOW"}], "application/json", None, 401),
        ([{"ip": "192.0.2.1", "riskLevel": "LOW"}], "application/json", "wrong", 401),
        ([{"ip": "192.0.2.1", "riskLevel": "LOW"}], "text/plain", TOKEN, 415),
        (b"{not json", "application/json", TOKEN, 400),
        (b"[]", "application/json", TOKEN, 400),
        (b"7", "application/json", TOKEN, 400),
        (b"\xff\xfe", "application/json", TOKEN, 400),
        (b"x" * 5000, "application/json", TOKEN, 413),
        (b'{"ip": 1}\n{oops', "application/x-ndjson", TOKEN, 400),
    ],
)
async def test_bad_requests_get_a_4xx_and_store_nothing(
    api: Api, body: object, ctype: str, token: str | None, status: int
) -> None:
    """Auth, content type, malformed and oversized bodies: the right 4xx, never a 500."""
    got, answer, _ = await api.post(body, ctype=ctype, token=token)
    assert got == status
    assert answer["error"]
    assert api.store.pending_total() == 0


async def test_ndjson_bad_lines_are_named_by_line(api: Api) -> None:
    """Each malformed NDJSON line is reported once, with its line number."""
    body = b'{"ip": "192.0.2.1", "riskLevel": "LOW"}\n{oops\n\n[1,\n'
    status, answer, _ = await api.post(body, ctype="application/x-ndjson")
    assert status == 400
    details = answer["details"]
    assert isinstance(details, list)
    assert [d["message"].split(" is ")[0] for d in details] == ["line 2", "line 4"]
    assert api.store.pending_total() == 0


async def raw_http(api: Api, head: bytes, body: bytes) -> bytes:
    """Send one hand-made HTTP/1.1 request; return the status line."""
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/signals HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + head
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )
    await writer.drain()
    status = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return status


@pytest.mark.parametrize(
    ("head", "body", "status"),
    [
        (b"Authorization: Bearer \xff\xfe\r\n", b"[]", b" 401 "),
        (
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Encoding: gzip\r\n",
            b"not gzip at all",
            b" 400 ",
        ),
        (b"Authorization: Bearer " + TOKEN.encode() + b"\r\n", b"[" * 4000, b" 400 "),
    ],
)
async def test_hostile_requests_get_a_4xx(
    api: Api, head: bytes, body: bytes, status: bytes
) -> None:
    """Non-UTF-8 tokens, a body that is not the gzip it claims, deep nesting: 4xx, never 500."""
    assert status in await raw_http(api, head, body)
    assert api.store.pending_total() == 0


async def test_signals_older_than_max_age_are_refused(api: Api) -> None:
    """A 202 must mean "will be sent": timestamps past max_age_s and far expiries are 400s."""
    now = api.ingest._clock.time()
    old = format_ms(int((now - 2 * 86_400) * 1000))
    far = format_ms(int((now + 400 * 86_400) * 1000))
    status, body, _ = await api.post(
        [
            {"ip": "192.0.2.1", "riskLevel": "LOW", "timestamp": old},
            {"ip": "192.0.2.2", "riskLevel": "LOW", "expiresAt": far},
            {"ip": "192.0.2.3", "riskLevel": "LOW", "expiresAt": "9999-12-31T23:59:59-23:59"},
        ]
    )
    assert status == 400
    details = body["details"]
    assert isinstance(details, list)
    assert [(d["index"], d["field"]) for d in details] == [
        (0, "timestamp"),
        (1, "expiresAt"),
        (2, "expiresAt"),
    ]
    assert "max_age_s" in details[0]["message"]
    assert api.store.pending_total() == 0


@pytest.mark.parametrize(
    ("field", "offset_s", "why"),
    [
        ("expiresAt", 1, "more than 65 s in the future"),
        ("expiresAt", 5, "more than 65 s in the future"),
        ("expiresAt", 65, "more than 65 s in the future"),
        ("timestamp", -86_400 + 1, "expire before it could be sent"),
    ],
)
async def test_signal_that_would_expire_before_its_call_is_refused(
    api: Api, field: str, offset_s: int, why: str
) -> None:
    """expiresAt within 65 s or a timestamp at the max_age_s edge: 400 saying why, not a 202."""
    now = api.ingest._clock.time()
    when = format_ms(int((now + offset_s) * 1000))
    status, body, _ = await api.post({"ip": "192.0.2.1", "riskLevel": "HIGH", field: when})
    assert status == 400
    details = body["details"]
    assert isinstance(details, list)
    assert [(d["field"], why in d["message"]) for d in details] == [(field, True)]
    assert api.store.pending_total() == 0


async def test_second_token_is_accepted(api: Api) -> None:
    """Any token of the tokens file works."""
    status, _, _ = await api.post({"ip": "192.0.2.1", "riskLevel": "LOW"}, token="other-token")
    assert status == 202


async def test_full_store_answers_503_with_retry_after(api: Api) -> None:
    """At max_pending the API says 503 and when to retry."""
    items = [{"ip": f"198.18.0.{i}", "riskLevel": "LOW", "provider": "a"} for i in range(50)]
    assert (await api.post(items))[0] == 202
    status, body, headers = await api.post({"ip": "192.0.2.99", "riskLevel": "LOW"})
    assert status == 503
    assert "Retry-After" in headers
    assert "store is full" in str(body["error"])


async def test_shutting_down_answers_503(api: Api) -> None:
    """After shutdown starts, ingest refuses with 503 instead of accepting."""
    api.ingest.accepting = False
    status, _, headers = await api.post({"ip": "192.0.2.1", "riskLevel": "LOW"})
    assert status == 503
    assert headers["Retry-After"] == "5"
    assert api.store.pending_total() == 0


async def test_concurrent_requests_all_commit(api: Api) -> None:
    """Concurrent requests share commits and all get 202."""
    results = await asyncio.gather(
        *(
            api.post([{"ip": f"198.18.1.{i}", "riskLevel": "LOW", "provider": "a"}])
            for i in range(20)
        )
    )
    assert {r[0] for r in results} == {202}
    assert api.store.pending_counts("a") == {RiskLevel.LOW: 20}
