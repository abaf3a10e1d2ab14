"""Several daemons (replicas) on one real PostgreSQL and a sandbox of several orgs.

In-process, on the real clock with a 2-second budget window (the database's clock is
the budget's clock, so it cannot be faked here; the window is short instead): every
replica serves ingest, each org is dispatched by one replica, every IP reaches every
org, no 429, never more than 3 calls per org per window; a stopping replica hands its
orgs over in about a second; the DSN's password shows up nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from forwarder.app import Daemon
from forwarder.clock import SystemClock
from forwarder.config import Settings
from forwarder.okta.keys import generate_signing_key
from forwarder.ratelimit import max_calls_in_window
from forwarder.sandbox import SandboxOrg, serve
from forwarder.telemetry import configure_logging
from tests.harness import ips, launch, register_provider
from tests.pg import PgCluster
from tests.procs import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

WINDOW_S = 2.0


async def provider_org(
    stack: contextlib.AsyncExitStack, tmp: Path, name: str, **overrides: Any
) -> tuple[SandboxOrg, str, dict[str, Any]]:
    """A sandbox org of its own on the real clock (window ``WINDOW_S``), served until
    ``stack`` closes, with one risk provider: the org, its client id, the provider entry."""
    org = SandboxOrg(clock=SystemClock(), window_s=WINDOW_S)
    url = await stack.enter_async_context(serve(org))
    key = generate_signing_key("ES256")
    client_id, provider = register_provider(
        org, url, tmp, name, key=key, window_s=WINDOW_S, **overrides
    )
    return org, client_id, provider


@dataclass
class Fleet:
    stack: contextlib.AsyncExitStack
    tmp: Path
    dsn_file: Path
    session: aiohttp.ClientSession
    providers: list[dict[str, Any]] = field(default_factory=list)
    clients: dict[str, str] = field(default_factory=dict)
    orgs: dict[str, SandboxOrg] = field(default_factory=dict)
    running: dict[str, tuple[Daemon, asyncio.Event, asyncio.Task[None]]] = field(
        default_factory=dict
    )

    async def add_org(self, name: str) -> None:
        """One sandbox org (its own server, its own window) with one risk provider."""
        org, client_id, provider = await provider_org(self.stack, self.tmp, name)
        self.orgs[name] = org
        self.clients[name] = client_id
        self.providers.append(provider)

    async def start(self, name: str) -> Daemon:
        settings = Settings.model_validate(
            {
                "ingest": {"listen": "127.0.0.1:0"},
                "metrics": {"listen": "127.0.0.1:0"},
                "store": {
                    "backend": "postgres",
                    "dsn_file": str(self.dsn_file),
                    "lease_ttl_s": 3.0,
                    "pool_size": 4,
                },
                "dispatch": {"linger_s": 0.2, "shutdown_grace_s": 3.0},
                "providers": self.providers,
            }
        )
        return await self.launch(name, Daemon(settings, self.tmp, clock=SystemClock()))

    async def launch(self, name: str, daemon: Daemon) -> Daemon:
        """Run ``daemon`` as replica ``name`` until it is ready."""
        stop, task = await launch(daemon)
        self.running[name] = (daemon, stop, task)
        return daemon

    async def stop(self, name: str) -> None:
        _, stop, task = self.running.pop(name)
        stop.set()
        await task

    def owned(self) -> dict[str, set[str]]:
        return {
            n: set(d.coordinator.owned()) if d.coordinator else set()
            for n, (d, _, _) in self.running.items()
        }

    async def post(self, replica: str, items: list[dict[str, Any]]) -> int:
        daemon = self.running[replica][0]
        async with self.session.post(f"{daemon.ingest_url}/v1/signals", json=items) as resp:
            await resp.read()
            return resp.status

    async def get(self, replica: str, path: str) -> tuple[int, str]:
        daemon = self.running[replica][0]
        async with self.session.get(f"{daemon.metrics_url}{path}") as resp:
            return resp.status, await resp.text()

    async def until(self, check: Callable[[], bool], seconds: float = 30.0) -> float:
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > seconds:
                raise AssertionError(f"not reached in {seconds} s: {self.owned()}")
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    def delivered_everywhere(self, expected: set[str]) -> bool:
        return all(set(org.accepted_ips()) >= expected for org in self.orgs.values())


@contextlib.asynccontextmanager
async def fleet(tmp: Path, cluster: PgCluster, dsn: str) -> AsyncIterator[Fleet]:
    dsn_file = tmp / "dsn"
    dsn_file.write_text(dsn + "\n")
    async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as session:
        made = Fleet(stack, tmp, dsn_file, session)
        try:
            yield made
        finally:
            for name in list(made.running):
                await made.stop(name)


def signals(addresses: list[str], risk: str = "MEDIUM") -> list[dict[str, Any]]:
    return [{"ip": a, "riskLevel": risk, "message": "scanner"} for a in addresses]


async def test_two_replicas_share_orgs_budget_and_ingest(
    tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str
) -> None:
    """4 orgs over 2 replicas (2 + 2); IPs posted to either replica reach every org; no 429;
    at most 3 calls per org per window; replica A stops and B owns all 4 within ~1 s, and
    what is posted to B afterwards is delivered everywhere."""
    log = io.StringIO()
    configure_logging("info", "json", stream=log)
    try:
        async with fleet(tmp_path, pg_cluster, pg_dsn) as f:
            for i in range(4):
                await f.add_org(f"org-{i}")
            await f.start("a")
            await f.start("b")
            await f.until(lambda: sorted(map(len, f.owned().values())) == [2, 2])
            first = ips(300)
            second = ips(300, offset=300)
            assert await f.post("a", signals(first[:150])) == 202
            assert await f.post("b", signals(first[150:])) == 202
            await f.until(lambda: f.delivered_everywhere(set(first)))
            status, ready = await f.get("a", "/readyz")
            assert status == 200
            await f.stop("a")
            taken = await f.until(lambda: len(f.owned()["b"]) == 4, seconds=10)
            assert taken < 2.0
            assert await f.post("b", signals(second, "HIGH")) == 202
            await f.until(lambda: f.delivered_everywhere(set(first) | set(second)))
            _, metrics = await f.get("b", "/metrics")
            assert "forwarder_providers_owned 4.0" in metrics
            for org in f.orgs.values():
                assert [c.status for c in org.event_calls if c.status != 202] == []
                times = [c.at for c in org.event_calls]
                assert max_calls_in_window(times, WINDOW_S) <= 3
    finally:
        structlog.reset_defaults()
    text = log.getvalue() + ready
    assert pg_cluster.password not in text
    assert json.loads(ready)["store"] == "writable"


def write_config(f: Fleet) -> Path:
    """The fleet's config as a file, for the CLI (store and dead-letter tools)."""
    lines = ["[store]", 'backend = "postgres"', f'dsn_file = "{f.dsn_file}"', ""]
    for p in f.providers:
        lines += ["[[providers]]", *(f"{k} = {json.dumps(v)}" for k, v in p.items()), ""]
    path = f.tmp / "forwarder.toml"
    path.write_text("\n".join(lines))
    return path


