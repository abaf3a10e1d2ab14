"""Scenario 6: one daemon for many customer orgs (issue 10).

One sandbox process stands in for every org (``forwarder sandbox --orgs N``: each
service app its own org, window and tokens), the providers share the vendor's key pair,
and the scenario measures, in order:

1. start-up: spawn to ``/healthz`` and to ``/readyz`` (one shared key file);
2. delivery: a broadcast feed of ``tenant_ips`` IPs, then the time from the last 202
   until every org has every IP, the calls made, the 429s and the most calls any org saw
   in one window;
3. telemetry at N orgs: ``/readyz`` and ``/metrics`` size, scrape time;
4. intake: broadcast signals/s at N orgs divided by the same at one org (unreachable,
   so it sends nothing); the N orgs deliver what arrives meanwhile, within their budgets;
5. start-up again with N distinct key files (copies of the vendor key: every file is
   read and checked on its own, which is what costs), and the intake of step 4 again at
   N orgs that cannot be reached (none delivering, like the baseline).

Peak RSS is the daemon's over steps 1 to 4, and over steps 1 and 2 alone (the feed and
its delivery, before the intake load).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from typing import Any

import aiohttp

from forwarder.bench.drive import run_load
from forwarder.bench.fleet import await_delivery, feed_broadcast, fleet, vendor_key
from forwarder.bench.plan import PER_CALL_MAX, Context
from forwarder.bench.procs import Daemon, Proc, ProviderSpec
from forwarder.bench.stats import merge_load, ratio

__all__ = ["tenants"]

#: IP numbers of the intake measurement (10.220.0.0/16), apart from the feed.
_INTAKE_FIRST = 220 << 16


async def _start_timed(daemon: Daemon) -> tuple[float, float]:
    """Spawn ``daemon``; seconds until ``/healthz`` and until ``/readyz`` answer 200."""
    daemon.proc = Proc(
        daemon.directory / "daemon.log", "forwarder", "run", "--config", str(daemon.config)
    )
    started = time.monotonic()
    healthz: float | None = None
    async with aiohttp.ClientSession() as session:
        while True:
            if daemon.proc.popen.poll() is not None:
                raise RuntimeError(f"daemon exited:\n{daemon.proc.output[-3000:]}")
            path = "/healthz" if healthz is None else "/readyz"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{daemon.metrics_url}{path}") as resp:
                    if resp.status == 200:
                        now = time.monotonic() - started
                        if healthz is None:
                            healthz = now
                            continue
                        return healthz, now
            if time.monotonic() - started > 300:
                raise RuntimeError("daemon never became ready")
            await asyncio.sleep(0.01)


async def _scrape(url: str) -> tuple[int, float]:
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.get(url) as resp:
            body = await resp.read()
        return len(body), time.monotonic() - started


async def _intake(ctx: Context, daemon: Daemon, seconds: float) -> dict[str, Any]:
    # 100-signal requests: at 1,000 orgs before the store-once change one request is
    # 100,000 rows, so a larger one would not finish inside the measured window.
    results = await run_load(
        daemon.signals_url,
        size=100,
        connections=8,
        processes=1,
        duration_s=seconds,
        warmup_s=0.3,
        first=_INTAKE_FIRST,
        watch=daemon.proc,
    )
    return merge_load(results)


async def tenants(ctx: Context) -> dict[str, Any]:
    """Scenario 6: start-up, delivery, telemetry and intake at N orgs."""
    plan = ctx.plan
    orgs, feed, window_s = plan.tenant_orgs, plan.tenant_ips, plan.tenant_window_s
    key_file, public_file = vendor_key(ctx.directory)
    ctx.say(f"tenants: a sandbox standing in for {orgs:,} orgs")
    async with fleet(
        ctx.directory, orgs=orgs, public_key=public_file, window_s=window_s, calls=plan.calls
    ) as (url, token, apps):
        specs = [ProviderSpec(a["name"], url, a["client_id"], key_file) for a in apps]
        daemon = Daemon(
            ctx.directory / "daemon", specs, window_s=window_s, calls=plan.calls, linger_s=0.5
        )
        ctx.say(f"tenants: starting a daemon with {orgs:,} providers (one key file)")
        healthz_s, readyz_s = await _start_timed(daemon)
        try:
            ctx.say(f"tenants: {feed:,} broadcast IPs to every org")
            fed_at = await feed_broadcast([daemon], feed)
            # A scrape while every org has a backlog (the expensive case), then idle.
            busy_bytes, busy_scrape_s = await _scrape(f"{daemon.metrics_url}/metrics")
            busy_readyz_bytes, busy_readyz_s = await _scrape(f"{daemon.metrics_url}/readyz")
            fed = await await_delivery(url, token, orgs=orgs, feed=feed, window_s=window_s)
            readyz_bytes, _ = await _scrape(f"{daemon.metrics_url}/readyz")
            metrics_bytes, scrape_s = await _scrape(f"{daemon.metrics_url}/metrics")
            peak_feed = daemon.peak_rss_mib()
            ctx.say(f"tenants: intake at {orgs:,} orgs")
            at_n = await _intake(ctx, daemon, plan.tenant_intake_s)
            cpu_n = daemon.proc.cpu_cores if daemon.proc else None
            peak = daemon.peak_rss_mib()
        finally:
            await daemon.stop()

    ctx.say("tenants: intake at 1 org (the baseline)")
    one = Daemon(ctx.directory / "one", [specs[0].unreachable()], window_s=window_s)
    await one.start()
    try:
        at_1 = await _intake(ctx, one, plan.tenant_intake_s)
    finally:
        await one.stop()

    ctx.say(f"tenants: starting with {orgs:,} distinct key files")
    keys_dir = ctx.directory / "keys"
    keys_dir.mkdir(exist_ok=True)
    distinct = []
    for spec in specs:
        copy = keys_dir / f"{spec.name}.jwk.json"
        shutil.copyfile(key_file, copy)
        distinct.append(ProviderSpec(spec.name, spec.org_url, spec.client_id, copy).unreachable())
    many_keys = Daemon(ctx.directory / "distinct", distinct, window_s=window_s)
    healthz_distinct_s, readyz_distinct_s = await _start_timed(many_keys)
    try:
        # The same intake at N orgs that cannot be reached (as the 1-org baseline): what
        # intake itself costs at N providers, apart from the deliveries of step 4.
        ctx.say(f"tenants: intake at {orgs:,} orgs, none delivering")
        at_n_idle = await _intake(ctx, many_keys, plan.tenant_intake_s)
    finally:
        await many_keys.stop()

    rate_n, rate_1 = at_n["signals_per_s"], at_1["signals_per_s"]
    return {
        "orgs": orgs,
        "feed_ips": feed,
        "window_s": window_s,
        "healthz_s": round(healthz_s, 3),
        "readyz_s": round(readyz_s, 3),
        "healthz_distinct_keys_s": round(healthz_distinct_s, 3),
        "readyz_distinct_keys_s": round(readyz_distinct_s, 3),
        "all_orgs_have_all_ips_s": (
            round(fed.last_new_ip_at - fed_at, 3) if fed.complete == orgs else None
        ),
        "orgs_complete": fed.complete,
        "calls": fed.calls,
        "calls_per_org_needed": -(-feed // PER_CALL_MAX),
        "max_calls_in_any_window": fed.max_calls_in_any_window,
        "statuses": fed.statuses,
        "readyz_bytes": readyz_bytes,
        "metrics_bytes": metrics_bytes,
        "metrics_scrape_s": round(scrape_s, 3),
        "metrics_bytes_backlog": busy_bytes,
        "metrics_scrape_backlog_s": round(busy_scrape_s, 3),
        "readyz_bytes_backlog": busy_readyz_bytes,
        "readyz_backlog_s": round(busy_readyz_s, 3),
        "intake_signals_per_s": rate_n,
        "intake_signals_per_s_one_org": rate_1,
        "intake_ratio": ratio(rate_n, rate_1),
        "intake_statuses": at_n["statuses"],
        "intake_signals_per_s_not_delivering": at_n_idle["signals_per_s"],
        "intake_ratio_not_delivering": ratio(at_n_idle["signals_per_s"], rate_1),
        "daemon_cpu_cores_during_intake": cpu_n,
        "peak_rss_mib": peak,
        "peak_rss_mib_feed_and_delivery": peak_feed,
        "check": {
            "unit": "org-IP pairs of the broadcast feed",
            "sent": orgs * feed,
            "delivered": fed.delivered,
            "delivered_means": "distinct IPs accepted by each org",
            "http_429": fed.statuses.get("429", 0),
        },
    }
