"""The embedded store: one SQLite file in WAL mode, broadcast signals stored once.

Design
======

**Entries.** A broadcast signal (no ``provider``) is one row of ``signals``, keyed by
ip, whatever the number of providers. A targeted signal is one row of ``targeted``,
keyed by (provider, ip). Both coalesce on write by Okta's rule (the newest observation
wins; on a tie the higher risk), and the winner takes a new *sequence number* from one
counter shared by both tables. A sequence number names one version of one entry.

**Each provider's progress** through the shared broadcast rows is a *cursor* per risk
level (table ``cursors``): every live broadcast entry of that level whose sequence number
is at or below the cursor is settled for that provider (sent and acknowledged,
dead-lettered, aged out, or superseded by the provider's own newer targeted entry). An
entry settled out of order, above the cursor (a later lease acknowledged first, a
partial dead letter), is one ``done`` row (provider, level, seq) until the cursor passes
it; in steady state there are none. A new version always gets a number above every
cursor, so it is pending again for every provider, and acknowledging the version that
was in flight (by its old number) cannot settle the newer one.

**Order.** A provider is sent HIGH, then MEDIUM, then LOW; within a level, first stored
first (sequence order; within one commit by observation time). Stored order stands in
for "oldest first" because it is what a cursor can follow: an order by timestamp would
let a late-arriving old observation fall behind cursors that already passed it.

**A lease** for provider P is, per level, a merge of two index range reads in sequence
order: ``signals (risk, seq) > cursor[P][risk]`` and ``targeted (provider, risk, seq)``,
skipping P's in-flight ips and its ``done`` entries. Its cost is the batch plus what it
skips, never the other providers' state: one cursor row per provider and level is all a
provider adds. Leases live in memory (they die with the process, so everything
unacknowledged is sent again after a restart).

**Targeted + broadcast** for the same (P, ip) coalesce at lease time: whichever is
leased first looks up the other (a primary-key read, only when P has targeted entries).
The newer observation is leased; the older is settled for P on the spot (a broadcast
gets a ``done`` mark, a targeted row is deleted). When the targeted entry is acknowledged,
a broadcast stored meanwhile but observed earlier is settled too, so P never gets both
and never an older observation after a newer one.

**Garbage collection.** After a cursor moves, broadcast entries at or below the lowest
cursor of their level are deleted: settled by every provider the store tracks. A cursor
that has nothing live above it jumps to the newest sequence number, so idle providers
never hold entries back. A provider removed from the config keeps its cursor, so its
backlog stays (and is resumed if it comes back) until it ages out.

**Ageing.** :meth:`SqliteStore.sweep` deletes entries observed more than ``max_age``
ago (index ``signals_age`` / ``targeted_age``) and counts them as expired for each
provider whose cursor had not passed them (a bisection per provider and level, not a
walk). A provider that fails for hours therefore holds at most ``max_age`` of signals,
and ingest never refuses because of it. A lease also drops expired entries it meets.

**Counts.** ``counts`` (kept exact by triggers) holds stored entries per level for
broadcast (provider ``''``) and per (provider, level) for targeted; ``max_pending``
bounds their sum. A provider's broadcast backlog is estimated in memory as its exact
count at the last resync plus the broadcast versions stored since (``counts.added``):
it may overcount (a version replaced while pending) but never undercounts, and it is
exact again after a lease that reaches the end of a level and after :meth:`refresh`.
Intake therefore costs the same at 1 or 1,000 providers. **Wake-ups**: a commit sets
``changed`` for idle providers only; a dispatcher that lingers or paces registers what
could change its decision (``wake_when``: a full call, a first HIGH), a threshold on the
shared ``counts.added`` counter kept in a heap, so a commit wakes only the dispatchers
whose threshold it passes (measured: 34 ms of CPU per 1-signal commit at 1,000
lingering providers before, 0.11 ms after; 0.08 ms at one).

**Threads.** One thread owns the connection; every operation runs there in order,
except that ingest's group commits go ahead of queued dispatch work (:mod:`.thread`).
Ingest writes go through a group commit: while one transaction commits, concurrent
requests queue up and share the next one. ``synchronous=NORMAL`` in WAL mode survives a
killed process (not a power cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from forwarder.errors import StoreError, StoreFull
from forwarder.signals import RiskLevel, Signal
from forwarder.store.base import DeadLetter, Lease, ProviderRecord, ProviderSummary, StoreObserver
from forwarder.store.groupcommit import GroupCommit
from forwarder.store.sqlite import queue
from forwarder.store.sqlite.calls import (
    CALL_LOG_KEEP_MS,
    call_answered,
    record_call,
    upsert_provider_state,
)
from forwarder.store.sqlite.counts import broadcast_pending, oldest_pending
from forwarder.store.sqlite.reader import (
    SqliteReader,
    dead_letter_counts,
    delete_dead_letters,
    read_dead_letters,
    read_summaries,
)
from forwarder.store.sqlite.schema import connect, create, transaction
from forwarder.store.sqlite.thread import StoreThread
from forwarder.store.sqlite.writer import BroadcastRow, TargetedRow, upsert_rows
from forwarder.store.wakeups import Wakeups

__all__ = ["CALL_LOG_KEEP_MS", "SqliteReader", "SqliteStore", "upsert_rows"]

T = TypeVar("T")

_GROUP_MAX_ROWS = 20_000
_BROADCAST_LEN = 6
#: Leases trigger a sweep of aged entries at most this often (of their callers' time).
_SWEEP_EVERY_MS = 60_000
#: One request's rows in its order: broadcast (6-tuples) and targeted (7-tuples).
_Batch = list[BroadcastRow | TargetedRow]


class SqliteStore:
    """SQLite-backed :class:`forwarder.store.base.StoreBackend`; an async context manager.

    ``providers`` are tracked from the start (see :meth:`attach`). The store has no
    clock of its own: it ages entries out (:meth:`sweep`) on the time its callers pass,
    at most once a minute from leases, and from ``add`` when it is full (on the
    signals' receipt time), with ``max_age_ms`` (leases pass their own).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_pending: int = 1_000_000,
        providers: Sequence[str] = (),
        max_age_ms: int | None = None,
        observer: StoreObserver | None = None,
        cache_mib: int = 16,
    ) -> None:
        self.path = path
        self.max_pending = max_pending
        self._max_age_ms = max_age_ms
        #: Clock time (as callers pass it) of the next automatic sweep.
        self._next_sweep_ms = 0
        self._providers = list(providers)
        self._observer = observer
        self._cache_mib = cache_mib
        self._executor = StoreThread("sqlite")
        self._conn: sqlite3.Connection | None = None
        self._st = queue.QueueState()
        self._dead: dict[str, int] = defaultdict(int)
        self._events: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._wakeups = Wakeups(self._events)
        self._writer: GroupCommit[BroadcastRow | TargetedRow, dict[str, int]] = GroupCommit(
            # Ahead of queued dispatch work: intake must not wait for 1,000 leases.
            lambda rows: self._run(self._tx, self._commit, rows, urgent=True),
            name="sqlite-group-commit",
            max_rows=_GROUP_MAX_ROWS,
            on_commit=self._after_commit,
        )
        self._next_lease = 1
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._run(self._open)
        self._writer.start()
        for provider in self._providers:
            await self.attach(provider)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        # Let queued ingest writes commit before closing; then stop the writer.
        await self._writer.stop()
        with contextlib.suppress(Exception):
            await self._run(self._close)
        self._executor.shutdown()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path, cache_mib=self._cache_mib)
            create(conn, self.path)
            self._st = queue.load(conn)
            self._dead = defaultdict(int, dead_letter_counts(conn))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, fn: Callable[..., T], *args: Any, urgent: bool = False) -> T:
        try:
            return await asyncio.wrap_future(self._executor.submit(fn, *args, urgent=urgent))
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: {exc}") from exc

    def _tx(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(db, *args)`` in one write transaction on the store thread."""
        db = self._db
        with transaction(db):
            return fn(db, *args)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self.path} is not open")
        return self._conn

    @property
    def writable(self) -> bool:
        """The file is open and the last write committed."""
        return self._conn is not None and not self._closing and self._writer.ok

    async def attach(self, provider: str) -> None:
        """Track ``provider``: from now on broadcasts are kept until it settles them.

        A provider new to this file starts after the broadcasts already stored (a
        broadcast is for the providers configured when it arrives); one known from an
        earlier run resumes where it stopped.
        """
        if provider in self._st.cursors:
            return
        await self._run(self._tx, lambda db: queue.attach(db, self._st, provider))

    # -- counts ----------------------------------------------------------------------

    def pending_total(self) -> int:
        """Stored entries, every provider (what ``max_pending`` bounds)."""
        return self._st.entries()

    def pending_counts(self, provider: str) -> Mapping[RiskLevel, int]:
        """Entries ``provider`` has still to send, by level (in flight included).

        Never an undercount; may overcount entries replaced while pending until the
        next lease that reaches the end of a level, or :meth:`refresh`.
        """
        return self._st.pending(provider)

    def dead_letter_count(self, provider: str) -> int:
        return self._dead.get(provider, 0)

    def changed(self, provider: str) -> asyncio.Event:
        """Set whenever entries for ``provider`` (targeted or broadcast) are committed."""
        return self._events[provider]

    def wake_when(self, provider: str, *, pending: int = 1, high: bool = True) -> None:
        """Set ``changed(provider)`` only once a commit brings its backlog estimate to
        ``pending`` (or, with ``high``, brings a HIGH entry), until it is next set.

        A provider's broadcast estimate grows one for one with the broadcast versions
        stored (``counts.added``), so the wake-up is a threshold on that one counter: a
        commit wakes the dispatchers whose threshold it passes (a heap), not all 1,000.
        Targeted commits always wake their provider; anything that lowers the backlog
        meanwhile (an age-out) can only make the wake-up early, never late.
        """
        self._wakeups.register(
            provider,
            pending=pending,
            high=high,
            waiting=sum(self._st.pending(provider).values()),
            added=sum(self._st.added.values()),
        )

    async def refresh(self) -> None:
        """Recount every provider's backlog exactly and the dead letters (for a scrape)."""
        await self._run(self._refresh)

    def _refresh(self) -> None:
        db = self._db
        st = self._st
        queue.read_counts(db, st)
        # Exact broadcast backlogs; an ip with both a targeted and a broadcast entry still
        # counts twice here until a lease resolves it (the estimate never undercounts).
        for provider, levels in broadcast_pending(db, st.cursors, st.done).items():
            st.resync(provider, levels)
        self._dead = defaultdict(int, dead_letter_counts(db))

    async def refresh_dead_letter_counts(self) -> None:
        """Recount dead letters (``forwarder dead-letters requeue`` removes them from outside)."""
        self._dead = defaultdict(int, await self._run(dead_letter_counts, self._db))

    # -- ingest: group commit --------------------------------------------------------

    async def add(self, items: Sequence[tuple[Sequence[str], Signal]]) -> None:
        """Commit signals: no targets = broadcast (one entry); else one entry per target.

        Raises ``StoreFull`` when ``max_pending`` entries are stored or queued.
        """
        if self._closing:
            raise StoreError("store is closing")
        # Rows queued for the next group commit count too, so a burst cannot overshoot.
        waiting = self.pending_total() + self._writer.queued_rows
        if waiting >= self.max_pending and self._max_age_ms is not None and items:
            # Full: first age out what nobody sent in time (a provider failing for hours
            # must not make ingest refuse for everyone).
            now_ms = max(s.received_ms for _, s in items)
            await self.sweep(now_ms=now_ms, max_age_ms=self._max_age_ms)
            waiting = self.pending_total() + self._writer.queued_rows
        if waiting >= self.max_pending:
            raise StoreFull(f"{waiting} signals are waiting (max_pending={self.max_pending})")
        rows: _Batch = []
        for providers, s in items:
            if not providers:
                rows.append((s.ip, int(s.risk), s.message, s.ts_ms, s.expires_ms, s.received_ms))
            else:
                rows.extend(
                    (p, s.ip, int(s.risk), s.message, s.ts_ms, s.expires_ms, s.received_ms)
                    for p in providers
                )
        if not rows:
            return
        await self._writer.add(rows)

    def _commit(self, db: sqlite3.Connection, rows: _Batch) -> dict[str, int]:
        st = self._st
        before = {p: sum(levels.values()) for p, levels in st.stored.items()}
        st.last_seq = upsert_rows(db, rows, first_seq=st.last_seq + 1) - 1
        queue.read_counts(db, st)
        return {p: sum(levels.values()) - before.get(p, 0) for p, levels in st.stored.items()}

    def _after_commit(self, rows: _Batch, new_rows: dict[str, int]) -> None:
        per_provider: dict[str, int] = defaultdict(int)
        broadcast = 0
        high = False
        for row in rows:
            if len(row) == _BROADCAST_LEN:
                broadcast += 1
                high = high or row[1] == RiskLevel.HIGH
            else:
                per_provider[str(row[0])] += 1
        if self._observer is not None:
            if broadcast:
                # A coalesced broadcast saves a send for every provider: counted for each
                # (once per commit, and only when some signal was coalesced).
                stored_b = new_rows.get("", 0)
                for provider in self._st.cursors if stored_b < broadcast else ():
                    self._observer.signals_stored(provider, broadcast, stored_b)
            for provider, signals in per_provider.items():
                self._observer.signals_stored(provider, signals, new_rows.get(provider, 0))
        if broadcast:
            # Once per commit, not per signal: wake the dispatchers whose decision this
            # commit can change (see wake_when); the others are busy or wait for a timer.
            self._wakeups.broadcast(sum(self._st.added.values()), high=high)
        self._wakeups.wake_all(per_provider)

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
        lease_id = self._next_lease
        self._next_lease += 1
        swept: dict[str, int] = {}
        if now_ms >= self._next_sweep_ms:
            self._next_sweep_ms = now_ms + _SWEEP_EVERY_MS
            swept = await self._sweep(now_ms, self._max_age_ms or max_age_ms)

        def run(db: sqlite3.Connection) -> tuple[list[Signal], int]:
            signals, expired = queue.lease(
                db,
                self._st,
                provider,
                lease_id,
                limit=limit,
                now_ms=now_ms,
                max_age_ms=max_age_ms,
                margin_ms=expiry_margin_ms,
            )
            if expired:
                queue.read_counts(db, self._st)
            return signals, expired

        signals, expired = await self._run(self._tx, run)
        expired += swept.pop(provider, 0)
        if self._observer is not None:
            for other, n in swept.items():
                self._observer.signals_expired(other, n)
            if expired:
                self._observer.signals_expired(provider, expired)
        return Lease(provider=provider, lease_id=lease_id, signals=signals, expired=expired)

    async def ack(self, lease: Lease) -> int:
        """Okta accepted the batch: settle the versions sent; return how many were current."""
        return await self._run(self._tx, self._settle, lease.lease_id, None)

    def _settle(self, db: sqlite3.Connection, lease_id: int, only: Collection[str] | None) -> int:
        removed = queue.settle(db, self._st, lease_id, only=only)
        queue.read_counts(db, self._st)
        return removed

    async def release(self, lease: Lease) -> None:
        """Keep the batch for a later attempt (the entries are free to lease again)."""
        queue.release(self._st, lease.lease_id)

    async def dead_letter(
        self, lease: Lease, *, reason: str, causes: Sequence[str], at_ms: int
    ) -> int:
        """Okta rejected the whole batch: move it to the dead-letter table."""
        causes_json = json.dumps(list(causes))
        return await self._dead_letter(
            lease, {s.ip: causes_json for s in lease.signals}, reason, at_ms
        )

    async def dead_letter_some(
        self, lease: Lease, rejected: Mapping[str, Sequence[str]], *, reason: str, at_ms: int
    ) -> int:
        """Dead-letter the signals of ``lease`` whose ip is a key of ``rejected`` (each with
        its own causes) and release the rest for the next call; return how many moved."""
        return await self._dead_letter(
            lease, {ip: json.dumps(list(c)) for ip, c in rejected.items()}, reason, at_ms
        )

    async def _dead_letter(
        self, lease: Lease, causes: Mapping[str, str], reason: str, at_ms: int
    ) -> int:
        sent = [s for s in lease.signals if s.ip in causes]

        def run(db: sqlite3.Connection) -> int:
            db.executemany(
                "INSERT INTO dead_letters (provider, ip, risk, message, ts_ms, expires_ms,"
                " received_ms, failed_ms, reason, causes) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        lease.provider,
                        s.ip,
                        int(s.risk),
                        s.message,
                        s.ts_ms,
                        s.expires_ms,
                        s.received_ms,
                        at_ms,
                        reason,
                        causes[s.ip],
                    )
                    for s in sent
                ],
            )
            queue.settle(db, self._st, lease.lease_id, only={s.ip for s in sent})
            queue.read_counts(db, self._st)
            return len(sent)

        moved: int = await self._run(self._tx, run)
        self._dead[lease.provider] += moved
        return moved

    async def sweep(self, *, now_ms: int, max_age_ms: int) -> int:
        """Delete entries older than ``max_age_ms``; count them per provider; return how many."""
        expired = await self._sweep(now_ms, max_age_ms)
        if self._observer is not None:
            for provider, n in expired.items():
                self._observer.signals_expired(provider, n)
        return sum(expired.values())

    async def _sweep(self, now_ms: int, max_age_ms: int) -> dict[str, int]:
        def run(db: sqlite3.Connection) -> tuple[dict[str, int], bool]:
            expired, more = queue.sweep(db, self._st, cutoff_ms=now_ms - max_age_ms)
            queue.read_counts(db, self._st)
            return expired, more

        total: dict[str, int] = defaultdict(int)
        more = True
        while more:
            # In slices: the one store thread also serves ingest and every provider.
            expired, more = await self._run(self._tx, run)
            for provider, n in expired.items():
                total[provider] += n
        return dict(total)

    async def oldest_pending_ms(self, provider: str) -> Mapping[RiskLevel, int]:
        """Observation time of the entry waiting longest (first stored), per level."""
        levels = await self._run(
            lambda: oldest_pending(self._db, provider, self._st.cursors.get(provider))
        )
        return {RiskLevel(r): t for r, t in levels.items()}

    async def oldest_pending_many(
        self, providers: Sequence[str]
    ) -> dict[str, Mapping[RiskLevel, int]]:
        """:meth:`oldest_pending_ms` of several providers in one trip to the store thread."""

        def read() -> dict[str, Mapping[RiskLevel, int]]:
            return {
                p: {
                    RiskLevel(r): t
                    for r, t in oldest_pending(self._db, p, self._st.cursors.get(p)).items()
                }
                for p in providers
            }

        return await self._run(read)

    # -- call log and provider state -------------------------------------------------

    async def record_call(self, key: str, at_ms: int) -> None:
        """Persist the time of an events call under ``key`` (the budget survives restarts)."""
        await self._run(self._tx, record_call, key, at_ms)

    async def call_answered(self, key: str, at_ms: int, answered_ms: int) -> None:
        """Count the call logged at ``at_ms`` from ``answered_ms`` (see ``CallLog``)."""
        await self._run(self._tx, call_answered, key, at_ms, answered_ms)

    async def recent_calls(self, key: str, since_ms: int) -> list[int]:
        """Call times under ``key`` at or after ``since_ms``, oldest first."""
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT at_ms FROM calls WHERE key = ? AND at_ms >= ? ORDER BY at_ms",
                (key, since_ms),
            ).fetchall()
        )
        return [int(at_ms) for (at_ms,) in rows]

    async def record_provider_state(self, record: ProviderRecord) -> None:
        """Persist a provider's state and last call (one small autocommit write)."""
        await self._run(upsert_provider_state, self._db, record)

    async def probe_writable(self) -> bool:
        """Try a tiny write now; True (and ``writable`` again) when it commits."""
        if self._conn is None or self._closing:
            return False
        try:
            await self._run(
                lambda: self._db.execute(
                    "INSERT INTO write_probe (id, n) VALUES (1, 1)"
                    " ON CONFLICT (id) DO UPDATE SET n = n + 1"
                )
            )
        except StoreError:
            return False
        # Only a commit proves the file writable again: readiness recovers on its own
        # instead of waiting for ingest traffic a not-ready pod no longer gets.
        self._writer.ok = True
        return True

    # -- reading (StoreReader) -------------------------------------------------------

    async def summaries(self, providers: Sequence[str] = ()) -> list[ProviderSummary]:
        """Per provider, exact: ``providers`` first, then any other the store knows."""

        def read() -> list[ProviderSummary]:
            with transaction(self._db, immediate=False):
                return read_summaries(self._db, providers)

        return await self._run(read)

    async def dead_letters(
        self,
        provider: str | None = None,
        *,
        ids: Collection[int] = (),
        limit: int | None = 100,
    ) -> list[DeadLetter]:
        """Dead letters, newest first."""
        return await self._run(lambda: read_dead_letters(self._db, provider, ids=ids, limit=limit))

    async def delete_dead_letters(self, ids: Collection[int]) -> int:
        """Remove dead letters by id; return how many."""
        removed = await self._run(delete_dead_letters, self._db, ids)
        await self.refresh_dead_letter_counts()
        return removed
