"""Configuration: the shipped file, Okta's URL rules, env overrides, every problem named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forwarder.config import load_settings, parse_listen
from forwarder.errors import ConfigError
from forwarder.okta.keys import generate_signing_key, write_private_key

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, provider: str, extra: str = "") -> Path:
    write_private_key(tmp_path / "k.json", generate_signing_key("ES256"), force=True)
    path = tmp_path / "forwarder.toml"
    path.write_text(extra + "\n[[providers]]\n" + provider + '\nprivate_key_file = "k.json"\n')
    return path


GOOD = 'name = "acme"\norg_url = "https://acme.okta.com/"\nclient_id = "0oa123"'


def test_shipped_config_parses_and_names_its_missing_key() -> None:
    """config/forwarder.toml is valid apart from the example key file it points at."""
    settings, _ = load_settings(REPO / "config" / "forwarder.toml", check_files=False)
    assert settings.providers[0].calls_per_minute == 3
    with pytest.raises(ConfigError) as err:
        load_settings(REPO / "config" / "forwarder.toml")
    assert any("acme-prod" in p and "does not exist" in p for p in err.value.problems)


def test_trailing_slash_is_dropped(tmp_path: Path) -> None:
    """org_url loses its trailing /."""
    settings, _ = load_settings(_write(tmp_path, GOOD))
    assert settings.providers[0].org_url == "https://acme.okta.com"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            'org_url = "https://acme-admin.okta.com"',
            "use the org URL instead (https://acme.okta.com)",
        ),
        ('org_url = "http://acme.okta.com"', "must use https://"),
        ('org_url = " https://acme.okta.com"', "org_url has leading or trailing whitespace"),
        ('client_id = "\\"0oa123\\""', "client_id is wrapped in quotes"),
        ('client_id = "0oa123 "', "client_id has leading or trailing whitespace"),
        ("colour = 1", "providers[acme].colour: unknown key"),
    ],
)
def test_okta_troubleshooting_mistakes_are_named(tmp_path: Path, line: str, expected: str) -> None:
    """Admin URL, http, whitespace, quotes and unknown keys give the documented message."""
    key = line.split(" =", maxsplit=1)[0]
    body = "\n".join(x for x in GOOD.splitlines() if not x.startswith(key + " ")) + "\n" + line
    with pytest.raises(ConfigError) as err:
        load_settings(_write(tmp_path, body))
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_http_allowed_for_loopback_sandbox(tmp_path: Path) -> None:
    """Plain http is fine for a loopback sandbox."""
    body = GOOD.replace("https://acme.okta.com/", "http://127.0.0.1:8900")
    settings, _ = load_settings(_write(tmp_path, body))
    assert settings.providers[0].org_url == "http://127.0.0.1:8900"


def test_duplicate_names_and_all_problems_reported(tmp_path: Path) -> None:
    """Every problem is listed at once."""
    path = _write(tmp_path, GOOD, extra='[ingest]\nlisten = "0.0.0.0:8080"\n')
    path.write_text(
        path.read_text() + "\n[[providers]]\n" + GOOD + '\nprivate_key_file = "nope.json"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    text = "\n".join(err.value.problems)
    assert "'acme' is used more than once" in text
    assert "tokens_file is required" in text
    assert "nope.json does not exist" in text


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FORWARDER_<SECTION>__<KEY> beats the file."""
    monkeypatch.setenv("FORWARDER_INGEST__LISTEN", "127.0.0.1:9999")
    monkeypatch.setenv("FORWARDER_STORE__MAX_PENDING", "42")
    settings, _ = load_settings(_write(tmp_path, GOOD))
    assert settings.ingest.listen == "127.0.0.1:9999"
    assert settings.store.max_pending == 42


def test_public_key_file_is_refused(tmp_path: Path) -> None:
    """A public JWK in private_key_file is named as the wrong half."""
    path = _write(tmp_path, GOOD)
    (tmp_path / "k.json").write_text('{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert any("public JWK" in p for p in err.value.problems)


def test_same_app_twice_is_refused(tmp_path: Path) -> None:
    """Two entries for one service app would double its budget: named as an error."""
    path = _write(tmp_path, GOOD)
    path.write_text(
        path.read_text()
        + "\n[[providers]]\n"
        + GOOD.replace('"acme"', '"acme2"')
        + '\nprivate_key_file = "k.json"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert any("are the same service app" in p for p in err.value.problems)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("https://ACME.Okta.com", "https://acme.okta.com"),
        ("HTTPS://acme.okta.com:443/", "https://acme.okta.com"),
        ("https://acme.okta.com:8443", "https://acme.okta.com:8443"),
        ("http://LOCALHOST:80", "http://localhost"),
        ("http://[::1]:8900/", "http://[::1]:8900"),
    ],
)
def test_org_url_is_canonical(tmp_path: Path, raw: str, canonical: str) -> None:
    """org_url is stored lower-case, without the default port or a trailing /."""
    body = GOOD.replace("https://acme.okta.com/", raw)
    settings, _ = load_settings(_write(tmp_path, body))
    assert settings.providers[0].org_url == canonical


@pytest.mark.parametrize(
    "other_url",
    ["https://ACME.okta.com", "https://acme.okta.com:443", "https://other.okta.com"],
)
def test_same_client_id_twice_is_refused_whatever_the_url(tmp_path: Path, other_url: str) -> None:
    """One client_id under two providers is one app, so an error naming both."""
    path = _write(tmp_path, GOOD)
    second = GOOD.replace('"acme"', '"acme2"').replace("https://acme.okta.com/", other_url)
    path.write_text(
        path.read_text() + "\n[[providers]]\n" + second + '\nprivate_key_file = "k.json"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    same = [p for p in err.value.problems if "are the same service app" in p]
    assert len(same) == 1, err.value.problems
    assert "providers[acme2]" in same[0]
    assert "providers[acme]" in same[0]


@pytest.mark.parametrize("var", ["FORWARDER_PROVIDERS", "FORWARDER_DISPATCH", "FORWARDER_INGEST"])
def test_malformed_env_json_is_a_config_error_without_its_value(var: str) -> None:
    """Broken JSON in a FORWARDER_<SECTION> variable: exit 2 naming it, value not echoed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORWARDER_")}
    env[var] = '[{"name": "x", "client_secret": "s3cr3t-value"'
    result = subprocess.run(
        [sys.executable, "-m", "forwarder", "config", "check", "--config", "config/forwarder.toml"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"{var} is not valid JSON" in result.stderr
    assert "s3cr3t" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:\uff18\uff10\uff18\uff10", "127.0.0.1:8_0", "[::1]:+80"]
)
def test_listen_port_is_ascii_digits(listen: str) -> None:
    """A port int() would take but no operator meant (fullwidth digits, 8_0, +80) is refused."""
    with pytest.raises(ValueError, match="port must be a number"):
        parse_listen(listen)
