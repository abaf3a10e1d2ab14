"""Leases, acks, releases and ageing over the shared entry tables, for one provider.

The same design as the SQLite store (see :mod:`forwarder.store.sqlite`): broadcast
entries (``signals``) are shared; a provider's progress through them is its cursor per
level (``cursors``) plus what it settled out of order (``done``); targeted entries
(``targeted``) belong to one provider. What changes with several replicas:

* Only the replica owning a provider (:mod:`~forwarder.store.postgres.owners`) leases
  for it, so its in-flight set and leases (:class:`ProviderQueue`) live in that
  replica's memory, as in SQLite; a new owner starts with none, so at most the batch in
  flight at the old owner is sent again.
* Writes that move a provider's cursor are **fenced**: they happen only while the
  caller's epoch still owns the provider (the owner row is share-locked for the
  transaction), so a former owner waking up cannot move a cursor its successor relies on.
* A cursor that finds nothing live above it jumps to the last *committed* sequence
  number, read before the scan: ingest commits are ordered by that counter
  (:mod:`~forwarder.store.postgres.writer`), so every later version is above it.
* Collection deletes broadcast entries at or below the lowest cursor in the table (every
  tracked provider of every replica), and counts what it deleted. One transaction at a
  time collects; an ack that finds another collecting skips it (no lock waits on the
  ack path), and each replica's sweep collects what was skipped.

Every function takes a connection inside the caller's transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from forwarder.errors import StoreError
from forwarder.signals import RiskLevel, Signal
from forwarder.store.leased import BROADCAST, TARGETED, Item
from forwarder.store.postgres.conn import Conn
from forwarder.store.postgres.schema import ADVISORY_NAMESPACE

__all__ = [
    "LEVELS",
    "Fenced",
    "Item",
    "ProviderQueue",
    "advance",
    "attach",
    "collect",
    "lease",
    "release",
    "reload",
    "reload_many",
    "settle",
    "targeted_stored",
]

#: Risk levels as stored, highest first (the lease order).
LEVELS = (3, 2, 1)
#: Expired entries dropped per lease at most.
PURGE_PER_LEASE = 5_000
_PAGE = 512
#: Second key of the advisory lock only one collecting transaction holds at a time.
_COLLECT_LOCK = 2

_B_PAGE = (
    "SELECT ip, message, ts_ms, expires_ms, received_ms, seq FROM signals"
    " WHERE risk = $1 AND seq > $2 ORDER BY seq LIMIT $3"
)
_T_PAGE = (
    "SELECT ip, message, ts_ms, expires_ms, received_ms, seq FROM targeted"
    " WHERE provider = $1 AND risk = $2 AND seq > $3 ORDER BY seq LIMIT $4"
)
_B_ONE = "SELECT risk, ts_ms, seq FROM signals WHERE ip = $1"
_T_ONE = "SELECT risk, ts_ms, seq FROM targeted WHERE provider = $1 AND ip = $2"
_T_DELETE = (
    "WITH gone AS (DELETE FROM targeted WHERE provider = $1 AND ip = $2 AND seq = $3"
    " RETURNING 1), c AS (UPDATE counters SET value = value + (SELECT count(*) FROM gone)"
    " WHERE name = 'deleted') SELECT count(*) FROM gone"
)
_COMMITTED_SEQ = "SELECT value FROM counters WHERE name = 'seq'"
_B_LIVE_JOIN = (
    " FROM signals s JOIN unnest($1::text[], $2::bigint[]) AS u(ip, seq)"
    " ON s.ip = u.ip AND s.seq = u.seq"
)
#: Which of the (ip, seq) versions sent are still the stored ones, or only how many.
_B_LIVE = "SELECT s.ip, s.seq" + _B_LIVE_JOIN
_B_LIVE_COUNT = "SELECT count(*)" + _B_LIVE_JOIN
#: The cursor moves to $1; what it passed leaves ``done``, what is settled above stays.
_MOVE_CURSOR = (
    "WITH moved AS (UPDATE cursors SET seq = $1 WHERE provider = $2 AND risk = $3),"
    " passed AS (DELETE FROM done WHERE provider = $2 AND risk = $3 AND seq <= $1)"
    " INSERT INTO done (provider, risk, seq) SELECT $2, $3, unnest($4::bigint[])"
    " ON CONFLICT DO NOTHING"
)
_BLOCKER = (
    "SELECT s.seq FROM signals s WHERE s.risk = $1 AND s.seq > $2"
    " AND s.seq NOT IN (SELECT unnest($3::bigint[])) ORDER BY s.seq LIMIT 1"
)


class Fenced(StoreError):
    """The caller's epoch no longer owns the provider: it must stop dispatching it.

    A ``StoreError``, so a dispatcher that meets it backs off like any store failure
    (and its coordinator stops it when the lease is found lost).
    """


@dataclass(slots=True)
class ProviderQueue:
    """One provider's progress, as the replica owning it keeps it."""

    provider: str
    cursor: dict[int, int]
    done: set[tuple[int, int]] = field(default_factory=set)
    inflight: dict[str, Item] = field(default_factory=dict)
    leases: dict[int, list[Item]] = field(default_factory=dict)
    #: (replica id, epoch) the cursor writes are fenced with; None when not coordinated.
    fence: tuple[str, int] | None = None
    #: False once a look found no targeted entry and no targeted commit was heard since
    #: (:func:`targeted_stored`): leases and acks then skip looking (a broadcast-only
    #: provider saves a round trip on each).
    may_have_targeted: bool = True
    targeted_seen: int = 0


