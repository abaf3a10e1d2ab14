"""Exact backlog figures from the tables, for one provider: what is waiting, since when.

Read by the owning replica when a count is cheap (see
:mod:`~forwarder.store.postgres.backlogs`) and by ``forwarder status``.
"""

from __future__ import annotations

from collections import defaultdict

from forwarder.store.postgres.conn import Conn
from forwarder.store.postgres.queue import ProviderQueue

__all__ = ["oldest_pending", "pending_counts"]


async def pending_counts(conn: Conn, q: ProviderQueue) -> dict[int, int]:
    """Entries the provider has still to send, per level (exact; in flight included).

    An ip with both a targeted and a pending broadcast entry is sent once: the losing
    entry (by the coalescing rule) is not counted.
    """
    levels = list(q.cursor)
    cursors = [q.cursor[level] for level in levels]
    out: dict[int, int] = defaultdict(int)
    # One index range per level (a join on the cursors would scan the whole table).
    for r in await conn.fetch(
        "SELECT c.risk, n.n FROM unnest($1::smallint[], $2::bigint[]) AS c(risk, seq),"
        " LATERAL (SELECT count(*) AS n FROM signals s WHERE s.risk = c.risk AND s.seq > c.seq"
        "   AND NOT EXISTS (SELECT 1 FROM done d WHERE d.provider = $3"
        "                   AND d.risk = s.risk AND d.seq = s.seq)) AS n",
        levels,
        cursors,
        q.provider,
    ):
        out[r["risk"]] += r["n"]
    targeted = await conn.fetch(
        "SELECT risk, count(*) AS n FROM targeted WHERE provider = $1 GROUP BY risk",
        q.provider,
    )
    for r in targeted:
        out[r["risk"]] += r["n"]
    if not targeted:
        return {level: n for level, n in out.items() if n > 0}
    for r in await conn.fetch(
        "SELECT CASE WHEN t.ts_ms > s.ts_ms OR (t.ts_ms = s.ts_ms AND t.risk > s.risk)"
        "            THEN s.risk ELSE t.risk END AS loser, count(*) AS n"
        "  FROM targeted t JOIN signals s ON s.ip = t.ip"
        "  JOIN unnest($2::smallint[], $3::bigint[]) AS c(risk, seq)"
        "    ON s.risk = c.risk AND s.seq > c.seq"
        " WHERE t.provider = $1"
        "   AND NOT EXISTS (SELECT 1 FROM done d WHERE d.provider = $1"
        "                   AND d.risk = s.risk AND d.seq = s.seq)"
        " GROUP BY 1",
        q.provider,
        levels,
        cursors,
    ):
        out[r["loser"]] -= r["n"]
    return {level: n for level, n in out.items() if n > 0}


async def oldest_pending(conn: Conn, q: ProviderQueue) -> dict[int, int]:
    """Observation time of the entry waiting longest (first stored) per level.

    One index lookup per level and table (the first entry above the cursor), however
    large the backlog: a scrape reads this for every provider with something waiting.
    """
    levels = list(q.cursor)
    rows = await conn.fetch(
        "SELECT c.risk, least(b.ts_ms, t.ts_ms) AS ts"
        "  FROM unnest($2::smallint[], $3::bigint[]) AS c(risk, seq)"
        "  LEFT JOIN LATERAL (SELECT s.ts_ms FROM signals s"
        "                      WHERE s.risk = c.risk AND s.seq > c.seq"
        "                      ORDER BY s.seq LIMIT 1) AS b ON true"
        "  LEFT JOIN LATERAL (SELECT x.ts_ms FROM targeted x"
        "                      WHERE x.provider = $1 AND x.risk = c.risk"
        "                      ORDER BY x.seq LIMIT 1) AS t ON true",
        q.provider,
        levels,
        [q.cursor[level] for level in levels],
    )
    return {r["risk"]: int(r["ts"]) for r in rows if r["ts"] is not None}
