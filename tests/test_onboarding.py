"""Onboarding a customer org into a running daemon: `okta setup --write-to`, then SIGHUP.

Real processes on loopback: two sandbox orgs, the daemon, the CLI. The daemon starts
with one org from its drop-in directory; a second org is provisioned with Okta's own
example display name ("Risk Provider Example") reusing the vendor's key, written into
the directory, and picked up by SIGHUP while signals keep flowing. A broken drop-in
file is refused on the next SIGHUP and the daemon carries on with what it had.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from forwarder.ratelimit import max_calls_in_window
from tests.harness import ips
from tests.procs import Proc, free_port, run_cli, sandbox

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def _sandbox_get(org: str, token: str, path: str) -> object:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{org}{path}", headers={"Authorization": f"SSWS {token}"}) as resp,
    ):
        return await resp.json()


async def _accepted(org: str, token: str) -> set[str]:
    calls = await _sandbox_get(org, token, "/_sandbox/accepted")
    assert isinstance(calls, list)
    return {s["ip"] for c in calls for e in c["body"] for s in e["subjects"]}


async def _calls(org: str, token: str) -> list[tuple[float, int]]:
    calls = await _sandbox_get(org, token, "/_sandbox/calls")
    assert isinstance(calls, list)
    return [(float(c["at"]), int(c["status"])) for c in calls]


async def _setup(org: str, tmp: Path, *extra: str) -> None:
    result = await run_cli(
        "okta", "setup", "--org", org, "--api-token-file", str(tmp / "api-token"), *extra
    )
    assert result.code == 0, result.output


async def _metric(session: aiohttp.ClientSession, metrics: str, name: str) -> float:
    async with session.get(f"{metrics}/metrics") as resp:
        text = await resp.text()
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


async def _until(check: object, seconds: float = 40.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def test_setup_write_to_then_sighup_onboards_an_org_under_load(tmp_path: Path) -> None:
    """setup --write-to + SIGHUP: the new org gets every signal; the first loses nothing."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    drop = tmp_path / "providers.d"
    with sandbox(one, window_s=3.0) as (org1, token1), sandbox(two, window_s=3.0) as (org2, token2):
        await _setup(
            org1,
            one,
            "--name",
            "acme",
            "--keys-dir",
            str(tmp_path / "keys"),
            "--write-to",
            str(drop),
        )
        assert (drop / "acme.toml").exists()
        ingest, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        config = tmp_path / "forwarder.toml"
        config.write_text(
            'provider_files = ["providers.d/*.toml"]\n'
            f'[ingest]\nlisten = "{ingest}"\n[metrics]\nlisten = "{metrics}"\n'
            '[store]\npath = "data/forwarder.db"\n[log]\nformat = "json"\n'
            "[dispatch]\nlinger_s = 0.2\n"
        )
        # The sandboxes' windows are 3 s: the daemon's budget must use the same.
        for f in drop.glob("*.toml"):
            f.write_text(f.read_text() + "window_s = 3.0\n")
        daemon = Proc(tmp_path / "daemon.log", "run", "--config", str(config), cwd=tmp_path)
        sent: list[str] = []
        try:
            async with aiohttp.ClientSession() as session:

                async def ready() -> bool:
                    try:
                        async with session.get(f"http://{metrics}/readyz") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        assert daemon.popen.poll() is None, daemon.output
                        return False

                await _until(ready)

                async def post(batch: list[str]) -> None:
                    items = [{"ip": ip, "riskLevel": "MEDIUM"} for ip in batch]
                    async with session.post(f"http://{ingest}/v1/signals", json=items) as resp:
                        assert resp.status == 202, await resp.text()
                    sent.extend(batch)

                await post(ips(300))
                setup = asyncio.create_task(
                    _setup(
                        org2,
                        two,
                        "--name",
                        "Risk Provider Example",
                        "--key",
                        str(tmp_path / "keys" / "acme.private.jwk.json"),
                        "--write-to",
                        str(drop),
                    )
                )
                for i in range(10):  # signals keep flowing while the org is onboarded
                    await post(ips(50, offset=1000 + 50 * i))
                    await asyncio.sleep(0.05)
                await setup
                new_file = drop / "risk-provider-example.toml"
                text = new_file.read_text()
                assert 'name = "risk-provider-example"' in text
                new_file.write_text(text + "window_s = 3.0\n")
                daemon.popen.send_signal(signal.SIGHUP)

                async def reloaded() -> bool:
                    return '"config_reloaded"' in daemon.output

                await _until(reloaded)
                after = ips(200, offset=5000)
                await post(after)
                await _until(lambda: _has(org1, token1, set(sent)))
                await _until(lambda: _has(org2, token2, set(after)))
                assert (
                    await _metric(
                        session, f"http://{metrics}", "forwarder_config_last_reload_successful"
                    )
                    == 1.0
                )

                # A broken drop-in: refused, named in the log, the old config runs on.
                (drop / "broken.toml").write_text('[[providers]]\nname = "x y"\n')
                daemon.popen.send_signal(signal.SIGHUP)

                async def refused() -> bool:
                    return '"config_reload_failed"' in daemon.output

                await _until(refused)
                assert str(drop / "broken.toml") in daemon.output
                assert (
                    await _metric(
                        session, f"http://{metrics}", "forwarder_config_last_reload_successful"
                    )
                    == 0.0
                )
                last = ips(50, offset=9000)
                await post(last)
                await _until(lambda: _has(org2, token2, set(last)))
        finally:
            daemon.stop()
        for org, token in ((org1, token1), (org2, token2)):
            assert token not in daemon.output  # the admin API tokens never reach the logs
            calls = await _calls(org, token)
            assert [s for _, s in calls].count(429) == 0
            assert max_calls_in_window([t for t, _ in calls], 3.0) <= 3
        state = await _sandbox_get(org2, token2, "/_sandbox/state")
        assert isinstance(state, dict)
        names = [p["name"] for p in state["providers"]]
        assert "Risk Provider Example" in names
        assert json.dumps(state).count("Risk Provider Example") >= 2  # app and provider


async def _has(org: str, token: str, wanted: set[str]) -> bool:
    return wanted <= await _accepted(org, token)
