"""Exact backlog counts per provider, from the cursors: shared by the daemon and the reader.

A provider's broadcast backlog at a level is the live entries above its cursor, less
those it settled out of order (``done``). Counting each provider's range alone would
walk the same index entries once per provider (2,000 IPs x 1,000 providers); walking
between consecutive distinct cursors instead visits each index entry once per level.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Set

__all__ = ["LEVELS", "broadcast_pending", "oldest_pending"]

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
