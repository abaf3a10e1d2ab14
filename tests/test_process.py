"""Real processes: kill -9 loses nothing, SIGTERM drains, the CLI and the demo work.

These run `python -m forwarder` in subprocesses against a sandbox subprocess, with the
budget window shortened on both sides (5 s) so a run takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from forwarder.okta.admin import AdminClient
from forwarder.okta.keys import generate_signing_key, write_private_key
from forwarder.store.sqlite import SqliteReader
from tests.harness import ips
from tests.procs import Proc, cli, free_port, sandbox

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def provision(org: str, api_token: str, tmp: Path, name: str = "acme") -> Path:
    """Set up a provider the way an operator would, and write its config."""
    key = generate_signing_key("ES256")
    write_private_key(tmp / f"{name}.jwk.json", key, force=True)
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, org, api_token)
        client_id = (await admin.create_service_app(name, key.public_jwk()))["client_id"]
        await admin.grant_scope(client_id)
        default = (await admin.list_providers())[0]
        await admin.update_provider(
            default["id"], name=name, client_id=client_id, action="log_only"
        )
    config = tmp / "forwarder.toml"
    config.write_text(
        f"""
[ingest]
listen = "127.0.0.1:{free_port()}"
[metrics]
listen = "127.0.0.1:{free_port()}"
[store]
path = "data/forwarder.db"
[log]
format = "json"
[dispatch]
linger_s = 0.5
shutdown_grace_s = 5
[[providers]]
name = "{name}"
org_url = "{org}"
client_id = "{client_id}"
private_key_file = "{name}.jwk.json"
window_s = 5
"""
    )
    return config


def urls(config: Path) -> tuple[str, str]:
    text = config.read_text()
    ingest = text.split("[ingest]\nlisten = ")[1].split("\n")[0].strip('"')
    metrics = text.split("[metrics]\nlisten = ")[1].split("\n")[0].strip('"')
    return f"http://{ingest}", f"http://{metrics}"


async def wait_ready(metrics_url: str, proc: Proc) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if proc.popen.poll() is not None:
                raise AssertionError(f"daemon exited {proc.popen.returncode}: {proc.output}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{metrics_url}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError("daemon never became ready")


async def post_low(ingest_url: str, addresses: list[str], *, per_request: int) -> None:
    """POST ``addresses`` as LOW signals, ``per_request`` a request; each answered 202."""
    async with aiohttp.ClientSession() as session:
        for i in range(0, len(addresses), per_request):
            items = [{"ip": ip, "riskLevel": "LOW"} for ip in addresses[i : i + per_request]]
            async with session.post(f"{ingest_url}/v1/signals", json=items) as resp:
                assert resp.status == 202


@contextlib.asynccontextmanager
async def running(config: Path) -> AsyncIterator[Proc]:
    """`forwarder run --config CONFIG` as a process, once ready; killed afterwards if it
    still runs (its output stays readable)."""
    proc = Proc(config.parent / "daemon.log", "run", "--config", str(config))
    try:
        await wait_ready(urls(config)[1], proc)
        yield proc
    finally:
        proc.stop()


async def accepted_ips(org: str, api_token: str) -> list[str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{org}/_sandbox/accepted", headers={"Authorization": f"SSWS {api_token}"}
        ) as resp,
    ):
        calls = await resp.json()
    return [s["ip"] for c in calls for e in c["body"] for s in e["subjects"]]


async def call_statuses(org: str, api_token: str) -> list[int]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{org}/_sandbox/calls", headers={"Authorization": f"SSWS {api_token}"}) as r,
    ):
        return [c["status"] for c in await r.json()]


@pytest.fixture
async def daemon_env(tmp_path: Path) -> AsyncIterator[tuple[str, str, Path]]:
    with sandbox(tmp_path) as (org, token):
        config = await provision(org, token, tmp_path)
        yield org, token, config


async def test_kill_9_after_202_loses_nothing(daemon_env: tuple[str, str, Path]) -> None:
    """Every signal answered 202 reaches Okta, though the daemon was SIGKILLed right after."""
    org, token, config = daemon_env
    ingest, _ = urls(config)
    sent = ips(6000)
    async with running(config) as proc:
        await post_low(ingest, sent, per_request=200)
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(timeout=10)
    before = set(await accepted_ips(org, token))
    assert len(before) < len(sent), "the daemon delivered everything before the kill"
    async with running(config):
        for _ in range(600):
            if set(await accepted_ips(org, token)) >= set(sent):
                break
            await asyncio.sleep(0.1)
        assert set(await accepted_ips(org, token)) >= set(sent)
        assert 429 not in await call_statuses(org, token)


async def test_sigterm_drains_and_keeps_the_backlog(daemon_env: tuple[str, str, Path]) -> None:
    """SIGTERM: exit 0 promptly; what was not sent stays in the store."""
    org, token, config = daemon_env
    ingest, _ = urls(config)
    async with running(config) as proc:
        await post_low(ingest, ips(5000), per_request=500)
        await asyncio.sleep(0.5)
        started = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=15) == 0
        assert time.monotonic() - started < 6
    lines = proc.output.splitlines()
    events = [json.loads(line)["event"] for line in lines if line.startswith("{")]
    assert "forwarder_draining" in events
    assert "forwarder_stopped" in events
    delivered = len(set(await accepted_ips(org, token)))
    summaries = await SqliteReader(config.parent / "data" / "forwarder.db").summaries()
    pending = sum(sum(s.pending.values()) for s in summaries)
    assert pending > 0
    assert delivered + pending == 5000


def test_config_check_names_problems_and_exits_2(tmp_path: Path) -> None:
    """`forwarder config check` prints every problem and exits 2; a good config exits 0."""
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[providers]]\nname = "a"\norg_url = "https://a-admin.okta.com/"\n'
        'client_id = " 0oa1"\nprivate_key_file = "missing.json"\n'
    )
    proc = cli("config", "check", "--config", str(bad))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert "use the org URL instead (https://a.okta.com)" in out
    assert "client_id has leading or trailing whitespace" in out
    good = tmp_path / "good.toml"
    write_private_key(tmp_path / "k.json", generate_signing_key("RS256"))
    good.write_text(
        '[[providers]]\nname = "a"\norg_url = "https://a.okta.com"\n'
        'client_id = "0oa1"\nprivate_key_file = "k.json"\n'
    )
    proc = cli("config", "check", "--config", str(good))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "OK" in out


def test_run_without_config_is_a_usage_error() -> None:
    """`forwarder run` with no config says how to give one and exits 2."""
    proc = cli("run")
    assert proc.returncode == 2
    assert "--config" in proc.stderr


def test_demo_delivers_everything_and_exits_0(tmp_path: Path) -> None:
    """The README's first command: `forwarder demo` ends with every IP delivered."""
    proc = cli("demo", cwd=tmp_path, timeout=100)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "result               OK" in out
    assert "IPs delivered        2,020 of 2,020" in out
    assert "0 rate-limited" in out
    # 2,495 signals for 2,020 IPs: every re-sighting is merged, and counted.
    assert "coalesced            475 re-sightings" in out


async def test_broken_bodies_and_requests_log_only_json_lines(
    daemon_env: tuple[str, str, Path],
) -> None:
    """Corrupt codings and malformed HTTP get JSON 4xx; the daemon writes only JSON lines."""
    _, _, config = daemon_env
    ingest, _ = urls(config)
    host, port = ingest.removeprefix("http://").split(":")
    statuses = []
    async with running(config) as proc:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            for coding in ("gzip", "deflate", "br", "zstd", "gzip, br", "bogus"):
                async with session.post(
                    f"{ingest}/v1/signals",
                    data=b"\x1f\x8b\x08\x00 definitely not compressed",
                    headers={"Content-Type": "application/json", "Content-Encoding": coding},
                ) as resp:
                    assert resp.content_type == "application/json"
                    assert set(await resp.json()) == {"error", "details"}
                    statuses.append(resp.status)
        for raw in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(raw)
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert b"application/json" in answer.partition(b"\r\n\r\n")[0]
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=15) == 0
    assert statuses == [400, 400, 415, 415, 415, 415]
    lines = [line for line in proc.output.splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line
    assert "Traceback" not in proc.output
