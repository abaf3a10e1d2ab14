"""Ingest writes on PostgreSQL: one coalescing upsert per table per group commit.

Concurrent ingest requests of one replica queue up while a commit is in flight and share
the next one (:func:`group_commit`); a 202 is answered only after that transaction
committed. Every replica writes, so the commits of all replicas are ordered by one row
lock (``counters.seq``, taken first in each ingest transaction): sequence numbers are
handed out in commit order, which is what lets a provider's cursor move past seq N
knowing nothing below N can still appear.

Rows are sent as arrays (``unnest ... WITH ORDINALITY``): one round trip and one
statement per table however many signals the group holds. PostgreSQL refuses to update
one row twice in one statement, so a group is first coalesced in memory by the same
rule the upsert applies: the newest observation wins, on a tie the higher risk.

A group is one statement (:data:`_UPSERT`) committed on its own: one round trip, and the
ordering row lock is held only while the server runs it, never while a reply travels to
the replica and the next statement back (with several replicas, ingest commits queue on
that lock).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from forwarder.errors import StoreError
from forwarder.store.groupcommit import GroupCommit
from forwarder.store.postgres.conn import Conn
from forwarder.store.postgres.connect import DB_ERRORS

__all__ = [
    "CHANGED_CHANNEL",
    "BroadcastRow",
    "Row",
    "TargetedRow",
    "Upserted",
    "coalesce_rows",
    "group_commit",
    "upsert_rows",
]

#: NOTIFY channel; the payload is described at :data:`_UPSERT`.
CHANGED_CHANNEL = "forwarder_changed"

#: (ip, risk, message, ts_ms, expires_ms, received_ms)
BroadcastRow = tuple[str, int, str, int, int | None, int]
#: (provider, ip, risk, message, ts_ms, expires_ms, received_ms)
TargetedRow = tuple[str, str, int, str, int, int | None, int]

#: One statement, so one round trip, stores a whole group: it takes the sequence numbers
#: (the row lock that orders every replica's commits, held only while this statement and
#: its commit run), upserts both tables, counts what is new and announces the change.
#: $1-$7 broadcast columns and offsets, $8-$15 targeted, $16 rows in the group, $17 the
#: NOTIFY channel, $18 the origin. The announcement (when anything was stored) is
#: ``{"o": origin, "b": {level: versions}, "t": {provider: {level: versions}}}``; when
#: that would not fit a NOTIFY (8000 bytes), only the provider names (``"n"``), then only
#: ``"all": true`` (each receiver then counts one more entry for every provider). The
#: last row (kind 2) is the last sequence number and the stored entries after the commit.
_UPSERT = """
WITH seq AS (
    UPDATE counters SET value = value + $16 WHERE name = 'seq' RETURNING value
),
b AS (
    INSERT INTO signals AS s (ip, risk, message, ts_ms, expires_ms, received_ms, seq)
    SELECT u.ip, u.risk, u.message, u.ts_ms, u.expires_ms, u.received_ms,
           (SELECT value FROM seq) - $16 + 1 + u.off
      FROM unnest($1::text[], $2::smallint[], $3::text[], $4::bigint[], $5::bigint[],
                  $6::bigint[], $7::bigint[])
           AS u(ip, risk, message, ts_ms, expires_ms, received_ms, off)
    ON CONFLICT (ip) DO UPDATE SET
        risk = excluded.risk, message = excluded.message, ts_ms = excluded.ts_ms,
        expires_ms = excluded.expires_ms, received_ms = excluded.received_ms,
        seq = excluded.seq
    WHERE excluded.ts_ms > s.ts_ms OR (excluded.ts_ms = s.ts_ms AND excluded.risk > s.risk)
    RETURNING s.risk, (xmax = 0) AS inserted
),
t AS (
    INSERT INTO targeted AS t (provider, ip, risk, message, ts_ms, expires_ms, received_ms, seq)
    SELECT u.provider, u.ip, u.risk, u.message, u.ts_ms, u.expires_ms, u.received_ms,
           (SELECT value FROM seq) - $16 + 1 + u.off
      FROM unnest($8::text[], $9::text[], $10::smallint[], $11::text[], $12::bigint[],
                  $13::bigint[], $14::bigint[], $15::bigint[])
           AS u(provider, ip, risk, message, ts_ms, expires_ms, received_ms, off)
    ON CONFLICT (provider, ip) DO UPDATE SET
        risk = excluded.risk, message = excluded.message, ts_ms = excluded.ts_ms,
        expires_ms = excluded.expires_ms, received_ms = excluded.received_ms,
        seq = excluded.seq
    WHERE excluded.ts_ms > t.ts_ms OR (excluded.ts_ms = t.ts_ms AND excluded.risk > t.risk)
    RETURNING t.provider, t.risk, (xmax = 0) AS inserted
),
counted AS (
    UPDATE counters
       SET value = value + (SELECT count(*) FROM b WHERE inserted)
                         + (SELECT count(*) FROM t WHERE inserted)
     WHERE name = 'inserted'
 RETURNING value
),
per_level AS (SELECT risk, count(*) AS n FROM b GROUP BY risk),
per_provider AS (SELECT provider, risk, count(*) AS n FROM t GROUP BY provider, risk),
forms AS (
    SELECT jsonb_build_object('o', $18::text, 'b', bj.b, 't', tj.t)::text AS full_form,
           jsonb_build_object('o', $18::text, 'b', bj.b, 'n', tj.n)::text AS names_form,
           jsonb_build_object('o', $18::text, 'b', bj.b, 'all', true)::text AS all_form
      FROM (SELECT coalesce(jsonb_object_agg(risk, n), '{}') AS b FROM per_level) AS bj,
           (SELECT coalesce(jsonb_object_agg(provider, levels), '{}') AS t,
                   coalesce(jsonb_agg(provider ORDER BY provider), '[]') AS n
              FROM (SELECT provider, jsonb_object_agg(risk, n) AS levels
                      FROM per_provider GROUP BY provider) AS p) AS tj
),
announced AS (
    SELECT pg_notify($17, CASE WHEN length(full_form) <= 7000 THEN full_form
                               WHEN length(names_form) <= 7000 THEN names_form
                               ELSE all_form END)
      FROM forms
     WHERE EXISTS (SELECT FROM b) OR EXISTS (SELECT FROM t)
)
SELECT 0 AS kind, NULL::text AS provider, risk, count(*) FILTER (WHERE inserted) AS inserted,
       count(*) AS stored
  FROM b GROUP BY risk
