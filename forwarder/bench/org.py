"""The sandbox org of a scenario: start it, provision providers, read back what it saw.

Providers are provisioned through the sandbox's admin API exactly as an operator
provisions a real org (service app, scope grant, risk provider).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from forwarder.bench.procs import Proc, ProviderSpec, free_port
from forwarder.okta.admin import AdminClient
from forwarder.okta.keys import generate_signing_key, write_private_key

__all__ = ["Org", "sandbox", "sandbox_args"]


@dataclass(frozen=True)
class Org:
    """A running sandbox org: its URL and admin API token."""

    url: str
    api_token: str

    async def _get(self, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{self.url}{path}", headers={"Authorization": f"SSWS {self.api_token}"}
            ) as resp,
        ):
            resp.raise_for_status()
            return await resp.json()

    async def accepted(self, client_id: str | None = None) -> list[tuple[float, list[str]]]:
        """Accepted events calls: (arrival time, subject IPs in order)."""
        query = f"?client_id={client_id}" if client_id else ""
        calls = await self._get(f"/_sandbox/accepted{query}")
        return [
            (float(c["at"]), [s["ip"] for e in c["body"] for s in e["subjects"]]) for c in calls
        ]

    async def calls(self) -> list[tuple[float, str | None, int]]:
        """Every events call: (arrival time, client id, status)."""
        return [
            (float(c["at"]), c["client_id"], int(c["status"]))
            for c in await self._get("/_sandbox/calls")
        ]

    async def provision(self, directory: Path, names: Sequence[str]) -> list[ProviderSpec]:
        """Register a service app, grant its scope and make it a risk provider, per name."""
        specs = []
        async with aiohttp.ClientSession() as session:
            admin = AdminClient(session, self.url, self.api_token)
            for index, name in enumerate(names):
                key = generate_signing_key("ES256")
                key_file = directory / f"{name}.jwk.json"
                write_private_key(key_file, key, force=True)
                client_id = (await admin.create_service_app(name, key.public_jwk()))["client_id"]
                await admin.grant_scope(client_id)
                body = {"name": name, "clientId": client_id, "action": "log_only"}
                if index == 0:
                    default = (await admin.list_providers())[0]
                    await admin.update_provider(
                        default["id"], name=name, client_id=client_id, action="log_only"
                    )
                else:
                    async with session.post(
                        f"{self.url}/api/v1/risk/providers",
                        json=body,
                        headers={"Authorization": f"SSWS {self.api_token}"},
                    ) as resp:
                        resp.raise_for_status()
                specs.append(ProviderSpec(name, self.url, client_id, key_file))
        return specs


def sandbox_args(port: int, token_file: Path, *, window_s: float, calls: int = 3) -> list[str]:
    """``forwarder``'s arguments for a sandbox on 127.0.0.1:``port`` that writes its admin
    API token to ``token_file``, with ``calls`` events calls per ``window_s`` seconds."""
    return [
        "sandbox",
        "--listen", f"127.0.0.1:{port}",
        "--api-token-file", str(token_file),
        "--window-seconds", str(window_s),
        "--calls-per-minute", str(calls),
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def sandbox(directory: Path, *, window_s: float, calls: int = 3) -> AsyncIterator[Org]:
    """A ``forwarder sandbox`` process with a shortened rate window."""
    port = free_port()
    token_file = directory / "sandbox-api-token"
    proc = Proc(
        directory / "sandbox.log",
        "forwarder",
        *sandbox_args(port, token_file, window_s=window_s, calls=calls),
    )
    try:
        await proc.wait_for_output("listening on")
        yield Org(f"http://127.0.0.1:{port}", token_file.read_text().strip())
    finally:
        await proc.stop()
