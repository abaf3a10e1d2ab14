"""The store contract, on every backend: coalescing, order, leases, acks, dead letters,
restarts, broadcasts stored once, targeted + broadcast coalescing, ageing, capacity, the
call log. Every expectation is on the protocols, never on a backend's tables."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from forwarder.errors import StoreFull
from forwarder.signals import RiskLevel, Signal
from forwarder.store import Lease, StoreBackend
from tests.store_contract.conftest import Opener

NOW = 1_800_000_000_000
DAY = 86_400_000
H, M, L = RiskLevel.HIGH, RiskLevel.MEDIUM, RiskLevel.LOW
ALL: tuple[str, ...] = ()  # no targets: a broadcast


def sig(ip: str, risk: RiskLevel = L, ts: int = NOW, exp: int | None = None) -> Signal:
    return Signal(ip, risk, f"m{ts}", ts, exp, ts)


def ip(i: int) -> str:
    return f"198.18.{i // 256}.{i % 256}"


@pytest.fixture
async def store(opener: Opener) -> AsyncIterator[StoreBackend]:
    async with opener(providers=["a", "b", "c"], max_pending=10_000) as s:
        yield s


async def lease(
    store: StoreBackend, provider: str = "a", limit: int = 1000, now: int = NOW
) -> Lease:
    return await store.lease(provider, limit=limit, now_ms=now, max_age_ms=DAY, expiry_margin_ms=0)


def seen(lease: Lease) -> list[tuple[str, RiskLevel, int]]:
    return [(s.ip, s.risk, s.ts_ms) for s in lease.signals]


async def drain(store: StoreBackend, provider: str) -> list[tuple[str, RiskLevel, int]]:
    """Everything ``provider`` is sent, leasing and acking until nothing is left."""
    out: list[tuple[str, RiskLevel, int]] = []
    while True:
        batch = await lease(store, provider)
        if not batch.signals:
            return out
        out += seen(batch)
        await store.ack(batch)


def total(counts: object) -> int:
    assert isinstance(counts, dict)
    return sum(counts.values())


# -- coalescing ---------------------------------------------------------------------


@pytest.mark.parametrize("targets", [ALL, ("a",)], ids=["broadcast", "targeted"])
async def test_newest_observation_wins(store: StoreBackend, targets: Sequence[str]) -> None:
    """Per ip only the newest observation waits; an older one arriving later is ignored."""
    await store.add([(targets, sig("192.0.2.1", L, ts=NOW - 10))])
    await store.add([(targets, sig("192.0.2.1", M, ts=NOW))])
    await store.add([(targets, sig("192.0.2.1", H, ts=NOW - 50))])
    assert seen(await lease(store)) == [("192.0.2.1", M, NOW)]
    assert store.pending_total() == 1


@pytest.mark.parametrize("targets", [ALL, ("a",)], ids=["broadcast", "targeted"])
async def test_tie_goes_to_higher_risk(store: StoreBackend, targets: Sequence[str]) -> None:
    """Same timestamp: higher risk wins; retrying the same request changes nothing."""
    for risk in (M, H, L, H):
        await store.add([(targets, sig("192.0.2.1", risk))])
    assert [s.risk for s in (await lease(store)).signals] == [H]


async def test_coalescing_within_one_commit(store: StoreBackend) -> None:
    """Versions of one ip in concurrent requests (one group commit) obey the same rule."""
    await asyncio.gather(
        store.add([(ALL, sig("192.0.2.1", L, ts=NOW - 5))]),
        store.add(
            [
                (ALL, sig("192.0.2.1", M, ts=NOW)),
                (ALL, sig("192.0.2.1", H, ts=NOW - 9)),
                (ALL, sig("192.0.2.1", H, ts=NOW)),
                (ALL, sig("192.0.2.1", L, ts=NOW)),
            ]
        ),
    )
    assert seen(await lease(store)) == [("192.0.2.1", H, NOW)]
    assert store.pending_total() == 1


# -- order and leases ---------------------------------------------------------------


async def test_batches_come_high_first_then_oldest(store: StoreBackend) -> None:
    """HIGH, then MEDIUM, then LOW; oldest first within a level (one request)."""
    await store.add(
        [
            (ALL, sig("192.0.2.1", L, ts=NOW - 100)),
            (ALL, sig("192.0.2.2", H, ts=NOW - 1)),
            (("a",), sig("192.0.2.3", M, ts=NOW - 5)),
            (ALL, sig("192.0.2.4", H, ts=NOW - 9)),
            (("a",), sig("192.0.2.5", L, ts=NOW - 200)),
        ]
    )
    batch = await lease(store, limit=4)
    assert [s.ip for s in batch.signals] == ["192.0.2.4", "192.0.2.2", "192.0.2.3", "192.0.2.5"]


async def test_first_stored_first_across_requests(store: StoreBackend) -> None:
    """Within a level, what was stored first is sent first."""
    for i in range(5):
        await store.add([(ALL if i % 2 else ("a",), sig(ip(i), M))])
    assert [s.ip for s in (await lease(store, limit=3)).signals] == [ip(0), ip(1), ip(2)]


async def test_leased_entries_are_not_leased_twice(store: StoreBackend) -> None:
    """A second lease skips what is in flight, for broadcast and targeted entries."""
    await store.add([(ALL if i % 2 else ("a",), sig(ip(i))) for i in range(10)])
    first = await lease(store, limit=6)
    second = await lease(store, limit=6)
    assert (len(first.signals), len(second.signals)) == (6, 4)
    assert not {s.ip for s in first.signals} & {s.ip for s in second.signals}


async def test_new_version_of_an_ip_in_flight_waits_for_the_lease(store: StoreBackend) -> None:
    """While an ip is in flight, its newer version is not leased alongside it."""
    await store.add([(ALL, sig("192.0.2.1", ts=NOW - 10))])
    first = await lease(store)
    await store.add([(ALL, sig("192.0.2.1", H, ts=NOW)), (("a",), sig("192.0.2.2"))])
    second = await lease(store)
    assert [s.ip for s in second.signals] == ["192.0.2.2"]
    await store.release(first)
    assert seen(await lease(store)) == [("192.0.2.1", H, NOW)]


@pytest.mark.parametrize("targets", [ALL, ("a",)], ids=["broadcast", "targeted"])
async def test_ack_keeps_versions_that_arrived_in_flight(
    store: StoreBackend, targets: Sequence[str]
) -> None:
    """A signal updated while its old version was in flight is sent again, not lost."""
    await store.add([(targets, sig("192.0.2.1", ts=NOW - 10)), (targets, sig("192.0.2.2"))])
    batch = await lease(store)
    await store.add([(targets, sig("192.0.2.1", H, ts=NOW))])
    assert await store.ack(batch) == 1
    assert seen(await lease(store)) == [("192.0.2.1", H, NOW)]


async def test_release_makes_batch_available_again(store: StoreBackend) -> None:
    """A kept batch is leased again later, in the same order."""
    await store.add([(ALL, sig(ip(i))) for i in range(3)])
    batch = await lease(store)
    await store.release(batch)
    assert seen(await lease(store)) == seen(batch)


async def test_expired_and_too_old_are_dropped_and_counted(store: StoreBackend) -> None:
    """Past expiresAt or older than max age: dropped at lease time, never sent."""
    await store.add(
        [
            (ALL, sig("192.0.2.1", exp=NOW - 1, ts=NOW - 1000)),
            (("a",), sig("192.0.2.2", ts=NOW - DAY - 1)),
            (ALL, sig("192.0.2.3", exp=NOW + 60_000)),
        ]
    )
    batch = await lease(store)
    assert [s.ip for s in batch.signals] == ["192.0.2.3"]
    assert batch.expired == 2
    assert total(store.pending_counts("a")) == 1


async def test_lease_skipping_expired_entries_never_repeats_an_ip(store: StoreBackend) -> None:
    """Expired entries interleaved with fresh ones: the filled lease holds each ip once."""
    rows = []
    for i in range(40):
        exp = NOW - 1 if i % 2 else None
        rows.append((("a",), sig(f"192.0.2.{i}", ts=NOW - 1000 + i, exp=exp)))
    await store.add(rows)
    first = await lease(store, limit=10)
    assert [s.ip for s in first.signals] == [f"192.0.2.{i}" for i in range(0, 20, 2)]
    rest = await lease(store, limit=100)
    assert [s.ip for s in rest.signals] == [f"192.0.2.{i}" for i in range(20, 40, 2)]
    assert first.expired + rest.expired == 20


# -- dead letters -------------------------------------------------------------------


async def test_dead_letter_moves_the_whole_batch(store: StoreBackend) -> None:
    """A rejected batch is dead-lettered for that provider only, with Okta's causes."""
    await store.add([(ALL, sig(ip(i), H)) for i in range(3)])
    batch = await lease(store, "a")
    moved = await store.dead_letter(batch, reason="400", causes=["E0000001: bad"], at_ms=NOW)
    assert moved == 3
    assert store.dead_letter_count("a") == 3
    assert store.dead_letter_count("b") == 0
    assert (await lease(store, "a")).signals == []
    assert len((await lease(store, "b")).signals) == 3
    letters = await store.dead_letters("a")
    assert {d.signal.ip for d in letters} == {ip(i) for i in range(3)}
    assert {(d.reason, tuple(d.causes), d.failed_ms) for d in letters} == {
        ("400", ("E0000001: bad",), NOW)
    }


