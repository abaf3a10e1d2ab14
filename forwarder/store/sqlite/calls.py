"""The call log (the budget survives restarts) and the persisted provider records.

Runs on the store thread.
"""

from __future__ import annotations

import sqlite3

from forwarder.store.base import ProviderRecord

__all__ = ["CALL_LOG_KEEP_MS", "call_answered", "record_call", "upsert_provider_state"]

#: Call times older than this are deleted as new ones are recorded.
CALL_LOG_KEEP_MS = 3_600_000

_UPSERT_PROVIDER_STATE = """
INSERT INTO provider_state
    (provider, status, updated_ms, last_call_ms, last_outcome, last_error, hint, until_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (provider) DO UPDATE SET
    status = excluded.status, updated_ms = excluded.updated_ms,
    last_call_ms = excluded.last_call_ms, last_outcome = excluded.last_outcome,
    last_error = excluded.last_error, hint = excluded.hint, until_ms = excluded.until_ms
"""


def record_call(db: sqlite3.Connection, key: str, at_ms: int) -> None:
    """Log one call under ``key``; forget that key's calls older than an hour."""
    db.execute("INSERT INTO calls (key, at_ms) VALUES (?, ?)", (key, at_ms))
    db.execute("DELETE FROM calls WHERE key = ? AND at_ms < ?", (key, at_ms - CALL_LOG_KEEP_MS))


def call_answered(db: sqlite3.Connection, key: str, at_ms: int, answered_ms: int) -> None:
    """Move one call logged at ``at_ms`` to ``answered_ms`` (never earlier)."""
    db.execute(
        "UPDATE calls SET at_ms = ? WHERE rowid ="
        " (SELECT rowid FROM calls WHERE key = ? AND at_ms = ? LIMIT 1) AND at_ms < ?",
        (answered_ms, key, at_ms, answered_ms),
    )


def upsert_provider_state(db: sqlite3.Connection, record: ProviderRecord) -> None:
    """One autocommit upsert per changed state (a WAL append): cheap next to the call."""
    db.execute(_UPSERT_PROVIDER_STATE, record.row())
