"""``forwarder demo``: sandbox org + daemon + synthetic detector, end to end, in one process.

The demo provisions the sandbox exactly as an operator provisions a real org (service
app, scope grant, risk provider, through the admin API), then a detector pushes signals
with duplicates and late HIGHs while the progress line shows intake, coalescing, calls
against the budget and delivery. It exits 0 only when every IP reached the org inside
the budget with no 429.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import math
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from forwarder.app import Daemon
from forwarder.clock import SystemClock
from forwarder.config import Settings
from forwarder.okta.admin import AdminClient
from forwarder.okta.keys import generate_signing_key, write_private_key
from forwarder.ratelimit import max_calls_in_window
from forwarder.sandbox import SandboxOrg, serve
from forwarder.telemetry import configure_logging

__all__ = ["run_demo"]

PROVIDER = "demo-org"
_MESSAGES = (
    "Credential stuffing: 42 failed logins/min",
    "Known botnet «Mirai» C2 node",
    "Password spraying across 17 accounts",
    "TOR exit node",
    "Impossible travel (Paris → Sydney)",
)


def _ips(count: int, offset: int = 0) -> list[str]:
    # 198.18.0.0/15 is reserved for benchmarks (RFC 2544): never a real customer IP.
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    return [str(ipaddress.IPv4Address(base + offset + i)) for i in range(count)]


def _say(text: str) -> None:
    print(text, flush=True)


async def _post(session: aiohttp.ClientSession, url: str, items: list[dict[str, Any]]) -> int:
    async with session.post(f"{url}/v1/signals", json=items) as resp:
        body = await resp.json()
        if resp.status != 202:
            raise RuntimeError(f"ingest answered {resp.status}: {body}")
        return int(body["accepted"])


def _make_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


async def run_demo(args: argparse.Namespace) -> int:
    configure_logging("info" if args.verbose else "error", "auto", stream=sys.stderr)
    with contextlib.ExitStack() as stack:
        if args.data_dir:
            data_dir = _make_dir(Path(args.data_dir))
        else:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fwd-demo-")))
        return await _demo(args, data_dir)
    return 1  # pragma: no cover - unreachable, keeps mypy content


async def _demo(args: argparse.Namespace, data_dir: Path) -> int:
    clock = SystemClock()
    org = SandboxOrg(clock=clock)
    rng = random.Random(7)  # noqa: S311 - synthetic data
    async with serve(org) as org_url, aiohttp.ClientSession() as session:
        _say(f"sandbox Okta org     {org_url}  (3 calls/min per provider, like Okta)")
        admin = AdminClient(session, org_url, org.api_token)
        key = generate_signing_key("RS256")
        key_file = data_dir / "demo-org.jwk.json"
        write_private_key(key_file, key, force=True)
        app = await admin.create_service_app("forwarder demo", key.public_jwk())
        client_id = str(app["client_id"])
        await admin.grant_scope(client_id)
        default = (await admin.list_providers())[0]
        await admin.update_provider(
            default["id"], name="forwarder demo", client_id=client_id, action="enforce_and_log"
        )
        _say(f"provisioned          service app {client_id}, scope granted, risk provider set")

        settings = Settings.model_validate(
            {
                "ingest": {"listen": "127.0.0.1:0"},
                "metrics": {"listen": "127.0.0.1:0"},
                "store": {"path": str(data_dir / "forwarder.db")},
                "dispatch": {"linger_s": 1.0},
                "providers": [
                    {
                        "name": PROVIDER,
                        "org_url": org_url,
                        "client_id": client_id,
                        "private_key_file": str(key_file),
                    }
                ],
            }
        )
        daemon = Daemon(settings, data_dir, clock=clock)
        stop = asyncio.Event()
        result: dict[str, Any] = {}
        async with asyncio.TaskGroup() as tg:
            tg.create_task(daemon.run(stop), name="daemon")
            await daemon.ready.wait()
            _say(
                f"daemon               ingest {daemon.ingest_url}"
                f"  metrics {daemon.metrics_url}/metrics"
            )
            _say("")
            try:
                result = await _drive(args, daemon, org, client_id, session, rng)
            finally:
                stop.set()
        return _summary(result, org, client_id)


async def _drive(
    args: argparse.Namespace,
    daemon: Daemon,
    org: SandboxOrg,
    client_id: str,
    session: aiohttp.ClientSession,
    rng: random.Random,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    distinct = _ips(args.ips)
    late_high = _ips(args.high, offset=args.ips)
    levels = ("LOW",) * 6 + ("MEDIUM",) * 3 + ("HIGH",)
    dispatcher = daemon.dispatchers[PROVIDER]
    result: dict[str, Any] = {}
    sent = 0

    # A burst as detectors send it: 100 signals a request, 4 requests at a time, with
    # re-sightings of IPs from the previous request mixed in (they coalesce while waiting).
    requests: list[list[dict[str, Any]]] = []
    per_request = math.ceil(args.duplicates / max(1, math.ceil(len(distinct) / 100)))
    dupes_left = args.duplicates
    for i in range(0, len(distinct), 100):
        items = [
            {"ip": ip, "riskLevel": rng.choice(levels), "message": rng.choice(_MESSAGES)}
            for ip in distinct[i : i + 100]
        ]
        if i and dupes_left > 0:
            take = min(per_request, dupes_left, 100)
            items += [
                {"ip": ip, "riskLevel": "MEDIUM", "message": "seen again"}
                for ip in rng.sample(distinct[i - 100 : i], take)
            ]
            dupes_left -= take
        requests.append(items)
    slots = asyncio.Semaphore(4)

    async def send(items: list[dict[str, Any]]) -> None:
        nonlocal sent
        async with slots:
            accepted = await _post(session, daemon.ingest_url, items)
        sent += accepted

    async def detector() -> None:
        nonlocal sent
        await asyncio.gather(*(send(r) for r in requests))
        if not late_high:
            return
        # Late HIGH signals arrive while a LOW/MEDIUM backlog waits for the budget: they
        # must go out in the very next call, ahead of it.
        await _quiet_moment(org, dispatcher, daemon, deadline=started + 60)
        result["high_after_call"] = len(org.accepted)
        accepted = await _post(
            session,
            daemon.ingest_url,
            [{"ip": ip, "riskLevel": "HIGH", "message": "active attack"} for ip in late_high],
        )
        sent += accepted

    want = set(distinct) | set(late_high)
    calls_needed = math.ceil(len(want) / 1000)
    eta = max(0, calls_needed - 3) * 20
    if eta:
        _say(
            f"{len(want):,} IPs need at least {calls_needed} calls of 1000; at 3 calls/min "
            f"that takes about {eta + 20} s"
        )
    task = asyncio.ensure_future(detector())
    registry = daemon.metrics.registry
    last_key: tuple[int, ...] = ()
    last_print = 0.0
    coalesced = 0.0
    try:
        while True:
            await asyncio.sleep(0.2)
            now = loop.time() - started
            delivered = set(org.accepted_ips(client_id))
            coalesced = (
                # Process-wide (no provider label): one stored entry serves every org.
                registry.get_sample_value("forwarder_signals_coalesced_total", {}) or 0.0
            )
            # Counts between leases are an upper bound; a refresh (as a scrape does) makes
            # them exact.
            await daemon.view.refresh()
            pending = sum(daemon.view.pending_counts(PROVIDER).values())
            calls = [c.status for c in org.event_calls]
            next_in = max(0.0, dispatcher.next_call_at() - daemon.clock.time())
            key = (sent, int(coalesced), pending, len(calls), len(delivered))
            if key != last_key or now - last_print >= 5:
                _say(
                    f"[{now:5.1f}s] accepted {sent:>6,} | coalesced {int(coalesced):>5,}"
                    f" | pending {pending:>6,} | calls {len(calls)} (429s {calls.count(429)})"
                    f" | delivered {len(delivered & want):>6,}/{len(want):,}"
                    + (f" | next call slot in {next_in:4.1f}s" if pending else "")
                )
                last_key, last_print = key, now
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
            if task.done() and pending == 0 and want <= delivered:
                break
            if now > 60 + eta * 1.5:
                _say("demo timed out before every IP was delivered")
                break
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    result.update(
        sent=sent,
        want=want,
        late_high=late_high,
        coalesced=int(coalesced),
        elapsed=loop.time() - started,
    )
    return result


async def _quiet_moment(
    org: SandboxOrg, dispatcher: Any, daemon: Daemon, *, deadline: float
) -> None:
    """Wait until a call has happened and the next one is more than a second away."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        if org.accepted and dispatcher.next_call_at() - daemon.clock.time() > 1.0:
            return
        await asyncio.sleep(0.05)


