"""The org authorization server: ``POST /oauth2/v1/token`` for client credentials.

Checks run in Okta's order (risk-api.md §8): grant type, client credentials present,
client assertion (:mod:`forwarder.sandbox.assertion`), app type, then scopes. Access
tokens are random opaque strings that expire after ``lifetime_s`` of clock time.
"""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from forwarder.sandbox.assertion import JtiCache, claimed_subject, verify_client_assertion
from forwarder.sandbox.clients import RegisteredClient
from forwarder.sandbox.dpop import DPoPError, DPoPVerifier
from forwarder.sandbox.errors import OAuthError
from forwarder.sandbox.resources import KNOWN_SCOPES

__all__ = ["JWT_BEARER", "AuthorizationServer", "IssuedToken", "claimed_client", "parse_token_form"]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_FORM = "application/x-www-form-urlencoded"
_MAX_FORM_FIELDS = 50


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """An access token's grant: who, which scopes, until when (clock seconds)."""

    client_id: str
    scopes: frozenset[str]
    expires_at: float
    #: ``cnf.jkt``: the thumbprint of the DPoP key the token is bound to (None: Bearer).
    jkt: str | None = None


def claimed_client(params: Mapping[str, Sequence[str]]) -> str | None:
    """The client a token request claims to be (unverified ``sub``, else ``client_id``)."""
    for assertion in params.get("client_assertion", ())[:1]:
        sub = claimed_subject(assertion)
        if sub is not None:
            return sub
    claimed = params.get("client_id", ())
    return claimed[0][:100] if claimed else None


