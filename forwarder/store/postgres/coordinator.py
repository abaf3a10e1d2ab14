"""One replica's share of the providers: heartbeat, renew, rebalance, hand over.

Every ``ttl_s / 3`` (and at once when another replica joins, leaves or releases
something: ``LISTEN forwarder_owners``) the coordinator, in one pooled connection:

1. heartbeats, learning the live replicas;
2. renews the leases it holds (those that lapsed are lost: someone may own them now);
3. sheds what exceeds its even share, or claims free providers up to it
   (:mod:`forwarder.store.postgres.balance`); a provider left free for a whole TTL
   (known to no replica below its target) is claimed by anyone.

``epoch(provider)`` answers whether this replica may work for a provider now: it holds
the lease, and by its own monotonic clock the lease cannot have lapsed yet (if the
database is unreachable, renewals fail and the providers are given up locally before
anyone else can claim them). The database has the last word anyway: the budget slot
is reserved under the epoch (:func:`forwarder.store.postgres.owners.reserve_call`).

``stop`` releases everything and deletes the heartbeat, so a rolling upgrade hands
over in about a second, not a TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from forwarder.clock import Clock
from forwarder.store.postgres import owners
from forwarder.store.postgres.balance import plan
from forwarder.store.postgres.connect import DB_ERRORS, alive, discard
from forwarder.store.postgres.owners import Replica

__all__ = ["Coordinator", "ObserverGroup", "OwnershipObserver"]


class OwnershipObserver(Protocol):
    """Told when this replica starts or stops owning a provider (dispatchers, metrics)."""

    def acquired(self, provider: str, epoch: int) -> None: ...

    def lost(self, provider: str, reason: str) -> None:
        """``reason``: shed (rebalanced), lapsed (not renewed in time), released (stop),
        reconfigured (removed or changed by a config reload)."""
        ...


class ObserverGroup:
    """Several observers told the same thing, in order (dispatch tasks, metrics)."""

    def __init__(self, *observers: OwnershipObserver) -> None:
        self._observers = observers

    def acquired(self, provider: str, epoch: int) -> None:
        for o in self._observers:
            o.acquired(provider, epoch)

    def lost(self, provider: str, reason: str) -> None:
        for o in self._observers:
            o.lost(provider, reason)


@dataclass(slots=True)
class _Held:
    epoch: int
    deadline: float  # monotonic: the lease cannot outlive this by the database's clock


class Coordinator:
    """Keeps this replica's provider leases renewed and evenly spread across replicas."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        replica: Replica,
        providers: Sequence[str],
        ttl_s: float,
        clock: Clock,
        observer: OwnershipObserver | None = None,
        on_config: Callable[[str], None] | None = None,
    ) -> None:
        self.replica = replica
        self.ttl_s = ttl_s
        self.tick_s = ttl_s / 3
        self._pool = pool
        self._providers = list(providers)
        self._clock = clock
        self._observer: OwnershipObserver = observer or ObserverGroup()
        self._held: dict[str, _Held] = {}
        self._wake = asyncio.Event()
        self._known: set[str] = set()
        #: Held providers whose settings changed in a reload: released, then claimable.
        self._reconfigured: set[str] = set()
        self._on_config = on_config
        self.live: list[str] = []
        self._listener: tuple[asyncpg.Pool, PoolConnectionProxy[asyncpg.Record]] | None = None
        self._log = structlog.get_logger("forwarder.coordinator").bind(replica=replica.id)

    # -- what dispatchers ask ----------------------------------------------------------

    def epoch(self, provider: str) -> int | None:
        """The epoch under which this replica may dispatch ``provider`` now, else None."""
        held = self._held.get(provider)
        if held is None or self._clock.monotonic() >= held.deadline:
            return None
        return held.epoch

    def owned(self) -> dict[str, int]:
        """Provider -> epoch of every lease held now."""
        return {p: e for p in self._held if (e := self.epoch(p)) is not None}

    def set_providers(self, providers: Sequence[str], *, changed: Collection[str] = ()) -> None:
        """A reload changed the configured providers; rebalance at once.

        Held providers no longer configured, and held ones whose settings ``changed``,
        are given up at the next tick (their dispatchers stop after the call in flight)
        and released; a changed one is then claimable again, by this replica or another,
        under a new epoch, and its dispatcher is rebuilt from the new settings with its
        budget history from the shared call log (keyed by app).
        """
        self._providers = list(providers)
        self._reconfigured.update(changed)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Coordinate until ``stop`` is set, then release everything and leave."""
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self._ensure_listening()
                    await self.tick()
                except DB_ERRORS as exc:
                    self._log.warning("coordination_failed", error=str(exc))
                    self._drop_lapsed()
                except Exception as exc:
                    # A surprise (a driver bug, a broken pool) must not end coordination:
                    # the leases would lapse while dispatch went on.
                    self._log.exception("coordination_failed", error=str(exc))
                    self._drop_lapsed()
                await self._pause(stop)
        finally:
            await asyncio.shield(self._stop_listening())
            await asyncio.shield(self.leave())

    async def _pause(self, stop: asyncio.Event) -> None:
        waits = [
            asyncio.ensure_future(self._clock.sleep(self.tick_s)),
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(stop.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _heard(self, *_: object) -> None:
        self.wake()

    def _heard_config(self, *args: object) -> None:
        if self._on_config is not None:
            self._on_config(str(args[3]) if len(args) > 3 else "")

    async def _ensure_listening(self) -> None:
        """LISTEN on a connection of its own; again on a new one if the server dropped it.

        Without it coordination still works by polling; hand-overs then take up to a tick.
        """
        if self._listener is not None and alive(self._listener[1]):
            return
        again = self._listener is not None
        await self._stop_listening()
        pool = self._pool
        conn = await pool.acquire()
        try:
            await conn.add_listener(owners.OWNERS_CHANNEL, self._heard)
            await conn.add_listener(owners.CONFIG_CHANNEL, self._heard_config)
        except BaseException:
            await discard(pool, conn)
            raise
        self._listener = (pool, conn)
        if again and self._on_config is not None:
            # A config announced while we were not listening would be missed: look now.
            self._on_config("")

    async def _stop_listening(self) -> None:
        if self._listener is None:
            return
        pool, conn = self._listener
        self._listener = None
        if not alive(conn):
            await discard(pool, conn)
            return
        try:
            await conn.remove_listener(owners.OWNERS_CHANNEL, self._heard)
            await conn.remove_listener(owners.CONFIG_CHANNEL, self._heard_config)
        except Exception:
            await discard(pool, conn)
            return
        with contextlib.suppress(Exception):
            await pool.release(conn)

    async def tick(self) -> None:
        """One round: heartbeat, renew, shed or claim."""
        async with self._pool.acquire() as conn:
            configured = [p for p in self._providers if p not in self._known]
            if configured:
                await owners.ensure_providers(conn, configured)
                self._known.update(configured)
            self.live = await owners.heartbeat(conn, self.replica, ttl_s=self.ttl_s)
            started = self._clock.monotonic()
            if self._held:
                renewed = await owners.renew(
                    conn,
                    self.replica.id,
                    {p: h.epoch for p, h in self._held.items()},
                    ttl_s=self.ttl_s,
                )
                kept = {lease.provider for lease in renewed}
                for provider in sorted(set(self._held) - kept):
                    self._lose(provider, "lapsed")
                for provider in kept:
                    self._held[provider].deadline = started + self.ttl_s
            configured_now = set(self._providers)
            gone = sorted(
                p for p in self._held if p not in configured_now or p in self._reconfigured
            )
            self._reconfigured.clear()
            if gone:
                for provider in gone:
                    self._lose(provider, "reconfigured")
                await owners.release(conn, self.replica.id, gone)
            step = plan(self.replica.id, self.live, self._providers, self._held)
            if step.release:
                for provider in step.release:
                    self._lose(provider, "shed")
                await owners.release(conn, self.replica.id, step.release)
            free = [p for p in self._providers if p not in self._held]
            taken = await owners.claim(
                conn, self.replica.id, free, limit=step.claim, ttl_s=self.ttl_s
            )
            if len(taken) == step.claim:
                # Starvation guard: providers nobody below target knows (config skew).
                rest = [p for p in free if p not in {t.provider for t in taken}]
                taken += await owners.claim(
                    conn,
                    self.replica.id,
                    rest,
                    limit=len(rest),
                    ttl_s=self.ttl_s,
                    free_for_s=self.ttl_s,
                )
            for lease in taken:
                self._held[lease.provider] = _Held(lease.epoch, started + self.ttl_s)
                self._log.info("provider_acquired", provider=lease.provider, epoch=lease.epoch)
                self._observer.acquired(lease.provider, lease.epoch)

    def _lose(self, provider: str, reason: str) -> None:
        held = self._held.pop(provider, None)
        if held is not None:
            self._log.info("provider_released", provider=provider, epoch=held.epoch, reason=reason)
            self._observer.lost(provider, reason)

    def _drop_lapsed(self) -> None:
        now = self._clock.monotonic()
        for provider in sorted(p for p, h in self._held.items() if h.deadline <= now):
            self._lose(provider, "lapsed")

    async def leave(self) -> None:
        """Release every lease and the heartbeat (SIGTERM, end of ``run``)."""
        for provider in sorted(self._held):
            self._lose(provider, "released")
        try:
            async with self._pool.acquire() as conn:
                await owners.leave(conn, self.replica.id)
        except DB_ERRORS as exc:
            # The leases lapse after ttl_s instead.
            self._log.warning("leave_failed", error=str(exc))
