"""Ingest writes: the coalescing upserts, as one statement per table per group commit.

Runs on the store thread; the caller owns the transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

__all__ = ["BroadcastRow", "TargetedRow", "upsert_rows"]

#: (ip, risk, message, ts_ms, expires_ms, received_ms)
BroadcastRow = tuple[str, int, str, int, int | None, int]
#: (provider, ip, risk, message, ts_ms, expires_ms, received_ms)
TargetedRow = tuple[str, str, int, str, int, int | None, int]
_BROADCAST_LEN = 6

# Okta's rule for a coalesced IP: the newest observation wins; on a tie the higher risk.
# The winner takes a new sequence number, so it is pending again for every provider and
# an ack of the version in flight (by its old number) settles only that version.
#
# One statement per table per group commit: SQLite reads the rows from a JSON array
# itself. executemany() drops and retakes the GIL around every row, and a writer
# thread competing with a busy event loop then waits milliseconds for each one
# (measured: 84-92k -> 140-148k signals/s on 1000-signal requests, docs/benchmarks.md).
# Each row carries its sequence number last.
_BROADCAST = """
INSERT INTO signals (ip, risk, message, ts_ms, expires_ms, received_ms, seq)
SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5,
    value->>6
FROM json_each(?2) WHERE ?1 IS NOT NULL
ON CONFLICT (ip) DO UPDATE SET
    risk = excluded.risk, message = excluded.message, ts_ms = excluded.ts_ms,
    expires_ms = excluded.expires_ms, received_ms = excluded.received_ms, seq = excluded.seq
WHERE excluded.ts_ms > signals.ts_ms
   OR (excluded.ts_ms = signals.ts_ms AND excluded.risk > signals.risk)
"""
_TARGETED = """
INSERT INTO targeted (provider, ip, risk, message, ts_ms, expires_ms, received_ms, seq)
SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6,
    value->>7
FROM json_each(?2) WHERE ?1 IS NOT NULL
ON CONFLICT (provider, ip) DO UPDATE SET
    risk = excluded.risk, message = excluded.message, ts_ms = excluded.ts_ms,
    expires_ms = excluded.expires_ms, received_ms = excluded.received_ms, seq = excluded.seq
WHERE excluded.ts_ms > targeted.ts_ms
   OR (excluded.ts_ms = targeted.ts_ms AND excluded.risk > targeted.risk)
"""


def upsert_rows(
    db: sqlite3.Connection, rows: Sequence[BroadcastRow | TargetedRow], *, first_seq: int
) -> int:
    """Coalescing upserts of broadcast (6-tuple) and targeted (7-tuple) rows.

    Rows are numbered from ``first_seq`` in observation time order, ties in the order
    given (the order requests arrived); returns the next free number. The benchmark's
    storage floor calls this too, so "the same upserts done directly" stays true.
    """
    ordered = list(rows)
    # Requests are nearly always in time order already: check before sorting (stable).
    times: list[int] = [r[3] if len(r) == _BROADCAST_LEN else r[4] for r in ordered]  # type: ignore[misc]
    if any(times[i] > times[i + 1] for i in range(len(times) - 1)):
        order = sorted(range(len(ordered)), key=times.__getitem__)
        ordered = [ordered[i] for i in order]
    broadcast: list[Any] = []
    targeted: list[Any] = []
    for seq, row in enumerate(ordered, start=first_seq):
        (broadcast if len(row) == _BROADCAST_LEN else targeted).append((*row, seq))
    if broadcast:
        db.execute(_BROADCAST, (first_seq, json.dumps(broadcast)))
    if targeted:
        db.execute(_TARGETED, (first_seq, json.dumps(targeted)))
    return first_seq + len(ordered)
