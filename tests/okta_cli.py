"""A sandbox org on loopback for tests running `forwarder okta ...` as a real subprocess.

The ``org`` fixture serves a fresh in-process sandbox (read directly for assertions) with
its admin API token in a file; the CLI runs as an asyncio subprocess, so the sandbox keeps
answering meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forwarder.clock import SystemClock
from forwarder.okta.keys import SigningKey, generate_signing_key, write_private_key
from forwarder.sandbox import SandboxOrg, serve
from tests.harness import provision_app
from tests.procs import CliResult, run_cli

__all__ = ["Org", "served_org"]


@dataclass
class Org:
    """A sandbox org served on loopback, its admin token file and a scratch directory."""

    sandbox: SandboxOrg
    url: str
    token_file: Path
    tmp: Path

    async def okta(self, *args: str, org: str | None = None) -> CliResult:
        """`forwarder okta ARGS --org URL --api-token-file FILE`."""
        return await run_cli(
            "okta", *args, "--org", org or self.url, "--api-token-file", str(self.token_file)
        )

    async def check(self, config: Path, *args: str) -> CliResult:
        """`forwarder okta check --config CONFIG --api-token-file FILE ARGS` (the org URL
        comes from the config)."""
        return await run_cli(
            "okta",
            "check",
            "--config",
            str(config),
            "--api-token-file",
            str(self.token_file),
            *args,
        )

    def key(self, name: str, alg: str = "ES256") -> tuple[SigningKey, Path]:
        """A key whose private file is written; its public JWK file beside it."""
        key = generate_signing_key(alg)
        private = self.tmp / f"{name}.private.jwk.json"
        write_private_key(private, key)
        public = self.tmp / f"{name}.public.jwk.json"
        public.write_text(json.dumps(key.public_jwk()))
        return key, private

    def app(
        self,
        name: str,
        *,
        grant: bool = True,
        provider: bool = True,
        action: str = "log_only",
        dpop: bool = False,
    ) -> tuple[str, Path]:
        """A service app set up directly in the sandbox (a precondition, not under test):
        its client id and private key file (:meth:`key`).

        ``provider``: the app is the risk provider ``name`` with ``action``; ``dpop``: the
        app requires DPoP.
        """
        key, private = self.key(name)
        client_id = provision_app(
            self.sandbox,
            name,
            key,
            grant=grant,
            provider=name if provider else None,
            action=action,
            dpop=dpop,
        )
        return client_id, private

    def config(self, *providers: tuple[str, str, Path], **extra: str) -> Path:
        """A config with (name, client_id, private key file) providers, each with the
        string settings ``extra``."""
        path = self.tmp / "forwarder.toml"
        path.write_text(
            "".join(
                f'[[providers]]\nname = "{name}"\norg_url = "{self.url}"\n'
                f'client_id = "{client_id}"\nprivate_key_file = "{key_file}"\n'
                + "".join(f'{k} = "{v}"\n' for k, v in extra.items())
                for name, client_id, key_file in providers
            )
        )
        return path

    def clients(self) -> list[dict[str, Any]]:
        clients: list[dict[str, Any]] = self.sandbox.summary()["clients"]
        return clients


@pytest.fixture(name="org")
async def served_org(tmp_path: Path) -> AsyncIterator[Org]:
    """A fresh sandbox org on the real clock, served on loopback."""
    sandbox_org = SandboxOrg(clock=SystemClock())
    token_file = tmp_path / "api-token"
    token_file.write_text(sandbox_org.api_token + "\n")
    async with serve(sandbox_org) as url:
        yield Org(sandbox_org, url, token_file, tmp_path)
