"""The sandbox enforces DPoP (RFC 9449) per app and serves the System Log, over loopback HTTP.

Proofs here are built by hand with joserfc, independently of forwarder's client, so the
sandbox's rules are checked on their own.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey
from multidict import CIMultiDict

from forwarder.clock import FakeClock
from forwarder.okta.keys import SigningKey, generate_signing_key
from forwarder.sandbox import SandboxOrg, serve
from tests.harness import dpop_sandbox

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RISK = "okta.riskEvents.manage"
EVENTS = "/api/v1/risk/events/ip"
TOKEN = "/oauth2/v1/token"
LOGS = "/api/v1/logs"


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    text: str
    json: Any


def ath(token: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()


@dataclass
class Env:
    org: SandboxOrg
    clock: FakeClock
    base: str
    http: aiohttp.ClientSession
    key: SigningKey
    client_id: str
    dpop_key: ECKey

    def proof(
        self,
        *,
        url: str | None = None,
        method: str = "POST",
        nonce: str | None = None,
        token: str | None = None,
        key: ECKey | None = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        signer = key or self.dpop_key
        body: dict[str, Any] = {
            "htm": method,
            "htu": url or self.base + TOKEN,
            "iat": int(self.clock.time()),
            "jti": uuid.uuid4().hex,
        }
        if nonce is not None:
            body["nonce"] = nonce
        if token is not None:
            body["ath"] = ath(token)
        body.update(claims)
        head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.dpop_key.as_dict(private=False)}
        head.update(header or {})
        return jwt.encode(head, body, signer, algorithms=[str(head["alg"])])

    async def call(
        self, method: str, path: str, *, headers: Mapping[str, Any] | None = None, **kw: Any
    ) -> Reply:
        async with self.http.request(method, self.base + path, headers=headers, **kw) as resp:
            text = await resp.text()
            try:
                body = await resp.json(content_type=None) if text else None
            except ValueError:
                body = None
            return Reply(resp.status, resp.headers, text, body)

    async def token_reply(self, *proofs: str, client_id: str | None = None) -> Reply:
        now = int(self.clock.time())
        assertion = private_key_jwt_sign(
            self.key.key,
            client_id or self.client_id,
            self.base + TOKEN,
            alg=self.key.alg,
            header={"kid": self.key.kid},
            issued_at=now,
            expires_at=now + 300,
            claims={"jti": uuid.uuid4().hex},
        )
        form = {
            "grant_type": "client_credentials",
            "scope": RISK,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": str(assertion),
        }
        headers = CIMultiDict[str]()
        for p in proofs:
            headers.add("DPoP", p)
        return await self.call("POST", TOKEN, data=form, headers=headers)

    async def dpop_token(self) -> str:
        first = await self.token_reply(self.proof())
        assert first.status == 400
        assert first.json["error"] == "use_dpop_nonce"
        reply = await self.token_reply(self.proof(nonce=first.headers["DPoP-Nonce"]))
        assert reply.status == 200, reply.text
        assert reply.json["token_type"] == "DPoP"
        return str(reply.json["access_token"])

    async def send(self, scheme: str, token: str, *proofs: str) -> Reply:
        headers = CIMultiDict[str]({"Authorization": f"{scheme} {token}"})
        for p in proofs:
            headers.add("DPoP", p)
        body = [{"subjects": [{"ip": "203.0.113.9", "riskLevel": "HIGH"}]}]
        return await self.call("POST", EVENTS, json=body, headers=headers)

    async def logs(self, **params: str) -> Reply:
        headers = {"Authorization": f"SSWS {self.org.api_token}"}
        return await self.call("GET", LOGS, params=params, headers=headers)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock, org, key, client_id = dpop_sandbox()
    async with serve(org) as base, aiohttp.ClientSession() as http:
        yield Env(org, clock, base, http, key, client_id, ECKey.generate_key("P-256"))


# ---------------------------------------------------------------------- token endpoint


async def test_a_dpop_app_refuses_a_token_request_without_a_proof(env: Env) -> None:
    """No DPoP header: 400 invalid_dpop_proof, as Okta answers for a DPoP-required app."""
    reply = await env.token_reply()
    assert reply.status == 400
    assert reply.json == {
        "error": "invalid_dpop_proof",
        "error_description": "The DPoP proof JWT header is missing.",
    }


async def test_the_nonce_flow_then_a_dpop_token_bound_to_the_key(env: Env) -> None:
    """First proof: 400 use_dpop_nonce + DPoP-Nonce; with that nonce: token_type DPoP."""
    first = await env.token_reply(env.proof())
    assert first.status == 400
    assert first.json["error"] == "use_dpop_nonce"
    nonce = first.headers["DPoP-Nonce"]
    reply = await env.token_reply(env.proof(nonce=nonce))
    assert reply.status == 200
    assert reply.json["token_type"] == "DPoP"
    token = reply.json["access_token"]
    issued = env.org._auth_server.lookup(token, env.clock.time())
    assert issued is not None
    assert issued.jkt == env.dpop_key.thumbprint()


def _bad_proofs(env: Env, nonce: str) -> dict[str, tuple[str, str]]:
    """Proofs each breaking one rule, with the phrase the refusal must contain."""
    other = ECKey.generate_key("P-256")
    now = int(env.clock.time())
    return {
        "typ": (env.proof(nonce=nonce, header={"typ": "JWT"}), "'typ'"),
        "symmetric alg": (
            jwt.encode(
                {"typ": "dpop+jwt", "alg": "HS256", "jwk": env.dpop_key.as_dict(private=False)},
                {"htm": "POST", "htu": env.base + TOKEN, "iat": now, "jti": "x", "nonce": nonce},
                OctKey.import_key(b"0123456789abcdef0123456789abcdef"),
                algorithms=["HS256"],
            ),
            "asymmetric",
        ),
        "signature not by jwk": (env.proof(nonce=nonce, key=other), "signature"),
        "private jwk": (
            env.proof(nonce=nonce, header={"jwk": env.dpop_key.as_dict(private=True)}),
            "private",
        ),
        "htm": (env.proof(nonce=nonce, method="GET"), "'htm'"),
        "htu": (env.proof(nonce=nonce, url="https://proxy.example/oauth2/v1/token"), "'htu'"),
        "iat too old": (env.proof(nonce=nonce, iat=now - 301), "5 minutes"),
        "iat in future": (env.proof(nonce=nonce, iat=now + 30), "future"),
        "no jti": (env.proof(nonce=nonce, jti=""), "'jti'"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "typ",
        "symmetric alg",
        "signature not by jwk",
        "private jwk",
        "htm",
        "htu",
        "iat too old",
        "iat in future",
        "no jti",
    ],
)
async def test_a_proof_breaking_one_rule_is_invalid_dpop_proof(env: Env, case: str) -> None:
    """Each of Okta's proof rules is enforced at the token endpoint."""
    nonce = (await env.token_reply(env.proof())).headers["DPoP-Nonce"]
    proof, phrase = _bad_proofs(env, nonce)[case]
    reply = await env.token_reply(proof)
    assert reply.status == 400, reply.text
    assert reply.json["error"] == "invalid_dpop_proof"
    assert phrase in reply.json["error_description"]


