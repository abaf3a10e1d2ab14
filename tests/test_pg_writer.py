"""Ingest writes on a real PostgreSQL: coalescing, broadcast stored once, commit order.

Several pools with their own group commits stand in for replicas writing at once.
"""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from forwarder.signals import RiskLevel, Signal
from forwarder.store.postgres.store import PostgresStore
from forwarder.store.postgres.writer import (
    CHANGED_CHANNEL,
    BroadcastRow,
    TargetedRow,
    group_commit,
)
from tests.pg import pg_pool  # noqa: F401 - the `pool` fixture
from tests.pg import write_rows as write

pytestmark = pytest.mark.slow

HIGH, MEDIUM, LOW = 3, 2, 1


def b(ip: str, risk: int, ts: int, msg: str = "m") -> BroadcastRow:
    return (ip, risk, msg, ts, None, ts)


def t(provider: str, ip: str, risk: int, ts: int, msg: str = "m") -> TargetedRow:
    return (provider, ip, risk, msg, ts, None, ts)


async def rows(pool: asyncpg.Pool, table: str) -> dict[str, tuple[int, str, int, int]]:
    key = "ip" if table == "signals" else "provider || '/' || ip"
    found = await pool.fetch(f"SELECT {key} AS k, risk, message, ts_ms, seq FROM {table}")
    return {r["k"]: (r["risk"], r["message"], r["ts_ms"], r["seq"]) for r in found}


async def test_a_broadcast_is_one_entry_and_the_newest_observation_wins(
    pool: asyncpg.Pool,
) -> None:
    """Same ip: newer replaces (new seq), older is ignored, a tie goes to the higher risk."""
    await write(pool, [b("10.0.0.1", LOW, 100, "first")])
    (first,) = (await rows(pool, "signals")).values()
    await write(pool, [b("10.0.0.1", HIGH, 50, "older")])
    assert (await rows(pool, "signals"))["10.0.0.1"] == first
    await write(pool, [b("10.0.0.1", MEDIUM, 100, "tie, higher risk")])
    tie = (await rows(pool, "signals"))["10.0.0.1"]
    assert tie[:3] == (MEDIUM, "tie, higher risk", 100)
    assert tie[3] > first[3]
    await write(pool, [b("10.0.0.1", LOW, 200, "newer")])
    newer = (await rows(pool, "signals"))["10.0.0.1"]
    assert newer[:3] == (LOW, "newer", 200)
    assert newer[3] > tie[3]
    assert await pool.fetchval("SELECT value FROM counters WHERE name = 'inserted'") == 1


async def test_one_group_may_carry_the_same_ip_many_times(pool: asyncpg.Pool) -> None:
    """Duplicates inside one commit coalesce in memory (PostgreSQL cannot update a row twice
    in one statement); sequence numbers follow observation time."""
    await write(
        pool,
        [b("10.0.0.2", LOW, 300), b("10.0.0.1", LOW, 100), b("10.0.0.2", HIGH, 300)],
        [t("acme", "10.0.0.1", LOW, 5), t("acme", "10.0.0.1", MEDIUM, 6)],
    )
    signals = await rows(pool, "signals")
    assert signals["10.0.0.2"][0] == HIGH
    assert signals["10.0.0.1"][3] < signals["10.0.0.2"][3]
    assert (await rows(pool, "targeted"))["acme/10.0.0.1"][:3] == (MEDIUM, "m", 6)