async def test_dead_letter_some_moves_named_subjects_and_releases_the_rest(
    store: StoreBackend,
) -> None:
    """A partial rejection dead-letters only the named ips, each with its cause."""
    await store.add([(ALL, sig(f"192.0.2.{i}", H)) for i in range(5)])
    batch = await lease(store)
    moved = await store.dead_letter_some(
        batch,
        {"192.0.2.1": ["events[0].subjects[1].ip: bad"], "192.0.2.9": ["not in lease"]},
        reason="Okta rejected 1 subject (400)",
        at_ms=NOW,
    )
    assert moved == 1
    assert store.dead_letter_count("a") == 1
    (letter,) = await store.dead_letters("a")
    assert (letter.signal.ip, tuple(letter.causes)) == (
        "192.0.2.1",
        ("events[0].subjects[1].ip: bad",),
    )
    assert store.pending_counts("a") == {H: 4}
    again = await lease(store)
    assert sorted(s.ip for s in again.signals) == [f"192.0.2.{i}" for i in (0, 2, 3, 4)]


async def test_dead_letters_are_listed_and_removed_by_id(store: StoreBackend) -> None:
    """Newest first, filtered by provider or id; removed ones are gone from the count."""
    await store.add([(("a",), sig(ip(i))) for i in range(3)] + [(("b",), sig(ip(9)))])
    for provider in ("a", "b"):
        await store.dead_letter(await lease(store, provider), reason="400", causes=[], at_ms=NOW)
    letters = await store.dead_letters()
    assert [d.provider for d in letters][:1] == ["b"]
    ids = [d.id for d in await store.dead_letters("a", limit=2)]
    assert len(ids) == 2
    assert [d.id for d in await store.dead_letters(ids=ids)] == ids
    assert await store.delete_dead_letters(ids) == 2
    await store.refresh()
    assert store.dead_letter_count("a") == 1
    assert len(await store.dead_letters(limit=None)) == 2


