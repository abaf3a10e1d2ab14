"""Serving an aiohttp app on a bound socket, answering only in JSON.

aiohttp's defaults suit a trusted network; these servers face detectors and scrapers
that may be buggy or hostile. :func:`serve` runs an app with

* aiohttp's request-body decoding off: the handler decodes with a bound
  (:mod:`forwarder.bodies`), so a broken ``Content-Encoding`` gets a JSON 4xx;
* aiohttp's own error pages (404, 405) and the protocol's errors (a malformed request
  line, oversized headers, a broken chunked body) answered as ``{"error", "details"}``
  JSON and logged as one structured line, never a plain-text page or a traceback;
* :class:`ConnectionLimits`: a connection idle for ``keepalive_timeout_s`` is closed
  (aiohttp's keep-alive timer, which also covers a connection that never sends a byte);
  a request head must be complete within ``header_timeout_s`` of its first byte and a
  body within ``body_timeout_s`` of its head (both 408, then closed; aiohttp has no
  such timers, so the protocol here keeps them); beyond ``max_connections`` open
  connections a new one is refused at once with a JSON 503 + ``Retry-After`` (refused,
  not queued: a queue would hold sockets and hide the overload from the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

__all__ = ["BodyTimeout", "ConnectionLimits", "serve"]

#: How long a refused connection may read our 503 before it is closed.
_REFUSE_LINGER_S = 1.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per-listener bounds on slow or numerous clients (``[ingest]``/``[metrics]`` keys)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 30.0
    max_connections: int = 1000


class BodyTimeout(web.RequestPayloadError):
    """The body did not arrive within ``body_timeout_s`` (raised by ``request.read()``)."""


def _raw_json(status: int, reason: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": message, "details": []}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


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


class _GuardedHandler(RequestHandler):
    """aiohttp's connection protocol, with timeouts, a connection cap, JSON errors."""

    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_payload: Any = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if manager is not None and len(manager.connections) > self.limits.max_connections:
            self._refuse(transport)

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        self._refused = True
        assert isinstance(transport, asyncio.Transport)
        transport.write(
            _raw_json(
                503,
                "Service Unavailable",
                f"too many connections (max_connections {self.limits.max_connections}); "
                "retry shortly",
                "Retry-After: 1\r\n",
            )
        )
        # FIN after the answer, then close once the client had time to read it
        # (closing with its request unread would reset the connection instead).
        transport.write_eof()
        self._loop.call_later(_REFUSE_LINGER_S, self.force_close)
        structlog.get_logger("forwarder.http").warning(
            "http_connection_refused", max_connections=self.limits.max_connections
        )

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        waiting = self._waiter is not None and not self._waiter.done()
        before = self._request_count
        super().data_received(data)
        payload = self._body_payload
        if payload is not None and payload.is_eof():  # body complete: no timer left behind
            self._cancel_body_timer()
        if self._request_count != before:
            self._cancel_header_timer()
            self._watch_body()
        elif waiting and data and self._header_timer is None:
            # The first bytes of a request head: it has header_timeout_s to complete,
            # and the idle timer must not cut it short meanwhile.
            timeout = self.limits.header_timeout_s
            self._header_timer = self._loop.call_later(timeout, self._header_timed_out)
            close_at = self._loop.time() + timeout + 1.0
            if getattr(self, "_next_keepalive_close_time", close_at) < close_at:
                self._next_keepalive_close_time = close_at

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport is None or self._force_close:
            return
        timeout = self.limits.header_timeout_s
        self.transport.write(
            _raw_json(408, "Request Timeout", f"request head not received within {timeout:g} s")
        )
        structlog.get_logger("forwarder.http").info("http_header_timeout", timeout_s=timeout)
        self.force_close()

    def _watch_body(self) -> None:
        if not self._messages:
            return
        _, payload = self._messages[-1]
        if payload.is_eof():
            return
        self._cancel_body_timer()
        timeout = self.limits.body_timeout_s
        self._body_payload = payload
        self._body_timer = self._loop.call_later(timeout, self._body_timed_out, payload)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body_payload = None

    def _body_timed_out(self, payload: Any) -> None:
        self._body_timer = None
        self._body_payload = None
        if not payload.is_eof() and payload.exception() is None:
            timeout = self.limits.body_timeout_s
            structlog.get_logger("forwarder.http").info("http_body_timeout", timeout_s=timeout)
            payload.set_exception(BodyTimeout(f"body not received within {timeout:g} s"))
            # Nothing more is read from this connection once the answer is out.
            self.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

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
    limits = ConnectionLimits()

    def __call__(self) -> RequestHandler:
        handler = _GuardedHandler(self, loop=self._loop, **self._kwargs)
        handler.limits = self.limits
        return handler


class _Runner(web.AppRunner):
    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app builds a plain Server (app._make_handler); only its protocol differs.
        server.__class__ = _Server
        assert isinstance(server, _Server)
        server.limits = self._limits
        return server


@contextlib.asynccontextmanager
async def serve(
    app: web.Application, sock: socket.socket, limits: ConnectionLimits | None = None
) -> AsyncIterator[None]:
    """Serve ``app`` on the bound, non-blocking ``sock`` until the block exits."""
    limits = limits or ConnectionLimits()
    app.middlewares.append(_json_http_errors)
    runner = _Runner(
        app,
        limits,
        keepalive_timeout=limits.keepalive_timeout_s,
        # After an early answer (413, 408) the rest of a body is drained this long at most.
        lingering_time=min(10.0, limits.body_timeout_s),
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
