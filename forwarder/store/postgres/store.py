"""The PostgreSQL store: :class:`forwarder.store.base.StoreBackend` for several replicas.

Every replica opens one ``PostgresStore`` on the same database. Ingest writes go
through a group commit (:mod:`~forwarder.store.postgres.writer`): ``add`` returns only
after the transaction committed, so a 202 is durable on the server. A provider is
leased, acked and dead-lettered by the replica that owns it (the coordinator's lease);
:meth:`adopt` loads its progress from the database when it arrives and fences its
cursor writes with the owner's epoch. Other replicas' commits wake this one's
dispatchers through ``LISTEN forwarder_changed``.

Counts a scrape reads synchronously (``pending_total``, ``pending_counts``) are cached:
the total after every commit of this replica (read in the same transaction, so it
includes every replica's), and each provider's backlog in
:mod:`~forwarder.store.postgres.backlogs`, counted exactly from the tables whenever it is
small (:data:`EXACT_UP_TO`) or a lease comes back short.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from forwarder.errors import StoreError, StoreFull
from forwarder.signals import RiskLevel, Signal
from forwarder.store.base import Lease, ProviderRecord, StoreObserver
from forwarder.store.groupcommit import GroupCommit
from forwarder.store.postgres import ageing, counting, queue
from forwarder.store.postgres.backlogs import Backlogs
from forwarder.store.postgres.conn import Conn
from forwarder.store.postgres.connect import (
    DB_ERRORS,
    alive,
    connect_error,
    discard,
    keep_session,
)
from forwarder.store.postgres.dsn import describe_dsn
from forwarder.store.postgres.queue import ProviderQueue
from forwarder.store.postgres.reader import TableReader, by_level
from forwarder.store.postgres.schema import migrate, require_current
from forwarder.store.postgres.writer import CHANGED_CHANNEL, Row, Upserted, group_commit

__all__ = ["PostgresStore"]

_SWEEP_EVERY_MS = 60_000
#: Seconds between attempts to LISTEN again after the server ended that session.
RELISTEN_S = 1.0
_CALL_LOG_KEEP_MS = 3_600_000
#: Backlogs estimated at or below this many entries are recounted exactly after a lease,
#: an ack or a refresh (the count then reads at most about as many rows).
EXACT_UP_TO = 2_000


def _levels(lease: Lease, only: Collection[str] | None = None) -> dict[int, int]:
    """How many of the lease's signals (all, or those whose ip is in ``only``) per level."""
    out: dict[int, int] = defaultdict(int)
    for s in lease.signals:
        if only is None or s.ip in only:
            out[int(s.risk)] += 1
    return out