async def test_a_proof_is_single_use(env: Env) -> None:
    """The same proof (same jti) twice: the second is refused as already used."""
    nonce = (await env.token_reply(env.proof())).headers["DPoP-Nonce"]
    proof = env.proof(nonce=nonce)
    assert (await env.token_reply(proof)).status == 200
    again = await env.token_reply(proof)
    assert again.status == 400
    assert "already been used" in again.json["error_description"]


async def test_two_dpop_headers_are_refused(env: Env) -> None:
    """Multiple DPoP headers: invalid_dpop_proof."""
    nonce = (await env.token_reply(env.proof())).headers["DPoP-Nonce"]
    reply = await env.token_reply(env.proof(nonce=nonce), env.proof(nonce=nonce))
    assert reply.status == 400
    assert "Multiple" in reply.json["error_description"]


async def test_a_rotated_nonce_is_asked_for_again(env: Env) -> None:
    """After the rotate fault the old nonce gets use_dpop_nonce with the new one."""
    old = (await env.token_reply(env.proof())).headers["DPoP-Nonce"]
    faults = await env.call(
        "POST",
        "/_sandbox/faults",
        json={"dpop_nonce": "rotate"},
        headers={"Authorization": f"SSWS {env.org.api_token}"},
    )
    assert faults.status == 200
    reply = await env.token_reply(env.proof(nonce=old))
    assert reply.status == 400
    assert reply.json["error"] == "use_dpop_nonce"
    assert reply.headers["DPoP-Nonce"] not in ("", old)


async def test_an_app_without_dpop_ignores_a_proof_and_issues_bearer(env: Env) -> None:
    """RFC 9449 §5: a server not binding tokens ignores the proof."""
    plain_key = generate_signing_key("ES256")
    client_id = env.org.register_client("plain", {"keys": [plain_key.public_jwk()]})
    env.org.grant(client_id)
    env.key = plain_key
    reply = await env.token_reply(env.proof(), client_id=client_id)
    assert reply.status == 200
    assert reply.json["token_type"] == "Bearer"


