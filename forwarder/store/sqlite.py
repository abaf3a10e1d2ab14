"""The embedded store: one SQLite file in WAL mode.

One thread owns the connection; every operation runs there in order. Ingest writes
go through a group commit: while one transaction commits, concurrent requests queue
up and share the next one, so a durable 202 costs a fraction of a commit each.
``synchronous=NORMAL`` in WAL mode survives a killed process (not a power cut).

Pending counts per (provider, risk) live in a ``counts`` table kept exact by
triggers, so capacity checks and gauges never count rows.

:func:`~forwarder.store.sqlite_read.read_summary` opens the same file read-only from
another process (``forwarder status``): WAL lets it read while the daemon writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from forwarder.errors import StoreError, StoreFull
from forwarder.signals import EXPIRY_MARGIN_MS, RiskLevel, Signal, sendable
from forwarder.store.base import (
    AddResult,
    DeadLetter,
    Lease,
    ProviderRecord,
    StoreObserver,
)
from forwarder.store.sqlite_read import oldest_by_level

__all__ = ["SqliteStore", "upsert_rows"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    provider    TEXT    NOT NULL,
    ip          TEXT    NOT NULL,
    risk        INTEGER NOT NULL,
    message     TEXT    NOT NULL,
    ts_ms       INTEGER NOT NULL,
    expires_ms  INTEGER,
    received_ms INTEGER NOT NULL,
    lease       INTEGER,
    PRIMARY KEY (provider, ip)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_order ON pending (provider, risk DESC, ts_ms);
CREATE INDEX IF NOT EXISTS pending_leased ON pending (provider, lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS counts (
    provider TEXT    NOT NULL,
    risk     INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (provider, risk)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS pending_ins AFTER INSERT ON pending BEGIN
    INSERT INTO counts (provider, risk, n) VALUES (NEW.provider, NEW.risk, 1)
        ON CONFLICT (provider, risk) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS pending_del AFTER DELETE ON pending BEGIN
    UPDATE counts SET n = n - 1 WHERE provider = OLD.provider AND risk = OLD.risk;
END;
CREATE TRIGGER IF NOT EXISTS pending_upd AFTER UPDATE OF risk ON pending
WHEN OLD.risk != NEW.risk BEGIN
    UPDATE counts SET n = n - 1 WHERE provider = OLD.provider AND risk = OLD.risk;
    INSERT INTO counts (provider, risk, n) VALUES (NEW.provider, NEW.risk, 1)
        ON CONFLICT (provider, risk) DO UPDATE SET n = n + 1;
END;
CREATE TABLE IF NOT EXISTS calls (
    provider TEXT    NOT NULL,
    at_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_provider ON calls (provider, at_ms);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    provider    TEXT    NOT NULL,
    ip          TEXT    NOT NULL,
    risk        INTEGER NOT NULL,
    message     TEXT    NOT NULL,
    ts_ms       INTEGER NOT NULL,
    expires_ms  INTEGER,
    received_ms INTEGER NOT NULL,
    failed_ms   INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    causes      TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_provider ON dead_letters (provider, id);
CREATE TABLE IF NOT EXISTS provider_state (
    provider     TEXT    PRIMARY KEY,
    status       TEXT    NOT NULL,
    updated_ms   INTEGER NOT NULL,
    last_call_ms INTEGER,
    last_outcome TEXT,
    last_error   TEXT,
    hint         TEXT,
    until_ms     INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  INTEGER NOT NULL
);
"""

_UPSERT_PROVIDER_STATE = """
INSERT INTO provider_state
    (provider, status, updated_ms, last_call_ms, last_outcome, last_error, hint, until_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (provider) DO UPDATE SET
    status = excluded.status, updated_ms = excluded.updated_ms,
    last_call_ms = excluded.last_call_ms, last_outcome = excluded.last_outcome,
    last_error = excluded.last_error, hint = excluded.hint, until_ms = excluded.until_ms
"""