# -- restarts -----------------------------------------------------------------------


async def test_reopen_releases_leases_and_loses_nothing(opener: Opener) -> None:
    """Entries, progress, dead letters and call times persist; leases do not."""
    async with opener(providers=["a", "b"]) as s:
        await s.add([(ALL, sig(ip(i), H)) for i in range(5)] + [(("a",), sig(ip(9)))])
        done = await lease(s, "a", limit=2)
        await s.ack(done)
        dead = await lease(s, "a", limit=1)
        await s.dead_letter(dead, reason="400", causes=["E0000001: bad"], at_ms=NOW)
        await lease(s, "a", limit=2)  # in flight at the "crash"
        await lease(s, "b")
        await s.record_call("app-1", NOW + 500)
    async with opener(providers=["a", "b"]) as s:
        assert s.pending_counts("a") == {H: 2, L: 1}
        assert s.pending_counts("b") == {H: 5}
        assert s.dead_letter_count("a") == 1
        assert await s.recent_calls("app-1", NOW) == [NOW + 500]
        sent = [x[0] for x in seen(await lease(s, "a"))]
        assert sent == [ip(3), ip(4), ip(9)]
        assert len((await lease(s, "b")).signals) == 5
        (letter,) = await s.dead_letters("a")
        assert tuple(letter.causes) == ("E0000001: bad",)


