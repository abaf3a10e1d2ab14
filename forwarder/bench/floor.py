"""The baselines: ``python -m forwarder.bench.floor http|sqlite ...``, each in its own process.

* ``http``: the HTTP floor. A bare aiohttp handler that reads the body, parses it as
  JSON exactly as ingest does, and answers ``202 {"accepted": N}`` without validating
  or storing anything. Nothing forwarder does per request can be faster than this.
* ``sqlite``: the storage floor. The store's own upsert statement on a file created by
  :class:`forwarder.store.sqlite.SqliteStore` (same schema, indexes, triggers and
  pragmas), ``--rows`` rows per transaction, one writer, timed around the database
  calls only. Prints ``{"rows", "seconds", "rows_per_s", "transactions"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sqlite3
import sys
import time
from pathlib import Path

from aiohttp import web

from forwarder.bench.workload import RISKS, ip
from forwarder.store.sqlite import SqliteStore, upsert_rows

__all__ = ["http_floor_app", "main", "storage_floor"]

_MESSAGE = "credential stuffing 42 failed logins per minute"


def http_floor_app() -> web.Application:
    """The HTTP floor: parse the body, answer 202, nothing else."""

    async def handler(request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        count = len(doc) if isinstance(doc, list) else 1
        return web.json_response({"accepted": count}, status=202)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/signals", handler)
    return app


async def _serve_http(host: str, port: int) -> None:
    runner = web.AppRunner(http_floor_app(), access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        print(f"floor listening on http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


async def _create_store(path: Path) -> None:
    async with SqliteStore(path):
        pass


def storage_floor(
    path: Path, *, rows_per_txn: int, seconds: float, first: int = 0
) -> dict[str, float]:
    """Upsert distinct IPs ``rows_per_txn`` at a time for about ``seconds`` of database time."""
    asyncio.run(_create_store(path))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA cache_size=-16384")
    numbers = itertools.count(first)
    risks = itertools.cycle(RISKS)
    levels = {"LOW": 1, "MEDIUM": 2, "HIGH": 3}
    spent = 0.0
    rows = txns = 0
    seq = 1
    while spent < seconds:
        now_ms = int(time.time() * 1000)
        batch = [
            (ip(next(numbers)), levels[next(risks)], _MESSAGE, now_ms, None, now_ms)
            for _ in range(rows_per_txn)
        ]
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        # The very statement the store runs for every group commit (broadcast signals,
        # as the intake scenario sends them).
        seq = upsert_rows(db, batch, first_seq=seq)
        db.execute("COMMIT")
        spent += time.perf_counter() - started
        rows += rows_per_txn
        txns += 1
    db.close()
    return {"rows": rows, "seconds": spent, "rows_per_s": rows / spent, "transactions": txns}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m forwarder.bench.floor", description=__doc__)
    sub = p.add_subparsers(dest="kind", required=True)
    http = sub.add_parser("http", help="bare aiohttp handler: parse and answer 202")
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=int, required=True)
    db = sub.add_parser("sqlite", help="raw upserts of the store's statement")
    db.add_argument("--path", type=Path, required=True, help="a new SQLite file")
    db.add_argument("--rows", type=int, default=100, help="rows per transaction")
    db.add_argument("--seconds", type=float, default=5.0, help="database time to spend")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one baseline."""
    args = _parser().parse_args(argv)
    if args.kind == "http":
        asyncio.run(_serve_http(args.host, args.port))
        return 0
    result = storage_floor(args.path, rows_per_txn=args.rows, seconds=args.seconds)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
