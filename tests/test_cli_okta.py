"""`forwarder okta ...` as a real subprocess against a sandbox org over loopback HTTP.

Most tests serve a fresh in-process sandbox (read directly for assertions) and run the
CLI with an asyncio subprocess so the sandbox keeps answering; the end-to-end test runs
`forwarder sandbox` and `forwarder run` as processes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from email.utils import formatdate
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from forwarder.cli.okta import PROVIDER_ACTIONS as CLI_ACTIONS
from forwarder.okta.provision import PROVIDER_ACTIONS, TEST_EVENT_IP, TEST_EVENT_MESSAGE
from tests.fake_okta import fake_okta
from tests.harness import ips
from tests.okta_cli import Org, served_org  # noqa: F401 - the `org` fixture
from tests.procs import Proc, free_port, run_cli, sandbox

pytestmark = pytest.mark.slow

RISK = "okta.riskEvents.manage"


# ---------------------------------------------------------------------- create-app


async def test_create_app_registers_the_public_key_and_prints_the_client_id(org: Org) -> None:
    """create-app registers a private_key_jwt service app with the key's kid."""
    key, _ = org.key("acme")
    result = await org.okta(
        "create-app", "--name", "acme", "--public-key", str(org.tmp / "acme.public.jwk.json")
    )
    assert result.code == 0, result.output
    [client] = org.clients()
    assert f"client_id  {client['client_id']}" in result.stdout
    assert client["token_endpoint_auth_method"] == "private_key_jwt"
    assert client["application_type"] == "service"
    assert client["kids"] == [key.kid]


async def test_create_app_given_a_private_key_sends_only_its_public_half(org: Org) -> None:
    """A private key file is accepted for --public-key; only the public half reaches Okta."""
    key, private = org.key("acme", alg="RS256")
    result = await org.okta("create-app", "--name", "acme", "--public-key", str(private))
    assert result.code == 0, result.output
    assert "registering only its public half" in result.stderr
    assert [c["kids"] for c in org.clients()] == [[key.kid]]


# ---------------------------------------------------------------------- grant


async def test_grant_then_grant_again_succeeds_both_times(org: Org) -> None:
    """The scope is granted once; a second grant says it already was and exits 0."""
    client_id, _ = org.app("acme", grant=False, provider=False)
    first = await org.okta("grant", "--client-id", client_id)
    assert first.code == 0, first.output
    assert f"granted {RISK} to {client_id}" in first.stdout
    second = await org.okta("grant", "--client-id", client_id)
    assert second.code == 0, second.output
    assert "already granted" in second.stdout
    assert org.clients()[0]["scopes"] == [RISK]


async def test_a_duplicate_grant_refused_by_okta_counts_as_granted(tmp_path: Path) -> None:
    """Okta's undocumented 400 "already exists" answer to a repeat grant is success."""
    listed: list[int] = []

    async def list_grants(request: web.Request) -> web.StreamResponse:
        listed.append(1)
        return web.json_response([])  # a stale list: the POST below knows better

    async def add_grant(request: web.Request) -> web.StreamResponse:
        body = {
            "errorCode": "E0000001",
            "errorSummary": "Api validation failed: scopeId",
            "errorCauses": [{"errorSummary": "scopeId: A consent for this scope already exists."}],
        }
        return web.json_response(body, status=400)

    path = "/api/v1/apps/{app}/grants"
    token_file = tmp_path / "token"
    token_file.write_text("00token")
    async with fake_okta({("GET", path): list_grants, ("POST", path): add_grant}) as url:
        result = await run_cli(
            "okta",
            "grant",
            "--org",
            url,
            "--api-token-file",
            str(token_file),
            "--client-id",
            "0oa1",
            "--json",
        )
    assert result.code == 0, result.output
    assert json.loads(result.stdout)["already_granted"] is True
    assert len(listed) == 2


