"""Orgs come and go without a restart: drop-in provider files and config reloads.

In process, the daemon and the sandbox share one FakeClock; a reload re-reads the
config file from disk exactly as SIGHUP does (``Daemon.reload``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from forwarder.app import Daemon
from forwarder.config import load_settings
from forwarder.errors import ConfigError
from forwarder.okta.keys import generate_signing_key, write_private_key
from forwarder.ratelimit import max_calls_in_window
from forwarder.sandbox import SandboxOrg, serve
from tests.harness import Harness, harness, ips

pytestmark = pytest.mark.timeout(60)


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # strings and numbers: JSON and TOML agree


def provider_block(entry: dict[str, Any]) -> str:
    lines = [f"{key} = {_toml_value(value)}" for key, value in entry.items()]
    return "[[providers]]\n" + "\n".join(lines) + "\n"


def write_config(
    h: Harness,
    providers: Sequence[dict[str, Any]],
    *,
    provider_files: Sequence[str] = (),
    extra: str = "",
) -> Path:
    path = h.tmp / "forwarder.toml"
    text = (
        f"provider_files = {json.dumps(list(provider_files))}\n"
        '[ingest]\nlisten = "127.0.0.1:0"\n'
        '[metrics]\nlisten = "127.0.0.1:0"\n'
        f'[store]\npath = "{h.tmp / "forwarder.db"}"\n'
        "[dispatch]\nlinger_s = 2.0\nbackoff_base_s = 1.0\n" + extra + "\n"
    )
    path.write_text(text + "".join(provider_block(p) for p in providers))
    return path


def by_name(h: Harness) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in h.providers}


async def start_from_file(h: Harness, path: Path) -> Daemon:
    settings, base = load_settings(path)
    daemon = Daemon(settings, base, clock=h.clock, config_path=path)
    h._stop = asyncio.Event()
    h._task = asyncio.create_task(daemon.run(h._stop))
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({ready, h._task}, return_when=asyncio.FIRST_COMPLETED)
    if h._task.done():
        h._task.result()
    h.daemon = daemon
    return daemon


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as h:
        yield h


def sample(daemon: Daemon, name: str, **labels: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name, labels)


def calls_of(h: Harness, client_id: str) -> list[float]:
    return [c.at for c in h.org.event_calls if c.client_id == client_id]


async def test_reload_adds_removes_and_changes_providers_under_load(h: Harness) -> None:
    """Providers added, removed and changed while signals flow: nothing lost, no overrun."""
    cid_a = h.add_provider("a")
    cid_b = h.add_provider("b")
    cid_c = h.add_provider("c")
    p = by_name(h)
    path = write_config(h, [p["a"], p["b"]])
    daemon = await start_from_file(h, path)
    expected: dict[str, set[str]] = {"a": set(), "b": set(), "c": set()}

    async def send(batch: list[str], to: Sequence[str]) -> None:
        status, body = await h.post([{"ip": ip, "riskLevel": "MEDIUM"} for ip in batch])
        assert status == 202, body
        for name in to:
            expected[name].update(batch)

    await send(ips(1500), ["a", "b"])
    await h.until(lambda: len(h.delivered(cid_a)) >= 1000 and len(h.delivered(cid_b)) >= 1000)

    # a changes (smaller events), b goes, c comes; signals keep arriving meanwhile.
    changed_a = {**p["a"], "max_subjects_per_event": 25}
    write_config(h, [changed_a, p["c"]])
    reloading = asyncio.create_task(daemon.reload())
    racing = ips(700, offset=2000)  # routed to the old set or the new one, never split
    await send(racing, ["a"])
    assert await reloading is True
    assert set(daemon.dispatchers) == {"a", "c"}
    status, body = await h.post([{"ip": "192.0.2.9", "riskLevel": "HIGH", "provider": "b"}])
    assert status == 400
    assert "b" in json.dumps(body)
    await send(ips(600, offset=4000), ["a", "c"])
    assert daemon.store is not None
    store = daemon.store
    await h.until(
        lambda: (
            expected["a"] <= set(h.delivered(cid_a))
            and expected["c"] <= set(h.delivered(cid_c))
            and sum(store.pending_counts("c").values()) == 0
        ),
        max_seconds=600,
    )
    # b stopped with its remaining signals kept; adding it back resumes them.
    assert sum(store.pending_counts("b").values()) > 0
    write_config(h, [changed_a, p["b"], p["c"]])
    assert await daemon.reload() is True
    await h.until(lambda: store.pending_total() == 0, max_seconds=600)
    assert expected["b"] <= set(h.delivered(cid_b))
    to_b, to_c = set(racing) <= set(h.delivered(cid_b)), set(racing) <= set(h.delivered(cid_c))
    assert to_b != to_c, "the batch sent during the reload went to exactly one provider set"

    for cid in (cid_a, cid_b, cid_c):
        assert max_calls_in_window(calls_of(h, cid), 60.0) <= 3, cid
    assert [c.status for c in h.org.event_calls].count(429) == 0
    # A changed provider's events carry what its new settings say.
    last_a = [c for c in h.org.accepted if c.client_id == cid_a][-1]
    assert max(len(e["subjects"]) for e in last_a.body) <= 25
    assert sample(daemon, "forwarder_config_last_reload_successful") == 1.0


async def test_rename_keeps_the_apps_budget(h: Harness) -> None:
    """The budget belongs to the Okta app: a renamed provider waits out the old name's calls."""
    cid = h.add_provider("old")
    path = write_config(h, [by_name(h)["old"]])
    daemon = await start_from_file(h, path)
    for i in range(3):
        status, _ = await h.post([{"ip": ip, "riskLevel": "HIGH"} for ip in ips(1, 10 * i)])
        assert status == 202
        await h.until(lambda n=i: len(h.delivered(cid)) >= n + 1)
    assert len(calls_of(h, cid)) == 3
    renamed = {**by_name(h)["old"], "name": "new"}
    write_config(h, [renamed])
    assert await daemon.reload() is True
    status, _ = await h.post([{"ip": "192.0.2.50", "riskLevel": "HIGH"}])
    assert status == 202
    await h.until(lambda: "192.0.2.50" in h.delivered(cid))
    times = calls_of(h, cid)
    assert len(times) == 4
    assert times[3] - times[0] >= 60.0
    assert [c.status for c in h.org.event_calls].count(429) == 0


