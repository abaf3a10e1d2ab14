"""The detector API over real loopback HTTP, with a real SQLite store."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from forwarder.clock import FakeClock
from forwarder.ingest import IngestApi
from forwarder.serving import serve
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
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        async with serve(ingest.app(), sock), aiohttp.ClientSession() as session:
            yield Api(f"http://127.0.0.1:{port}", store, ingest, session)


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


async def post_encoded(
    api: Api, coding: str, data: bytes
) -> tuple[int, str, dict[str, object], str]:
    """POST ``data`` as-is with ``Content-Encoding: coding``."""
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": coding,
        "Authorization": f"Bearer {TOKEN}",
    }
    async with api.session.post(
        f"{api.url}/v1/signals", data=data, headers=headers, compress=None
    ) as r:
        return r.status, r.content_type, await r.json(), r.headers.get("Accept-Encoding", "")


GOOD_BODY = json.dumps([{"ip": "203.0.113.9", "riskLevel": "HIGH"}]).encode()


@pytest.mark.parametrize(
    ("coding", "data", "status"),
    [
        ("gzip", b"not gzip at all", 400),
        ("deflate", b"not deflate either", 400),
        ("gzip", gzip.compress(GOOD_BODY)[:-6], 400),
        ("br", b"\x0b\x02\x80not brotli", 415),
        ("zstd", b"(\xb5/\xfd not zstd", 415),
        ("x-compress-42", GOOD_BODY, 415),
        ("gzip, unknown", gzip.compress(GOOD_BODY), 415),
    ],
)
async def test_broken_or_unknown_content_encoding_gets_a_json_4xx(
    api: Api, coding: str, data: bytes, status: int
) -> None:
    """A corrupt body is a JSON 400, an unsupported coding a JSON 415 naming what works."""
    got, ctype, body, accept = await post_encoded(api, coding, data)
    assert (got, ctype) == (status, "application/json")
    assert set(body) == {"error", "details"}
    if status == 415:
        assert "not supported" in str(body["error"])
        assert accept == "gzip, deflate"
    assert api.store.pending_total() == 0


@pytest.mark.parametrize(
    ("coding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", bytes)],
)
async def test_gzip_and_deflate_bodies_are_accepted(
    api: Api, coding: str, encode: Callable[[bytes], bytes]
) -> None:
    """Bodies in a supported coding are decoded and stored."""
    got, _, body, _ = await post_encoded(api, coding, encode(GOOD_BODY))
    assert (got, body) == (202, {"accepted": 1})


async def test_a_gzip_bomb_gets_413_without_inflating_it(api: Api) -> None:
    """The decoded size counts against max_body_bytes: a 3 KB gzip of 3 MB is a 413."""
    bomb = gzip.compress(b" " * 3_000_000, compresslevel=9)
    assert len(bomb) < api.ingest._max_body
    got, _, body, _ = await post_encoded(api, "gzip", bomb)
    assert got == 413
    assert "max_body_bytes" in str(body["error"])


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n",
        b"POST /v1/signals HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/signals HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ],
)
async def test_malformed_http_and_unknown_routes_get_json(api: Api, request_bytes: bytes) -> None:
    """aiohttp's own answers (bad request line, huge header, 404, 405) are JSON too."""
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request_bytes)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b" 4" in head.split(b"\r\n")[0]
    assert b"application/json" in head
    assert set(json.loads(body)) == {"error", "details"}
    assert b"aaaa" not in body


async def test_a_400_lists_at_most_100_problems_and_counts_the_rest(api: Api) -> None:
    """A body of empty objects gets the first 100 problems, the total, and a note."""
    body = b"[" + b",".join([b"{}"] * 1300) + b"]"
    status, answer, _ = await api.post(body)
    assert status == 400
    details = answer["details"]
    assert isinstance(details, list)
    assert len(details) == 100
    assert answer["details_total"] == 2600  # ip and riskLevel missing in each
    assert "1300 of 1300 signals are invalid" in str(answer["error"])
    assert "the first 100 of 2600 problems are listed" in str(answer["error"])
    assert [d["index"] for d in details[:4]] == [0, 0, 1, 1]


async def test_ndjson_bad_lines_are_capped_too(api: Api) -> None:
    """An NDJSON body of 2000 broken lines names 100 of them and counts all."""
    status, answer, _ = await api.post(b"x\n" * 2000, ctype="application/x-ndjson")
    assert status == 400
    assert isinstance(answer["details"], list)
    assert len(answer["details"]) == 100
    assert answer["details_total"] == 2000


def _body_of(kind: str, limit: int) -> bytes:
    if kind == "empty objects":
        return b"[" + b",".join([b"{}"] * ((limit - 2) // 3)) + b"]"
    item = '{"ip": "10.%d.%d.%d", "riskLevel": "HIGH", "message": "credential stuffing"}'
    count = limit // (len(item) + 4)
    return (
        "[" + ",".join(item % (i >> 16, i >> 8 & 255, i & 255) for i in range(count)) + "]"
    ).encode()


@pytest.mark.parametrize("kind", ["empty objects", "valid signals"])
async def test_request_memory_is_a_small_multiple_of_the_body(tmp_path: Path, kind: str) -> None:
    """A full body (128 KiB here), hostile or valid, costs at most 20x its size in memory."""
    body = _body_of(kind, 131_072)
    async with SqliteStore(tmp_path / "m.db", max_pending=100_000) as store:
        ingest = IngestApi(store=store, providers=["a"], clock=FakeClock(), max_body_bytes=131_072)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/signals"
        async with serve(ingest.app(), sock), aiohttp.ClientSession() as session:
            headers = {"Content-Type": "application/json"}
            async with session.post(url, data=b"[{}]", headers=headers) as resp:
                assert resp.status == 400  # warm: lazy imports and caches are not the body's
            tracemalloc.start()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    answer = await resp.read()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert resp.status == (400 if kind == "empty objects" else 202)
    assert len(answer) < 20_000
    # Measured: 7.5x (empty objects; main: ~350x) and 14x (valid, mostly the store's
    # group commit); the bound leaves room for allocator noise.
    assert peak < 20 * len(body), f"{peak / 2**20:.1f} MiB"


async def test_a_400_does_not_echo_a_huge_unknown_key(api: Api) -> None:
    """An unknown field named by a 3 KB key is listed by its first 64 characters."""
    status, answer, _ = await api.post([{"ip": "192.0.2.1", "riskLevel": "LOW", "k" * 3000: 1}])
    assert status == 400
    details = answer["details"]
    assert isinstance(details, list)
    assert details[0]["field"] == "k" * 64


async def test_unknown_provider_is_named_without_listing_the_configured_ones(api: Api) -> None:
    """A 400 for an unknown provider names what was sent and counts, not lists, the others."""
    status, answer, _ = await api.post([{"ip": "192.0.2.1", "riskLevel": "LOW", "provider": "zz"}])
    assert status == 400
    details = answer["details"]
    assert isinstance(details, list)
    message = details[0]["message"]
    assert "'zz'" in message
    assert "2 providers are configured" in message
    assert "a, b" not in message