class PostgresStore(TableReader):
    """PostgreSQL-backed store; an async context manager. The DSN is never shown."""

    def __init__(
        self,
        dsn: str,
        *,
        max_pending: int = 1_000_000,
        providers: Sequence[str] = (),
        max_age_ms: int | None = None,
        observer: StoreObserver | None = None,
        pool_size: int = 10,
        migrate_at_start: bool = True,
        application_name: str = "forwarder",
    ) -> None:
        self.max_pending = max_pending
        self.where = describe_dsn(dsn)
        self._dsn = dsn
        self._pool_size = pool_size
        self._migrate = migrate_at_start
        self._application_name = application_name
        self._providers = list(providers)
        self._max_age_ms = max_age_ms
        self._observer = observer
        self._pool: asyncpg.Pool | None = None
        #: Ingest's own connection: deliveries holding the main pool cannot starve it.
        self._write_pool: asyncpg.Pool | None = None
        self._listener: PoolConnectionProxy[asyncpg.Record] | None = None
        self._relistening: asyncio.Task[None] | None = None
        self._log = structlog.get_logger("forwarder.store")
        self._writer: GroupCommit[Row, Upserted] | None = None
        self._queues: dict[str, ProviderQueue] = {}
        self._backlogs = Backlogs()
        self._dead: dict[str, int] = defaultdict(int)
        self._entries = 0
        self._lease_ids = itertools.count(1)
        self._next_sweep_ms = 0
        self._closing = False
        self._write_ok = True
        #: Names this store's commits in NOTIFY payloads (its own are counted already).
        self.origin = f"{id(self):x}-{secrets.token_hex(4)}"

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                timeout=10,
                command_timeout=60,
                server_settings={"application_name": self._application_name},
                reset=keep_session,
            )
        except DB_ERRORS as exc:
            raise connect_error(self._dsn, exc) from None
        try:
            async with self._pool.acquire() as conn:
                if self._migrate:
                    await migrate(conn)
                else:
                    await require_current(conn)
            await self._listen()
            self._write_pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=1,  # one group commit is in flight at a time
                timeout=10,
                command_timeout=60,
                server_settings={"application_name": self._application_name},
                reset=keep_session,
            )
            self._writer = group_commit(
                self._write_pool.acquire, on_commit=self._after_commit, origin=self.origin
            )
            self._writer.start()
            for provider in self._providers:
                await self.attach(provider)
            await self.refresh()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        await self._close()

    async def _listen(self) -> None:
        """LISTEN for other replicas' commits on a connection of its own."""
        assert self._pool is not None
        conn = await self._pool.acquire()
        try:
            await conn.add_listener(CHANGED_CHANNEL, self._heard)
            conn.add_termination_listener(self._listener_lost)
        except BaseException:
            await discard(self._pool, conn)
            raise
        self._listener = conn

    def _listener_lost(self, *_: object) -> None:
        """The server ended the LISTEN session (restart, failover, terminate): listen again.

        Without it this replica would never again hear another replica's commits, and an
        idle dispatcher here would sleep through them.
        """
        self._listener = None
        if self._closing or self._pool is None:
            return
        if self._relistening is None or self._relistening.done():
            self._relistening = asyncio.ensure_future(self._relisten())

    async def _relisten(self) -> None:
        while not self._closing and self._pool is not None:
            try:
                await self._listen()
            except DB_ERRORS as exc:
                self._log.warning("store_listen_failed", error=str(exc))
                await asyncio.sleep(RELISTEN_S)
                continue
            # Commits announced while deaf were missed: every tracked provider takes a look.
            self._heard(None, None, None, '{"all": true}')
            return

    async def _close(self) -> None:
        if self._relistening is not None:
            self._relistening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relistening
            self._relistening = None
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        if self._write_pool is not None:
            await self._write_pool.close()
            self._write_pool = None
        if self._listener is not None and self._pool is not None:
            with contextlib.suppress(*DB_ERRORS):
                self._listener.remove_termination_listener(self._listener_lost)
            try:
                if not alive(self._listener):
                    raise StoreError("the LISTEN connection is gone")
                await self._listener.remove_listener(CHANGED_CHANNEL, self._heard)
                await self._pool.release(self._listener)
            except Exception:
                await discard(self._pool, self._listener)
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @contextlib.asynccontextmanager
    async def _tx(self) -> Any:
        if self._pool is None:
            raise StoreError(f"store {self.where} is not open")
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                yield conn
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL at {self.where}: {exc}") from exc

    @property
    def writable(self) -> bool:
        """The pool is open and the last write committed."""
        ok = self._writer.ok if self._writer is not None else False
        return self._pool is not None and not self._closing and ok and self._write_ok

    async def probe_writable(self) -> bool:
        """Try a tiny write now; True (and ``writable`` again) when it commits."""
        if self._pool is None or self._closing:
            return False
        try:
            async with self._tx() as conn:
                await conn.execute(
                    "INSERT INTO write_probe (id, n) VALUES (1, 1)"
                    " ON CONFLICT (id) DO UPDATE SET n = write_probe.n + 1"
                )
        except StoreError:
            self._write_ok = False
            return False
        self._write_ok = True
        if self._writer is not None:
            self._writer.ok = True
        return True

    # -- providers -------------------------------------------------------------------

    async def attach(self, provider: str) -> None:
        """Track ``provider``: broadcasts stored from now on are kept until it settles them."""
        if provider in self._queues:
            return
        await self.adopt(provider)

    async def adopt(self, provider: str, fence: tuple[str, int] | None = None) -> None:
        """(Re)load ``provider``'s progress from the database, e.g. when this replica takes
        it over; its cursor writes are then fenced with ``fence`` (replica id, epoch)."""
        # Counted from now on: commits landing while the count runs are added to it.
        self._backlogs.track(provider)
        async with self._tx() as conn:
            q = await queue.attach(conn, provider, fence=fence)
            await self._recount(conn, provider, q)
        self._queues[provider] = q

    def _queue(self, provider: str) -> ProviderQueue:
        q = self._queues.get(provider)
        if q is None:
            raise StoreError(f"provider {provider!r} is not attached to this store")
        return q

    # -- counts ----------------------------------------------------------------------

    def pending_total(self) -> int:
        """Stored entries of every replica, as of this replica's last commit."""
        return self._entries

    def pending_counts(self, provider: str) -> Mapping[RiskLevel, int]:
        return by_level(self._backlogs.counts(provider))

    def dead_letter_count(self, provider: str) -> int:
        return self._dead.get(provider, 0)

    def changed(self, provider: str) -> asyncio.Event:
        return self._backlogs.events[provider]

    def wake_when(self, provider: str, *, pending: int = 1, high: bool = True) -> None:
        """Set ``changed(provider)`` once commits (this replica's or announced by others)
        bring its backlog estimate to ``pending`` or, with ``high``, bring a HIGH entry
        (:class:`~forwarder.store.wakeups.Wakeups`)."""
        self._backlogs.wake_when(provider, pending=pending, high=high)

    def forget(self, provider: str, fence: tuple[str, int]) -> None:
        """This replica stopped dispatching ``provider`` under ``fence`` (the lease went
        to another, or was released): drop that progress, which the new owner moves
        (:meth:`adopt` loads it again). A newer adoption (another epoch) is kept."""
        q = self._queues.get(provider)
        if q is not None and q.fence == fence:
            del self._queues[provider]
            self._backlogs.drop(provider)

    def _heard(self, *args: object) -> None:
        """Another replica committed: raise the backlog estimates and wake dispatchers."""
        try:
            change = json.loads(str(args[3]))
        except (IndexError, ValueError):
            change = {"all": True}
        if change.get("o") == self.origin:
            return
        backlogs = self._backlogs
        backlogs.broadcast({int(level): int(n) for level, n in change.get("b", {}).items()})
        backlogs.targeted(
            {
                (provider, int(level)): int(n)
                for provider, levels in change.get("t", {}).items()
                for level, n in levels.items()
            }
        )
        named = [*change.get("n", ()), *(self._queues if change.get("all") else ())]
        backlogs.some_for(named)
        self._targeted_stored([*change.get("t", {}), *named])

    def _targeted_stored(self, providers: Iterable[str]) -> None:
        for provider in providers:
            q = self._queues.get(provider)
            if q is not None:
                queue.targeted_stored(q)

    async def _recount(self, conn: Conn, provider: str, q: ProviderQueue) -> None:
        """Set ``provider``'s backlog from the tables, without losing commits meanwhile.

        Commits counted while the query ran (ours or another replica's) may or may not be
        in its snapshot: they are added to the result (an overcount until the next
        recount, never an undercount, which could leave a dispatcher asleep).
        """
        before = self._backlogs.snapshot(provider)
        self._backlogs.counted(provider, await counting.pending_counts(conn, q), before)

    async def _settled(
        self,
        conn: Conn,
        provider: str,
        q: ProviderQueue,
        levels: Mapping[int, int],
        *,
        short: bool = False,
    ) -> None:
        """Lower the estimate by what left the backlog; count exactly when that is cheap
        (a small backlog) or needed (a short lease: the estimate was too high)."""
        self._backlogs.lower(provider, levels)
        if short or self._backlogs.estimate(provider) <= EXACT_UP_TO:
            await self._recount(conn, provider, q)

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool (the replica coordinator shares it)."""
        if self._pool is None:
            raise StoreError(f"store {self.where} is not open")
        return self._pool

    async def refresh(self) -> None:
        """Recount every tracked provider's backlog, the total and the dead letters."""
        async with self._tx() as conn:
            # Another replica may have dispatched an idle one meanwhile: reload its progress
            # (in place: a lease being prepared may hold this object).
            moved = await queue.reload_many(
                conn, [q for q in self._queues.values() if not q.leases]
            )
            for q in moved:
                await self._recount(conn, q.provider, q)
            for provider, q in self._queues.items():
                if q not in moved and self._backlogs.estimate(provider) <= EXACT_UP_TO:
                    await self._recount(conn, provider, q)
            self._entries = await self._read_entries(conn)
            self._dead = defaultdict(
                int,
                {
                    r["provider"]: r["n"]
                    for r in await conn.fetch(
                        "SELECT provider, count(*) AS n FROM dead_letters GROUP BY provider"
                    )
                },
            )

    async def refresh_dead_letter_counts(self) -> None:
        await self.refresh()

    @staticmethod
    async def _read_entries(conn: Conn) -> int:
        return int(
            await conn.fetchval(
                "SELECT sum(CASE name WHEN 'inserted' THEN value ELSE -value END)"
                " FROM counters WHERE name IN ('inserted', 'deleted')"
            )
        )

    # -- ingest ----------------------------------------------------------------------

    async def add(self, items: Sequence[tuple[Sequence[str], Signal]]) -> None:
        """Commit signals (no targets = one broadcast entry); ``StoreFull`` at capacity."""
        if self._closing or self._writer is None:
            raise StoreError("store is closing")
        waiting = self._entries + self._writer.queued_rows
        if waiting >= self.max_pending and self._max_age_ms is not None and items:
            now_ms = max(s.received_ms for _, s in items)
            await self.sweep(now_ms=now_ms, max_age_ms=self._max_age_ms)
            async with self._tx() as conn:
                self._entries = await self._read_entries(conn)
            waiting = self._entries + self._writer.queued_rows
        if waiting >= self.max_pending:
            raise StoreFull(f"{waiting} signals are waiting (max_pending={self.max_pending})")
        rows: list[Row] = []
        for providers, s in items:
            if not providers:
                rows.append((s.ip, int(s.risk), s.message, s.ts_ms, s.expires_ms, s.received_ms))
            else:
                rows.extend(
                    (p, s.ip, int(s.risk), s.message, s.ts_ms, s.expires_ms, s.received_ms)
                    for p in providers
                )
        if rows:
            await self._writer.add(rows)

    def _after_commit(self, rows: list[Row], result: Upserted) -> None:
        self._entries = result.entries
        per_provider: dict[str, int] = defaultdict(int)
        new_provider: dict[str, int] = defaultdict(int)
        for (provider, _), (new, stored) in result.targeted.items():
            per_provider[provider] += stored
            new_provider[provider] += new
        self._targeted_stored(per_provider)
        if self._observer is not None:
            if result.broadcast and result.broadcast_new < result.broadcast_stored:
                for provider in self._queues:
                    self._observer.signals_stored(
                        provider, result.broadcast_stored, result.broadcast_new
                    )
            for provider, signals in per_provider.items():
                self._observer.signals_stored(provider, signals, new_provider[provider])
        self._backlogs.broadcast({level: stored for level, (_, stored) in result.broadcast.items()})
        self._backlogs.targeted({key: new for key, (new, _) in result.targeted.items()})

    # -- dispatch --------------------------------------------------------------------

    async def lease(
        self,
        provider: str,
        *,
        limit: int,
        now_ms: int,
        max_age_ms: int,
        expiry_margin_ms: int = 5_000,
    ) -> Lease:
        """Lease ``provider``'s next batch, dropping (and counting) expired entries."""
        q = self._queue(provider)
        lease_id = next(self._lease_ids)
        swept: dict[str, int] = {}
        if now_ms >= self._next_sweep_ms:
            self._next_sweep_ms = now_ms + _SWEEP_EVERY_MS
            swept = await self._sweep(now_ms, self._max_age_ms or max_age_ms)
        async with self._tx() as conn:
            signals, expired_at = await queue.lease(
                conn,
                q,
                lease_id,
                limit=limit,
                now_ms=now_ms,
                max_age_ms=max_age_ms,
                margin_ms=expiry_margin_ms,
            )
            # A short lease took everything there was: the exact count is cheap then.
            await self._settled(conn, provider, q, expired_at, short=len(signals) < limit)
            if expired_at:
                self._entries = await self._read_entries(conn)
        expired = sum(expired_at.values()) + swept.pop(provider, 0)
        if self._observer is not None:
            for other, n in swept.items():
                self._observer.signals_expired(other, n)
            if expired:
                self._observer.signals_expired(provider, expired)
        return Lease(provider=provider, lease_id=lease_id, signals=signals, expired=expired)

    async def ack(self, lease: Lease) -> int:
        """Okta accepted the batch: settle the versions sent; return how many were current."""
        return await self._settle(lease, None)

    async def _settle(self, lease: Lease, only: Collection[str] | None) -> int:
        q = self._queue(lease.provider)
        async with self._tx() as conn:
            removed = await queue.settle(conn, q, lease.lease_id, only=only)
            await self._settled(conn, lease.provider, q, _levels(lease, only))
            self._entries = await self._read_entries(conn)
        return removed

    async def release(self, lease: Lease) -> None:
        """Keep the batch for a later attempt."""
        queue.release(self._queue(lease.provider), lease.lease_id)

    async def dead_letter(
        self, lease: Lease, *, reason: str, causes: Sequence[str], at_ms: int
    ) -> int:
        """Okta rejected the whole batch: move it to the dead-letter table."""
        return await self._dead_letter(
            lease, {s.ip: list(causes) for s in lease.signals}, reason, at_ms
        )

    async def dead_letter_some(
        self, lease: Lease, rejected: Mapping[str, Sequence[str]], *, reason: str, at_ms: int
    ) -> int:
        """Dead-letter the named ips of ``lease`` (each with its causes); release the rest."""
        return await self._dead_letter(
            lease, {ip: list(c) for ip, c in rejected.items()}, reason, at_ms
        )

    async def _dead_letter(
        self, lease: Lease, causes: Mapping[str, list[str]], reason: str, at_ms: int
    ) -> int:
        q = self._queue(lease.provider)
        sent = [s for s in lease.signals if s.ip in causes]
        async with self._tx() as conn:
            if sent:
                await conn.execute(
                    "INSERT INTO dead_letters (provider, ip, risk, message, ts_ms, expires_ms,"
                    " received_ms, failed_ms, reason, causes)"
                    " SELECT $1, u.ip, u.risk, u.message, u.ts_ms, u.expires_ms, u.received_ms,"
                    " $2, $3, u.causes::jsonb"
                    " FROM unnest($4::text[], $5::smallint[], $6::text[], $7::bigint[],"
                    " $8::bigint[], $9::bigint[], $10::text[])"
                    " AS u(ip, risk, message, ts_ms, expires_ms, received_ms, causes)",
                    lease.provider,
                    at_ms,
                    reason,
                    [s.ip for s in sent],
                    [int(s.risk) for s in sent],
                    [s.message for s in sent],
                    [s.ts_ms for s in sent],
                    [s.expires_ms for s in sent],
                    [s.received_ms for s in sent],
                    [json.dumps(causes[s.ip]) for s in sent],
                )
            chosen = {s.ip for s in sent}
            await queue.settle(conn, q, lease.lease_id, only=chosen)
            await self._settled(conn, lease.provider, q, _levels(lease, chosen))
            self._entries = await self._read_entries(conn)
        self._dead[lease.provider] += len(sent)
        return len(sent)

    async def sweep(self, *, now_ms: int, max_age_ms: int) -> int:
        """Delete entries older than ``max_age_ms``; count them per provider; return how many."""
        expired = await self._sweep(now_ms, max_age_ms)
        if self._observer is not None:
            for provider, n in expired.items():
                self._observer.signals_expired(provider, n)
        return sum(expired.values())

    async def _sweep(self, now_ms: int, max_age_ms: int) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        busy = {p: list(q.inflight) for p, q in self._queues.items() if q.inflight}
        more = True
        while more:
            async with self._tx() as conn:
                expired, more = await ageing.sweep(conn, cutoff_ms=now_ms - max_age_ms, busy=busy)
                await queue.collect(conn)
                for q in self._queues.values():
                    if q.done and (q.fence is None or q.leases):
                        await queue.advance(conn, q)
            for provider, levels in expired.items():
                total[provider] += sum(levels.values())
                self._backlogs.lower(provider, levels)
        for q in self._queues.values():
            if q.done:
                # A cursor held back by an entry just swept can move on now.
                with contextlib.suppress(queue.Fenced):
                    async with self._tx() as conn:
                        await queue.advance(conn, q)
        if total:
            await self.refresh()
        return dict(total)

    async def oldest_pending_ms(self, provider: str) -> Mapping[RiskLevel, int]:
        q = self._queues.get(provider)
        if q is None:
            return {}
        async with self._tx() as conn:
            levels = await counting.oldest_pending(conn, q)
        return {RiskLevel(r): t for r, t in levels.items()}

    async def oldest_pending_many(
        self, providers: Sequence[str]
    ) -> dict[str, Mapping[RiskLevel, int]]:
        """:meth:`oldest_pending_ms` of several providers in one transaction."""
        out: dict[str, Mapping[RiskLevel, int]] = {}
        async with self._tx() as conn:
            for provider in providers:
                q = self._queues.get(provider)
                if q is None:
                    out[provider] = {}
                    continue
                levels = await counting.oldest_pending(conn, q)
                out[provider] = {RiskLevel(r): t for r, t in levels.items()}
        return out

    # -- call log and provider state -------------------------------------------------

    async def record_call(self, key: str, at_ms: int) -> None:
        async with self._tx() as conn:
            await conn.execute("INSERT INTO calls (key, at_ms) VALUES ($1, $2)", key, at_ms)
            await conn.execute(
                "DELETE FROM calls WHERE key = $1 AND at_ms < $2", key, at_ms - _CALL_LOG_KEEP_MS
            )

    async def call_answered(self, key: str, at_ms: int, answered_ms: int) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE calls SET at_ms = $3 WHERE ctid ="
                " (SELECT ctid FROM calls WHERE key = $1 AND at_ms = $2 LIMIT 1) AND at_ms < $3",
                key,
                at_ms,
                answered_ms,
            )

    async def recent_calls(self, key: str, since_ms: int) -> list[int]:
        async with self._tx() as conn:
            rows = await conn.fetch(
                "SELECT at_ms FROM calls WHERE key = $1 AND at_ms >= $2 ORDER BY at_ms",
                key,
                since_ms,
            )
        return [int(r["at_ms"]) for r in rows]

    async def record_provider_state(self, record: ProviderRecord) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO provider_state (provider, status, updated_ms, last_call_ms,"
                " last_outcome, last_error, hint, until_ms) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)"
                " ON CONFLICT (provider) DO UPDATE SET status = excluded.status,"
                " updated_ms = excluded.updated_ms, last_call_ms = excluded.last_call_ms,"
                " last_outcome = excluded.last_outcome, last_error = excluded.last_error,"
                " hint = excluded.hint, until_ms = excluded.until_ms",
                *record.row(),
            )

    # -- reading (StoreReader: summaries, dead_letters from TableReader) -----------------

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[Conn]:
        if self._pool is None:
            raise StoreError(f"store {self.where} is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL at {self.where}: {exc}") from exc

    async def delete_dead_letters(self, ids: Collection[int]) -> int:
        removed = await super().delete_dead_letters(ids)
        await self.refresh()
        return removed
