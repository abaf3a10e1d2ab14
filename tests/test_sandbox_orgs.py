"""The sandbox standing in for many orgs: each client id its own org, window and state."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from forwarder.clock import FakeClock
from forwarder.errors import InvalidCredentials
from forwarder.okta.keys import generate_signing_key
from forwarder.okta.tokens import TokenSource
from forwarder.sandbox import SandboxOrg, serve

EVENTS = "/api/v1/risk/events/ip"


@pytest.fixture
async def fleet() -> AsyncIterator[tuple[SandboxOrg, str, aiohttp.ClientSession]]:
    org = SandboxOrg(clock=FakeClock(), org_per_client=True, keep_bodies=False)
    async with serve(org) as url, aiohttp.ClientSession() as session:
        yield org, url, session


async def _post(
    session: aiohttp.ClientSession, url: str, token: str, ip: str
) -> aiohttp.ClientResponse:
    body = [{"subjects": [{"ip": ip, "riskLevel": "LOW"}]}]
    async with session.post(
        url + EVENTS, json=body, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        await resp.read()
        return resp


async def test_each_client_is_its_own_org_with_its_own_window(
    fleet: tuple[SandboxOrg, str, aiohttp.ClientSession],
) -> None:
    """Five apps sharing one key: each gets 3 calls per window and Okta's 429 on the fourth."""
    org, url, session = fleet
    key = generate_signing_key("RS256")
    clients = [org.register_client(f"Customer {i}", {"keys": [key.public_jwk()]}) for i in range(5)]
    for cid in clients:
        org.grant(cid)
    assert len(org.list_providers()) == 1 + 5  # the default one plus one per org
    for n, cid in enumerate(clients):
        tokens = TokenSource(session=session, org_url=url, client_id=cid, key=key, clock=org.clock)
        token = await tokens.get()
        statuses = [(await _post(session, url, token, f"192.0.2.{n}")).status for _ in range(3)]
        assert statuses == [202, 202, 202]
        over = await _post(session, url, token, "192.0.2.99")
        assert over.status == 429
        assert over.headers["X-Rate-Limit-Limit"] == "3"
        assert over.headers["X-Rate-Limit-Remaining"] == "0"
        assert int(over.headers["X-Rate-Limit-Reset"]) >= int(org.clock.time())
    tallies = org.orgs()
    assert set(tallies) == set(clients)
    for cid in clients:
        assert tallies[cid]["statuses"] == {"202": 3, "429": 1}
        assert tallies[cid]["distinct_ips"] == 1
        assert tallies[cid]["max_calls_in_window"] == 4  # every call counts, 429s too
    assert org.accepted == []  # bodies are not kept in fleet mode


async def test_scope_is_still_enforced_per_org(
    fleet: tuple[SandboxOrg, str, aiohttp.ClientSession],
) -> None:
    """An app of the fleet without the scope grant gets no token."""
    org, url, session = fleet
    key = generate_signing_key("ES256")
    cid = org.register_client("Ungranted", {"keys": [key.public_jwk()]})
    tokens = TokenSource(session=session, org_url=url, client_id=cid, key=key, clock=org.clock)
    with pytest.raises(InvalidCredentials):
        await tokens.get()


async def test_registered_key_is_checked_per_org(
    fleet: tuple[SandboxOrg, str, aiohttp.ClientSession],
) -> None:
    """An assertion signed with another org's key is refused."""
    org, url, session = fleet
    mine, theirs = generate_signing_key("RS256"), generate_signing_key("RS256")
    cid = org.register_client("Mine", {"keys": [mine.public_jwk()]})
    org.grant(cid)
    tokens = TokenSource(session=session, org_url=url, client_id=cid, key=theirs, clock=org.clock)
    with pytest.raises(InvalidCredentials):
        await tokens.get()
