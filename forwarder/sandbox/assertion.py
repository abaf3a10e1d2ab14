"""Client authentication at ``/oauth2/v1/token``: the ``private_key_jwt`` client assertion.

The checks and their order follow risk-api.md §8 (the ``build-self-signed-jwt`` guide, the
``reference/api/oidc`` claim table and ``oauth2-error-codes.json``). Every failure is a
401 ``invalid_client``. Times come from the caller (the org's clock).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jwt

from forwarder.sandbox.clients import ASSERTION_ALGORITHMS, JoseKey, RegisteredClient
from forwarder.sandbox.errors import OAuthError
from forwarder.sandbox.jws import segment_json, unverified_jws

__all__ = [
    "MAX_ASSERTION_LIFETIME_S",
    "JtiCache",
    "VerifiedAssertion",
    "claimed_subject",
    "verify_client_assertion",
]

#: ``exp`` may be at most one hour after the request (risk-api.md §8).
MAX_ASSERTION_LIFETIME_S = 3600


def _invalid_client(description: str) -> OAuthError:
    return OAuthError(401, "invalid_client", description)


class JtiCache:
    """``jti`` values already used, each remembered until its assertion's ``exp`` passes.

    An expired assertion is refused anyway, so forgetting its ``jti`` then is safe and
    keeps the cache bounded by the assertions of the last hour.
    """

    def __init__(self) -> None:
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def _forget_expired(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, entry = heapq.heappop(self._heap)
            self._expiry.pop(entry, None)

    def use(self, client_id: str, jti: str, *, exp: float, now: float) -> bool:
        """Record ``jti`` for ``client_id``; False when it was already used."""
        self._forget_expired(now)
        entry = (client_id, jti)
        if entry in self._expiry:
            return False
        self._expiry[entry] = exp
        heapq.heappush(self._heap, (exp, entry))
        return True


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    """A client assertion that passed every check."""

    client: RegisteredClient
    claims: dict[str, Any]


def claimed_subject(assertion: str) -> str | None:
    """The unverified ``sub`` of an assertion (for records only), or None."""
    parts = assertion.split(".")
    claims = segment_json(parts[1]) if len(parts) == 3 else None
    sub = claims.get("sub") if claims is not None else None
    return sub[:100] if isinstance(sub, str) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _verify_signature(assertion: str, alg: str, candidates: list[JoseKey]) -> bool:
    for key in candidates:
        try:
            jwt.decode(assertion, key, algorithms=[alg])
        except Exception:  # noqa: S112 - any failure with this key: try the next one
            continue
        return True
    return False


def verify_client_assertion(
    assertion: str,
    *,
    clients: Mapping[str, RegisteredClient],
    token_url: str,
    now: float,
    jtis: JtiCache,
) -> VerifiedAssertion:
    """Authenticate the client behind ``assertion`` or raise 401 ``invalid_client``.

    ``token_url`` is ``{origin}/oauth2/v1/token`` as the client addressed it; the ``jti``,
    when present, is consumed only once every other check has passed.
    """
    decoded = unverified_jws(assertion)
    if decoded is None:
        raise _invalid_client("The client_assertion is not a well-formed signed JWT.")
    header, claims = decoded
    sub = claims.get("sub")
    client = clients.get(sub) if isinstance(sub, str) else None
    if client is None:
        raise _invalid_client("Invalid value for 'client_id' parameter.")
    alg = header.get("alg")
    # RS256/384/512 and ES256/384/512 only; HS* is for client_secret_jwt, "none" never.
    if alg not in ASSERTION_ALGORITHMS:
        raise _invalid_client("The client_assertion signature algorithm is invalid")
    if "kid" in header:
        kid = header["kid"]
        if not isinstance(kid, str) or kid not in client.keys:
            raise _invalid_client("client_assertion JWT kid is invalid")
        candidates = [client.keys[kid]]
    else:
        # No kid: Okta tries the client's keys; so does the sandbox.
        candidates = list(client.keys.values())
    if not _verify_signature(assertion, str(alg), candidates):
        raise _invalid_client("The client_assertion signature is invalid.")
    if claims.get("aud") != token_url:
        raise _invalid_client(
            "The audience claim for client_assertion must be the endpoint invoked for the request."
        )
    if claims.get("iss") != client.client_id:
        raise _invalid_client(
            "The client_assertion token's iss and sub claims must both be the client_id."
        )
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise _invalid_client("The client_assertion token must have an integer exp claim.")
    if exp <= now:
        raise _invalid_client("The client_assertion token is expired.")
    if exp > now + MAX_ASSERTION_LIFETIME_S:
        raise _invalid_client(
            "The client_assertion token has an expiration too far into the future."
        )
    if "iat" in claims:
        iat = claims["iat"]
        if not _is_number(iat):
            raise _invalid_client("The client_assertion iat claim must be a number.")
        if iat > now:
            raise _invalid_client("The client_assertion token has an issued at time in the future.")
    if "jti" in claims:
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise _invalid_client("The client_assertion jti claim must be a non-empty string.")
        # A present jti makes the assertion single use (oauth2-error-codes.json).
        if not jtis.use(client.client_id, jti, exp=float(exp), now=now):
            raise _invalid_client("The client_assertion token has already been used.")
    return VerifiedAssertion(client=client, claims=claims)
