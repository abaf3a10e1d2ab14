"""Replicas sharing providers through PostgreSQL: even spread, rebalance, hand-over.

Each replica is a Coordinator with its own pool on one real server. Hand-over on stop
is driven by LISTEN/NOTIFY (no TTL wait, so the TTL here is long); the kill -9 case
waits out a short TTL because that is the behaviour under test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg
import pytest

from forwarder.clock import SystemClock
from forwarder.store.postgres import balance
from forwarder.store.postgres.coordinator import Coordinator
from forwarder.store.postgres.owners import Replica
from forwarder.store.postgres.schema import migrate

pytestmark = pytest.mark.slow

PROVIDERS = [f"org{i:02d}" for i in range(10)]


@dataclass
class Events:
    acquired: list[tuple[str, int]] = field(default_factory=list)
    lost: list[tuple[str, str]] = field(default_factory=list)


class Recorder:
    """An OwnershipObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.events = Events()

    def acquired(self, provider: str, epoch: int) -> None:
        self.events.acquired.append((provider, epoch))

    def lost(self, provider: str, reason: str) -> None:
        self.events.lost.append((provider, reason))


@dataclass
class Running:
    coordinator: Coordinator
    pool: asyncpg.Pool
    stop: asyncio.Event
    task: asyncio.Task[None]
    recorder: Recorder


