"""The sandbox org over HTTP: aiohttp routes, Okta-shaped errors, and :func:`serve`.

Handlers only translate: they read the request, call :class:`SandboxOrg`, and render its
answer. A middleware turns every failure (including aiohttp's own 404/405/413) into
Okta's error object and stamps every response with a ``Date`` header read from the org's
clock, so a client computing ``Reset - Date`` (risk-api.md §5) sees consistent times
under a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from typing import Any

from aiohttp import web

from forwarder.sandbox.errors import (
    ApiError,
    InsufficientScopeError,
    OAuthError,
    malformed_body,
    method_not_allowed,
    not_found,
    unsupported_media_type,
)
from forwarder.sandbox.records import Answer
from forwarder.sandbox.state import EVENTS_PATH, SandboxOrg
from forwarder.sandbox.validation import parse_json

__all__ = ["MAX_BODY_BYTES", "ORG_KEY", "build_app", "serve"]

#: Largest request body read; Okta documents none, 1 MiB holds 20 x 50 subjects easily.
MAX_BODY_BYTES = 1024 * 1024
#: Where the :class:`SandboxOrg` lives on the application.
ORG_KEY = web.AppKey("sandbox_org", SandboxOrg)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _org(request: web.Request) -> SandboxOrg:
    return request.app[ORG_KEY]


def _origin(request: web.Request) -> str:
    """``scheme://host[:port]`` as the client addressed the server."""
    return str(request.url.origin())


def _render(answer: Answer) -> web.Response:
    headers = dict(answer.headers)
    if answer.text is not None:
        content_type = headers.pop("Content-Type", "text/plain")
        return web.Response(
            status=answer.status, text=answer.text, content_type=content_type, headers=headers
        )
    if answer.body is None:
        return web.Response(status=answer.status, headers=headers)
    return web.json_response(answer.body, status=answer.status, headers=headers)


def _error_answer(exc: Exception) -> Answer:
    if isinstance(exc, ApiError):
        return Answer(exc.status, exc.body(), dict(exc.headers))
    if isinstance(exc, OAuthError):
        return Answer(exc.status, exc.body())
    if isinstance(exc, InsufficientScopeError):
        return Answer(exc.status, None, exc.headers)
    raise TypeError(f"not a sandbox error: {exc!r}")


def _http_exception_answer(exc: web.HTTPException, path: str) -> Answer:
    if exc.status == 404:
        error = not_found(f"Resource not found: {path[:200]} (Path)")
    elif exc.status == 405:
        error = method_not_allowed()
    elif exc.status == 413:
        error = ApiError(
            413,
            "E0000001",
            "Api validation failed: body",
            [f"body: larger than {MAX_BODY_BYTES} bytes"],
        )
    else:
        error = ApiError(exc.status, "E0000001", f"Api validation failed: {exc.reason}")
    return Answer(error.status, error.body(), dict(error.headers))


@web.middleware
async def _okta_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except (ApiError, OAuthError, InsufficientScopeError) as exc:
        response = _render(_error_answer(exc))
    except web.HTTPException as exc:
        response = _render(_http_exception_answer(exc, request.path))
    response.headers["Date"] = formatdate(_org(request).clock.time(), usegmt=True)
    return response


