"""Ingest writes on PostgreSQL: one coalescing upsert per table per group commit.

Concurrent ingest requests of one replica queue up while a commit is in flight and share
the next one (:class:`GroupCommit`); a 202 is answered only after that transaction
committed. Every replica writes, so the commits of all replicas are ordered by one row
lock (``counters.seq``, taken first in each ingest transaction): sequence numbers are
handed out in commit order, which is what lets a provider's cursor move past seq N
knowing nothing below N can still appear.

Rows are sent as arrays (``unnest ... WITH ORDINALITY``): one round trip and one
statement per table however many signals the group holds. PostgreSQL refuses to update
one row twice in one statement, so a group is first coalesced in memory by the same
rule the upsert applies: the newest observation wins, on a tie the higher risk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from forwarder.errors import StoreError
from forwarder.store.postgres.conn import Conn
from forwarder.store.postgres.connect import DB_ERRORS

__all__ = [
    "CHANGED_CHANNEL",
    "BroadcastRow",
    "GroupCommit",
    "Row",
    "TargetedRow",
    "Upserted",
    "changes_payload",
    "coalesce_rows",
    "upsert_rows",
]

#: NOTIFY channel; the payload is :func:`changes_payload`'s JSON.
CHANGED_CHANNEL = "forwarder_changed"
_PAYLOAD_MAX = 7_000  # NOTIFY payloads are limited to 8000 bytes

#: (ip, risk, message, ts_ms, expires_ms, received_ms)
BroadcastRow = tuple[str, int, str, int, int | None, int]
#: (provider, ip, risk, message, ts_ms, expires_ms, received_ms)
TargetedRow = tuple[str, str, int, str, int, int | None, int]

_NEXT_SEQ = "UPDATE counters SET value = value + $1 WHERE name = 'seq' RETURNING value"

_BROADCAST = """
WITH up AS (
    INSERT INTO signals AS s (ip, risk, message, ts_ms, expires_ms, received_ms, seq)
    SELECT u.ip, u.risk, u.message, u.ts_ms, u.expires_ms, u.received_ms, u.seq
      FROM unnest($1::text[], $2::smallint[], $3::text[], $4::bigint[], $5::bigint[],
                  $6::bigint[], $7::bigint[])
           AS u(ip, risk, message, ts_ms, expires_ms, received_ms, seq)
    ON CONFLICT (ip) DO UPDATE SET
        risk = excluded.risk, message = excluded.message, ts_ms = excluded.ts_ms,
        expires_ms = excluded.expires_ms, received_ms = excluded.received_ms,
        seq = excluded.seq
    WHERE excluded.ts_ms > s.ts_ms OR (excluded.ts_ms = s.ts_ms AND excluded.risk > s.risk)
    RETURNING s.risk, (xmax = 0) AS inserted
),
counted AS (
    UPDATE counters SET value = value + (SELECT count(*) FROM up WHERE inserted)
     WHERE name = 'inserted'
)
SELECT risk, count(*) FILTER (WHERE inserted) AS inserted, count(*) AS stored
  FROM up GROUP BY risk
"""

_TARGETED = """
WITH up AS (
    INSERT INTO targeted AS t (provider, ip, risk, message, ts_ms, expires_ms, received_ms, seq)
    SELECT u.provider, u.ip, u.risk, u.message, u.ts_ms, u.expires_ms, u.received_ms, u.seq
      FROM unnest($1::text[], $2::text[], $3::smallint[], $4::text[], $5::bigint[],
                  $6::bigint[], $7::bigint[], $8::bigint[])
           AS u(provider, ip, risk, message, ts_ms, expires_ms, received_ms, seq)
    ON CONFLICT (provider, ip) DO UPDATE SET
        risk = excluded.risk, message = excluded.message, ts_ms = excluded.ts_ms,
        expires_ms = excluded.expires_ms, received_ms = excluded.received_ms,
        seq = excluded.seq
    WHERE excluded.ts_ms > t.ts_ms OR (excluded.ts_ms = t.ts_ms AND excluded.risk > t.risk)
    RETURNING t.provider, t.risk, (xmax = 0) AS inserted
),
counted AS (
    UPDATE counters SET value = value + (SELECT count(*) FROM up WHERE inserted)
     WHERE name = 'inserted'
)
SELECT provider, risk, count(*) FILTER (WHERE inserted) AS inserted, count(*) AS stored
  FROM up GROUP BY provider, risk
