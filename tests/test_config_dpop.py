"""Configuration of DPoP per provider: the mode and the separate proof key."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwarder.config import load_settings
from forwarder.errors import ConfigError
from forwarder.okta.keys import generate_signing_key, write_private_key

PROVIDER = (
    '[[providers]]\nname = "acme"\norg_url = "https://acme.okta.com"\nclient_id = "0oa1"\n'
    'private_key_file = "k.json"\n'
)


def _config(tmp_path: Path, extra: str) -> Path:
    write_private_key(tmp_path / "k.json", generate_signing_key("RS256"), force=True)
    path = tmp_path / "forwarder.toml"
    path.write_text(PROVIDER + extra)
    return path


def test_dpop_defaults_to_auto_without_a_key_file(tmp_path: Path) -> None:
    """No dpop keys: auto, and a proof key made when first needed."""
    settings, _ = load_settings(_config(tmp_path, ""))
    assert settings.providers[0].dpop == "auto"
    assert settings.providers[0].dpop_key_file == ""


def test_an_unknown_dpop_mode_names_the_choices(tmp_path: Path) -> None:
    """dpop = "yes": refused, naming auto, always and never."""
    with pytest.raises(ConfigError) as err:
        load_settings(_config(tmp_path, 'dpop = "yes"\n'))
    [problem] = err.value.problems
    assert problem.startswith("providers[acme].dpop:")
    assert "'auto', 'always' or 'never'" in problem


def test_a_dpop_key_file_is_loaded_and_checked(tmp_path: Path) -> None:
    """A readable EC key is accepted; a missing file is named."""
    write_private_key(tmp_path / "dpop.json", generate_signing_key("ES256"))
    settings, _ = load_settings(_config(tmp_path, 'dpop = "always"\ndpop_key_file = "dpop.json"\n'))
    assert settings.providers[0].dpop == "always"
    with pytest.raises(ConfigError) as err:
        load_settings(_config(tmp_path, 'dpop_key_file = "missing.json"\n'))
    [problem] = err.value.problems
    assert problem.startswith("providers[acme].dpop_key_file:")
    assert "does not exist" in problem


def test_the_assertion_key_cannot_be_the_dpop_key(tmp_path: Path) -> None:
    """RFC 9449 / Okta: the DPoP key is separate from the client-assertion key."""
    with pytest.raises(ConfigError) as err:
        load_settings(_config(tmp_path, 'dpop_key_file = "k.json"\n'))
    assert err.value.problems == [
        "providers[acme].dpop_key_file: is the client-assertion key; DPoP needs a separate key"
    ]
