"""DPoP (RFC 9449): proofs of possession for the token request and the events call.

An Okta admin can make a service app "Require Demonstrating Proof of Possession (DPoP)
header in token requests" (risk-api.md §9). The token is then bound to a key of ours
(``cnf.jkt``, the key's RFC 7638 thumbprint) and every request carries a fresh proof:
a JWT with header ``typ: dpop+jwt``, an asymmetric ``alg`` and the public ``jwk``, and
claims ``htm``, ``htu``, ``iat``, a unique ``jti``, the server's ``nonce`` once it asked
for one, and on resource calls ``ath`` = base64url(SHA-256(access token)).

The DPoP key is separate from the client-assertion key. Without ``dpop_key_file`` an EC
P-256 key is made at start: tokens are bound to it and simply renewed after a restart.

:class:`DPoP` is one provider's DPoP state (mode, key, the nonces each server gave):
:class:`~forwarder.okta.tokens.TokenSource` and
:class:`~forwarder.okta.events.RiskEventsSender` use it; nothing outside ``okta/`` does.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Mapping
from typing import Literal

from joserfc import jwt

from forwarder.clock import Clock
from forwarder.okta.keys import SigningKey, generate_signing_key

__all__ = [
    "DPOP_MODES",
    "DPoP",
    "DPoPMode",
    "access_token_hash",
    "dpop_error_hint",
    "resource_challenge",
]

DPoPMode = Literal["auto", "always", "never"]
DPOP_MODES: tuple[DPoPMode, ...] = ("auto", "always", "never")
#: Which server a nonce belongs to: RFC 9449 lets the token endpoint (§8) and the
#: resource server (§9) each ask for their own.
Server = Literal["token", "resource"]

_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def access_token_hash(access_token: str) -> str:
    """``ath``: base64url(SHA-256(ASCII of the access token)), unpadded (RFC 9449 §4.2)."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def resource_challenge(headers: Mapping[str, str]) -> dict[str, str]:
    """The parameters of a ``WWW-Authenticate: DPoP ...`` challenge ({} when there is none)."""
    value = headers.get("WWW-Authenticate", "")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "dpop":
        return {}
    return {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM.finditer(rest)
    }


def dpop_error_hint(description: str, *, where: str) -> str:
    """What to check when a DPoP proof was refused (``where``: the URL it was for)."""
    text = description.lower()
    if "iat" in text or "issued" in text or "future" in text or "expired" in text:
        return (
            "the proof's time (iat) was refused: Okta allows 5 minutes; check this "
            "machine's clock (NTP)"
        )
    if "htu" in text or "url" in text or "uri" in text:
        return (
            f"the proof names {where} (htu) but the server saw another URL: a proxy or "
            "load balancer may be rewriting the URL, or org_url is not the org's own URL"
        )
    if "htm" in text or "method" in text:
        return "the proof's HTTP method (htm) was refused: a proxy may be changing the method"
    if "already" in text or "replay" in text or "jti" in text:
        return "a proof was replayed: another process may be sharing this provider's DPoP key"
    if "signature" in text or "key" in text or "jwk" in text or "bound" in text:
        return (
            "the proof is not signed by the key the token is bound to (wrong key): if "
            "dpop_key_file changed, the next token is bound to the new key"
        )
    return f"Okta refused the DPoP proof for {where}: {description or 'no description'}"


class DPoP:
    """One provider's DPoP: the mode, the key, and the nonce each server asked for.

    ``mode`` ``"always"`` sends proofs from the first token request; ``"never"`` never
    does; ``"auto"`` starts without and switches on (for good) when the token endpoint
    refuses a request for lacking DPoP.
    """

    def __init__(self, *, mode: DPoPMode, clock: Clock, key: SigningKey | None = None) -> None:
        if mode not in DPOP_MODES:
            raise ValueError(f"dpop must be one of {', '.join(DPOP_MODES)}, not {mode!r}")
        self.mode = mode
        self._clock = clock
        self._key = key
        self.active = mode == "always"
        self._nonces: dict[Server, str] = {}

    def __repr__(self) -> str:  # never show key material or nonces
        return f"DPoP(mode={self.mode!r}, active={self.active})"

    @property
    def key(self) -> SigningKey:
        """The proof key (made on first use when no key file was given: EC P-256)."""
        if self._key is None:
            self._key = generate_signing_key("ES256")
        return self._key

    @property
    def thumbprint(self) -> str:
        """RFC 7638 SHA-256 thumbprint of the public key: the token's ``cnf.jkt``."""
        return self.key.key.thumbprint()

    def enable(self) -> bool:
        """Switch DPoP on after the server asked for it; False when the mode forbids it."""
        if self.mode == "never":
            return False
        self.active = True
        return True

    def nonce(self, server: Server) -> str | None:
        """The nonce ``server`` gave last, if any."""
        return self._nonces.get(server)

    def remember_nonce(self, server: Server, headers: Mapping[str, str]) -> bool:
        """Keep the ``DPoP-Nonce`` of an answer; True when it is new (RFC 9449 §8.2)."""
        value = headers.get("DPoP-Nonce")
        if not value or value == self._nonces.get(server):
            return False
        self._nonces[server] = value
        return True

    def proof(
        self, *, method: str, url: str, server: Server, access_token: str | None = None
    ) -> str:
        """A new proof for one request (fresh ``jti``; never reused)."""
        key = self.key
        claims: dict[str, object] = {
            "htm": method,
            "htu": url,
            "iat": int(self._clock.time()),
            "jti": uuid.uuid4().hex,
        }
        nonce = self._nonces.get(server)
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        header = {"typ": "dpop+jwt", "alg": key.alg, "jwk": dict(key.key.as_dict(private=False))}
        return jwt.encode(header, claims, key.key, algorithms=[key.alg])
