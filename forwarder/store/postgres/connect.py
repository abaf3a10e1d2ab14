"""Opening the pool: the DSN stays inside, errors name only what is safe to show."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from forwarder.errors import StoreError
from forwarder.store.postgres.dsn import describe_dsn
from forwarder.store.postgres.schema import MigrationResult, migrate, require_current

__all__ = ["DB_ERRORS", "alive", "connect_error", "discard", "keep_session", "open_pool"]

#: What a lost or refused connection, or a failed statement, raises. That includes
#: asyncpg's InternalClientError: when the server ends a session (``pg_terminate_backend``,
#: a failover, a restart) it sends a FATAL ErrorResponse, then closes the socket; asyncpg
#: reads the two in separate loop iterations, and in between an idle pooled connection is
#: in its "error consume" state without being closed, so the pool hands it out and the
#: next statement raises "cannot switch to state 15; another operation (2) is in
#: progress". It is a lost connection like any other (the pool then terminates it).
DB_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    TimeoutError,
)


def alive(conn: PoolConnectionProxy[asyncpg.Record]) -> bool:
    """A pooled connection is still open (the pool takes back one the server closed)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


async def keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """A pool's ``reset``: nothing to reset (asyncpg still rolls back a transaction left
    open and drops listener callbacks).

    The store leaves no session state on a pooled connection: its advisory locks are
    transaction-scoped but for the migration's, which it releases; it never SETs; its
    LISTEN connections are not given back listening (:func:`discard`). asyncpg's default
    reset (``RESET ALL``, ``UNLISTEN *``, ``pg_advisory_unlock_all()``) is one more round
    trip at every checkout: 20,000 in a scale-out bench round.
    """
    del conn


async def discard(pool: asyncpg.Pool, conn: PoolConnectionProxy[asyncpg.Record]) -> None:
    """Give back a LISTEN connection whose listeners could not be removed (the server
    dropped it, or LISTEN failed half-way): closed, so its listeners go with it.

    asyncpg warns when a connection with listeners is released; that warning must not
    stop the release (turned into an error, it left the connection checked out and
    ``Pool.close()`` waiting for it forever).
    """
    with contextlib.suppress(asyncpg.InterfaceError):  # already given back when closed
        conn.terminate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", asyncpg.InterfaceWarning)
        with contextlib.suppress(*DB_ERRORS):
            await pool.release(conn)


def connect_error(dsn: str, exc: BaseException) -> StoreError:
    """A StoreError for a failed connection, naming the server without the DSN's secrets."""
    where = describe_dsn(dsn)
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        hint = "check the user and the password in PGPASSWORD, PGPASSFILE or store.dsn_file"
    elif isinstance(exc, asyncpg.InvalidCatalogNameError):
        hint = "create the database first (CREATE DATABASE), or fix the database name"
    elif isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError):
        hint = "is the server running and reachable from here? (host, port, network policy)"
    else:
        hint = "check the DSN and the server's log"
    # asyncpg's messages name the user and database, never the password.
    detail = str(exc).replace(dsn, where) or type(exc).__name__
    return StoreError(f"cannot connect to PostgreSQL at {where}: {detail}; {hint}")


@contextlib.asynccontextmanager
async def open_pool(
    dsn: str,
    *,
    size: int,
    application_name: str = "forwarder",
    migrate_at_start: bool = True,
    connect_timeout_s: float = 10.0,
) -> AsyncIterator[tuple[asyncpg.Pool, MigrationResult | None]]:
    """A pool of ``size`` connections, the schema migrated (or required to be current).

    Yields the pool and what the migration did (None when only checked).
    """
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=size,
            timeout=connect_timeout_s,
            command_timeout=60,
            server_settings={"application_name": application_name},
        )
    except DB_ERRORS as exc:
        raise connect_error(dsn, exc) from None
    try:
        async with pool.acquire() as conn:
            result = await migrate(conn) if migrate_at_start else None
            if result is None:
                await require_current(conn)
        yield pool, result
    finally:
        await pool.close()
