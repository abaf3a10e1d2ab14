"""The detector API: ``POST /v1/signals``.

``202 {"accepted": N}`` is sent only after every signal of the request is committed
(the store's group commit makes that cheap). Bad input gets a 4xx naming every
problem and nothing of that request is stored; there is no 500 for any input.
"""

from __future__ import annotations

import dataclasses
import hmac
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from forwarder.bodies import (
    SUPPORTED_CODINGS,
    BodyError,
    BodyTooLarge,
    InvalidJson,
    UnsupportedCoding,
    decode_body,
    json_items,
    ndjson_items,
)
from forwarder.clock import Clock
from forwarder.errors import StoreError, StoreFull
from forwarder.ingest_openapi import (
    JSON_MEDIA_TYPE,
    NDJSON_MEDIA_TYPES,
    OPENAPI_PATH,
    openapi_document,
)
from forwarder.serving import BodyTimeout
from forwarder.signals import Problem, Signal, parse_items

__all__ = ["IngestApi", "IngestObserver", "SignalSink"]

_JSON = JSON_MEDIA_TYPE
_NDJSON = NDJSON_MEDIA_TYPES


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


#: At most this many problems are listed in a 400; the rest are counted
#: (``details_total``), so a hostile 1 MiB body cannot become a 50 MB answer.
MAX_DETAILS = 100
#: Items validated per slice: problems past MAX_DETAILS are counted, never held.
_SLICE = 1024
_MAX_FIELD = 64
_MAX_MESSAGE = 512


def _error(
    status: int,
    message: str,
    *,
    details: Sequence[Problem] = (),
    total: int = 0,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, object] = {"error": message, "details": [p.as_dict() for p in details]}
    if total > len(details):
        body["details_total"] = total
    return web.json_response(body, status=status, headers=headers)


def _detail(problem: Problem, offset: int) -> Problem:
    """``problem`` at its index in the whole request, its texts bounded: a field is an
    item's key (a hostile one may be a megabyte) and a message may list every provider."""
    return dataclasses.replace(
        problem,
        index=problem.index + offset,
        field=problem.field[:_MAX_FIELD],
        message=problem.message[:_MAX_MESSAGE],
    )


def _shown(total: int) -> str:
    return (
        f"; the first {MAX_DETAILS} of {total} problems are listed" if total > MAX_DETAILS else ""
    )


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
        """The aiohttp application serving the API.

        Serve it with :func:`forwarder.serving.serve`: the handler decodes
        ``Content-Encoding`` itself, so aiohttp's decoding must be off.
        """
        app = web.Application(client_max_size=self._max_body)
        app.router.add_post("/v1/signals", self._post_signals)
        app.router.add_get(OPENAPI_PATH, self._openapi)
        return app

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of this API as configured (served without auth)."""
        return openapi_document(
            max_body_bytes=self._max_body,
            max_age_s=self._max_age_ms / 1000,
            auth=bool(self._tokens),
            max_details=MAX_DETAILS,
        )

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi())

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
        except BodyTimeout as exc:
            self._rejected("timeout", 0)
            return _error(408, f"{exc}; send the body promptly or raise ingest.body_timeout_s")
        except (web.RequestPayloadError, HttpProcessingError, ValueError, OSError) as exc:
            # e.g. a broken chunked body, or a truncated one.
            self._rejected("malformed", 0)
            reason = str(getattr(exc, "message", "") or exc).strip().splitlines()
            return _error(400, f"the request body could not be read: {' '.join(reason)[:200]}")
        try:
            raw = decode_body(raw, request.headers.get("Content-Encoding", ""), self._max_body)
        except UnsupportedCoding as exc:
            self._rejected("unsupported_encoding", 0)
            return _error(415, str(exc), headers={"Accept-Encoding": ", ".join(SUPPORTED_CODINGS)})
        except BodyTooLarge as exc:
            self._rejected("too_large", 0)
            return _error(413, f"{exc}; split it")
        except BodyError as exc:
            self._rejected("malformed", 0)
            return _error(400, str(exc))
        items = ndjson_items(raw, MAX_DETAILS) if ctype != _JSON else json_items(raw)
        try:
            signals, problems, total, bad_items, count = self._validate(items)
        except InvalidJson as exc:
            self._rejected("malformed", 0)
            return _error(
                400,
                f"body is not valid JSON{_shown(exc.total)}",
                details=exc.problems,
                total=exc.total,
            )
        if not count:
            self._rejected("empty", 0)
            return _error(400, "the request holds no signals")
        if total:
            self._rejected("invalid", count)
            return _error(
                400,
                f"{bad_items} of {count} signals are invalid; nothing was stored{_shown(total)}",
                details=problems,
                total=total,
            )
        try:
            await self._store.add(signals)
        except StoreFull as exc:
            self._rejected("store_full", count)
            return _error(503, f"store is full: {exc}", headers={"Retry-After": "30"})
        except StoreError as exc:
            self._rejected("store_error", count)
            self._log.error("store_write_failed", error=str(exc))
            return _error(503, "store unavailable; retry", headers={"Retry-After": "5"})
        if self._observer is not None:
            self._observer.signals_received("accepted", "", len(signals))
        return web.json_response({"accepted": len(signals)}, status=202)

    def _validate(
        self, items: Iterator[Any]
    ) -> tuple[list[tuple[tuple[str, ...], Signal]], list[Problem], int, int, int]:
        """(signals, the first MAX_DETAILS problems, how many problems, how many bad
        items, how many items).

        Items are parsed and validated a slice at a time, so a body full of bad items
        is counted without being held; once one is bad, no signal is kept either.
        """
        now_ms = int(self._clock.time() * 1000)
        signals: list[tuple[tuple[str, ...], Signal]] = []
        shown: list[Problem] = []
        total = bad_items = count = 0
        while chunk := list(itertools.islice(items, _SLICE)):
            good, bad = parse_items(
                chunk, now_ms=now_ms, providers=self._providers, max_age_ms=self._max_age_ms
            )
            if bad:
                total += len(bad)
                bad_items += len({p.index for p in bad})
                room = MAX_DETAILS - len(shown)
                shown.extend(_detail(p, count) for p in bad[:room])
                signals.clear()
            elif not total:
                signals.extend(good)
            count += len(chunk)
        return signals, shown, total, bad_items, count
