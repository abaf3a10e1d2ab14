"""Property tests of ingest over real loopback HTTP with a real SQLite store.

For any body (arbitrary bytes, any JSON value, near-valid signals, NDJSON lines), any
content type and any Content-Encoding, ingest answers within a time bound with a status
and a JSON body the OpenAPI document declares (never a 5xx), and its answer stays small
whatever the body; a 202 means every signal is in the store, a 400 that nothing changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ipaddress
import json
import os
import socket
import sqlite3
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarder.clock import FakeClock
from forwarder.errors import StoreError
from forwarder.ingest import IngestApi
from forwarder.serving import serve
from forwarder.signals import parse_rfc3339_ms
from forwarder.store.sqlite import SqliteStore
from tests.strategies import NOW_MS, PROVIDERS, json_values, near_valid_items, valid_items

TOKEN = "property-token"
MAX_BODY = 16_384
#: Any answer slower than this is a hang.
TIME_BOUND_S = 5.0
#: An error answer lists a bounded number of problems (issue 9, finding 4).
MAX_ANSWER_BYTES = 64 * 1024

FAST = settings(
    # FORWARDER_FUZZ_EXAMPLES=5000 fuzzes longer by hand.
    max_examples=int(os.environ.get("FORWARDER_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=list(HealthCheck),  # generation speed is not what is tested
    database=None,
)

CONTENT_TYPES = [
    "application/json",
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "APPLICATION/JSON; charset=utf-8",
    "text/plain",
    "application/xml",
    "multipart/form-data; boundary=x",
    "",
    "application/json; charset=bogus",
]


@dataclass
class Live:
    """An ingest server on loopback, driven from a synchronous hypothesis test."""

    loop: asyncio.AbstractEventLoop
    url: str
    db: Path
    ingest: IngestApi
    session: aiohttp.ClientSession

    def post(
        self, body: bytes, headers: dict[str, str], *, chunked: bool = False
    ) -> tuple[int, str, bytes, float]:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 700):
                yield body[i : i + 700]

        async def go() -> tuple[int, str, bytes, float]:
            started = time.monotonic()
            data: Any = chunks() if chunked else body  # chunked: no Content-Length
            async with asyncio.timeout(TIME_BOUND_S):
                async with self.session.post(
                    f"{self.url}/v1/signals", data=data, headers=headers
                ) as resp:
                    payload = await resp.read()
                    return (
                        resp.status,
                        resp.headers.get("Content-Type", ""),
                        payload,
                        time.monotonic() - started,
                    )

        return self.loop.run_until_complete(go())

    def pending(self) -> dict[tuple[str, str], int]:
        """Per (provider, ip) waiting, the newest observation time: targeted entries, and
        each broadcast entry for every provider whose cursor has not passed it."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as db:
            rows = db.execute(_PENDING).fetchall()
        out: dict[tuple[str, str], int] = {}
        for p, ip, ts in rows:
            out[(p, ip)] = max(ts, out.get((p, ip), ts))
        return out


_PENDING = """
SELECT provider, ip, ts_ms FROM targeted
UNION ALL
SELECT c.provider, s.ip, s.ts_ms FROM signals AS s JOIN cursors AS c
    ON c.risk = s.risk AND s.seq > c.seq
WHERE NOT EXISTS (
    SELECT 1 FROM done AS d WHERE d.provider = c.provider AND d.risk = s.risk AND d.seq = s.seq
)
"""


