"""Read-only queries over the SQLite store file, safe while the daemon writes to it.

``forwarder status`` opens the file read-only on a connection of its own: in WAL mode a
reader sees one consistent snapshot and never blocks the daemon's writer. The store
itself uses :func:`oldest_by_level` for the scrape-time age gauges.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from forwarder.errors import StoreError
from forwarder.signals import RiskLevel
from forwarder.store.base import ProviderRecord, ProviderSummary

__all__ = ["oldest_by_level", "open_store_file", "read_summary"]


def _s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def oldest_by_level(db: sqlite3.Connection, provider: str) -> dict[RiskLevel, int]:
    # min(ts_ms) per level walks the pending_order index: a few page reads, not a scan.
    out: dict[RiskLevel, int] = {}
    for level in RiskLevel:
        row = db.execute(
            "SELECT min(ts_ms) FROM pending WHERE provider = ? AND risk = ?",
            (provider, int(level)),
        ).fetchone()
        if row is not None and row[0] is not None:
            out[level] = int(row[0])
    return out


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def read_summary(path: Path, providers: Sequence[str] = ()) -> list[ProviderSummary]:
    """Per provider: pending by level, oldest observation, dead letters, persisted state.

    Opens ``path`` read-only on a connection of its own, so it can run while the daemon
    writes (WAL readers never block the writer). Lists ``providers`` in order, then any
    other provider the store still holds rows for (e.g. one removed from the config).
    Raises ``StoreError`` when the file is missing or is not a forwarder store.
    """
    with open_store_file(path) as db:
        return _read_summary(db, providers)


@contextlib.contextmanager
def open_store_file(path: Path, *, readonly: bool = True) -> Iterator[sqlite3.Connection]:
    """A connection of its own to the store file; SQLite errors become ``StoreError``."""
    if not path.exists():
        raise StoreError(f"no store at {path} (has the daemon run with this config?)")
    mode = "ro" if readonly else "rw"
    try:
        db = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode={mode}", uri=True, timeout=10.0, isolation_level=None
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    try:
        yield db
    except sqlite3.Error as exc:
        raise StoreError(f"cannot use store {path}: {exc}") from exc
    finally:
        db.close()


def _read_summary(db: sqlite3.Connection, providers: Sequence[str]) -> list[ProviderSummary]:
    if not _has_table(db, "counts"):
        raise sqlite3.DatabaseError("not a forwarder store (no counts table)")
    db.execute("BEGIN")  # one snapshot for every query below
    pending: dict[str, dict[RiskLevel, int]] = defaultdict(dict)
    for provider, risk, n in db.execute("SELECT provider, risk, n FROM counts WHERE n > 0"):
        pending[provider][RiskLevel(risk)] = n
    dead = dict(
        db.execute("SELECT provider, count(*) FROM dead_letters GROUP BY provider").fetchall()
    )
    records: dict[str, ProviderRecord] = {}
    if _has_table(db, "provider_state"):
        for row in db.execute(
            "SELECT provider, status, updated_ms, last_call_ms, last_outcome, last_error,"
            " hint, until_ms FROM provider_state"
        ):
            provider, status, updated, last_call, outcome, error, hint, until = row
            records[provider] = ProviderRecord(
                provider=provider,
                status=status,
                updated_at=updated / 1000,
                last_call_at=_s(last_call),
                last_outcome=outcome,
                last_error=error,
                hint=hint,
                until=_s(until),
            )
    names = list(dict.fromkeys(providers))
    names += sorted((set(pending) | set(dead) | set(records)) - set(names))
    out = [
        ProviderSummary(
            provider=name,
            pending=pending.get(name, {}),
            oldest_ms=oldest_by_level(db, name) if pending.get(name) else {},
            dead_letters=int(dead.get(name, 0)),
            record=records.get(name),
        )
        for name in names
    ]
    db.execute("COMMIT")
    return out
