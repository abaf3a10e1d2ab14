"""Provider leases, fencing epochs and the fenced budget on a real PostgreSQL server.

Several pools stand in for replicas. Time is moved by passing ``now`` (the SQL's
stand-in for the database clock) instead of sleeping out a TTL or a window.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from forwarder.store.postgres import owners
from forwarder.store.postgres.owners import Replica
from tests.pg import migrated_pools

pytestmark = pytest.mark.slow

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PROVIDERS = [f"org{i:02d}" for i in range(10)]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
async def pools(pg_dsn: str) -> AsyncIterator[list[asyncpg.Pool]]:
    """Three replicas' pools on one migrated database with ten providers."""
    async with migrated_pools(pg_dsn, 3, PROVIDERS) as made:
        yield made


async def test_concurrent_claims_split_providers_without_overlap(
    pools: list[asyncpg.Pool],
) -> None:
    """Three replicas claiming at once get disjoint providers, each at epoch 1."""

    async def take(i: int) -> list[owners.Lease]:
        async with pools[i].acquire() as conn:
            return await owners.claim(conn, f"r{i}", PROVIDERS, limit=4, ttl_s=15)

    results = await asyncio.gather(*(take(i) for i in range(3)))
    names = [lease.provider for leases in results for lease in leases]
    assert sorted(names) == PROVIDERS
    assert all(len(leases) <= 4 for leases in results)
    assert {lease.epoch for leases in results for lease in leases} == {1}


async def test_a_held_lease_cannot_be_claimed_until_it_lapses(pools: list[asyncpg.Pool]) -> None:
    """A lease renewed in time stays; one not renewed is claimed by another under epoch 2."""
    async with pools[0].acquire() as a, pools[1].acquire() as b:
        (lease,) = await owners.claim(a, "A", ["org00"], limit=1, ttl_s=15, now=at(0))
        assert await owners.claim(b, "B", ["org00"], limit=1, ttl_s=15, now=at(10)) == []
        renewed = await owners.renew(a, "A", {"org00": lease.epoch}, ttl_s=15, now=at(10))
        assert [r.expires_at for r in renewed] == [at(25)]
        assert await owners.claim(b, "B", ["org00"], limit=1, ttl_s=15, now=at(24)) == []
        (taken,) = await owners.claim(b, "B", ["org00"], limit=1, ttl_s=15, now=at(25))
        assert taken.epoch == 2
        # A lapsed lease is not revived by a late renew, even under the right epoch.
        assert await owners.renew(a, "A", {"org00": lease.epoch}, ttl_s=15, now=at(26)) == []


async def test_a_lapsed_lease_nobody_took_is_not_renewed(pools: list[asyncpg.Pool]) -> None:
    """Renewing after expiry fails; the replica must claim again, under a new epoch."""
    async with pools[0].acquire() as a:
        (lease,) = await owners.claim(a, "A", ["org01"], limit=1, ttl_s=15, now=at(0))
        assert await owners.renew(a, "A", {"org01": 1}, ttl_s=15, now=at(15)) == []
        (again,) = await owners.claim(a, "A", ["org01"], limit=1, ttl_s=15, now=at(15))
        assert again.epoch == lease.epoch + 1


async def test_paused_former_owner_is_refused_a_budget_slot(pools: list[asyncpg.Pool]) -> None:
    """A owns, spends a call, pauses past its TTL; B takes over; A's reservation is refused."""
    app = "https://acme.okta.com|0oa1"
    async with pools[0].acquire() as a, pools[1].acquire() as b:
        (lease_a,) = await owners.claim(a, "A", ["org02"], limit=1, ttl_s=15, now=at(0))
        first = await owners.reserve_call(
            a, provider="org02", replica_id="A", epoch=lease_a.epoch, app_key=app,
            calls=3, window_s=60, now=at(1),
        )  # fmt: skip
        assert first.outcome == "granted"
        # A is paused (SIGSTOP, a GC pause, a partition) for longer than its lease.
        (lease_b,) = await owners.claim(b, "B", ["org02"], limit=1, ttl_s=15, now=at(16))
        assert lease_b.epoch == lease_a.epoch + 1
        late = await owners.reserve_call(
            a, provider="org02", replica_id="A", epoch=lease_a.epoch, app_key=app,
            calls=3, window_s=60, now=at(17),
        )  # fmt: skip
        assert late.outcome == "lost"
        # Even a lapsed lease nobody has taken yet spends nothing.
        (lease_c,) = await owners.claim(a, "A", ["org03"], limit=1, ttl_s=15, now=at(0))
        stale = await owners.reserve_call(
            a, provider="org03", replica_id="A", epoch=lease_c.epoch, app_key="other",
            calls=3, window_s=60, now=at(15),
        )  # fmt: skip
        assert stale.outcome == "lost"
        mine = await owners.reserve_call(
            b, provider="org02", replica_id="B", epoch=lease_b.epoch, app_key=app,
            calls=3, window_s=60, now=at(17),
        )  # fmt: skip
        assert mine.outcome == "granted"
        log = await a.fetch("SELECT owner, epoch FROM call_log WHERE app_key = $1 ORDER BY at", app)
        assert [(r["owner"], r["epoch"]) for r in log] == [("A", 1), ("B", 2)]