def targeted_stored(q: ProviderQueue) -> None:
    """A commit (this replica's or announced by another) stored targeted entries for
    ``q``'s provider, or may have: look again."""
    q.may_have_targeted = True
    q.targeted_seen += 1


async def _has_targeted(conn: Conn, q: ProviderQueue) -> bool:
    if not q.may_have_targeted:
        return False
    seen = q.targeted_seen
    found = (
        await conn.fetchval("SELECT 1 FROM targeted WHERE provider = $1 LIMIT 1", q.provider)
        is not None
    )
    if not found and seen == q.targeted_seen:
        q.may_have_targeted = False  # nothing heard while looking: rely on the news
    return found


async def _check_fence(conn: Conn, q: ProviderQueue) -> int:
    """Hold the owner row (share-locked) if the caller's epoch still owns the provider,
    else raise :class:`Fenced`; return the last committed sequence number (read here,
    before any scan: every version committed later has a higher number)."""
    if q.fence is None:
        return int(await conn.fetchval(_COMMITTED_SEQ))
    owner, epoch = q.fence
    row = await conn.fetchrow(
        "SELECT (SELECT 1 FROM provider_owner WHERE provider = $1 AND owner = $2"
        "         AND epoch = $3 AND expires_at > clock_timestamp() FOR SHARE) AS held,"
        " (SELECT value FROM counters WHERE name = 'seq') AS committed",
        q.provider,
        owner,
        epoch,
    )
    if row is None or row["held"] is None:
        raise Fenced(f"{owner} no longer owns {q.provider} under epoch {epoch}")
    return int(row["committed"])


async def attach(
    conn: Conn, provider: str, *, fence: tuple[str, int] | None = None
) -> ProviderQueue:
    """Track ``provider`` (new: from the broadcasts stored from now on) and load its progress."""
    await conn.execute(
        "INSERT INTO cursors (provider, risk, seq)"
        " SELECT $1, l, (SELECT value FROM counters WHERE name = 'seq')"
        " FROM unnest($2::smallint[]) AS l ON CONFLICT DO NOTHING",
        provider,
        list(LEVELS),
    )
    cursor = {
        r["risk"]: r["seq"]
        for r in await conn.fetch("SELECT risk, seq FROM cursors WHERE provider = $1", provider)
    }
    done = {
        (r["risk"], r["seq"])
        for r in await conn.fetch("SELECT risk, seq FROM done WHERE provider = $1", provider)
    }
    return ProviderQueue(provider, cursor, done, fence=fence)


