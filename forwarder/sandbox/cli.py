"""``forwarder sandbox``: the Okta-compatible org in the foreground.

``--orgs N`` makes it stand in for N customer orgs: each service app is its own org
(its own risk provider, window, tokens and grants). With ``--public-key`` it registers
N apps with that key and the scope up front and writes their client ids to
``--orgs-file`` (JSON), ready for a benchmark's config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
from pathlib import Path

from forwarder.clock import SystemClock
from forwarder.config import parse_listen
from forwarder.sandbox import SandboxOrg, serve

__all__ = ["run_sandbox"]


def _api_token(path: str | None) -> str:
    if not path:
        return secrets.token_urlsafe(30)
    file = Path(path)
    if file.exists():
        token = file.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(30)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def _provision(org: SandboxOrg, count: int, public_key: Path, out: Path | None) -> None:
    jwk = json.loads(public_key.read_text())
    jwk = {k: v for k, v in jwk.items() if k != "d"}  # only the public half is registered
    orgs = []
    for i in range(count):
        name = f"org-{i + 1:04d}"
        client_id = org.register_client(name, {"keys": [jwk]})
        org.grant(client_id)
        orgs.append({"name": name, "client_id": client_id})
    if out is not None:
        out.write_text(json.dumps(orgs, indent=1) + "\n")


async def _main(args: argparse.Namespace) -> None:
    listen = parse_listen(args.listen)
    many = args.orgs > 0
    org = SandboxOrg(
        clock=SystemClock(),
        calls_per_minute=args.calls_per_minute,
        window_s=args.window_seconds,
        token_lifetime_s=args.token_lifetime,
        api_token=_api_token(args.api_token_file),
        org_per_client=many,
        keep_bodies=not many,
    )
    if many and args.public_key:
        _provision(
            org, args.orgs, Path(args.public_key), Path(args.orgs_file) if args.orgs_file else None
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(org, listen.host, listen.port) as url:
        where = f"in {args.api_token_file}" if args.api_token_file else "printed once below"
        print(f"sandbox Okta org listening on {url}", flush=True)
        if many:
            print(f"  standing in for {args.orgs} orgs: each service app is its own", flush=True)
        print(
            f"  {args.calls_per_minute} events calls per {args.window_seconds:g} s per provider; "
            f"tokens live {args.token_lifetime} s",
            flush=True,
        )
        print(f"  admin API token (Authorization: SSWS ...) {where}", flush=True)
        if not args.api_token_file:
            print(f"  {org.api_token}", flush=True)
        await stop.wait()


def run_sandbox(args: argparse.Namespace) -> int:
    """Serve the sandbox until SIGTERM/SIGINT."""
    try:
        asyncio.run(_main(args))
    except OSError as exc:
        print(f"forwarder sandbox: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0