async def test_status_and_dead_letters_read_postgres_without_showing_the_dsn(
    tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str
) -> None:
    """`forwarder status` and `dead-letters list` read the shared database; no password."""
    async with fleet(tmp_path, pg_cluster, pg_dsn) as f:
        await f.add_org("org-0")
        await f.start("a")
        await f.until(lambda: len(f.owned()["a"]) == 1)
        assert await f.post("a", signals(ips(5))) == 202
        await f.until(lambda: f.delivered_everywhere(set(ips(5))))
        config = write_config(f)
        status = await run_cli("status", "--config", str(config), "--json")
        letters = await run_cli("dead-letters", "list", "--config", str(config))
    assert status.code == 0, status.output
    org = json.loads(status.stdout)["providers"]["org-0"]
    assert org["pending_total"] == 0
    assert org["last_outcome"] == "accepted"
    assert letters.code == 0, letters.output
    assert "no dead letters" in letters.stdout
    for result in (status, letters):
        assert pg_cluster.password not in result.output


async def test_unreachable_postgres_means_503_and_not_ready_then_recovers(
    tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str
) -> None:
    """The database refuses connections: ingest answers 503 with Retry-After (never 500)
    and /readyz is not ready; once it is back, both recover on their own."""
    name = pg_dsn.rsplit("/", 1)[1]
    async with fleet(tmp_path, pg_cluster, pg_dsn) as f:
        await f.add_org("org-0")
        await f.start("a")
        pg_cluster.sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        pg_cluster.sql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        try:
            daemon = f.running["a"][0]
            async with f.session.post(
                f"{daemon.ingest_url}/v1/signals", json=signals(ips(3))
            ) as resp:
                assert resp.status == 503
                assert "Retry-After" in resp.headers
            status, body = await f.get("a", "/readyz")
            assert status == 503
            assert json.loads(body)["store"] == "unavailable"
        finally:
            pg_cluster.sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        deadline = time.monotonic() + 10
        while (await f.get("a", "/readyz"))[0] != 200:
            assert time.monotonic() < deadline, "never ready again"
            await asyncio.sleep(0.2)
        assert await f.post("a", signals(ips(3))) == 202
        await f.until(lambda: f.delivered_everywhere(set(ips(3))))
