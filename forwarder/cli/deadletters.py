"""``forwarder dead-letters list | requeue``: inspect what Okta rejected, and send it again.

A batch lands in the dead-letter table when Okta answers 400/422 (it rejected the
payload). ``list`` shows the signals with Okta's causes. Once the cause is fixed,
``requeue`` posts them back to the running daemon's ingest API (keeping each signal's
timestamp, expiry and provider) and removes the rows the daemon accepted; signals the
ingest API refuses now (too old, expired) stay in the table and are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp

from forwarder.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, config_path, run_sync
from forwarder.signals import format_ms
from forwarder.store import DeadLetter, StoreReader

__all__ = ["register"]

_CHUNK = 500


def _load(args: argparse.Namespace) -> tuple[Any, StoreReader] | None:
    from forwarder.config import load_settings  # noqa: PLC0415
    from forwarder.store import open_reader  # noqa: PLC0415

    path = config_path(args.config)
    if path is None:
        print("dead-letters needs --config FILE or FORWARDER_CONFIG", file=sys.stderr)
        return None
    settings, base = load_settings(path, check_files=False)
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


async def _requeue(
    rows: Sequence[DeadLetter], url: str, token: str | None
) -> tuple[list[int], list[tuple[int, str]]]:
    """Post rows to ingest; return (ids accepted, (id, why) refused)."""
    accepted: list[int] = []
    refused: list[tuple[int, str]] = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for start in range(0, len(rows), _CHUNK):
            chunk = list(rows[start : start + _CHUNK])
            while chunk:
                async with session.post(
                    f"{url}/v1/signals", json=[_item(r) for r in chunk]
                ) as resp:
                    body = await resp.json(content_type=None)
                    status = resp.status
                if status == 202:
                    accepted.extend(r.id for r in chunk)
                    break
                if status != 400 or not isinstance(body, dict):
                    raise RuntimeError(f"ingest answered {status}: {body}")
                # Nothing of a 400 request is stored: drop the refused items and retry.
                bad = {d["index"]: d for d in body.get("details", []) if d.get("index", -1) >= 0}
                if not bad:
                    raise RuntimeError(f"ingest answered 400: {body}")
                for index, detail in sorted(bad.items()):
                    refused.append((chunk[index].id, f"{detail['field']}: {detail['message']}"))
                chunk = [r for i, r in enumerate(chunk) if i not in bad]
    return accepted, refused


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
    try:
        accepted, refused = asyncio.run(_requeue(rows, url, token))
    except (aiohttp.ClientError, OSError, RuntimeError) as exc:
        print(
            f"requeue failed; nothing was removed: {exc} (is the daemon running?)", file=sys.stderr
        )
        return EXIT_FAILED
    removed = run_sync(store.delete_dead_letters(accepted))
    if args.json:
        print(
            json.dumps({"requeued": removed, "refused": [{"id": i, "why": w} for i, w in refused]})
        )
    else:
        print(f"requeued {removed} signal(s) through {url}; the daemon sends them in its budget")
        for rid, why in refused:
            print(f"  kept #{rid}: ingest refused it ({why})")
    return EXIT_OK if not refused else EXIT_FAILED


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