# Okta's rule for a coalesced IP: the newest observation wins; on a tie the higher risk.
# A replaced row loses its lease, so an in-flight ack cannot delete the newer version.
_ON_CONFLICT = """
ON CONFLICT (provider, ip) DO UPDATE SET
    risk = excluded.risk, message = excluded.message, ts_ms = excluded.ts_ms,
    expires_ms = excluded.expires_ms, received_ms = excluded.received_ms, lease = NULL
WHERE excluded.ts_ms > pending.ts_ms
   OR (excluded.ts_ms = pending.ts_ms AND excluded.risk > pending.risk)
"""
_UPSERT = (
    "INSERT INTO pending (provider, ip, risk, message, ts_ms, expires_ms, received_ms)"  # noqa: S608
    " VALUES (?, ?, ?, ?, ?, ?, ?)" + _ON_CONFLICT
)
# The same upsert as one statement per group commit: SQLite reads the rows from a JSON
# array itself. executemany() drops and retakes the GIL around every row, and a writer
# thread competing with a busy event loop then waits milliseconds for each one
# (measured: 84-92k -> 140-148k signals/s on 1000-signal requests, docs/benchmarks.md).
# `->>` needs SQLite 3.38; older libraries fall back to executemany().
_UPSERT_JSON = (
    "INSERT INTO pending (provider, ip, risk, message, ts_ms, expires_ms, received_ms)"  # noqa: S608
    " SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6"
    " FROM json_each(?) WHERE true" + _ON_CONFLICT
)
_HAS_JSON_ARROWS = sqlite3.sqlite_version_info >= (3, 38, 0)


