"""Per-provider leases over shared broadcast entries on a real PostgreSQL server.

The semantics of the store seam (forwarder/store/base.py): broadcast stored once, each
provider through it on its own, HIGH first then first stored, acks settle the version
sent, targeted + broadcast coalescing, ageing; plus what several replicas add: fenced
cursor writes and a new owner resuming where the old one's acks left off.
"""

from __future__ import annotations

from itertools import count

import asyncpg
import pytest

from forwarder.store.postgres import ageing, owners, queue
from forwarder.store.postgres.queue import ProviderQueue
from forwarder.store.postgres.schema import ADVISORY_NAMESPACE
from forwarder.store.postgres.writer import BroadcastRow, TargetedRow
from tests.pg import pg_pool  # noqa: F401 - the `pool` fixture
from tests.pg import write_rows as add

pytestmark = pytest.mark.slow

HIGH, MEDIUM, LOW = 3, 2, 1
NOW = 1_800_000_000_000
DAY = 86_400_000
_ids = count(1)


def b(ip: str, risk: int = LOW, ts: int = NOW, expires: int | None = None) -> BroadcastRow:
    return (ip, risk, "m", ts, expires, ts)


def t(provider: str, ip: str, risk: int = LOW, ts: int = NOW) -> TargetedRow:
    return (provider, ip, risk, "m", ts, None, ts)


async def attach(
    pool: asyncpg.Pool, provider: str, fence: tuple[str, int] | None = None
) -> ProviderQueue:
    async with pool.acquire() as conn, conn.transaction():
        return await queue.attach(conn, provider, fence=fence)


async def lease(
    pool: asyncpg.Pool, q: ProviderQueue, limit: int = 100, now: int = NOW
) -> tuple[int, list[str], int]:
    lease_id = next(_ids)
    async with pool.acquire() as conn, conn.transaction():
        signals, expired = await queue.lease(
            conn, q, lease_id, limit=limit, now_ms=now, max_age_ms=DAY, margin_ms=5_000
        )
    return lease_id, [s.ip for s in signals], sum(expired.values())


async def ack(
    pool: asyncpg.Pool, q: ProviderQueue, lease_id: int, only: set[str] | None = None
) -> int:
    async with pool.acquire() as conn, conn.transaction():
        return await queue.settle(conn, q, lease_id, only=only)


async def stored(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            "SELECT (SELECT value FROM counters WHERE name = 'inserted')"
            " - (SELECT value FROM counters WHERE name = 'deleted')"
        )
    )


async def test_each_provider_works_through_one_stored_broadcast_on_its_own(
    pool: asyncpg.Pool,
) -> None:
    """Three providers, five broadcast IPs stored once; each leases and acks all five; the
    entries are collected only when the last one has."""
    qs = [await attach(pool, p) for p in ("a", "b", "c")]
    await add(pool, [b(f"10.0.0.{i}") for i in range(5)])
    assert await pool.fetchval("SELECT count(*) FROM signals") == 5
    for i, q in enumerate(qs):
        lease_id, ips, _ = await lease(pool, q)
        assert sorted(ips) == [f"10.0.0.{i}" for i in range(5)]
        assert await ack(pool, q, lease_id) == 5
        assert (await lease(pool, q))[1] == []
        left = 0 if i == 2 else 5
        assert await pool.fetchval("SELECT count(*) FROM signals") == left
    assert await stored(pool) == 0


async def test_high_first_then_first_stored(pool: asyncpg.Pool) -> None:
    """HIGH, then MEDIUM, then LOW; within a level in stored order; limits respected."""
    q = await attach(pool, "a")
    await add(pool, [b("1.1.1.1", LOW, NOW - 3), b("2.2.2.2", MEDIUM, NOW - 2)])
    await add(pool, [b("3.3.3.3", HIGH, NOW - 1), b("4.4.4.4", LOW, NOW - 4)])
    _, first, _ = await lease(pool, q, limit=3)
    assert first == ["3.3.3.3", "2.2.2.2", "1.1.1.1"]
    assert (await lease(pool, q))[1] == ["4.4.4.4"]


async def test_in_flight_is_not_leased_twice_and_release_frees_it(pool: asyncpg.Pool) -> None:
    """A second lease skips what is in flight; released entries come back."""
    q = await attach(pool, "a")
    await add(pool, [b("10.0.0.1"), b("10.0.0.2")])
    first, ips, _ = await lease(pool, q)
    assert (await lease(pool, q))[1] == []
    queue.release(q, first)
    assert sorted((await lease(pool, q))[1]) == sorted(ips)


async def test_ack_settles_only_the_version_sent(pool: asyncpg.Pool) -> None:
    """A newer observation stored while in flight stays pending after the ack."""
    q = await attach(pool, "a")
    await add(pool, [b("10.0.0.1", LOW, NOW)])
    lease_id, _, _ = await lease(pool, q)
    await add(pool, [b("10.0.0.1", HIGH, NOW + 1)])
    assert await ack(pool, q, lease_id) == 0  # the version sent was already replaced
    _, again, _ = await lease(pool, q)
    assert again == ["10.0.0.1"]


