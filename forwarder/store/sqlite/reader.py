"""Reading the store: summaries per provider and the dead-letter table.

The same queries serve the daemon (on its own connection) and ``forwarder status`` /
``forwarder dead-letters`` (:class:`SqliteReader`, a connection of its own to the file:
in WAL mode a reader sees one consistent snapshot and never blocks the daemon's writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from forwarder.errors import StoreError
from forwarder.signals import RiskLevel, Signal
from forwarder.store.base import DeadLetter, ProviderRecord, ProviderSummary
from forwarder.store.sqlite.counts import exact_pending, oldest_pending
from forwarder.store.sqlite.schema import transaction

__all__ = [
    "SqliteReader",
    "dead_letter_counts",
    "delete_dead_letters",
    "read_dead_letters",
    "read_summaries",
]

T = TypeVar("T")


def dead_letter_counts(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT provider, count(*) FROM dead_letters GROUP BY provider"))


def read_dead_letters(
    db: sqlite3.Connection,
    provider: str | None = None,
    *,
    ids: Collection[int] = (),
    limit: int | None = 100,
) -> list[DeadLetter]:
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
        where.append("id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(ids)))
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [
        DeadLetter(
            id=rid,
            provider=p,
            signal=Signal(ip, RiskLevel(risk), msg, ts, exp, recv),
            failed_ms=failed,
            reason=reason,
            causes=tuple(json.loads(causes)),
        )
        for rid, p, ip, risk, msg, ts, exp, recv, failed, reason, causes in db.execute(sql, params)
    ]


def delete_dead_letters(db: sqlite3.Connection, ids: Collection[int]) -> int:
    """Remove the given dead letters; return how many."""
    if not ids:
        return 0
    with transaction(db):
        cur = db.execute(
            "DELETE FROM dead_letters WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(ids)),),
        )
    return cur.rowcount


def _records(db: sqlite3.Connection) -> dict[str, ProviderRecord]:
    records: dict[str, ProviderRecord] = {}
    for row in db.execute(
        "SELECT provider, status, updated_ms, last_call_ms, last_outcome, last_error,"
        " hint, until_ms FROM provider_state"
    ):
        provider, status, updated, last_call, outcome, error, hint, until = row
        records[provider] = ProviderRecord(
            provider=provider,
            status=status,
            updated_ms=updated,
            last_call_ms=last_call,
            last_outcome=outcome,
            last_error=error,
            hint=hint,
            until_ms=until,
        )
    return records


def read_summaries(
    db: sqlite3.Connection, providers: Sequence[str] = (), *, active: Collection[str] = ()
) -> list[ProviderSummary]:
    """Per provider: pending by level, oldest observation, dead letters, persisted state.

    Lists ``providers`` in order, then any other provider the store knows (a cursor,
    entries, dead letters or a record: e.g. one removed from the config).
    """
    cursors: dict[str, dict[int, int]] = defaultdict(dict)
    for provider, risk, seq in db.execute("SELECT provider, risk, seq FROM cursors"):
        cursors[provider][risk] = seq
    done: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for provider, risk, seq in db.execute("SELECT provider, risk, seq FROM done"):
        done[provider].add((risk, seq))
    targeted: dict[str, dict[int, int]] = defaultdict(dict)
    for provider, risk, n in db.execute(
        "SELECT provider, risk, n FROM counts WHERE n > 0 AND provider != ''"
    ):
        targeted[provider][risk] = n
    pending = exact_pending(db, cursors, done, targeted)
    dead = dead_letter_counts(db)
    records = _records(db)
    names = list(dict.fromkeys(providers))
    known = {p for p, levels in pending.items() if levels} | set(dead) | set(records) | set(active)
    names += sorted(known - set(names))
    return [
        ProviderSummary(
            provider=name,
            pending={RiskLevel(r): n for r, n in pending.get(name, {}).items()},
            oldest_ms=(
                {RiskLevel(r): t for r, t in oldest_pending(db, name, cursors.get(name)).items()}
                if pending.get(name)
                else {}
            ),
            dead_letters=int(dead.get(name, 0)),
            record=records.get(name),
        )
        for name in names
    ]


@contextlib.contextmanager
def _open(path: Path, *, readonly: bool) -> Iterator[sqlite3.Connection]:
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
        if (
            db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cursors'"
            ).fetchone()
            is None
        ):
            raise StoreError(f"{path} is not a forwarder store (or an older one)")
        yield db
    except sqlite3.Error as exc:
        raise StoreError(f"cannot use store {path}: {exc}") from exc
    finally:
        db.close()


class SqliteReader:
    """:class:`forwarder.store.base.StoreReader` over a store file, from another process.

    Each call opens the file on a connection of its own; reads see one snapshot.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    async def summaries(self, providers: Sequence[str] = ()) -> list[ProviderSummary]:
        def read() -> list[ProviderSummary]:
            with _open(self.path, readonly=True) as db, transaction(db, immediate=False):
                return read_summaries(db, providers)

        return await self._run(read)

    async def dead_letters(
        self,
        provider: str | None = None,
        *,
        ids: Collection[int] = (),
        limit: int | None = 100,
    ) -> list[DeadLetter]:
        def read() -> list[DeadLetter]:
            with _open(self.path, readonly=True) as db:
                return read_dead_letters(db, provider, ids=ids, limit=limit)

        return await self._run(read)

    async def delete_dead_letters(self, ids: Collection[int]) -> int:
        def delete() -> int:
            with _open(self.path, readonly=False) as db:
                return delete_dead_letters(db, ids)

        return await self._run(delete)


def counts_by_level(levels: Mapping[int, int]) -> dict[RiskLevel, int]:
    return {RiskLevel(r): n for r, n in levels.items() if n}
