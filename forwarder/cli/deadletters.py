"""``forwarder dead-letters list | requeue``: inspect what Okta rejected, and send it again.

A batch lands in the dead-letter table when Okta answers 400/422 (it rejected the
payload). ``list`` shows the signals with Okta's causes. Once the cause is fixed,
``requeue`` posts them back to the running daemon's ingest API (keeping each signal's
timestamp, expiry and provider) and removes exactly the rows the daemon accepted, even
when a later chunk fails; signals ingest would refuse now (too old, expired, an address
ingest no longer takes) are not sent: they stay in the table and are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from forwarder.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    config_path,
    run_sync,
    settings_without_keys,
)
from forwarder.signals import format_ms, refusal_reason
from forwarder.store import DeadLetter, StoreReader

__all__ = ["register"]

_CHUNK = 500


def _load(args: argparse.Namespace) -> tuple[Any, StoreReader] | None:
    from forwarder.store import open_reader  # noqa: PLC0415

    loaded = settings_without_keys("dead-letters", args.config)
    if loaded is None:
        return None
    settings, base = loaded
    return settings, open_reader(settings.store, base=base)


def _as_json(row: DeadLetter) -> dict[str, Any]:
    s = row.signal
    return {
        "id": row.id,
        "provider": row.provider,
        "ip": s.ip,
        "riskLevel": s.risk.name,
        "message": s.message,
        "timestamp": format_ms(s.ts_ms),
        "expiresAt": format_ms(s.expires_ms) if s.expires_ms is not None else None,
        "failedAt": format_ms(row.failed_ms),
        "reason": row.reason,
        "causes": list(row.causes),
    }


def _cmd_list(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    _, store = loaded
    rows = run_sync(store.dead_letters(args.provider, limit=args.limit))
    if args.json:
        print(json.dumps([_as_json(r) for r in rows], indent=2))
        return EXIT_OK
    if not rows:
        print("no dead letters")
        return EXIT_OK
    print(f"{'ID':>6}  {'PROVIDER':<16} {'IP':<39} {'RISK':<6} FAILED AT")
    for r in rows:
        print(
            f"{r.id:>6}  {r.provider:<16} {r.signal.ip:<39} {r.signal.risk.name:<6} "
            f"{format_ms(r.failed_ms)}"
        )
    causes = {c for r in rows for c in r.causes}
    if causes:
        print("\nOkta's causes:")
        for cause in sorted(causes)[:20]:
            print(f"  - {cause}")
    return EXIT_OK


def _ingest_url(listen: str) -> str:
    from forwarder.config import parse_listen  # noqa: PLC0415

    address = parse_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)  # noqa: S104
    return f"http://[{host}]:{address.port}" if ":" in host else f"http://{host}:{address.port}"


def _item(row: DeadLetter) -> dict[str, Any]:
    s = row.signal
    item: dict[str, Any] = {
        "ip": s.ip,
        "riskLevel": s.risk.name,
        "timestamp": format_ms(s.ts_ms),
        "provider": row.provider,
    }
    if s.message:
        item["message"] = s.message
    if s.expires_ms is not None:
        item["expiresAt"] = format_ms(s.expires_ms)
    return item


@dataclass
class _Requeue:
    """What a requeue did: every row ends in exactly one of the three lists."""

    accepted: list[int] = field(default_factory=list)
    #: (id, why): ingest refuses them now (checked here first, or answered 400).
    refused: list[tuple[int, str]] = field(default_factory=list)
    #: Not sent, or sent without a 202, after ``error`` stopped the run.
    unsent: list[int] = field(default_factory=list)
    error: str = ""


def _precheck(rows: Sequence[DeadLetter], max_age_s: float, out: _Requeue) -> list[DeadLetter]:
    """Rows whose content ingest accepts today; the others go to ``out.refused``, unsent.

    A signal Okta rejected for a reason ingest now checks (e.g. a non-ASCII IP stored
    by an older version) would otherwise come back and sink another whole call. The
    content is judged as if the signal arrived at its own timestamp: its age is the
    daemon's to judge, by the daemon's clock, and a stale one gets a 400 and is kept.
    """
    keep = []
    for row in rows:
        at = row.signal.ts_ms
        why = refusal_reason(row.signal, at, max_age_ms=int(max_age_s * 1000))
        if why is None:
            keep.append(row)
        else:
            out.refused.append((row.id, why))
    return keep


async def _requeue(rows: Sequence[DeadLetter], url: str, token: str | None, out: _Requeue) -> None:
    """Post rows to ingest a chunk at a time, recording each row's fate in ``out``.

    Stops at the first answer that is neither 202 nor a 400 naming items (503, a
    network error, ...): what was accepted before it stays accepted, the rest unsent.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for start in range(0, len(rows), _CHUNK):
            chunk = list(rows[start : start + _CHUNK])
            try:
                await _post_chunk(session, url, chunk, out)
            except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as exc:
                out.error = str(exc) or type(exc).__name__
                sent = set(out.accepted) | {rid for rid, _ in out.refused}
                out.unsent = [r.id for r in rows if r.id not in sent]
                return