UNION ALL
SELECT 1, provider, risk, count(*) FILTER (WHERE inserted), count(*) FROM t GROUP BY provider, risk
UNION ALL
SELECT 2, NULL, (SELECT count(*) FROM announced), (SELECT value FROM seq),
       (SELECT value FROM counted) - (SELECT value FROM counters WHERE name = 'deleted')
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


async def upsert_rows(conn: Conn, rows: Sequence[Row], *, origin: str = "") -> Upserted:
    """Coalesce and store the rows (in arrival order), then announce them: one statement,
    committed on its own unless the caller holds a transaction."""
    if not rows:
        return Upserted(last_seq=0, entries=int(await conn.fetchval(_ENTRIES)))
    b, t = coalesce_rows(rows)
    per_level: dict[int, tuple[int, int]] = {}
    per_provider: dict[tuple[str, int], tuple[int, int]] = {}
    last = entries = 0
    for r in await conn.fetch(
        _UPSERT,
        *_columns([r for r, _ in b], 6),
        [offset for _, offset in b],
        *_columns([r for r, _ in t], 7),
        [offset for _, offset in t],
        len(rows),
        CHANGED_CHANNEL,
        origin,
    ):
        if r["kind"] == 0:
            per_level[r["risk"]] = (int(r["inserted"]), int(r["stored"]))
        elif r["kind"] == 1:
            per_provider[(r["provider"], r["risk"])] = (int(r["inserted"]), int(r["stored"]))
        else:
            last, entries = int(r["inserted"]), int(r["stored"])
    return Upserted(last_seq=last, broadcast=per_level, targeted=per_provider, entries=entries)


def group_commit(
    acquire: Callable[[], contextlib.AbstractAsyncContextManager[Conn]],
    *,
    on_commit: Callable[[list[Row], Upserted], None] | None = None,
    origin: str = "",
) -> GroupCommit[Row, Upserted]:
    """Ingest's :class:`~forwarder.store.groupcommit.GroupCommit` on PostgreSQL: each
    group is :func:`upsert_rows` on a connection from ``acquire``."""
    log = structlog.get_logger("forwarder.store")

    async def commit(rows: list[Row]) -> Upserted:
        try:
            async with acquire() as conn:
                return await upsert_rows(conn, rows, origin=origin)
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL write failed: {exc}") from exc

    def failed(exc: Exception) -> StoreError:
        if not isinstance(exc, StoreError):
            log.exception("store_write_crashed", error=type(exc).__name__)
            exc = StoreError(f"PostgreSQL write failed: {type(exc).__name__}: {exc}")
        log.warning("store_write_failed", error=str(exc))
        return exc

    return GroupCommit(commit, name="postgres-group-commit", on_commit=on_commit, failed=failed)
