"""The detector API: ``POST /v1/signals``.

``202 {"accepted": N}`` is sent only after every signal of the request is committed
(the store's group commit makes that cheap). Bad input gets a 4xx naming every
problem and nothing of that request is stored; there is no 500 for any input.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from typing import Any, Protocol

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from forwarder.clock import Clock
from forwarder.errors import StoreError, StoreFull
from forwarder.signals import Problem, Signal, parse_items

__all__ = ["IngestApi", "IngestObserver", "SignalSink"]

_JSON = "application/json"
_NDJSON = ("application/x-ndjson", "application/ndjson", "application/jsonl")


class SignalSink(Protocol):
    """What ingest needs from the store."""

    async def add(self, items: Sequence[tuple[Sequence[str], Signal]]) -> None:
        """Commit signals, each for its target providers (none: every provider).

        Returns only once committed; raises ``StoreFull`` at capacity, ``StoreError``
        when the store cannot write.
        """
        ...


class IngestObserver(Protocol):
    """Telemetry hooks (implemented by ``telemetry.Metrics``)."""

    def ingest_request(self, code: int, duration_s: float) -> None: ...

    def signals_received(self, result: str, reason: str, count: int) -> None: ...


def _error(
    status: int,
    message: str,
    *,
    details: Sequence[Problem] = (),
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": message, "details": [p.as_dict() for p in details]}
    return web.json_response(body, status=status, headers=headers)


class IngestApi:
    """Validates, stores and acknowledges detector signals."""

    def __init__(
        self,
        *,
        store: SignalSink,
        providers: Sequence[str],
        clock: Clock,
        tokens: Sequence[str] = (),
        max_body_bytes: int = 1_048_576,
        max_age_s: float = 86_400.0,
        observer: IngestObserver | None = None,
    ) -> None:
        self._store = store
        self._providers = tuple(providers)
        self._clock = clock
        self._tokens = [t.encode() for t in tokens]
        self._max_body = max_body_bytes
        self._max_age_ms = int(max_age_s * 1000)
        self._observer = observer
        self.accepting = True
        self._log = structlog.get_logger("forwarder.ingest")

    def app(self) -> web.Application:
        """The aiohttp application serving the API."""
        app = web.Application(client_max_size=self._max_body)
        app.router.add_post("/v1/signals", self._post_signals)
        return app

    def _authorized(self, request: web.Request) -> bool:
        if not self._tokens:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return False
        try:
            # aiohttp decodes header bytes with surrogateescape; this gives them back.
            candidate = presented.strip().encode("utf-8", "surrogateescape")
        except UnicodeError:
            return False
        ok = False
        for token in self._tokens:  # compare against every token: no early exit
            ok |= hmac.compare_digest(candidate, token)
        return ok

    async def _post_signals(self, request: web.Request) -> web.Response:
        started = self._clock.monotonic()
        response = await self._handle(request)
        if self._observer is not None:
            self._observer.ingest_request(response.status, self._clock.monotonic() - started)
        return response

    def _rejected(self, reason: str, count: int) -> None:
        if self._observer is not None:
            self._observer.signals_received("rejected", reason, count)

    async def _handle(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self._rejected("unauthorized", 0)
            return _error(
                401,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="forwarder"'},
            )
        if not self.accepting:
            self._rejected("shutting_down", 0)
            return _error(503, "shutting down; retry shortly", headers={"Retry-After": "5"})
        ctype = request.content_type.lower()
        if ctype != _JSON and ctype not in _NDJSON:
            self._rejected("unsupported_media_type", 0)
            return _error(
                415,
                f"Content-Type {ctype or '(none)'} is not supported; "
                "send application/json or application/x-ndjson",
            )
        if request.content_length is not None and request.content_length > self._max_body:
            self._rejected("too_large", 0)
            return _error(413, f"body exceeds max_body_bytes ({self._max_body}); split it")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._rejected("too_large", 0)
            return _error(413, f"body exceeds max_body_bytes ({self._max_body}); split it")
        except (web.RequestPayloadError, HttpProcessingError, ValueError, OSError) as exc:
            # e.g. a Content-Encoding that does not match the body, or a truncated body.
            self._rejected("malformed", 0)
            return _error(400, f"the request body could not be read: {exc}")
        items, problems = self._decode(raw, ndjson=ctype != _JSON)
        if items is None:
            self._rejected("malformed", 0)
            return _error(400, "body is not valid JSON", details=problems)
        if not items:
            self._rejected("empty", 0)
            return _error(400, "the request holds no signals")
        now_ms = int(self._clock.time() * 1000)
        signals, bad = parse_items(
            items, now_ms=now_ms, providers=self._providers, max_age_ms=self._max_age_ms
        )
        problems.extend(bad)
        if problems:
            self._rejected("invalid", len(items))
            bad_items = len({p.index for p in problems})
            return _error(
                400,
                f"{bad_items} of {len(items)} signals are invalid; nothing was stored",
                details=problems,
            )
        try:
            await self._store.add(signals)
        except StoreFull as exc:
            self._rejected("store_full", len(items))
            return _error(503, f"store is full: {exc}", headers={"Retry-After": "30"})
        except StoreError as exc:
            self._rejected("store_error", len(items))
            self._log.error("store_write_failed", error=str(exc))
            return _error(503, "store unavailable; retry", headers={"Retry-After": "5"})
        if self._observer is not None:
            self._observer.signals_received("accepted", "", len(signals))
        return web.json_response({"accepted": len(signals)}, status=202)

    @staticmethod
    def _decode(raw: bytes, *, ndjson: bool) -> tuple[list[Any] | None, list[Problem]]:
        if not ndjson:
            try:
                doc = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                return None, [Problem(-1, "", f"invalid JSON: {exc}")]
            return (doc if isinstance(doc, list) else [doc]), []
        items: list[Any] = []
        problems: list[Problem] = []
        for line_no, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except (ValueError, RecursionError) as exc:
                problems.append(Problem(len(items), "", f"line {line_no} is not valid JSON: {exc}"))
                items.append(None)
        if problems:
            return None, problems
        return items, problems