async def test_fault_values_are_checked(env: Env) -> None:
    """dpop_nonce must be "rotate" and dpop_resource_nonce a boolean."""
    reply = await env.call(
        "POST",
        "/_sandbox/faults",
        json={"dpop_nonce": "now", "dpop_resource_nonce": "yes"},
        headers={"Authorization": f"SSWS {env.org.api_token}"},
    )
    assert reply.status == 400
    causes = [c["errorSummary"] for c in reply.json["errorCauses"]]
    assert causes == [
        'dpop_nonce: must be "rotate"',
        "dpop_resource_nonce: must be true or false",
    ]


# ---------------------------------------------------------------------- events endpoint


async def test_a_dpop_token_with_a_fresh_proof_is_accepted(env: Env) -> None:
    """Authorization: DPoP + a proof with htm, htu = the events URL and ath: 202."""
    token = await env.dpop_token()
    reply = await env.send("DPoP", token, env.proof(url=env.base + EVENTS, token=token))
    assert reply.status == 202
    assert env.org.accepted_ips(env.client_id) == ["203.0.113.9"]


@pytest.mark.parametrize(
    ("case", "error", "phrase"),
    [
        ("bearer scheme", "invalid_request", "requires a DPoP proof"),
        ("no proof", "invalid_dpop_proof", "missing"),
        ("wrong ath", "invalid_dpop_proof", "'ath'"),
        ("no ath", "invalid_dpop_proof", "'ath'"),
        ("token url as htu", "invalid_dpop_proof", "'htu'"),
        ("another key", "invalid_dpop_proof", "cnf.jkt"),
        ("replayed proof", "invalid_dpop_proof", "already been used"),
    ],
)
async def test_events_call_dpop_mistakes_are_401_with_a_dpop_challenge(
    env: Env, case: str, error: str, phrase: str
) -> None:
    """Each mistake is refused with WWW-Authenticate: DPoP error=... and nothing accepted."""
    token = await env.dpop_token()
    url = env.base + EVENTS
    if case == "bearer scheme":
        reply = await env.send("Bearer", token)
    elif case == "no proof":
        reply = await env.send("DPoP", token)
    elif case == "wrong ath":
        reply = await env.send("DPoP", token, env.proof(url=url, token=token + "x"))
    elif case == "no ath":
        reply = await env.send("DPoP", token, env.proof(url=url))
    elif case == "token url as htu":
        reply = await env.send("DPoP", token, env.proof(token=token))
    elif case == "another key":
        other = ECKey.generate_key("P-256")
        proof = env.proof(
            url=url, token=token, key=other, header={"jwk": other.as_dict(private=False)}
        )
        reply = await env.send("DPoP", token, proof)
    else:
        proof = env.proof(url=url, token=token)
        assert (await env.send("DPoP", token, proof)).status == 202
        reply = await env.send("DPoP", token, proof)
    assert reply.status == 401
    challenge = reply.headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP ")
    assert f'error="{error}"' in challenge
    assert phrase in challenge
    assert len(env.org.accepted) == (1 if case == "replayed proof" else 0)


async def test_a_bearer_token_sent_as_dpop_is_not_dpop_bound(env: Env) -> None:
    """Authorization: DPoP with a Bearer token: 401 invalid_token 'not DPoP bound'."""
    plain_key = generate_signing_key("ES256")
    client_id = env.org.register_client("plain", {"keys": [plain_key.public_jwk()]})
    env.org.grant(client_id)
    env.org.set_provider(client_id, "Plain", provider_id=None)
    env.key = plain_key
    token = (await env.token_reply(client_id=client_id)).json["access_token"]
    reply = await env.send("DPoP", token, env.proof(url=env.base + EVENTS, token=token))
    assert reply.status == 401
    assert "not DPoP bound" in reply.headers["WWW-Authenticate"]


async def test_the_resource_nonce_switch_challenges_and_counts_the_call(env: Env) -> None:
    """With dpop_resource_nonce on: 401 use_dpop_nonce + DPoP-Nonce, counted in the window."""
    token = await env.dpop_token()
    env.org.dpop.resource_nonce = True
    url = env.base + EVENTS
    challenged = await env.send("DPoP", token, env.proof(url=url, token=token))
    assert challenged.status == 401
    assert 'error="use_dpop_nonce"' in challenged.headers["WWW-Authenticate"]
    assert challenged.headers["X-Rate-Limit-Remaining"] == "2"
    nonce = challenged.headers["DPoP-Nonce"]
    reply = await env.send("DPoP", token, env.proof(url=url, token=token, nonce=nonce))
    assert reply.status == 202
    assert reply.headers["X-Rate-Limit-Remaining"] == "1"