async def test_grant_for_an_unknown_client_id_shows_okta_error_and_hint(org: Org) -> None:
    """Okta's E0000007 body is shown in full, then the hint naming client id and org URL."""
    result = await org.okta("grant", "--client-id", "0oaDoesNotExist")
    assert result.code == 1
    assert "errorCode: E0000007" in result.stderr
    assert "errorSummary: Not found: Resource not found: 0oaDoesNotExist" in result.stderr
    assert "errorId: oae" in result.stderr
    assert "hint: no service app has client id '0oaDoesNotExist'" in result.stderr
    assert "check --client-id" in result.stderr


async def test_a_quoted_client_id_is_refused_before_any_call(org: Org) -> None:
    """A client id pasted with its JSON quotes is a usage error saying to remove them."""
    client_id, _ = org.app("acme", grant=False, provider=False)
    result = await org.okta("grant", "--client-id", f'"{client_id}"')
    assert result.code == 2
    assert "--client-id is wrapped in quotes; remove them" in result.stderr
    assert org.clients()[0]["scopes"] == []


async def test_rate_limited_admin_call_says_when_to_retry(tmp_path: Path) -> None:
    """A 429 E0000047 is shown with the seconds until X-Rate-Limit-Reset (against Date)."""

    async def limited(request: web.Request) -> web.StreamResponse:
        now = time.time()
        headers = {
            "X-Rate-Limit-Limit": "10",
            "X-Rate-Limit-Remaining": "0",
            "X-Rate-Limit-Reset": str(int(now) + 41),
            "Date": formatdate(now, usegmt=True),
        }
        body = {"errorCode": "E0000047", "errorSummary": "API call exceeded rate limit"}
        return web.json_response(body, status=429, headers=headers)

    token_file = tmp_path / "token"
    token_file.write_text("00token")
    async with fake_okta({("GET", "/api/v1/risk/providers"): limited}) as url:
        result = await run_cli(
            "okta", "providers", "list", "--org", url, "--api-token-file", str(token_file)
        )
    assert result.code == 1
    assert "errorCode: E0000047" in result.stderr
    assert "retry in 42 s" in result.stderr or "retry in 41 s" in result.stderr


# ---------------------------------------------------------------------- org URL and API token


async def test_the_admin_console_url_is_refused_with_the_org_url(org: Org) -> None:
    """The `-admin` host is a usage error naming the org URL to use instead."""
    result = await org.okta("providers", "list", org="https://acme-admin.okta.com")
    assert result.code == 2
    assert "is the Admin Console URL; use the org URL instead (https://acme.okta.com)" in (
        result.stderr
    )


async def test_a_trailing_slash_is_dropped_with_a_note(org: Org) -> None:
    """`https://org/` works, and says it used the URL without the slash."""
    result = await org.okta("providers", "list", org=org.url + "/")
    assert result.code == 0, result.output
    assert f"dropped the trailing '/'; using {org.url}" in result.stderr


async def test_an_upper_case_org_url_is_used_in_canonical_form(org: Org) -> None:
    """`HTTP://127.0.0.1:PORT` is canonicalised by the config's validator, with a note."""
    result = await org.okta("providers", "list", org=org.url.upper())
    assert result.code == 0, result.output
    assert f"using {org.url} (scheme and host lower-case" in result.stderr


async def test_without_an_api_token_the_command_says_where_to_put_one(org: Org) -> None:
    """No --api-token-file and no environment variable: exit 2 naming both."""
    result = await run_cli("okta", "providers", "list", "--org", org.url)
    assert result.code == 2
    assert "FORWARDER_OKTA_API_TOKEN" in result.stderr
    assert "--api-token-file" in result.stderr


async def test_the_api_token_can_come_from_the_environment(org: Org) -> None:
    """$FORWARDER_OKTA_API_TOKEN authenticates admin calls."""
    env = {"FORWARDER_OKTA_API_TOKEN": org.sandbox.api_token}
    result = await run_cli("okta", "providers", "list", "--org", org.url, env=env)
    assert result.code == 0, result.output
    assert org.sandbox.api_token not in result.output


