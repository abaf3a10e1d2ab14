"""The PostgreSQL schema, created and migrated under an advisory lock.

Migrations are numbered, applied in order, each in its own transaction together with
its row in ``schema_version``. Several replicas starting at once (a rolling upgrade, a
scaled Deployment) serialise on one advisory lock, so exactly one applies each step and
the others find it done. A database migrated by a newer forwarder is refused (its
schema may mean things this version does not know), and with ``migrate_at_start =
false`` a start on an unmigrated database is refused with the command to run.

Times are ``timestamptz`` on the database's clock: every replica reads the same clock
for lease expiry and budget windows, whatever its own says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from forwarder.errors import StoreError
from forwarder.store.postgres.conn import Conn

__all__ = [
    "ADVISORY_NAMESPACE",
    "BUDGET_NAMESPACE",
    "LATEST_VERSION",
    "MIGRATIONS",
    "Migration",
    "MigrationResult",
    "migrate",
    "require_current",
    "schema_version",
]

#: First key of forwarder's session advisory locks ("forw"); the second names the lock.
ADVISORY_NAMESPACE = 0x666F7277
#: First key of the per-app budget locks ("forx"); the second is hashtext(app_key).
BUDGET_NAMESPACE = 0x666F7278
_MIGRATE_LOCK = 1


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str


_COORDINATION = """
CREATE TABLE replica (
    id          text PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- Who dispatches each provider. epoch is the fencing token: +1 at every claim, so a
-- replica that lost the lease (paused, partitioned) holds a stale epoch and is refused.
CREATE TABLE provider_owner (
    provider    text PRIMARY KEY,
    owner       text,
    epoch       bigint NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    claimed_at  timestamptz
);
CREATE INDEX provider_owner_owner ON provider_owner (owner);

-- Every events call, keyed by the Okta app (org + client id) whose budget it spends.
CREATE TABLE call_log (
    app_key     text NOT NULL,
    at          timestamptz NOT NULL,
    provider    text NOT NULL,
    owner       text NOT NULL,
    epoch       bigint NOT NULL
);
CREATE INDEX call_log_app_at ON call_log (app_key, at);

-- The budget slot, reserved in the transaction that checks the fencing epoch.
-- 'granted' (slot_at = now), 'wait' (slot_at = when the next slot frees) or 'lost'.
CREATE FUNCTION forwarder_reserve_call(
    p_provider text, p_owner text, p_epoch bigint, p_app_key text,
    p_calls integer, p_window_s double precision, p_margin_s double precision,
    p_now timestamptz
) RETURNS TABLE (outcome text, slot_at timestamptz, db_now timestamptz)
LANGUAGE plpgsql AS $fn$
DECLARE
    t timestamptz;
    lease_expires timestamptz;
    used integer;
    horizon timestamptz;
    nth timestamptz;
BEGIN
    -- Lock the owner row first: no claim can bump the epoch between check and insert.
    SELECT o.expires_at INTO lease_expires FROM provider_owner o
     WHERE o.provider = p_provider AND o.owner = p_owner AND o.epoch = p_epoch
       FOR UPDATE;
    t := coalesce(p_now, clock_timestamp());
    IF lease_expires IS NULL OR lease_expires <= t THEN
        RETURN QUERY SELECT 'lost'::text, NULL::timestamptz, t;
        RETURN;
    END IF;
    -- One app's calls are counted under one lock, whichever provider name spends them
    -- (namespace "forx": BUDGET_NAMESPACE).
    PERFORM pg_advisory_xact_lock(1718579832, hashtext(p_app_key));
    t := coalesce(p_now, clock_timestamp());
    horizon := t - make_interval(secs => p_window_s + p_margin_s);
    SELECT count(*) INTO used FROM call_log c
     WHERE c.app_key = p_app_key AND c.at > horizon;
    IF used < p_calls THEN
        INSERT INTO call_log (app_key, at, provider, owner, epoch)
        VALUES (p_app_key, t, p_provider, p_owner, p_epoch);
        DELETE FROM call_log c WHERE c.app_key = p_app_key
           AND c.at < t - make_interval(secs => greatest(p_window_s * 2, 3600));
        RETURN QUERY SELECT 'granted'::text, t, t;
        RETURN;
    END IF;
    -- The call that must leave the window before another may enter it.
    SELECT c.at INTO nth FROM call_log c
     WHERE c.app_key = p_app_key AND c.at > horizon
     ORDER BY c.at DESC OFFSET p_calls - 1 LIMIT 1;
    RETURN QUERY SELECT 'wait'::text, nth + make_interval(secs => p_window_s + p_margin_s), t;
END
$fn$;
"""

_ENTRIES = """
-- Broadcast entries (no provider: one row per ip, whatever the number of providers) and
-- targeted entries (one row per provider and ip), as in the SQLite store. seq names one
-- version of one entry; every provider's progress through the broadcasts is a cursor per
-- level (cursors) plus what it settled out of order (done).
CREATE TABLE signals (
    ip          text     PRIMARY KEY,
    risk        smallint NOT NULL,
    message     text     NOT NULL,
    ts_ms       bigint   NOT NULL,
    expires_ms  bigint,
    received_ms bigint   NOT NULL,
    seq         bigint   NOT NULL
);
CREATE UNIQUE INDEX signals_order ON signals (risk, seq);
CREATE INDEX signals_age ON signals (ts_ms);
CREATE TABLE targeted (
    provider    text     NOT NULL,
    ip          text     NOT NULL,
    risk        smallint NOT NULL,
    message     text     NOT NULL,
    ts_ms       bigint   NOT NULL,
    expires_ms  bigint,
    received_ms bigint   NOT NULL,
    seq         bigint   NOT NULL,
    PRIMARY KEY (provider, ip)
);
CREATE INDEX targeted_order ON targeted (provider, risk, seq);
CREATE INDEX targeted_age ON targeted (ts_ms);

-- The sequence counter and the entry counts. 'seq' is updated by every ingest commit, so
-- its row lock orders those commits: a version with a higher seq always commits after
-- every lower one, and a cursor that passed seq N can never miss a later commit below N
-- (a SEQUENCE would hand out numbers in one order and commit them in another).
-- 'inserted' is counted by ingest and 'deleted' by acks, sweeps and collection, so the
-- two never wait for each other; stored entries = inserted - deleted.
CREATE TABLE counters (
    name  text   PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO counters (name, value) VALUES ('seq', 0), ('inserted', 0), ('deleted', 0);

CREATE TABLE cursors (
    provider text     NOT NULL,
    risk     smallint NOT NULL,
    seq      bigint   NOT NULL,
    PRIMARY KEY (provider, risk)
);
CREATE TABLE done (
    provider text     NOT NULL,
    risk     smallint NOT NULL,
    seq      bigint   NOT NULL,
    PRIMARY KEY (provider, risk, seq)
);
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    provider    text      NOT NULL,
    ip          text      NOT NULL,
    risk        smallint  NOT NULL,
    message     text      NOT NULL,
    ts_ms       bigint    NOT NULL,
    expires_ms  bigint,
    received_ms bigint    NOT NULL,
    failed_ms   bigint    NOT NULL,
    reason      text      NOT NULL,
    causes      jsonb     NOT NULL
);
CREATE INDEX dead_letters_by_provider ON dead_letters (provider, id);
CREATE TABLE provider_state (
    provider     text   PRIMARY KEY,
    status       text   NOT NULL,
    updated_ms   bigint NOT NULL,
    last_call_ms bigint,
    last_outcome text,
    last_error   text,
    hint         text,
    until_ms     bigint
);
-- The call log a budget reads when it is not fenced by a lease (one replica): times in
-- ms under any key (a provider, an app). Fenced budgets use call_log (migration 1).
CREATE TABLE calls (
    key   text   NOT NULL,
    at_ms bigint NOT NULL
);
CREATE INDEX calls_by_key ON calls (key, at_ms);
CREATE TABLE write_probe (
    id integer PRIMARY KEY CHECK (id = 1),
    n  bigint  NOT NULL
);
"""

MIGRATIONS: Sequence[Migration] = (
    Migration(1, "replicas, provider leases with fencing epochs, call log", _COORDINATION),
    Migration(2, "entries (broadcast once, targeted), cursors, dead letters, state", _ENTRIES),
)
LATEST_VERSION = MIGRATIONS[-1].version

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """Where the schema was found and left, and which steps this call applied."""

    found: int
    version: int
    applied: Sequence[int]


async def schema_version(conn: Conn) -> int:
    """The highest applied migration (0 for an empty database)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


def _newer(found: int) -> StoreError:
    return StoreError(
        f"the database schema is at version {found}, newer than this forwarder knows "
        f"({LATEST_VERSION}): run the forwarder version that migrated it, or a newer one"
    )


async def migrate(conn: Conn, migrations: Sequence[Migration] = MIGRATIONS) -> MigrationResult:
    """Bring the schema to the newest version, one replica at a time (advisory lock)."""
    latest = migrations[-1].version
    await conn.execute("SELECT pg_advisory_lock($1, $2)", ADVISORY_NAMESPACE, _MIGRATE_LOCK)
    try:
        await conn.execute(_VERSION_TABLE)
        found = await schema_version(conn)
        if found > latest:
            raise _newer(found)
        applied = []
        for step in migrations:
            if step.version <= found:
                continue
            async with conn.transaction():
                await conn.execute(step.sql)
                await conn.execute(
                    "INSERT INTO schema_version (version, description) VALUES ($1, $2)",
                    step.version,
                    step.description,
                )
            applied.append(step.version)
        return MigrationResult(found=found, version=max(found, latest), applied=applied)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", ADVISORY_NAMESPACE, _MIGRATE_LOCK)


async def require_current(conn: Conn) -> int:
    """Refuse to start unless ``forwarder store migrate`` brought the schema up to date."""
    found = await schema_version(conn)
    if found > LATEST_VERSION:
        raise _newer(found)
    if found < LATEST_VERSION:
        raise StoreError(
            f"the database schema is at version {found}, this forwarder needs "
            f"{LATEST_VERSION}: run `forwarder store migrate --config FILE` "
            "(or set store.migrate_at_start = true)"
        )
    return found