async def test_invalid_reload_keeps_the_old_config(h: Harness) -> None:
    """A broken config is refused whole: the daemon runs on and the metric says 0."""
    cid = h.add_provider("a")
    h.add_provider("b")
    p = by_name(h)
    path = write_config(h, [p["a"]])
    daemon = await start_from_file(h, path)
    loaded_at = sample(daemon, "forwarder_config_last_reload_success_timestamp_seconds")
    assert sample(daemon, "forwarder_config_last_reload_successful") == 1.0
    bad_b = {**p["b"], "org_url": "https://b-admin.okta.com", "private_key_file": "gone.json"}
    write_config(h, [p["a"], bad_b])
    h.clock.advance(5)
    assert await daemon.reload() is False
    assert set(daemon.dispatchers) == {"a"}
    assert sample(daemon, "forwarder_config_last_reload_successful") == 0.0
    assert sample(daemon, "forwarder_config_last_reload_success_timestamp_seconds") == loaded_at
    _, text = await h.get("/metrics")
    assert "forwarder_config_last_reload_successful 0.0" in text
    status, _ = await h.post([{"ip": "192.0.2.1", "riskLevel": "HIGH"}])
    assert status == 202
    await h.until(lambda: "192.0.2.1" in h.delivered(cid))
    write_config(h, [p["a"], p["b"]])
    assert await daemon.reload() is True
    assert set(daemon.dispatchers) == {"a", "b"}
    assert sample(daemon, "forwarder_config_last_reload_successful") == 1.0


async def test_invalid_reload_logs_every_problem(h: Harness) -> None:
    """Each problem of a refused reload is logged, with a hint that the old config runs on."""
    h.add_provider("a")
    p = by_name(h)
    path = write_config(h, [p["a"]])
    daemon = await start_from_file(h, path)
    bad = {**p["a"], "org_url": "https://a-admin.okta.com", "client_id": '"0oa1"'}
    write_config(h, [bad])
    with structlog.testing.capture_logs() as logs:
        assert await daemon.reload() is False
    problems = [e["problem"] for e in logs if e["event"] == "config_reload_problem"]
    assert len(problems) == 2
    assert any("Admin Console URL" in x for x in problems)
    assert any("wrapped in quotes" in x for x in problems)
    [failed] = [e for e in logs if e["event"] == "config_reload_failed"]
    assert "running config is kept" in failed["hint"]


async def test_drop_in_files_are_loaded_and_reloaded(h: Harness) -> None:
    """provider_files globs add providers; a new drop-in file is picked up by a reload."""
    cid_a = h.add_provider("a")
    cid_b = h.add_provider("b")
    p = by_name(h)
    drop = h.tmp / "providers.d"
    drop.mkdir()
    (drop / "a.toml").write_text(provider_block(p["a"]))
    path = write_config(h, [], provider_files=["providers.d/*.toml"])
    daemon = await start_from_file(h, path)
    assert set(daemon.dispatchers) == {"a"}
    (drop / "b.toml").write_text(provider_block(p["b"]))
    assert await daemon.reload() is True
    assert set(daemon.dispatchers) == {"a", "b"}
    status, _ = await h.post([{"ip": "192.0.2.7", "riskLevel": "HIGH"}])
    assert status == 202
    await h.until(lambda: "192.0.2.7" in h.delivered(cid_a) and "192.0.2.7" in h.delivered(cid_b))
    (drop / "a.toml").unlink()
    assert await daemon.reload() is True
    assert set(daemon.dispatchers) == {"b"}


