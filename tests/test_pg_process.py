"""Three replica processes on one PostgreSQL: kill -9 mid-drain, and a paused replica.

Real `python -m forwarder run` processes, sandbox orgs served by this test on loopback,
the real clock with a 2-second budget window (the database's clock is the budget's, so
time is shortened rather than faked) and a 2-second lease TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from forwarder.ratelimit import max_calls_in_window
from forwarder.sandbox import SandboxOrg
from tests.harness import ips
from tests.procs import Proc, free_port
from tests.test_pg_replicas import WINDOW_S, provider_org

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TTL_S = 2.0
ORGS = 4


class Setup:
    def __init__(self, tmp: Path, dsn: str, stack: contextlib.AsyncExitStack) -> None:
        self.tmp = tmp
        self.dsn = dsn
        self.stack = stack
        self.orgs: dict[str, SandboxOrg] = {}
        self.providers: list[dict[str, Any]] = []
        self.procs: dict[str, Proc] = {}
        self.ports: dict[str, tuple[int, int]] = {}
        (tmp / "dsn").write_text(dsn + "\n")

    async def add_org(self, name: str) -> None:
        # 50 subjects per call, so a drain takes several windows.
        org, _, provider = await provider_org(self.stack, self.tmp, name, max_events_per_call=1)
        self.orgs[name] = org
        self.providers.append(provider)

    def start(self, name: str) -> None:
        ingest, metrics = free_port(), free_port()
        lines = [
            "[ingest]",
            f'listen = "127.0.0.1:{ingest}"',
            "[metrics]",
            f'listen = "127.0.0.1:{metrics}"',
            "[store]",
            'backend = "postgres"',
            f'dsn_file = "{self.tmp / "dsn"}"',
            f"lease_ttl_s = {TTL_S}",
            "pool_size = 4",
            "[dispatch]",
            "linger_s = 0.2",
            "shutdown_grace_s = 3.0",
            "[log]",
            'format = "json"',
        ]
        for p in self.providers:
            lines += ["[[providers]]", *(f"{k} = {json.dumps(v)}" for k, v in p.items())]
        config = self.tmp / f"{name}.toml"
        config.write_text("\n".join(lines) + "\n")
        self.ports[name] = (ingest, metrics)
        self.procs[name] = Proc(self.tmp / f"{name}.log", "run", "--config", str(config))

    async def ready(self, session: aiohttp.ClientSession, name: str) -> None:
        url = f"http://127.0.0.1:{self.ports[name][1]}/readyz"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            if self.procs[name].popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} never ready: {self.procs[name].output}")
            await asyncio.sleep(0.1)

    async def post(self, session: aiohttp.ClientSession, name: str, addresses: list[str]) -> None:
        url = f"http://127.0.0.1:{self.ports[name][0]}/v1/signals"
        body = [{"ip": a, "riskLevel": "MEDIUM", "message": "scan"} for a in addresses]
        async with session.post(url, json=body) as resp:
            assert resp.status == 202, await resp.text()

    def delivered(self, expected: set[str]) -> bool:
        return all(set(org.accepted_ips()) >= expected for org in self.orgs.values())

    def check_budget(self) -> None:
        for name, org in self.orgs.items():
            assert [c.status for c in org.event_calls if c.status != 202] == [], name
            assert max_calls_in_window([c.at for c in org.event_calls], WINDOW_S) <= 3, name


async def owners_now(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT provider, owner FROM provider_owner"
            " WHERE owner IS NOT NULL AND expires_at > clock_timestamp()"
        )
    finally:
        await conn.close()
    return {r["provider"]: r["owner"] for r in rows}


async def until(check: Callable[[], Any], seconds: float) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < seconds, "not reached in time"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def replicas(
    tmp: Path, dsn: str, names: list[str]
) -> AsyncIterator[tuple[Setup, aiohttp.ClientSession]]:
    async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as session:
        setup = Setup(tmp, dsn, stack)
        for i in range(ORGS):
            await setup.add_org(f"org-{i}")
        try:
            for name in names:
                setup.start(name)
            for name in names:
                await setup.ready(session, name)

            async def spread() -> bool:
                owned = await owners_now(dsn)
                return len(owned) == ORGS and len(set(owned.values())) == len(names)

            await until(spread, 20)
            yield setup, session
        finally:
            for proc in setup.procs.values():
                proc.stop()


def pid_of(owner: str) -> int:
    """Replica ids are host-pid-suffix."""
    return int(owner.rsplit("-", 2)[1])


async def test_kill_9_of_a_replica_mid_drain_loses_nothing(tmp_path: Path, pg_dsn: str) -> None:
    """3 replicas, 4 orgs, 600 IPs (12 calls per org); the replica owning the most orgs is
    killed with SIGKILL mid-drain: every IP reaches every org, no 429, <= 3 calls per window."""
    async with replicas(tmp_path, pg_dsn, ["r1", "r2", "r3"]) as (setup, session):
        addresses = ips(600)
        for i, name in enumerate(["r1", "r2", "r3"]):
            await setup.post(session, name, addresses[i * 200 : (i + 1) * 200])
        await asyncio.sleep(1.5)
        owned = await owners_now(pg_dsn)
        by_owner: dict[str, int] = {}
        for owner in owned.values():
            by_owner[owner] = by_owner.get(owner, 0) + 1
        victim = max(by_owner, key=lambda o: by_owner[o])
        assert not setup.delivered(set(addresses)), "drained before the kill: make it longer"
        os.kill(pid_of(victim), signal.SIGKILL)

        async def done() -> bool:
            return setup.delivered(set(addresses))

        await until(done, 60)
        setup.check_budget()
        after = await owners_now(pg_dsn)
        assert victim not in after.values()


async def test_a_paused_replica_spends_no_slot_after_losing_its_lease(
    tmp_path: Path, pg_dsn: str
) -> None:
    """SIGSTOP a replica past its TTL while it has work, then SIGCONT: its orgs were taken
    over, and the call log holds no call of it under an epoch it no longer held."""
    async with replicas(tmp_path, pg_dsn, ["r1", "r2"]) as (setup, session):
        owned = await owners_now(pg_dsn)
        paused = sorted(set(owned.values()))[0]
        pid = pid_of(paused)
        addresses = ips(400)
        await setup.post(session, "r1", addresses[:200])
        await setup.post(session, "r2", addresses[200:])
        await asyncio.sleep(0.5)
        conn = await asyncpg.connect(pg_dsn)
        try:
            held = {
                r["provider"]: r["epoch"]
                for r in await conn.fetch(
                    "SELECT provider, epoch FROM provider_owner WHERE owner = $1", paused
                )
            }
        finally:
            await conn.close()
        assert held
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.time()
        try:

            async def taken_over() -> bool:
                now = await owners_now(pg_dsn)
                return len(now) == ORGS and paused not in now.values()

            await until(taken_over, TTL_S + 10)
        finally:
            os.kill(pid, signal.SIGCONT)

        async def done() -> bool:
            return setup.delivered(set(addresses))

        await until(done, 60)
        conn = await asyncpg.connect(pg_dsn)
        try:
            after = await conn.fetch(
                "SELECT provider, epoch FROM call_log WHERE owner = $1 AND at > to_timestamp($2)",
                paused,
                stopped_at,
            )
        finally:
            await conn.close()
        # Calls after the pause under the epochs it held before: spent on a lost lease.
        stale = [
            (r["provider"], r["epoch"]) for r in after if held.get(r["provider"]) == r["epoch"]
        ]
        assert stale == [], "the paused replica spent slots after losing its lease"
        setup.check_budget()
