"""Serving an aiohttp app on a bound socket, answering only in JSON.

aiohttp's defaults suit a trusted network; these servers face detectors and scrapers
that may be buggy or hostile. :func:`serve` runs an app with

* aiohttp's request-body decoding off: the handler decodes with a bound
  (:mod:`forwarder.bodies`), so a broken ``Content-Encoding`` gets a JSON 4xx;
* aiohttp's own error pages (404, 405) and the protocol's errors (a malformed request
  line, oversized headers, a broken chunked body) answered as ``{"error", "details"}``
  JSON and logged as one structured line, never a plain-text page or a traceback.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

__all__ = ["serve"]


@web.middleware
async def _json_http_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405/413 pages are text; give them the API's JSON shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return web.json_response(
            {"error": exc.reason, "details": []}, status=exc.status, headers=headers
        )


def _json_error(status: int, message: str) -> web.Response:
    body = {"error": message, "details": []}
    resp = web.Response(status=status, text=json.dumps(body), content_type="application/json")
    resp.force_close()
    return resp


class _JsonErrorsHandler(RequestHandler):
    """aiohttp's connection protocol, with JSON error answers and structured logs."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        reason = str(getattr(exc, "message", "") or message or exc or "").strip()
        # aiohttp quotes the offending bytes ("... when reading: b'...'"): they may be
        # a header holding a credential, so they are neither logged nor echoed.
        first = reason.splitlines()[0].split(" b'")[0].split(' b"')[0] if reason else ""
        if status >= 500:
            # A bug of ours: the traceback goes to the log, as one JSON line.
            structlog.get_logger("forwarder.http").error(
                "http_handler_failed", status=status, exc_info=exc
            )
            text = "internal error; the daemon's log has the details"
        else:
            structlog.get_logger("forwarder.http").info(
                "http_request_malformed", status=status, error=first[:200]
            )
            text = f"malformed HTTP request: {first[:200]}" if first else "malformed HTTP request"
        if request.writer.output_size > 0:
            raise ConnectionError("answer already started; closing the connection")
        return _json_error(status, text)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # e.g. "Unhandled exception" when the rest of a broken body cannot be drained
        # after the handler answered: the client already has its 4xx; one JSON line.
        exc = kw.get("exc_info")
        structlog.get_logger("forwarder.http").info(
            "http_connection_closed",
            reason=str(args[0]) if args else "",
            error=type(exc).__name__ if isinstance(exc, BaseException) else "",
        )


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorsHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app builds a plain Server (app._make_handler); only its protocol differs.
        server.__class__ = _Server
        return server


@contextlib.asynccontextmanager
async def serve(app: web.Application, sock: socket.socket) -> AsyncIterator[None]:
    """Serve ``app`` on the bound, non-blocking ``sock`` until the block exits."""
    app.middlewares.append(_json_http_errors)
    runner = _Runner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=1.0,
        auto_decompress=False,
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield
    finally:
        await runner.cleanup()
