"""Exact backlog counts per provider, from the cursors: shared by the daemon and the reader.

A provider's broadcast backlog at a level is the live entries above its cursor, less
those it settled out of order (``done``). Counting each provider's range alone would
walk the same index entries once per provider (2,000 IPs x 1,000 providers); walking
between consecutive distinct cursors instead visits each index entry once per level.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Set

__all__ = ["LEVELS", "broadcast_pending", "exact_pending", "oldest_pending", "overlap"]

#: Risk levels as stored, highest first (the lease order).
LEVELS = (3, 2, 1)


def broadcast_pending(
    db: sqlite3.Connection,
    cursors: Mapping[str, Mapping[int, int]],
    done: Mapping[str, Set[tuple[int, int]]],
) -> dict[str, dict[int, int]]:
    """Live broadcast entries each provider has not settled, per level."""
    out: dict[str, dict[int, int]] = {p: {} for p in cursors}
    for level in LEVELS:
        points = sorted({c[level] for c in cursors.values()}, reverse=True)
        above: dict[int, int] = {}
        running = 0
        upper: int | None = None
        for point in points:
            if upper is None:
                (n,) = db.execute(
                    "SELECT count(*) FROM signals WHERE risk = ? AND seq > ?", (level, point)
                ).fetchone()
            else:
                (n,) = db.execute(
                    "SELECT count(*) FROM signals WHERE risk = ? AND seq > ? AND seq <= ?",
                    (level, point, upper),
                ).fetchone()
            running += n
            above[point] = running
            upper = point
        for provider, cursor in cursors.items():
            if not above[cursor[level]]:
                continue
            settled = sum(
                1
                for lvl, seq in done.get(provider, ())
                if lvl == level
                and seq > cursor[level]
                and db.execute(
                    "SELECT 1 FROM signals WHERE risk = ? AND seq = ?", (lvl, seq)
                ).fetchone()
                is not None
            )
            n = above[cursor[level]] - settled
            if n > 0:
                out[provider][level] = n
    return out


def oldest_pending(
    db: sqlite3.Connection, provider: str, cursor: Mapping[int, int] | None
) -> dict[int, int]:
    """Observation time of the entry waiting longest (first stored) per level."""
    out: dict[int, int] = {}
    for level in LEVELS:
        times = []
        if cursor is not None:
            row = db.execute(
                "SELECT ts_ms FROM signals WHERE risk = ? AND seq > ? ORDER BY seq LIMIT 1",
                (level, cursor[level]),
            ).fetchone()
            if row is not None:
                times.append(int(row[0]))
        row = db.execute(
            "SELECT ts_ms FROM targeted WHERE provider = ? AND risk = ? ORDER BY seq LIMIT 1",
            (provider, level),
        ).fetchone()
        if row is not None:
            times.append(int(row[0]))
        if times:
            out[level] = min(times)
    return out


def overlap(
    db: sqlite3.Connection,
    provider: str,
    cursor: Mapping[int, int],
    done: Set[tuple[int, int]],
    *,
    broadcast: int,
    targeted: int,
) -> dict[int, int]:
    """Ips ``provider`` has both a targeted and a pending broadcast entry for, by the level
    of the one that loses (it is never sent): subtract these for an exact count.

    Walks the smaller side and looks each ip up in the other (a primary-key read).
    """
    out: dict[int, int] = {}
    if not broadcast or not targeted:
        return out
    pairs: list[tuple[int, int, int, int, int, int]] = []  # (b risk, b ts, b seq, t ...)
    if targeted <= broadcast:
        for ip, t_risk, t_ts in db.execute(
            "SELECT ip, risk, ts_ms FROM targeted WHERE provider = ?", (provider,)
        ).fetchall():
            row = db.execute("SELECT risk, ts_ms, seq FROM signals WHERE ip = ?", (ip,)).fetchone()
            if row is not None:
                pairs.append((*row, t_risk, t_ts, 0))
    else:
        for level in LEVELS:
            for ip, ts, seq in db.execute(
                "SELECT ip, ts_ms, seq FROM signals WHERE risk = ? AND seq > ?",
                (level, cursor[level]),
            ).fetchall():
                row = db.execute(
                    "SELECT risk, ts_ms FROM targeted WHERE provider = ? AND ip = ?",
                    (provider, ip),
                ).fetchone()
                if row is not None:
                    pairs.append((level, ts, seq, row[0], row[1], 0))
    for b_risk, b_ts, b_seq, t_risk, t_ts, _ in pairs:
        if b_seq <= cursor[b_risk] or (b_risk, b_seq) in done:
            continue
        t_wins = t_ts > b_ts or (t_ts == b_ts and t_risk > b_risk)
        loser = b_risk if t_wins else t_risk
        out[loser] = out.get(loser, 0) + 1
    return out


def exact_pending(
    db: sqlite3.Connection,
    cursors: Mapping[str, Mapping[int, int]],
    done: Mapping[str, Set[tuple[int, int]]],
    targeted: Mapping[str, Mapping[int, int]],
) -> dict[str, dict[int, int]]:
    """What each provider has still to send, by level: broadcast + targeted, each ip once."""
    out = broadcast_pending(db, cursors, done)
    for provider, levels in targeted.items():
        mine = out.setdefault(provider, {})
        cursor = cursors.get(provider)
        both = (
            overlap(
                db,
                provider,
                cursor,
                done.get(provider, set()),
                broadcast=sum(mine.values()),
                targeted=sum(levels.values()),
            )
            if cursor is not None
            else {}
        )
        for level in LEVELS:
            n = mine.get(level, 0) + levels.get(level, 0) - both.get(level, 0)
            if n > 0:
                mine[level] = n
            else:
                mine.pop(level, None)
    return out
