"""The side port: ``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (readiness).

Liveness only says the event loop answers: it never fails because Okta is down, so
Kubernetes does not restart a pod for a problem a restart cannot fix. Readiness is the
store being writable and ingest listening; a failing provider shows in its body (and in
``forwarder_provider_state``) without making the pod unready, so one broken customer
org cannot take the others down with it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from forwarder import __version__
from forwarder.telemetry.metrics import Metrics

__all__ = ["Readiness", "health_app"]

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
"""Returns (ready, body): the body lists the store, ingest and every provider."""


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
