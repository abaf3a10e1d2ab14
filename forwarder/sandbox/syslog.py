"""The org's System Log: ``GET /api/v1/logs`` with the events the sandbox produced.

An accepted Risk Events call writes one ``security.risk.signal.consume`` event
(risk-api.md §10) unless the provider's action is ``none``; Okta's guide has the admin
look for it as the integration's last step. Events have Okta's ``LogEvent`` shape
(``uuid``, ``published``, ``eventType``, ``version``, ``severity``, ``displayMessage``,
``actor``, ``client``, ``outcome``, ``target``, ``transaction``, ``debugContext``...).
What Okta puts in ``debugContext.debugData`` and ``target`` for this event is not
documented; the sandbox names the provider (``target``: type ``RiskProvider``) and the
app (``actor``), and counts the subjects.

Query parameters as Okta's: ``since``/``until`` (ISO 8601; ``since`` defaults to seven
days ago), ``filter`` (``field eq "value"`` terms joined by ``and``), ``limit`` (1..1000,
default 100) and the ``after`` cursor of the ``Link: <...>; rel="next"`` header. As with
Okta, a query without ``until`` is a polling query: it always has a ``next`` link.
"""

from __future__ import annotations

import re
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from forwarder.sandbox.errors import ApiError, validation_failed

__all__ = ["CONSUME_EVENT", "LogEvent", "SystemLog", "iso_time"]

CONSUME_EVENT = "security.risk.signal.consume"
_DEFAULT_SINCE_S = 7 * 86_400
_MAX_LIMIT = 1000
_TERM = re.compile(r'\s*([A-Za-z][A-Za-z.]*)\s+eq\s+"((?:[^"\\]|\\.)*)"\s*')
_FIELDS = ("eventType", "uuid", "outcome.result", "actor.id", "target.id", "severity")


def iso_time(epoch_s: float) -> str:
    """``2026-12-01T09:41:17.123Z``: the ``published`` format."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _parse_time(name: str, value: str) -> float:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise validation_failed([f"{name}: {value[:64]!r} is not an ISO 8601 time"]) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _invalid_filter() -> ApiError:
    return ApiError(400, "E0000031", "Invalid search criteria.")


def _parse_filter(text: str) -> list[tuple[str, str]]:
    terms = []
    for part in re.split(r"\s+and\s+", text.strip()):
        match = _TERM.fullmatch(part)
        if match is None or match.group(1) not in _FIELDS:
            raise _invalid_filter()
        terms.append((match.group(1), match.group(2).replace('\\"', '"')))
    return terms


@dataclass(slots=True)
class LogEvent:
    """One System Log event as the sandbox stores it."""

    uuid: str
    published: float
    event_type: str
    body: dict[str, Any]

    def values(self, field: str) -> list[str]:
        """The values of a dotted ``field`` (``target.id`` has one per target)."""
        if field == "target.id":
            return [str(t.get("id")) for t in self.body.get("target", [])]
        node: Any = self.body
        for part in field.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return [] if node is None else [str(node)]


class SystemLog:
    """Every event, in the order written, with Okta's query semantics."""

    def __init__(self, *, max_events: int = 100_000) -> None:
        #: The newest ``max_events`` events (Okta keeps 90 days; a sandbox needs less).
        self.events: deque[LogEvent] = deque(maxlen=max_events)
        #: Seconds before an event shows in queries (Okta's log is not instant; a test knob).
        self.delay_s = 0.0

    def consume(
        self,
        *,
        now: float,
        client_id: str,
        client_name: str,
        provider: Mapping[str, str],
        subjects: int,
        ip_address: str,
    ) -> LogEvent:
        """Record a ``security.risk.signal.consume`` for an accepted events call."""
        event_id = str(uuid.uuid4())
        body: dict[str, Any] = {
            "uuid": event_id,
            "published": iso_time(now),
            "eventType": CONSUME_EVENT,
            "version": "0",
            "severity": "INFO",
            "legacyEventType": None,
            "displayMessage": "Risk signal consumed from a third-party risk provider",
            "actor": {
                "id": client_id,
                "type": "PublicClientApp",
                "alternateId": client_id,
                "displayName": client_name,
                "detailEntry": None,
            },
            "client": {
                "ipAddress": ip_address,
                "userAgent": None,
                "zone": "null",
                "device": "Unknown",
                "id": client_id,
                "geographicalContext": None,
            },
            "outcome": {"result": "SUCCESS", "reason": None},
            "target": [
                {
                    "id": provider["id"],
                    "type": "RiskProvider",
                    "alternateId": provider["name"],
                    "displayName": provider["name"],
                    "detailEntry": {"action": provider["action"]},
                }
            ],
            "transaction": {"type": "WEB", "id": uuid.uuid4().hex[:20], "detail": {}},
            "debugContext": {
                "debugData": {
                    "riskProviderId": provider["id"],
                    "riskProviderAction": provider["action"],
                    "clientId": client_id,
                    "subjectCount": str(subjects),
                }
            },
            "authenticationContext": {"authenticationStep": 0, "externalSessionId": None},
            "securityContext": {},
            "request": {"ipChain": [{"ip": ip_address}]},
        }
        event = LogEvent(event_id, now, CONSUME_EVENT, body)
        self.events.append(event)
        return event

    def query(
        self, params: Mapping[str, str], *, now: float, url: str
    ) -> tuple[list[dict[str, Any]], str]:
        """``GET /api/v1/logs``: the page of events and the ``Link`` header value.

        ``url`` is ``{origin}/api/v1/logs`` as the client addressed it.
        """
        unknown = [k for k in params if k not in ("since", "until", "filter", "limit", "after")]
        if unknown:
            raise validation_failed([f"{k[:64]}: unknown query parameter" for k in unknown])
        since = _parse_time("since", params["since"]) if "since" in params else None
        until = _parse_time("until", params["until"]) if "until" in params else None
        if since is None:
            since = now - _DEFAULT_SINCE_S
        if until is not None and until < since:
            raise validation_failed(["until: must not be before since"])
        try:
            limit = int(params.get("limit", "100"))
        except ValueError:
            limit = -1
        if not 1 <= limit <= _MAX_LIMIT:
            raise validation_failed([f"limit: must be an integer 1..{_MAX_LIMIT}"])
        terms = _parse_filter(params["filter"]) if params.get("filter") else []
        matching = [
            e
            for e in self.events
            if e.published >= since
            and e.published + self.delay_s <= now
            and (until is None or e.published < until)
            and all(value in e.values(field) for field, value in terms)
        ]
        after = params.get("after")
        if after is not None:
            ids = [e.uuid for e in matching]
            matching = matching[ids.index(after) + 1 :] if after in ids else []
        page = matching[:limit]
        links = [f'<{url}?{urlencode(params)}>; rel="self"']
        more = len(matching) > limit
        # Okta: without until, the answer is a poll and always links to the next one.
        if more or until is None:
            cursor = page[-1].uuid if page else after
            next_params = dict(params)
            if cursor is not None:
                next_params["after"] = cursor
            links.append(f'<{url}?{urlencode(next_params)}>; rel="next"')
        return [e.body for e in page], ", ".join(links)
