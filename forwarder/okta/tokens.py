"""Access tokens for one provider: the client assertion, the token request, the cache.

Okta's org authorization server issues Okta-scoped tokens to a service app that
authenticates with ``private_key_jwt`` (risk-api.md §8): a JWT signed with the partner's
private key, ``aud`` = the token URL, ``iss`` = ``sub`` = client id, ``exp`` at most an
hour ahead (we use 5 minutes) and a fresh ``jti`` (a reused one is refused). Tokens
live ``expires_in`` seconds and there is no refresh token, so the token is cached and
renewed shortly before it runs out; concurrent users share one refresh in flight.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from authlib.oauth2.rfc7523 import private_key_jwt_sign

from forwarder.clock import Clock
from forwarder.errors import AuthError, InvalidCredentials
from forwarder.okta.dpop import DPoP, dpop_error_hint
from forwarder.okta.exchange import exchange
from forwarder.okta.keys import SigningKey

__all__ = ["RISK_EVENTS_SCOPE", "AccessToken", "TokenSource", "token_error_hint"]

RISK_EVENTS_SCOPE = "okta.riskEvents.manage"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 300
#: Token-endpoint errors that mean "this app requires DPoP" when no proof was sent.
_DPOP_ERRORS = ("invalid_dpop_proof", "use_dpop_nonce")

TokenObserver = Callable[[str, float | None], None]
"""Called with (outcome, token expiry epoch seconds or None) after each token request."""


def token_error_hint(error: str, description: str, *, client_id: str, kid: str) -> str:
    """What an operator should check for an OAuth error from ``/oauth2/v1/token``."""
    text = description.lower()
    if error == "invalid_client":
        if "expir" in text or "issued at" in text or "future" in text:
            return "the assertion's time was refused: check this machine's clock (NTP)"
        if "kid" in text:
            return (
                f"no key with kid {kid!r} is registered on the service app: register this "
                "key's public JWK (forwarder keys generate prints it) or fix the key file"
            )
        if "audience" in text:
            return "org_url is not the org's URL: use https://<org>.okta.com, not the -admin URL"
        if "client" in text and ("exist" in text or "not found" in text or "no client" in text):
            return f"client_id {client_id!r} is not a service app in this org: check client_id"
        return (
            "key mismatch or wrong client: the private key must match the public JWK "
            f"registered on service app {client_id!r}, and org_url must be that app's org"
        )
    if error in ("invalid_scope", "consent_required"):
        return (
            f"scope {RISK_EVENTS_SCOPE} is not granted to the service app: run "
            f"`forwarder okta grant --org URL --client-id {client_id}` (needs a Super Admin)"
        )
    if error == "access_denied":
        return "the request came from outside the app's permitted network zones"
    if error in ("use_dpop_nonce", "invalid_dpop_proof"):
        return (
            'the service app requires DPoP: set dpop = "auto" (the default) or "always" '
            "for this provider, or untick 'Require DPoP' on the app in the Admin Console"
        )
    if error == "unauthorized_client":
        return "the app may not use client_credentials: it must be a service app"
    return "check org_url, client_id and the key file with `forwarder okta check`"


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A cached access token; ``token_type`` is ``Bearer`` or ``DPoP`` (bound to our key)."""

    value: str
    expires_at: float
    token_type: str = "Bearer"  # noqa: S105 - a scheme name

    @property
    def dpop_bound(self) -> bool:
        """Bound to our DPoP key: every use needs a proof."""
        return self.token_type.lower() == "dpop"

    def __repr__(self) -> str:  # never print the token itself
        return f"AccessToken(token_type={self.token_type!r}, expires_at={self.expires_at})"


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: dict[str, Any]

    @property
    def error(self) -> str:
        return str(self.body.get("error", "")) or str(self.body.get("errorCode", ""))

    @property
    def description(self) -> str:
        return str(self.body.get("error_description", "")) or str(self.body.get("errorSummary", ""))


