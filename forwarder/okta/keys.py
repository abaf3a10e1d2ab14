"""Signing keys for the client assertion: load (JWK JSON or PEM, RSA or EC) and generate.

Okta accepts RS256/384/512 and ES256/384/512 for ``private_key_jwt`` (risk-api.md §8). The
``kid`` we send is the JWK's own ``kid`` or, when it has none, its RFC 7638 SHA-256
thumbprint, which is what Okta's guide calls "Key ID: SHA-256".

Loading is cheap on purpose: a vendor with 1,000 customer orgs may hold 1,000 key files.
cryptography's RSA key validation (primality checks, about 30 ms a key) is replaced by
checking that the key's parts agree (``n = p * q``, the CRT values, ``e * d = 1``) and
signing and verifying a test message (under 1 ms together), which proves the key signs
what its public half verifies; a :class:`KeyCache` reads each file
once per (path, mtime, size), so a reload re-reads only the files that changed.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc.jwk import ECKey, RSAKey

__all__ = [
    "ALGORITHMS",
    "KeyCache",
    "KeyFileError",
    "SigningKey",
    "generate_signing_key",
    "load_signing_key",
    "parse_signing_key",
    "private_jwk_json",
    "public_jwk",
    "write_private_key",
]

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
_EC_ALG_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_CURVE_BY_ALG = {alg: crv for crv, alg in _EC_ALG_BY_CURVE.items()}

JoseKey = RSAKey | ECKey


class KeyFileError(ValueError):
    """A key file cannot be used; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key ready to sign client assertions. ``repr`` never shows key material."""

    key: JoseKey
    alg: str
    kid: str

    def __repr__(self) -> str:
        return f"SigningKey(alg={self.alg!r}, kid={self.kid!r})"

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK with ``kid``, ``alg`` and ``use: sig``."""
        return public_jwk(self)


def public_jwk(signing_key: SigningKey) -> dict[str, Any]:
    """Public JWK of ``signing_key``, ready to register on an Okta service app."""
    jwk: dict[str, Any] = dict(signing_key.key.as_dict(private=False))
    jwk.update({"kid": signing_key.kid, "alg": signing_key.alg, "use": "sig"})
    return jwk


def _alg_for(key: JoseKey, requested: str | None) -> str:
    if isinstance(key, RSAKey):
        alg = requested or "RS256"
        if not alg.startswith("RS"):
            raise KeyFileError(f"an RSA key cannot sign {alg}; use RS256, RS384 or RS512")
        return alg
    curve = str(key.as_dict(private=False)["crv"])
    expected = _EC_ALG_BY_CURVE.get(curve)
    if expected is None:
        raise KeyFileError(f"EC curve {curve} is not accepted by Okta; use P-256, P-384 or P-521")
    if requested and requested != expected:
        raise KeyFileError(f"an EC {curve} key signs {expected}, not {requested}")
    return expected


def parse_signing_key(data: bytes, *, source: str = "key") -> SigningKey:
    """Parse a private JWK (JSON) or PEM; ``source`` names the file in error messages."""
    text = data.strip()
    if not text:
        raise KeyFileError(f"{source} is empty")
    requested_alg: str | None = None
    kid: str | None = None
    key: JoseKey
    if text.startswith(b"{"):
        try:
            jwk = json.loads(text)
        except ValueError as exc:
            raise KeyFileError(f"{source} is not valid JSON: {exc}") from None
        if not isinstance(jwk, dict):
            raise KeyFileError(f"{source} must hold one JWK object")
        if "keys" in jwk:
            raise KeyFileError(f"{source} holds a JWK set; give the single private JWK instead")
        if "d" not in jwk:
            raise KeyFileError(
                f"{source} is a public JWK; forwarder needs the private key (with 'd')"
            )
        kty = jwk.get("kty")
        requested_alg = jwk.get("alg")
        kid = jwk.get("kid")
        try:
            if kty == "RSA":
                key = RSAKey.import_key(_rsa_from_jwk(jwk, source))
            elif kty == "EC":
                key = ECKey.import_key(jwk)
            else:
                raise KeyFileError(f"{source}: key type {kty!r} is not supported; use RSA or EC")
        except KeyFileError:
            raise
        except Exception as exc:
            raise KeyFileError(f"{source} is not a usable JWK: {exc}") from None
    elif b"-----BEGIN" in text:
        if b"PUBLIC KEY" in text and b"PRIVATE" not in text:
            raise KeyFileError(f"{source} is a public key; forwarder needs the private key")
        try:
            raw = load_pem_private_key(text, password=None, unsafe_skip_rsa_key_validation=True)
        except Exception as exc:
            raise KeyFileError(f"{source} is not a readable unencrypted PEM key: {exc}") from None
        if isinstance(raw, rsa.RSAPrivateKey):
            nums = raw.private_numbers()
            pub = nums.public_numbers
            _check_numbers(
                pub.n, pub.e, nums.p, nums.q, nums.d, nums.dmp1, nums.dmq1, nums.iqmp, source
            )
            _self_test(raw, source)
            key = RSAKey.import_key(raw)
        elif isinstance(raw, ec.EllipticCurvePrivateKey):
            key = ECKey.import_key(raw)
        else:
            raise KeyFileError(f"{source}: only RSA and EC keys are supported")
    else:
        raise KeyFileError(f"{source} is neither a JWK (JSON) nor a PEM key")
    if isinstance(key, RSAKey) and key.as_dict(private=False).get("n") and _rsa_bits(key) < 2048:
        raise KeyFileError(f"{source}: RSA keys must be at least 2048 bits")
    alg = _alg_for(key, requested_alg)
    if alg not in ALGORITHMS:
        raise KeyFileError(f"{source}: algorithm {alg} is not accepted by Okta")
    return SigningKey(key=key, alg=alg, kid=kid or key.thumbprint())


