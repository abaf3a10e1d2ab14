"""The many-org sandbox of the tenants and scale-out scenarios, and what its orgs counted.

``forwarder sandbox --orgs N`` stands in for N customer orgs whose service apps share the
vendor's key pair; a scenario feeds the same broadcast IPs to every org through the
daemon(s) and waits until every org has every one of them (or a deadline), then reads
the sandbox's per-org tallies: distinct IPs, calls, statuses and the most calls in any
one window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from forwarder.bench.org import sandbox_args
from forwarder.bench.plan import PER_CALL_MAX
from forwarder.bench.procs import Daemon, Proc, free_port
from forwarder.bench.stats import add_counts
from forwarder.bench.workload import ip
from forwarder.okta.keys import generate_signing_key, write_private_key

__all__ = [
    "Tally",
    "await_delivery",
    "feed_broadcast",
    "fleet",
    "sandbox_tallies",
    "tally",
    "vendor_key",
]


def vendor_key(directory: Path) -> tuple[Path, Path]:
    """A fresh RS256 vendor key pair written to ``directory``: (private, public) files."""
    vendor = generate_signing_key("RS256")
    key_file = directory / "vendor.private.jwk.json"
    public_file = directory / "vendor.public.jwk.json"
    write_private_key(key_file, vendor, force=True)
    public_file.write_text(json.dumps(vendor.public_jwk()) + "\n")
    return key_file, public_file


@contextlib.asynccontextmanager
async def fleet(
    directory: Path, *, orgs: int, public_key: Path, window_s: float, calls: int
) -> AsyncIterator[tuple[str, str, list[dict[str, str]]]]:
    """``forwarder sandbox --orgs N`` with N apps registered: (url, api token, apps)."""
    port = free_port()
    token_file = directory / "sandbox-api-token"
    orgs_file = directory / "orgs.json"
    proc = Proc(
        directory / "sandbox.log",
        "forwarder",
        *sandbox_args(port, token_file, window_s=window_s, calls=calls),
        "--orgs", str(orgs),
        "--public-key", str(public_key),
        "--orgs-file", str(orgs_file),
    )  # fmt: skip
    try:
        await proc.wait_for_output("listening on", seconds=120)
        apps = json.loads(orgs_file.read_text())
        yield f"http://127.0.0.1:{port}", token_file.read_text().strip(), apps
    finally:
        await proc.stop()


async def feed_broadcast(daemons: Sequence[Daemon], count: int) -> float:
    """POST ``count`` broadcast IPs (1000 per request, to the daemons in turn); wall time
    of the last 202."""
    async with aiohttp.ClientSession() as session:
        for n, start in enumerate(range(0, count, PER_CALL_MAX)):
            items = [
                {"ip": ip(i), "riskLevel": "MEDIUM", "message": "shared threat feed"}
                for i in range(start, min(count, start + PER_CALL_MAX))
            ]
            url = daemons[n % len(daemons)].signals_url
            async with session.post(url, json=items) as resp:
                if resp.status != 202:
                    raise RuntimeError(f"feed refused: {resp.status} {await resp.text()}")
    return time.time()


async def sandbox_tallies(url: str, token: str) -> dict[str, Any]:
    """The sandbox's per-org tallies (``GET /_sandbox/orgs``)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/_sandbox/orgs", headers={"Authorization": f"SSWS {token}"}) as resp,
    ):
        resp.raise_for_status()
        tallies: dict[str, Any] = await resp.json()
        return tallies


@dataclass(frozen=True)
class Tally:
    """Every org's tallies summed, after a broadcast feed of ``feed`` IPs."""

    #: Orgs that have every IP of the feed.
    complete: int
    #: Org-IP pairs of the feed accepted (distinct IPs per org).
    delivered: int
    #: When the last org got its last new IP (epoch seconds; 0.0 before any).
    last_new_ip_at: float
    calls: int
    max_calls_in_any_window: int
    #: Events calls per HTTP status (as a string).
    statuses: dict[str, int]


def tally(tallies: dict[str, Any], feed: int) -> Tally:
    """Sum the sandbox's per-org ``tallies`` for a broadcast feed of ``feed`` IPs."""
    orgs = tallies.values()
    return Tally(
        complete=sum(t["distinct_ips"] >= feed for t in orgs),
        delivered=sum(min(feed, t["distinct_ips"]) for t in orgs),
        last_new_ip_at=max((t["last_new_ip_at"] or 0.0 for t in orgs), default=0.0),
        calls=sum(t["calls"] for t in orgs),
        max_calls_in_any_window=max((t["max_calls_in_window"] for t in orgs), default=0),
        statuses=add_counts(t["statuses"] for t in orgs),
    )


async def await_delivery(url: str, token: str, *, orgs: int, feed: int, window_s: float) -> Tally:
    """Poll the sandbox until all ``orgs`` have every IP of the feed, or for 120 s (at
    least 20 windows); the tally then."""
    deadline = time.monotonic() + max(120.0, 20 * window_s)
    while True:
        counted = tally(await sandbox_tallies(url, token), feed)
        if counted.complete == orgs or time.monotonic() > deadline:
            return counted
        await asyncio.sleep(0.25)
