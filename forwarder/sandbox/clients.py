"""Service apps registered with ``POST /oauth2/v1/clients`` and their public keys.

The sandbox registers what a risk provider needs and nothing else (risk-api.md §7.1): a
``service`` app using the ``client_credentials`` grant and ``private_key_jwt`` with an
inline ``jwks``. Every other shape is refused with Okta's ``invalid_client_metadata``
error so a provisioning mistake shows up here rather than against a real org.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from joserfc.jwk import ECKey, RSAKey

from forwarder.sandbox.errors import OAuthError

__all__ = [
    "ASSERTION_ALGORITHMS",
    "MAX_KEYS",
    "RegisteredClient",
    "parse_client_metadata",
    "parse_public_jwks",
]

#: Client-assertion algorithms Okta accepts for ``private_key_jwt`` (risk-api.md §8).
ASSERTION_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
#: The Admin Console allows up to 50 signing keys per app (risk-api.md §7.1).
MAX_KEYS = 50

_EC_ALG_BY_CURVE = MappingProxyType({"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"})
_RSA_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
_MIN_RSA_BITS = 2048
# Grant types Okta allows on a service app (createClient description table).
_SERVICE_GRANT_TYPES = frozenset(
    {
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:saml2-bearer",
        "urn:okta:params:oauth:grant-type:otp",
        "urn:okta:params:oauth:grant-type:oob",
        "http://auth0.com/oauth/grant-type/mfa-otp",
        "http://auth0.com/oauth/grant-type/mfa-oob",
    }
)

JoseKey = RSAKey | ECKey


@dataclass(slots=True)
class RegisteredClient:
    """A registered service app: its metadata as returned by Okta and its verification keys."""

    client_id: str
    metadata: dict[str, Any]
    keys: dict[str, JoseKey] = field(repr=False)

    @property
    def name(self) -> str:
        """``client_name``."""
        return str(self.metadata.get("client_name", ""))

    def is_private_key_jwt_service(self) -> bool:
        """A service app allowed client credentials with ``private_key_jwt`` (risk-api.md §7.1)."""
        meta = self.metadata
        return (
            meta.get("application_type") == "service"
            and meta.get("token_endpoint_auth_method") == "private_key_jwt"
            and "client_credentials" in meta.get("grant_types", ())
        )


def _metadata_error(description: str) -> OAuthError:
    return OAuthError(400, "invalid_client_metadata", description)


def _import_key(jwk: dict[str, Any], where: str) -> JoseKey:
    kty = jwk.get("kty")
    try:
        # A SecurityWarning (e.g. a short RSA modulus) means the key is unfit: refuse it.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            key: JoseKey = RSAKey.import_key(jwk) if kty == "RSA" else ECKey.import_key(jwk)
    except Exception as exc:
        raise ValueError(f"{where}: not a usable {kty} public key ({exc})") from None
    return key


def _check_jwk(jwk: Any, where: str, seen_kids: set[str]) -> tuple[str, JoseKey]:
    if not isinstance(jwk, dict):
        raise ValueError(f"{where}: must be a JSON Web Key object")
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC"):
        raise ValueError(f"{where}.kty: must be RSA or EC (Okta signing keys)")
    private = [m for m in (_RSA_PRIVATE_MEMBERS if kty == "RSA" else ("d",)) if m in jwk]
    if private:
        # Registering the private half is a real mistake: the key is compromised.
        raise ValueError(
            f"{where}: contains private key material ({', '.join(private)}); register only "
            "the public key and keep the private key secret"
        )
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError(f"{where}.kid: is required (a non-empty string)")
    if kid in seen_kids:
        # Service-app guide: every key in the JWKS must have a unique kid.
        raise ValueError(f"{where}.kid: {kid!r} is used by another key; each kid must be unique")
    use = jwk.get("use")
    if use not in (None, "sig"):
        raise ValueError(f"{where}.use: must be sig")
    alg = jwk.get("alg")
    if alg is not None and (
        alg not in ASSERTION_ALGORITHMS or not str(alg).startswith("RS" if kty == "RSA" else "ES")
    ):
        raise ValueError(f"{where}.alg: {alg!r} cannot be used with a {kty} key")
    if kty == "EC":
        curve = jwk.get("crv")
        curve_alg = _EC_ALG_BY_CURVE.get(curve) if isinstance(curve, str) else None
        if curve_alg is None:
            raise ValueError(f"{where}.crv: must be P-256, P-384 or P-521")
        if alg is not None and alg != curve_alg:
            raise ValueError(f"{where}.alg: a {curve} key signs {curve_alg}")
    key = _import_key(jwk, where)
    if isinstance(key, RSAKey) and key.public_key.key_size < _MIN_RSA_BITS:
        raise ValueError(f"{where}: RSA keys must have at least {_MIN_RSA_BITS} bits")
    return kid, key


def parse_public_jwks(jwks: Any) -> dict[str, JoseKey]:
    """The verification keys of a ``jwks`` object, by ``kid``; ``ValueError`` says what is wrong."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError('jwks: must be an object {"keys": [...]}')
    keys_in = jwks["keys"]
    if not keys_in:
        raise ValueError("jwks.keys: at least one public key is required for private_key_jwt")
    if len(keys_in) > MAX_KEYS:
        raise ValueError(f"jwks.keys: at most {MAX_KEYS} keys are allowed")
    keys: dict[str, JoseKey] = {}
    for i, jwk in enumerate(keys_in):
        kid, key = _check_jwk(jwk, f"jwks.keys[{i}]", set(keys))
        keys[kid] = key
    return keys


