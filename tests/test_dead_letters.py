"""`forwarder dead-letters list | requeue` against a running daemon (CLI in a subprocess)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
    await h.until(lambda: daemon.view.dead_letter_count("acme") == 7)


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
    assert daemon.view.dead_letter_count("acme") == 0


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
    assert daemon.view.dead_letter_count("acme") == 7
