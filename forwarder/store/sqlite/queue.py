"""Leases, acks, releases and dead letters over the two entry tables, per provider.

Runs on the store thread only (every function takes the connection and the
:class:`QueueState`); the caller owns the transaction. See :mod:`forwarder.store.sqlite`
for the design: broadcast entries (``signals``) are shared, each provider's progress
through them is its cursor per level plus the few entries it settled out of order
(``done``); targeted entries (``targeted``) belong to one provider.
"""

from __future__ import annotations

import bisect
import heapq
import sqlite3
from collections import defaultdict
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from forwarder.signals import RiskLevel, Signal
from forwarder.store.leased import BROADCAST, TARGETED, Item
from forwarder.store.sqlite.counts import LEVELS, broadcast_pending

__all__ = ["Item", "QueueState", "lease", "load", "settle", "sweep"]

#: Expired entries dropped per lease at most (about 20 ms of the store thread).
PURGE_PER_LEASE = 5_000
_PAGE = 512

_B_PAGE = (
    "SELECT ip, message, ts_ms, expires_ms, received_ms, seq FROM signals"
    " WHERE risk = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_T_PAGE = (
    "SELECT ip, message, ts_ms, expires_ms, received_ms, seq FROM targeted"
    " WHERE provider = ? AND risk = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_B_ONE = "SELECT risk, ts_ms, seq FROM signals WHERE ip = ?"
_T_ONE = "SELECT risk, ts_ms, seq FROM targeted WHERE provider = ? AND ip = ?"
_T_DELETE = "DELETE FROM targeted WHERE provider = ? AND ip = ? AND seq = ?"
#: Broadcast versions whose leased objects are kept for the next provider's lease.
SHARED_MAX = 50_000
#: RiskLevel by stored integer, without the enum's call per row.
_RISK = {int(level): level for level in RiskLevel}


@dataclass(slots=True)
class QueueState:
    """What the store thread keeps in memory beside the file (rebuilt at open)."""

    #: Highest sequence number handed out; every later version is above every cursor.
    last_seq: int = 0
    #: provider -> level -> seq: every live broadcast entry at or below it is settled.
    cursors: dict[str, dict[int, int]] = field(default_factory=dict)
    #: provider -> {(level, seq)} settled above the cursor (out of order; usually empty).
    done: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    #: provider -> ip -> leased item (leases belong to this process).
    inflight: dict[str, dict[str, Item]] = field(default_factory=dict)
    leases: dict[int, tuple[str, list[Item]]] = field(default_factory=dict)
    #: Stored entries per provider and level ("" = broadcast), from the ``counts`` table.
    stored: dict[str, dict[int, int]] = field(default_factory=dict)
    #: Broadcast versions ever stored per level (new entries and replacements).
    added: dict[int, int] = field(default_factory=dict)
    #: Broadcast backlog estimate: base + (added - mark); exact when mark == added.
    base: dict[str, dict[int, int]] = field(default_factory=dict)
    mark: dict[str, dict[int, int]] = field(default_factory=dict)
    #: Level -> seq up to which broadcast entries were collected.
    collected: dict[int, int] = field(default_factory=dict)
    #: seq -> the leased objects of that broadcast version, shared by every provider's
    #: lease (a sequence number names one immutable version): 1,000 providers leasing
    #: the same 1,000 entries hold 1,000 objects, not a million. Bounded, oldest first out.
    shared: dict[int, tuple[Signal, Item]] = field(default_factory=dict)

    def pending(self, provider: str) -> dict[RiskLevel, int]:
        """Backlog of ``provider`` by level (in flight included); never an undercount."""
        out: dict[RiskLevel, int] = {}
        base = self.base.get(provider)
        mark = self.mark.get(provider, {})
        targeted = self.stored.get(provider, {})
        for level in LEVELS:
            n = targeted.get(level, 0)
            if base is not None:
                n += base.get(level, 0) + self.added.get(level, 0) - mark.get(level, 0)
            if n > 0:
                out[RiskLevel(level)] = n
        return out

    def entries(self) -> int:
        """Stored entries (what ``max_pending`` bounds)."""
        return sum(sum(levels.values()) for levels in self.stored.values())

    def resync(self, provider: str, exact: dict[int, int]) -> None:
        self.base[provider] = {lvl: exact.get(lvl, 0) for lvl in LEVELS}
        self.mark[provider] = dict(self.added)


def read_counts(db: sqlite3.Connection, st: QueueState) -> None:
    """Reload stored-entry counts and the broadcast version counters."""
    stored: dict[str, dict[int, int]] = defaultdict(dict)
    for provider, risk, n, added in db.execute("SELECT provider, risk, n, added FROM counts"):
        if n:
            stored[provider][risk] = n
        if provider == "":
            st.added[risk] = added
    st.stored = dict(stored)


def load(db: sqlite3.Connection) -> QueueState:
    """Rebuild the in-memory state from the file (no leases: they died with the process)."""
    st = QueueState()
    seqs = [
        db.execute(f"SELECT max(seq) FROM {table}").fetchone()[0]  # noqa: S608 - fixed names
        for table in ("signals", "targeted", "cursors", "done")
    ]
    st.last_seq = max((s for s in seqs if s is not None), default=0)
    for provider, risk, seq in db.execute("SELECT provider, risk, seq FROM cursors"):
        st.cursors.setdefault(provider, {})[risk] = seq
    for provider, risk, seq in db.execute("SELECT provider, risk, seq FROM done"):
        st.done.setdefault(provider, set()).add((risk, seq))
    for cursor in st.cursors.values():
        for level in LEVELS:
            cursor.setdefault(level, 0)
    read_counts(db, st)
    exact = broadcast_pending(db, st.cursors, st.done)
    for provider in st.cursors:
        st.resync(provider, exact[provider])
    st.collected = dict.fromkeys(LEVELS, -1)
    return st


def attach(db: sqlite3.Connection, st: QueueState, provider: str) -> None:
    """Start tracking ``provider``: it is sent broadcasts stored from now on."""
    if provider in st.cursors:
        return
    st.cursors[provider] = dict.fromkeys(LEVELS, st.last_seq)
    db.executemany(
        "INSERT INTO cursors (provider, risk, seq) VALUES (?, ?, ?)",
        [(provider, level, st.last_seq) for level in LEVELS],
    )
    st.resync(provider, {})


def _pages(
    db: sqlite3.Connection, sql: str, head: tuple[object, ...], after: int, kind: int
) -> Iterator[tuple[int, int, str, str, int, int | None, int]]:
    """Rows above ``after`` in seq order, fetched a page at a time (keyset pagination)."""
    while True:
        rows = db.execute(sql, (*head, after, _PAGE)).fetchall()
        for ip, message, ts_ms, expires_ms, received_ms, seq in rows:
            yield seq, kind, ip, message, ts_ms, expires_ms, received_ms
        if len(rows) < _PAGE:
            return
        after = rows[-1][5]


def _beats(a_ts: int, a_risk: int, a_seq: int, b_ts: int, b_risk: int, b_seq: int) -> bool:
    """Okta's coalescing rule: the newest observation wins; on a tie the higher risk; on
    a full tie the one stored first (as within one table, an equal version replaces
    nothing)."""
    return (a_ts, a_risk, -a_seq) > (b_ts, b_risk, -b_seq)


def lease(
    db: sqlite3.Connection,
    st: QueueState,
    provider: str,
    lease_id: int,
    *,
    limit: int,
    now_ms: int,
    max_age_ms: int,
    margin_ms: int,
) -> tuple[list[Signal], int]:
    """Lease up to ``limit`` entries for ``provider``; return them and how many expired."""
    keep: list[Signal] = []
    items: list[Item] = []
    expired = 0
    too_old = now_ms - max_age_ms
    # A subject is never sent after its own expiry (nor within the margin of it).
    expiry_floor = now_ms + margin_ms
    inflight = st.inflight.setdefault(provider, {})
    cursor = st.cursors.get(provider)
    done = st.done.setdefault(provider, set())
    has_targeted = any(st.stored.get(provider, {}).values())
    # Entries settled out of order wait for the cursor; the entry that held it back may
    # have been replaced (moved to a newer number) since: try again.
    settled: set[int] = {level for level, _ in done}
    base = st.base.get(provider)
    visited: dict[int, int] = {}
    complete: list[int] = []
    shared = st.shared
    for level in LEVELS:
        risk = _RISK[level]
        streams = []
        if cursor is not None:
            streams.append(_pages(db, _B_PAGE, (level,), cursor[level], BROADCAST))
        if has_targeted:
            streams.append(_pages(db, _T_PAGE, (provider, level), -1, TARGETED))
        pending_seen = 0
        finished = True
        for seq, kind, ip, message, ts_ms, expires_ms, received_ms in heapq.merge(*streams):
            if len(keep) >= limit or expired >= PURGE_PER_LEASE:
                finished = False
                break
            if kind == BROADCAST and (level, seq) in done:
                continue
            if ip in inflight:
                pending_seen += kind == BROADCAST
                continue
            # signals.sendable(): not older than max age, not within the margin of expiry.
            if ts_ms < too_old or (expires_ms is not None and expires_ms <= expiry_floor):
                expired += 1
                if kind == BROADCAST:
                    _settle_one(st, provider, level, seq, live=True)
                    settled.add(level)
                    other = db.execute(_T_ONE, (provider, ip)).fetchone() if has_targeted else None
                    if other is not None and not _beats(
                        other[1], other[0], other[2], ts_ms, level, seq
                    ):
                        # It had superseded this provider's own older entry: both are gone.
                        db.execute(_T_DELETE, (provider, ip, other[2]))
                else:
                    db.execute(_T_DELETE, (provider, ip, seq))
                continue
            if kind == BROADCAST and has_targeted:
                other = db.execute(_T_ONE, (provider, ip)).fetchone()
                if other is not None:
                    t_risk, t_ts, t_seq = other
                    if _beats(t_ts, t_risk, t_seq, ts_ms, level, seq):
                        # This provider's own, newer observation is sent instead.
                        _settle_one(st, provider, level, seq, live=True)
                        settled.add(level)
                        continue
                    db.execute(_T_DELETE, (provider, ip, t_seq))
            elif kind == TARGETED and cursor is not None:
                other = db.execute(_B_ONE, (ip,)).fetchone()
                if other is not None:
                    b_risk, b_ts, b_seq = other
                    b_pending = b_seq > cursor[b_risk] and (b_risk, b_seq) not in done
                    if _beats(b_ts, b_risk, b_seq, ts_ms, level, seq):
                        # The broadcast is newer: sent (or already sent) instead of this one.
                        db.execute(_T_DELETE, (provider, ip, seq))
                        continue
                    if b_pending:
                        _settle_one(st, provider, b_risk, b_seq, live=True)
                        settled.add(b_risk)
            if kind == BROADCAST:
                hit = shared.get(seq)
                if hit is None:
                    hit = (
                        Signal(ip, risk, message, ts_ms, expires_ms, received_ms),
                        Item(kind, ip, level, seq, ts_ms),
                    )
                    if len(shared) >= SHARED_MAX:
                        del shared[next(iter(shared))]
                    shared[seq] = hit
                signal, item = hit
            else:
                signal = Signal(ip, risk, message, ts_ms, expires_ms, received_ms)
                item = Item(kind, ip, level, seq, ts_ms)
            keep.append(signal)
            items.append(item)
            inflight[ip] = item
            pending_seen += kind == BROADCAST
        visited[level] = pending_seen
        if finished:
            complete.append(level)
        else:
            break
    if expired >= PURGE_PER_LEASE and keep:
        # The one store thread serves every provider and ingest: purge a large expired
        # backlog in slices, and lease nothing this time rather than send a call that
        # more fresh entries could have filled.
        for item in items:
            inflight.pop(item.ip, None)
        keep, items = [], []
        complete = []
    if items:
        st.leases[lease_id] = (provider, items)
    if base is not None and cursor is not None:
        # Every entry above the cursor of a fully walked level was seen: the count is exact.
        for level in complete:
            base[level] = visited[level]
            st.mark[provider][level] = st.added.get(level, 0)
    if settled:
        _advance(db, st, provider, settled)
    return keep, expired


def _settle_one(st: QueueState, provider: str, level: int, seq: int, *, live: bool) -> None:
    st.done.setdefault(provider, set()).add((level, seq))
    base = st.base.get(provider)
    if live and base is not None:
        base[level] = base.get(level, 0) - 1


def _advance(
    db: sqlite3.Connection, st: QueueState, provider: str, levels: Collection[int]
) -> None:
    """Move the provider's cursors over what it settled, persist them, collect garbage."""
    cursor = st.cursors.get(provider)
    if cursor is None:
        return
    done = st.done.setdefault(provider, set())
    for level in levels:
        at = cursor[level]
        while True:
            rows = db.execute(
                "SELECT seq FROM signals WHERE risk = ? AND seq > ? ORDER BY seq LIMIT ?",
                (level, at, _PAGE),
            ).fetchall()
            blocked = False
            for (seq,) in rows:
                if (level, seq) in done:
                    at = seq
                else:
                    # Nothing live lies between the last settled entry and this one.
                    at = seq - 1
                    blocked = True
                    break
            if blocked:
                break
            if len(rows) < _PAGE:
                at = st.last_seq  # nothing live above: every later version is newer
                break
        cursor[level] = at
        stale = {(lvl, seq) for lvl, seq in done if lvl == level and seq <= at}
        done -= stale
        db.execute(
            "UPDATE cursors SET seq = ? WHERE provider = ? AND risk = ?", (at, provider, level)
        )
        db.execute(
            "DELETE FROM done WHERE provider = ? AND risk = ? AND seq <= ?", (provider, level, at)
        )
        above = [(provider, lvl, seq) for lvl, seq in done if lvl == level]
        if above:
            db.executemany("INSERT OR IGNORE INTO done (provider, risk, seq) VALUES (?,?,?)", above)
        _collect(db, st, level)


def _collect(db: sqlite3.Connection, st: QueueState, level: int) -> None:
    """Delete broadcast entries every tracked provider has settled."""
    if not st.cursors:
        return
    floor = min(c[level] for c in st.cursors.values())
    if floor > st.collected.get(level, -1):
        db.execute("DELETE FROM signals WHERE risk = ? AND seq <= ?", (level, floor))
        st.collected[level] = floor


def settle(
    db: sqlite3.Connection,
    st: QueueState,
    lease_id: int,
    *,
    only: Collection[str] | None = None,
) -> int:
    """Settle a lease's entries (all, or those whose ip is in ``only``); free the rest.

    Settling a broadcast entry marks it done for this provider; a targeted entry is
    deleted, but only in the version that was leased: a newer one stays pending.
    Returns how many settled entries were still the stored version.
    """
    provider, items = st.leases.pop(lease_id, ("", []))
    inflight = st.inflight.get(provider, {})
    for item in items:
        if inflight.get(item.ip) is item:
            del inflight[item.ip]
    chosen = items if only is None else [i for i in items if i.ip in only]
    if not chosen:
        return 0
    broadcast = [i for i in chosen if i.kind == BROADCAST]
    # Which leased versions are still the stored ones: a sequence number names one
    # version, so a covering range read of the order index per level answers it (a
    # lease is a run of consecutive entries) without a lookup per ip.
    live: set[int] = set()
    spans: dict[int, tuple[int, int]] = {}
    for i in broadcast:
        lo, hi = spans.get(i.risk, (i.seq, i.seq))
        spans[i.risk] = (min(lo, i.seq), max(hi, i.seq))
    for risk, (lo, hi) in spans.items():
        live.update(
            seq
            for (seq,) in db.execute(
                "SELECT seq FROM signals WHERE risk = ? AND seq BETWEEN ? AND ?", (risk, lo, hi)
            )
        )
    levels: set[int] = set()
    has_targeted = any(st.stored.get(provider, {}).values())
    removed = 0
    for item in broadcast:
        current = item.seq in live
        _settle_one(st, provider, item.risk, item.seq, live=current)
        levels.add(item.risk)
        if has_targeted:
            other = db.execute(_T_ONE, (provider, item.ip)).fetchone()
            if other is not None:
                t_risk, t_ts, t_seq = other
                if _beats(t_ts, t_risk, t_seq, item.ts_ms, item.risk, item.seq):
                    # A newer targeted observation stored meanwhile is now this
                    # provider's version.
                    current = False
                else:
                    # This provider has just been sent news as new as that one.
                    db.execute(_T_DELETE, (provider, item.ip, t_seq))
        removed += current
    targeted = [i for i in chosen if i.kind == TARGETED]
    cursor = st.cursors.get(provider)
    done = st.done.setdefault(provider, set())
    for item in targeted:
        current = db.execute(_T_DELETE, (provider, item.ip, item.seq)).rowcount > 0
        other = db.execute(_B_ONE, (item.ip,)).fetchone() if cursor is not None else None
        if cursor is not None and other is not None:
            b_risk, b_ts, b_seq = other
            if b_seq > cursor[b_risk] and (b_risk, b_seq) not in done:
                if _beats(b_ts, b_risk, b_seq, item.ts_ms, item.risk, item.seq):
                    # A newer broadcast stored meanwhile is now this provider's version.
                    current = False
                else:
                    # Stored while this was in flight but observed earlier: older news
                    # for this provider, never sent after the newer one.
                    _settle_one(st, provider, b_risk, b_seq, live=True)
                    levels.add(b_risk)
        removed += current
    levels |= {level for level, _ in done}
    if levels:
        _advance(db, st, provider, levels)
    return removed


def release(st: QueueState, lease_id: int) -> None:
    """Free a lease's entries for a later attempt (nothing on disk changes)."""
    provider, items = st.leases.pop(lease_id, ("", []))
    inflight = st.inflight.get(provider, {})
    for item in items:
        if inflight.get(item.ip) is item:
            del inflight[item.ip]


def sweep(
    db: sqlite3.Connection, st: QueueState, *, cutoff_ms: int, batch: int = 20_000
) -> tuple[dict[str, int], bool]:
    """Drop up to ``batch`` entries of each table observed before ``cutoff_ms``.

    Returns, per provider, how many it never sent, and whether more remain.
    """
    expired: dict[str, int] = defaultdict(int)
    # What is on the wire is not aged out under it: its lease settles it.
    busy = {ip for held in st.inflight.values() for ip in held}
    found = db.execute(
        "SELECT ip, risk, seq FROM signals WHERE ts_ms < ? LIMIT ?", (cutoff_ms, batch)
    ).fetchall()
    rows = [r for r in found if r[0] not in busy]
    if rows:
        by_level: dict[int, list[int]] = defaultdict(list)
        for _, risk, seq in rows:
            by_level[risk].append(seq)
        for seqs in by_level.values():
            seqs.sort()
        for provider, cursor in st.cursors.items():
            done = st.done.get(provider, set())
            for level, seqs in by_level.items():
                above = len(seqs) - bisect.bisect_right(seqs, cursor[level])
                if done:
                    swept = set(seqs)
                    above -= sum(1 for lvl, seq in done if lvl == level and seq in swept)
                if above > 0:
                    expired[provider] += above
                    base = st.base.get(provider)
                    if base is not None:
                        base[level] = base.get(level, 0) - above
            if done:
                gone = {(lvl, seq) for lvl, seqs in by_level.items() for seq in seqs}
                done -= gone
        db.executemany("DELETE FROM signals WHERE ip = ?", [(ip,) for ip, _, _ in rows])
    found_t = db.execute(
        "SELECT provider, ip FROM targeted WHERE ts_ms < ? LIMIT ?", (cutoff_ms, batch)
    ).fetchall()
    old = [(p, ip) for p, ip in found_t if ip not in st.inflight.get(p, {})]
    for provider, _ in old:
        expired[provider] += 1
    db.executemany("DELETE FROM targeted WHERE provider = ? AND ip = ?", old)
    # Another slice only if this one made progress and was full.
    for provider, settled in st.done.items():
        if settled:  # a cursor held back by an entry replaced since (see lease)
            _advance(db, st, provider, {level for level, _ in settled})
    more = (len(found) == batch and bool(rows)) or (len(found_t) == batch and bool(old))
    return dict(expired), more