async def reload(conn: Conn, q: ProviderQueue) -> None:
    """Read the provider's cursor and out-of-order settlements again (another replica may
    have moved them), keeping the object (its leases and fence)."""
    fresh = await attach(conn, q.provider, fence=q.fence)
    q.cursor = fresh.cursor
    q.done = fresh.done


async def reload_many(conn: Conn, qs: Sequence[ProviderQueue]) -> list[ProviderQueue]:
    """:func:`reload` for many attached providers in two queries; returns those whose
    progress changed (another replica moved it)."""
    if not qs:
        return []
    names = [q.provider for q in qs]
    cursors: dict[str, dict[int, int]] = defaultdict(dict)
    for r in await conn.fetch(
        "SELECT provider, risk, seq FROM cursors WHERE provider = ANY($1::text[])", names
    ):
        cursors[r["provider"]][r["risk"]] = r["seq"]
    done: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for r in await conn.fetch(
        "SELECT provider, risk, seq FROM done WHERE provider = ANY($1::text[])", names
    ):
        done[r["provider"]].add((r["risk"], r["seq"]))
    changed = []
    for q in qs:
        cursor = cursors.get(q.provider) or q.cursor
        if cursor != q.cursor or done[q.provider] != q.done:
            q.cursor, q.done = cursor, done[q.provider]
            changed.append(q)
    return changed


_Row = tuple[int, str, str, int, int | None, int]


class _Stream:
    """Rows above a seq in seq order, fetched a page at a time (keyset pagination)."""

    def __init__(self, conn: Conn, sql: str, head: tuple[object, ...], after: int, kind: int):
        self._conn, self._sql, self._head, self._after, self.kind = conn, sql, head, after, kind
        self._rows: list[_Row] = []
        self._at = 0
        self._exhausted = False

    async def peek(self) -> _Row | None:
        if self._at < len(self._rows):
            return self._rows[self._at]
        if self._exhausted:
            return None
        rows = await self._conn.fetch(self._sql, *self._head, self._after, _PAGE)
        self._rows = [
            (r["seq"], r["ip"], r["message"], r["ts_ms"], r["expires_ms"], r["received_ms"])
            for r in rows
        ]
        self._at = 0
        self._exhausted = len(rows) < _PAGE
        if rows:
            self._after = rows[-1]["seq"]
        return self._rows[0] if self._rows else None

    def pop(self) -> None:
        self._at += 1


async def _merged(streams: Sequence[_Stream]) -> tuple[_Stream, _Row] | None:
    best: tuple[_Stream, _Row] | None = None
    for s in streams:
        head = await s.peek()
        if head is not None and (best is None or head[0] < best[1][0]):
            best = (s, head)
    if best is not None:
        best[0].pop()
    return best


def _beats(a_ts: int, a_risk: int, a_seq: int, b_ts: int, b_risk: int, b_seq: int) -> bool:
    """Okta's coalescing rule: the newest observation wins; on a tie the higher risk; on
    a full tie the one stored first (as within one table, an equal version replaces
    nothing)."""
    return (a_ts, a_risk, -a_seq) > (b_ts, b_risk, -b_seq)


async def _delete_targeted(conn: Conn, provider: str, ip: str, seq: int) -> int:
    return int(await conn.fetchval(_T_DELETE, provider, ip, seq))