async def test_a_wrong_api_token_is_e0000011_and_is_never_printed(org: Org) -> None:
    """Okta's 401 E0000011 with the hint to create a token; the token itself never shows."""
    org.token_file.write_text("00WrongTokenThatMustNotLeak\n")
    result = await org.okta("providers", "list")
    assert result.code == 1
    assert "errorCode: E0000011" in result.stderr
    assert "hint: invalid API token" in result.stderr
    assert "00WrongTokenThatMustNotLeak" not in result.output


# ---------------------------------------------------------------------- providers


async def test_providers_list_shows_the_default_provider_and_the_limit(org: Org) -> None:
    """A fresh org's one provider names no app; the three-provider limit is stated."""
    result = await org.okta("providers", "list")
    assert result.code == 0, result.output
    assert "1 (Okta allows at most 3 per org)" in result.stdout
    assert "no app yet" in result.stdout
    as_json = await org.okta("providers", "list", "--json")
    document = json.loads(as_json.stdout)
    assert document["max_providers"] == 3
    assert [p["clientId"] for p in document["providers"]] == ["null"]


async def test_providers_set_updates_the_only_provider(org: Org) -> None:
    """Without --id the default provider is updated with name, client id and action."""
    client_id, _ = org.app("acme", provider=False)
    result = await org.okta(
        "providers",
        "set",
        "--name",
        "acme",
        "--client-id",
        client_id,
        "--action",
        "enforce_and_log",
    )
    assert result.code == 0, result.output
    [provider] = org.sandbox.list_providers()
    assert (provider["name"], provider["clientId"], provider["action"]) == (
        "acme",
        client_id,
        "enforce_and_log",
    )
    assert f"updated risk provider {provider['id']}" in result.stdout


async def test_providers_set_says_when_it_displaces_another_app(org: Org) -> None:
    """Re-pointing the only provider away from another app notes which app lost it."""
    first, _ = org.app("first")
    second, _ = org.app("second", provider=False)
    result = await org.okta("providers", "set", "--name", "second", "--client-id", second)
    assert result.code == 0, result.output
    assert f"the provider named app {first} before" in result.stderr
    assert [p["clientId"] for p in org.sandbox.list_providers()] == [second]


async def test_providers_set_with_several_providers_asks_for_an_id(org: Org) -> None:
    """With two providers and no --id: exit 2, listing both ids, nothing changed."""
    org.sandbox.create_provider({"name": "other", "clientId": "0oaOther", "action": "none"})
    before = org.sandbox.list_providers()
    result = await org.okta("providers", "set", "--name", "acme", "--client-id", "0oa1")
    assert result.code == 2
    assert "say which one to update with --id" in result.stderr
    for provider in before:
        assert provider["id"] in result.stderr
    assert org.sandbox.list_providers() == before


async def test_providers_set_with_an_unknown_id_lists_the_real_ones(org: Org) -> None:
    """An unknown --id: Okta's E0000007 in full, then the org's provider ids."""
    [default] = org.sandbox.list_providers()
    result = await org.okta(
        "providers", "set", "--id", "00rpNoSuchThing", "--name", "acme", "--client-id", "0oa1"
    )
    assert result.code == 1
    assert "errorCode: E0000007" in result.stderr
    assert "no risk provider has id '00rpNoSuchThing'" in result.stderr
    assert default["id"] in result.stderr


async def test_a_fourth_provider_is_refused_before_asking_okta(org: Org) -> None:
    """--create at three providers: exit 2 citing Okta's maximum of three."""
    for name in ("second", "third"):
        org.sandbox.create_provider({"name": name, "clientId": "0oaX", "action": "none"})
    result = await org.okta(
        "providers", "set", "--create", "--name", "fourth", "--client-id", "0oa1"
    )
    assert result.code == 2
    assert "already has 3 risk providers, Okta's maximum" in result.stderr
    assert len(org.sandbox.list_providers()) == 3


def test_the_cli_offers_the_actions_okta_knows() -> None:
    """--action choices are Okta's RiskProviderAction values."""
    assert CLI_ACTIONS == PROVIDER_ACTIONS == ("none", "log_only", "enforce_and_log")


