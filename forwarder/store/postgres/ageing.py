"""Ageing out: entries observed before ``max_age_s`` are deleted and counted.

Any replica may sweep for every provider (cursors are read from the table), leaving alone
what it has in flight itself: its lease settles those.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping

from forwarder.store.postgres.conn import Conn

__all__ = ["sweep"]


async def sweep(
    conn: Conn,
    *,
    cutoff_ms: int,
    busy: Mapping[str, Collection[str]] | None = None,
    batch: int = 20_000,
) -> tuple[dict[str, dict[int, int]], bool]:
    """Drop up to ``batch`` entries of each table observed before ``cutoff_ms``.

    Returns, per provider and level, how many it never sent (every provider's cursor is
    read from the table, so any replica may sweep for all), and whether more remain. ``busy``
    (provider -> ips this replica has in flight) is left alone: its lease settles it.
    """
    busy = busy or {}
    busy_ips = sorted({ip for ips in busy.values() for ip in ips})
    pairs = [(p, ip) for p, ips in busy.items() for ip in ips]
    expired: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    gone = await conn.fetch(
        "WITH old AS (SELECT ip FROM signals WHERE ts_ms < $1 AND NOT (ip = ANY($3::text[]))"
        " LIMIT $2 FOR UPDATE SKIP LOCKED)"
        " DELETE FROM signals s USING old WHERE s.ip = old.ip RETURNING s.risk, s.seq",
        cutoff_ms,
        batch,
        busy_ips,
    )
    if gone:
        risks = [r["risk"] for r in gone]
        seqs = [r["seq"] for r in gone]
        for r in await conn.fetch(
            "SELECT c.provider, c.risk, count(*) AS n"
            "  FROM cursors c JOIN unnest($1::smallint[], $2::bigint[]) AS g(risk, seq)"
            "    ON g.risk = c.risk AND g.seq > c.seq"
            " WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.provider = c.provider"
            "                     AND d.risk = g.risk AND d.seq = g.seq)"
            " GROUP BY c.provider, c.risk",
            risks,
            seqs,
        ):
            expired[r["provider"]][r["risk"]] += r["n"]
        await conn.execute(
            "DELETE FROM done d USING unnest($1::smallint[], $2::bigint[]) AS g(risk, seq)"
            " WHERE d.risk = g.risk AND d.seq = g.seq",
            risks,
            seqs,
        )
    gone_t = await conn.fetch(
        "WITH old AS (SELECT provider, ip FROM targeted t WHERE ts_ms < $1"
        "   AND NOT EXISTS (SELECT 1 FROM unnest($3::text[], $4::text[]) AS b(p, ip)"
        "                   WHERE b.p = t.provider AND b.ip = t.ip)"
        "   LIMIT $2 FOR UPDATE SKIP LOCKED)"
        " DELETE FROM targeted t USING old WHERE t.provider = old.provider AND t.ip = old.ip"
        " RETURNING t.provider, t.risk",
        cutoff_ms,
        batch,
        [p for p, _ in pairs],
        [ip for _, ip in pairs],
    )
    for r in gone_t:
        expired[r["provider"]][r["risk"]] += 1
    deleted = len(gone) + len(gone_t)
    if deleted:
        await conn.execute("UPDATE counters SET value = value + $1 WHERE name = 'deleted'", deleted)
    return {p: dict(n) for p, n in expired.items()}, len(gone) == batch or len(gone_t) == batch
