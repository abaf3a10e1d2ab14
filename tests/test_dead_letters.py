"""`forwarder dead-letters list | requeue` against a running daemon (CLI in a subprocess)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from forwarder.store.sqlite import SqliteStore
from tests.harness import Harness, harness, ips

pytestmark = pytest.mark.slow


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as h:
        yield h


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forwarder",
        "dead-letters",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def write_config(h: Harness) -> Path:
    path = h.tmp / "dl.toml"
    provider = h.providers[0]
    path.write_text(
        f'[store]\npath = "{h.tmp / "forwarder.db"}"\n'
        f'[[providers]]\nname = "{provider["name"]}"\norg_url = "{provider["org_url"]}"\n'
        f'client_id = "{provider["client_id"]}"\n'
        f'private_key_file = "{provider["private_key_file"]}"\n'
    )
    return path


async def dead_letter_seven(h: Harness) -> None:
    daemon = await h.start()
    h.org.fail_events(400)
    status, _ = await h.post([{"ip": ip, "riskLevel": "HIGH", "message": "x y"} for ip in ips(7)])
    assert status == 202
    await h.until(lambda: daemon.dead_letter_count("acme") == 7)


async def test_list_shows_signals_and_okta_causes(h: Harness) -> None:
    """The table names each dead-lettered IP and the causes Okta gave."""
    h.add_provider("acme")
    await dead_letter_seven(h)
    code, out = await cli("list", "--config", str(write_config(h)), "--json")
    assert code == 0, out
    rows = json.loads(out)
    assert sorted(r["ip"] for r in rows) == sorted(ips(7))
    assert all(r["provider"] == "acme" and r["riskLevel"] == "HIGH" for r in rows)
    assert all(r["causes"] for r in rows)


async def test_requeue_sends_them_again_and_empties_the_table(h: Harness) -> None:
    """Requeued signals go through ingest, reach Okta, and leave the dead-letter table."""
    cid = h.add_provider("acme")
    await dead_letter_seven(h)
    daemon = h.daemon
    assert daemon is not None
    code, out = await cli(
        "requeue", "--all", "--config", str(write_config(h)), "--ingest-url", daemon.ingest_url
    )
    assert code == 0, out
    assert "requeued 7 signal(s)" in out
    await h.until(lambda: sorted(h.delivered(cid)) == sorted(ips(7)))
    await h.get("/metrics")  # a scrape recounts the table
    assert daemon.dead_letter_count("acme") == 0


async def test_requeue_keeps_what_ingest_refuses_now(h: Harness) -> None:
    """A dead letter older than max_age_s is refused by ingest and stays, with the reason."""
    h.add_provider("acme")
    await dead_letter_seven(h)
    daemon = h.daemon
    assert daemon is not None
    h.clock.advance(2 * 86_400)
    code, out = await cli(
        "requeue", "--all", "--config", str(write_config(h)), "--ingest-url", daemon.ingest_url
    )
    assert code == 1
    assert out.count("older than max_age_s") == 7
    await h.get("/metrics")
    assert daemon.dead_letter_count("acme") == 7


@dataclass
class FakeIngest:
    """A loopback ingest API answering from a script of statuses; records what it got."""

    statuses: list[int]
    bodies: list[list[dict[str, Any]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        status = self.statuses.pop(0) if self.statuses else 202
        if status == 202:
            return web.json_response({"accepted": len(self.bodies[-1])}, status=202)
        return web.json_response(
            {"error": "store unavailable; retry", "details": []}, status=status
        )

    def ips(self) -> list[str]:
        return [item["ip"] for body in self.bodies for item in body]


@contextlib.asynccontextmanager
async def fake_ingest(statuses: list[int]) -> AsyncIterator[tuple[FakeIngest, str]]:
    fake = FakeIngest(statuses)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/signals", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield fake, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def store_with_dead_letters(tmp: Path, ips_: list[str]) -> Path:
    """A store file whose dead-letter table holds ``ips_`` (HIGH, stamped now) for acme."""
    db_path = tmp / "forwarder.db"
    async with SqliteStore(db_path):
        pass
    now_ms = int(time.time() * 1000)
    db = sqlite3.connect(db_path)
    db.executemany(
        "INSERT INTO dead_letters (provider, ip, risk, message, ts_ms, expires_ms,"
        " received_ms, failed_ms, reason, causes) VALUES (?, ?, 3, 'x', ?, NULL, ?, ?, ?, ?)",
        [("acme", ip, now_ms, now_ms, now_ms, "client_error", '["events[0]: bad"]') for ip in ips_],
    )
    db.commit()
    db.close()
    config = tmp / "dl.toml"
    config.write_text(
        f'[store]\npath = "{db_path}"\n[[providers]]\nname = "acme"\n'
        'org_url = "https://acme.okta.com"\nclient_id = "0oa1"\nprivate_key_file = "k.json"\n'
    )
    return config


def remaining(config: Path) -> list[str]:
    db = sqlite3.connect(config.parent / "forwarder.db")
    rows = db.execute("SELECT ip FROM dead_letters ORDER BY id").fetchall()
    db.close()
    return [ip for (ip,) in rows]


async def test_partial_requeue_removes_exactly_what_was_accepted(tmp_path: Path) -> None:
    """202 for the first chunk, 503 for the next: the first leaves the table, the rest stays."""
    config = await store_with_dead_letters(tmp_path, ips(700))
    async with fake_ingest([202, 503]) as (fake, url):
        code, out = await cli("requeue", "--all", "--config", str(config), "--ingest-url", url)
        assert code == 1
        assert "requeued 500 signal(s)" in out
        assert "200 left in the table" in out
        assert "kept 200 not requeued: ingest answered 503" in out
        first = fake.ips()[:500]
        assert sorted(remaining(config)) == sorted(set(ips(700)) - set(first))
        code, out = await cli("requeue", "--all", "--config", str(config), "--ingest-url", url)
    assert code == 0, out
    assert "requeued 200 signal(s)" in out
    assert remaining(config) == []
    sent = fake.ips()
    assert sorted(set(sent) - set(first)) == sorted(set(ips(700)) - set(first))
    assert len(sent) == 500 + 200 + 200  # chunk 2 twice (503, then 202); chunk 1 once


async def test_requeue_keeps_a_signal_ingest_would_refuse(tmp_path: Path) -> None:
    """A dead letter with an IP ingest refuses today (a non-ASCII digit) is kept, unsent."""
    bad = "198.51.100.\u0664"
    config = await store_with_dead_letters(tmp_path, [bad, "198.51.100.4"])
    async with fake_ingest([]) as (fake, url):
        code, out = await cli("requeue", "--all", "--config", str(config), "--ingest-url", url)
    assert code == 1
    assert "requeued 1 signal(s)" in out
    assert "kept #1: ingest refuses it (ip:" in out
    assert fake.ips() == ["198.51.100.4"]
    assert remaining(config) == [bad]