async def test_reload_reads_only_changed_key_files(h: Harness) -> None:
    """Keys are cached by file and mtime: a reload parses only the new or rewritten ones."""
    h.add_provider("a")
    h.add_provider("b")
    p = by_name(h)
    shared = {**p["b"], "private_key_file": p["a"]["private_key_file"]}
    path = write_config(h, [p["a"]])
    daemon = await start_from_file(h, path)
    loads = daemon.keys.loads
    write_config(h, [p["a"], shared])
    assert await daemon.reload() is True
    assert daemon.keys.loads == loads  # b shares a's file: nothing new to parse
    write_private_key(Path(p["a"]["private_key_file"]), generate_signing_key("RS256"), force=True)
    write_config(h, [p["a"]])
    assert await daemon.reload() is True
    assert daemon.keys.loads == loads + 1


def test_drop_in_problems_name_their_file(tmp_path: Path) -> None:
    """Errors in a drop-in file name that file; a duplicate across files names both."""
    write_private_key(tmp_path / "k.json", generate_signing_key("ES256"), force=True)
    drop = tmp_path / "providers.d"
    drop.mkdir()
    good = 'name = "acme"\norg_url = "https://acme.okta.com"\nclient_id = "0oa1"\n'
    (drop / "acme.toml").write_text(f'[[providers]]\n{good}private_key_file = "k.json"\n')
    (drop / "bad.toml").write_text(
        '[[providers]]\nname = "bad"\norg_url = "https://bad-admin.okta.com"\n'
        'client_id = "0oa2"\nprivate_key_file = "missing.json"\n'
    )
    (drop / "broken.toml").write_text("[[providers]\n")
    (drop / "extra.toml").write_text('[ingest]\nlisten = "0.0.0.0:1"\n')
    path = tmp_path / "forwarder.toml"
    path.write_text('provider_files = ["providers.d/*.toml"]\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    text = "\n".join(err.value.problems)
    assert f"{drop / 'broken.toml'} is not valid TOML" in text
    assert f"{drop / 'extra.toml'}: only [[providers]] tables" in text
    assert f"{drop / 'bad.toml'}: providers[bad].org_url" in text
    (drop / "broken.toml").unlink()
    (drop / "extra.toml").unlink()
    (drop / "bad.toml").write_text(
        '[[providers]]\nname = "bad"\norg_url = "https://bad.okta.com"\n'
        'client_id = "0oa2"\nprivate_key_file = "missing.json"\n'
    )
    (drop / "twin.toml").write_text(
        f'[[providers]]\n{good.replace("0oa1", "0oa3")}private_key_file = "k.json"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    text = "\n".join(err.value.problems)
    assert f"{drop / 'bad.toml'}: providers[bad].private_key_file" in text
    assert "missing.json does not exist" in text
    assert "'acme' is used more than once" in text
    assert str(drop / "twin.toml") in text


def test_config_check_names_the_drop_in_file(tmp_path: Path) -> None:
    """`forwarder config check` exits 2 naming the drop-in file and its problem."""
    from tests.procs import cli  # noqa: PLC0415

    drop = tmp_path / "providers.d"
    drop.mkdir()
    (drop / "globex.toml").write_text(
        '[[providers]]\nname = "globex"\norg_url = "https://globex-admin.okta.com"\n'
        'client_id = "0oa9"\nprivate_key_file = "k.json"\n'
    )
    config = tmp_path / "forwarder.toml"
    config.write_text('provider_files = ["providers.d/*.toml"]\n')
    result = cli("config", "check", "--config", str(config))
    assert result.returncode == 2
    assert f"{drop / 'globex.toml'}: providers[globex].org_url" in result.stderr
    assert "Admin Console URL" in result.stderr
    write_private_key(tmp_path / "k.json", generate_signing_key("ES256"), force=True)
    (drop / "globex.toml").write_text(
        (drop / "globex.toml").read_text().replace("globex-admin", "globex")
    )
    result = cli("config", "check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "1 provider(s): globex" in result.stdout


async def test_removed_provider_finishes_its_call_in_flight(h: Harness) -> None:
    """Removed while Okta has not answered yet: the call completes and its batch is acked."""
    slow_org = SandboxOrg(clock=h.clock)
    slow_org.events_delay_s = 1.0
    async with serve(slow_org) as slow_url:
        slow = h.add_provider("slow", org=(slow_org, slow_url))
        h.add_provider("fast")
        p = by_name(h)
        path = write_config(h, [p["slow"], p["fast"]])
        daemon = await start_from_file(h, path)
        assert daemon.store is not None
        store = daemon.store
        status, _ = await h.post([{"ip": ip, "riskLevel": "HIGH"} for ip in ips(5)])
        assert status == 202
        await h.until(lambda: len(slow_org.event_calls) == 1)  # answered in 1 real second
        assert daemon.dispatchers["slow"].state.last_outcome is None  # still in flight
        write_config(h, [p["fast"]])
        assert await daemon.reload() is True
        assert "slow" not in daemon.dispatchers
        await h.until(lambda: sum(store.pending_counts("slow").values()) == 0)
        assert slow_org.accepted_ips(slow) == ips(5)
        assert len(slow_org.event_calls) == 1
