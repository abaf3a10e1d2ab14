"""A throwaway PostgreSQL server for the tests: Debian's binaries, a private cluster.

``pg_cluster`` (session-scoped) runs ``initdb`` and ``pg_ctl start`` on a free port on
127.0.0.1 with a socket directory of its own, and stops the server when the session
ends. The server refuses to run as root, so under root (CI, this machine) both run as
the ``postgres`` user through ``runuser``; elsewhere as the current user.
``pg_dsn`` gives each test a fresh database of that cluster (isolation: leases, call logs,
advisory locks and LISTEN channels are all per database) and drops it afterwards.

TCP connections need a password (scram-sha-256), so a DSN without one really exercises
``PGPASSWORD``/``PGPASSFILE``; the superuser's password is random per session. Without the
binaries the tests skip, or fail in CI (``FORWARDER_REQUIRE_SERVICES=1``), as
:func:`tests.conftest.require_tool` does.

The cluster itself is :func:`forwarder.bench.pg.start_cluster` (the bench starts
one too); it trades crash safety of the *server* for speed (``fsync=off``): commits are
still commits for every client, which is what the tests observe.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import asyncpg
import pytest

from forwarder.bench.pg import PgCluster, start_cluster
from forwarder.bench.pg import pg_bin_dir as _found_bin_dir
from forwarder.store.postgres import owners
from forwarder.store.postgres.schema import migrate
from forwarder.store.postgres.writer import BroadcastRow, TargetedRow, upsert_rows

__all__ = [
    "PgCluster",
    "migrated_pools",
    "pg_bin_dir",
    "pg_cluster",
    "pg_dsn",
    "pg_pool",
    "start_cluster",
    "write_rows",
]


def pg_bin_dir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` live; skips (or fails in CI) when absent."""
    found = _found_bin_dir()
    if found is not None:
        return found
    from tests.conftest import require_tool  # noqa: PLC0415

    return Path(require_tool("pg_ctl")).parent


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL server for the whole test session."""
    with start_cluster(pg_bin_dir()) as cluster:
        yield cluster


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """A DSN (with password) to a fresh, empty database, dropped after the test."""
    name = pg_cluster.create_database()
    try:
        yield pg_cluster.dsn(name)
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(name="pool")
async def pg_pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh database with forwarder's schema (import it to use ``pool``)."""
    made = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=6)
    try:
        async with made.acquire() as conn:
            await migrate(conn)
        yield made
    finally:
        await made.close()


@contextlib.asynccontextmanager
async def migrated_pools(
    dsn: str, count: int, providers: Sequence[str]
) -> AsyncIterator[list[asyncpg.Pool]]:
    """``count`` replicas' pools on the database of ``dsn``, migrated, with ``providers``."""
    made = [await asyncpg.create_pool(dsn, min_size=1, max_size=4) for _ in range(count)]
    try:
        async with made[0].acquire() as conn:
            await migrate(conn)
            await owners.ensure_providers(conn, list(providers))
        yield made
    finally:
        for pool in made:
            await pool.close()


async def write_rows(
    pool: asyncpg.Pool, broadcast: Sequence[BroadcastRow], targeted: Sequence[TargetedRow] = ()
) -> None:
    """Store broadcast and targeted rows in one transaction, as the writer does."""
    async with pool.acquire() as conn, conn.transaction():
        await upsert_rows(conn, [*broadcast, *targeted])
