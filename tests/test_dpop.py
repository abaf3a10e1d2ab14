"""DPoP against the sandbox: tokens and events calls for apps that require it, end to end.

The sandbox enforces Okta's DPoP rules (tests/test_sandbox_dpop.py); these tests check
forwarder's side: the modes, the nonce flows, the hints and the budget with nonce retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from forwarder.clock import FakeClock
from forwarder.errors import InvalidCredentials, RetryableSendError
from forwarder.okta.dpop import DPoP, DPoPMode, dpop_error_hint, resource_challenge
from forwarder.okta.events import RiskEventsSender
from forwarder.okta.keys import SigningKey, generate_signing_key, write_private_key
from forwarder.okta.provision import connectivity_signal
from forwarder.okta.tokens import TokenSource
from forwarder.ratelimit import max_calls_in_window
from forwarder.sandbox import SandboxOrg, serve
from tests.fake_okta import events_routes, events_sender, fake_okta
from tests.harness import dpop_sandbox, harness, ips


@dataclass
class Env:
    clock: FakeClock
    org: SandboxOrg
    url: str
    session: aiohttp.ClientSession
    key: SigningKey
    client_id: str

    def tokens(self, mode: DPoPMode | None, *, clock: FakeClock | None = None) -> TokenSource:
        dpop = None if mode is None else DPoP(mode=mode, clock=clock or self.clock)
        return TokenSource(
            session=self.session,
            org_url=self.url,
            client_id=self.client_id,
            key=self.key,
            clock=self.clock,
            dpop=dpop,
        )

    def sender(self, tokens: TokenSource) -> RiskEventsSender:
        return RiskEventsSender(
            session=self.session, org_url=self.url, tokens=tokens, clock=self.clock
        )


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock, org, key, client_id = dpop_sandbox()
    async with serve(org) as url, aiohttp.ClientSession() as session:
        yield Env(clock, org, url, session, key, client_id)


async def _spend_nothing() -> None:
    return None


# ---------------------------------------------------------------------- tokens


async def test_auto_switches_to_dpop_when_the_app_requires_it_and_remembers(env: Env) -> None:
    """auto: refused (no proof), then nonce, then a DPoP token; the next fetch needs one call."""
    tokens = env.tokens("auto")
    token = await tokens.token()
    assert token.dpop_bound
    assert [(r.status, r.error) for r in env.org.token_requests] == [
        (400, "invalid_dpop_proof"),
        (400, "use_dpop_nonce"),
        (200, None),
    ]
    tokens.invalidate(token.value)
    assert (await tokens.token()).dpop_bound
    assert len(env.org.token_requests) == 4  # DPoP and the nonce were remembered


async def test_always_sends_a_proof_from_the_first_request(env: Env) -> None:
    """always: the first request carries a proof; one nonce round, then a DPoP token."""
    token = await env.tokens("always").token()
    assert token.dpop_bound
    assert [r.error for r in env.org.token_requests] == ["use_dpop_nonce", None]
    issued = env.org._auth_server.lookup(token.value, env.clock.time())
    assert issued is not None
    assert issued.jkt is not None


@pytest.mark.parametrize("mode", ["never", None])
async def test_never_fails_with_a_hint_naming_the_dpop_setting(
    env: Env, mode: DPoPMode | None
) -> None:
    """never: InvalidCredentials whose hint says to set dpop = "auto" (or untick DPoP)."""
    with pytest.raises(InvalidCredentials) as err:
        await env.tokens(mode).get()
    assert err.value.error == "invalid_dpop_proof"
    assert 'dpop = "auto"' in err.value.hint
    assert len(env.org.token_requests) == 1


async def test_always_against_an_app_without_dpop_says_the_token_is_not_bound(env: Env) -> None:
    """always, but the app issues Bearer tokens: not DPoP-bound, with the fix."""
    plain = env.org.register_client("plain", {"keys": [env.key.public_jwk()]})
    env.org.grant(plain)
    env.client_id = plain
    with pytest.raises(InvalidCredentials) as err:
        await env.tokens("always").get()
    assert err.value.error == "not_dpop_bound"
    assert "Require DPoP" in err.value.hint


async def test_auto_against_an_app_without_dpop_stays_bearer(env: Env) -> None:
    """auto and a plain app: one request, a Bearer token, no proof."""
    plain = env.org.register_client("plain", {"keys": [env.key.public_jwk()]})
    env.org.grant(plain)
    env.client_id = plain
    token = await env.tokens("auto").token()
    assert not token.dpop_bound
    assert len(env.org.token_requests) == 1
    assert len(env.org.dpop.seen_jtis) == 0


async def test_a_rotated_token_endpoint_nonce_is_replaced_with_one_retry(env: Env) -> None:
    """After the org rotates its nonce: one use_dpop_nonce, then a token with the new one."""
    tokens = env.tokens("always")
    tokens.invalidate(await tokens.get())
    env.org.dpop.rotate()
    before = len(env.org.token_requests)
    assert await tokens.get()
    assert [r.error for r in env.org.token_requests[before:]] == ["use_dpop_nonce", None]


async def test_a_skewed_clock_names_the_clock_in_the_hint(env: Env) -> None:
    """A proof iat 6 minutes old: invalid_dpop_proof with the NTP hint."""
    skewed = FakeClock(start=env.clock.time() - 360)
    with pytest.raises(InvalidCredentials) as err:
        await env.tokens("always", clock=skewed).get()
    assert err.value.error == "invalid_dpop_proof"
    assert "clock" in err.value.hint


def test_proof_refusal_hints_name_the_cause() -> None:
    """htu points at a proxy rewriting the URL, a signature at the key, iat at the clock."""
    where = "https://acme.okta.com/api/v1/risk/events/ip"
    assert "proxy" in dpop_error_hint("The DPoP proof 'htu' claim does not match", where=where)
    assert "wrong key" in dpop_error_hint("signature does not verify", where=where)
    assert "NTP" in dpop_error_hint("issued more than 5 minutes ago ('iat')", where=where)
    assert resource_challenge({"WWW-Authenticate": 'DPoP error="use_dpop_nonce", x=y'}) == {
        "error": "use_dpop_nonce",
        "x": "y",
    }
    assert resource_challenge({"WWW-Authenticate": 'Bearer error="invalid_token"'}) == {}


# ---------------------------------------------------------------------- events call


async def test_events_call_carries_dpop_and_a_fresh_proof(env: Env) -> None:
    """Two sends: two accepted calls, each with its own proof (no jti repeats)."""
    sender = env.sender(env.tokens("auto"))
    for _ in range(2):
        delivery = await sender.send([connectivity_signal(env.clock.time())], spend=_spend_nothing)
        assert delivery.subjects == 1
        env.clock.advance(21)
    assert len(env.org.accepted) == 2
    jtis = env.org.dpop.seen_jtis
    assert len(jtis) == len(set(jtis)) == 4  # 2 token requests with a proof, 2 calls


async def test_a_resource_nonce_challenge_is_one_retry_through_the_budget(env: Env) -> None:
    """401 use_dpop_nonce: RetryableSendError(retry_now) after one spent call; then 202."""
    sender = env.sender(env.tokens("always"))
    env.org.dpop.resource_nonce = True
    spent: list[float] = []

    async def spend() -> None:
        spent.append(env.clock.time())

    signal = connectivity_signal(env.clock.time())
    with pytest.raises(RetryableSendError) as err:
        await sender.send([signal], spend=spend)
    assert err.value.retry_now
    assert err.value.outcome == "auth_error"
    assert len(spent) == 1
    await sender.send([signal], spend=spend)
    assert len(spent) == 2
    assert [c.status for c in env.org.event_calls] == [401, 202]


async def test_challenges_without_end_are_a_failure_not_a_loop(env: Env) -> None:
    """A new nonce demanded on every retry: InvalidCredentials after two retries."""
    sender = env.sender(env.tokens("always"))
    env.org.dpop.resource_nonce = True
    signal = connectivity_signal(env.clock.time())
    for _ in range(2):
        with pytest.raises(RetryableSendError):
            await sender.send([signal], spend=_spend_nothing)
        env.org.dpop.rotate()
    with pytest.raises(InvalidCredentials) as err:
        await sender.send([signal], spend=_spend_nothing)
    assert "nonce" in str(err.value)
    assert "proxy" in err.value.hint


# ---------------------------------------------------------------------- the daemon


@pytest.mark.parametrize("mode", ["auto", "always"])
async def test_a_dpop_app_delivers_every_ip_within_the_budget(tmp_path: Path, mode: str) -> None:
    """auto and always: 2,500 IPs delivered to a DPoP-required app, 3 calls a minute at most."""
    async with harness(tmp_path) as h:
        cid = h.add_provider("acme", dpop_app=True, dpop=mode)
        await h.start()
        for offset in range(0, 2500, 500):
            status, _ = await h.post([{"ip": ip, "riskLevel": "MEDIUM"} for ip in ips(500, offset)])
            assert status == 202
        await h.until(lambda: len(h.delivered(cid)) >= 2500)
        assert sorted(h.delivered(cid)) == sorted(ips(2500))
        calls = h.org.event_calls
        assert {c.status for c in calls} == {202}
        assert max_calls_in_window([c.at for c in calls], 60.0) <= 3
        jtis = h.org.dpop.seen_jtis
        assert len(jtis) == len(set(jtis))


async def test_never_against_a_dpop_app_is_failing_with_the_hint_in_readyz(tmp_path: Path) -> None:
    """dpop = "never": nothing sent, /readyz says failing and how to fix it."""
    async with harness(tmp_path) as h:
        h.add_provider("acme", dpop_app=True, dpop="never")
        await h.start()
        status, _ = await h.post([{"ip": "198.18.0.1", "riskLevel": "HIGH"}])
        assert status == 202
        daemon = h.daemon
        assert daemon is not None
        await h.until(lambda: daemon.dispatchers["acme"].state.status == "failing")
        _, body = await h.get("/readyz")
        acme = body["providers"]["acme"]
        assert acme["state"] == "failing"
        assert "invalid_dpop_proof" in acme["last_error"]
        assert 'dpop = "auto"' in acme["hint"]
        assert acme["pending"] == 1
        assert h.org.event_calls == []


async def test_nonce_rotation_mid_run_keeps_delivering_inside_the_budget(tmp_path: Path) -> None:
    """Resource nonces on and rotated mid-run (tokens renewed too): all delivered, challenge
    calls counted, never more than 3 calls in any minute, no 429, no proof reused."""
    async with harness(tmp_path) as h:
        cid = h.add_provider("acme", dpop_app=True)
        h.org.dpop.resource_nonce = True
        await h.start()
        total = 0
        for round_no in range(4):
            batch = [{"ip": ip, "riskLevel": "LOW"} for ip in ips(1500, total)]
            status, _ = await h.post(batch)
            assert status == 202
            total += 1500
            if round_no == 2:
                h.org.revoke_tokens()  # the token is renewed under the new nonce too
            await h.until(lambda n=total: len(h.delivered(cid)) >= n)
            h.org.dpop.rotate()
        assert sorted(h.delivered(cid)) == sorted(ips(total))
        statuses = [c.status for c in h.org.event_calls]
        assert 429 not in statuses
        assert statuses.count(401) >= 4  # one challenge per rotation at least
        assert max_calls_in_window([c.at for c in h.org.event_calls], 60.0) <= 3
        jtis = h.org.dpop.seen_jtis
        assert len(jtis) == len(set(jtis))
        _, body = await h.get("/readyz")
        assert body["summary"] == {"providers": 1, "ok": 1}  # ok orgs are counted, not listed


async def test_a_dpop_key_file_binds_the_tokens_to_that_key(tmp_path: Path) -> None:
    """dpop_key_file: the issued token's cnf.jkt is that key's thumbprint."""
    dpop_key = generate_signing_key("ES256")
    key_file = tmp_path / "dpop.jwk.json"
    write_private_key(key_file, dpop_key)
    async with harness(tmp_path) as h:
        cid = h.add_provider("acme", dpop_app=True, dpop_key_file=str(key_file))
        await h.start()
        status, _ = await h.post([{"ip": "198.18.0.1", "riskLevel": "HIGH"}])
        assert status == 202
        await h.until(lambda: len(h.delivered(cid)) >= 1)
        [token] = h.org.issued_tokens()
        issued = h.org._auth_server.lookup(token, h.clock.time())
        assert issued is not None
        assert issued.jkt == dpop_key.key.thumbprint()


@pytest.mark.parametrize(
    ("status", "headers", "body", "error"),
    [
        (
            400,
            {},
            b'{"error":"invalid_request","error_description":"The resource request requires a '
            b'DPoP proof."}',
            "dpop_required",
        ),
        (
            401,
            {
                "WWW-Authenticate": 'DPoP error="invalid_token", error_description="The presented '
                'access_token is not DPoP bound."'
            },
            b"",
            "not_dpop_bound",
        ),
    ],
)
async def test_dpop_refusals_of_the_events_call_stop_the_provider_not_dead_letter(
    status: int, headers: dict[str, str], body: bytes, error: str
) -> None:
    """A 400/401 about DPoP is an operator problem with a hint, never a rejected payload."""
    clock = FakeClock()

    async def events(_: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers=headers)

    async with fake_okta(events_routes(events)) as url, aiohttp.ClientSession() as session:
        sender = events_sender(session, url, clock, dpop=DPoP(mode="auto", clock=clock))
        with pytest.raises(InvalidCredentials) as err:
            await sender.send([connectivity_signal(clock.time())], spend=_spend_nothing)
    assert err.value.error == error
    assert "dpop" in err.value.hint
