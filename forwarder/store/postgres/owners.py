"""Replica coordination in the database: heartbeats, provider leases, the fenced budget.

Every function is one statement (one round trip, one transaction) and reads time from
the database (``clock_timestamp()``), so replicas with skewed clocks agree on who owns
what and how many calls an app has made. ``now`` overrides that clock for tests that
move time instead of sleeping it out.

* A **replica** row is its heartbeat; it is live while ``expires_at`` is ahead.
* A **provider_owner** row says which replica dispatches a provider until ``expires_at``.
  Each claim increments ``epoch``, the fencing token: whatever a replica does for a
  provider it does under the epoch it claimed, and the database refuses a stale one.
* :func:`reserve_call` reserves a budget slot in the transaction that checks the epoch:
  a replica that was paused or partitioned past its lease can never spend a slot.

Changes other replicas should react to at once (a release, a replica joining or
leaving) are announced with ``NOTIFY forwarder_owners``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from forwarder.store.postgres.conn import Conn

__all__ = [
    "CONFIG_CHANNEL",
    "OWNERS_CHANNEL",
    "Lease",
    "Ownership",
    "Replica",
    "Reservation",
    "claim",
    "ensure_providers",
    "heartbeat",
    "leave",
    "live_replicas",
    "ownership",
    "release",
    "renew",
    "reserve_call",
]

#: A replica reloaded its config (payload: the provider set's hash); the others re-read theirs.
CONFIG_CHANNEL = "forwarder_config"
#: The NOTIFY channel (spelled out in the SQL below too).
OWNERS_CHANNEL = "forwarder_owners"


@dataclass(frozen=True, slots=True)
class Replica:
    """This process as other replicas see it."""

    id: str
    host: str
    pid: int


@dataclass(frozen=True, slots=True)
class Lease:
    """A provider this replica owns, under ``epoch``, until ``expires_at`` (database time)."""

    provider: str
    epoch: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer of :func:`reserve_call`.

    ``granted``: the call may go now (``slot_at`` is when it was counted). ``wait``: the
    app's window is full until ``slot_at``. ``lost``: the caller no longer holds the
    epoch; it must stop dispatching the provider. ``wait_s`` is measured on the database
    clock, so the caller can wait it out on its own clock without comparing clocks.
    """

    outcome: Literal["granted", "wait", "lost"]
    slot_at: datetime | None
    db_now: datetime

    @property
    def wait_s(self) -> float:
        if self.slot_at is None:
            return 0.0
        return max(0.0, (self.slot_at - self.db_now).total_seconds())


@dataclass(frozen=True, slots=True)
class Ownership:
    """One provider_owner row, for status, metrics and tests."""

    provider: str
    owner: str | None
    epoch: int
    expires_at: datetime
    live: bool


async def ensure_providers(conn: Conn, providers: Collection[str]) -> None:
    """Make sure each provider has an owner row (unowned) so it can be claimed and locked."""
    await conn.execute(
        "INSERT INTO provider_owner (provider) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
        list(providers),
    )


async def heartbeat(
    conn: Conn, replica: Replica, *, ttl_s: float, now: datetime | None = None
) -> list[str]:
    """Record that ``replica`` is alive for ``ttl_s``; return every live replica, sorted.

    A replica seen for the first time announces itself, so the others shed providers to it
    without waiting for their next tick.
    """
    rows = await conn.fetch(
        """
        WITH t AS (SELECT coalesce($5::timestamptz, clock_timestamp()) AS now),
        up AS (
            INSERT INTO replica (id, host, pid, started_at, seen_at, expires_at)
            SELECT $1, $2, $3, t.now, t.now, t.now + make_interval(secs => $4) FROM t
            ON CONFLICT (id) DO UPDATE
               SET seen_at = excluded.seen_at, expires_at = excluded.expires_at
            RETURNING id, (xmax = 0) AS joined
        )
        SELECT id, false AS joined FROM replica, t WHERE expires_at > t.now AND id <> $1
        UNION ALL SELECT id, joined FROM up
        """,
        replica.id,
        replica.host,
        replica.pid,
        ttl_s,
        now,
    )
    if any(r["joined"] for r in rows):
        await conn.execute("SELECT pg_notify($1, 'join ' || $2::text)", OWNERS_CHANNEL, replica.id)
    return sorted(r["id"] for r in rows)


async def live_replicas(conn: Conn, *, now: datetime | None = None) -> list[str]:
    """Ids of the replicas whose heartbeat has not expired, sorted."""
    rows = await conn.fetch(
        "SELECT id FROM replica"
        " WHERE expires_at > coalesce($1::timestamptz, clock_timestamp()) ORDER BY id",
        now,
    )
    return [r["id"] for r in rows]


