"""Key files for provisioning: a fresh pair written locally, and the public JWK to register.

The private key never leaves this machine: only its public half is read for
``POST /oauth2/v1/clients``, from a public JWK, a one-key JWKS, a PEM public key, or the
private key itself (its public half is taken). ``kid`` defaults to the RFC 7638
thumbprint, as :mod:`forwarder.okta.keys` does for the signing key, so the two agree.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from joserfc.jwk import ECKey, RSAKey

from forwarder.okta.keys import (
    ALGORITHMS,
    KeyFileError,
    SigningKey,
    generate_signing_key,
    load_signing_key,
    parse_signing_key,
    write_private_key,
)
from forwarder.okta.provision.errors import ProvisionError

__all__ = ["KeyPair", "load_public_jwk", "reuse_key_pair", "write_key_pair"]

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_EC_ALG_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_PUBLIC_MEMBERS = ("kty", "crv", "x", "y", "n", "e")


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A generated key and the two files holding it. ``repr`` shows no key material."""

    key: SigningKey
    private_file: Path
    public_file: Path

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK, as written to :attr:`public_file`."""
        return self.key.public_jwk()


def write_key_pair(
    out_dir: Path, name: str, *, alg: str = "RS256", bits: int = 2048, force: bool = False
) -> KeyPair:
    """Generate a key; write ``NAME.private.jwk.json`` (0600) and ``NAME.public.jwk.json``.

    Refuses to replace an existing private key unless ``force``: the app registered with
    its public half would stop working.
    """
    if not _FILE_NAME.fullmatch(name):
        raise ProvisionError(
            f"--name {name!r} cannot name a key file: use letters, digits, '.', '_' or '-'"
        )
    private_file = out_dir / f"{name}.private.jwk.json"
    public_file = out_dir / f"{name}.public.jwk.json"
    if private_file.exists() and not force:
        raise ProvisionError(
            f"{private_file} exists; pass --force to replace it (an app registered with "
            "its public key would stop working) or choose another --name or directory"
        )
    try:
        key = generate_signing_key(alg, bits)
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_key(private_file, key, force=force)
        public_file.write_text(json.dumps(key.public_jwk(), indent=2) + "\n")
    except KeyFileError as exc:
        raise ProvisionError(str(exc)) from None
    except OSError as exc:
        raise ProvisionError(f"cannot write the key files in {out_dir}: {exc.strerror}") from None
    return KeyPair(key=key, private_file=private_file, public_file=public_file)


def reuse_key_pair(private_file: Path) -> KeyPair:
    """The vendor's existing private key, for one more org (its public half is registered).

    One key pair can serve every customer org: each org registers the same public JWK on
    its own service app. ``public_file`` is the private file itself (its public half).
    """
    try:
        key = load_signing_key(private_file)
    except KeyFileError as exc:
        raise ProvisionError(f"--key: {exc}") from None
    return KeyPair(key=key, private_file=private_file, public_file=private_file)


def load_public_jwk(path: Path) -> tuple[dict[str, Any], bool]:
    """The public JWK to register, read from a JWK, a one-key JWKS or a PEM public key.

    Given a private key instead, its public half; the boolean says so. ``kid`` defaults
    to the RFC 7638 thumbprint (as for the private key), ``use`` is ``sig``.
    """
    try:
        text = path.read_bytes().strip()
    except FileNotFoundError:
        raise ProvisionError(
            f"{path} does not exist (create a key pair with `forwarder keys generate`)"
        ) from None
    except OSError as exc:
        raise ProvisionError(f"{path} cannot be read: {exc.strerror}") from None
    if text.startswith(b"{"):
        try:
            jwk = json.loads(text)
        except ValueError as exc:
            raise ProvisionError(f"{path} is not valid JSON: {exc}") from None
        keys = jwk.get("keys") if isinstance(jwk, dict) else None
        if isinstance(keys, list):
            if len(keys) != 1:
                raise ProvisionError(
                    f"{path} is a JWK set with {len(keys)} keys; give the one key to register"
                )
            jwk = keys[0]
        if not isinstance(jwk, dict):
            raise ProvisionError(f"{path} must hold one JWK object")
        if "d" in jwk:
            return _public_half(json.dumps(jwk).encode(), path), True
        return _public_from_jwk(jwk, path), False
    if b"-----BEGIN" in text:
        if b"PRIVATE KEY" in text:
            return _public_half(text, path), True
        try:
            raw = load_pem_public_key(text)
        except ValueError as exc:
            raise ProvisionError(f"{path} is not a readable PEM public key: {exc}") from None
        if isinstance(raw, rsa.RSAPublicKey):
            return _finish(RSAKey.import_key(raw), {}, path), False
        if isinstance(raw, ec.EllipticCurvePublicKey):
            return _finish(ECKey.import_key(raw), {}, path), False
        raise ProvisionError(f"{path}: only RSA and EC keys can sign client assertions")
    raise ProvisionError(f"{path} is neither a JWK (JSON) nor a PEM key")


def _public_half(data: bytes, path: Path) -> dict[str, Any]:
    try:
        return parse_signing_key(data, source=str(path)).public_jwk()
    except KeyFileError as exc:
        raise ProvisionError(str(exc)) from None


def _public_from_jwk(jwk: dict[str, Any], path: Path) -> dict[str, Any]:
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC"):
        raise ProvisionError(
            f"{path}: key type {kty!r} cannot sign client assertions; use RSA or EC"
        )
    try:
        # A SecurityWarning (e.g. a short modulus) means the key is unfit: refuse it.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            key: RSAKey | ECKey = RSAKey.import_key(jwk) if kty == "RSA" else ECKey.import_key(jwk)
    except Exception as exc:
        raise ProvisionError(f"{path} is not a usable {kty} public key: {exc}") from None
    return _finish(key, jwk, path)


def _finish(key: RSAKey | ECKey, given: dict[str, Any], path: Path) -> dict[str, Any]:
    members = key.as_dict(private=False)
    jwk: dict[str, Any] = {m: members[m] for m in _PUBLIC_MEMBERS if m in members}
    if isinstance(key, RSAKey):
        if key.public_key.key_size < 2048:
            raise ProvisionError(f"{path}: RSA keys must have at least 2048 bits")
        family, curve_alg = "RS", None
    else:
        curve_alg = _EC_ALG_BY_CURVE.get(str(jwk.get("crv")))
        if curve_alg is None:
            raise ProvisionError(f"{path}: Okta accepts EC keys on P-256, P-384 or P-521 only")
        family = "ES"
    alg = given.get("alg")
    if alg is not None:
        if alg not in ALGORITHMS or not str(alg).startswith(family):
            raise ProvisionError(f"{path}: alg {alg!r} cannot be used with a {jwk['kty']} key")
        if curve_alg is not None and alg != curve_alg:
            raise ProvisionError(f"{path}: a {jwk['crv']} key signs {curve_alg}, not {alg}")
        jwk["alg"] = alg
    if given.get("use", "sig") != "sig":
        raise ProvisionError(f"{path}: use must be sig (a signing key)")
    jwk["use"] = "sig"
    kid = given.get("kid")
    jwk["kid"] = kid if isinstance(kid, str) and kid else key.thumbprint()
    return jwk
