"""The side port: ``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (readiness).

Liveness only says the event loop answers: it never fails because Okta is down, so
Kubernetes does not restart a pod for a problem a restart cannot fix. Readiness is the
store being writable and ingest listening; a failing provider shows in its body (and in
``forwarder_provider_state``) without making the pod unready, so one broken customer
org cannot take the others down with it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from forwarder import __version__
from forwarder.telemetry.metrics import Metrics

__all__ = ["NOT_OK_LISTED", "Readiness", "health_app", "readiness_body"]

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
"""Returns (ready, body): the store, ingest, providers by state and those not ok."""

#: How many providers that are not ok ``/readyz`` details (the rest are counted).
NOT_OK_LISTED = 20
# Worst first: an operator must act on failing; rate limits and backoff heal themselves.
_SEVERITY = {"failing": 0, "rate_limited": 1, "backing_off": 2}


def readiness_body(
    states: Mapping[str, str],
    *,
    detail: Callable[[str], dict[str, Any]],
    limit: int = NOT_OK_LISTED,
) -> dict[str, Any]:
    """The provider part of ``/readyz``: bounded whatever the number of orgs.

    ``summary`` counts providers by state; ``providers`` details at most ``limit`` that
    are not ok (failing first, then by name) and ``providers_not_listed`` counts the rest.
    ``forwarder status`` shows every provider.
    """
    by_state = Counter(states.values())
    troubled = sorted(
        (name for name, state in states.items() if state != "ok"),
        key=lambda name: (_SEVERITY.get(states[name], 9), name),
    )
    return {
        "summary": {"providers": len(states), **dict(sorted(by_state.items()))},
        "providers": {name: detail(name) for name in troubled[:limit]},
        "providers_not_listed": max(0, len(troubled) - limit),
    }


def health_app(metrics: Metrics, readiness: Readiness) -> web.Application:
    """``/metrics``, ``/healthz`` and ``/readyz`` as one aiohttp application."""

    async def metrics_handler(_: web.Request) -> web.Response:
        if metrics.live is not None:
            await metrics.live.refresh()
        resp = web.Response(body=metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def readyz(_: web.Request) -> web.Response:
        ready, body = await readiness()
        return web.Response(
            text=json.dumps(body, indent=2),
            status=200 if ready else 503,
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
