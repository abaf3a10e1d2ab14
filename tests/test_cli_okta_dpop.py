"""`forwarder okta create-app --dpop` and `okta check` (DPoP, --send-test --confirm) as real
subprocesses against a sandbox org over loopback HTTP."""

from __future__ import annotations

import json

import pytest

from forwarder.okta.keys import generate_signing_key
from forwarder.okta.provision import TEST_EVENT_IP
from tests.okta_cli import Org, served_org  # noqa: F401 - the `org` fixture
from tests.procs import run_cli

pytestmark = pytest.mark.slow


async def test_create_app_dpop_registers_an_app_that_requires_dpop(org: Org) -> None:
    """--dpop sends dpop_bound_access_tokens: true; the output and JSON say DPoP is required."""
    key = generate_signing_key("RS256")
    public = org.tmp / "public.jwk.json"
    public.write_text(json.dumps(key.public_jwk()))
    args = ["create-app", "--name", "Acme DPoP", "--public-key", str(public), "--dpop"]
    result = await run_cli(
        "okta", *args, "--org", org.url, "--api-token-file", str(org.token_file), "--json"
    )
    assert result.code == 0, result.output
    document = json.loads(result.stdout)
    assert document["dpop"] is True
    [client] = org.sandbox._clients.values()
    assert client.metadata["dpop_bound_access_tokens"] is True
    assert client.client_id == document["client_id"]


async def test_check_says_the_app_requires_dpop_and_proves_the_flow(org: Org) -> None:
    """Default dpop = "auto" on a DPoP app: OK, DPoP required, the event sent with a proof."""
    client_id, key_file = org.app("acme", dpop=True)
    result = await org.check(org.config(("acme", client_id, key_file)), "--send-test")
    assert result.code == 0, result.output
    line = result.stdout.splitlines()[-1]
    assert line.startswith("acme: OK")
    assert "the app requires DPoP: token bound to DPoP key" in line
    assert "test event accepted with a DPoP proof" in line
    assert org.sandbox.accepted_ips(client_id) == [TEST_EVENT_IP]


async def test_check_with_dpop_never_names_the_setting_to_change(org: Org) -> None:
    """dpop = "never" on a DPoP app: FAILED (token) with the fix, exit 1."""
    client_id, key_file = org.app("acme", dpop=True)
    result = await org.check(org.config(("acme", client_id, key_file), dpop="never"))
    assert result.code == 1
    assert "acme: FAILED (token)" in result.stdout
    assert "invalid_dpop_proof" in result.stdout
    assert 'set dpop = "auto"' in result.stdout


async def test_send_test_confirm_finds_the_event_in_the_system_log(org: Org) -> None:
    """--send-test --confirm: OK naming the System Log event's uuid; JSON carries the event."""
    client_id, key_file = org.app("acme")
    config = org.config(("acme", client_id, key_file))
    result = await org.check(config, "--send-test", "--confirm", "--json")
    assert result.code == 0, result.output
    [provider] = json.loads(result.stdout)["providers"]
    [event] = [e.body for e in org.sandbox.system_log.events]
    assert provider["step"] == "confirm"
    assert provider["log_event"]["uuid"] == event["uuid"]
    assert event["uuid"] in provider["detail"]


async def test_confirm_says_plainly_that_no_event_appeared_and_why(org: Org) -> None:
    """Provider action none: FAILED (confirm), the action named as the cause, exit 1."""
    client_id, key_file = org.app("acme", action="none")
    config = org.config(("acme", client_id, key_file))
    result = await org.check(config, "--send-test", "--confirm", "--confirm-timeout", "1")
    assert result.code == 1, result.output
    assert "acme: FAILED (confirm)" in result.stdout
    assert "no security.risk.signal.consume event" in result.stdout
    assert "action is none" in result.stdout
    assert org.sandbox.api_token not in result.output


async def test_confirm_without_send_test_is_a_usage_error(org: Org) -> None:
    """--confirm alone: exit 2 saying it needs --send-test; nothing is sent."""
    client_id, key_file = org.app("acme")
    result = await org.check(org.config(("acme", client_id, key_file)), "--confirm")
    assert result.code == 2
    assert "--confirm needs --send-test" in result.stderr
    assert org.sandbox.event_calls == []