async def test_concurrent_reservations_never_exceed_the_budget(pools: list[asyncpg.Pool]) -> None:
    """Bursts of 24 reservations for one app, from three replicas under three names: 3 granted."""
    leases = {}
    for i, pool in enumerate(pools):
        async with pool.acquire() as conn:
            (leases[i],) = await owners.claim(conn, f"R{i}", [f"org0{i}"], limit=1, ttl_s=60)

    async def reserve(app: str, i: int) -> owners.Reservation:
        r = i % 3
        async with pools[r].acquire() as conn:
            return await owners.reserve_call(
                conn, provider=f"org0{r}", replica_id=f"R{r}", epoch=leases[r].epoch,
                app_key=app, calls=3, window_s=60, margin_s=1,
            )  # fmt: skip

    for burst in range(5):
        app = f"https://acme.okta.com|0oa{burst}"
        results = await asyncio.gather(*(reserve(app, i) for i in range(24)))
        granted = sorted(r.slot_at for r in results if r.outcome == "granted" and r.slot_at)
        waits = [r for r in results if r.outcome == "wait"]
        assert len(granted) == 3, f"burst {burst}: {len(granted)} granted"
        assert len(waits) == 21
        # Each refused caller learns when the first slot frees: oldest call + window + margin.
        assert {w.slot_at for w in waits} == {granted[0] + timedelta(seconds=61)}
        assert all(50 < w.wait_s <= 61 for w in waits)


async def test_a_stale_epoch_is_refused_after_the_same_replica_reclaims(
    pools: list[asyncpg.Pool],
) -> None:
    """Epoch 1 lost and reclaimed as epoch 3 by the same replica: work under epoch 1 is refused."""
    async with pools[0].acquire() as a, pools[1].acquire() as b:
        (old,) = await owners.claim(a, "A", ["org08"], limit=1, ttl_s=15, now=at(0))
        await owners.claim(b, "B", ["org08"], limit=1, ttl_s=15, now=at(15))
        await owners.release(b, "B", ["org08"], now=at(16))
        (new,) = await owners.claim(a, "A", ["org08"], limit=1, ttl_s=15, now=at(16))
        assert (old.epoch, new.epoch) == (1, 3)

        async def reserve(epoch: int) -> str:
            r = await owners.reserve_call(
                a, provider="org08", replica_id="A", epoch=epoch, app_key="app-epoch",
                calls=3, window_s=60, now=at(17),
            )  # fmt: skip
            return r.outcome

        assert await reserve(old.epoch) == "lost"
        assert await reserve(new.epoch) == "granted"


async def test_the_window_slides_on_the_database_clock(pools: list[asyncpg.Pool]) -> None:
    """3 calls at 0, 1, 2 s; at 30 s wait until 60 s; at 60 s one more; at 61 s one more."""
    app = "app-window"
    async with pools[0].acquire() as a:
        (lease,) = await owners.claim(a, "A", ["org06"], limit=1, ttl_s=3600, now=at(0))

        async def reserve(seconds: float) -> owners.Reservation:
            return await owners.reserve_call(
                a, provider="org06", replica_id="A", epoch=lease.epoch, app_key=app,
                calls=3, window_s=60, now=at(seconds),
            )  # fmt: skip

        assert [(await reserve(s)).outcome for s in (0, 1, 2)] == ["granted"] * 3
        full = await reserve(30)
        assert (full.outcome, full.slot_at, full.wait_s) == ("wait", at(60), 30.0)
        assert (await reserve(59.9)).outcome == "wait"
        assert (await reserve(60)).outcome == "granted"
        assert (await reserve(60.5)).outcome == "wait"
        assert (await reserve(61)).outcome == "granted"


async def test_release_notifies_other_replicas_who_claim_at_once(
    pools: list[asyncpg.Pool], pg_dsn: str
) -> None:
    """A releases (shutdown): B hears it on forwarder_owners and claims with no TTL wait."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(pg_dsn)
    try:
        await listener.add_listener(
            owners.OWNERS_CHANNEL, lambda _c, _pid, _ch, payload: heard.put_nowait(payload)
        )
        async with pools[0].acquire() as a, pools[1].acquire() as b:
            await owners.heartbeat(a, Replica("A", "host-a", 1), ttl_s=15)
            assert await asyncio.wait_for(heard.get(), 5) == "join A"
            held = await owners.claim(a, "A", PROVIDERS, limit=10, ttl_s=15)
            assert len(held) == 10
            assert await owners.leave(a, "A") == PROVIDERS
            assert await asyncio.wait_for(heard.get(), 5) == "release A"
            taken = await owners.claim(b, "B", PROVIDERS, limit=10, ttl_s=15)
            assert [lease.epoch for lease in taken] == [2] * 10
            assert await owners.live_replicas(b) == []
    finally:
        await listener.close()


async def test_heartbeats_list_only_live_replicas(pools: list[asyncpg.Pool]) -> None:
    """A replica whose heartbeat lapsed (kill -9) drops out of the live set."""
    async with pools[0].acquire() as conn:
        assert await owners.heartbeat(conn, Replica("A", "h", 1), ttl_s=15, now=at(0)) == ["A"]
        live = await owners.heartbeat(conn, Replica("B", "h", 2), ttl_s=15, now=at(5))
        assert live == ["A", "B"]
        assert await owners.heartbeat(conn, Replica("B", "h", 2), ttl_s=15, now=at(16)) == ["B"]
        assert await owners.live_replicas(conn, now=at(14)) == ["A", "B"]


async def test_starvation_guard_takes_only_long_free_providers(pools: list[asyncpg.Pool]) -> None:
    """claim(free_for_s=15) leaves a just-released provider to replicas below target."""
    async with pools[0].acquire() as a:
        await owners.claim(a, "A", ["org07"], limit=1, ttl_s=15, now=at(0))
        await owners.release(a, "A", ["org07"], now=at(10))
        assert (
            await owners.claim(a, "B", ["org07"], limit=1, ttl_s=15, free_for_s=15, now=at(20))
            == []
        )
        taken = await owners.claim(a, "B", ["org07"], limit=1, ttl_s=15, free_for_s=15, now=at(25))
        assert [lease.provider for lease in taken] == ["org07"]