async def test_provider_added_later_gets_later_broadcasts(opener: Opener) -> None:
    """A broadcast is for the providers tracked when it arrives; one re-added resumes."""
    async with opener(providers=["a"]) as s:
        await s.add([(ALL, sig(ip(1)))])
        await s.attach("new")
        await s.add([(ALL, sig(ip(2)))])
        assert [x[0] for x in await drain(s, "new")] == [ip(2)]
        await s.add([(ALL, sig(ip(3)))])
    async with opener(providers=["a"]) as s:  # "new" removed from the config
        await s.add([(ALL, sig(ip(4)))])
        assert [x[0] for x in await drain(s, "a")] == [ip(1), ip(2), ip(3), ip(4)]
        assert s.pending_total() == 2  # kept for "new" until it ages out
    async with opener(providers=["a", "new"]) as s:  # and back again
        assert [x[0] for x in await drain(s, "new")] == [ip(3), ip(4)]
        assert s.pending_total() == 0


# -- broadcasts stored once; providers independent ----------------------------------


async def test_broadcast_is_stored_once_at_any_number_of_providers(opener: Opener) -> None:
    """200 IPs for 50 providers: 200 entries; every provider gets all 200; then none left."""
    providers = [f"org-{i}" for i in range(50)]
    async with opener(providers=providers, max_pending=200) as s:
        await s.add([(ALL, sig(ip(i), (H, M, L)[i % 3])) for i in range(200)])
        assert s.pending_total() == 200
        with pytest.raises(StoreFull):
            await s.add([(ALL, sig(ip(999)))])
        for p in providers:
            assert total(s.pending_counts(p)) == 200
        for n, p in enumerate(providers):
            got = await drain(s, p)
            assert sorted(x[0] for x in got) == sorted(ip(i) for i in range(200))
            assert [x[1] for x in got] == sorted((x[1] for x in got), reverse=True)
            assert s.pending_counts(p) == {}
            assert s.pending_total() == (0 if n == len(providers) - 1 else 200)
        summaries = {x.provider: x for x in await s.summaries(providers)}
        assert all(not summaries[p].pending for p in providers)


async def test_each_provider_progresses_on_its_own(store: StoreBackend) -> None:
    """One provider's leases, acks, releases and dead letters do not move another's."""
    await store.add([(ALL, sig(ip(i), H if i < 3 else L)) for i in range(6)])
    a1 = await lease(store, "a", limit=2)
    b1 = await lease(store, "b", limit=4)
    assert [s.ip for s in a1.signals] == [ip(0), ip(1)]
    assert [s.ip for s in b1.signals] == [ip(0), ip(1), ip(2), ip(3)]
    await store.ack(a1)
    await store.release(b1)
    await store.dead_letter(await lease(store, "c", limit=1), reason="400", causes=[], at_ms=NOW)
    assert [s.ip for s in (await lease(store, "a")).signals] == [ip(i) for i in range(2, 6)]
    assert [s.ip for s in (await lease(store, "b")).signals] == [ip(i) for i in range(6)]
    assert [s.ip for s in (await lease(store, "c")).signals] == [ip(i) for i in range(1, 6)]
    assert store.pending_counts("b") == {H: 3, L: 3}


