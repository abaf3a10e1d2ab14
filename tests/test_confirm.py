"""`okta check --send-test --confirm` in process: the System Log poll on a FakeClock.

The sandbox writes a security.risk.signal.consume per accepted call (unless the
provider's action is none) and can delay its log; the poll must find the event, follow
Link pagination, and say plainly when nothing appeared and why.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from forwarder.clock import FakeClock
from forwarder.errors import AdminApiError
from forwarder.okta.admin import AdminClient, next_link
from forwarder.okta.keys import generate_signing_key, write_private_key
from forwarder.okta.provision import CheckResult, Confirm, check_provider
from forwarder.sandbox import SandboxOrg, serve
from tests.harness import provision_app


@dataclass
class Env:
    clock: FakeClock
    org: SandboxOrg
    url: str
    session: aiohttp.ClientSession
    client_id: str
    key_file: Path

    async def check(self, *, timeout_s: float = 60.0) -> CheckResult:
        admin = AdminClient(self.session, self.url, self.org.api_token)
        task = asyncio.create_task(
            check_provider(
                session=self.session,
                name="acme",
                org_url=self.url,
                client_id=self.client_id,
                key_file=self.key_file,
                clock=self.clock,
                send_test=True,
                confirm=Confirm(admin, timeout_s=timeout_s, interval_s=5.0),
            )
        )
        await self.clock.run_until(task.done, max_seconds=timeout_s + 60, settle=0.01)
        return task.result()


async def _env(tmp_path: Path, *, dpop: bool = False) -> AsyncIterator[Env]:
    clock = FakeClock()
    org = SandboxOrg(clock=clock)
    key = generate_signing_key("ES256")
    key_file = tmp_path / "acme.jwk.json"
    write_private_key(key_file, key)
    client_id = provision_app(org, "acme", key, provider="Acme partner", dpop=dpop)
    async with serve(org) as url, aiohttp.ClientSession() as session:
        yield Env(clock, org, url, session, client_id, key_file)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _env(tmp_path):
        yield e


@pytest.fixture
async def dpop_env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _env(tmp_path, dpop=True):
        yield e


async def test_confirm_reports_the_matching_event(env: Env) -> None:
    """The consume event is found: uuid, published, outcome and the provider it names."""
    result = await env.check()
    assert result.ok, result
    assert result.step == "confirm"
    [event] = [e.body for e in env.org.system_log.events]
    assert result.log_event == event
    for part in (event["uuid"], event["published"], "outcome SUCCESS", "Acme partner"):
        assert part in result.detail


async def test_confirm_works_for_a_dpop_app_and_says_so(dpop_env: Env) -> None:
    """A DPoP-required app: the check says so, the event goes with a proof and is found."""
    result = await dpop_env.check()
    assert result.ok, result
    assert result.dpop_required is True
    assert "the app requires DPoP" in result.detail
    assert "with a DPoP proof" in result.detail


async def test_provider_action_none_is_reported_as_the_likely_cause(env: Env) -> None:
    """Action none: no event; after the timeout (fake time) the hint names the action."""
    env.org.set_provider(env.client_id, "Acme partner", action="none")
    started = env.clock.monotonic()
    result = await env.check(timeout_s=30)
    assert not result.ok
    assert result.step == "confirm"
    assert "no security.risk.signal.consume event" in result.detail
    assert "within 30 s" in result.detail
    assert "action is none" in result.hint
    assert "--confirm-timeout" in result.hint
    assert env.clock.monotonic() - started >= 30
    assert env.org.accepted_ips(env.client_id) == ["192.0.2.1"]  # sent, just not logged


async def test_a_late_log_is_found_by_polling(env: Env) -> None:
    """The log shows the event 20 s late: the poll keeps asking and finds it."""
    env.org.system_log.delay_s = 20
    started = env.clock.monotonic()
    result = await env.check(timeout_s=60)
    assert result.ok, result
    assert 20 <= env.clock.monotonic() - started < 60


async def test_a_log_later_than_the_timeout_says_it_may_lag(env: Env) -> None:
    """The log lags beyond the timeout: the hint suggests a longer --confirm-timeout."""
    env.org.system_log.delay_s = 100
    result = await env.check(timeout_s=10)
    assert not result.ok
    assert "lag" in result.hint
    assert "was 10 s" in result.hint


async def test_the_poll_follows_next_links_past_other_providers_events(env: Env) -> None:
    """250 other consume events first: the match is on a later page (limit 100)."""
    provider = {"id": "00rpOTHER", "name": "Other", "action": "log_only"}
    for _ in range(250):
        env.org.system_log.consume(
            now=env.clock.time(),
            client_id="0oaOTHERAPP",
            client_name="other",
            provider=provider,
            subjects=1,
            ip_address="198.51.100.1",
        )
    result = await env.check()
    assert result.ok, result
    assert result.log_event is not None
    assert result.log_event["actor"]["id"] == env.client_id


async def test_a_next_link_to_another_host_is_not_followed(env: Env) -> None:
    """The API token never goes to a host other than the org's."""
    admin = AdminClient(env.session, env.url, env.org.api_token)
    with pytest.raises(AdminApiError) as err:
        await admin.logs_page(next_url="https://elsewhere.example/api/v1/logs?after=x")
    assert "outside" in str(err.value)


def test_next_link_reads_the_rel_next_url() -> None:
    """Link parsing: self and next in one header, quoted or not."""
    header = '<https://a/api/v1/logs?x=1>; rel="self", <https://a/api/v1/logs?after=b>; rel=next'
    assert next_link(header) == "https://a/api/v1/logs?after=b"
    assert next_link('<https://a/x>; rel="self"') is None
