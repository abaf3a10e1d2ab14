"""`forwarder keys generate`: a key pair made locally, as a real subprocess."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from joserfc.jwk import ECKey, RSAKey

from forwarder.okta.keys import load_signing_key
from tests.procs import cli

pytestmark = pytest.mark.slow


def test_generate_writes_a_0600_private_key_and_its_public_jwk(tmp_path: Path) -> None:
    """The private JWK is mode 0600, the public JWK beside it, and both are printed where."""
    proc = cli("keys", "generate", "--out", str(tmp_path / "keys"), "--name", "acme")
    assert proc.returncode == 0, proc.stderr
    private = tmp_path / "keys" / "acme.private.jwk.json"
    public = tmp_path / "keys" / "acme.public.jwk.json"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert str(private) in proc.stdout
    assert str(public) in proc.stdout
    printed = json.loads(proc.stdout[: proc.stdout.index("}") + 1])
    assert printed == json.loads(public.read_text())
    assert "d" not in printed


def test_kid_is_the_rfc7638_thumbprint_with_use_and_alg(tmp_path: Path) -> None:
    """`kid` is the SHA-256 thumbprint ("Key ID: SHA-256"); `use: sig` and `alg` are set."""
    proc = cli("keys", "generate", "--out", str(tmp_path), "--alg", "RS384", "--json")
    assert proc.returncode == 0, proc.stderr
    jwk = json.loads(proc.stdout)["public_jwk"]
    assert jwk["use"] == "sig"
    assert jwk["alg"] == "RS384"
    assert jwk["kid"] == RSAKey.import_key(jwk).thumbprint()


def test_ec_algorithms_get_their_curve(tmp_path: Path) -> None:
    """ES384 makes a P-384 key whose private file signs ES384."""
    proc = cli("keys", "generate", "--out", str(tmp_path), "--name", "ec", "--alg", "ES384")
    assert proc.returncode == 0, proc.stderr
    public = json.loads((tmp_path / "ec.public.jwk.json").read_text())
    assert public["crv"] == "P-384"
    assert public["kid"] == ECKey.import_key(public).thumbprint()
    key = load_signing_key(tmp_path / "ec.private.jwk.json")
    assert (key.alg, key.kid) == ("ES384", public["kid"])


def test_an_existing_private_key_is_kept_unless_force(tmp_path: Path) -> None:
    """A second run refuses to overwrite (exit 2, says --force); --force replaces the key."""
    assert cli("keys", "generate", "--out", str(tmp_path)).returncode == 0
    private = tmp_path / "forwarder.private.jwk.json"
    before = private.read_text()
    again = cli("keys", "generate", "--out", str(tmp_path))
    assert again.returncode == 2
    assert "exists; pass --force" in again.stderr
    assert private.read_text() == before
    forced = cli("keys", "generate", "--out", str(tmp_path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert private.read_text() != before
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_bits_apply_to_rsa_only(tmp_path: Path) -> None:
    """--bits with an EC algorithm is a usage error; with RSA it sets the modulus size."""
    bad = cli("keys", "generate", "--out", str(tmp_path), "--alg", "ES256", "--bits", "3072")
    assert bad.returncode == 2
    assert "--bits applies to RSA keys only" in bad.stderr
    good = cli("keys", "generate", "--out", str(tmp_path), "--bits", "3072", "--json")
    assert good.returncode == 0, good.stderr
    jwk = json.loads(good.stdout)["public_jwk"]
    assert RSAKey.import_key(jwk).public_key.key_size == 3072


def test_json_output_carries_no_private_material(tmp_path: Path) -> None:
    """--json names the files and the public JWK; the private exponent is never printed."""
    proc = cli("keys", "generate", "--out", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    private = json.loads(Path(document["private_key_file"]).read_text())
    assert private["d"] not in proc.stdout + proc.stderr
    assert document["kid"] == private["kid"] == document["public_jwk"]["kid"]