def _require_field(body: dict[str, Any], name: str) -> Any:
    value = body.get(name)
    if value in (None, "", []):
        raise _metadata_error(f"{name}: The field can't be left blank.")
    return value


def parse_client_metadata(body: Any) -> tuple[dict[str, Any], dict[str, JoseKey]]:
    """Validate a ``createClient`` body; return the metadata to store and the keys.

    Raises :class:`OAuthError` ``invalid_client_metadata`` (400) naming the field.
    """
    if not isinstance(body, dict):
        raise _metadata_error("The request body must be a JSON object (Client).")
    name = _require_field(body, "client_name")
    if not isinstance(name, str) or not name.strip():
        raise _metadata_error("client_name: The field can't be left blank.")
    # Okta defaults application_type to web and token_endpoint_auth_method to
    # client_secret_basic; a risk provider needs a service app with private_key_jwt.
    if body.get("application_type") != "service":
        raise _metadata_error(
            "application_type: must be service (the only app type that can get Okta-scoped "
            "tokens with client credentials)."
        )
    grant_types = body.get("grant_types")
    if (
        not isinstance(grant_types, list)
        or not all(isinstance(g, str) for g in grant_types)
        or "client_credentials" not in grant_types
    ):
        raise _metadata_error("grant_types: must include client_credentials for a service app.")
    unknown = [g for g in grant_types if g not in _SERVICE_GRANT_TYPES]
    if unknown:
        raise _metadata_error(f"grant_types: not valid for a service app: {', '.join(unknown)}.")
    response_types = body.get("response_types")
    if response_types not in (None, [], ["token"]):
        raise _metadata_error("response_types: a service app may only use [token].")
    if body.get("token_endpoint_auth_method") != "private_key_jwt":
        raise _metadata_error(
            "token_endpoint_auth_method: must be private_key_jwt (the only client "
            "authentication a service app can use for Okta scopes)."
        )
    if "jwks_uri" in body and "jwks" not in body:
        raise _metadata_error(
            "jwks_uri: not supported by the sandbox; send the keys inline as jwks."
        )
    if not isinstance(body.get("dpop_bound_access_tokens", False), bool):
        raise _metadata_error("dpop_bound_access_tokens: must be true or false.")
    try:
        keys = parse_public_jwks(body.get("jwks"))
    except ValueError as exc:
        raise _metadata_error(str(exc)) from None
    return dict(body), keys
