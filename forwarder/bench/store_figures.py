"""``python -m forwarder.bench.store_figures``: the store at many providers, in-process.

Figures of docs/store.md: rows stored for a broadcast backlog at 1,000 providers, intake
through ``add`` (100-signal requests, 8 at a time) at 1 and at 1,000 providers, lease and
ack times at 1,000 providers x 2,000 IPs and at 1,000,000 pending entries. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forwarder.signals import RiskLevel, Signal
from forwarder.store.sqlite import SqliteStore

__all__ = ["main"]

_RISKS = (RiskLevel.LOW, RiskLevel.MEDIUM, RiskLevel.HIGH)
_DAY_MS = 86_400_000


def _ip(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


async def _intake(
    store: SqliteStore, n: int, *, first: int = 0, size: int = 100, targets: Sequence[str] = ()
) -> float:
    now = int(time.time() * 1000)
    requests = [
        [
            (targets, Signal(_ip(first + i + j), _RISKS[(i + j) % 3], "bench", now, None, now))
            for j in range(min(size, n - i))
        ]
        for i in range(0, n, size)
    ]
    gate = asyncio.Semaphore(8)

    async def one(items: list[tuple[Sequence[str], Signal]]) -> None:
        async with gate:
            await store.add(items)

    started = time.perf_counter()
    await asyncio.gather(*(one(r) for r in requests))
    return n / (time.perf_counter() - started)


async def _lease_ms(store: SqliteStore, provider: str, *, ack: bool) -> tuple[float, float]:
    now = int(time.time() * 1000)
    started = time.perf_counter()
    lease = await store.lease(provider, limit=1000, now_ms=now, max_age_ms=_DAY_MS)
    leased = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    await (store.ack(lease) if ack else store.release(lease))
    return leased, (time.perf_counter() - started) * 1000


def _rows(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        return {
            t: int(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # noqa: S608
            for t in ("signals", "targeted", "cursors", "done")
        }
    finally:
        db.close()


async def _tenants(directory: Path, providers: int, ips: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in (1, providers):
        names = [f"org-{i}" for i in range(n)]
        async with SqliteStore(directory / f"intake-{n}.db", providers=names) as store:
            rates = [await _intake(store, 20_000, first=k * 20_000) for k in range(3)]
        out[f"intake_signals_per_s_at_{n}"] = round(statistics.median(rates))
    out["intake_ratio"] = round(
        out[f"intake_signals_per_s_at_{providers}"] / out["intake_signals_per_s_at_1"], 2
    )
    names = [f"org-{i}" for i in range(providers)]
    path = directory / "tenants.db"
    async with SqliteStore(path, providers=names) as store:
        await _intake(store, ips)
        out["rows"] = _rows(path)
        leases: list[float] = []
        acks: list[float] = []
        started = time.perf_counter()
        for name in names:
            for _ in range(-(-ips // 1000)):
                leased, acked = await _lease_ms(store, name, ack=True)
                leases.append(leased)
                acks.append(acked)
        out["every_provider_sends_all_s"] = round(time.perf_counter() - started, 1)
        out["lease_ms_median"] = round(statistics.median(leases), 2)
        out["ack_ms_median"] = round(statistics.median(acks), 2)
        out["entries_left"] = store.pending_total()
    return out


async def _million(directory: Path, pending: int) -> dict[str, Any]:
    names = ["scale-1", "scale-2", "scale-3"]
    out: dict[str, Any] = {}
    async with SqliteStore(
        directory / "broadcast.db", providers=names, max_pending=pending * 2
    ) as s:
        await _intake(s, pending, size=1000)
        out["lease_ms_at_broadcast"] = round(
            statistics.median([(await _lease_ms(s, n, ack=False))[0] for n in names * 3]), 2
        )
        started = time.perf_counter()
        await s.refresh()
        out["refresh_ms"] = round((time.perf_counter() - started) * 1000, 1)
    async with SqliteStore(
        directory / "targeted.db", providers=names, max_pending=pending * 2
    ) as s:
        share = pending // len(names)
        for k, name in enumerate(names):
            await _intake(s, share, first=k * share, size=1000, targets=(name,))
        out["lease_ms_at_targeted"] = round(
            statistics.median([(await _lease_ms(s, n, ack=False))[0] for n in names * 3]), 2
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Run both measurements; print one JSON object."""
    p = argparse.ArgumentParser(prog="python -m forwarder.bench.store_figures")
    p.add_argument("--providers", type=int, default=1000)
    p.add_argument("--ips", type=int, default=2000)
    p.add_argument("--pending", type=int, default=1_000_000)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        result = {
            "tenants": asyncio.run(_tenants(directory, args.providers, args.ips)),
            "million": asyncio.run(_million(directory, args.pending)),
        }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
