"""The guide's last step: find the test event's ``security.risk.signal.consume`` in the
org's System Log (risk-api.md §10).

``GET /api/v1/logs?filter=eventType eq "security.risk.signal.consume"&since=...`` is
polled (every ``interval_s`` on the injected clock, up to ``timeout_s``), following
``Link: <...>; rel="next"``. An event matches when it names the service app (its
``client_id`` anywhere in the event: actor, target or debug data; Okta does not document
which) or the test IP. Reading the log needs an API token of an admin with
``okta.logs.read`` (a read-only admin is enough).

When nothing appears, the most common causes are named: the provider's action is
``none`` (Okta ignores its signals; checked when the token may list providers), the API
token belongs to another org than ``org_url``, or the log is simply late.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from forwarder.clock import Clock
from forwarder.errors import AdminApiError
from forwarder.okta.admin import AdminClient

__all__ = ["CONSUME_EVENT", "Confirmation", "find_consume_event", "log_time", "why_missing"]

CONSUME_EVENT = "security.risk.signal.consume"
#: Events published this long before the test event still count (clock skew).
_SKEW_S = 60.0
#: Pages read per poll at most (a busy org's log cannot keep the check forever).
_MAX_PAGES = 20


def log_time(epoch_s: float) -> str:
    """An ISO 8601 UTC time for ``since``/``until``."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True, slots=True)
class Confirmation:
    """The matching event (None: none appeared) and how many other consume events were seen."""

    event: dict[str, Any] | None
    others: int
    waited_s: float
    polls: int

    def describe(self) -> str:
        """One line: the event's uuid, published time, outcome and the provider it names."""
        e = self.event
        if e is None:
            return f"no matching {CONSUME_EVENT} event after {self.waited_s:.0f} s"
        outcome = e.get("outcome")
        result = outcome.get("result", "unknown") if isinstance(outcome, dict) else "unknown"
        provider = _provider_named(e)
        return (
            f"System Log event {e.get('uuid')} ({CONSUME_EVENT}) published "
            f"{e.get('published')}, outcome {result}"
            + (f", provider {provider}" if provider else "")
        )


def _provider_named(event: dict[str, Any]) -> str:
    for target in event.get("target") or []:
        if isinstance(target, dict) and target.get("type") == "RiskProvider":
            return f"{target.get('displayName')!s} ({target.get('id')!s})"
    return ""


def _matches(event: dict[str, Any], client_id: str, test_ip: str) -> bool:
    text = json.dumps(event)
    return client_id in text or test_ip in text


async def find_consume_event(
    admin: AdminClient,
    *,
    client_id: str,
    test_ip: str,
    sent_at: float,
    clock: Clock,
    timeout_s: float,
    interval_s: float = 5.0,
) -> Confirmation:
    """Poll the System Log until the test event's consume event appears or time runs out."""
    params = {
        "filter": f'eventType eq "{CONSUME_EVENT}"',
        "since": log_time(sent_at - _SKEW_S),
        "limit": "100",
    }
    started = clock.monotonic()
    seen: set[str] = set()
    cursor: str | None = None  # where the last poll ended (Okta's polling next link)
    polls = 0
    while True:
        polls += 1
        events, link = await admin.logs_page(params=params, next_url=cursor)
        for _ in range(_MAX_PAGES):
            for event in events:
                if _matches(event, client_id, test_ip):
                    return Confirmation(event, len(seen), clock.monotonic() - started, polls)
                seen.add(str(event.get("uuid")))
            if not events or link is None:
                break
            cursor = link
            events, link = await admin.logs_page(next_url=link)
        if link is not None:
            cursor = link
        waited = clock.monotonic() - started
        if waited >= timeout_s:
            return Confirmation(None, len(seen), waited, polls)
        await clock.sleep(min(interval_s, timeout_s - waited))


async def why_missing(admin: AdminClient, client_id: str, timeout_s: float) -> list[str]:
    """The likely causes of a missing event, the provider's action first when known."""
    causes = []
    try:
        providers = await admin.list_providers()
    except AdminApiError:
        providers = []
    mine = [p for p in providers if isinstance(p, dict) and p.get("clientId") == client_id]
    if any(p.get("action") == "none" for p in mine):
        causes.append(
            "the risk provider's action is none, so Okta ignores its signals and logs "
            "nothing: `forwarder okta providers set --action log_only` (or enforce_and_log)"
        )
    elif providers and not mine:
        causes.append(
            f"no risk provider of this org names {client_id}: is the API token for a "
            "different org than org_url?"
        )
    else:
        causes.append(
            "the provider's action is none (check with `forwarder okta providers list`), or "
            "the API token belongs to a different org than org_url"
        )
    causes.append(
        f"the System Log can lag: retry with a longer --confirm-timeout (was {timeout_s:g} s)"
    )
    return causes
