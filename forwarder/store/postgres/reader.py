"""Reading the shared tables (``forwarder status``, ``dead-letters list|requeue``).

:class:`TableReader` is the :class:`~forwarder.store.base.StoreReader` part of both the
daemon's :class:`~forwarder.store.postgres.store.PostgresStore` (over its pool) and the
CLI's :class:`PostgresReader` (over a connection of its own): the same queries, only the
connection differs.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import asyncpg

from forwarder.errors import StoreError
from forwarder.signals import RiskLevel, Signal
from forwarder.store.base import DeadLetter, ProviderRecord, ProviderSummary
from forwarder.store.postgres import counting
from forwarder.store.postgres.conn import Conn
from forwarder.store.postgres.connect import DB_ERRORS, connect_error
from forwarder.store.postgres.dsn import describe_dsn
from forwarder.store.postgres.queue import LEVELS, ProviderQueue
from forwarder.store.postgres.schema import require_current

__all__ = [
    "PostgresReader",
    "TableReader",
    "by_level",
    "delete_dead_letters",
    "read_dead_letters",
    "read_summaries",
]


def by_level(levels: Mapping[int, int]) -> dict[RiskLevel, int]:
    """Stored levels (ints) as risk levels, without the empty ones."""
    return {RiskLevel(r): n for r, n in levels.items() if n}


class TableReader:
    """Summaries and dead letters from the tables, over :meth:`_reading`'s connection."""

    def _reading(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        raise NotImplementedError

    async def summaries(self, providers: Sequence[str] = ()) -> list[ProviderSummary]:
        async with self._reading() as conn, conn.transaction(isolation="repeatable_read"):
            return await read_summaries(conn, providers)

    async def dead_letters(
        self,
        provider: str | None = None,
        *,
        ids: Collection[int] = (),
        limit: int | None = 100,
    ) -> list[DeadLetter]:
        async with self._reading() as conn:
            return await read_dead_letters(conn, provider, ids=ids, limit=limit)

    async def delete_dead_letters(self, ids: Collection[int]) -> int:
        async with self._reading() as conn:
            return await delete_dead_letters(conn, ids)


async def read_dead_letters(
    conn: Conn, provider: str | None = None, *, ids: Collection[int] = (), limit: int | None = 100
) -> list[DeadLetter]:
    """Dead letters, newest first; filtered by provider and/or ids."""
    rows = await conn.fetch(
        "SELECT id, provider, ip, risk, message, ts_ms, expires_ms, received_ms, failed_ms,"
        " reason, causes FROM dead_letters"
        " WHERE ($1::text IS NULL OR provider = $1)"
        "   AND (cardinality($2::bigint[]) = 0 OR id = ANY($2::bigint[]))"
        " ORDER BY id DESC LIMIT $3",
        provider,
        list(ids),
        limit,
    )
    return [
        DeadLetter(
            id=r["id"],
            provider=r["provider"],
            signal=Signal(
                r["ip"],
                RiskLevel(r["risk"]),
                r["message"],
                r["ts_ms"],
                r["expires_ms"],
                r["received_ms"],
            ),
            failed_ms=r["failed_ms"],
            reason=r["reason"],
            causes=tuple(json.loads(r["causes"])),
        )
        for r in rows
    ]


async def delete_dead_letters(conn: Conn, ids: Collection[int]) -> int:
    if not ids:
        return 0
    return int(
        await conn.fetchval(
            "WITH gone AS (DELETE FROM dead_letters WHERE id = ANY($1::bigint[]) RETURNING 1)"
            " SELECT count(*) FROM gone",
            list(ids),
        )
    )


async def read_summaries(conn: Conn, providers: Sequence[str] = ()) -> list[ProviderSummary]:
    """Per provider, exact: ``providers`` first, then any other the database knows."""
    cursors: dict[str, dict[int, int]] = defaultdict(dict)
    for r in await conn.fetch("SELECT provider, risk, seq FROM cursors"):
        cursors[r["provider"]][r["risk"]] = r["seq"]
    done: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for r in await conn.fetch("SELECT provider, risk, seq FROM done"):
        done[r["provider"]].add((r["risk"], r["seq"]))
    dead = {
        r["provider"]: int(r["n"])
        for r in await conn.fetch("SELECT provider, count(*) AS n FROM dead_letters GROUP BY 1")
    }
    records = {
        r["provider"]: ProviderRecord(
            provider=r["provider"],
            status=r["status"],
            updated_ms=r["updated_ms"],
            last_call_ms=r["last_call_ms"],
            last_outcome=r["last_outcome"],
            last_error=r["last_error"],
            hint=r["hint"],
            until_ms=r["until_ms"],
        )
        for r in await conn.fetch("SELECT * FROM provider_state")
    }
    targeted = {r["provider"] for r in await conn.fetch("SELECT DISTINCT provider FROM targeted")}
    names = list(dict.fromkeys(providers))
    names += sorted((set(cursors) | set(dead) | set(records) | targeted) - set(names))
    out = []
    for name in names:
        q = ProviderQueue(name, cursors.get(name) or dict.fromkeys(LEVELS, 2**62), done[name])
        pending = await counting.pending_counts(conn, q)
        oldest = await counting.oldest_pending(conn, q) if pending else {}
        if not pending and name not in providers and name not in dead and name not in records:
            continue
        out.append(
            ProviderSummary(
                provider=name,
                pending=by_level(pending),
                oldest_ms={RiskLevel(r): t for r, t in oldest.items()},
                dead_letters=dead.get(name, 0),
                record=records.get(name),
            )
        )
    return out


class PostgresReader(TableReader):
    """:class:`forwarder.store.base.StoreReader` from outside the daemons (CLI)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.where = describe_dsn(dsn)

    @contextlib.asynccontextmanager
    async def _conn(self) -> Any:
        try:
            conn = await asyncpg.connect(self._dsn, timeout=10)
        except DB_ERRORS as exc:
            raise connect_error(self._dsn, exc) from None
        try:
            await require_current(conn)
            yield conn
        except DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL at {self.where}: {exc}") from exc
        finally:
            await conn.close()

    def _reading(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        return self._conn()