@contextlib.contextmanager
def live_ingest(tmp: Path) -> Iterator[Live]:
    loop = asyncio.new_event_loop()
    db = tmp / "f.db"
    store = SqliteStore(db, max_pending=10_000_000, providers=PROVIDERS)

    serving = contextlib.AsyncExitStack()

    async def start() -> tuple[IngestApi, aiohttp.ClientSession, str]:
        await serving.enter_async_context(store)
        ingest = IngestApi(
            store=store,
            providers=PROVIDERS,
            clock=FakeClock(start=NOW_MS / 1000),
            tokens=[TOKEN],
            max_body_bytes=MAX_BODY,
        )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        await serving.enter_async_context(serve(ingest.app(), sock))
        session = await serving.enter_async_context(aiohttp.ClientSession())
        return ingest, session, f"http://127.0.0.1:{port}"

    ingest, session, url = loop.run_until_complete(start())
    try:
        yield Live(loop, url, db, ingest, session)
    finally:
        loop.run_until_complete(serving.aclose())
        loop.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with live_ingest(tmp_path) as api:
        yield api


def _validators(ingest: IngestApi) -> dict[int, Any]:
    """The JSON Schema of each documented POST /v1/signals answer, from the served document."""
    doc = ingest.openapi()
    responses = doc["paths"]["/v1/signals"]["post"]["responses"]
    out = {}
    for code, response in responses.items():
        schema = response["content"]["application/json"]["schema"]
        out[int(code)] = jsonschema_rs.validator_for({**schema, "components": doc["components"]})
    return out


def _check_answer(live: Live, status: int, ctype: str, payload: bytes, took: float) -> Any:
    """The answer is one the document declares, with a body of its schema, small and quick."""
    validators = _validators(live.ingest)
    assert status in validators, f"undocumented status {status}: {payload[:300]!r}"
    assert status < 500 or status == 503, payload[:300]
    assert ctype.startswith("application/json"), (status, ctype, payload[:300])
    assert len(payload) <= MAX_ANSWER_BYTES, f"{len(payload)}-byte answer to a {MAX_BODY} limit"
    body = json.loads(payload)
    errors = [e.message for e in validators[status].iter_errors(body)]
    assert not errors, (status, errors, payload[:300])
    assert took < TIME_BOUND_S
    return body


_encodings = st.sampled_from(
    ["", "identity", "gzip", "deflate", "gzip-broken", "br", "x-zip", "gzip, deflate"]
)


def _encode(body: bytes, encoding: str) -> tuple[bytes, dict[str, str]]:
    if encoding == "gzip":
        return gzip.compress(body), {"Content-Encoding": "gzip"}
    if encoding == "deflate":
        return zlib.compress(body), {"Content-Encoding": "deflate"}
    if encoding == "gzip-broken":
        return gzip.compress(body)[:-6] + b"junk!!", {"Content-Encoding": "gzip"}
    if encoding:
        return body, {"Content-Encoding": encoding}
    return body, {}


def _ndjson(items: list[Any]) -> bytes:
    return b"".join(json.dumps(i).encode() + b"\n" for i in items)


bodies = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(near_valid_items(), max_size=8).map(lambda v: json.dumps(v).encode()),
    st.lists(near_valid_items() | valid_items(), max_size=8).map(_ndjson),
    st.integers(1, 5000).map(lambda n: b"[" + b",".join([b"{}"] * n) + b"]"),
)


def test_any_body_gets_a_documented_answer(live: Live) -> None:
    """Any bytes, content type, encoding, token, with or without Content-Length: a
    documented 4xx/202, JSON, bounded, quick."""

    @FAST
    @given(
        body=bodies,
        ctype=st.sampled_from(CONTENT_TYPES),
        encoding=_encodings,
        token=st.sampled_from([TOKEN, TOKEN, TOKEN, "", "wrong", TOKEN + " "]),
        chunked=st.booleans(),
    )
    def check(body: bytes, ctype: str, encoding: str, token: str, chunked: bool) -> None:
        data, headers = _encode(body, encoding)
        if ctype:
            headers["Content-Type"] = ctype
        if token:
            headers["Authorization"] = f"Bearer {token}"
        status, rtype, payload, took = live.post(data, headers, chunked=chunked)
        _check_answer(live, status, rtype, payload, took)

    check()


