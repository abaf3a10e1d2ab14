"""The fenced call log on a real PostgreSQL: slots granted only under the owning epoch.

Three tests wait out a 1-second window on the database's clock (one also lets 0.4 s pass
while a call is "on the wire"): the behaviour under test is the database's clock
(``clock_timestamp()``), so it cannot be moved from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from forwarder.clock import SystemClock
from forwarder.ratelimit import max_calls_in_window
from forwarder.store.postgres import owners
from forwarder.store.postgres.budget import FencedCallLog
from forwarder.store.postgres.queue import Fenced
from tests.pg import migrated_pools

pytestmark = pytest.mark.slow

APP = "https://acme.okta.com|0oa1"


@pytest.fixture
async def pools(pg_dsn: str) -> AsyncIterator[list[asyncpg.Pool]]:
    async with migrated_pools(pg_dsn, 2, ["acme", "acme-renamed"]) as made:
        yield made


async def claim(pool: asyncpg.Pool, replica: str, provider: str) -> int:
    async with pool.acquire() as conn:
        (lease,) = await owners.claim(conn, replica, [provider], limit=1, ttl_s=60)
    return lease.epoch


def log(
    pool: asyncpg.Pool, replica: str, provider: str, epoch: int | None, **kw: float
) -> FencedCallLog:
    return FencedCallLog(
        pool=pool,
        provider=provider,
        replica_id=replica,
        epoch=lambda: epoch,
        calls=int(kw.get("calls", 3)),
        window_s=kw.get("window_s", 60.0),
        clock=SystemClock(),
        margin_s=0.0,
    )


async def test_the_owner_is_granted_and_the_call_is_logged(pools: list[asyncpg.Pool]) -> None:
    """Owner with a free window: the slot is granted and shows in recent_calls (ms)."""
    epoch = await claim(pools[0], "A", "acme")
    calls = log(pools[0], "A", "acme", epoch)
    await calls.record_call(APP, 0)
    (at_ms,) = await calls.recent_calls(APP, 0)
    assert at_ms > 1_700_000_000_000


async def test_an_answered_call_holds_its_slot_from_the_answer(
    pools: list[asyncpg.Pool],
) -> None:
    """A call that took long to answer (a starved replica: its stamp is well before the
    receiver's) is counted from its answer, on the database's clock: the next owner of
    the provider (another replica, after a hand-over) waits a window from then."""
    calls = log(pools[0], "A", "acme", await claim(pools[0], "A", "acme"), calls=1, window_s=1.0)
    await calls.record_call(APP, 0)
    (granted,) = await calls.recent_calls(APP, 0)
    await asyncio.sleep(0.4)  # the call is on the wire (database clock: real time)
    await calls.call_answered(APP, granted, 0)
    (answered,) = await calls.recent_calls(APP, 0)
    assert answered - granted >= 400
    async with pools[1].acquire() as conn:
        await owners.release(conn, "A", ["acme"])
    successor = log(
        pools[1], "B", "acme", await claim(pools[1], "B", "acme"), calls=1, window_s=1.0
    )
    await successor.record_call(APP, 0)
    later = (await successor.recent_calls(APP, 0))[-1]
    assert later - answered >= 1000
    assert successor.waited >= 1


async def test_no_slot_without_the_lease(pools: list[asyncpg.Pool]) -> None:
    """Not owning it (locally known, or taken over meanwhile): Fenced, nothing logged."""
    with pytest.raises(Fenced):
        await log(pools[0], "A", "acme", None).record_call(APP, 0)
    stale = await claim(pools[0], "A", "acme")
    async with pools[1].acquire() as conn:
        await owners.release(conn, "A", ["acme"])
    await claim(pools[1], "B", "acme")
    with pytest.raises(Fenced):
        await log(pools[0], "A", "acme", stale).record_call(APP, 0)
    assert await log(pools[0], "A", "acme", stale).recent_calls(APP, 0) == []


async def test_two_replicas_sharing_an_app_never_exceed_its_budget(
    pools: list[asyncpg.Pool],
) -> None:
    """Two replicas spend one app (under two provider names) at once, 2 calls per 1 s:
    six reservations take three windows, never more than 2 in any window."""
    a = log(pools[0], "A", "acme", await claim(pools[0], "A", "acme"), calls=2, window_s=1.0)
    b = log(
        pools[1], "B", "acme-renamed", await claim(pools[1], "B", "acme-renamed"),
        calls=2, window_s=1.0,
    )  # fmt: skip
    await asyncio.gather(*(x.record_call(APP, 0) for x in (a, b, a, b, a, b)))
    times = [t / 1000 for t in await a.recent_calls(APP, 0)]
    assert len(times) == 6
    assert max_calls_in_window(times, 1.0) <= 2
    assert times[-1] - times[0] >= 2.0
    assert a.waited + b.waited >= 4