async def test_create_client_checks_dpop_bound_access_tokens(env: Env) -> None:
    """dpop_bound_access_tokens must be a boolean; true is kept in the app's metadata."""
    jwks = {"keys": [generate_signing_key("ES256").public_jwk()]}
    body = {
        "client_name": "x",
        "application_type": "service",
        "grant_types": ["client_credentials"],
        "response_types": ["token"],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": jwks,
    }
    headers = {"Authorization": f"SSWS {env.org.api_token}"}
    bad = await env.call(
        "POST",
        "/oauth2/v1/clients",
        json={**body, "dpop_bound_access_tokens": "yes"},
        headers=headers,
    )
    assert bad.status == 400
    assert bad.json["error"] == "invalid_client_metadata"
    good = await env.call(
        "POST",
        "/oauth2/v1/clients",
        json={**body, "dpop_bound_access_tokens": True},
        headers=headers,
    )
    assert good.status == 201
    assert good.json["dpop_bound_access_tokens"] is True


# ---------------------------------------------------------------------- System Log


async def _deliver(env: Env, count: int = 1) -> None:
    token = await env.dpop_token()
    for _ in range(count):
        reply = await env.send("DPoP", token, env.proof(url=env.base + EVENTS, token=token))
        assert reply.status == 202
        env.clock.advance(21)  # three calls a minute


async def test_an_accepted_call_writes_a_consume_event_in_logevent_shape(env: Env) -> None:
    """One security.risk.signal.consume per accepted call, naming app and provider."""
    await _deliver(env)
    reply = await env.logs(filter='eventType eq "security.risk.signal.consume"')
    assert reply.status == 200
    [event] = reply.json
    for field in ("uuid", "published", "eventType", "version", "severity", "displayMessage"):
        assert event[field]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["published"])
    assert event["outcome"] == {"result": "SUCCESS", "reason": None}
    assert event["actor"]["id"] == env.client_id
    [target] = event["target"]
    assert target["type"] == "RiskProvider"
    assert target["displayName"] == "Partner"
    assert event["debugContext"]["debugData"]["subjectCount"] == "1"


async def test_logs_filter_since_until_and_limit_with_link_pagination(env: Env) -> None:
    """limit=2 over five events: pages follow rel=next; since/until bound the range."""
    start = env.clock.time()
    await _deliver(env, 5)
    until = "2100-01-01T00:00:00Z"
    reply = await env.logs(limit="2", until=until)
    seen = [e["uuid"] for e in reply.json]
    pages = 1
    while 'rel="next"' in reply.headers["Link"]:
        nxt = re.search(r'<([^>]+)>; rel="next"', reply.headers["Link"])
        assert nxt is not None
        query = {k: v[0] for k, v in parse_qs(urlsplit(nxt.group(1)).query).items()}
        reply = await env.logs(**query)
        seen += [e["uuid"] for e in reply.json]
        pages += 1
    assert pages == 3
    assert len(seen) == len(set(seen)) == 5
    assert 'rel="self"' in reply.headers["Link"]
    late = await env.logs(since=_iso(start + 3 * 21), until=until)
    assert len(late.json) == 2
    early = await env.logs(since=_iso(start), until=_iso(start + 2 * 21))
    assert len(early.json) == 2
    other = await env.logs(filter='eventType eq "user.session.start"', until=until)
    assert other.json == []


def _iso(epoch: float) -> str:
    from forwarder.sandbox.syslog import iso_time  # noqa: PLC0415

    return iso_time(epoch)


async def test_a_polling_query_always_links_to_the_next_poll(env: Env) -> None:
    """Without until (Okta's polling mode) there is always a next link, past the last event."""
    await _deliver(env, 1)
    reply = await env.logs()
    assert len(reply.json) == 1
    nxt = re.search(r'<([^>]+)>; rel="next"', reply.headers["Link"])
    assert nxt is not None
    query = {k: v[0] for k, v in parse_qs(urlsplit(nxt.group(1)).query).items()}
    assert (await env.logs(**query)).json == []
    await _deliver(env, 1)
    assert len((await env.logs(**query)).json) == 1


async def test_provider_action_none_writes_no_consume_event(env: Env) -> None:
    """Okta ignores a provider whose action is none: 202, but nothing in the System Log."""
    env.org.set_provider(env.client_id, "Partner", action="none")
    await _deliver(env)
    assert (await env.logs()).json == []


async def test_logs_refuse_bad_queries_and_missing_credentials(env: Env) -> None:
    """A bad filter is E0000031, a bad limit or time E0000001, no credentials E0000011."""
    assert (await env.logs(filter="eventType sw 'x'")).json["errorCode"] == "E0000031"
    assert (await env.logs(limit="0")).json["errorCode"] == "E0000001"
    assert (await env.logs(since="yesterday")).json["errorCode"] == "E0000001"
    reply = await env.call("GET", LOGS)
    assert reply.status == 401
    assert reply.json["errorCode"] == "E0000011"
