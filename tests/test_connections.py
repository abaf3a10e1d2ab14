"""Slow and numerous clients on real loopback sockets: timeouts and the connection cap.

The daemon runs in-process with tiny limits (fractions of a second), so each test waits
at most a few real seconds; the timers are the event loop's, not the FakeClock's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import Harness, harness

pytestmark = pytest.mark.timeout(60)

FAST = {"header_timeout_s": 0.3, "body_timeout_s": 0.4, "keepalive_timeout_s": 0.5}
#: Long enough that only the timer under test can close the connection.
PATIENT = {"header_timeout_s": 20.0, "body_timeout_s": 20.0, "keepalive_timeout_s": 20.0}
SIGNAL = json.dumps([{"ip": "203.0.113.5", "riskLevel": "HIGH"}]).encode()


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as h:
        h.add_provider("acme")
        yield h


def _hostport(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*_hostport(url))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def request(body: bytes = SIGNAL, *, close: bool = False) -> bytes:
    head = (
        "POST /v1/signals HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}"
        "\r\n"
    )
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer (Content-Length framed): status, headers, body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
    }
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return int(lines[0].split()[1]), headers, body


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closes the connection (EOF) within ``seconds``."""
    try:
        rest = await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return rest == b""


async def test_idle_connection_is_closed_after_keepalive_timeout(h: Harness) -> None:
    """A connection that sends nothing is closed after keepalive_timeout_s."""
    daemon = await h.start(ingest=FAST)
    async with connect(daemon.ingest_url) as (reader, _):
        assert await closed_within(reader, 3)


async def test_unfinished_request_head_gets_408_and_is_closed(h: Harness) -> None:
    """A request head still incomplete after header_timeout_s: 408 JSON, then closed."""
    daemon = await h.start(ingest={**PATIENT, "header_timeout_s": 0.3})
    async with connect(daemon.ingest_url) as (reader, writer):
        writer.write(b"POST /v1/signals HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            for i in range(100):  # a header byte every 0.05 s: never idle
                writer.write(b"X-Slow-%d: 1\r\n" % i)
                await asyncio.sleep(0.05)

        task = asyncio.create_task(trickle())
        try:
            status, headers, body = await read_answer(reader)
            assert await closed_within(reader, 3)
        finally:
            task.cancel()
    assert status == 408
    assert headers["content-type"] == "application/json"
    assert set(json.loads(body)) == {"error", "details"}


async def test_trickled_body_gets_408_and_is_closed(h: Harness) -> None:
    """A body still incomplete after body_timeout_s: 408 JSON, closed, nothing stored."""
    daemon = await h.start(ingest={**PATIENT, "body_timeout_s": 0.4})
    body = SIGNAL + b" " * 1000
    async with connect(daemon.ingest_url) as (reader, writer):
        writer.write(request(body)[: -len(body)])

        async def trickle() -> None:
            for byte in body:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.02)

        task = asyncio.create_task(trickle())
        try:
            status, _, answer = await read_answer(reader)
            assert await closed_within(reader, 3)
        finally:
            task.cancel()
    assert status == 408
    assert "body_timeout_s" in json.loads(answer)["error"]
    assert daemon.store_entries() == 0


async def test_keepalive_detector_is_unaffected(h: Harness) -> None:
    """Requests on one kept-alive connection, paused under the idle timeout, all get 202."""
    daemon = await h.start(ingest=FAST)
    statuses = []
    async with connect(daemon.ingest_url) as (reader, writer):
        for _ in range(6):  # 6 x 0.2 s: longer than every timeout, never idle for one
            writer.write(request())
            statuses.append((await read_answer(reader))[0])
            await asyncio.sleep(0.2)
    assert statuses == [202] * 6


async def test_connections_beyond_max_connections_are_refused_with_503(h: Harness) -> None:
    """Past max_connections a new connection gets a JSON 503 + Retry-After; a freed slot serves."""
    daemon = await h.start(ingest={**PATIENT, "max_connections": 3})
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(connect(daemon.ingest_url)) for _ in range(3)]
        await asyncio.sleep(0.1)
        async with connect(daemon.ingest_url) as (reader, writer):
            writer.write(request())
            status, headers, body = await read_answer(reader)
        assert (status, headers["retry-after"]) == (503, "1")
        assert "max_connections" in json.loads(body)["error"]
        held[0][1].close()
        await asyncio.sleep(0.2)
        async with connect(daemon.ingest_url) as (reader, writer):
            writer.write(request(close=True))
            assert (await read_answer(reader))[0] == 202


async def test_metrics_port_closes_idle_and_caps_connections(h: Harness) -> None:
    """The side port has the same guards: idle connections close, extra ones get 503."""
    daemon = await h.start(metrics={**FAST, "max_connections": 2})
    async with connect(daemon.metrics_url) as (reader, _):
        assert await closed_within(reader, 3)
    scrape = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    async with connect(daemon.metrics_url) as (r1, w1), connect(daemon.metrics_url) as (_, _w2):
        w1.write(scrape)
        assert (await read_answer(r1))[0] == 200
        async with connect(daemon.metrics_url) as (r3, w3):
            w3.write(scrape)
            assert (await read_answer(r3))[0] == 503


async def test_body_sent_in_parts_within_body_timeout_is_accepted(h: Harness) -> None:
    """A body arriving in pieces before body_timeout_s is stored; the connection lives on."""
    daemon = await h.start(ingest=FAST)
    statuses = []
    async with connect(daemon.ingest_url) as (reader, writer):
        for _ in range(2):
            whole = request()
            writer.write(whole[:-10])
            await asyncio.sleep(0.15)
            writer.write(whole[-10:])
            statuses.append((await read_answer(reader))[0])
            await asyncio.sleep(0.45)  # past the body timeout of the request before
    assert statuses == [202, 202]
