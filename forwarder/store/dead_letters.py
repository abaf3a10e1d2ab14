"""The dead-letter table, from outside the daemon: list it, and remove requeued rows.

Used by ``forwarder dead-letters``. Each call opens the file on a connection of its
own (WAL: a reader never blocks the daemon; a writer waits its turn for a moment).
Requeued signals go back through the daemon's ingest API, never straight into
``pending``, so the daemon's counts, wake-ups and coalescing stay its own business.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from forwarder.signals import RiskLevel, Signal
from forwarder.store.sqlite_read import open_store_file

__all__ = ["DeadLetterRow", "delete_dead_letters", "read_dead_letters"]


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One dead-lettered signal with its row id."""

    id: int
    provider: str
    signal: Signal
    failed_ms: int
    reason: str
    causes: tuple[str, ...]


def read_dead_letters(
    path: Path,
    *,
    provider: str | None = None,
    ids: Sequence[int] = (),
    limit: int | None = 100,
) -> list[DeadLetterRow]:
    """Dead letters, newest first; filtered by provider and/or ids."""
    sql = (
        "SELECT id, provider, ip, risk, message, ts_ms, expires_ms, received_ms, failed_ms,"
        " reason, causes FROM dead_letters"
    )
    where: list[str] = []
    params: list[object] = []
    if provider is not None:
        where.append("provider = ?")
        params.append(provider)
    if ids:
        where.append(f"id IN ({','.join('?' * len(ids))})")
        params.extend(ids)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    with open_store_file(path) as db:
        rows = db.execute(sql, params).fetchall()
    return [
        DeadLetterRow(
            id=rid,
            provider=p,
            signal=Signal(ip, RiskLevel(risk), msg, ts, exp, recv),
            failed_ms=failed,
            reason=reason,
            causes=tuple(json.loads(causes)),
        )
        for rid, p, ip, risk, msg, ts, exp, recv, failed, reason, causes in rows
    ]


def delete_dead_letters(path: Path, ids: Sequence[int]) -> int:
    """Remove the given rows (after the daemon accepted them again); return how many."""
    if not ids:
        return 0
    with open_store_file(path, readonly=False) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            removed = 0
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                cur = db.execute(
                    f"DELETE FROM dead_letters WHERE id IN ({','.join('?' * len(chunk))})",  # noqa: S608
                    chunk,
                )
                removed += cur.rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return removed
