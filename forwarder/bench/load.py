"""The load generator: ``python -m forwarder.bench.load --url URL --size N ...``.

Runs in its own process so it never shares the daemon's event loop. It keeps
``--connections`` keep-alive HTTP/1.1 connections busy, one request in flight on each,
with a minimal client (a bare :class:`asyncio.Protocol`, no aiohttp) so that as much of
the machine as possible is left to the server under test. Two modes:

* ``--duration``: send until ``--start-at + --duration`` (epoch seconds); requests
  completing inside that window are measured, the ones before it are warm-up;
* ``--total``: send exactly that many signals, then stop; everything is measured.

Prints one JSON object on stdout: requests and signals answered 202 in the window,
the window's length, request latencies (ms), every status seen, all signals accepted,
and the CPU seconds this process used inside the window.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from forwarder.bench.workload import RISKS, BodyMaker

__all__ = ["LoadResult", "main"]


@dataclass
class LoadResult:
    """What one load process measured."""

    requests: int = 0
    signals: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    accepted_signals: int = 0
    cpu_s: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "signals": self.signals,
            "seconds": self.seconds,
            "latencies_ms": [round(x, 3) for x in self.latencies_ms],
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "accepted_signals": self.accepted_signals,
            "cpu_s": self.cpu_s,
        }


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self._buf) < total:
            return
        status = int(head[9:12])
        del self._buf[:total]
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(status)

    async def request(self, data: bytes) -> int:
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        url = urlsplit(args.url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        self.size: int = args.size
        self.head = (
            f"POST {url.path or '/'} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        risks = tuple(args.risks.split(",")) if args.risks else RISKS
        self.bodies = BodyMaker(
            args.size,
            first=args.first,
            modulo=args.modulo,
            risks=risks,
            provider=args.provider or None,
        )
        self.counter = itertools.count()
        self.remaining: int | None = None if args.total <= 0 else args.total // args.size
        offset = time.time() - time.perf_counter()
        self.start = (args.start_at - offset) if args.start_at else time.perf_counter()
        self.end = self.start + args.duration if args.duration > 0 else float("inf")
        self.result = LoadResult()
        self._cpu_at_start: float | None = None

    def next_request(self) -> bytes | None:
        if self.remaining is not None:
            if self.remaining <= 0:
                return None
            self.remaining -= 1
        elif time.perf_counter() >= self.end:
            return None
        payload = self.bodies.body(next(self.counter))
        return self.head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload

    def record(self, status: int, started: float, finished: float) -> None:
        r = self.result
        r.statuses[status] += 1
        if status == 202:
            r.accepted_signals += self.size
            if self.start <= finished <= self.end:
                r.requests += 1
                r.signals += self.size
                r.latencies_ms.append((finished - started) * 1000)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        return conn

    async def _worker(self) -> None:
        conn = await self._connect()
        try:
            while (payload := self.next_request()) is not None:
                started = time.perf_counter()
                try:
                    status = await conn.request(payload)
                except ConnectionError:
                    self.result.statuses[0] += 1
                    conn = await self._connect()
                    continue
                self.record(status, started, time.perf_counter())
                if conn.closed:
                    conn = await self._connect()
        finally:
            conn.close()

    async def run(self, connections: int) -> LoadResult:
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        if self.end != float("inf"):
            loop.call_later(max(0.0, self.start - now), self._window_opens)
            loop.call_later(max(0.0, self.end - now), self._window_closes)
        else:
            self._window_opens()
        await asyncio.gather(*(self._worker() for _ in range(connections)))
        if self.end == float("inf"):
            self._window_closes()
        return self.result

    def _window_opens(self) -> None:
        self._cpu_at_start = time.process_time()
        self.start = time.perf_counter()

    def _window_closes(self) -> None:
        self.end = time.perf_counter()
        self.result.seconds = self.end - self.start
        if self._cpu_at_start is not None:
            self.result.cpu_s = time.process_time() - self._cpu_at_start


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m forwarder.bench.load", description=__doc__)
    p.add_argument("--url", required=True, help="http://HOST:PORT/v1/signals")
    p.add_argument("--size", type=int, default=1, help="signals per request")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--first", type=int, default=0, help="number of the first IP")
    p.add_argument("--modulo", type=int, default=0, help="repeat IPs every N signals")
    p.add_argument("--risks", default="", help="risk levels to cycle, e.g. LOW,MEDIUM")
    p.add_argument("--provider", default="", help="send every signal to this provider only")
    p.add_argument("--start-at", type=float, default=0.0, help="epoch s the window opens")
    p.add_argument("--duration", type=float, default=0.0, help="window length in seconds")
    p.add_argument("--total", type=int, default=0, help="send exactly this many signals")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one load process; print its :class:`LoadResult` as JSON."""
    args = _parser().parse_args(argv)
    if (args.duration > 0) == (args.total > 0):
        print("give exactly one of --duration and --total", file=sys.stderr)
        return 2
    generator = _Generator(args)
    result = asyncio.run(generator.run(args.connections))
    json.dump(result.to_json(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