async def lease(
    conn: Conn,
    q: ProviderQueue,
    lease_id: int,
    *,
    limit: int,
    now_ms: int,
    max_age_ms: int,
    margin_ms: int,
) -> tuple[list[Signal], dict[int, int]]:
    """Lease up to ``limit`` entries for the provider; return them and how many expired
    (per level)."""
    provider = q.provider
    keep: list[Signal] = []
    items: list[Item] = []
    expired = 0
    expired_at: dict[int, int] = defaultdict(int)
    too_old = now_ms - max_age_ms
    expiry_floor = now_ms + margin_ms
    has_targeted = await _has_targeted(conn, q)
    # Entries settled out of order wait for the cursor; the entry that held it back may
    # have been replaced (moved to a newer number) since: try again.
    settled: set[int] = {level for level, _ in q.done}
    for level in LEVELS:
        risk = RiskLevel(level)
        streams = [_Stream(conn, _B_PAGE, (level,), q.cursor[level], BROADCAST)]
        if has_targeted:
            streams.append(_Stream(conn, _T_PAGE, (provider, level), -1, TARGETED))
        finished = True
        while (nxt := await _merged(streams)) is not None:
            stream, (seq, ip, message, ts_ms, expires_ms, received_ms) = nxt
            kind = stream.kind
            if len(keep) >= limit or expired >= PURGE_PER_LEASE:
                finished = False
                break
            if kind == BROADCAST and (level, seq) in q.done:
                continue
            if ip in q.inflight:
                continue
            if ts_ms < too_old or (expires_ms is not None and expires_ms <= expiry_floor):
                expired += 1
                expired_at[level] += 1
                if kind == BROADCAST:
                    q.done.add((level, seq))
                    settled.add(level)
                    other = await conn.fetchrow(_T_ONE, provider, ip) if has_targeted else None
                    if other is not None and not _beats(
                        other["ts_ms"], other["risk"], other["seq"], ts_ms, level, seq
                    ):
                        # It had superseded this provider's own older entry: both are gone.
                        await _delete_targeted(conn, provider, ip, other["seq"])
                else:
                    await _delete_targeted(conn, provider, ip, seq)
                continue
            if kind == BROADCAST and has_targeted:
                other = await conn.fetchrow(_T_ONE, provider, ip)
                if other is not None:
                    if _beats(other["ts_ms"], other["risk"], other["seq"], ts_ms, level, seq):
                        # This provider's own, newer observation is sent instead.
                        q.done.add((level, seq))
                        settled.add(level)
                        continue
                    await _delete_targeted(conn, provider, ip, other["seq"])
            elif kind == TARGETED:
                other = await conn.fetchrow(_B_ONE, ip)
                if other is not None:
                    b_risk, b_seq = other["risk"], other["seq"]
                    b_pending = b_seq > q.cursor[b_risk] and (b_risk, b_seq) not in q.done
                    if _beats(other["ts_ms"], b_risk, b_seq, ts_ms, level, seq):
                        # The broadcast is newer: sent (or already sent) instead of this one.
                        await _delete_targeted(conn, provider, ip, seq)
                        continue
                    if b_pending:
                        q.done.add((b_risk, b_seq))
                        settled.add(b_risk)
            keep.append(Signal(ip, risk, message, ts_ms, expires_ms, received_ms))
            item = Item(kind, ip, level, seq, ts_ms)
            items.append(item)
            q.inflight[ip] = item
        if not finished:
            break
    if expired >= PURGE_PER_LEASE and keep:
        # Purge a large expired backlog in slices; lease nothing this time rather than
        # send a call that more fresh entries could have filled.
        for item in items:
            q.inflight.pop(item.ip, None)
        keep, items = [], []
    if items:
        q.leases[lease_id] = items
    if settled:
        await _advance(conn, q, settled)
    return keep, dict(expired_at)


async def _advance(
    conn: Conn, q: ProviderQueue, levels: Collection[int], *, committed: int | None = None
) -> None:
    """Move the cursors over what the provider settled, persist them, collect garbage.

    ``committed``: the caller checked the fence in this transaction already, and read this.
    """
    if committed is None:
        committed = await _check_fence(conn, q)
    for level in levels:
        at = q.cursor[level]
        settled = [seq for lvl, seq in q.done if lvl == level and seq > at]
        # The first entry above the cursor not settled holds it back (found by the
        # server: one index range, no page of numbers sent back).
        blocker = await conn.fetchval(_BLOCKER, level, at, settled)
        # Nothing live above: every later version is newer than what was committed.
        at = blocker - 1 if blocker is not None else max(at, committed)
        q.cursor[level] = at
        q.done -= {(lvl, seq) for lvl, seq in q.done if lvl == level and seq <= at}
        above = [seq for lvl, seq in q.done if lvl == level]
        await conn.execute(_MOVE_CURSOR, at, q.provider, level, above)
        await _collect(conn, level)


