"""``forwarder status``: what the store holds per provider, as a table or JSON.

It reads the store through the backend's reader (SQLite: a read-only connection of its
own, so it works while the daemon runs and after it stopped). The state and last call
shown are what each dispatcher last persisted; ``updated`` says when that was.

At 1,000 orgs ``/readyz`` shows a summary and the orgs that are not ok; this is the full
per-org view, narrowed with ``--provider NAME`` (repeatable) and ``--state STATE``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from forwarder.cli.common import EXIT_OK, EXIT_USAGE, run_sync, settings_without_keys
from forwarder.signals import RiskLevel, format_ms
from forwarder.store.base import ProviderSummary

__all__ = ["STATES", "format_age", "register", "render_table", "select", "to_json"]

#: What ``--state`` accepts: a dispatcher's states, "-" (none persisted yet) and
#: ``not_configured`` (rows of a provider removed from the config, kept until max_age_s).
STATES = ("ok", "failing", "rate_limited", "backing_off", "-", "not_configured")

_LEVELS = (RiskLevel.HIGH, RiskLevel.MEDIUM, RiskLevel.LOW)


def format_age(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h03m``, ``4d02h``: short and sortable by eye."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _iso(epoch_s: float | None) -> str | None:
    return format_ms(int(epoch_s * 1000)) if epoch_s is not None else None


def _iso_ms(ms: int | None) -> str | None:
    return format_ms(ms) if ms is not None else None


def _state(summary: ProviderSummary, configured: bool) -> str:
    if not configured:
        return "not_configured"
    return summary.record.status if summary.record else "-"


def to_json(
    summaries: Sequence[ProviderSummary], *, configured: Sequence[str], now: float
) -> dict[str, Any]:
    """The ``--json`` document: every field of the table, raw times included."""
    out: dict[str, Any] = {"generated_at": _iso(now), "providers": {}}
    for s in summaries:
        rec = s.record
        oldest = {
            level.name: {
                "timestamp": format_ms(ms),
                "age_s": round(max(0.0, now - ms / 1000), 3),
            }
            for level, ms in sorted(s.oldest_ms.items(), reverse=True)
        }
        out["providers"][s.provider] = {
            "state": _state(s, s.provider in configured),
            "pending": {level.name: s.pending.get(level, 0) for level in _LEVELS},
            "pending_total": sum(s.pending.values()),
            "oldest": oldest,
            "dead_letters": s.dead_letters,
            "last_call_at": _iso_ms(rec.last_call_ms) if rec else None,
            "last_outcome": rec.last_outcome if rec else None,
            "last_error": rec.last_error if rec else None,
            "hint": rec.hint if rec else None,
            "until": _iso_ms(rec.until_ms) if rec else None,
            "updated_at": _iso_ms(rec.updated_ms) if rec else None,
        }
    return out


def select(
    summaries: Sequence[ProviderSummary],
    *,
    configured: Sequence[str],
    providers: Sequence[str] = (),
    state: str | None = None,
) -> list[ProviderSummary]:
    """The summaries ``--provider`` and ``--state`` ask for (all when neither is given)."""
    known = set(configured)
    wanted = set(providers)
    return [
        s
        for s in summaries
        if (not wanted or s.provider in wanted)
        and (state is None or _state(s, s.provider in known) == state)
    ]


def _level_cell(summary: ProviderSummary, level: RiskLevel, now: float) -> str:
    count = summary.pending.get(level, 0)
    if not count:
        return "0"
    first = summary.oldest_ms.get(level)
    age = f" ({format_age(now - first / 1000)})" if first is not None else ""
    return f"{count:,}{age}"


def render_table(
    summaries: Sequence[ProviderSummary], *, configured: Sequence[str], now: float
) -> str:
    """One row per provider; a failing or waiting provider gets its error and hint below."""
    header = ["PROVIDER", "STATE", "HIGH", "MEDIUM", "LOW", "DEAD", "LAST CALL", "OUTCOME"]
    rows: list[list[str]] = []
    notes: dict[int, list[str]] = {}
    for i, s in enumerate(summaries):
        rec = s.record
        last = "-"
        if rec is not None and rec.last_call_ms is not None:
            last = f"{format_age(now - rec.last_call_ms / 1000)} ago"
        rows.append(
            [
                s.provider,
                _state(s, s.provider in configured),
                *(_level_cell(s, level, now) for level in _LEVELS),
                f"{s.dead_letters:,}",
                last,
                (rec.last_outcome or "-") if rec else "-",
            ]
        )
        if rec is not None and rec.status != "ok":
            lines = []
            if rec.until_ms is not None:
                lines.append(f"{rec.status} until {_iso_ms(rec.until_ms)}")
            if rec.last_error:
                lines.append(f"error: {rec.last_error}")
            if rec.hint:
                lines.append(f"hint: {rec.hint}")
            notes[i] = lines
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for i, row in enumerate(rows):
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        out.extend(f"    {line}" for line in notes.get(i, []))
    return "\n".join(out)


def _cmd_status(args: argparse.Namespace) -> int:
    from forwarder.store import open_reader  # noqa: PLC0415

    loaded = settings_without_keys("forwarder status", args.config)
    if loaded is None:
        return EXIT_USAGE
    settings, base = loaded
    configured = [p.name for p in settings.providers]
    summaries = run_sync(open_reader(settings.store, base=base).summaries(configured))
    unknown = sorted(set(args.provider) - {s.provider for s in summaries})
    if unknown:
        print(f"no provider named {', '.join(unknown)} in the config or store", file=sys.stderr)
        return EXIT_USAGE
    summaries = select(summaries, configured=configured, providers=args.provider, state=args.state)
    now = time.time()
    if args.json:
        print(json.dumps(to_json(summaries, configured=configured, now=now), indent=2))
    else:
        print(render_table(summaries, configured=configured, now=now))
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``forwarder status`` to the ``forwarder`` parser."""
    status = sub.add_parser(
        "status", help="pending, oldest, dead letters and last call per provider"
    )
    status.add_argument("--config", help="config file (default: $FORWARDER_CONFIG)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--provider",
        action="append",
        default=[],
        metavar="NAME",
        help="only this provider (repeatable)",
    )
    status.add_argument("--state", choices=STATES, help="only providers in this state")
    status.set_defaults(func=_cmd_status)