# ---------------------------------------------------------------------- check


async def test_check_says_ok_for_a_provisioned_provider(org: Org) -> None:
    """A working provider: one OK line naming the client id and the scope, exit 0."""
    client_id, _ = org.app("acme")
    config = org.config(("acme", client_id, org.tmp / "acme.private.jwk.json"))
    result = await run_cli("okta", "check", "--config", str(config))
    assert result.code == 0, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith("acme: OK")
    assert f"token issued to {client_id} with {RISK}" in line


async def test_send_test_delivers_one_harmless_event_and_says_it_spent_a_call(org: Org) -> None:
    """--send-test: the org accepts one LOW documentation-range IP; the output says so."""
    client_id, _ = org.app("acme")
    config = org.config(("acme", client_id, org.tmp / "acme.private.jwk.json"))
    result = await run_cli("okta", "check", "--config", str(config), "--send-test")
    assert result.code == 0, result.output
    assert "spends one of the provider's calls" in result.stdout
    assert org.sandbox.accepted_ips(client_id) == [TEST_EVENT_IP]
    [call] = org.sandbox.accepted
    [subject] = call.body[0]["subjects"]
    assert subject == {"ip": TEST_EVENT_IP, "riskLevel": "LOW", "message": TEST_EVENT_MESSAGE}
    assert "expiresAt" in call.body[0]


async def test_check_names_a_key_that_does_not_match_the_app(org: Org) -> None:
    """One line per provider: OK for the good one, the kid fix for the mismatched key."""
    client_id, _ = org.app("acme")
    other_id, _ = org.app("other")
    org.key("stray")  # not the key registered on "other"
    config = org.config(
        ("acme", client_id, org.tmp / "acme.private.jwk.json"),
        ("stray", other_id, org.tmp / "stray.private.jwk.json"),
    )
    result = await run_cli("okta", "check", "--config", str(config))
    assert result.code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("acme: OK")
    assert lines[1].startswith("stray: FAILED (token)")
    assert "client_assertion JWT kid is invalid" in lines[1]
    assert "is registered on the service app" in lines[2]


async def test_check_names_a_missing_scope_grant_and_the_command_to_fix_it(org: Org) -> None:
    """A missing grant: FAILED with the grant command, exit 1."""
    client_id, _ = org.app("acme", grant=False)
    config = org.config(("acme", client_id, org.tmp / "acme.private.jwk.json"))
    result = await run_cli("okta", "check", "--config", str(config))
    assert result.code == 1
    assert "acme: FAILED (token)" in result.stdout
    assert f"{RISK} is not granted" in result.stdout
    assert f"forwarder okta grant --org URL --client-id {client_id}" in result.stdout


async def test_check_of_an_unknown_provider_name_is_a_usage_error(org: Org) -> None:
    """--provider naming nothing in the config: exit 2 listing the names it has."""
    config = org.config(("acme", "0oa1", org.tmp / "none.json"))
    result = await run_cli("okta", "check", "--config", str(config), "--provider", "acne")
    assert result.code == 2
    assert "no provider named 'acne'" in result.stderr
    assert "acme" in result.stderr


# ---------------------------------------------------------------------- setup


async def test_setup_stops_before_changing_anything_when_the_provider_is_ambiguous(
    org: Org,
) -> None:
    """Two providers and no --provider-id: exit 2 at step org; no app, no key files."""
    org.sandbox.create_provider({"name": "other", "clientId": "0oaOther", "action": "none"})
    keys = org.tmp / "keys"
    result = await org.okta("setup", "--name", "acme", "--keys-dir", str(keys))
    assert result.code == 2
    assert "[1/6] org       FAILED" in result.stdout
    assert "with --provider-id" in result.stderr
    assert "setup stopped at org: nothing was changed" in result.stderr
    assert org.clients() == []
    assert not keys.exists()