async def _collect(conn: Conn, level: int) -> None:
    """Delete broadcast entries every tracked provider (of every replica) has settled.

    Only one transaction at a time collects (a transaction-scoped advisory lock, tried,
    never waited for): the others skip it rather than queue on the deleted rows and the
    ``deleted`` counter row until the collector commits. What they skip is collected by
    the next ack or by :func:`collect`, which each replica runs with its sweeps.
    """
    if not await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock($1, $2)", ADVISORY_NAMESPACE, _COLLECT_LOCK
    ):
        return
    await conn.execute(
        "WITH gone AS (DELETE FROM signals WHERE risk = $1"
        " AND seq <= (SELECT min(seq) FROM cursors WHERE risk = $1) RETURNING 1)"
        " UPDATE counters SET value = value + (SELECT count(*) FROM gone)"
        " WHERE name = 'deleted'",
        level,
    )


async def collect(conn: Conn) -> None:
    """Collect every level (an ack whose collection was skipped may have been the last)."""
    for level in LEVELS:
        await _collect(conn, level)


async def settle(
    conn: Conn, q: ProviderQueue, lease_id: int, *, only: Collection[str] | None = None
) -> int:
    """Settle a lease's entries (all, or those whose ip is in ``only``); free the rest.

    Returns how many settled entries were still the stored version.
    """
    items = q.leases.pop(lease_id, [])
    for item in items:
        if q.inflight.get(item.ip) is item:
            del q.inflight[item.ip]
    chosen = items if only is None else [i for i in items if i.ip in only]
    if not chosen:
        return 0
    committed = await _check_fence(conn, q)
    broadcast = [i for i in chosen if i.kind == BROADCAST]
    has_targeted = await _has_targeted(conn, q)
    live: set[tuple[str, int]] = set()
    removed = 0
    if broadcast:
        ips, seqs = [i.ip for i in broadcast], [i.seq for i in broadcast]
        if has_targeted:
            live = {(r["ip"], r["seq"]) for r in await conn.fetch(_B_LIVE, ips, seqs)}
        else:  # only how many: one number back instead of a row per entry
            removed = int(await conn.fetchval(_B_LIVE_COUNT, ips, seqs))
    levels: set[int] = set()
    for item in broadcast:
        q.done.add((item.risk, item.seq))
        levels.add(item.risk)
        if has_targeted:
            current = (item.ip, item.seq) in live
            other = await conn.fetchrow(_T_ONE, q.provider, item.ip)
            if other is not None:
                if _beats(
                    other["ts_ms"], other["risk"], other["seq"], item.ts_ms, item.risk, item.seq
                ):
                    # A newer targeted observation stored meanwhile is now this
                    # provider's version.
                    current = False
                else:
                    # This provider has just been sent news as new as that one.
                    await _delete_targeted(conn, q.provider, item.ip, other["seq"])
            removed += current
    for item in (i for i in chosen if i.kind == TARGETED):
        current = await _delete_targeted(conn, q.provider, item.ip, item.seq) > 0
        other = await conn.fetchrow(_B_ONE, item.ip)
        if other is not None:
            b_risk, b_seq = other["risk"], other["seq"]
            if b_seq > q.cursor[b_risk] and (b_risk, b_seq) not in q.done:
                if _beats(other["ts_ms"], b_risk, b_seq, item.ts_ms, item.risk, item.seq):
                    # A newer broadcast stored meanwhile is now this provider's version.
                    current = False
                else:
                    # Stored while this was in flight but observed earlier: older news
                    # for this provider, never sent after the newer one.
                    q.done.add((b_risk, b_seq))
                    levels.add(b_risk)
        removed += current
    levels |= {level for level, _ in q.done}
    if levels:
        await _advance(conn, q, levels, committed=committed)
    return removed


async def advance(conn: Conn, q: ProviderQueue) -> None:
    """Try again to move cursors held back by entries since replaced (after a sweep)."""
    if q.done:
        await _advance(conn, q, {level for level, _ in q.done})


def release(q: ProviderQueue, lease_id: int) -> None:
    """Free a lease's entries for a later attempt (nothing in the database changes)."""
    for item in q.leases.pop(lease_id, []):
        if q.inflight.get(item.ip) is item:
            del q.inflight[item.ip]