class Fleet:
    """Replicas started and stopped by the test, all torn down at the end."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.replicas: dict[str, Running] = {}

    async def start(self, name: str, *, ttl_s: float = 15.0) -> Running:
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=3)
        recorder = Recorder()
        coordinator = Coordinator(
            pool=pool,
            replica=Replica(name, "test", 0),
            providers=PROVIDERS,
            ttl_s=ttl_s,
            clock=SystemClock(),
            observer=recorder,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(coordinator.run(stop))
        running = Running(coordinator, pool, stop, task, recorder)
        self.replicas[name] = running
        return running

    async def stop(self, name: str) -> None:
        running = self.replicas.pop(name)
        running.stop.set()
        await running.task
        await running.pool.close()

    async def kill(self, name: str) -> None:
        """kill -9: connections cut, nothing released."""
        running = self.replicas.pop(name)
        running.pool.terminate()
        running.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running.task

    def owned(self) -> dict[str, set[str]]:
        return {n: set(r.coordinator.owned()) for n, r in self.replicas.items()}

    async def until(self, check: Callable[[], bool], seconds: float = 10.0) -> float:
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > seconds:
                raise AssertionError(f"not reached in {seconds} s: {self.owned()}")
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    def spread(self, *sizes: int) -> bool:
        owned = self.owned()
        union = set().union(*owned.values()) if owned else set()
        disjoint = sum(len(s) for s in owned.values()) == len(union)
        return (
            disjoint
            and union == set(PROVIDERS)
            and sorted(map(len, owned.values())) == sorted(sizes)
        )


@pytest.fixture
async def fleet(pg_dsn: str) -> AsyncIterator[Fleet]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    made = Fleet(pg_dsn)
    try:
        yield made
    finally:
        for name in list(made.replicas):
            await made.stop(name)


def test_targets_add_up_and_differ_by_at_most_one() -> None:
    """Every split of P providers over N replicas sums to P, each share within one."""
    for providers in range(30):
        for n in range(1, 7):
            ids = [f"r{i}" for i in range(n)]
            shares = [balance.target(me, ids, providers) for me in ids]
            assert sum(shares) == providers
            assert max(shares) - min(shares) <= 1


def test_plan_sheds_the_excess_and_anything_unconfigured() -> None:
    """Over target: release the excess; a provider removed from the config is released."""
    step = balance.plan("a", ["a", "b"], ["p1", "p2", "p3", "p4"], ["p1", "p2", "p3", "gone"])
    assert step == balance.Plan(release=["gone", "p3"], claim=0)
    assert balance.plan("b", ["a", "b"], ["p1", "p2", "p3"], []) == balance.Plan([], 1)


async def test_three_replicas_spread_providers_evenly(fleet: Fleet) -> None:
    """10 providers over 3 replicas: 4, 3 and 3, no provider owned twice."""
    for name in ("a", "b", "c"):
        await fleet.start(name)
    await fleet.until(lambda: fleet.spread(4, 3, 3))


async def test_a_joining_replica_gets_its_share_without_waiting_a_ttl(fleet: Fleet) -> None:
    """Two replicas own 5 + 5; a third joins and the split becomes 4/3/3 within seconds."""
    await fleet.start("a")
    await fleet.start("b")
    await fleet.until(lambda: fleet.spread(5, 5))

    def shed() -> list[str]:
        events = [e for n in ("a", "b") for e in fleet.replicas[n].recorder.events.lost]
        return [reason for _, reason in events]

    before = len(shed())
    await fleet.start("c")
    took = await fleet.until(lambda: fleet.spread(4, 3, 3))
    assert took < 5.0  # the TTL is 15 s: the hand-over came from NOTIFY, not expiry
    assert shed()[before:] == ["shed"] * 3  # only what moved: no churn


async def test_stopping_a_replica_hands_its_providers_over_in_about_a_second(
    fleet: Fleet,
) -> None:
    """SIGTERM path: the leaving replica releases; the others own all 10 well inside a TTL."""
    for name in ("a", "b", "c"):
        await fleet.start(name)
    await fleet.until(lambda: fleet.spread(4, 3, 3))
    leaving = fleet.replicas["b"].recorder
    before = len(leaving.events.lost)
    held = len(fleet.replicas["b"].coordinator.owned())
    await fleet.stop("b")
    assert [reason for _, reason in leaving.events.lost[before:]] == ["released"] * held
    took = await fleet.until(lambda: fleet.spread(5, 5))
    assert took < 2.0


async def test_a_killed_replicas_providers_are_taken_over_after_its_ttl(fleet: Fleet) -> None:
    """kill -9 (nothing released): its leases lapse and the others claim them, epoch + 1."""
    for name in ("a", "b"):
        await fleet.start(name, ttl_s=1.5)
    await fleet.until(lambda: fleet.spread(5, 5))
    victim = dict(fleet.replicas["a"].coordinator.owned())
    await fleet.kill("a")
    took = await fleet.until(lambda: fleet.spread(10), seconds=10)
    assert took < 1.5 + 1.5  # the TTL, plus one tick of the survivor (ttl / 3) and slack
    survivor = fleet.replicas["b"].coordinator.owned()
    assert {p: survivor[p] for p in victim} == {p: e + 1 for p, e in victim.items()}


async def test_a_replica_cut_off_from_the_database_gives_up_its_providers_by_the_ttl(
    fleet: Fleet, pg_dsn: str
) -> None:
    """Renewals failing (server unreachable): its own clock drops the leases within the TTL."""
    running = await fleet.start("a", ttl_s=1.5)
    await fleet.until(lambda: len(running.coordinator.owned()) == 10)
    # Every later connection attempt is refused, as in a partition.
    running.coordinator._pool = await asyncpg.create_pool(
        pg_dsn.replace("127.0.0.1", "127.0.0.2"), min_size=0, max_size=1, timeout=0.2
    )
    cut_at = time.monotonic()
    running.pool.terminate()
    await fleet.until(lambda: not running.coordinator.owned(), seconds=5)
    assert time.monotonic() - cut_at <= 1.5 + 0.1
    # The observer (its dispatchers) hears of it by the next tick.
    await fleet.until(lambda: len(running.recorder.events.lost) == 10, seconds=1)
    assert {reason for _, reason in running.recorder.events.lost} == {"lapsed"}
    other = await fleet.start("b", ttl_s=1.5)
    await fleet.until(lambda: len(other.coordinator.owned()) == 10)


async def test_hand_over_stays_prompt_after_the_server_drops_every_connection(
    fleet: Fleet, pg_dsn: str
) -> None:
    """Connections cut by the server (a failover, an idle timeout): each replica listens
    again on a new connection, so a later stop still hands over without a TTL wait."""
    for name in ("a", "b"):
        await fleet.start(name, ttl_s=15.0)
    await fleet.until(lambda: fleet.spread(5, 5))
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        await asyncio.sleep(0.2)
        for running in fleet.replicas.values():
            running.coordinator.wake()  # their next tick, now rather than in 5 s
        await asyncio.sleep(0.5)
    finally:
        await admin.close()
    assert fleet.spread(5, 5)
    await fleet.stop("a")
    # b's next tick is ~5 s away: only a NOTIFY heard on its new connection is this fast.
    assert await fleet.until(lambda: fleet.spread(10)) < 1.5
