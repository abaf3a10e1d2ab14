"""``forwarder sandbox``: the Okta-compatible org in the foreground."""

from __future__ import annotations

import argparse
import asyncio
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


async def _main(args: argparse.Namespace) -> None:
    listen = parse_listen(args.listen)
    org = SandboxOrg(
        clock=SystemClock(),
        calls_per_minute=args.calls_per_minute,
        window_s=args.window_seconds,
        token_lifetime_s=args.token_lifetime,
        api_token=_api_token(args.api_token_file),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(org, listen.host, listen.port) as url:
        where = f"in {args.api_token_file}" if args.api_token_file else "printed once below"
        print(f"sandbox Okta org listening on {url}", flush=True)
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
