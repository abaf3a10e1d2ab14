"""Okta admin API calls used to provision a risk provider (replaces the Postman guide).

Authenticated with an API token (``Authorization: SSWS ...``). Errors carry Okta's
error body in full plus a hint for the common codes; a 429's hint says when to retry,
from ``X-Rate-Limit-Reset`` measured against the answer's ``Date`` (risk-api.md §5).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp

from forwarder.errors import AdminApiError
from forwarder.okta.events import parse_rate_headers
from forwarder.okta.exchange import exchange
from forwarder.okta.tokens import RISK_EVENTS_SCOPE

__all__ = ["AdminClient", "next_link", "okta_error_hint"]

_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?([^";]+)"?')


def next_link(value: str) -> str | None:
    """The ``rel="next"`` URL of a ``Link`` header, if any."""
    for match in _LINK.finditer(value):
        if match.group(2).strip() == "next":
            return match.group(1)
    return None


_HINTS = {
    "E0000007": "not found: check the client id / provider id and that the org URL is right",
    "E0000006": (
        "forbidden: the API token's admin lacks the role for this call "
        "(granting scopes needs a Super Admin)"
    ),
    "E0000011": "invalid API token: create a new one (Security > API > Tokens) and retry",
    "E0000047": "rate limited: wait until X-Rate-Limit-Reset and retry",
    "E0000001": "Okta rejected the request body; see errorCauses",
    "invalid_client_metadata": "Okta refused the app registration; see error_description",
}


def okta_error_hint(code: str | None, status: int) -> str:
    """The operator-facing hint for an Okta error code or HTTP status."""
    if code and code in _HINTS:
        return _HINTS[code]
    if status == 401:
        return _HINTS["E0000011"]
    if status == 403:
        return _HINTS["E0000006"]
    if status == 404:
        return _HINTS["E0000007"]
    if status == 429:
        return _HINTS["E0000047"]
    return ""


def _retry_hint(headers: Mapping[str, str]) -> str:
    """The E0000047 hint with the time to retry, when the answer says it."""
    window = parse_rate_headers(headers, local_now=time.time())
    if window is None or window.reset_in_s is None:
        return _HINTS["E0000047"]
    wait_s = max(1, round(window.reset_in_s))
    at = time.strftime("%H:%M:%S", time.gmtime(time.time() + wait_s))
    return (
        f"rate limited: this admin endpoint's window is spent; retry in {wait_s} s "
        f"(after {at} UTC, from X-Rate-Limit-Reset)"
    )


class AdminClient:
    """A thin, honest client for the admin endpoints forwarder needs."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        org_url: str,
        api_token: str,
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self.org_url = org_url
        self._session = session
        self._auth = f"SSWS {api_token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def __repr__(self) -> str:  # never show the API token
        return f"AdminClient(org_url={self.org_url!r})"

    async def _call(self, method: str, path: str, body: object | None = None) -> Any:
        payload, _ = await self._request(method, f"{self.org_url}{path}", body)
        return payload

    async def _request(
        self, method: str, url: str, body: object | None = None
    ) -> tuple[Any, Mapping[str, str]]:
        path = url.removeprefix(self.org_url)
        headers = {"Authorization": self._auth, "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        try:
            reply = await exchange(
                self._session, method, url, data=data, headers=headers, client_timeout=self._timeout
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise AdminApiError(
                f"{method} {url} failed: {exc or type(exc).__name__}",
                status=0,
                hint="check the org URL and network access to it",
            ) from None
        status, answer_headers, text = reply.status, reply.headers, reply.text
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = text
        if status >= 400:
            # Management API errors carry errorCode; the OAuth endpoints (/oauth2/v1/clients)
            # answer {error, error_description} instead (risk-api.md §6, §8).
            code = (
                payload.get("errorCode") or payload.get("error")
                if isinstance(payload, dict)
                else None
            )
            summary = (
                payload.get("errorSummary") or payload.get("error_description")
                if isinstance(payload, dict)
                else None
            )
            hint = okta_error_hint(code if isinstance(code, str) else None, status)
            if status == 429 or code == "E0000047":
                hint = _retry_hint(answer_headers)
            raise AdminApiError(
                f"{method} {path} answered {status}" + (f": {summary}" if summary else ""),
                status=status,
                body=payload,
                hint=hint,
            )
        return payload, answer_headers

    async def logs_page(
        self, *, params: Mapping[str, str] | None = None, next_url: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ``GET /api/v1/logs`` and its ``rel="next"`` link (None: last page).

        ``next_url`` (a previous page's link) must point at this org: the API token is
        never sent anywhere else.
        """
        if next_url is not None:
            if urlsplit(next_url)[:2] != urlsplit(self.org_url)[:2]:
                raise AdminApiError(
                    f"the System Log's next link points outside {self.org_url}: {next_url}",
                    status=0,
                    hint="a proxy may be rewriting Link headers; the API token was not sent",
                )
            url = next_url
        else:
            url = f"{self.org_url}/api/v1/logs?{urlencode(dict(params or {}))}"
        payload, headers = await self._request("GET", url)
        events = [e for e in payload if isinstance(e, dict)] if isinstance(payload, list) else []
        return events, next_link(headers.get("Link", ""))

    async def create_service_app(
        self, name: str, public_jwk: dict[str, Any], *, dpop: bool = False
    ) -> dict[str, Any]:
        """``POST /oauth2/v1/clients``: a service app authenticating with private_key_jwt.

        ``dpop``: the app requires DPoP (``dpop_bound_access_tokens: true``, the Admin
        Console's "Require Demonstrating Proof of Possession (DPoP) header").
        """
        body: dict[str, Any] = {
            "client_name": name,
            "application_type": "service",
            "grant_types": ["client_credentials"],
            "response_types": ["token"],
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [public_jwk]},
        }
        if dpop:
            body["dpop_bound_access_tokens"] = True
        result: dict[str, Any] = await self._call("POST", "/oauth2/v1/clients", body)
        return result

    async def grant_scope(self, client_id: str, scope: str = RISK_EVENTS_SCOPE) -> dict[str, Any]:
        """``POST /api/v1/apps/{clientId}/grants`` with ``issuer`` = the org URL."""
        result: dict[str, Any] = await self._call(
            "POST",
            f"/api/v1/apps/{client_id}/grants",
            {"scopeId": scope, "issuer": self.org_url},
        )
        return result

    async def list_grants(self, client_id: str) -> list[dict[str, Any]]:
        """``GET /api/v1/apps/{clientId}/grants``: the app's scope consent grants."""
        result: list[dict[str, Any]] = await self._call("GET", f"/api/v1/apps/{client_id}/grants")
        return result

    async def list_providers(self) -> list[dict[str, Any]]:
        """``GET /api/v1/risk/providers`` (an org starts with one default provider)."""
        result: list[dict[str, Any]] = await self._call("GET", "/api/v1/risk/providers")
        return result

    async def create_provider(self, *, name: str, client_id: str, action: str) -> dict[str, Any]:
        """``POST /api/v1/risk/providers`` (Okta allows at most three per org)."""
        result: dict[str, Any] = await self._call(
            "POST",
            "/api/v1/risk/providers",
            {"name": name, "clientId": client_id, "action": action},
        )
        return result

    async def get_provider(self, provider_id: str) -> dict[str, Any]:
        """``GET /api/v1/risk/providers/{id}``."""
        result: dict[str, Any] = await self._call("GET", f"/api/v1/risk/providers/{provider_id}")
        return result

    async def update_provider(
        self, provider_id: str, *, name: str, client_id: str, action: str
    ) -> dict[str, Any]:
        """``PUT /api/v1/risk/providers/{id}`` (replaces name, clientId and action)."""
        result: dict[str, Any] = await self._call(
            "PUT",
            f"/api/v1/risk/providers/{provider_id}",
            {"name": name, "clientId": client_id, "action": action},
        )
        return result
