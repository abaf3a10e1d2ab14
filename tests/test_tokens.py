"""Token source: one refresh in flight, renewal before expiry, clear failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from forwarder.clock import FakeClock
from forwarder.errors import AuthError, InvalidCredentials
from forwarder.okta.keys import generate_signing_key
from forwarder.okta.tokens import TokenSource
from forwarder.sandbox import SandboxOrg, serve


@dataclass
class Env:
    clock: FakeClock
    org: SandboxOrg
    tokens: TokenSource


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = FakeClock()
    org = SandboxOrg(clock=clock, token_lifetime_s=3600)
    key = generate_signing_key("ES384")
    async with serve(org) as url, aiohttp.ClientSession() as session:
        cid = org.register_client("t", {"keys": [key.public_jwk()]})
        org.grant(cid)
        yield Env(
            clock,
            org,
            TokenSource(session=session, org_url=url, client_id=cid, key=key, clock=clock),
        )


async def test_concurrent_users_share_one_refresh(env: Env) -> None:
    """Ten concurrent callers cause one token request and get the same token."""
    got = await asyncio.gather(*(env.tokens.get() for _ in range(10)))
    assert len(set(got)) == 1
    assert len(env.org.token_requests) == 1


async def test_token_renewed_shortly_before_expiry(env: Env) -> None:
    """The cached token is used until a minute before expires_in, then renewed."""
    first = await env.tokens.get()
    env.clock.advance(3600 - 61)
    assert await env.tokens.get() == first
    env.clock.advance(2)
    assert await env.tokens.get() != first
    assert len(env.org.token_requests) == 2


async def test_invalidate_only_drops_the_refused_token(env: Env) -> None:
    """invalidate() with a stale value keeps the current token."""
    first = await env.tokens.get()
    env.tokens.invalidate("something-else")
    assert await env.tokens.get() == first
    env.tokens.invalidate(first)
    assert await env.tokens.get() != first


async def test_server_error_is_retryable_not_invalid(env: Env) -> None:
    """A 500 from the token endpoint is an AuthError, not InvalidCredentials."""
    env.org.fail_tokens(500)
    with pytest.raises(AuthError) as err:
        await env.tokens.get()
    assert not isinstance(err.value, InvalidCredentials)
    assert await env.tokens.get()


async def test_assertions_are_single_use(env: Env) -> None:
    """Each assertion has a fresh jti, so repeated fetches are never refused as replays."""
    for _ in range(3):
        env.tokens.invalidate(await env.tokens.get())
    assert [r.status for r in env.org.token_requests] == [200, 200, 200]