async def _read_body(request: web.Request) -> bytes | None:
    """The raw body, or None when it exceeds :data:`MAX_BODY_BYTES`."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return None


async def _read_json(request: web.Request) -> Any:
    """A JSON request body: 415 for another media type, 400 E0000003 when unparseable."""
    if request.content_type != "application/json":
        raise unsupported_media_type()
    body = await _read_body(request)
    if body is None:
        raise ApiError(
            413,
            "E0000001",
            "Api validation failed: body",
            [f"body: larger than {MAX_BODY_BYTES} bytes"],
        )
    try:
        return parse_json(body)
    except ValueError:
        raise malformed_body() from None


def _admin(request: web.Request, scope: str | None) -> SandboxOrg:
    org = _org(request)
    org.authorize_admin(
        request.headers.get("Authorization"),
        scope=scope,
        origin=_origin(request),
        resource=request.path,
    )
    return org


# ---------------------------------------------------------------------- OAuth and events


async def _token(request: web.Request) -> web.StreamResponse:
    answer = _org(request).request_token(
        content_type=request.content_type,
        body=await _read_body(request),
        token_url=f"{_origin(request)}/oauth2/v1/token",
        other_credentials="Authorization" in request.headers,
        dpop_proofs=request.headers.getall("DPoP", []),
    )
    return _render(answer)


async def _events(request: web.Request) -> web.StreamResponse:
    org = _org(request)
    answer = org.receive_events(
        authorization=request.headers.get("Authorization"),
        content_type=request.content_type,
        body=await _read_body(request),
        origin=_origin(request),
        dpop_proofs=request.headers.getall("DPoP", []),
        client_ip=request.remote or "127.0.0.1",
    )
    if org.events_delay_s > 0:
        # Injected slowness: real time, because it stands for the network, not the org.
        await asyncio.sleep(org.events_delay_s)
    return _render(answer)


# ---------------------------------------------------------------------- admin API


async def _create_client(request: web.Request) -> web.StreamResponse:
    org = _admin(request, "okta.clients.register")
    return web.json_response(org.create_client(await _read_json(request)), status=201)


async def _list_grants(request: web.Request) -> web.StreamResponse:
    org = _admin(request, "okta.appGrants.read")
    app_id = request.match_info["appId"]
    return web.json_response(org.list_grants(app_id, origin=_origin(request)))


async def _add_grant(request: web.Request) -> web.StreamResponse:
    org = _admin(request, "okta.appGrants.manage")
    app_id = request.match_info["appId"]
    body = await _read_json(request)
    return web.json_response(org.add_grant(app_id, body, origin=_origin(request)), status=201)


async def _list_providers(request: web.Request) -> web.StreamResponse:
    org = _admin(request, "okta.riskProviders.read")
    return web.json_response(org.list_providers(_origin(request)))


async def _create_provider(request: web.Request) -> web.StreamResponse:
    org = _admin(request, "okta.riskProviders.manage")
    body = await _read_json(request)
    return web.json_response(org.create_provider(body, origin=_origin(request)), status=201)


async def _get_provider(request: web.Request) -> web.StreamResponse:
    org = _admin(request, "okta.riskProviders.read")
    provider_id = request.match_info["riskProviderId"]
    return web.json_response(org.get_provider(provider_id, origin=_origin(request)))


async def _replace_provider(request: web.Request) -> web.StreamResponse:
    org = _admin(request, "okta.riskProviders.manage")
    provider_id = request.match_info["riskProviderId"]
    body = await _read_json(request)
    return web.json_response(org.replace_provider(provider_id, body, origin=_origin(request)))


async def _delete_provider(request: web.Request) -> web.StreamResponse:
    org = _admin(request, "okta.riskProviders.manage")
    org.delete_provider(request.match_info["riskProviderId"])
    return web.Response(status=204)


async def _logs(request: web.Request) -> web.StreamResponse:
    org = _admin(request, "okta.logs.read")
    params = dict(request.query.items())
    events, link = org.query_logs(params, url=f"{_origin(request)}{request.path}")
    return web.json_response(events, headers={"Link": link})


# ---------------------------------------------------------------------- sandbox inspection


async def _sandbox_accepted(request: web.Request) -> web.StreamResponse:
    org = _admin(request, None)
    client_id = request.query.get("client_id")
    calls = [c for c in org.accepted if client_id is None or c.client_id == client_id]
    return web.json_response([c.to_json() for c in calls])


async def _sandbox_calls(request: web.Request) -> web.StreamResponse:
    org = _admin(request, None)
    return web.json_response([c.to_json() for c in org.event_calls])


async def _sandbox_tokens(request: web.Request) -> web.StreamResponse:
    org = _admin(request, None)
    return web.json_response([t.to_json() for t in org.token_requests])


async def _sandbox_faults(request: web.Request) -> web.StreamResponse:
    org = _admin(request, None)
    return web.json_response(org.apply_faults(await _read_json(request)))


async def _sandbox_state(request: web.Request) -> web.StreamResponse:
    org = _admin(request, None)
    return web.json_response(org.summary(_origin(request)))


def build_app(org: SandboxOrg) -> web.Application:
    """The aiohttp application serving ``org``."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_okta_middleware])
    app[ORG_KEY] = org
    app.router.add_post("/oauth2/v1/token", _token)
    app.router.add_post(EVENTS_PATH, _events)
    app.router.add_post("/oauth2/v1/clients", _create_client)
    app.router.add_get("/api/v1/apps/{appId}/grants", _list_grants)
    app.router.add_post("/api/v1/apps/{appId}/grants", _add_grant)
    app.router.add_get("/api/v1/risk/providers", _list_providers)
    app.router.add_post("/api/v1/risk/providers", _create_provider)
    app.router.add_get("/api/v1/risk/providers/{riskProviderId}", _get_provider)
    app.router.add_put("/api/v1/risk/providers/{riskProviderId}", _replace_provider)
    app.router.add_delete("/api/v1/risk/providers/{riskProviderId}", _delete_provider)
    app.router.add_get("/api/v1/logs", _logs)
    app.router.add_get("/_sandbox/accepted", _sandbox_accepted)
    app.router.add_get("/_sandbox/calls", _sandbox_calls)
    app.router.add_get("/_sandbox/tokens", _sandbox_tokens)
    app.router.add_post("/_sandbox/faults", _sandbox_faults)
    app.router.add_get("/_sandbox/state", _sandbox_state)
    return app


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):  # noqa: S104 - naming the wildcard, not binding it
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@contextlib.asynccontextmanager
async def serve(org: SandboxOrg, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``org`` on ``host:port`` (0: a free port); yield its base URL, no trailing slash.

    On exit the server stops; in-flight answers get two seconds to finish.
    """
    runner = web.AppRunner(build_app(org), shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        yield f"http://{_url_host(host)}:{bound_port}"
    finally:
        await runner.cleanup()
