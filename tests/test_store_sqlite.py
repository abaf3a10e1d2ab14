"""The SQLite store: coalescing, priority, leases, expiry, persistence (real files)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forwarder.errors import StoreFull
from forwarder.signals import RiskLevel, Signal
from forwarder.store.sqlite import SqliteStore

NOW = 1_800_000_000_000
DAY = 86_400_000


def sig(ip: str, risk: RiskLevel = RiskLevel.LOW, ts: int = NOW, exp: int | None = None) -> Signal:
    return Signal(ip, risk, f"m{ts}", ts, exp, ts)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "f.db", max_pending=1000) as s:
        yield s


async def lease_all(store: SqliteStore, provider: str = "p", limit: int = 1000):  # type: ignore[no-untyped-def]
    return await store.lease(provider, limit=limit, now_ms=NOW, max_age_ms=DAY, expiry_margin_ms=0)


async def test_newer_signal_replaces_waiting_one(store: SqliteStore) -> None:
    """Per (provider, ip) only the newest observation waits."""
    await store.add([(["p"], sig("192.0.2.1", RiskLevel.LOW, ts=NOW - 10))])
    await store.add([(["p"], sig("192.0.2.1", RiskLevel.MEDIUM, ts=NOW))])
    await store.add([(["p"], sig("192.0.2.1", RiskLevel.HIGH, ts=NOW - 50))])  # older: ignored
    lease = await lease_all(store)
    assert [(s.ip, s.risk, s.ts_ms) for s in lease.signals] == [
        ("192.0.2.1", RiskLevel.MEDIUM, NOW)
    ]
    assert store.pending_total() == 1


async def test_tie_goes_to_higher_risk(store: SqliteStore) -> None:
    """Same timestamp: higher risk wins; retrying the same request changes nothing."""
    await store.add([(["p"], sig("192.0.2.1", RiskLevel.MEDIUM))])
    await store.add([(["p"], sig("192.0.2.1", RiskLevel.HIGH))])
    await store.add([(["p"], sig("192.0.2.1", RiskLevel.LOW))])
    await store.add([(["p"], sig("192.0.2.1", RiskLevel.HIGH))])
    lease = await lease_all(store)
    assert [s.risk for s in lease.signals] == [RiskLevel.HIGH]


async def test_batches_come_high_first_then_oldest(store: SqliteStore) -> None:
    """HIGH, then MEDIUM, then LOW; oldest first within a level."""
    await store.add(
        [
            (["p"], sig("192.0.2.1", RiskLevel.LOW, ts=NOW - 100)),
            (["p"], sig("192.0.2.2", RiskLevel.HIGH, ts=NOW - 1)),
            (["p"], sig("192.0.2.3", RiskLevel.MEDIUM, ts=NOW - 5)),
            (["p"], sig("192.0.2.4", RiskLevel.HIGH, ts=NOW - 9)),
            (["p"], sig("192.0.2.5", RiskLevel.LOW, ts=NOW - 200)),
        ]
    )
    lease = await lease_all(store, limit=4)
    assert [s.ip for s in lease.signals] == ["192.0.2.4", "192.0.2.2", "192.0.2.3", "192.0.2.5"]


async def test_leased_rows_are_not_leased_twice(store: SqliteStore) -> None:
    """A second lease skips what is in flight."""
    await store.add([(["p"], sig(f"192.0.2.{i}")) for i in range(10)])
    first = await lease_all(store, limit=6)
    second = await lease_all(store, limit=6)
    assert len(first.signals) == 6
    assert len(second.signals) == 4
    assert not {s.ip for s in first.signals} & {s.ip for s in second.signals}


async def test_ack_keeps_versions_that_arrived_in_flight(store: SqliteStore) -> None:
    """A signal updated while its old version was in flight is sent again, not lost."""
    await store.add([(["p"], sig("192.0.2.1", ts=NOW - 10)), (["p"], sig("192.0.2.2"))])
    lease = await lease_all(store)
    await store.add([(["p"], sig("192.0.2.1", RiskLevel.HIGH, ts=NOW))])
    assert await store.ack(lease) == 1
    again = await lease_all(store)
    assert [(s.ip, s.risk) for s in again.signals] == [("192.0.2.1", RiskLevel.HIGH)]


async def test_release_makes_batch_available_again(store: SqliteStore) -> None:
    """A kept batch is leased again later."""
    await store.add([(["p"], sig("192.0.2.1"))])
    lease = await lease_all(store)
    await store.release(lease)
    assert [s.ip for s in (await lease_all(store)).signals] == ["192.0.2.1"]


async def test_expired_and_too_old_are_dropped_and_counted(store: SqliteStore) -> None:
    """Past expiresAt or older than max age: removed at batch time, never sent."""
    await store.add(
        [
            (["p"], sig("192.0.2.1", exp=NOW - 1, ts=NOW - 1000)),
            (["p"], sig("192.0.2.2", ts=NOW - DAY - 1)),
            (["p"], sig("192.0.2.3", exp=NOW + 60_000)),
        ]
    )
    lease = await lease_all(store)
    assert [s.ip for s in lease.signals] == ["192.0.2.3"]
    assert lease.expired == 2
    assert store.pending_total() == 1


async def test_providers_are_separate(store: SqliteStore) -> None:
    """One signal for two providers is two pending rows, leased independently."""
    await store.add([(["a", "b"], sig("192.0.2.1"))])
    assert store.pending_counts("a") == {RiskLevel.LOW: 1}
    assert store.pending_counts("b") == {RiskLevel.LOW: 1}
    lease = await lease_all(store, provider="a")
    await store.ack(lease)
    assert store.pending_counts("a") == {}
    assert store.pending_counts("b") == {RiskLevel.LOW: 1}


async def test_state_survives_reopen(tmp_path: Path) -> None:
    """Pending rows, counts, dead letters and call times persist; leases do not."""
    path = tmp_path / "f.db"
    async with SqliteStore(path) as s:
        await s.add([(["p"], sig(f"192.0.2.{i}", RiskLevel.HIGH)) for i in range(5)])
        lease = await s.lease("p", limit=2, now_ms=NOW, max_age_ms=DAY, expiry_margin_ms=0)
        await s.dead_letter(lease, reason="400", causes=["E0000001: bad"], at_ms=2_000_000)
        await s.lease("p", limit=2, now_ms=NOW, max_age_ms=DAY, expiry_margin_ms=0)
        await s.record_call("p", 1_000_500)
    async with SqliteStore(path) as s:
        assert s.pending_counts("p") == {RiskLevel.HIGH: 3}
        assert s.dead_letter_count("p") == 2
        assert await s.recent_calls("p", 1_000_000) == [1_000_500]
        lease = await s.lease("p", limit=10, now_ms=NOW, max_age_ms=DAY, expiry_margin_ms=0)
        assert len(lease.signals) == 3
        (dl, _) = await s.dead_letters("p")
        assert dl.causes == ("E0000001: bad",)


async def test_full_store_refuses(tmp_path: Path) -> None:
    """At max_pending, add raises StoreFull."""
    async with SqliteStore(tmp_path / "f.db", max_pending=2) as s:
        await s.add([(["p"], sig("192.0.2.1")), (["p"], sig("192.0.2.2"))])
        with pytest.raises(StoreFull):
            await s.add([(["p"], sig("192.0.2.3"))])


async def test_concurrent_adds_share_commits(store: SqliteStore) -> None:
    """Many concurrent adds all commit (group commit) and count correctly."""
    await asyncio.gather(
        *(store.add([(["p"], sig(f"198.18.{i}.{j}")) for j in range(10)]) for i in range(50))
    )
    assert store.pending_total() == 500


async def test_coalescing_within_one_commit(store: SqliteStore) -> None:
    """Several versions of one IP in one group commit obey the same newest/higher rule."""
    await asyncio.gather(
        store.add([(["p"], sig("192.0.2.1", RiskLevel.LOW, ts=NOW - 5))]),
        store.add(
            [
                (["p"], sig("192.0.2.1", RiskLevel.MEDIUM, ts=NOW)),
                (["p"], sig("192.0.2.1", RiskLevel.HIGH, ts=NOW - 9)),
                (["p"], sig("192.0.2.1", RiskLevel.HIGH, ts=NOW)),
                (["p"], sig("192.0.2.1", RiskLevel.LOW, ts=NOW)),
            ]
        ),
    )
    lease = await lease_all(store)
    assert [(s.ip, s.risk, s.ts_ms) for s in lease.signals] == [("192.0.2.1", RiskLevel.HIGH, NOW)]
    assert store.pending_total() == 1


async def test_large_expired_backlog_is_purged_in_slices(store: SqliteStore) -> None:
    """6,000 entries past expiresAt ahead of fresh ones: 5,000 dropped per lease, then sent."""
    store.max_pending = 10_000
    expired = [
        (["p"], sig(f"198.18.{i // 256}.{i % 256}", ts=NOW - 1000, exp=NOW - 1))
        for i in range(6000)
    ]
    await store.add(expired)
    await store.add([(["p"], sig(f"192.0.2.{i}")) for i in range(10)])
    first = await lease_all(store)
    assert (len(first.signals), first.expired) == (0, 5000)
    second = await lease_all(store)
    assert (len(second.signals), second.expired) == (10, 1000)
    assert store.pending_total() == 10


async def test_aged_backlog_goes_in_the_first_lease_sweep(store: SqliteStore) -> None:
    """Entries past max age are swept (counted for the provider) before the first lease."""
    store.max_pending = 10_000
    old = NOW - DAY - 1
    await store.add([(["p"], sig(f"198.18.{i // 256}.{i % 256}", ts=old)) for i in range(6000)])
    await store.add([(["p"], sig(f"192.0.2.{i}")) for i in range(10)])
    first = await lease_all(store)
    assert (len(first.signals), first.expired) == (10, 6000)
    assert store.pending_total() == 10


async def test_queued_rows_count_against_capacity(tmp_path: Path) -> None:
    """Concurrent adds cannot overshoot max_pending by what is still queued for commit."""
    async with SqliteStore(tmp_path / "f.db", max_pending=100) as s:
        results = await asyncio.gather(
            *(s.add([(["p"], sig(f"198.18.{i}.{j}")) for j in range(60)]) for i in range(5)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, StoreFull) for r in results) >= 3
        assert s.pending_total() <= 120


async def test_lease_skipping_expired_rows_never_repeats_an_ip(store: SqliteStore) -> None:
    """Expired rows interleaved with fresh ones: the refilled lease holds each IP once."""
    rows = []
    for i in range(40):
        # Same risk, ascending timestamps: the batch order alternates fresh / expired.
        exp = NOW - 1 if i % 2 else None
        rows.append((["p"], sig(f"192.0.2.{i}", ts=NOW - 1000 + i, exp=exp)))
    await store.add(rows)
    lease = await lease_all(store, limit=10)
    ips = [s.ip for s in lease.signals]
    assert ips == [f"192.0.2.{i}" for i in range(0, 20, 2)]
    rest = await lease_all(store, limit=100)
    assert [s.ip for s in rest.signals] == [f"192.0.2.{i}" for i in range(20, 40, 2)]
    assert lease.expired + rest.expired == 20


async def test_dead_letter_some_moves_named_subjects_and_releases_the_rest(
    store: SqliteStore,
) -> None:
    """A partial rejection dead-letters only the named IPs, each with its cause; the rest wait."""
    await store.add([(["p"], sig(f"192.0.2.{i}", RiskLevel.HIGH)) for i in range(5)])
    lease = await lease_all(store)
    moved = await store.dead_letter_some(
        lease,
        {"192.0.2.1": ["events[0].subjects[1].ip: bad"], "192.0.2.9": ["not in lease"]},
        reason="Okta rejected 1 subject (400)",
        at_ms=2_000_000,
    )
    assert moved == 1
    assert store.dead_letter_count("p") == 1
    (letter,) = await store.dead_letters("p")
    assert (letter.signal.ip, letter.causes) == ("192.0.2.1", ("events[0].subjects[1].ip: bad",))
    assert store.pending_counts("p") == {RiskLevel.HIGH: 4}
    again = await lease_all(store)
    assert sorted(s.ip for s in again.signals) == [f"192.0.2.{i}" for i in (0, 2, 3, 4)]


async def test_providers_leasing_one_broadcast_share_its_objects(tmp_path: Path) -> None:
    """Many providers leasing the same broadcast entries hold one object per entry, not one
    per provider (1,000 orgs x a 1,000-signal lease was a million tuples in memory); a new
    version of an entry is a new object."""
    names = [f"org{i}" for i in range(5)]
    async with SqliteStore(tmp_path / "f.db", providers=names) as store:
        await store.add([([], sig(f"192.0.2.{n}", ts=NOW - 10)) for n in range(50)])
        leases = [await lease_all(store, p) for p in names]
        first = leases[0].signals
        assert len(first) == 50
        for lease in leases[1:]:
            assert lease.signals == first
            assert all(a is b for a, b in zip(lease.signals, first, strict=True))
        for lease in leases:
            await store.ack(lease)
        await store.add([([], sig("192.0.2.1", RiskLevel.HIGH, ts=NOW))])
        again = await lease_all(store, names[0])
        assert [(s.ip, s.risk) for s in again.signals] == [("192.0.2.1", RiskLevel.HIGH)]
        assert store.pending_total() == 1


async def test_a_commit_wakes_only_the_dispatchers_it_can_change(tmp_path: Path) -> None:
    """A broadcast commit sets ``changed`` for an idle provider, for a lingering one only
    when it makes a full call or brings the first HIGH it asked about, and for a provider
    that registered nothing; a targeted commit always wakes its provider."""
    names = ["idle", "full", "high", "paced"]
    async with SqliteStore(tmp_path / "f.db", providers=names) as store:
        events = {p: store.changed(p) for p in names}
        store.wake_when("idle")
        store.wake_when("full", pending=3, high=False)
        store.wake_when("high", pending=1000, high=True)
        store.wake_when("paced", pending=1000, high=False)
        await store.add([([], sig("192.0.2.1", ts=NOW - 10))])
        assert {p for p, e in events.items() if e.is_set()} == {"idle"}
        await store.add([([], sig(f"192.0.2.{n}", ts=NOW - 5)) for n in (2, 3)])
        assert {p for p, e in events.items() if e.is_set()} == {"idle", "full"}
        await store.add([([], sig("192.0.2.9", RiskLevel.HIGH, ts=NOW))])
        assert {p for p, e in events.items() if e.is_set()} == {"idle", "full", "high"}
        await store.add([(["paced"], sig("192.0.2.8", ts=NOW))])
        assert all(e.is_set() for e in events.values())
        # Once woken, a provider is woken by every commit until it registers again.
        events["full"].clear()
        await store.add([([], sig("192.0.2.7", ts=NOW))])
        assert events["full"].is_set()