def _b64int(jwk: dict[str, Any], member: str, source: str) -> int:
    value = jwk.get(member)
    if not isinstance(value, str) or not value:
        raise KeyFileError(f"{source}: the RSA JWK lacks {member!r}")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        raise KeyFileError(f"{source}: RSA member {member!r} is not base64url") from None
    return int.from_bytes(raw, "big")


def _rsa_from_jwk(jwk: dict[str, Any], source: str) -> rsa.RSAPrivateKey:
    """The private key of an RSA JWK, checked by :func:`_self_test` instead of primality."""
    n, e = _b64int(jwk, "n", source), _b64int(jwk, "e", source)
    p, q, d = (_b64int(jwk, m, source) for m in ("p", "q", "d"))
    dp, dq, qi = (_b64int(jwk, m, source) for m in ("dp", "dq", "qi"))
    _check_numbers(n, e, p, q, d, dp, dq, qi, source)
    try:
        numbers = rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, rsa.RSAPublicNumbers(e, n))
        raw = numbers.private_key(unsafe_skip_rsa_key_validation=True)
    except ValueError as exc:
        raise KeyFileError(f"{source} is not a usable RSA key: {exc}") from None
    _self_test(raw, source)
    return raw


def _check_numbers(
    n: int, e: int, p: int, q: int, d: int, dp: int, dq: int, qi: int, source: str
) -> None:
    """The RSA parts agree with each other (big-integer arithmetic: microseconds).

    What cryptography's validation adds on top is proving p and q prime, the 30 ms part;
    a key file is the vendor's own, so a damaged file is the risk, not a forged one.
    """
    damaged = f"{source}: the RSA key's parts disagree ({{}}); the key file is damaged"
    if p * q != n:
        raise KeyFileError(damaged.format("p * q is not n"))
    if dp != d % (p - 1) or dq != d % (q - 1) or (qi * q) % p != 1:
        raise KeyFileError(damaged.format("dp, dq or qi do not follow from p, q and d"))
    if (e * dp) % (p - 1) != 1 or (e * dq) % (q - 1) != 1:
        raise KeyFileError(damaged.format("d is not the inverse of e"))


def _self_test(raw: rsa.RSAPrivateKey, source: str) -> None:
    # A key whose parts disagree (a damaged file) signs what its public half rejects;
    # and a faulty CRT signature must never leave the process (it can leak a factor).
    if raw.key_size < 2048:
        raise KeyFileError(f"{source}: RSA keys must be at least 2048 bits")
    message = b"forwarder key self-test"
    try:
        signature = raw.sign(message, padding.PKCS1v15(), hashes.SHA256())
        raw.public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        raise KeyFileError(
            f"{source}: the RSA key fails a sign-and-verify test; the file is damaged "
            "(create a new pair with `forwarder keys generate`)"
        ) from None


def _rsa_bits(key: RSAKey) -> int:
    raw = key.private_key or key.public_key
    return int(raw.key_size)


def _unreadable(path: Path, exc: OSError) -> KeyFileError:
    """The error for a private key file that cannot be read, saying what to do."""
    if isinstance(exc, FileNotFoundError):
        return KeyFileError(f"{path} does not exist (create one with `forwarder keys generate`)")
    return KeyFileError(f"{path} cannot be read: {exc.strerror}")


def load_signing_key(path: Path) -> SigningKey:
    """Read and parse a private key file; errors name the file and the fix."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None
    return parse_signing_key(data, source=str(path))


def generate_signing_key(alg: str = "RS256", bits: int = 2048) -> SigningKey:
    """A fresh private key for ``alg``; ``kid`` is its RFC 7638 SHA-256 thumbprint."""
    if alg not in ALGORITHMS:
        raise KeyFileError(f"unsupported algorithm {alg}; choose one of {', '.join(ALGORITHMS)}")
    key: JoseKey
    if alg.startswith("RS"):
        if bits not in (2048, 3072, 4096):
            raise KeyFileError("RSA key size must be 2048, 3072 or 4096 bits")
        key = RSAKey.generate_key(bits, private=True)
    else:
        key = ECKey.generate_key(_CURVE_BY_ALG[alg], private=True)
    return SigningKey(key=key, alg=alg, kid=key.thumbprint())


def private_jwk_json(signing_key: SigningKey) -> str:
    """The private JWK as JSON (for writing a 0600 key file)."""
    jwk: dict[str, Any] = dict(signing_key.key.as_dict(private=True))
    jwk.update({"kid": signing_key.kid, "alg": signing_key.alg, "use": "sig"})
    return json.dumps(jwk, indent=2) + "\n"


def write_private_key(path: Path, signing_key: SigningKey, *, force: bool = False) -> None:
    """Write the private JWK with mode 0600, refusing to overwrite unless ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; pass --force to overwrite it") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(private_jwk_json(signing_key))
    os.chmod(path, 0o600)


class KeyCache:
    """Signing keys by file, each parsed once per (path, mtime, size, inode); thread-safe.

    The config check, the daemon's start and every reload share one cache, so 1,000
    providers naming one key file parse it once, and a reload parses only changed files.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[Path, tuple[tuple[int, int, int], SigningKey]] = {}
        #: Files parsed so far (a test and the benchmark read it).
        self.loads = 0

    def get(self, path: Path) -> SigningKey:
        """The key in ``path`` (absolute); :class:`KeyFileError` naming the file otherwise."""
        try:
            st = path.stat()
        except OSError as exc:
            raise _unreadable(path, exc) from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            cached = self._keys.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            key = load_signing_key(path)
            self.loads += 1
            self._keys[path] = (stamp, key)
            return key
