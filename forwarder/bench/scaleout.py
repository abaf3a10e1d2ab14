"""Scenario 7: 1, 2 and 3 replicas on one PostgreSQL database (issue 11).

A throwaway PostgreSQL cluster (:mod:`forwarder.bench.pg`) and, per round, a fresh
``forwarder sandbox --orgs N`` (fresh windows and tallies) and a fresh database. A
round starts its replicas (``forwarder run`` processes on that one database, the DSN in
a ``dsn_file``), waits until every provider has an owner, then measures:

1. delivery: a broadcast feed of ``scaleout_ips`` IPs to every org (posted to the
   replicas in turn); the time from the last 202 until every org has every IP, the
   calls made in it (calls/s), the 429s and the most calls any org saw in one window;
2. intake: 100-signal broadcast requests for a fixed window, the bench's load
   generators spread over the replicas' ingest ports (one process per replica, the
   connections split between them); the orgs deliver what arrives meanwhile.

Rounds: SQLite with one daemon (the same-run baseline for "Postgres intake / SQLite's"),
then PostgreSQL with each replica count. Growth is each figure over 1 replica's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from forwarder.bench.drive import run_load
from forwarder.bench.fleet import (
    await_delivery,
    feed_broadcast,
    fleet,
    sandbox_tallies,
    tally,
    vendor_key,
)
from forwarder.bench.pg import (
    PgCluster,
    pg_bin_dir,
    start_cluster,
    statements_wanted,
    top_statements,
)
from forwarder.bench.plan import Context
from forwarder.bench.procs import UNREACHABLE, Daemon, ProviderSpec
from forwarder.bench.stats import merge_load, ratio

__all__ = ["scale_out"]

#: IP numbers of the intake measurement (10.230.0.0/16 onwards), apart from the feed.
_INTAKE_FIRST = 230 << 16
#: Load generator connections in all (split over the replicas).
_CONNECTIONS = 8


def _no_postgres(reason: str) -> dict[str, Any]:
    if os.environ.get("FORWARDER_REQUIRE_SERVICES") == "1":
        raise RuntimeError(f"{reason} (FORWARDER_REQUIRE_SERVICES=1)")
    return {
        "skipped": reason,
        "check": {"unit": "org-IP pairs", "sent": 0, "delivered": 0, "http_429": 0},
    }


async def _owned(session: aiohttp.ClientSession, daemon: Daemon) -> int:
    async with session.get(f"{daemon.metrics_url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("forwarder_providers_owned "):
            return int(float(line.split()[1]))
    return 0


async def _await_owners(daemons: Sequence[Daemon], orgs: int) -> tuple[float, list[int]]:
    """Seconds until every provider has an owner and the spread settles; owned per replica."""
    started = time.monotonic()
    fair = -(-orgs // len(daemons))
    owned = [0] * len(daemons)
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < 60:
            owned = [await _owned(session, d) for d in daemons]
            if sum(owned) >= orgs and max(owned) <= fair + 1:
                break
            await asyncio.sleep(0.2)
    return time.monotonic() - started, owned


async def _intake(daemons: Sequence[Daemon], seconds: float) -> dict[str, Any]:
    """100-signal requests spread over every replica's ingest port, one window: the same
    connections in all whatever the replica count (8 over 3 replicas: 3, 3, 2)."""
    shares = [
        _CONNECTIONS // len(daemons) + (i < _CONNECTIONS % len(daemons))
        for i in range(len(daemons))
    ]
    span = 1 << 18
    runs = await asyncio.gather(
        *(
            run_load(
                d.signals_url,
                size=100,
                connections=max(1, shares[i]),
                processes=1,
                duration_s=seconds,
                warmup_s=0.3,
                first=_INTAKE_FIRST + i * span,
                watch=d.proc,
            )
            for i, d in enumerate(daemons)
        )
    )
    result = merge_load([r for run in runs for r in run])
    result["per_replica_signals_per_s"] = [merge_load(run)["signals_per_s"] for run in runs]
    return result


@contextlib.asynccontextmanager
async def _replicas(
    ctx: Context, name: str, specs: Sequence[ProviderSpec], count: int, store_toml: str
) -> AsyncIterator[list[Daemon]]:
    plan = ctx.plan
    daemons = [
        Daemon(
            ctx.directory / name / f"replica-{i}",
            specs,
            window_s=plan.scaleout_window_s,
            calls=plan.calls,
            linger_s=0.5,
            store_toml=store_toml,
        )
        for i in range(count)
    ]
    try:
        # One after the other: the first migrates the schema, the others find it done.
        for daemon in daemons:
            await daemon.start()
        yield daemons
    finally:
        for daemon in daemons:
            with contextlib.suppress(RuntimeError):
                await daemon.stop()


async def _round(
    ctx: Context,
    name: str,
    public_file: Path,
    key_file: Path,
    count: int,
    store_toml: str,
) -> dict[str, Any]:
    plan = ctx.plan
    orgs, feed = plan.scaleout_orgs, plan.scaleout_ips
    ctx.say(f"scale-out: {name}: a sandbox for {orgs:,} orgs, {count} replica(s)")
    (ctx.directory / name).mkdir(parents=True, exist_ok=True)
    async with fleet(
        ctx.directory / name,
        orgs=orgs,
        public_key=public_file,
        window_s=plan.scaleout_window_s,
        calls=plan.calls,
    ) as (url, token, apps):
        specs = [ProviderSpec(a["name"], url, a["client_id"], key_file) for a in apps]
        async with _replicas(ctx, name, specs, count, store_toml) as daemons:
            owners_s, owned = await _await_owners(daemons, orgs) if count > 1 else (0.0, [orgs])
            ctx.say(f"scale-out: {name}: {feed:,} broadcast IPs to every org")
            fed_at = await feed_broadcast(daemons, feed)
            fed = await await_delivery(
                url, token, orgs=orgs, feed=feed, window_s=plan.scaleout_window_s
            )
            ctx.say(f"scale-out: {name}: intake")
            load = await _intake(daemons, plan.scaleout_intake_s)
            cpu = [d.proc.cpu_cores if d.proc else None for d in daemons]
        final = tally(await sandbox_tallies(url, token), feed)
    seconds = fed.last_new_ip_at - fed_at if fed.complete == orgs else None
    return {
        "replicas": count,
        "owners_settled_s": round(owners_s, 2),
        "owned_per_replica": owned,
        "all_orgs_have_all_ips_s": round(seconds, 3) if seconds is not None else None,
        "orgs_complete": fed.complete,
        "calls": fed.calls,
        "delivery_calls_per_s": round(fed.calls / seconds, 1) if seconds else None,
        "max_calls_in_any_window": final.max_calls_in_any_window,
        "statuses": final.statuses,
        "intake_signals_per_s": load["signals_per_s"],
        "intake_per_replica_signals_per_s": load["per_replica_signals_per_s"],
        "intake_p99_ms": load["p99_ms"],
        "intake_statuses": load["statuses"],
        "replica_cpu_cores_during_intake": cpu,
        "sent": orgs * feed,
        "delivered": fed.delivered,
    }


async def _idle_intake(ctx: Context, name: str, key_file: Path, store_toml: str) -> dict[str, Any]:
    """Intake of one daemon at N orgs that cannot be reached (no acks compete with it)."""
    plan = ctx.plan
    specs = [
        ProviderSpec(f"org-{i}", UNREACHABLE, f"client-{i}", key_file)
        for i in range(plan.scaleout_orgs)
    ]
    ctx.say(f"scale-out: {name}: intake at {plan.scaleout_orgs:,} orgs, none delivering")
    async with _replicas(ctx, name, specs, 1, store_toml) as daemons:
        load = await _intake(daemons, plan.scaleout_intake_s)
        cpu = daemons[0].proc.cpu_cores if daemons[0].proc else None
    return {
        "intake_signals_per_s": load["signals_per_s"],
        "intake_p99_ms": load["p99_ms"],
        "intake_statuses": load["statuses"],
        "daemon_cpu_cores_during_intake": cpu,
    }


async def _postgres_rounds(
    ctx: Context, cluster: PgCluster, public_file: Path, key_file: Path, idle: dict[str, Any]
) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = []
    for count in (0, *ctx.plan.scaleout_replicas):
        db = cluster.create_database()
        dsn_file = ctx.directory / f"dsn-{count}"
        dsn_file.write_text(cluster.dsn(db) + "\n")
        dsn_file.chmod(0o600)
        store = f'backend = "postgres"\ndsn_file = "{dsn_file}"\nmax_pending = 100000000'
        try:
            if count == 0:  # round 0: intake with nothing delivering
                idle.update(await _idle_intake(ctx, "postgres-idle", key_file, store))
                continue
            rounds.append(
                await _round(ctx, f"postgres-{count}", public_file, key_file, count, store)
            )
        finally:
            if statements_wanted():
                ctx.say(f"scale-out: server time by statement, round {count}:")
                ctx.say(top_statements(cluster, db))
            cluster.drop_database(db)
    return rounds


async def scale_out(ctx: Context) -> dict[str, Any]:
    """Scenario 7: intake and delivery with 1, 2, 3 replicas on one PostgreSQL."""
    bindir = pg_bin_dir()
    if bindir is None:
        return _no_postgres("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    plan = ctx.plan
    key_file, public_file = vendor_key(ctx.directory)

    sqlite_store = ctx.directory / "sqlite" / "forwarder.db"
    sqlite = await _round(
        ctx,
        "sqlite",
        public_file,
        key_file,
        1,
        f'path = "{sqlite_store}"\nmax_pending = 100000000',
    )
    sqlite_idle = await _idle_intake(
        ctx,
        "sqlite-idle",
        key_file,
        f'path = "{ctx.directory / "sqlite-idle" / "forwarder.db"}"\nmax_pending = 100000000',
    )
    ctx.say("scale-out: starting a PostgreSQL cluster")
    pg_idle: dict[str, Any] = {}
    with start_cluster(bindir) as cluster:
        pg_version = cluster.sql("SHOW server_version")
        rounds = await _postgres_rounds(ctx, cluster, public_file, key_file, pg_idle)

    one = rounds[0]
    for r in rounds:
        r["intake_growth"] = ratio(r["intake_signals_per_s"], one["intake_signals_per_s"])
        r["delivery_growth"] = ratio(r["delivery_calls_per_s"], one["delivery_calls_per_s"])
    every = [sqlite, *rounds]
    statuses = [r["statuses"].get("429", 0) for r in every]
    return {
        "orgs": plan.scaleout_orgs,
        "feed_ips": plan.scaleout_ips,
        "window_s": plan.scaleout_window_s,
        "calls_per_minute": plan.calls,
        "postgres_version": pg_version,
        "sqlite": sqlite,
        "rounds": rounds,
        "pg_vs_sqlite_intake": ratio(one["intake_signals_per_s"], sqlite["intake_signals_per_s"]),
        "sqlite_not_delivering": sqlite_idle,
        "postgres_not_delivering": pg_idle,
        "pg_vs_sqlite_intake_not_delivering": ratio(
            pg_idle["intake_signals_per_s"], sqlite_idle["intake_signals_per_s"]
        ),
        "check": {
            "unit": "org-IP pairs of the broadcast feed, every round",
            "sent": sum(r["sent"] for r in every),
            "delivered": sum(r["delivered"] for r in every),
            "delivered_means": "distinct IPs accepted by each org",
            "http_429": sum(statuses),
            "calls_per_window": plan.calls,
            "max_calls_in_any_window": max(r["max_calls_in_any_window"] for r in every),
        },
    }