async def test_acks_out_of_order_settle_only_what_was_sent(store: StoreBackend) -> None:
    """Two leases in flight, the later acked first: nothing lost, nothing sent twice."""
    await store.add([(ALL, sig(ip(i))) for i in range(6)])
    first = await lease(store, "a", limit=3)
    second = await lease(store, "a", limit=3)
    await store.ack(second)
    await store.release(first)
    assert [s.ip for s in (await lease(store, "a")).signals] == [ip(0), ip(1), ip(2)]
    assert [s.ip for s in (await lease(store, "b")).signals] == [ip(i) for i in range(6)]


# -- targeted + broadcast -----------------------------------------------------------


async def test_newer_targeted_replaces_the_broadcast_for_its_provider(
    store: StoreBackend,
) -> None:
    """A provider is sent its own newer observation once; others get the broadcast."""
    await store.add([(ALL, sig("192.0.2.1", L, ts=NOW - 10))])
    await store.add([(("a",), sig("192.0.2.1", H, ts=NOW))])
    assert await drain(store, "a") == [("192.0.2.1", H, NOW)]
    assert await drain(store, "b") == [("192.0.2.1", L, NOW - 10)]


async def test_newer_broadcast_replaces_the_targeted_entry(store: StoreBackend) -> None:
    """A newer broadcast wins over an older targeted entry: sent once, not both."""
    await store.add([(("a",), sig("192.0.2.1", H, ts=NOW - 10))])
    await store.add([(ALL, sig("192.0.2.1", M, ts=NOW))])
    assert await drain(store, "a") == [("192.0.2.1", M, NOW)]
    assert await drain(store, "b") == [("192.0.2.1", M, NOW)]
    assert store.pending_total() == 1  # still waiting for "c"
    assert await drain(store, "c") == [("192.0.2.1", M, NOW)]
    assert store.pending_total() == 0


async def test_older_broadcast_stored_during_a_targeted_send_is_not_sent(
    store: StoreBackend,
) -> None:
    """Older news arriving while the newer targeted one is in flight is settled with it."""
    await store.add([(("a",), sig("192.0.2.1", H, ts=NOW))])
    batch = await lease(store, "a")
    await store.add([(ALL, sig("192.0.2.1", L, ts=NOW - 10))])
    await store.ack(batch)
    assert await drain(store, "a") == []
    assert await drain(store, "b") == [("192.0.2.1", L, NOW - 10)]


async def test_broadcast_already_sent_outranks_an_older_targeted_one(
    store: StoreBackend,
) -> None:
    """After the newer broadcast was sent, an older targeted observation is not."""
    await store.add([(ALL, sig("192.0.2.1", M, ts=NOW))])
    await drain(store, "a")
    await store.add([(("a",), sig("192.0.2.1", H, ts=NOW - 10))])
    assert await drain(store, "a") == []


# -- ageing and capacity ------------------------------------------------------------


async def test_sweep_ages_out_what_a_failing_provider_never_sent(opener: Opener) -> None:
    """Past max age, entries go; each provider that had not sent them counts them."""
    async with opener(providers=["ok", "failing"], max_pending=100) as s:
        await s.add([(ALL, sig(ip(i), ts=NOW - 2000)) for i in range(10)])
        await s.add([(("failing",), sig(ip(50), ts=NOW - 2000))])
        await s.add([(ALL, sig(ip(99), ts=NOW))])
        await s.ack(await lease(s, "ok", limit=4))
        swept = await s.sweep(now_ms=NOW + 500, max_age_ms=2000)
        assert swept == 6 + 11
        assert s.pending_total() == 1
        assert s.pending_counts("failing") == {L: 1}
        assert [x[0] for x in await drain(s, "ok")] == [ip(99)]