def upsert_rows(db: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """Coalescing upsert of ``rows`` (provider, ip, risk, message, ts, expires, received).

    The caller owns the transaction. The benchmark's storage floor calls this too, so
    "the same upserts done directly" stays true.
    """
    if _HAS_JSON_ARROWS:
        db.execute(_UPSERT_JSON, (json.dumps(rows),))
    else:  # pragma: no cover - SQLite older than 3.38
        db.executemany(_UPSERT, rows)


_SELECT_BATCH = """
SELECT ip, risk, message, ts_ms, expires_ms, received_ms FROM pending
WHERE provider = ? AND lease IS NULL
ORDER BY risk DESC, ts_ms
LIMIT ?
"""

_Row = tuple[str, str, int, str, int, int | None, int]
_CALL_LOG_KEEP_MS = 3_600_000
_GROUP_MAX_ROWS = 20_000
#: Expired rows deleted per lease at most (about 20 ms of the store thread).
_PURGE_PER_LEASE = 5_000


class SqliteStore:
    """SQLite-backed :class:`forwarder.store.base.Store`. Use as an async context manager."""

    def __init__(
        self,
        path: Path,
        *,
        max_pending: int = 1_000_000,
        observer: StoreObserver | None = None,
        cache_mib: int = 16,
    ) -> None:
        self.path = path
        self.max_pending = max_pending
        self._observer = observer
        self._cache_mib = cache_mib
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._counts: dict[str, dict[RiskLevel, int]] = defaultdict(dict)
        self._dead: dict[str, int] = defaultdict(int)
        self._events: dict[str, asyncio.Event] = {}
        self._queue: list[tuple[list[_Row], asyncio.Future[None]]] = []
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._next_lease = 1
        self._closing = False
        self._write_ok = True

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._run(self._open)
        self._writer = asyncio.create_task(self._write_loop(), name="sqlite-group-commit")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        if self._writer is not None:
            self._wake.set()
            # Let queued ingest writes commit before closing; then stop the writer.
            if self._queue and not self._writer.done():
                await asyncio.gather(*(f for _, f in self._queue), return_exceptions=True)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        with contextlib.suppress(Exception):
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size=-{self._cache_mib * 1024}")
            conn.executescript(_SCHEMA)
            # Leases belong to a process; after a restart everything unacked is sent again.
            conn.execute("UPDATE pending SET lease = NULL WHERE lease IS NOT NULL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._conn = conn
        self._counts.clear()
        for provider, risk, n in conn.execute("SELECT provider, risk, n FROM counts"):
            if n:
                self._counts[provider][RiskLevel(risk)] = n
        self._dead = defaultdict(int, self._count_dead(conn))

    @staticmethod
    def _count_dead(conn: sqlite3.Connection) -> dict[str, int]:
        return dict(conn.execute("SELECT provider, count(*) FROM dead_letters GROUP BY provider"))

    async def refresh_dead_letter_counts(self) -> None:
        self._dead = defaultdict(int, await self._run(self._count_dead, self._db))

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: {exc}") from exc

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self.path} is not open")
        return self._conn

    @property
    def writable(self) -> bool:
        """The file is open and the last write committed."""
        return self._conn is not None and not self._closing and self._write_ok

    # -- counts ----------------------------------------------------------------------

    def pending_total(self) -> int:
        return sum(sum(levels.values()) for levels in self._counts.values())

    def pending_counts(self, provider: str) -> Mapping[RiskLevel, int]:
        return dict(self._counts.get(provider, {}))

    def dead_letter_count(self, provider: str) -> int:
        return self._dead.get(provider, 0)

    def changed(self, provider: str) -> asyncio.Event:
        event = self._events.get(provider)
        if event is None:
            event = self._events[provider] = asyncio.Event()
        return event

    def _read_counts(self) -> dict[str, dict[RiskLevel, int]]:
        out: dict[str, dict[RiskLevel, int]] = defaultdict(dict)
        for provider, risk, n in self._db.execute("SELECT provider, risk, n FROM counts"):
            if n:
                out[provider][RiskLevel(risk)] = n
        return out

    def _apply_counts(self, counts: dict[str, dict[RiskLevel, int]]) -> None:
        self._counts = defaultdict(dict, counts)

    # -- ingest: group commit --------------------------------------------------------

    async def add(self, items: Sequence[tuple[Sequence[str], Signal]]) -> AddResult:
        if self._closing:
            raise StoreError("store is closing")
        # Rows queued for the next group commit count too, so a burst cannot overshoot.
        waiting = self.pending_total() + self._queued_rows
        if waiting >= self.max_pending:
            raise StoreFull(f"{waiting} signals are waiting (max_pending={self.max_pending})")
        rows: list[_Row] = [
            (p, s.ip, int(s.risk), s.message, s.ts_ms, s.expires_ms, s.received_ms)
            for providers, s in items
            for p in providers
        ]
        if not rows:
            return AddResult(accepted=len(items))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, fut))
        self._queued_rows += len(rows)
        self._wake.set()
        await fut
        return AddResult(accepted=len(items))

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                group: list[tuple[list[_Row], asyncio.Future[None]]] = []
                n = 0
                while self._queue and (not group or n < _GROUP_MAX_ROWS):
                    rows, fut = self._queue.pop(0)
                    group.append((rows, fut))
                    n += len(rows)
                self._queued_rows -= n
                try:
                    per_provider, counts = await self._run(
                        self._commit_rows, [r for rows, _ in group for r in rows]
                    )
                except Exception as exc:
                    self._write_ok = False
                    error = exc if isinstance(exc, StoreError) else StoreError(str(exc))
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(error)
                    continue
                self._write_ok = True
                self._apply_counts(counts)
                for _, fut in group:
                    if not fut.done():
                        fut.set_result(None)
                for provider, (signals, new_rows) in per_provider.items():
                    if self._observer is not None:
                        self._observer.signals_stored(provider, signals, new_rows)
                    self.changed(provider).set()

    def _commit_rows(
        self, rows: list[_Row]
    ) -> tuple[dict[str, tuple[int, int]], dict[str, dict[RiskLevel, int]]]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            before = self._read_counts()
            upsert_rows(db, rows)
            after = self._read_counts()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        signals: dict[str, int] = defaultdict(int)
        for row in rows:
            signals[row[0]] += 1
        per_provider = {
            p: (n, sum(after.get(p, {}).values()) - sum(before.get(p, {}).values()))
            for p, n in signals.items()
        }
        return per_provider, after

    # -- dispatch --------------------------------------------------------------------

    async def lease(
        self,
        provider: str,
        *,
        limit: int,
        now_ms: int,
        max_age_ms: int,
        expiry_margin_ms: int = EXPIRY_MARGIN_MS,
    ) -> Lease:
        lease_id = self._next_lease
        self._next_lease += 1
        signals, expired, counts = await self._run(
            self._lease, provider, lease_id, limit, now_ms, max_age_ms, expiry_margin_ms
        )
        if expired:
            self._apply_counts(counts)
            if self._observer is not None:
                self._observer.signals_expired(provider, expired)
        return Lease(provider=provider, lease_id=lease_id, signals=signals, expired=expired)

    def _lease(
        self,
        provider: str,
        lease_id: int,
        limit: int,
        now_ms: int,
        max_age_ms: int,
        margin_ms: int,
    ) -> tuple[list[Signal], int, dict[str, dict[RiskLevel, int]]]:
        db = self._db
        keep: list[Signal] = []
        expired = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            while len(keep) < limit:
                want = limit - len(keep)
                rows = db.execute(_SELECT_BATCH, (provider, want)).fetchall()
                dead: list[tuple[str, str]] = []
                taken: list[tuple[int, str, str]] = []
                for ip, risk, message, ts_ms, expires_ms, received_ms in rows:
                    signal = Signal(ip, RiskLevel(risk), message, ts_ms, expires_ms, received_ms)
                    if not sendable(signal, now_ms, max_age_ms=max_age_ms, margin_ms=margin_ms):
                        dead.append((provider, ip))
                        continue
                    keep.append(signal)
                    taken.append((lease_id, provider, ip))
                # Mark as we go: the next SELECT (after dropping expired rows) must not
                # see rows this lease already holds, or one IP would go twice in a call.
                if taken:
                    db.executemany(
                        "UPDATE pending SET lease = ? WHERE provider = ? AND ip = ?", taken
                    )
                if dead:
                    db.executemany("DELETE FROM pending WHERE provider = ? AND ip = ?", dead)
                    expired += len(dead)
                if len(rows) < want or not dead:
                    break
                if expired >= _PURGE_PER_LEASE:
                    # The one store thread serves every provider and ingest: purge a
                    # large expired backlog in slices, and lease nothing this time rather
                    # than send a call that more fresh rows could have filled.
                    db.execute(
                        "UPDATE pending SET lease = NULL WHERE provider = ? AND lease = ?",
                        (provider, lease_id),
                    )
                    keep = []
                    break
            counts = self._read_counts() if expired else {}
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return keep, expired, counts

    async def ack(self, lease: Lease) -> int:
        removed, counts = await self._run(self._ack, lease.provider, lease.lease_id)
        self._apply_counts(counts)
        return removed

    def _ack(self, provider: str, lease_id: int) -> tuple[int, dict[str, dict[RiskLevel, int]]]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "DELETE FROM pending WHERE provider = ? AND lease = ?", (provider, lease_id)
            )
            counts = self._read_counts()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return cur.rowcount, counts

    async def release(self, lease: Lease) -> None:
        await self._run(
            self._exec,
            "UPDATE pending SET lease = NULL WHERE provider = ? AND lease = ?",
            (lease.provider, lease.lease_id),
        )

    def _exec(self, sql: str, params: Sequence[Any]) -> int:
        return self._db.execute(sql, params).rowcount

    async def dead_letter(
        self, lease: Lease, *, reason: str, causes: Sequence[str], at: float
    ) -> None:
        counts = await self._run(self._dead_letter, lease, reason, list(causes), int(at * 1000))
        self._apply_counts(counts)
        self._dead[lease.provider] += len(lease.signals)

    def _dead_letter(
        self, lease: Lease, reason: str, causes: list[str], failed_ms: int
    ) -> dict[str, dict[RiskLevel, int]]:
        db = self._db
        causes_json = json.dumps(causes)
        db.execute("BEGIN IMMEDIATE")
        try:
            self._insert_dead(
                db, lease.provider, [(s, causes_json) for s in lease.signals], reason, failed_ms
            )
            db.execute(
                "DELETE FROM pending WHERE provider = ? AND lease = ?",
                (lease.provider, lease.lease_id),
            )
            counts = self._read_counts()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return counts

    async def dead_letter_some(
        self,
        lease: Lease,
        rejected: Mapping[str, Sequence[str]],
        *,
        reason: str,
        at: float,
    ) -> int:
        """Dead-letter the signals of ``lease`` whose IP is in ``rejected`` (each with its
        own causes) and release the rest for the next call; return how many were moved."""
        sent = [s for s in lease.signals if s.ip in rejected]
        if not sent:
            await self.release(lease)
            return 0
        counts = await self._run(
            self._dead_letter_some,
            lease,
            [(s, json.dumps(list(rejected[s.ip]))) for s in sent],
            reason,
            int(at * 1000),
        )
        self._apply_counts(counts)
        self._dead[lease.provider] += len(sent)
        return len(sent)

    def _dead_letter_some(
        self,
        lease: Lease,
        rejected: list[tuple[Signal, str]],
        reason: str,
        failed_ms: int,
    ) -> dict[str, dict[RiskLevel, int]]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._insert_dead(db, lease.provider, rejected, reason, failed_ms)
            # Only the versions sent: a row replaced in flight lost its lease and stays.
            db.executemany(
                "DELETE FROM pending WHERE provider = ? AND ip = ? AND lease = ?",
                [(lease.provider, s.ip, lease.lease_id) for s, _ in rejected],
            )
            db.execute(
                "UPDATE pending SET lease = NULL WHERE provider = ? AND lease = ?",
                (lease.provider, lease.lease_id),
            )
            counts = self._read_counts()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return counts

    @staticmethod
    def _insert_dead(
        db: sqlite3.Connection,
        provider: str,
        signals: list[tuple[Signal, str]],
        reason: str,
        failed_ms: int,
    ) -> None:
        db.executemany(
            "INSERT INTO dead_letters (provider, ip, risk, message, ts_ms, expires_ms,"
            " received_ms, failed_ms, reason, causes) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    provider,
                    s.ip,
                    int(s.risk),
                    s.message,
                    s.ts_ms,
                    s.expires_ms,
                    s.received_ms,
                    failed_ms,
                    reason,
                    causes_json,
                )
                for s, causes_json in signals
            ],
        )

    async def dead_letters(self, provider: str | None = None, limit: int = 100) -> list[DeadLetter]:
        rows = await self._run(self._dead_letters, provider, limit)
        return [
            DeadLetter(
                provider=p,
                signal=Signal(ip, RiskLevel(risk), msg, ts, exp, recv),
                failed_ms=failed,
                reason=reason,
                causes=tuple(json.loads(causes)),
            )
            for p, ip, risk, msg, ts, exp, recv, failed, reason, causes in rows
        ]

    def _dead_letters(self, provider: str | None, limit: int) -> list[tuple[Any, ...]]:
        sql = (
            "SELECT provider, ip, risk, message, ts_ms, expires_ms, received_ms, failed_ms,"
            " reason, causes FROM dead_letters"
        )
        if provider is None:
            return self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return self._db.execute(
            sql + " WHERE provider = ? ORDER BY id DESC LIMIT ?", (provider, limit)
        ).fetchall()

    # -- call budget -----------------------------------------------------------------

    async def record_call(self, provider: str, at: float) -> None:
        await self._run(self._record_call, provider, int(at * 1000))

    def _record_call(self, provider: str, at_ms: int) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO calls (provider, at_ms) VALUES (?, ?)", (provider, at_ms))
            db.execute(
                "DELETE FROM calls WHERE provider = ? AND at_ms < ?",
                (provider, at_ms - _CALL_LOG_KEEP_MS),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def recent_calls(self, provider: str, since: float) -> list[float]:
        rows = await self._run(self._recent_calls, provider, int(since * 1000))
        return [at_ms / 1000 for (at_ms,) in rows]

    def _recent_calls(self, provider: str, since_ms: int) -> list[tuple[int]]:
        return self._db.execute(
            "SELECT at_ms FROM calls WHERE provider = ? AND at_ms >= ? ORDER BY at_ms",
            (provider, since_ms),
        ).fetchall()

    async def oldest_pending_ms(self, provider: str) -> Mapping[RiskLevel, int]:
        return await self._run(oldest_by_level, self._db, provider)

    async def oldest_pending_many(
        self, providers: Sequence[str]
    ) -> dict[str, Mapping[RiskLevel, int]]:
        """:meth:`oldest_pending_ms` of several providers in one trip to the store thread."""

        def read() -> dict[str, Mapping[RiskLevel, int]]:
            return {p: oldest_by_level(self._db, p) for p in providers}

        return await self._run(read)

    # -- provider state and health ---------------------------------------------------

    async def record_provider_state(self, record: ProviderRecord) -> None:
        # One autocommit upsert per call (a WAL append): cheap next to the call itself.
        await self._run(
            self._exec,
            _UPSERT_PROVIDER_STATE,
            (
                record.provider,
                record.status,
                _ms(record.updated_at),
                _ms(record.last_call_at),
                record.last_outcome,
                record.last_error,
                record.hint,
                _ms(record.until),
            ),
        )

    async def probe_writable(self) -> bool:
        if self._conn is None or self._closing:
            return False
        try:
            await self._run(
                self._exec,
                "INSERT INTO write_probe (id, n) VALUES (1, 1)"
                " ON CONFLICT (id) DO UPDATE SET n = n + 1",
                (),
            )
        except StoreError:
            return False
        # Only a commit proves the file writable again: readiness recovers on its own
        # instead of waiting for ingest traffic a not-ready pod no longer gets.
        self._write_ok = True
        return True


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)
