"""The sandbox org: its state and Okta's rules, without HTTP.

:class:`SandboxOrg` holds the registered service apps, their grants, the risk providers,
the authorization server's tokens, the per-provider rate windows, the injected faults and
every call it saw. The HTTP layer (:mod:`forwarder.sandbox.server`) turns requests into
method calls and :class:`~forwarder.sandbox.records.Answer` objects back into responses.
All time comes from the injected ``Clock``.
"""

from __future__ import annotations

import hmac
import secrets
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from forwarder.clock import Clock
from forwarder.sandbox.clients import RegisteredClient, parse_client_metadata
from forwarder.sandbox.errors import (
    ApiError,
    InsufficientScopeError,
    OAuthError,
    access_denied,
    invalid_token,
    malformed_body,
    not_found,
    random_id,
    rate_limited,
    unsupported_media_type,
    validation_failed,
)
from forwarder.sandbox.faults import (
    NO_STORE,
    check_fault_statuses,
    events_fault_answer,
    parse_fault_request,
    token_fault_answer,
)
from forwarder.sandbox.records import AcceptedCall, Answer, CallRecord, TokenRecord
from forwarder.sandbox.resources import (
    KNOWN_SCOPES,
    MAX_PROVIDERS,
    RISK_EVENTS_SCOPE,
    Grant,
    Provider,
    parse_grant_body,
    parse_provider_body,
)
from forwarder.sandbox.syslog import SystemLog
from forwarder.sandbox.tokens import AuthorizationServer, claimed_client, parse_token_form
from forwarder.sandbox.validation import parse_json, validate_risk_events
from forwarder.sandbox.window import SlidingWindow

__all__ = ["EVENTS_PATH", "SandboxOrg"]

EVENTS_PATH = "/api/v1/risk/events/ip"
_READ_ONLY_CLIENT_FIELDS = ("client_id", "client_id_issued_at", "client_secret")


def _api_answer(error: ApiError, headers: Mapping[str, str]) -> Answer:
    return Answer(error.status, error.body(), {**headers, **error.headers})


def _split_authorization(value: str | None) -> tuple[str, str]:
    """``("bearer"|"ssws"|..., credential)``; empty strings when absent."""
    if not value:
        return "", ""
    scheme, _, credential = value.strip().partition(" ")
    return scheme.lower(), credential.strip()


