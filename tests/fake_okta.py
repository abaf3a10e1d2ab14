"""A scripted Okta on loopback: for the answers the sandbox cannot give.

``fake_okta`` serves only the routes a test hands it; ``events_routes`` are those of an
org whose token endpoint always grants and whose events call answers as the test says;
``events_sender`` is forwarder's events sender (with its token source) for such a server.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web

from forwarder.clock import FakeClock
from forwarder.okta.dpop import DPoP
from forwarder.okta.events import RiskEventsSender
from forwarder.okta.keys import generate_signing_key
from forwarder.okta.tokens import TokenSource

__all__ = ["Handler", "events_routes", "events_sender", "fake_okta"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def fake_okta(routes: Mapping[tuple[str, str], Handler]) -> AsyncIterator[str]:
    """An HTTP server answering only ``routes`` ((method, path): handler): its base URL."""
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _bearer_token(_: web.Request) -> web.StreamResponse:
    """``POST /oauth2/v1/token``: a Bearer token valid for an hour, whatever was asked."""
    return web.json_response(
        {"token_type": "Bearer", "expires_in": 3600, "access_token": "t0k3n-value-1"}
    )


def events_routes(events: Handler) -> dict[tuple[str, str], Handler]:
    """An org whose token endpoint always grants a Bearer token and whose events endpoint
    answers with ``events``."""
    return {("POST", "/oauth2/v1/token"): _bearer_token, ("POST", "/api/v1/risk/events/ip"): events}


def events_sender(
    session: aiohttp.ClientSession, url: str, clock: FakeClock, *, dpop: DPoP | None = None
) -> RiskEventsSender:
    """The events sender for client ``0oa1`` (a fresh ES256 key) of the org at ``url``."""
    tokens = TokenSource(
        session=session,
        org_url=url,
        client_id="0oa1",
        key=generate_signing_key("ES256"),
        clock=clock,
        dpop=dpop,
    )
    return RiskEventsSender(session=session, org_url=url, tokens=tokens, clock=clock)