def parse_token_form(content_type: str, body: bytes | None) -> dict[str, list[str]]:
    """The token request's parameters; 400 ``invalid_request`` when they cannot be read.

    ``body`` None means it exceeded the server's size limit.
    """
    if body is None:
        raise OAuthError(400, "invalid_request", "The request body is too large.")
    # The token endpoint takes form-encoded parameters only (spec requestBody of /token).
    if content_type != _FORM:
        raise OAuthError(400, "invalid_request", f"The token request must be sent as {_FORM}.")
    try:
        return urllib.parse.parse_qs(
            body.decode("utf-8"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except ValueError:
        raise OAuthError(400, "invalid_request", "The request body is not a valid form.") from None


def _single(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name, ())
    if len(values) > 1:
        # RFC 6749 §3.2: request parameters must not be included more than once.
        raise OAuthError(400, "invalid_request", f"The {name} parameter is repeated.")
    return values[0] if values else None


class AuthorizationServer:
    """Issues, looks up and revokes access tokens."""

    def __init__(self, *, lifetime_s: int) -> None:
        self.lifetime_s = lifetime_s
        self._tokens: dict[str, IssuedToken] = {}
        self._jtis = JtiCache()
        #: DPoP proofs and the nonce, for apps with ``dpop_bound_access_tokens``.
        self.dpop = DPoPVerifier()
        #: Every access token ever issued, in order (for tests that hunt leaked secrets).
        self.issued: list[str] = []

    def lookup(self, access_token: str, now: float) -> IssuedToken | None:
        """The live grant of ``access_token``; None when unknown, expired or revoked."""
        token = self._tokens.get(access_token)
        if token is None or token.expires_at <= now:
            return None
        return token

    def revoke(self, client_id: str | None = None) -> None:
        """Forget the tokens of ``client_id`` (or all tokens)."""
        self._tokens = {
            value: token
            for value, token in self._tokens.items()
            if client_id is not None and token.client_id != client_id
        }

    def active(self, now: float) -> int:
        """How many tokens are live at ``now``."""
        return sum(1 for t in self._tokens.values() if t.expires_at > now)

    def issue(
        self,
        params: Mapping[str, Sequence[str]],
        *,
        clients: Mapping[str, RegisteredClient],
        granted: Mapping[str, Mapping[str, object]],
        token_url: str,
        other_credentials: bool,
        now: float,
        dpop_proofs: Sequence[str] = (),
    ) -> tuple[str, dict[str, Any]]:
        """``(client_id, token response)`` or :class:`OAuthError` with Okta's status.

        ``granted`` maps client_id to the scopes granted to it; ``other_credentials`` says the
        request also carried an ``Authorization`` header.
        """
        if _single(params, "grant_type") != "client_credentials":
            raise OAuthError(
                400, "unsupported_grant_type", "The grant type in the request isn't supported."
            )
        assertion_type = _single(params, "client_assertion_type")
        assertion = _single(params, "client_assertion")
        if (assertion_type or assertion) and (
            other_credentials or _single(params, "client_secret")
        ):
            raise OAuthError(
                400,
                "invalid_request",
                "Can't supply multiple client credentials. Use one of the following: credentials "
                "in the Authorization header, credentials in the post body, or a "
                "`client_assertion` in the post body.",
            )
        if assertion_type is None and assertion is None:
            raise OAuthError(401, "invalid_client", "No client credentials found")
        if assertion_type != JWT_BEARER:
            raise OAuthError(
                400, "invalid_request", f"The client_assertion_type must be {JWT_BEARER}."
            )
        if not assertion:
            raise OAuthError(400, "invalid_request", "The client_assertion parameter is required.")
        client = verify_client_assertion(
            assertion, clients=clients, token_url=token_url, now=now, jtis=self._jtis
        ).client
        claimed = _single(params, "client_id")
        if claimed is not None and claimed != client.client_id:
            raise OAuthError(
                401,
                "invalid_client",
                "The client_id parameter does not match the client_assertion.",
            )
        if not client.is_private_key_jwt_service():
            raise OAuthError(
                401,
                "invalid_client",
                "Client credentials with private_key_jwt are only allowed for service apps.",
            )
        jkt = self._check_dpop(client, list(dpop_proofs), token_url, now)
        scopes = self._check_scopes(_single(params, "scope"), granted.get(client.client_id, {}))
        # Expired tokens are forgotten here so the table stays small.
        self._tokens = {v: t for v, t in self._tokens.items() if t.expires_at > now}
        access_token = secrets.token_urlsafe(48)
        self.issued.append(access_token)
        self._tokens[access_token] = IssuedToken(
            client.client_id, frozenset(scopes), now + self.lifetime_s, jkt
        )
        return client.client_id, {
            "token_type": "Bearer" if jkt is None else "DPoP",
            "expires_in": self.lifetime_s,
            "access_token": access_token,
            "scope": " ".join(scopes),
        }

    def _check_dpop(
        self, client: RegisteredClient, proofs: list[str], token_url: str, now: float
    ) -> str | None:
        """The thumbprint to bind the token to; None for an app without DPoP.

        An app that does not require DPoP ignores a proof and issues a Bearer token
        (RFC 9449 §5: a server that does not bind tokens ignores the header).
        """
        if client.metadata.get("dpop_bound_access_tokens") is not True:
            return None
        try:
            verified = self.dpop.verify(
                proofs, method="POST", url=token_url, now=now, nonce_required=True
            )
        except DPoPError as exc:
            headers = {"DPoP-Nonce": exc.nonce} if exc.nonce else {}
            raise OAuthError(400, exc.error, exc.description, headers=headers) from None
        return verified.jkt

    @staticmethod
    def _check_scopes(scope: str | None, granted: Mapping[str, object]) -> list[str]:
        requested = list(dict.fromkeys((scope or "").split()))
        if not requested:
            raise OAuthError(400, "invalid_scope", "No scopes were requested.")
        unknown = [s[:100] for s in requested if s not in KNOWN_SCOPES]
        if unknown:
            raise OAuthError(
                400,
                "invalid_scope",
                "The following scopes are not allowed for this request: "
                f"[{', '.join(unknown[:20])}]",
            )
        # Only scopes granted with POST /api/v1/apps/{id}/grants may be requested; the
        # sandbox refuses the whole request when any scope is missing.
        if any(s not in granted for s in requested):
            raise OAuthError(
                400, "consent_required", "You are not allowed any of the requested scopes."
            )
        return requested
