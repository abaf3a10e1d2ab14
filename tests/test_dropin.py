"""`okta setup --write-to`: forwarder's provider name from Okta's display name, and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwarder.okta.provision import ProvisionError, drop_in_path, provider_slug, write_drop_in


@pytest.mark.parametrize(
    ("display", "slug"),
    [
        ("Risk Provider Example", "risk-provider-example"),
        ("  Société Générale (EU) ", "societe-generale-eu"),
        ("acme", "acme"),
        ("ACME_prod.v2", "acme-prod-v2"),
    ],
)
def test_display_names_become_config_names(display: str, slug: str) -> None:
    """Okta's display name (spaces, accents, punctuation) gives a valid provider name."""
    assert provider_slug(display) == slug


def test_a_name_without_letters_needs_provider_name() -> None:
    """Nothing to slug: the error says to pass --provider-name."""
    with pytest.raises(ProvisionError, match="--provider-name"):
        provider_slug("!!! ???")


def test_drop_in_is_written_whole_and_never_over_another(tmp_path: Path) -> None:
    """The file appears complete; a second write is refused unless forced."""
    drop = tmp_path / "providers.d"
    path = drop_in_path(drop, "acme", force=False)
    write_drop_in(path, '[[providers]]\nname = "acme"\n', force=False)
    assert path.read_text() == '[[providers]]\nname = "acme"\n'
    assert [p.name for p in drop.iterdir()] == ["acme.toml"]  # no temp file left behind
    with pytest.raises(ProvisionError, match="--force"):
        drop_in_path(drop, "acme", force=False)
    with pytest.raises(ProvisionError, match="--force"):
        write_drop_in(path, "[[providers]]\n", force=False)
    write_drop_in(path, '[[providers]]\nname = "acme2"\n', force=True)
    assert 'name = "acme2"' in path.read_text()
