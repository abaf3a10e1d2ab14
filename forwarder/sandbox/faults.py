"""Injected failures: what a faulted events call or token request answers.

Bodies imitate what a real failure looks like: Okta's JSON error objects for the statuses
Okta itself produces (401, 403, 404, 429, 500), OAuth errors on the token endpoint, and a
bare ``text/plain`` page for other 5xx (what a load balancer in front of Okta sends), so a
client's error handling meets non-JSON bodies too.
"""

from __future__ import annotations

import http
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from forwarder.sandbox.errors import (
    ApiError,
    OAuthError,
    access_denied,
    invalid_token,
    not_found,
    rate_limited,
    validation_failed,
)
from forwarder.sandbox.records import Answer

__all__ = [
    "MAX_EVENTS_DELAY_S",
    "NO_STORE",
    "FaultRequest",
    "check_fault_statuses",
    "events_fault_answer",
    "parse_fault_request",
    "token_fault_answer",
]

#: Upper bound of ``events_delay_s`` accepted over HTTP (a slow answer, not a hang).
MAX_EVENTS_DELAY_S = 300.0
#: Token responses are never cached (RFC 6749 §5.1).
NO_STORE = MappingProxyType({"Cache-Control": "no-store", "Pragma": "no-cache"})


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _plain(status: int, headers: Mapping[str, str]) -> Answer:
    return Answer(status, text=_phrase(status), headers={**headers, "Content-Type": "text/plain"})


def check_fault_statuses(statuses: Sequence[Any]) -> None:
    """``ValueError`` unless every status is an integer 400..599."""
    for status in statuses:
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"fault statuses must be integers 400..599, not {status!r}")


def events_fault_answer(status: int, headers: Mapping[str, str]) -> Answer:
    """The answer of an events call faulted with ``status``, carrying ``headers``."""
    known: dict[int, ApiError] = {
        401: invalid_token(),
        403: access_denied(["injected fault"]),
        404: not_found("injected fault"),
        429: rate_limited(),
        500: ApiError(500, "E0000009", "Internal Server Error"),
    }
    if status in known:
        error = known[status]
    elif status < 500:
        error = ApiError(status, "E0000001", "Api validation failed: injected", ["injected fault"])
    else:
        return _plain(status, headers)
    return Answer(error.status, error.body(), dict(headers))


def token_fault_answer(status: int) -> tuple[Answer, str | None]:
    """The answer of a token request faulted with ``status``, and the ``error`` it reports."""
    if status == 429:
        # Okta's rate-limit answer is the management error object, on every endpoint.
        return Answer(429, rate_limited().body()), "E0000047"
    oauth = {
        401: "invalid_client",
        403: "access_denied",
        500: "server_error",
        503: "temporarily_unavailable",
    }.get(status, "invalid_request" if status < 500 else "")
    if not oauth:
        return _plain(status, {}), None
    return Answer(
        status, OAuthError(status, oauth, "Injected fault.").body(), dict(NO_STORE)
    ), oauth


class FaultRequest:
    """A validated ``POST /_sandbox/faults`` body."""

    def __init__(
        self,
        *,
        events: list[int],
        tokens: list[int],
        events_delay_s: float | None,
        revoke: bool | str,
        dpop_nonce: str | None = None,
        dpop_resource_nonce: bool | None = None,
    ) -> None:
        self.events = events
        self.tokens = tokens
        self.events_delay_s = events_delay_s
        self.revoke = revoke
        #: ``"rotate"``: the org's DPoP nonce changes now (the old one stops working).
        self.dpop_nonce = dpop_nonce
        #: Whether the events endpoint demands the DPoP nonce too.
        self.dpop_resource_nonce = dpop_resource_nonce


def parse_fault_request(body: Any) -> FaultRequest:
    """Validate ``{"events", "tokens", "events_delay_s", "revoke_tokens", "dpop_nonce",
    "dpop_resource_nonce"}`` (all optional).

    ``revoke_tokens`` is ``true`` (all tokens) or a client_id; ``dpop_nonce`` is
    ``"rotate"``; ``dpop_resource_nonce`` a boolean. 400 E0000001 lists every problem.
    """
    if not isinstance(body, dict):
        raise validation_failed(["body: must be an object"])
    allowed = (
        "events",
        "tokens",
        "events_delay_s",
        "revoke_tokens",
        "dpop_nonce",
        "dpop_resource_nonce",
    )
    causes = [f"{key[:64]}: unknown property" for key in body if key not in allowed]
    lists: dict[str, list[int]] = {}
    for name in ("events", "tokens"):
        statuses = body.get(name, [])
        try:
            if not isinstance(statuses, list):
                raise ValueError("must be a list of HTTP statuses")
            check_fault_statuses(statuses)
        except ValueError as exc:
            causes.append(f"{name}: {exc}")
        else:
            lists[name] = statuses
    delay = body.get("events_delay_s")
    if delay is not None and (
        isinstance(delay, bool)
        or not isinstance(delay, int | float)
        or not 0 <= delay <= MAX_EVENTS_DELAY_S
    ):
        causes.append(f"events_delay_s: must be a number of seconds 0..{MAX_EVENTS_DELAY_S:g}")
    revoke = body.get("revoke_tokens", False)
    if not isinstance(revoke, bool | str):
        causes.append("revoke_tokens: must be true/false or a client_id")
    nonce = body.get("dpop_nonce")
    if nonce not in (None, "rotate"):
        causes.append('dpop_nonce: must be "rotate"')
    resource_nonce = body.get("dpop_resource_nonce")
    if resource_nonce is not None and not isinstance(resource_nonce, bool):
        causes.append("dpop_resource_nonce: must be true or false")
    if causes:
        raise validation_failed(causes)
    return FaultRequest(
        events=lists["events"],
        tokens=lists["tokens"],
        events_delay_s=None if delay is None else float(delay),
        revoke=revoke,
        dpop_nonce=nonce,
        dpop_resource_nonce=resource_nonce,
    )
