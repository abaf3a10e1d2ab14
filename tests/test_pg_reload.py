"""SIGHUP provider reloads with several replicas on one real PostgreSQL.

Two in-process replicas read the same config file (as pods mount one ConfigMap). A
reload on one is announced (``NOTIFY forwarder_config``); the other re-reads its own file
and applies it too: an added org is then owned by exactly one replica and delivered to,
a removed one gets no more calls, a changed one keeps being delivered; an invalid file
keeps the old config on both replicas, with the reload metric at 0.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from forwarder.app import Daemon
from forwarder.clock import SystemClock
from forwarder.config import load_settings
from tests.harness import ips
from tests.pg import PgCluster
from tests.test_pg_replicas import Fleet, fleet, signals

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def write_full_config(f: Fleet, names: list[str], *, timeout_s: float | None = None) -> Path:
    """The whole config file both replicas read, with the providers ``names``."""
    lines = [
        "[ingest]",
        'listen = "127.0.0.1:0"',
        "[metrics]",
        'listen = "127.0.0.1:0"',
        "[store]",
        'backend = "postgres"',
        f"dsn_file = {json.dumps(str(f.dsn_file))}",
        "lease_ttl_s = 3.0",
        "pool_size = 4",
        "[dispatch]",
        "linger_s = 0.2",
        "shutdown_grace_s = 3.0",
        "",
    ]
    for p in f.providers:
        if p["name"] not in names:
            continue
        lines.append("[[providers]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in p.items()]
        if timeout_s is not None:
            lines.append(f"timeout_s = {timeout_s}")
        lines.append("")
    path = f.tmp / "forwarder.toml"
    path.write_text("\n".join(lines))
    return path


async def start_from_file(f: Fleet, name: str, path: Path) -> Daemon:
    settings, base = load_settings(path)
    daemon = Daemon(settings, base, clock=SystemClock(), config_path=path)
    return await f.launch(name, daemon)


def configured(daemon: Daemon) -> set[str]:
    return {p.name for p in daemon.settings.providers}


async def test_reload_on_one_replica_reaches_the_other(
    tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str
) -> None:
    async with fleet(tmp_path, pg_cluster, pg_dsn) as f:
        for i in range(3):
            await f.add_org(f"org-{i}")
        path = write_full_config(f, ["org-0", "org-1"])
        a = await start_from_file(f, "a", path)
        b = await start_from_file(f, "b", path)

        def owners() -> dict[str, list[str]]:
            by: dict[str, list[str]] = {}
            for replica, held in f.owned().items():
                for provider in held:
                    by.setdefault(provider, []).append(replica)
            return by

        await f.until(lambda: sorted(owners()) == ["org-0", "org-1"])
        first = ips(50)
        assert await f.post("a", signals(first)) == 202
        await f.until(
            lambda: all(set(f.orgs[o].accepted_ips()) >= set(first) for o in ("org-0", "org-1"))
        )
        assert f.orgs["org-2"].event_calls == []

        # Reload on a: org-1 removed, org-2 added, org-0 changed (its timeout).
        write_full_config(f, ["org-0", "org-2"], timeout_s=9.0)
        assert await a.reload() is True
        await f.until(lambda: configured(b) == {"org-0", "org-2"}, seconds=10)
        assert configured(a) == {"org-0", "org-2"}
        await f.until(lambda: sorted(owners()) == ["org-0", "org-2"], seconds=15)
        # Each provider owned by exactly one replica; the changed one runs its new settings.
        assert all(len(held) == 1 for held in owners().values()), owners()
        for daemon in (a, b):
            if "org-0" in daemon.dispatchers:
                assert daemon.provider_settings("org-0").timeout_s == 9.0  # type: ignore[union-attr]
        await f.until(lambda: not any("org-1" in d.dispatchers for d in (a, b)), seconds=10)
        calls_to_removed = len(f.orgs["org-1"].event_calls)

        second = ips(50, offset=50)
        assert await f.post("b", signals(second)) == 202
        await f.until(
            lambda: all(set(f.orgs[o].accepted_ips()) >= set(second) for o in ("org-0", "org-2"))
        )
        assert len(f.orgs["org-1"].event_calls) == calls_to_removed
        assert set(f.orgs["org-1"].accepted_ips()).isdisjoint(second)
        for org in f.orgs.values():
            assert [c.status for c in org.event_calls if c.status != 202] == []

        # An invalid file: a refuses it and announces nothing; b, told of some other
        # provider set while its file is invalid, refuses it too. Both keep the old one.
        path.write_text(path.read_text() + '\n[[providers]]\nname = "broken"\n')
        assert await a.reload() is False
        b.config_announced("0123456789abcdef")
        for replica in ("a", "b"):

            async def refused(replica: str = replica) -> bool:
                _, text = await f.get(replica, "/metrics")
                return "forwarder_config_last_reload_successful 0.0" in text

            deadline = asyncio.get_running_loop().time() + 10
            while not await refused():
                assert asyncio.get_running_loop().time() < deadline, replica
                await asyncio.sleep(0.1)
        assert configured(a) == configured(b) == {"org-0", "org-2"}
        third = ips(20, offset=100)
        assert await f.post("a", signals(third)) == 202
        await f.until(
            lambda: all(set(f.orgs[o].accepted_ips()) >= set(third) for o in ("org-0", "org-2"))
        )