async def test_targeted_entries_are_per_provider_and_announced_with_counts(
    pool: asyncpg.Pool, pg_dsn: str
) -> None:
    """Targeted rows key on (provider, ip); NOTIFY carries what was stored, per level and
    provider, so other replicas can wake and count without a query."""
    heard: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    listener = await asyncpg.connect(pg_dsn)
    try:
        await listener.add_listener(CHANGED_CHANNEL, lambda *a: heard.put_nowait(json.loads(a[3])))
        await write(pool, [], [t("globex", "10.0.0.1", LOW, 1), t("acme", "10.0.0.1", HIGH, 1)])
        assert await asyncio.wait_for(heard.get(), 5) == {
            "o": "", "b": {}, "t": {"acme": {"3": 1}, "globex": {"1": 1}},
        }  # fmt: skip
        await write(pool, [b("10.9.9.9", LOW, 1), b("10.9.9.8", LOW, 1)])
        assert (await asyncio.wait_for(heard.get(), 5))["b"] == {"1": 2}
        await write(pool, [b("10.9.9.9", LOW, 0)])  # older: nothing stored, nothing announced
        await write(pool, [], [t("initech", "10.0.0.1", LOW, 1)])
        assert (await asyncio.wait_for(heard.get(), 5))["t"] == {"initech": {"1": 1}}
    finally:
        await listener.close()
    assert sorted(await rows(pool, "targeted")) == [
        "acme/10.0.0.1", "globex/10.0.0.1", "initech/10.0.0.1",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("providers", "name", "form"), [(500, "org-{:04d}", "n"), (2000, "org-{:05d}-long", "all")]
)
async def test_a_large_announcement_still_fits_a_notify(
    pool: asyncpg.Pool, pg_dsn: str, providers: int, name: str, form: str
) -> None:
    """Thousands of targeted providers in one commit: names only, then "all"; the commit
    succeeds (a NOTIFY over 8000 bytes would fail it) and is announced."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(pg_dsn)
    try:
        await listener.add_listener(CHANGED_CHANNEL, lambda *a: heard.put_nowait(a[3]))
        many = [t(name.format(i), "10.0.0.1", LOW, 1) for i in range(providers)]
        await write(pool, [b("10.0.0.2", LOW, 1)], many)
        payload = await asyncio.wait_for(heard.get(), 5)
    finally:
        await listener.close()
    assert len(payload) < 8000
    announced = json.loads(payload)
    assert announced["b"] == {"1": 1}
    assert form in announced
    assert "t" not in announced
    if form == "n":
        assert len(announced["n"]) == providers
    assert await pool.fetchval("SELECT count(*) FROM targeted") == providers


async def test_concurrent_replicas_commit_in_sequence_order(
    pg_dsn: str, pool: asyncpg.Pool
) -> None:
    """Three replicas' group commits at once, while a cursor follows seq: it misses nothing.

    A cursor may move past seq N only if no version below N can still commit; ingest
    commits are ordered by one row lock so that holds across replicas.
    """
    replicas = [await asyncpg.create_pool(pg_dsn, min_size=3, max_size=3) for _ in range(3)]
    commits = [group_commit(p.acquire) for p in replicas]
    for c in commits:
        c.start()
    seen: set[str] = set()
    done = asyncio.Event()

    async def follow() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            got = await pool.fetch(
                "SELECT ip, seq FROM signals WHERE seq > $1 ORDER BY seq", cursor
            )
            for r in got:
                seen.add(r["ip"])
                cursor = r["seq"]
            if finished:
                return

    async def produce(r: int, i: int) -> None:
        batch = [b(f"10.{r}.{i}.{k}", LOW, i * 1000 + k) for k in range(20)]
        await commits[r].add(list(batch))

    try:
        follower = asyncio.create_task(follow())
        await asyncio.gather(*(produce(r, i) for i in range(60) for r in range(3)))
        done.set()
        await follower
    finally:
        for c in commits:
            await c.stop()
        for p in replicas:
            await p.close()
    assert len(seen) == 3 * 60 * 20


async def test_a_provider_found_without_targeted_entries_still_gets_later_ones(
    pg_dsn: str,
) -> None:
    """A lease that finds no targeted entry lets later leases skip looking, until a
    commit stores some: this replica's own, or another replica's (heard by NOTIFY)."""
    now = 1_800_000_000_000
    a = PostgresStore(pg_dsn, providers=["acme"], pool_size=2)
    b = PostgresStore(pg_dsn, providers=["acme"], pool_size=2)
    async with a, b:

        async def lease_ips() -> list[str]:
            lease = await a.lease("acme", limit=10, now_ms=now, max_age_ms=86_400_000)
            await a.ack(lease)
            return [s.ip for s in lease.signals]

        assert await lease_ips() == []
        await a.add([(["acme"], Signal("10.0.0.1", RiskLevel.LOW, "m", now, None, now))])
        assert await lease_ips() == ["10.0.0.1"]
        assert await lease_ips() == []
        heard = a.changed("acme")
        heard.clear()
        await b.add([(["acme"], Signal("10.0.0.2", RiskLevel.LOW, "m", now, None, now))])
        await asyncio.wait_for(heard.wait(), 5)
        assert await lease_ips() == ["10.0.0.2"]