async def claim(
    conn: Conn,
    replica_id: str,
    providers: Collection[str],
    *,
    limit: int,
    ttl_s: float,
    free_for_s: float = 0.0,
    now: datetime | None = None,
) -> list[Lease]:
    """Take up to ``limit`` of ``providers`` that nobody holds (released, or lapsed).

    ``free_for_s`` > 0 takes only those unowned for at least that long (the starvation
    guard for providers no replica below its target knows). Rows other replicas are
    claiming right now are skipped, not waited for; longest-free first.
    """
    if limit <= 0 or not providers:
        return []
    rows = await conn.fetch(
        """
        WITH t AS (SELECT coalesce($6::timestamptz, clock_timestamp()) AS now),
        free AS (
            SELECT o.provider FROM provider_owner o, t
             WHERE o.provider = ANY($2::text[])
               AND (o.owner IS NULL OR o.expires_at <= t.now)
               AND o.expires_at <= t.now - make_interval(secs => $5)
             ORDER BY o.expires_at, o.provider
             LIMIT $3
             FOR UPDATE OF o SKIP LOCKED
        )
        UPDATE provider_owner o
           SET owner = $1, epoch = o.epoch + 1, claimed_at = t.now,
               expires_at = t.now + make_interval(secs => $4)
          FROM free, t
         WHERE o.provider = free.provider
        RETURNING o.provider, o.epoch, o.expires_at
        """,
        replica_id,
        list(providers),
        limit,
        ttl_s,
        free_for_s,
        now,
    )
    return sorted(
        (Lease(r["provider"], r["epoch"], r["expires_at"]) for r in rows),
        key=lambda lease: lease.provider,
    )


async def renew(
    conn: Conn,
    replica_id: str,
    held: Mapping[str, int],
    *,
    ttl_s: float,
    now: datetime | None = None,
) -> list[Lease]:
    """Extend the leases still held under the same epoch and not yet lapsed.

    A lease that lapsed is not revived, even if nobody took it: it is claimed again under
    a new epoch, so nothing done under the old one can be mistaken for current.
    """
    if not held:
        return []
    names = list(held)
    rows = await conn.fetch(
        """
        WITH t AS (SELECT coalesce($5::timestamptz, clock_timestamp()) AS now)
        UPDATE provider_owner o
           SET expires_at = t.now + make_interval(secs => $4)
          FROM unnest($2::text[], $3::bigint[]) AS h(provider, epoch), t
         WHERE o.provider = h.provider AND o.epoch = h.epoch AND o.owner = $1
           AND o.expires_at > t.now
        RETURNING o.provider, o.epoch, o.expires_at
        """,
        replica_id,
        names,
        [held[n] for n in names],
        ttl_s,
        now,
    )
    return sorted(
        (Lease(r["provider"], r["epoch"], r["expires_at"]) for r in rows),
        key=lambda lease: lease.provider,
    )


async def release(
    conn: Conn, replica_id: str, providers: Collection[str], *, now: datetime | None = None
) -> list[str]:
    """Give providers up now (shedding, shutdown) and tell the other replicas to claim them."""
    if not providers:
        return []
    rows = await conn.fetch(
        """
        WITH t AS (SELECT coalesce($3::timestamptz, clock_timestamp()) AS now),
        gone AS (
            UPDATE provider_owner o SET owner = NULL, expires_at = t.now
              FROM t
             WHERE o.owner = $1 AND o.provider = ANY($2::text[])
            RETURNING o.provider
        )
        SELECT provider, pg_notify('forwarder_owners', 'release ' || $1) FROM gone
        """,
        replica_id,
        list(providers),
        now,
    )
    return sorted(r["provider"] for r in rows)


async def leave(conn: Conn, replica_id: str, *, now: datetime | None = None) -> list[str]:
    """Shutdown: release everything this replica holds and drop its heartbeat, at once."""
    async with conn.transaction():
        held = await conn.fetch("SELECT provider FROM provider_owner WHERE owner = $1", replica_id)
        released = await release(conn, replica_id, [r["provider"] for r in held], now=now)
        await conn.execute("DELETE FROM replica WHERE id = $1", replica_id)
        await conn.execute("SELECT pg_notify($1, 'leave ' || $2)", OWNERS_CHANNEL, replica_id)
    return released


async def reserve_call(
    conn: Conn,
    *,
    provider: str,
    replica_id: str,
    epoch: int,
    app_key: str,
    calls: int,
    window_s: float,
    margin_s: float = 0.0,
    now: datetime | None = None,
) -> Reservation:
    """Count one events call against ``app_key``'s budget, if ``epoch`` still owns ``provider``.

    Never more than ``calls`` calls of one app within ``window_s`` (+ ``margin_s``) on the
    database clock, across every replica, whichever provider name the app is configured
    under.
    """
    row = await conn.fetchrow(
        "SELECT outcome, slot_at, db_now"
        " FROM forwarder_reserve_call($1, $2, $3, $4, $5, $6, $7, $8)",
        provider,
        replica_id,
        epoch,
        app_key,
        calls,
        window_s,
        margin_s,
        now,
    )
    assert row is not None
    return Reservation(row["outcome"], row["slot_at"], row["db_now"])


async def ownership(
    conn: Conn, providers: Sequence[str] | None = None, *, now: datetime | None = None
) -> list[Ownership]:
    """Who owns which provider (all, or those named), for status, metrics and tests."""
    rows = await conn.fetch(
        """
        WITH t AS (SELECT coalesce($2::timestamptz, clock_timestamp()) AS now)
        SELECT o.provider, o.owner, o.epoch, o.expires_at,
               (o.owner IS NOT NULL AND o.expires_at > t.now) AS live
          FROM provider_owner o, t
         WHERE $1::text[] IS NULL OR o.provider = ANY($1::text[])
         ORDER BY o.provider
        """,
        list(providers) if providers is not None else None,
        now,
    )
    return [
        Ownership(r["provider"], r["owner"], r["epoch"], r["expires_at"], r["live"]) for r in rows
    ]