class TokenSource:
    """Fetches and caches the provider's access token (DPoP-bound when ``dpop`` says so)."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        org_url: str,
        client_id: str,
        key: SigningKey,
        clock: Clock,
        scope: str = RISK_EVENTS_SCOPE,
        timeout_s: float = 30.0,
        observer: TokenObserver | None = None,
        dpop: DPoP | None = None,
    ) -> None:
        self.token_url = f"{org_url}/oauth2/v1/token"
        self.client_id = client_id
        #: The provider's DPoP state (None: never DPoP, as with ``dpop = "never"``).
        self.dpop = dpop
        self._session = session
        self._key = key
        self._clock = clock
        self._scope = scope
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._observer = observer
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()
        self._log = structlog.get_logger("forwarder.okta.tokens")

    @property
    def expires_at(self) -> float | None:
        """Expiry of the cached token (epoch seconds), if one is cached."""
        return self._token.expires_at if self._token else None

    def _fresh(self) -> AccessToken | None:
        token = self._token
        if token is None:
            return None
        return token if self._clock.time() < token.expires_at else None

    async def get(self) -> str:
        """A valid access token, fetching one when none is cached or it is about to expire."""
        return (await self.token()).value

    async def token(self) -> AccessToken:
        """Like :meth:`get`, with the token type (``DPoP`` tokens need a proof per call)."""
        token = self._fresh()
        if token is not None:
            return token
        async with self._lock:  # one refresh in flight; the others reuse its result
            token = self._fresh()
            if token is None:
                token = await self._fetch()
                self._token = token
            return token

    def invalidate(self, value: str) -> None:
        """Drop the cached token if it is ``value`` (Okta answered 401 to it)."""
        if self._token is not None and self._token.value == value:
            self._token = None

    def client_assertion(self) -> str:
        """A freshly signed client assertion (single use: new ``jti`` each time)."""
        now = int(self._clock.time())
        signed = private_key_jwt_sign(
            self._key.key,
            self.client_id,
            self.token_url,
            alg=self._key.alg,
            header={"kid": self._key.kid},
            issued_at=now,
            expires_at=now + ASSERTION_LIFETIME_S,
            claims={"jti": uuid.uuid4().hex},
        )
        return signed.decode() if isinstance(signed, bytes) else str(signed)

    def _notify(self, outcome: str, expires_at: float | None = None) -> None:
        if self._observer is not None:
            self._observer(outcome, expires_at)

    async def _post(self, *, with_dpop: bool) -> _Answer:
        form = {
            "grant_type": "client_credentials",
            "scope": self._scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
        headers = {"Accept": "application/json"}
        if with_dpop and self.dpop is not None:
            headers["DPoP"] = self.dpop.proof(method="POST", url=self.token_url, server="token")
        try:
            reply = await exchange(
                self._session,
                "POST",
                self.token_url,
                data=form,
                headers=headers,
                client_timeout=self._timeout,
            )
        except TimeoutError:
            self._notify("timeout")
            raise AuthError(f"token request to {self.token_url} timed out") from None
        except aiohttp.ClientError as exc:
            self._notify("error")
            raise AuthError(f"token request to {self.token_url} failed: {exc}") from None
        body: object
        try:
            body = json.loads(reply.text) if reply.text else {}
        except ValueError:
            body = {}
        return _Answer(reply.status, reply.headers, body if isinstance(body, dict) else {})

    async def _fetch(self) -> AccessToken:
        dpop = self.dpop
        nonce_retried = switched = False
        while True:
            with_dpop = dpop is not None and dpop.active
            answer = await self._post(with_dpop=with_dpop)
            new_nonce = dpop is not None and dpop.remember_nonce("token", answer.headers)
            if answer.status != 400 or dpop is None:
                break
            if with_dpop and answer.error == "use_dpop_nonce" and new_nonce and not nonce_retried:
                # RFC 9449 §8 / risk-api.md §9: retry once with the nonce just given.
                nonce_retried = True
                continue
            if (
                not with_dpop
                and not switched
                and answer.error in _DPOP_ERRORS
                and dpop.mode == "auto"
                and dpop.enable()
            ):
                # dpop = "auto": the app requires DPoP; use it from now on.
                switched = True
                self._log.info("dpop_required_by_app", client_id=self.client_id)
                continue
            break
        return self._accept(answer, with_dpop=with_dpop)

    def _accept(self, answer: _Answer, *, with_dpop: bool) -> AccessToken:
        status, body = answer.status, answer.body
        if status == 200:
            access = body.get("access_token")
            expires_in = body.get("expires_in")
            if not isinstance(access, str) or not isinstance(expires_in, int | float):
                self._notify("error")
                raise AuthError(f"token response from {self.token_url} lacks access_token")
            token_type = self._check_token_type(str(body.get("token_type", "Bearer")), with_dpop)
            lifetime = float(expires_in)
            # Renew a little early: 10 % of the lifetime, at most a minute.
            expires_at = self._clock.time() + lifetime - min(60.0, lifetime * 0.1)
            self._notify("success", expires_at)
            return AccessToken(access, expires_at, token_type)
        error, description = answer.error, answer.description
        if status == 429 or status >= 500:
            self._notify("error")
            raise AuthError(f"token endpoint answered {status}; will retry")
        if status == 404:
            self._notify("invalid_credentials")
            raise InvalidCredentials(
                f"{self.token_url} does not exist (404)",
                error="not_found",
                hint="org_url must be the Okta org URL, e.g. https://acme.okta.com",
            )
        self._notify("invalid_credentials")
        if with_dpop and error == "invalid_dpop_proof":
            hint = dpop_error_hint(description, where=self.token_url)
        elif with_dpop and error == "use_dpop_nonce":
            hint = (
                "the token endpoint keeps asking for a new DPoP nonce: a proxy may be "
                "stripping the DPoP-Nonce header"
            )
        else:
            hint = token_error_hint(error, description, client_id=self.client_id, kid=self._key.kid)
        raise InvalidCredentials(
            f"token request refused ({status} {error or 'error'}: {description})",
            error=error or str(status),
            hint=hint,
        )

    def _check_token_type(self, token_type: str, with_dpop: bool) -> str:
        kind = token_type.lower()
        if with_dpop and kind == "dpop":
            return "DPoP"
        if not with_dpop and kind == "bearer":
            return "Bearer"
        if with_dpop and kind == "bearer" and self.dpop is not None and self.dpop.mode == "auto":
            # The app stopped requiring DPoP: plain Bearer from now on.
            self.dpop.active = False
            return "Bearer"
        self._notify("invalid_credentials")
        if with_dpop:
            raise InvalidCredentials(
                f"the token endpoint answered a DPoP request with a {token_type} token: the "
                "token is not DPoP-bound",
                error="not_dpop_bound",
                hint=(
                    'dpop = "always" needs an app that binds tokens to DPoP: tick "Require '
                    'DPoP" on the service app, or set dpop = "auto"'
                ),
            )
        raise InvalidCredentials(
            f"token endpoint issued a {token_type} token",
            error="unsupported_token_type",
            hint=(
                'the service app binds tokens to DPoP: set dpop = "auto" (the default) or '
                '"always" for this provider'
            ),
        )