def test_error_answers_stay_small_however_many_items_are_bad(live: Live) -> None:
    """A body of many bad items gets a bounded answer, not one growing with the items
    (issue 9, finding 4: a 1 MiB body of ``{}`` got a 52 MB answer)."""

    @FAST
    @given(
        count=st.integers(1, MAX_BODY // 3),
        item=st.sampled_from([{}, {"ip": "x"}, {"riskLevel": 1, "zz": 2}, []]),
        ndjson=st.booleans(),
    )
    def check(count: int, item: Any, ndjson: bool) -> None:
        line = json.dumps(item, separators=(",", ":")).encode()
        count = min(count, MAX_BODY // (len(line) + 1))
        if ndjson:
            body, ctype = b"\n".join([line] * count), "application/x-ndjson"
        else:
            body, ctype = b"[" + b",".join([line] * count) + b"]", "application/json"
        status, rtype, payload, took = live.post(
            body, {"Content-Type": ctype, "Authorization": f"Bearer {TOKEN}"}
        )
        answer = _check_answer(live, status, rtype, payload, took)
        assert status == 400, answer

    check()


def _expected_rows(item: dict[str, Any]) -> list[tuple[tuple[str, str], int]]:
    """The (provider, ip) keys a stored item must have (ip normalised; IPv4-mapped IPv6
    stored as the IPv4 address), and its timestamp."""
    addr = ipaddress.ip_address(item["ip"].strip())
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    targets = item.get("provider")
    if targets is None:
        targets = list(PROVIDERS)
    elif isinstance(targets, str):
        targets = [targets]
    ts = item.get("timestamp")
    ts_ms = NOW_MS if ts is None else parse_rfc3339_ms(ts)
    return [((p, str(addr)), ts_ms) for p in dict.fromkeys(targets)]


def test_202_means_every_signal_is_stored_and_400_that_nothing_is(live: Live) -> None:
    """A 202 {"accepted": N} for N items: each is pending for each of its providers (the
    newest version of it wins coalescing); a 400 leaves the store exactly as it was."""

    @FAST
    @given(
        items=st.lists(valid_items() | near_valid_items(), min_size=1, max_size=12),
        ndjson=st.booleans(),
    )
    def check(items: list[Any], ndjson: bool) -> None:
        before = live.pending()
        body = _ndjson(items) if ndjson else json.dumps(items).encode()
        ctype = "application/x-ndjson" if ndjson else "application/json"
        status, rtype, payload, took = live.post(
            body, {"Content-Type": ctype, "Authorization": f"Bearer {TOKEN}"}
        )
        answer = _check_answer(live, status, rtype, payload, took)
        after = live.pending()
        if status != 202:
            assert status == 400, answer
            assert after == before, "a refused request changed the store"
            return
        assert answer == {"accepted": len(items)}
        expected = set(before)
        for item in items:
            for key, ts_ms in _expected_rows(item):
                assert key in after, f"202 but {item!r} is not pending as {key}"
                assert after[key] >= ts_ms, "an older version overwrote a newer one"
                expected.add(key)
        # Counted: exactly the pairs that were pending plus those of this request.
        assert set(after) == expected

    check()


def test_a_failing_store_gets_the_documented_503_and_no_500(live: Live) -> None:
    """A store error (disk full, I/O error) is a 503 with Retry-After, of the documented
    shape; nothing is acknowledged that was not committed."""
    store = live.ingest._store

    async def broken_add(items: Any) -> Any:
        raise StoreError("database or disk is full")

    original = store.add
    store.add = broken_add  # type: ignore[method-assign]
    try:
        body = json.dumps([{"ip": "192.0.2.9", "riskLevel": "HIGH"}]).encode()
        status, rtype, payload, took = live.post(
            body, {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        )
    finally:
        store.add = original  # type: ignore[method-assign]
    answer = _check_answer(live, status, rtype, payload, took)
    assert status == 503, answer
    assert "disk" not in answer["error"]  # the operator's detail goes to the log
    assert live.pending() == {}