"""

_ENTRIES = (
    "SELECT sum(CASE name WHEN 'inserted' THEN value ELSE -value END) FROM counters"
    " WHERE name IN ('inserted', 'deleted')"
)


def _wins(new_ts: int, new_risk: int, old_ts: int, old_risk: int) -> bool:
    """Okta's coalescing rule: the newest observation wins; on a tie the higher risk."""
    return new_ts > old_ts or (new_ts == old_ts and new_risk > old_risk)


Row = BroadcastRow | TargetedRow
_BROADCAST_LEN = 6


def coalesce_rows(
    rows: Sequence[Row],
) -> tuple[list[tuple[BroadcastRow, int]], list[tuple[TargetedRow, int]]]:
    """Number the rows of one commit and keep one per ip (broadcast) and per (provider, ip).

    Numbers follow observation time, ties in arrival order (both kinds together, as the
    SQLite store does); each row is numbered, winners keep theirs. The winner of a key is
    the newest observation, on a tie the higher risk, on a full tie the first numbered
    (an equal version replaces nothing). Returns (row, offset) pairs per kind.
    """
    times: list[int] = [r[3] if len(r) == _BROADCAST_LEN else r[4] for r in rows]  # type: ignore[misc]
    order = sorted(range(len(rows)), key=lambda i: times[i])
    b: dict[str, tuple[BroadcastRow, int]] = {}
    t: dict[tuple[str, str], tuple[TargetedRow, int]] = {}
    for offset, i in enumerate(order):
        row = rows[i]
        if len(row) == _BROADCAST_LEN:
            brow: BroadcastRow = row  # type: ignore[assignment]
            old = b.get(brow[0])
            if old is None or _wins(brow[3], brow[1], old[0][3], old[0][1]):
                b[brow[0]] = (brow, offset)
        else:
            trow: TargetedRow = row  # type: ignore[assignment]
            key = (trow[0], trow[1])
            old_t = t.get(key)
            if old_t is None or _wins(trow[4], trow[2], old_t[0][4], old_t[0][2]):
                t[key] = (trow, offset)
    return sorted(b.values(), key=lambda x: x[1]), sorted(t.values(), key=lambda x: x[1])


@dataclass(frozen=True, slots=True)
class Upserted:
    """What one group commit stored, and the store's size after it."""

    last_seq: int
    #: level -> (new entries, stored versions) of broadcast rows
    broadcast: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: (provider, level) -> (new entries, stored versions) of targeted rows
    targeted: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    #: Stored entries, every replica's, after this commit (what max_pending bounds).
    entries: int = 0

    @property
    def broadcast_new(self) -> int:
        return sum(n for n, _ in self.broadcast.values())

    @property
    def broadcast_stored(self) -> int:
        return sum(n for _, n in self.broadcast.values())


def _columns(rows: Sequence[tuple[object, ...]], width: int) -> list[list[object]]:
    return [[r[i] for r in rows] for i in range(width)] if rows else [[] for _ in range(width)]


def changes_payload(
    origin: str,
    broadcast: dict[int, tuple[int, int]],
    targeted: dict[tuple[str, int], tuple[int, int]],
) -> str:
    """What other replicas need to wake their dispatchers and raise their backlog counts.

    ``{"o": origin, "b": {level: versions}, "t": {provider: {level: versions}}}``; when
    the targeted part would not fit a NOTIFY (8000 bytes), only the names, then only
    ``"all": true`` (each receiver then counts one more entry for every provider).
    """
    b = {str(level): stored for level, (_, stored) in broadcast.items() if stored}
    t: dict[str, dict[str, int]] = {}
    for (provider, level), (_, stored) in targeted.items():
        if stored:
            t.setdefault(provider, {})[str(level)] = stored
    text = json.dumps({"o": origin, "b": b, "t": t}, separators=(",", ":"))
    if len(text) <= _PAYLOAD_MAX:
        return text
    text = json.dumps({"o": origin, "b": b, "n": sorted(t)}, separators=(",", ":"))
    if len(text) <= _PAYLOAD_MAX:
        return text
    return json.dumps({"o": origin, "b": b, "all": True}, separators=(",", ":"))