def _summary(result: dict[str, Any], org: SandboxOrg, client_id: str) -> int:
    if not result:
        return 1
    want: set[str] = result["want"]
    delivered = set(org.accepted_ips(client_id))
    statuses = [c.status for c in org.event_calls]
    times = [c.at for c in org.event_calls]
    high_ok = True
    late_high = set(result["late_high"])
    if late_high:
        index = result.get("high_after_call", 0)
        later = org.accepted[index:]
        high_ok = bool(later) and set(later[0].ips[: len(late_high)]) == late_high
    ok = want <= delivered and statuses.count(429) == 0 and high_ok
    _say("")
    _say("summary")
    _say(
        f"  detector signals     {result['sent']:,} accepted with 202 ({len(want):,} distinct IPs)"
    )
    _say(f"  coalesced            {result['coalesced']:,} re-sightings merged into waiting IPs")
    _say(
        f"  Okta calls           {len(statuses)} ({statuses.count(202)} accepted, "
        f"{statuses.count(429)} rate-limited); "
        f"at most {max_calls_in_window(times, 60)} in any 60 s (budget 3)"
    )
    sizes = [len(c.ips) for c in org.accepted]
    _say(f"  subjects per call    {', '.join(str(n) for n in sizes)} (max 1000)")
    _say(f"  IPs delivered        {len(want & delivered):,} of {len(want):,}")
    if late_high:
        _say(
            "  late HIGH signals    "
            + ("in the first call after they arrived" if high_ok else "DELAYED")
        )
    _say(f"  elapsed              {result['elapsed']:.1f} s")
    _say(
        "  result               "
        + ("OK: every IP delivered, inside the budget" if ok else "FAILED")
    )
    return 0 if ok else 1
