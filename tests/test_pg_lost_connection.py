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

import struct
from typing import Any

import pytest

from forwarder.errors import StoreError
from forwarder.signals import RiskLevel, Signal
from forwarder.store.postgres.store import PostgresStore
from tests.pg import PgCluster

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
    pool: Any = store.pool  # reaching into the pool on purpose: the wire, not the API
    holders = pool._holders
    return [h._con for h in holders if h._con is not None and h._in_use is None]


async def test_a_terminated_idle_connection_means_store_error_then_recovery(
    pg_cluster: PgCluster, pg_dsn: str
) -> None:
    signal = Signal("192.0.2.1", RiskLevel.HIGH, "scanner", 1, None, 1)
    async with PostgresStore(pg_dsn, providers=["org-0"], pool_size=4) as store:
        await store.add([((), signal)])
        idle = idle_connections(store)
        assert idle
        for conn in idle:
            conn._protocol.data_received(fatal_terminating())
        refused = 0
        for _ in range(len(idle)):
            try:
                await store.add([((), signal)])
            except StoreError:
                refused += 1
        assert refused >= 1
        assert await store.probe_writable() is True
        await store.add([((), signal)])
        assert store.writable