async def upsert_rows(conn: Conn, rows: Sequence[Row], *, origin: str = "") -> Upserted:
    """Coalesce and store the rows (in arrival order), then announce them; the caller owns
    the transaction."""
    if not rows:
        return Upserted(last_seq=0, entries=int(await conn.fetchval(_ENTRIES)))
    b, t = coalesce_rows(rows)
    last = int(await conn.fetchval(_NEXT_SEQ, len(rows)))
    first = last - len(rows) + 1
    per_level: dict[int, tuple[int, int]] = {}
    per_provider: dict[tuple[str, int], tuple[int, int]] = {}
    if b:
        brows = [r for r, _ in b]
        seqs = [first + offset for _, offset in b]
        for r in await conn.fetch(_BROADCAST, *_columns(brows, 6), seqs):
            per_level[r["risk"]] = (int(r["inserted"]), int(r["stored"]))
    if t:
        trows = [r for r, _ in t]
        tseqs = [first + offset for _, offset in t]
        for r in await conn.fetch(_TARGETED, *_columns(trows, 7), tseqs):
            per_provider[(r["provider"], r["risk"])] = (int(r["inserted"]), int(r["stored"]))
    if per_level or per_provider:
        payload = changes_payload(origin, per_level, per_provider)
        await conn.execute("SELECT pg_notify($1, $2)", CHANGED_CHANNEL, payload)
    entries = int(await conn.fetchval(_ENTRIES))
    return Upserted(last_seq=last, broadcast=per_level, targeted=per_provider, entries=entries)


_Batch = list[Row]


class GroupCommit:
    """Concurrent writers share transactions: one in flight, the next one filling.

    ``commit(conn_factory, rows)`` runs ``upsert_rows`` for a whole group in one
    transaction; every caller of that group returns (or raises) when it commits.
    """

    def __init__(
        self,
        acquire: Callable[[], contextlib.AbstractAsyncContextManager[Conn]],
        *,
        max_rows: int = 20_000,
        on_commit: Callable[[Upserted], None] | None = None,
        origin: str = "",
    ) -> None:
        self._origin = origin
        self._acquire = acquire
        self._max_rows = max_rows
        self._on_commit = on_commit
        self._queue: list[tuple[_Batch, asyncio.Future[Upserted]]] = []
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = structlog.get_logger("forwarder.store")
        #: The last commit succeeded (readiness).
        self.ok = True

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="postgres-group-commit")

    async def stop(self) -> None:
        """Let queued writes commit, then stop."""
        if self._task is None:
            return
        if self._queue:
            self._wake.set()
            await asyncio.gather(*(f for _, f in self._queue), return_exceptions=True)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def add(self, rows: list[Row]) -> Upserted:
        """Commit ``rows`` (broadcast and targeted, in arrival order) with the next group."""
        fut: asyncio.Future[Upserted] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, fut))
        self._queued_rows += len(rows)
        self._wake.set()
        return await fut

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                group: list[tuple[_Batch, asyncio.Future[Upserted]]] = []
                n = 0
                while self._queue and (not group or n < self._max_rows):
                    batch, fut = self._queue.pop(0)
                    group.append((batch, fut))
                    n += len(batch)
                self._queued_rows -= n
                rows = [r for batch, _ in group for r in batch]
                try:
                    result = await self._commit(rows)
                except Exception as exc:
                    # Whatever failed, every waiter hears it (503): a surprise that ended
                    # this loop would leave ingest requests waiting forever.
                    if not isinstance(exc, StoreError):
                        self._log.exception("store_write_crashed", error=type(exc).__name__)
                        exc = StoreError(f"PostgreSQL write failed: {type(exc).__name__}: {exc}")
                    self.ok = False
                    self._log.warning("store_write_failed", error=str(exc))
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.ok = True
                for _, fut in group:
                    if not fut.done():
                        fut.set_result(result)
                if self._on_commit is not None:
                    self._on_commit(result)

    async def _commit(self, rows: list[Row]) -> Upserted:
        try:
            async with self._acquire() as conn, conn.transaction():
                return await upsert_rows(conn, rows, origin=self._origin)
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL write failed: {exc}") from exc
