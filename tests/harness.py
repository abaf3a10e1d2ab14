"""Test harness: a sandbox org and an in-process daemon sharing one FakeClock."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from forwarder.app import Daemon
from forwarder.clock import FakeClock
from forwarder.config import Settings
from forwarder.okta.keys import SigningKey, generate_signing_key, write_private_key
from forwarder.okta.tokens import TokenSource
from forwarder.sandbox import SandboxOrg, serve


def ips(count: int, offset: int = 0) -> list[str]:
    """Distinct IPv4 addresses from the benchmarking range 198.18.0.0/15."""
    return [
        f"198.{18 + (offset + i) // 65536}.{(offset + i) // 256 % 256}.{(offset + i) % 256}"
        for i in range(count)
    ]


def provision_app(
    sandbox: SandboxOrg,
    name: str,
    key: SigningKey,
    *,
    grant: bool = True,
    provider: str | None = None,
    action: str = "log_only",
    dpop: bool = False,
) -> str:
    """A service app set up directly in ``sandbox`` (a precondition, not under test): its
    client id.

    ``key``'s public JWK is registered; ``grant``: the risk-events scope is granted;
    ``provider``: the app is made the org's risk provider of that name, with ``action``;
    ``dpop``: the app requires DPoP (``dpop_bound_access_tokens``).
    """
    client_id = sandbox.register_client(name, {"keys": [key.public_jwk()]}, dpop=dpop)
    if grant:
        sandbox.grant(client_id)
    if provider is not None:
        sandbox.set_provider(client_id, provider, action=action)
    return client_id


def dpop_sandbox() -> tuple[FakeClock, SandboxOrg, SigningKey, str]:
    """A sandbox on a FakeClock whose one app (RS256 key), the risk provider "Partner",
    requires DPoP: the clock, the org, the app's key and its client id."""
    clock = FakeClock()
    org = SandboxOrg(clock=clock)
    key = generate_signing_key("RS256")
    return clock, org, key, provision_app(org, "dpop app", key, provider="Partner", dpop=True)


def register_provider(
    sandbox: SandboxOrg,
    org_url: str,
    tmp: Path,
    name: str,
    *,
    key: SigningKey | None = None,
    registered_key: SigningKey | None = None,
    grant: bool = True,
    configure: bool = True,
    dpop_app: bool = False,
    **overrides: Any,
) -> tuple[str, dict[str, Any]]:
    """A service app registered in ``sandbox`` (its private key written to ``tmp``); its
    client id and the provider entry of a config (with ``overrides``).

    ``registered_key``: the public key registered, when not ``key``'s; ``grant``: the scope
    is granted; ``configure``: the app is made the org's risk provider; ``dpop_app``: the
    app requires DPoP (``dpop_bound_access_tokens``).
    """
    key = key or generate_signing_key("RS256")
    client_id = provision_app(
        sandbox,
        name,
        registered_key or key,
        grant=grant,
        provider=name if configure else None,
        dpop=dpop_app,
    )
    key_file = tmp / f"{name}.jwk.json"
    write_private_key(key_file, key, force=True)
    provider = {
        "name": name,
        "org_url": org_url,
        "client_id": client_id,
        "private_key_file": str(key_file),
        **overrides,
    }
    return client_id, provider


async def launch(daemon: Daemon) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """Run ``daemon`` in the background until it is ready: its stop event and its task.

    A daemon that ends before it is ready raises what it raised here.
    """
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
    return stop, task


@dataclass
class Harness:
    clock: FakeClock
    org: SandboxOrg
    org_url: str
    tmp: Path
    session: aiohttp.ClientSession
    providers: list[dict[str, Any]] = field(default_factory=list)
    daemon: Daemon | None = None
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event | None = None

    def add_provider(
        self,
        name: str,
        *,
        org: tuple[SandboxOrg, str] | None = None,
        **options: Any,
    ) -> str:
        """Register a service app in the sandbox and a provider in the config; return client id.

        ``options`` are :func:`register_provider`'s.
        """
        sandbox, org_url = org or (self.org, self.org_url)
        client_id, provider = register_provider(sandbox, org_url, self.tmp, name, **options)
        self.providers.append(provider)
        return client_id

    async def spend_window(self, client_id: str, key: SigningKey, calls: int = 3) -> None:
        """Another client of the same app spends the provider's rate window."""
        tokens = TokenSource(
            session=self.session,
            org_url=self.org_url,
            client_id=client_id,
            key=key,
            clock=self.clock,
        )
        token = await tokens.get()
        for _ in range(calls):
            async with self.session.post(
                f"{self.org_url}/api/v1/risk/events/ip",
                json=[{"subjects": [{"ip": "192.0.2.200", "riskLevel": "LOW"}]}],
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                assert resp.status == 202

    def settings(self, **sections: Any) -> Settings:
        data: dict[str, Any] = {
            "ingest": {"listen": "127.0.0.1:0"},
            "metrics": {"listen": "127.0.0.1:0"},
            "store": {"path": str(self.tmp / "forwarder.db")},
            "dispatch": {"linger_s": 2.0, "backoff_base_s": 1.0},
            "providers": self.providers,
        }
        for section, values in sections.items():
            data[section] = {**data.get(section, {}), **values}
        return Settings.model_validate(data)

    async def start(self, **sections: Any) -> Daemon:
        """Start the daemon in the background and wait until it is ready."""
        daemon = Daemon(self.settings(**sections), self.tmp, clock=self.clock)
        self._stop, self._task = await launch(daemon)
        self.daemon = daemon
        return daemon

    async def stop(self) -> None:
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        await self._task
        self._task = None
        self.daemon = None

    async def post(self, items: list[dict[str, Any]]) -> tuple[int, Any]:
        assert self.daemon is not None
        async with self.session.post(
            f"{self.daemon.ingest_url}/v1/signals",
            data=json.dumps(items),
            headers={"Content-Type": "application/json"},
        ) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str) -> tuple[int, Any]:
        assert self.daemon is not None
        async with self.session.get(f"{self.daemon.metrics_url}{path}") as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    def delivered(self, client_id: str) -> list[str]:
        return self.org.accepted_ips(client_id)

    async def until(self, condition: Any, *, max_seconds: float = 3600.0) -> float:
        return await self.clock.run_until(condition, max_seconds=max_seconds, settle=0.03)


@contextlib.asynccontextmanager
async def harness(tmp: Path, **org_kwargs: Any) -> AsyncIterator[Harness]:
    clock = FakeClock()
    org = SandboxOrg(clock=clock, **org_kwargs)
    async with serve(org) as url, aiohttp.ClientSession() as session:
        h = Harness(clock=clock, org=org, org_url=url, tmp=tmp, session=session)
        try:
            yield h
        finally:
            await h.stop()