async def test_setup_keeps_an_existing_key_and_changes_nothing(org: Org) -> None:
    """An existing private key without --force: exit 2 at step keys; the org is untouched."""
    keys = org.tmp / "keys"
    keys.mkdir()
    (keys / "acme.private.jwk.json").write_text("{}")
    result = await org.okta("setup", "--name", "acme", "--keys-dir", str(keys))
    assert result.code == 2
    assert "[2/6] keys      FAILED" in result.stdout
    assert "exists; pass --force" in result.stderr
    assert "nothing was changed" in result.stderr
    assert org.clients() == []
    assert (keys / "acme.private.jwk.json").read_text() == "{}"


async def test_setup_stops_at_check_with_the_fix_and_the_config_block(org: Org) -> None:
    """A refused token at the end: exit 1 at step check, the hint, and the block to paste."""
    org.sandbox.fail_tokens(401)
    result = await org.okta("setup", "--name", "acme", "--keys-dir", str(org.tmp / "keys"))
    assert result.code == 1, result.output
    assert "[6/6] check     FAILED" in result.stdout
    assert "invalid_client" in result.stderr
    assert "hint: " in result.stderr
    assert "setup stopped at check: everything is registered" in result.stderr
    [client] = org.clients()
    assert f'client_id = "{client["client_id"]}"' in result.stdout


async def test_setup_json_reports_every_step_and_the_config_block(org: Org) -> None:
    """--json: one document with the six steps, the client id and the config block."""
    keys = org.tmp / "keys"
    result = await org.okta("setup", "--name", "acme", "--keys-dir", str(keys), "--json")
    assert result.code == 0, result.output
    document = json.loads(result.stdout)
    assert [s["step"] for s in document["steps"]] == [
        "org",
        "keys",
        "app",
        "grant",
        "provider",
        "check",
    ]
    assert f'client_id = "{document["client_id"]}"' in document["config_block"]


def test_setup_takes_a_fresh_sandbox_to_a_provider_that_forwarder_run_delivers_to(
    tmp_path: Path,
) -> None:
    """sandbox -> `okta setup` -> config from the printed block -> `run` -> signals accepted."""
    with sandbox(tmp_path) as (org_url, api_token):
        setup = asyncio.run(
            run_cli(
                "okta",
                "setup",
                "--org",
                org_url,
                "--name",
                "acme",
                "--keys-dir",
                str(tmp_path / "keys"),
                "--api-token-file",
                str(tmp_path / "api-token"),
                cwd=tmp_path,
            )
        )
        assert setup.code == 0, setup.output
        assert api_token not in setup.output
        block = setup.stdout[setup.stdout.index("[[providers]]") :]
        ingest, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        config = tmp_path / "forwarder.toml"
        config.write_text(
            f'[ingest]\nlisten = "{ingest}"\n[metrics]\nlisten = "{metrics}"\n'
            '[store]\npath = "data/forwarder.db"\n[log]\nformat = "json"\n'
            f"[dispatch]\nlinger_s = 0.2\n\n{block}"
        )
        daemon = Proc(tmp_path / "daemon.log", "run", "--config", str(config))
        try:
            sent = ips(30)
            delivered = asyncio.run(_deliver(f"http://{ingest}", org_url, api_token, sent, daemon))
        finally:
            daemon.stop()
    assert set(delivered) == set(sent)
    assert api_token not in daemon.output


async def _deliver(
    ingest: str, org_url: str, api_token: str, sent: list[str], daemon: Proc
) -> list[str]:
    items = [{"ip": ip, "riskLevel": "HIGH", "message": "setup e2e"} for ip in sent]
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert daemon.popen.poll() is None, daemon.output
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post(f"{ingest}/v1/signals", json=items) as resp:
                    assert resp.status == 202, await resp.text()
                    break
            await asyncio.sleep(0.05)
        headers = {"Authorization": f"SSWS {api_token}"}
        delivered: list[str] = []
        for _ in range(200):
            async with session.get(f"{org_url}/_sandbox/accepted", headers=headers) as resp:
                calls = await resp.json()
            delivered = [s["ip"] for c in calls for e in c["body"] for s in e["subjects"]]
            if set(delivered) >= set(sent):
                break
            await asyncio.sleep(0.05)
    return delivered