async def test_targeted_and_broadcast_of_one_ip_reach_a_provider_once(pool: asyncpg.Pool) -> None:
    """A's own newer observation wins over the broadcast for A; B gets the broadcast."""
    qa, qb = await attach(pool, "a"), await attach(pool, "b")
    await add(pool, [b("10.0.0.1", LOW, NOW)], [t("a", "10.0.0.1", HIGH, NOW + 5)])
    lease_a, ips_a, _ = await lease(pool, qa)
    assert ips_a == ["10.0.0.1"]
    await ack(pool, qa, lease_a)
    assert (await lease(pool, qa))[1] == []
    assert (await lease(pool, qb))[1] == ["10.0.0.1"]


async def test_expired_and_too_old_entries_are_dropped_and_counted(pool: asyncpg.Pool) -> None:
    """expiresAt within the margin or older than max_age: dropped at lease, counted."""
    q = await attach(pool, "a")
    await add(
        pool,
        [b("10.0.0.1", expires=NOW + 1_000), b("10.0.0.2", ts=NOW - 2 * DAY), b("10.0.0.3")],
    )
    _, ips, expired = await lease(pool, q)
    assert (ips, expired) == (["10.0.0.3"], 2)


async def test_sweep_ages_out_what_a_failing_provider_never_sent(pool: asyncpg.Pool) -> None:
    """Entries older than max_age are deleted and counted for each provider that had not
    sent them (not for the one that had)."""
    qa, _ = await attach(pool, "a"), await attach(pool, "b")
    await add(pool, [b("10.0.0.1", ts=NOW - 2 * DAY)], [t("b", "10.0.0.9", ts=NOW - 2 * DAY)])
    lease_id, _, _ = await lease(pool, qa, now=NOW - DAY - 1)
    await ack(pool, qa, lease_id)
    async with pool.acquire() as conn, conn.transaction():
        expired, more = await ageing.sweep(conn, cutoff_ms=NOW - DAY)
    assert not more
    assert expired == {"b": {LOW: 2}}
    assert await stored(pool) == 0


async def test_a_new_provider_starts_after_the_stored_broadcasts(pool: asyncpg.Pool) -> None:
    """A provider attached later is sent what arrives from then on (a broadcast is for the
    providers configured when it arrives)."""
    await attach(pool, "a")
    await add(pool, [b("10.0.0.1")])
    late = await attach(pool, "late")
    await add(pool, [b("10.0.0.2")])
    assert (await lease(pool, late))[1] == ["10.0.0.2"]


async def test_a_former_owner_cannot_move_the_cursor(pool: asyncpg.Pool) -> None:
    """A's lease lapses and B claims: A's ack is refused (Fenced) and B is sent everything
    A had not acknowledged: at most the batch in flight is sent twice."""
    async with pool.acquire() as conn:
        await owners.ensure_providers(conn, ["acme"])
        (la,) = await owners.claim(conn, "A", ["acme"], limit=1, ttl_s=60)
    qa = await attach(pool, "acme", fence=("A", la.epoch))
    await add(pool, [b(f"10.0.0.{i}") for i in range(4)])
    done_id, _, _ = await lease(pool, qa, limit=2)
    await ack(pool, qa, done_id)
    flying, in_flight, _ = await lease(pool, qa, limit=2)
    async with pool.acquire() as conn:
        # A paused past its lease; B takes over (the lapse is simulated by releasing).
        await owners.release(conn, "A", ["acme"])
        (lb,) = await owners.claim(conn, "B", ["acme"], limit=1, ttl_s=60)
    with pytest.raises(queue.Fenced):
        await ack(pool, qa, flying)
    qb = await attach(pool, "acme", fence=("B", lb.epoch))
    _, resent, _ = await lease(pool, qb)
    assert sorted(resent) == sorted(in_flight)


async def test_an_ack_does_not_wait_for_another_transaction_collecting(
    pool: asyncpg.Pool,
) -> None:
    """While one transaction collects (holding the collection lock and the 'deleted'
    counter row), another provider's ack commits at once instead of queueing behind it;
    what it skipped is collected by the next collection."""
    qs = [await attach(pool, p) for p in ("a", "b")]
    await add(pool, [b("10.0.0.1")])
    lease_a, _, _ = await lease(pool, qs[0])
    await ack(pool, qs[0], lease_a)
    lease_b, _, _ = await lease(pool, qs[1])
    async with pool.acquire() as other, other.transaction():
        await other.execute("SELECT pg_advisory_xact_lock($1, 2)", ADVISORY_NAMESPACE)
        await other.execute("SELECT 1 FROM counters WHERE name = 'deleted' FOR UPDATE")
        async with pool.acquire() as conn:
            await conn.execute("SET lock_timeout = '2s'")
            async with conn.transaction():
                assert await queue.settle(conn, qs[1], lease_b) == 1
            await conn.execute("RESET lock_timeout")
    assert await stored(pool) == 1  # every provider settled it, not yet collected
    async with pool.acquire() as conn, conn.transaction():
        await queue.collect(conn)
    assert await stored(pool) == 0
    assert await pool.fetchval("SELECT count(*) FROM signals") == 0