async def _post_chunk(
    session: aiohttp.ClientSession, url: str, chunk: list[DeadLetter], out: _Requeue
) -> None:
    while chunk:
        async with session.post(f"{url}/v1/signals", json=[_item(r) for r in chunk]) as resp:
            status = resp.status
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
        if status == 202:
            out.accepted.extend(r.id for r in chunk)
            return
        if status != 400 or not isinstance(body, dict):
            raise RuntimeError(f"ingest answered {status}: {_brief(body)}")
        # Nothing of a 400 request is stored: drop the refused items and send the rest
        # (a 400 names at most 100 problems, so a chunk may take a few rounds).
        bad = {
            d["index"]: d
            for d in body.get("details", [])
            if isinstance(d, dict) and isinstance(d.get("index"), int) and d["index"] >= 0
        }
        if not bad:
            raise RuntimeError(f"ingest answered 400: {_brief(body)}")
        for index, detail in sorted(bad.items()):
            out.refused.append((chunk[index].id, f"{detail['field']}: {detail['message']}"))
        chunk = [r for i, r in enumerate(chunk) if i not in bad]


def _brief(body: object) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])[:200]
    return str(body)[:200]


def _cmd_requeue(args: argparse.Namespace) -> int:
    from forwarder.config import read_tokens_file, resolve_path  # noqa: PLC0415

    if not args.all and not args.id and not args.provider:
        print("requeue needs --id N ..., --provider NAME or --all", file=sys.stderr)
        return EXIT_USAGE
    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    settings, store = loaded
    config = config_path(args.config)
    assert config is not None
    rows = run_sync(store.dead_letters(args.provider, ids=args.id or (), limit=None))
    if not rows:
        print("nothing to requeue")
        return EXIT_OK
    token = None
    if settings.ingest.tokens_file:
        tokens = read_tokens_file(
            resolve_path(config.resolve().parent, settings.ingest.tokens_file)
        )
        token = tokens[0] if tokens else None
    url = args.ingest_url or _ingest_url(settings.ingest.listen)
    out = _Requeue()
    sendable = _precheck(rows, settings.dispatch.max_age_s, out)
    run_sync(_requeue(sendable, url, token, out))
    # Whatever the daemon accepted is its now: remove exactly that, even after a failure,
    # so a second run never sends it twice.
    removed = run_sync(store.delete_dead_letters(out.accepted))
    left = len(out.refused) + len(out.unsent)
    if args.json:
        print(
            json.dumps(
                {
                    "requeued": removed,
                    "refused": [{"id": i, "why": w} for i, w in out.refused],
                    "unsent": out.unsent,
                    "error": out.error or None,
                    "left": left,
                }
            )
        )
    else:
        print(
            f"requeued {removed} signal(s) through {url} and removed them from the dead-letter "
            f"table; the daemon sends them in its budget; {left} left in the table"
        )
        for rid, why in out.refused:
            print(f"  kept #{rid}: ingest refuses it ({why})")
        if out.unsent:
            print(
                f"  kept {len(out.unsent)} not requeued: {out.error} (is the daemon running? "
                "run requeue again to send them)",
                file=sys.stderr,
            )
    return EXIT_OK if not left else EXIT_FAILED


def register(sub: Any) -> None:
    """Add ``dead-letters list`` and ``dead-letters requeue``."""
    dl = sub.add_parser("dead-letters", help="inspect and requeue signals Okta rejected")
    dl_sub = dl.add_subparsers(dest="dl_command", required=True, metavar="SUBCOMMAND")

    ls = dl_sub.add_parser("list", help="dead-lettered signals with Okta's causes, newest first")
    ls.add_argument("--config", help="config file (default: $FORWARDER_CONFIG)")
    ls.add_argument("--provider", help="only this provider")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_cmd_list)

    rq = dl_sub.add_parser(
        "requeue", help="send dead letters again through the running daemon's ingest API"
    )
    rq.add_argument("--config", help="config file (default: $FORWARDER_CONFIG)")
    rq.add_argument("--provider", help="every dead letter of this provider")
    rq.add_argument("--id", type=int, nargs="+", help="these rows (ids from `list`)")
    rq.add_argument("--all", action="store_true", help="every dead letter")
    rq.add_argument("--ingest-url", help="default: from ingest.listen in the config")
    rq.add_argument("--json", action="store_true", help="machine-readable output")
    rq.set_defaults(func=_cmd_requeue)