async def test_full_store_of_aged_entries_takes_new_signals(opener: Opener) -> None:
    """A store full of what one provider never sent ages it out instead of refusing."""
    async with opener(providers=["failing"], max_pending=10, max_age_ms=DAY) as s:
        await s.add([(ALL, sig(ip(i), ts=NOW - DAY)) for i in range(10)])
        await s.add([(ALL, sig(ip(20), ts=NOW + 1))])
        assert s.pending_total() == 1


async def test_full_store_refuses(opener: Opener) -> None:
    """At max_pending entries, add raises StoreFull."""
    async with opener(providers=["a"], max_pending=2) as s:
        await s.add([(ALL, sig(ip(1))), (("a",), sig(ip(2)))])
        with pytest.raises(StoreFull):
            await s.add([(ALL, sig(ip(3)))])


async def test_queued_entries_count_against_capacity(opener: Opener) -> None:
    """Concurrent adds cannot overshoot max_pending by what is still queued."""
    async with opener(providers=["a"], max_pending=100) as s:
        results = await asyncio.gather(
            *(s.add([(ALL, sig(ip(i * 100 + j))) for j in range(60)]) for i in range(5)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, StoreFull) for r in results) >= 3
        assert s.pending_total() <= 120


async def test_concurrent_adds_all_commit(store: StoreBackend) -> None:
    """Many concurrent adds all commit and count correctly."""
    await asyncio.gather(
        *(store.add([(ALL, sig(ip(i * 10 + j))) for j in range(10)]) for i in range(50))
    )
    assert store.pending_total() == 500
    assert total(store.pending_counts("c")) == 500


# -- call log and reading -----------------------------------------------------------


async def test_call_log_is_keyed_by_any_string(store: StoreBackend) -> None:
    """Calls are kept per key (a provider or an app identity), oldest first, from a time."""
    key = "https://acme.okta.com|0oa1abc"
    for at in (NOW + 3, NOW + 1, NOW + 2):
        await store.record_call(key, at)
    await store.record_call("other", NOW + 2)
    assert await store.recent_calls(key, NOW + 2) == [NOW + 2, NOW + 3]
    assert await store.recent_calls(key, NOW) == [NOW + 1, NOW + 2, NOW + 3]
    assert await store.recent_calls("nobody", 0) == []


async def test_an_answered_call_counts_from_its_answer(store: StoreBackend) -> None:
    """The receiver stamps a call between its start and its answer: once answered, the
    call is counted from the answer (one call moves, never back in time)."""
    key = "https://acme.okta.com|0oa1abc"
    for at in (NOW, NOW, NOW + 10):
        await store.record_call(key, at)
    await store.call_answered(key, NOW, NOW + 700)
    assert await store.recent_calls(key, NOW) == [NOW, NOW + 10, NOW + 700]
    await store.call_answered(key, NOW + 10, NOW + 5)  # an earlier "answer" moves nothing
    await store.call_answered(key, NOW + 99, NOW + 800)  # no such call
    assert await store.recent_calls(key, NOW) == [NOW, NOW + 10, NOW + 700]


async def test_summaries_count_each_provider_exactly(store: StoreBackend) -> None:
    """The snapshot counts what each provider still has to send, by level."""
    await store.add([(ALL, sig(ip(i), H if i % 2 else L, ts=NOW - i)) for i in range(10)])
    await store.add([(("b",), sig(ip(50), M, ts=NOW - 99))])
    await store.ack(await lease(store, "a", limit=5))
    by_name = {s.provider: s for s in await store.summaries(["a", "b", "c"])}
    assert by_name["a"].pending == {L: 5}
    assert by_name["b"].pending == {H: 5, M: 1, L: 5}
    assert by_name["c"].pending == {H: 5, L: 5}
    assert by_name["b"].oldest_ms[M] == NOW - 99