class SandboxOrg:
    """An Okta org as seen by a risk provider: token endpoint, events endpoint, admin API.

    A fresh org holds one default risk provider (``name "Default "``, ``clientId "null"``,
    ``action log_only``, as in Okta's guide). Configure it with :meth:`register_client`,
    :meth:`grant` and :meth:`set_provider`, or through the HTTP admin API.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        calls_per_minute: int = 3,
        window_s: float = 60.0,
        token_lifetime_s: int = 3600,
        api_token: str | None = None,
        max_events: int = 20,
        max_subjects: int = 50,
    ) -> None:
        if calls_per_minute < 1 or window_s <= 0 or token_lifetime_s < 1:
            raise ValueError("calls_per_minute, window_s and token_lifetime_s must be positive")
        if max_events < 1 or max_subjects < 1:
            raise ValueError("max_events and max_subjects must be positive")
        self.clock = clock
        self.calls_per_minute = calls_per_minute
        self.window_s = window_s
        self.token_lifetime_s = token_lifetime_s
        self.max_events = max_events
        self.max_subjects = max_subjects
        #: The SSWS admin API token.
        self.api_token: str = api_token or "00" + secrets.token_urlsafe(30)
        #: Every events call answered 202, in order.
        self.accepted: list[AcceptedCall] = []
        #: Every call to the events endpoint, whatever its answer.
        self.event_calls: list[CallRecord] = []
        #: Every token request, whatever its answer.
        self.token_requests: list[TokenRecord] = []
        #: Real seconds to wait before answering each events call (simulated slow network).
        self.events_delay_s: float = 0.0
        #: The admin user that grants are attributed to (``createdBy``).
        self.admin_user_id = random_id("00u", 17)
        self._clients: dict[str, RegisteredClient] = {}
        self._grants: dict[str, dict[str, Grant]] = {}
        self._providers: dict[str, Provider] = {}
        self._auth_server = AuthorizationServer(lifetime_s=token_lifetime_s)
        #: DPoP proofs, nonces and the jti of every proof seen (``dpop.seen_jtis``).
        self.dpop = self._auth_server.dpop
        #: ``GET /api/v1/logs``: a ``security.risk.signal.consume`` per accepted call.
        self.system_log = SystemLog()
        self._windows: dict[str, SlidingWindow] = {}
        self._anonymous = SlidingWindow(limit=calls_per_minute, window_s=window_s)
        self._event_faults: deque[int] = deque()
        self._token_faults: deque[int] = deque()
        now = clock.time()
        default = Provider(random_id("00rp", 13), "Default ", "null", "log_only", now, now)
        self._providers[default.id] = default

    # ------------------------------------------------------------------ inspection

    def accepted_ips(self, client_id: str | None = None) -> list[str]:
        """IPs of accepted calls (of ``client_id`` when given), in the order sent."""
        return [
            ip
            for call in self.accepted
            if client_id is None or call.client_id == client_id
            for ip in call.ips
        ]

    def issued_tokens(self) -> list[str]:
        """Every access token issued so far, in order, including expired and revoked ones."""
        return list(self._auth_server.issued)

    def summary(self, origin: str = "") -> dict[str, Any]:
        """Providers, clients (without keys), counts and pending faults."""
        clients = [
            {
                "client_id": c.client_id,
                "client_name": c.name,
                "application_type": c.metadata.get("application_type"),
                "token_endpoint_auth_method": c.metadata.get("token_endpoint_auth_method"),
                "dpop_bound_access_tokens": c.metadata.get("dpop_bound_access_tokens", False),
                "kids": sorted(c.keys),
                "scopes": sorted(self._grants.get(c.client_id, {})),
            }
            for c in self._clients.values()
        ]
        return {
            "providers": self.list_providers(origin),
            "clients": clients,
            "counts": {
                "accepted_calls": len(self.accepted),
                "accepted_ips": len(self.accepted_ips()),
                "event_calls": len(self.event_calls),
                "token_requests": len(self.token_requests),
                "active_tokens": self._auth_server.active(self.clock.time()),
            },
            "rate_limit": {"calls_per_minute": self.calls_per_minute, "window_s": self.window_s},
            "faults": self.faults(),
        }

    # ------------------------------------------------------------------ faults

    def fail_events(self, *statuses: int) -> None:
        """The next ``len(statuses)`` events calls answer these statuses instead of processing.

        They are authenticated and counted in the rate window first, like any call.
        """
        check_fault_statuses(statuses)
        self._event_faults.extend(statuses)

    def fail_tokens(self, *statuses: int) -> None:
        """The next ``len(statuses)`` token requests answer these statuses."""
        check_fault_statuses(statuses)
        self._token_faults.extend(statuses)

    def revoke_tokens(self, client_id: str | None = None) -> None:
        """Issued tokens (of ``client_id``, or all) stop working: 401 E0000011."""
        self._auth_server.revoke(client_id)

    def faults(self) -> dict[str, Any]:
        """Pending faults."""
        return {
            "events": list(self._event_faults),
            "tokens": list(self._token_faults),
            "events_delay_s": self.events_delay_s,
            "dpop_resource_nonce": self.dpop.resource_nonce,
        }

    def apply_faults(self, body: Any) -> dict[str, Any]:
        """``POST /_sandbox/faults``: all-or-nothing; 400 E0000001 lists every problem."""
        request = parse_fault_request(body)
        self.fail_events(*request.events)
        self.fail_tokens(*request.tokens)
        if request.events_delay_s is not None:
            self.events_delay_s = request.events_delay_s
        if request.dpop_nonce == "rotate":
            self.dpop.rotate()
        if request.dpop_resource_nonce is not None:
            self.dpop.resource_nonce = request.dpop_resource_nonce
        if request.revoke is True:
            self.revoke_tokens()
        elif isinstance(request.revoke, str):
            self.revoke_tokens(request.revoke)
        return self.faults()

    # ------------------------------------------------------------------ clients and grants

    def register_client(self, name: str, jwks: dict[str, Any], *, dpop: bool = False) -> str:
        """Register a service app with ``private_key_jwt`` and these public keys; its client_id.

        ``dpop``: the app requires DPoP (``dpop_bound_access_tokens``).

        Raises ``ValueError`` when Okta would refuse the registration (e.g. a private key).
        """
        metadata: dict[str, Any] = {
            "client_name": name,
            "application_type": "service",
            "grant_types": ["client_credentials"],
            "response_types": ["token"],
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": jwks,
        }
        if dpop:
            metadata["dpop_bound_access_tokens"] = True
        try:
            return str(self.create_client(metadata)["client_id"])
        except OAuthError as exc:
            raise ValueError(exc.description) from None

    def create_client(self, body: Any) -> dict[str, Any]:
        """``POST /oauth2/v1/clients``: the 201 body, or 400 ``invalid_client_metadata``."""
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in _READ_ONLY_CLIENT_FIELDS}
        metadata, keys = parse_client_metadata(body)
        client_id = random_id("0oa", 17)
        metadata = {
            "client_id": client_id,
            "client_id_issued_at": int(self.clock.time()),
            **metadata,
        }
        self._clients[client_id] = RegisteredClient(client_id, metadata, keys)
        self._grants[client_id] = {}
        return metadata

    def grant(self, client_id: str, scope_id: str = RISK_EVENTS_SCOPE) -> None:
        """Grant ``scope_id`` to the service app; ``ValueError`` as the HTTP API would refuse."""
        if client_id not in self._clients:
            raise ValueError(f"no client {client_id!r}")
        if scope_id not in KNOWN_SCOPES:
            raise ValueError(f"unknown scope {scope_id!r}")
        try:
            self._add_grant(client_id, scope_id, issuer=None)
        except ApiError as exc:
            raise ValueError("; ".join(exc.causes)) from None

    def _add_grant(self, client_id: str, scope_id: str, issuer: str | None) -> Grant:
        grants = self._grants[client_id]
        if scope_id in grants:
            raise validation_failed([f"scopeId: A consent for scope {scope_id} already exists."])
        now = self.clock.time()
        grant = Grant(random_id("oag", 17), client_id, scope_id, issuer, now, self.admin_user_id)
        grants[scope_id] = grant
        return grant

    def _client_or_404(self, app_id: str) -> RegisteredClient:
        client = self._clients.get(app_id)
        if client is None:
            raise not_found(f"Resource not found: {app_id} (AppInstance)")
        return client

    def add_grant(self, app_id: str, body: Any, *, origin: str) -> dict[str, Any]:
        """``POST /api/v1/apps/{appId}/grants``: the 201 grant object.

        Assumption: Okta's answer to granting a scope the app already holds is not
        documented; the sandbox answers 400 E0000001 with the cause
        ``scopeId: A consent for scope <scope> already exists.``
        """
        client = self._client_or_404(app_id)
        scope_id = parse_grant_body(body, origin=origin)
        return self._add_grant(app_id, scope_id, origin).to_json(origin, client.name)

    def list_grants(self, app_id: str, *, origin: str) -> list[dict[str, Any]]:
        """``GET /api/v1/apps/{appId}/grants``."""
        client = self._client_or_404(app_id)
        return [g.to_json(origin, client.name) for g in self._grants[app_id].values()]

    # ------------------------------------------------------------------ providers

    def list_providers(self, origin: str = "") -> list[dict[str, Any]]:
        """``GET /api/v1/risk/providers``."""
        return [p.to_json(origin) for p in self._providers.values()]

    def _provider_or_404(self, provider_id: str) -> Provider:
        provider = self._providers.get(provider_id)
        if provider is None:
            raise not_found(f"Resource not found: {provider_id} (RiskProvider)")
        return provider

    def get_provider(self, provider_id: str, *, origin: str = "") -> dict[str, Any]:
        """``GET /api/v1/risk/providers/{id}``."""
        return self._provider_or_404(provider_id).to_json(origin)

    def create_provider(self, body: Any, *, origin: str = "") -> dict[str, Any]:
        """``POST /api/v1/risk/providers``: at most three per org."""
        name, client_id, action = parse_provider_body(body, others=self._providers.values())
        if len(self._providers) >= MAX_PROVIDERS:
            raise validation_failed(
                [f"riskProvider: an org can have at most three ({MAX_PROVIDERS}) risk providers"]
            )
        now = self.clock.time()
        provider = Provider(random_id("00rp", 13), name, client_id, action, now, now)
        self._providers[provider.id] = provider
        return provider.to_json(origin)

    def replace_provider(self, provider_id: str, body: Any, *, origin: str = "") -> dict[str, Any]:
        """``PUT /api/v1/risk/providers/{id}``: replaces name, clientId and action."""
        provider = self._provider_or_404(provider_id)
        others = [p for p in self._providers.values() if p.id != provider_id]
        name, client_id, action = parse_provider_body(body, others=others)
        provider.name, provider.client_id, provider.action = name, client_id, action
        provider.last_updated = self.clock.time()
        return provider.to_json(origin)

    def delete_provider(self, provider_id: str) -> None:
        """``DELETE /api/v1/risk/providers/{id}``."""
        self._provider_or_404(provider_id)
        del self._providers[provider_id]
        self._windows.pop(provider_id, None)

    def set_provider(
        self,
        client_id: str,
        name: str,
        action: str = "log_only",
        provider_id: str | None = None,
    ) -> dict[str, Any]:
        """Make ``client_id`` a risk provider; the provider object (links relative).

        With ``provider_id`` that provider is replaced. Otherwise the provider already
        naming ``client_id`` is updated, else the unconfigured default one (what Okta's
        guide does), else a new one is created. ``ValueError`` when Okta would refuse.
        """
        body = {"name": name, "clientId": client_id, "action": action}
        target = provider_id
        if target is None:
            mine = [p.id for p in self._providers.values() if p.client_id == client_id]
            unset = [p.id for p in self._providers.values() if p.client_id == "null"]
            target = next(iter(mine + unset), None)
        try:
            if target is None:
                return self.create_provider(body)
            return self.replace_provider(target, body)
        except ApiError as exc:
            raise ValueError("; ".join(exc.causes) or exc.summary) from None

    def _provider_for(self, client_id: str) -> Provider | None:
        # Several providers naming one app is undocumented; the oldest one wins.
        for provider in self._providers.values():
            if provider.client_id == client_id:
                return provider
        return None

    # ------------------------------------------------------------------ admin authentication

    def _is_api_token(self, credential: str) -> bool:
        return hmac.compare_digest(
            credential.encode("utf-8", "replace"), self.api_token.encode("utf-8", "replace")
        )

    def authorize_admin(
        self, authorization: str | None, *, scope: str | None, origin: str, resource: str
    ) -> None:
        """Allow ``SSWS <api_token>``, or a Bearer token holding ``scope`` when one is given.

        Raises 401 E0000011 for missing or wrong credentials and
        :class:`~forwarder.sandbox.errors.InsufficientScopeError` for a token without ``scope``.
        """
        scheme, credential = _split_authorization(authorization)
        if scheme == "ssws" and self._is_api_token(credential):
            return
        if scheme == "bearer" and scope is not None:
            token = self._auth_server.lookup(credential, self.clock.time())
            if token is not None:
                if scope in token.scopes:
                    return
                raise InsufficientScopeError(origin=origin, scope=scope, resource=resource)
        raise invalid_token()

    # ------------------------------------------------------------------ token endpoint

    def request_token(
        self,
        *,
        content_type: str,
        body: bytes | None,
        token_url: str,
        other_credentials: bool = False,
        dpop_proofs: Sequence[str] = (),
    ) -> Answer:
        """``POST /oauth2/v1/token`` (client credentials + ``private_key_jwt``); recorded.

        ``body`` is the raw form (None: over the size limit); ``token_url`` is the token
        endpoint as the client addressed it (the required assertion ``aud``);
        ``other_credentials`` says an ``Authorization`` header was sent too.
        """
        now = self.clock.time()
        params: dict[str, list[str]] = {}
        try:
            params = parse_token_form(content_type, body)
            if self._token_faults:
                status = self._token_faults.popleft()
                answer, error = token_fault_answer(status)
                self.token_requests.append(TokenRecord(now, claimed_client(params), status, error))
                return answer
            client_id, token = self._auth_server.issue(
                params,
                clients=self._clients,
                granted=self._grants,
                token_url=token_url,
                other_credentials=other_credentials,
                now=now,
                dpop_proofs=dpop_proofs,
            )
        except OAuthError as exc:
            record = TokenRecord(now, claimed_client(params), exc.status, exc.error)
            self.token_requests.append(record)
            return Answer(exc.status, exc.body(), {**NO_STORE, **exc.headers})
        self.token_requests.append(TokenRecord(now, client_id, 200, None))
        return Answer(200, token, dict(NO_STORE))

    # ------------------------------------------------------------------ events endpoint

    def receive_events(
        self,
        *,
        authorization: str | None,
        content_type: str,
        body: bytes | None,
        origin: str,
        dpop_proofs: Sequence[str] = (),
        client_ip: str = "127.0.0.1",
    ) -> Answer:
        """``POST /api/v1/risk/events/ip``; recorded in :attr:`event_calls`.

        ``body`` None means it exceeded the server's size limit. Every answer carries the
        ``X-Rate-Limit-*`` headers (risk-api.md §5).
        """
        now = self.clock.time()
        answer, client_id = self._events_answer(
            authorization, content_type, body, origin, now, list(dpop_proofs)
        )
        if answer.status == 202 and client_id is not None:
            self._log_consumed(client_id, client_ip, now)
        self.event_calls.append(CallRecord(now, client_id, answer.status))
        return answer

    def _anonymous_answer(self, error: ApiError | InsufficientScopeError, now: float) -> Answer:
        # Calls that reach no provider count in a per-org window used only for the headers.
        self._anonymous.hit(now)
        headers = self._anonymous.headers(now)
        if isinstance(error, InsufficientScopeError):
            return Answer(error.status, None, {**headers, **error.headers})
        return _api_answer(error, headers)

    def _log_consumed(self, client_id: str, client_ip: str, now: float) -> None:
        call = self.accepted[-1]
        provider = self._providers.get(call.provider_id)
        # Action "none": Okta ignores the provider's signals (nothing in the System Log).
        if provider is None or provider.action == "none":
            return
        client = self._clients.get(client_id)
        self.system_log.consume(
            now=now,
            client_id=client_id,
            client_name=client.name if client else client_id,
            provider={"id": provider.id, "name": provider.name, "action": provider.action},
            subjects=len(call.ips),
            ip_address=client_ip,
        )

    def _events_answer(
        self,
        authorization: str | None,
        content_type: str,
        body: bytes | None,
        origin: str,
        now: float,
        dpop_proofs: list[str],
    ) -> tuple[Answer, str | None]:
        scheme, credential = _split_authorization(authorization)
        token = self._auth_server.lookup(credential, now) if scheme in ("bearer", "dpop") else None
        if token is None:
            if scheme == "ssws" and self._is_api_token(credential):
                cause = "An API token names no risk provider; send events with an access token"
                return self._anonymous_answer(access_denied([cause]), now), None
            return self._anonymous_answer(invalid_token(), now), None
        client_id = token.client_id
        if RISK_EVENTS_SCOPE not in token.scopes:
            denied = InsufficientScopeError(
                origin=origin, scope=RISK_EVENTS_SCOPE, resource=EVENTS_PATH
            )
            return self._anonymous_answer(denied, now), client_id
        provider = self._provider_for(client_id)
        if provider is None:
            cause = (
                f"The client {client_id} is not a configured risk provider: no risk provider "
                "has it as clientId (PUT /api/v1/risk/providers/{id})"
            )
            return self._anonymous_answer(access_denied([cause]), now), client_id
        # Three calls per minute per risk provider (risk-api.md §5); every call counts.
        window = self._windows.setdefault(
            provider.id, SlidingWindow(limit=self.calls_per_minute, window_s=self.window_s)
        )
        allowed = window.hit(now)
        if self._event_faults:
            # Injected faults come after authentication and counting.
            status = self._event_faults.popleft()
            headers = window.headers(now, exhausted=status == 429)
            return events_fault_answer(status, headers), client_id
        headers = window.headers(now)
        if not allowed:
            return _api_answer(rate_limited(), headers), client_id
        url = f"{origin}{EVENTS_PATH}"
        refusal = self.dpop.resource_refusal(
            scheme, token.jkt, credential, dpop_proofs, url=url, now=now
        )
        if refusal is not None:
            refusal.headers.update(headers)
            return refusal, client_id
        if body is None:
            cause = "body: the request body is too large"
            too_large = ApiError(413, "E0000001", "Api validation failed: body", [cause])
            return _api_answer(too_large, headers), client_id
        if content_type != "application/json":
            return _api_answer(unsupported_media_type(), headers), client_id
        try:
            parsed = parse_json(body)
        except ValueError:
            return _api_answer(malformed_body(), headers), client_id
        causes = validate_risk_events(
            parsed, now=now, max_events=self.max_events, max_subjects=self.max_subjects
        )
        if causes:
            return _api_answer(validation_failed(causes), headers), client_id
        self.accepted.append(AcceptedCall(now, client_id, provider.id, parsed))
        return Answer(202, None, headers), client_id

    # ------------------------------------------------------------------ System Log

    def query_logs(self, params: Mapping[str, str], *, url: str) -> tuple[list[Any], str]:
        """``GET /api/v1/logs``: a page of LogEvents and the ``Link`` header."""
        return self.system_log.query(params, now=self.clock.time(), url=url)
