"""DPoP proofs (RFC 9449) as the org checks them, for apps that require DPoP.

Rules from risk-api.md §9 (Okta's DPoP guide and ``invalid_dpop_proof`` catalogue): one
``DPoP`` header; header ``typ: dpop+jwt``, an asymmetric ``alg``, a public ``jwk`` that
verifies the signature; ``htm``/``htu`` naming the request; ``iat`` at most 5 minutes old
and not in the future; a ``jti`` never seen before; the server's current ``nonce``
where one is required (always at the token endpoint; at the resource server only when a
test switches it on, since Okta says it is "not currently required" there); and on
resource calls ``ath`` = base64url(SHA-256(access token)).

Okta rotates its nonce every 24 h and accepts an old one for 3 days; :meth:`rotate`
(a test fault) makes the old nonce invalid at once, the harshest case a client can meet.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from forwarder.sandbox.assertion import JtiCache
from forwarder.sandbox.jws import unverified_jws
from forwarder.sandbox.records import Answer

__all__ = [
    "MAX_PROOF_AGE_S",
    "PROOF_ALGORITHMS",
    "DPoPError",
    "DPoPVerifier",
    "VerifiedProof",
    "ath_of",
    "challenge",
]

#: Okta rejects a proof issued more than 5 minutes before the request.
MAX_PROOF_AGE_S = 300
_SEEN_JTIS = 100_000
#: Asymmetric algorithms only: never ``none`` or HS*.
PROOF_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


class DPoPError(Exception):
    """A refused proof: ``error`` is ``invalid_dpop_proof`` or ``use_dpop_nonce``."""

    def __init__(self, error: str, description: str, *, nonce: str | None = None) -> None:
        self.error = error
        self.description = description
        #: The nonce to announce in ``DPoP-Nonce`` (with ``use_dpop_nonce``).
        self.nonce = nonce
        super().__init__(f"{error}: {description}")


def _invalid(description: str) -> DPoPError:
    return DPoPError("invalid_dpop_proof", description)


def ath_of(access_token: str) -> str:
    """base64url(SHA-256(access token)), unpadded."""
    digest = hashlib.sha256(access_token.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _public_key(jwk: Any) -> RSAKey | ECKey:
    if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC"):
        raise _invalid("The DPoP proof JWT header must carry a public RSA or EC 'jwk'.")
    if any(m in jwk for m in ("d", "p", "q", "dp", "dq", "qi")):
        raise _invalid("The DPoP proof 'jwk' must not contain private key material.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return RSAKey.import_key(jwk) if jwk["kty"] == "RSA" else ECKey.import_key(jwk)
    except Exception:
        raise _invalid("The DPoP proof 'jwk' is not a usable public key.") from None


def _same_url(claimed: Any, actual: str) -> bool:
    """``htu`` matches the request URL without query and fragment (RFC 9449 §4.3)."""
    if not isinstance(claimed, str):
        return False
    a, b = urlsplit(claimed), urlsplit(actual)
    return (a.scheme.lower(), a.netloc.lower(), a.path) == (
        b.scheme.lower(),
        b.netloc.lower(),
        b.path,
    )


@dataclass(frozen=True, slots=True)
class VerifiedProof:
    """A proof that passed: the thumbprint of its key (what ``cnf.jkt`` binds)."""

    jkt: str
    jti: str


class DPoPVerifier:
    """The org's DPoP state: its current nonce and every proof ``jti`` it has accepted."""

    def __init__(self) -> None:
        self.nonce = secrets.token_urlsafe(24)
        #: Whether the events endpoint demands the nonce too (a test switch).
        self.resource_nonce = False
        self._jtis = JtiCache()
        #: The proof ``jti`` values presented, in order (tests check none repeats); the
        #: most recent ones only, so a long-running sandbox stays small.
        self.seen_jtis: deque[str] = deque(maxlen=_SEEN_JTIS)

    def rotate(self) -> str:
        """A new nonce; the old one stops working at once."""
        self.nonce = secrets.token_urlsafe(24)
        return self.nonce

    def resource_refusal(
        self,
        scheme: str,
        token_jkt: str | None,
        access_token: str,
        proofs: list[str],
        *,
        url: str,
        now: float,
    ) -> Answer | None:
        """The 401 for a DPoP mistake on a resource call (risk-api.md §9), or None.

        ``scheme`` is the ``Authorization`` scheme (lower case) of a live token whose
        binding is ``token_jkt`` (None: a Bearer token).
        """
        if token_jkt is None:
            if scheme == "dpop":
                description = "The presented access_token is not DPoP bound."
                return Answer(401, None, challenge("invalid_token", description))
            return None
        if scheme != "dpop":
            description = "The resource request requires a DPoP proof."
            return Answer(401, None, challenge("invalid_request", description))
        try:
            verified = self.verify(
                proofs,
                method="POST",
                url=url,
                now=now,
                nonce_required=self.resource_nonce,
                access_token=access_token,
            )
        except DPoPError as exc:
            return Answer(401, None, challenge(exc.error, exc.description, exc.nonce))
        if verified.jkt != token_jkt:
            description = "The DPoP proof key does not match the access token's binding (cnf.jkt)."
            return Answer(401, None, challenge("invalid_dpop_proof", description))
        return None

    def verify(
        self,
        proofs: list[str],
        *,
        method: str,
        url: str,
        now: float,
        nonce_required: bool,
        access_token: str | None = None,
    ) -> VerifiedProof:
        """Check one request's ``DPoP`` header(s); :class:`DPoPError` says what is wrong."""
        if not proofs:
            raise _invalid("The DPoP proof JWT header is missing.")
        if len(proofs) > 1:
            raise _invalid("Multiple DPoP proof JWT headers were sent.")
        proof = proofs[0]
        decoded = unverified_jws(proof)
        if decoded is None:
            raise _invalid("The DPoP proof is not a well-formed signed JWT.")
        header, claims = decoded
        jti = claims.get("jti")
        if isinstance(jti, str):
            self.seen_jtis.append(jti)
        if header.get("typ") != "dpop+jwt":
            raise _invalid("The DPoP proof JWT has an invalid 'typ' header; expected dpop+jwt.")
        alg = header.get("alg")
        if alg not in PROOF_ALGORITHMS:
            raise _invalid("The DPoP proof JWT 'alg' must be an asymmetric algorithm.")
        key = _public_key(header.get("jwk"))
        try:
            jwt.decode(proof, key, algorithms=[str(alg)])
        except Exception:
            raise _invalid("The DPoP proof JWT signature does not verify with its 'jwk'.") from None
        if claims.get("htm") != method:
            raise _invalid(f"The DPoP proof 'htm' claim must be {method}.")
        if not _same_url(claims.get("htu"), url):
            raise _invalid(f"The DPoP proof 'htu' claim does not match the request URL {url}.")
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise _invalid("The DPoP proof 'iat' claim must be a number.")
        if iat > now:
            raise _invalid("The DPoP proof was issued in the future ('iat').")
        if iat < now - MAX_PROOF_AGE_S:
            raise _invalid("The DPoP proof was issued more than 5 minutes ago ('iat').")
        if not isinstance(jti, str) or not jti:
            raise _invalid("The DPoP proof 'jti' claim must be a non-empty string.")
        if access_token is not None and claims.get("ath") != ath_of(access_token):
            raise _invalid("The DPoP proof 'ath' claim does not match the access token.")
        if nonce_required and claims.get("nonce") != self.nonce:
            description = (
                "Authorization server requires nonce in DPoP proof."
                if access_token is None
                else "Resource server requires nonce in DPoP proof."
            )
            raise DPoPError("use_dpop_nonce", description, nonce=self.nonce)
        # Proofs are single use; one older than MAX_PROOF_AGE_S is refused anyway.
        if not self._jtis.use("dpop", jti, exp=float(iat) + MAX_PROOF_AGE_S, now=now):
            raise _invalid("The DPoP proof has already been used ('jti').")
        return VerifiedProof(jkt=key.thumbprint(), jti=jti)


def challenge(error: str, description: str, nonce: str | None = None) -> dict[str, str]:
    """The headers of a resource server's DPoP refusal (RFC 9449 §7.1, §9)."""
    headers = {
        "WWW-Authenticate": (
            f'DPoP algs="{" ".join(PROOF_ALGORITHMS)}", error="{error}", '
            f'error_description="{description}"'
        )
    }
    if nonce is not None:
        headers["DPoP-Nonce"] = nonce
    return headers
