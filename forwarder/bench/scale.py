"""Scenarios 2 and 5: coalescing many signals into few rows, and a million pending IPs.

Both load their signals through ingest. Where nothing must be sent (coalescing, and
loading the million-IP backlog) the providers point at a port where nothing listens,
so every signal stays in the store and the row counts are exact.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from forwarder.bench.drive import prefill, run_load
from forwarder.bench.org import sandbox
from forwarder.bench.plan import Context
from forwarder.bench.procs import UNREACHABLE, Daemon, ProviderSpec, pending_rows, store_bytes
from forwarder.bench.stats import merge_load, ratio
from forwarder.okta.keys import generate_signing_key, write_private_key
from forwarder.store.sqlite import SqliteStore

__all__ = ["coalescing", "memory_at_scale"]

_MIB = 1024 * 1024
#: IP numbers of the ingest burst during the memory scenario (10.210.0.0/16).
_BURST_FIRST = 210 << 16


def _offline_provider(directory: Path, name: str) -> ProviderSpec:
    key_file = directory / f"{name}.jwk.json"
    write_private_key(key_file, generate_signing_key("ES256"), force=True)
    return ProviderSpec(name, UNREACHABLE, "0oabenchoffline", key_file)


async def coalescing(ctx: Context) -> dict[str, Any]:
    """Scenario 2: N signals over K distinct IPs leave K rows; store size and peak RSS."""
    plan = ctx.plan
    spec = _offline_provider(ctx.directory, "coalesce")
    daemon = Daemon(ctx.directory / "daemon", [spec])
    ctx.say(
        f"coalescing: {plan.coalesce_signals:,} signals over {plan.coalesce_ips:,} IPs "
        f"in {plan.coalesce_request}-signal requests"
    )
    await daemon.start()
    try:
        started = time.monotonic()
        results = await run_load(
            daemon.signals_url,
            size=plan.coalesce_request,
            connections=plan.connections,
            processes=ctx.load_processes,
            total=plan.coalesce_signals,
            modulo=plan.coalesce_ips,
        )
        elapsed = time.monotonic() - started
        load = merge_load(results)
        rows = pending_rows(daemon.store)
        live_bytes = store_bytes(daemon.store)
        peak = daemon.peak_rss_mib()
    finally:
        await daemon.stop()
    return {
        "signals": load["accepted_signals"],
        "distinct_ips": plan.coalesce_ips,
        "request_size": plan.coalesce_request,
        "signals_per_s": round(load["accepted_signals"] / elapsed, 1),
        "p50_ms": load["p50_ms"],
        "p99_ms": load["p99_ms"],
        "rows": rows,
        "rows_per_distinct_ip": ratio(rows, plan.coalesce_ips),
        "store_mib_running": round(live_bytes / _MIB, 2),
        "store_mib_after_stop": round(store_bytes(daemon.store) / _MIB, 2),
        "peak_rss_mib": peak,
        "check": {
            "unit": "distinct IPs (each sent many times)",
            "sent": plan.coalesce_ips if load["accepted_signals"] == plan.coalesce_signals else 0,
            "delivered": rows,
            "delivered_means": "waiting in the store, one row per IP (the org is unreachable)",
            "http_429": 0,
        },
    }


async def _lease_ms(path: Path, providers: list[str], rounds: int = 5) -> dict[str, float]:
    """Median time to lease and release a full batch per provider, on the store file."""
    out: dict[str, float] = {}
    async with SqliteStore(path, max_pending=100_000_000) as store:
        for name in providers:
            spent = []
            for _ in range(rounds):
                started = time.perf_counter()
                lease = await store.lease(
                    name, limit=1000, now_ms=int(time.time() * 1000), max_age_ms=86_400_000
                )
                spent.append(time.perf_counter() - started)
                await store.release(lease)
            out[name] = round(statistics.median(spent) * 1000, 3)
    return out


async def memory_at_scale(ctx: Context) -> dict[str, Any]:
    """Scenario 5: peak RSS with a million pending IPs over 3 providers; time to ready."""
    plan = ctx.plan
    per_provider = -(-plan.scale_pending // plan.scale_providers // 1000) * 1000
    names = [f"scale-{i + 1}" for i in range(plan.scale_providers)]
    async with sandbox(ctx.directory, window_s=plan.window_s, calls=plan.calls) as org:
        specs = await org.provision(ctx.directory, names)
        empty = Daemon(ctx.directory / "empty", specs, window_s=plan.window_s)
        ready_empty_s = await empty.start()
        await empty.stop()
        total = per_provider * len(specs)
        ctx.say(f"memory: loading {total:,} pending IPs over {len(specs)} providers")
        home = ctx.directory / "daemon"
        loaded = await prefill(home, specs, per_provider=per_provider)
        loaded_bytes = store_bytes(home / "forwarder.db")
        daemon = Daemon(home, specs, window_s=plan.window_s, calls=plan.calls)
        ctx.say(f"memory: restarting on that store and running {plan.scale_run_s:.0f} s")
        began = time.time()
        ready_s = await daemon.start()
        try:
            burst = await run_load(
                daemon.signals_url, size=100, connections=8, processes=1, total=10_000,
                first=_BURST_FIRST,
            )  # fmt: skip
            await asyncio.sleep(max(0.0, began + plan.scale_run_s - time.time()))
            peak = daemon.peak_rss_mib()
        finally:
            await daemon.stop()
        # Counted after the stop: a call finishing meanwhile would be counted twice.
        left = pending_rows(daemon.store)
        delivered = 0
        first_call_s: dict[str, float | None] = {}
        for spec in specs:
            calls = await org.accepted(spec.client_id)
            delivered += sum(len(ips) for _, ips in calls)
            first_call_s[spec.name] = round(calls[0][0] - began, 3) if calls else None
        statuses = [status for _, _, status in await org.calls()]
    lease_ms = await _lease_ms(home / "forwarder.db", names)
    # The burst names no provider, so each of its signals goes to every provider.
    burst_accepted = sum(r["accepted_signals"] for r in burst) * len(specs)
    return {
        "pending": loaded.accepted,
        "providers": len(specs),
        "store_mib": round(loaded_bytes / _MIB, 1),
        "peak_rss_mib": peak,
        "peak_rss_mib_while_loading": loaded.peak_rss_mib,
        "ready_s": round(ready_s, 3),
        "ready_s_empty_store": round(ready_empty_s, 3),
        "ready_vs_empty": ratio(ready_s, ready_empty_s),
        "first_call_after_start_s": first_call_s,
        "lease_1000_ms": lease_ms,
        "run_s": plan.scale_run_s,
        "check": {
            "unit": "distinct (provider, IP) answered 202",
            "sent": loaded.accepted + burst_accepted,
            "delivered": left + delivered,
            "delivered_means": "at the org or waiting in the store",
            "http_429": statuses.count(429),
        },
    }
