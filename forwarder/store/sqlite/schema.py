"""The SQLite store's tables and indexes, opening a connection, and the one transaction helper.

See :mod:`forwarder.store.sqlite` for what each table means and why it is shaped so.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from forwarder.errors import StoreError

__all__ = ["SCHEMA_VERSION", "connect", "create", "transaction"]

#: Bumped when a table changes shape; an older file is refused with a message, not guessed at.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signals (
    ip          TEXT    PRIMARY KEY,
    risk        INTEGER NOT NULL,
    message     TEXT    NOT NULL,
    ts_ms       INTEGER NOT NULL,
    expires_ms  INTEGER,
    received_ms INTEGER NOT NULL,
    seq         INTEGER NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS signals_order ON signals (risk, seq);
CREATE INDEX IF NOT EXISTS signals_age ON signals (ts_ms);
CREATE TABLE IF NOT EXISTS targeted (
    provider    TEXT    NOT NULL,
    ip          TEXT    NOT NULL,
    risk        INTEGER NOT NULL,
    message     TEXT    NOT NULL,
    ts_ms       INTEGER NOT NULL,
    expires_ms  INTEGER,
    received_ms INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (provider, ip)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS targeted_order ON targeted (provider, risk, seq);
CREATE INDEX IF NOT EXISTS targeted_age ON targeted (ts_ms);
CREATE TABLE IF NOT EXISTS counts (
    provider TEXT    NOT NULL,
    risk     INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    added    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, risk)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS signals_ins AFTER INSERT ON signals BEGIN
    INSERT INTO counts (provider, risk, n, added) VALUES ('', NEW.risk, 1, 1)
        ON CONFLICT (provider, risk) DO UPDATE SET n = n + 1, added = added + 1;
END;
CREATE TRIGGER IF NOT EXISTS signals_del AFTER DELETE ON signals BEGIN
    UPDATE counts SET n = n - 1 WHERE provider = '' AND risk = OLD.risk;
END;
CREATE TRIGGER IF NOT EXISTS signals_upd AFTER UPDATE OF seq ON signals BEGIN
    UPDATE counts SET n = n - 1 WHERE provider = '' AND risk = OLD.risk;
    INSERT INTO counts (provider, risk, n, added) VALUES ('', NEW.risk, 1, 1)
        ON CONFLICT (provider, risk) DO UPDATE SET n = n + 1, added = added + 1;
END;
CREATE TRIGGER IF NOT EXISTS targeted_ins AFTER INSERT ON targeted BEGIN
    INSERT INTO counts (provider, risk, n) VALUES (NEW.provider, NEW.risk, 1)
        ON CONFLICT (provider, risk) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS targeted_del AFTER DELETE ON targeted BEGIN
    UPDATE counts SET n = n - 1 WHERE provider = OLD.provider AND risk = OLD.risk;
END;
CREATE TRIGGER IF NOT EXISTS targeted_upd AFTER UPDATE OF risk ON targeted
WHEN OLD.risk != NEW.risk BEGIN
    UPDATE counts SET n = n - 1 WHERE provider = OLD.provider AND risk = OLD.risk;
    INSERT INTO counts (provider, risk, n) VALUES (NEW.provider, NEW.risk, 1)
        ON CONFLICT (provider, risk) DO UPDATE SET n = n + 1;
END;
CREATE TABLE IF NOT EXISTS cursors (
    provider TEXT    NOT NULL,
    risk     INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (provider, risk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS done (
    provider TEXT    NOT NULL,
    risk     INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (provider, risk, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS calls (
    key   TEXT    NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_key ON calls (key, at_ms);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    provider    TEXT    NOT NULL,
    ip          TEXT    NOT NULL,
    risk        INTEGER NOT NULL,
    message     TEXT    NOT NULL,
    ts_ms       INTEGER NOT NULL,
    expires_ms  INTEGER,
    received_ms INTEGER NOT NULL,
    failed_ms   INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    causes      TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_provider ON dead_letters (provider, id);
CREATE TABLE IF NOT EXISTS provider_state (
    provider     TEXT    PRIMARY KEY,
    status       TEXT    NOT NULL,
    updated_ms   INTEGER NOT NULL,
    last_call_ms INTEGER,
    last_outcome TEXT,
    last_error   TEXT,
    hint         TEXT,
    until_ms     INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  INTEGER NOT NULL
);
"""


def connect(path: Path, *, cache_mib: int = 16) -> sqlite3.Connection:
    """The daemon's connection: WAL, ``synchronous=NORMAL`` (survives a killed process)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
    return conn


def create(conn: sqlite3.Connection, path: Path) -> None:
    """Create the tables (idempotent); refuse a file written by another schema version."""
    has_pending = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pending'"
    ).fetchone()
    if has_pending is not None:
        raise StoreError(
            f"store {path} was written by an older forwarder (one row per provider and IP);"
            " let that version drain it, or move the file away to start empty"
        )
    # executescript() commits on its own; every statement is idempotent.
    conn.executescript(_SCHEMA)
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema', ?) ON CONFLICT (key) DO NOTHING",
        (SCHEMA_VERSION,),
    )
    (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema version {version}; this forwarder reads {SCHEMA_VERSION}"
        )


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, immediate: bool = True) -> Iterator[None]:
    """One transaction: committed when the block ends, rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
