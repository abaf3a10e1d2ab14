"""Property tests of the store: any sequence of operations keeps its promises.

For any sequence of adds (broadcast and targeted), leases, acks, releases, (partial)
dead letters, time passing and restarts (close and reopen), the store

* never loses a signal ``add`` returned for: each version is leased, or superseded by a
  newer one of the same (provider, ip), or dropped by a lease because it was no longer
  sendable (too old, or inside its expiry margin);
* never leases one (provider, ip) twice at once (not twice in one lease, not while an
  earlier lease still holds that version);
* never lets an older version overwrite a newer one (a lease hands out exactly the
  version the coalescing rule says is waiting).

A small model tracks, per (provider, ip), the set of states the store may be in (a
version, or "no row"): a lease may drop any unsendable row it passes (and the sweep a
lease starts may drop any that is too old), so which of them it dropped is not
observable and both outcomes stay possible. A broadcast is a version for every
provider's key; a targeted version older than a broadcast one still stored may be
dropped for a provider that was already sent the newer one.

Each example runs on a fresh storage of the backend under test (``new_storage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarder.errors import StoreFull
from forwarder.signals import EXPIRY_MARGIN_MS, RiskLevel, Signal, sendable
from forwarder.store import Lease, StoreBackend
from tests.store_contract.conftest import Opener

START_MS = 1_800_000_000_000
MAX_AGE_MS = 100_000
PROVIDERS = ("a", "b")
IPS = tuple(f"192.0.2.{i}" for i in range(1, 7))  # few: coalescing and collisions happen
Key = tuple[str, str]

#: A version or "no row" (None).
State = Signal | None


# -- operations ---------------------------------------------------------------------

signals_st = st.builds(
    lambda ip, risk, age, exp_in, msg: (ip, RiskLevel(risk), age, exp_in, msg),
    st.sampled_from(IPS),
    st.integers(1, 3),
    st.integers(-2_000, MAX_AGE_MS + 5_000),  # how long ago it was observed
    st.none() | st.integers(-1_000, 30_000),  # expires this long after now
    st.sampled_from(["", "x", "y"]),
)
add_st = st.tuples(
    st.just("add"),
    st.lists(
        # No providers: a broadcast (one entry for every provider).
        st.tuples(st.lists(st.sampled_from(PROVIDERS), max_size=2, unique=True), signals_st),
        min_size=1,
        max_size=6,
    ),
)
lease_st = st.tuples(st.just("lease"), st.sampled_from(PROVIDERS), st.integers(1, 4))
# Adds and leases twice as likely as the rest; restarts (a file reopen each) rarer.
op_st = st.one_of(
    add_st,
    add_st,
    lease_st,
    lease_st,
    st.tuples(st.just("ack"), st.integers(0, 3)),
    st.tuples(st.just("release"), st.integers(0, 3)),
    st.tuples(st.just("dead_letter"), st.integers(0, 3)),
    st.tuples(st.just("dead_letter_some"), st.integers(0, 3), st.sets(st.sampled_from(IPS))),
    st.tuples(st.just("wait"), st.integers(0, 40_000)),
    st.tuples(st.just("restart")),
)


def beats(new: Signal, old: Signal) -> bool:
    """The coalescing rule: newer timestamp wins; on a tie, the higher risk."""
    return new.ts_ms > old.ts_ms or (new.ts_ms == old.ts_ms and new.risk > old.risk)


@dataclass
class Model:
    now_ms: int = START_MS
    received: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    #: Per (provider, ip): every state the store may be in.
    possible: dict[Key, set[State]] = field(default_factory=dict)
    #: Which outstanding lease holds which (provider, ip), and the version it holds.
    held: dict[Key, tuple[int, Signal]] = field(default_factory=dict)
    leases: list[Lease] = field(default_factory=list)
    dead: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROVIDERS, 0))
    #: Per ip: the newest broadcast version added (what a shared entry may still hold).
    broadcast: dict[str, Signal] = field(default_factory=dict)
    #: Keys whose stored broadcast version lost to a targeted one: the store may send
    #: the broadcast when that one is dropped as unsendable.
    shadowed: set[Key] = field(default_factory=set)

    def signal(self, ip: str, risk: RiskLevel, age: int, exp_in: int | None, msg: str) -> Signal:
        ts = self.now_ms - age
        exp = None if exp_in is None else max(ts + 1, self.now_ms + exp_in)
        # received_ms is unique, so two versions are never mistaken for one another.
        return Signal(ip, risk, msg, ts, exp, START_MS + next(self.received))

    def added(self, key: Key, version: Signal, *, targeted: bool = True) -> None:
        before = self.possible.get(key, {None})
        after: set[State] = set()
        shared = self.broadcast.get(key[1])
        for state in before:
            after.add(version if state is None or beats(version, state) else state)
            if state is None and shared is not None and not beats(version, shared):
                # The provider may have been sent that broadcast already, which is as
                # new as this: it is not sent again (a retried request is harmless).
                after.add(None)
            if (targeted and shared is not None) or (
                not targeted and state is not None and not beats(version, state)
            ):
                self.shadowed.add(key)
        self.possible[key] = after
        holder = self.held.get(key)
        if holder is not None and version in after and holder[1] not in after:
            # Replaced in flight: the old lease no longer owns the row.
            del self.held[key]

    def leased(self, lease: Lease, limit: int) -> None:
        for key in self.shadowed:
            states = self.possible.get(key, set())
            if (
                key[0] == lease.provider
                and key not in self.held
                and any(s is not None and not self.sendable(s) for s in states)
            ):
                self.possible[key] = states | {self.broadcast[key[1]]}
        ips = [s.ip for s in lease.signals]
        assert len(ips) == len(set(ips)), f"one ip twice in a lease: {ips}"
        assert len(ips) <= limit
        for s in lease.signals:
            key = (lease.provider, s.ip)
            assert key not in self.held, f"{key} leased while an earlier lease holds it"
            assert s in self.possible.get(key, set()), (
                f"{key}: leased {s}, but the store may only hold {self.possible.get(key)}"
            )
            assert self.sendable(s), f"{key}: leased {s} that is not sendable at {self.now_ms}"
            self.possible[key] = {s}
            self.held[key] = (lease.lease_id, s)
        # Any unsendable row this lease passed over may have been dropped, and the sweep
        # it may have started drops any row past max age, of every provider.
        for key, states in self.possible.items():
            if key in self.held:
                continue
            if (
                key[0] == lease.provider
                and any(s is not None and not self.sendable(s) for s in states)
            ) or any(s is not None and s.ts_ms < self.now_ms - MAX_AGE_MS for s in states):
                self.possible[key] = states | {None}
        self.leases.append(lease)

    def sendable(self, s: Signal) -> bool:
        return sendable(s, self.now_ms, max_age_ms=MAX_AGE_MS)

    def owned(self, lease: Lease) -> list[Key]:
        return [
            (lease.provider, s.ip)
            for s in lease.signals
            if self.held.get((lease.provider, s.ip)) == (lease.lease_id, s)
        ]

    def finish(self, lease: Lease, *, removed: set[str]) -> None:
        """``lease`` ends: the rows it still owns whose ip is in ``removed`` are gone."""
        for key in self.owned(lease):
            del self.held[key]
            if key[1] in removed:
                self.possible[key] = {None}
                self.shadowed.discard(key)
        self.leases.remove(lease)

    def restarted(self) -> None:
        self.held.clear()
        self.leases.clear()

    async def counts_fit(self, store: StoreBackend) -> None:
        exact = {s.provider: sum(s.pending.values()) for s in await store.summaries(PROVIDERS)}
        for provider in PROVIDERS:
            states = [v for k, v in self.possible.items() if k[0] == provider]
            surely = sum(None not in v for v in states)
            maybe = sum(any(s is not None for s in v) for v in states)
            # The live count may overcount (never under); the snapshot is exact.
            estimate = sum(store.pending_counts(provider).values())
            assert surely <= estimate, (provider, surely, estimate)
            assert surely <= exact[provider] <= maybe, (provider, surely, exact, maybe)
            assert store.dead_letter_count(provider) == self.dead[provider]


async def _step(model: Model, store: StoreBackend, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "add":
        items = [(providers, model.signal(*spec)) for providers, spec in op[1]]
        try:
            await store.add(items)
        except StoreFull:  # pragma: no cover - max_pending is far above what is generated
            return
        for providers, version in items:
            for provider in providers or PROVIDERS:
                model.added((provider, version.ip), version, targeted=bool(providers))
            shared = model.broadcast.get(version.ip)
            if not providers and (shared is None or beats(version, shared)):
                model.broadcast[version.ip] = version
    elif kind == "lease":
        _, provider, limit = op
        lease = await store.lease(
            provider,
            limit=limit,
            now_ms=model.now_ms,
            max_age_ms=MAX_AGE_MS,
            expiry_margin_ms=EXPIRY_MARGIN_MS,
        )
        model.leased(lease, limit)
    elif kind == "wait":
        model.now_ms += op[1]
    elif model.leases:
        lease = model.leases[op[1] % len(model.leases)]
        owned = model.owned(lease)
        ips = {s.ip for s in lease.signals}
        if kind == "ack":
            assert await store.ack(lease) == len(owned)
            model.finish(lease, removed=ips)
        elif kind == "release":
            await store.release(lease)
            model.finish(lease, removed=set())
        elif kind == "dead_letter":
            await store.dead_letter(lease, reason="400", causes=["whole"], at_ms=1000)
            model.dead[lease.provider] += len(lease.signals)
            model.finish(lease, removed=ips)
        else:
            rejected = {ip: [f"{ip}: bad"] for ip in op[2]}
            moved = await store.dead_letter_some(lease, rejected, reason="400", at_ms=1000)
            assert moved == len(ips & op[2])
            model.dead[lease.provider] += moved
            model.finish(lease, removed=ips & op[2])


async def _drain(model: Model, store: StoreBackend) -> None:
    """Release what is out, then lease and ack until nothing is left: nothing is missing."""
    for lease in list(model.leases):
        await store.release(lease)
        model.finish(lease, removed=set())
    for provider in PROVIDERS:
        while True:
            lease = await store.lease(
                provider,
                limit=3,
                now_ms=model.now_ms,
                max_age_ms=MAX_AGE_MS,
                expiry_margin_ms=EXPIRY_MARGIN_MS,
            )
            model.leased(lease, 3)
            if not lease.signals and not lease.expired:
                break
            assert await store.ack(lease) == len(model.owned(lease))
            model.finish(lease, removed={s.ip for s in lease.signals})
    assert store.pending_total() == 0
    lost = {k: v for k, v in model.possible.items() if None not in v}
    assert not lost, f"accepted, never leased, and not superseded or expired: {lost}"


async def _run(opener: Opener, ops: list[tuple[Any, ...]]) -> None:
    model = Model()
    stack = contextlib.AsyncExitStack()

    def open_store() -> StoreBackend:
        return opener(max_pending=10_000, providers=PROVIDERS)

    async with stack:
        store = await stack.enter_async_context(open_store())
        for op in ops:
            if op[0] == "restart":
                await stack.aclose()
                store = await stack.enter_async_context(open_store())
                model.restarted()
            else:
                await _step(model, store, op)
            await model.counts_fit(store)
        await _drain(model, store)


# PostgreSQL takes a round trip per step: ~15 s alone, several times that on a busy host.
@pytest.mark.timeout(300)
@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(op_st, max_size=30))
def test_store_keeps_its_promises_for_any_sequence(
    new_storage: Callable[[], Opener], ops: list[tuple[Any, ...]]
) -> None:
    """Any adds, leases, acks, releases, dead letters, waits and restarts: nothing lost,
    nothing leased twice at once, no older version over a newer one."""
    asyncio.run(_run(new_storage(), ops))
