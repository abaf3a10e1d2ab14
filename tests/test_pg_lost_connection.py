"""A pooled connection the server is terminating, caught between its last message and EOF.

``pg_terminate_backend`` (an admin, a failover, a restart) makes the server send a FATAL
ErrorResponse on every connection, then close it. asyncpg reads the two in separate loop
iterations: after the message and before the EOF, an *idle* connection is in its
"error consume" state yet not closed, so the pool hands it out, and the next statement
fails with ``InternalClientError: cannot switch to state 15; another operation (2) is in
progress``. Under load that window is wide enough to hit (the flaky
``test_unreachable_postgres_means_503_and_not_ready_then_recovers``). Here the FATAL
message is delivered to the idle connections exactly as the socket would, without the EOF,
so the window is held open: the store must answer as for any lost connection (a
``StoreError``, i.e. ingest's 503), throw those connections away, and work again.
"""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from forwarder.errors import StoreError
from forwarder.signals import RiskLevel, Signal
from forwarder.store.postgres.connect import discard
from forwarder.store.postgres.store import PostgresStore
from tests.harness import ips
from tests.pg import PgCluster
from tests.test_pg_replicas import fleet, signals

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def fatal_terminating() -> bytes:
    """The ErrorResponse the server sends when ``pg_terminate_backend`` ends a session."""
    fields = b"".join(
        code + text + b"\0"
        for code, text in (
            (b"S", b"FATAL"),
            (b"V", b"FATAL"),
            (b"C", b"57P01"),
            (b"M", b"terminating connection due to administrator command"),
        )
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


def idle_connections(store: PostgresStore) -> list[Any]:
    """Idle connections of both pools (queries, and the group commit's own connection)."""
    # Reaching into the pools on purpose: the wire, not the API.
    pools: list[Any] = [store.pool, store._write_pool]
    holders = [h for pool in pools if pool is not None for h in pool._holders]
    return [h._con for h in holders if h._con is not None and h._in_use is None]


async def test_a_terminated_idle_connection_means_store_error_then_recovery(
    pg_cluster: PgCluster, pg_dsn: str
) -> None:
    signal = Signal("192.0.2.1", RiskLevel.HIGH, "scanner", 1, None, 1)
    async with PostgresStore(pg_dsn, providers=["org-0"], pool_size=4) as store:
        await store.add([((), signal)])
        refused = 0
        poisoned = 0
        for _ in range(3):
            # Whatever sits idle in the pools now gets the server's FATAL, as a terminate
            # does; the next use of such a connection must be a StoreError (503), no crash.
            idle = idle_connections(store)
            poisoned += len(idle)
            for conn in idle:
                conn._protocol.data_received(fatal_terminating())
            try:
                await store.add([((), signal)])
            except StoreError:
                refused += 1
        assert poisoned
        assert refused >= 1
        # Each failed use discards one dead connection: the store recovers by itself.
        probes = [await store.probe_writable() for _ in range(poisoned + 1)]
        assert probes[-1] is True
        await store.add([((), signal)])
        assert store.writable


async def test_an_owner_hears_other_replicas_commits_after_the_server_dropped_its_sessions(
    tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str
) -> None:
    """Every session is terminated (a failover, an admin): the owner's store LISTENs again,
    so a signal posted to the other replica afterwards still wakes the owner's dispatcher."""
    name = pg_dsn.rsplit("/", 1)[1]
    async with fleet(tmp_path, pg_cluster, pg_dsn) as f:
        await f.add_org("org-0")
        await f.start("a")
        await f.start("b")
        await f.until(lambda: sum(map(len, f.owned().values())) == 1)
        assert await f.post("a", signals(ips(3))) == 202
        await f.until(lambda: f.delivered_everywhere(set(ips(3))))
        pg_cluster.sql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        for replica in ("a", "b"):
            deadline = time.monotonic() + 10
            while (await f.get(replica, "/readyz"))[0] != 200:
                assert time.monotonic() < deadline, "never ready again"
                await asyncio.sleep(0.2)
        await f.until(lambda: sum(map(len, f.owned().values())) == 1)
        await asyncio.sleep(1.0)  # any re-listening is done by now
        owner = next(r for r, held in f.owned().items() if held)
        other = "b" if owner == "a" else "a"
        later = ips(3, offset=10)
        assert await f.post(other, signals(later)) == 202
        await f.until(lambda: f.delivered_everywhere(set(later)), seconds=15)


async def test_a_dropped_listen_connection_goes_back_and_the_pool_still_closes(
    pg_dsn: str,
) -> None:
    """A LISTEN connection the server dropped still has its listeners (asyncpg cannot
    UNLISTEN on a closed connection) and asyncpg warns when it is released. Given back
    with :func:`discard`, the pool takes it back and closes; given back with a plain
    release under an error filter for that warning (as tests run), it stayed checked out
    and ``Pool.close()`` waited forever (the hang behind the flaky unreachable-PostgreSQL
    test)."""
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    conn = await pool.acquire()
    await conn.add_listener("forwarder_test", lambda *_: None)
    # The FATAL message arrives, the EOF not yet: not closed, listeners still attached.
    conn._con._protocol.data_received(fatal_terminating())  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    assert conn._con._listeners  # type: ignore[attr-defined]
    await discard(pool, conn)
    await asyncio.wait_for(pool.close(), 5)
