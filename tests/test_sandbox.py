"""The sandbox Okta org over real loopback HTTP, with time driven by a FakeClock."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import OctKey

from forwarder.clock import FakeClock
from forwarder.okta.keys import SigningKey, generate_signing_key, private_jwk_json, public_jwk
from forwarder.sandbox import SandboxOrg, serve
from forwarder.sandbox.assertion import JtiCache
from forwarder.sandbox.validation import format_timestamp
from forwarder.sandbox.window import SlidingWindow

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RISK = "okta.riskEvents.manage"
EVENTS = "/api/v1/risk/events/ip"
TOKEN = "/oauth2/v1/token"
RATE_HEADERS = ("X-Rate-Limit-Limit", "X-Rate-Limit-Remaining", "X-Rate-Limit-Reset")


@dataclass
class Reply:
    """What came back: status, headers, raw text."""

    status: int
    headers: Mapping[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    def causes(self) -> list[str]:
        return [c["errorSummary"] for c in self.json()["errorCauses"]]


def subject(ip: str = "203.0.113.7", level: str = "HIGH", **extra: Any) -> dict[str, Any]:
    return {"ip": ip, "riskLevel": level, **extra}


def event(*subjects: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"subjects": list(subjects) or [subject()], **extra}


class Sandbox:
    """A served org plus a provisioned risk-provider client, and request helpers."""

    def __init__(
        self,
        org: SandboxOrg,
        clock: FakeClock,
        base: str,
        http: aiohttp.ClientSession,
        key: SigningKey,
        client_id: str,
    ) -> None:
        self.org = org
        self.clock = clock
        self.base = base
        self.http = http
        self.key = key
        self.client_id = client_id

    def assertion(
        self,
        *,
        key: SigningKey | None = None,
        client_id: str | None = None,
        aud: str | None = None,
        exp_in: int = 300,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        key = key or self.key
        now = int(self.clock.time())
        return str(
            private_key_jwt_sign(
                key.key,
                client_id or self.client_id,
                aud or self.base + TOKEN,
                alg=key.alg,
                header={"kid": key.kid} if header is None else header,
                issued_at=now,
                expires_at=now + exp_in,
                claims={"jti": str(uuid.uuid4()), **claims},
            )
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        async with self.http.request(
            method, self.base + path, json=json_body, data=data, headers=headers
        ) as resp:
            return Reply(resp.status, dict(resp.headers), await resp.text())

    async def token_reply(self, *, assertion: str | None = None, scope: str = RISK) -> Reply:
        form = {
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion or self.assertion(),
        }
        return await self.call("POST", TOKEN, data=form)

    async def token(
        self, *, scope: str = RISK, key: SigningKey | None = None, client_id: str | None = None
    ) -> str:
        assertion = self.assertion(key=key, client_id=client_id)
        reply = await self.token_reply(assertion=assertion, scope=scope)
        assert reply.status == 200, reply.text
        return str(reply.json()["access_token"])

    async def send(self, body: Any, *, token: str) -> Reply:
        return await self.call(
            "POST", EVENTS, json_body=body, headers={"Authorization": f"Bearer {token}"}
        )

    async def admin(self, method: str, path: str, json_body: Any = None) -> Reply:
        headers = {"Authorization": f"SSWS {self.org.api_token}"}
        return await self.call(method, path, json_body=json_body, headers=headers)

    def add_provider_client(self, name: str) -> tuple[str, SigningKey]:
        key = generate_signing_key("ES256")
        client_id = self.org.register_client(name, {"keys": [public_jwk(key)]})
        self.org.grant(client_id)
        return client_id, key


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def org(clock: FakeClock) -> SandboxOrg:
    return SandboxOrg(clock=clock)


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return generate_signing_key("RS256")


@contextlib.asynccontextmanager
async def provisioned(org: SandboxOrg, clock: FakeClock) -> AsyncIterator[Sandbox]:
    """``org`` served, with one client registered, granted and configured as provider."""
    key = generate_signing_key("ES256")
    client_id = org.register_client("Risk provider", {"keys": [public_jwk(key)]})
    org.grant(client_id)
    org.set_provider(client_id, "Risk-Partner-X")
    async with serve(org) as base, aiohttp.ClientSession() as http:
        yield Sandbox(org, clock, base, http, key, client_id)


@pytest.fixture
async def sb(org: SandboxOrg, clock: FakeClock) -> AsyncIterator[Sandbox]:
    async with provisioned(org, clock) as sandbox:
        yield sandbox


# ---------------------------------------------------------------------- serve


async def test_serve_yields_base_url_without_trailing_slash(org: SandboxOrg) -> None:
    """serve() yields http://127.0.0.1:<port> with the bound port."""
    async with serve(org) as base:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base)
        assert not base.endswith(":0")


# ---------------------------------------------------------------------- token endpoint


async def test_token_request_succeeds(sb: Sandbox) -> None:
    """A valid client-credentials request gets a Bearer token for the granted scope."""
    reply = await sb.token_reply()
    assert reply.status == 200
    body = reply.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == RISK
    assert len(body["access_token"]) >= 40
    assert reply.headers["Cache-Control"] == "no-store"
    record = sb.org.token_requests[-1]
    assert (record.client_id, record.status, record.error) == (sb.client_id, 200, None)


async def test_token_with_rsa_key(sb: Sandbox, rsa_key: SigningKey) -> None:
    """An RS256 assertion verifies against a registered RSA key."""
    client_id = sb.org.register_client("rsa", {"keys": [public_jwk(rsa_key)]})
    sb.org.grant(client_id)
    reply = await sb.token_reply(assertion=sb.assertion(key=rsa_key, client_id=client_id))
    assert reply.status == 200


async def test_token_without_kid_tries_each_registered_key(sb: Sandbox) -> None:
    """An assertion without kid is verified against every key of the client."""
    other = generate_signing_key("ES384")
    client_id = sb.org.register_client(
        "two keys", {"keys": [public_jwk(sb.key), public_jwk(other)]}
    )
    sb.org.grant(client_id)
    assertion = sb.assertion(key=other, client_id=client_id, header={})
    assert (await sb.token_reply(assertion=assertion)).status == 200


async def _invalid_client(sb: Sandbox, assertion: str) -> str:
    reply = await sb.token_reply(assertion=assertion)
    assert reply.status == 401, reply.text
    body = reply.json()
    assert body["error"] == "invalid_client"
    return str(body["error_description"])


async def test_token_rejects_signature_by_wrong_key(sb: Sandbox) -> None:
    """A signature by another key under the registered kid is invalid_client."""
    stranger = generate_signing_key("ES256")
    assertion = sb.assertion(key=stranger, header={"kid": sb.key.kid})
    assert "signature" in await _invalid_client(sb, assertion)


async def test_token_rejects_unknown_kid(sb: Sandbox) -> None:
    """A kid not in the client's JWKS is invalid_client."""
    description = await _invalid_client(sb, sb.assertion(header={"kid": "not-registered"}))
    assert description == "client_assertion JWT kid is invalid"


async def test_token_rejects_wrong_audience(sb: Sandbox) -> None:
    """aud must be the token endpoint as invoked."""
    assertion = sb.assertion(aud="https://example.okta.com/oauth2/v1/token")
    assert "audience claim" in await _invalid_client(sb, assertion)


async def test_token_rejects_iss_different_from_sub(sb: Sandbox) -> None:
    """iss and sub must both be the client_id."""
    assert "iss and sub" in await _invalid_client(sb, sb.assertion(iss="0oaSomeoneElse"))


async def test_token_rejects_expired_assertion(sb: Sandbox) -> None:
    """An assertion whose exp has passed is invalid_client."""
    assertion = sb.assertion(exp_in=60)
    sb.clock.advance(61)
    assert "expired" in await _invalid_client(sb, assertion)


async def test_token_rejects_exp_more_than_an_hour_ahead(sb: Sandbox) -> None:
    """exp more than one hour after now is invalid_client."""
    description = await _invalid_client(sb, sb.assertion(exp_in=3601))
    assert description == "The client_assertion token has an expiration too far into the future."


async def test_token_rejects_replayed_jti(sb: Sandbox) -> None:
    """A jti can be used once."""
    assertion = sb.assertion()
    assert (await sb.token_reply(assertion=assertion)).status == 200
    description = await _invalid_client(sb, assertion)
    assert description == "The client_assertion token has already been used."


async def test_token_rejects_unknown_client(sb: Sandbox) -> None:
    """A sub naming no registered client is invalid_client."""
    await _invalid_client(sb, sb.assertion(client_id="0oaUnknownClient1234"))
    assert sb.org.token_requests[-1].client_id == "0oaUnknownClient1234"


async def test_token_rejects_hmac_algorithm(sb: Sandbox) -> None:
    """HS256 (client_secret_jwt) is not accepted for private_key_jwt."""
    now = int(sb.clock.time())
    claims = {"iss": sb.client_id, "sub": sb.client_id, "aud": sb.base + TOKEN, "exp": now + 60}
    assertion = jwt.encode({"alg": "HS256"}, claims, OctKey.generate_key(256), algorithms=["HS256"])
    description = await _invalid_client(sb, assertion)
    assert description == "The client_assertion signature algorithm is invalid"


async def test_token_rejects_iat_in_the_future(sb: Sandbox) -> None:
    """iat after the org's clock is invalid_client."""
    assert "issued at" in await _invalid_client(sb, sb.assertion(iat=int(sb.clock.time()) + 30))


async def test_token_rejects_malformed_assertion(sb: Sandbox) -> None:
    """A client_assertion that is not a JWS is invalid_client."""
    await _invalid_client(sb, "not.a.jwt")


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": "soon"},
        {"exp": 1_800_000_100.5},
        {"exp": True},
        {"iat": "now"},
        {"jti": ["x"]},
        {"jti": ""},
        {"sub": ["0oa"]},
    ],
    ids=["exp-string", "exp-float", "exp-bool", "iat-string", "jti-list", "jti-empty", "sub-list"],
)
async def test_token_rejects_ill_typed_claims(sb: Sandbox, claims: dict[str, Any]) -> None:
    """A signed assertion with ill-typed claims is invalid_client."""
    now = int(sb.clock.time())
    payload = {
        "iss": sb.client_id,
        "sub": sb.client_id,
        "aud": sb.base + TOKEN,
        "iat": now,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    } | claims
    header = {"alg": sb.key.alg, "kid": sb.key.kid}
    await _invalid_client(sb, jwt.encode(header, payload, sb.key.key, algorithms=[sb.key.alg]))


@pytest.mark.parametrize(
    "header",
    [{"alg": "none"}, {"alg": ["ES256"]}, {"alg": "ES256", "kid": ["x"]}],
    ids=["alg-none", "alg-list", "kid-list"],
)
async def test_token_rejects_ill_formed_headers(sb: Sandbox, header: dict[str, Any]) -> None:
    """An assertion header with a bad alg or kid is invalid_client."""

    def b64(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"iss": sb.client_id, "sub": sb.client_id, "aud": sb.base + TOKEN}
    await _invalid_client(sb, f"{b64(header)}.{b64(claims)}.c2ln")


async def test_token_requires_scope(sb: Sandbox) -> None:
    """An empty scope is invalid_scope "No scopes were requested."."""
    reply = await sb.token_reply(scope="")
    assert reply.status == 400
    assert reply.json() == {
        "error": "invalid_scope",
        "error_description": "No scopes were requested.",
    }


async def test_token_rejects_unknown_scope(sb: Sandbox) -> None:
    """A scope Okta does not know is invalid_scope naming it."""
    reply = await sb.token_reply(scope=f"{RISK} openid")
    assert reply.status == 400
    assert reply.json()["error"] == "invalid_scope"
    assert "[openid]" in reply.json()["error_description"]


async def test_token_rejects_ungranted_scope(sb: Sandbox) -> None:
    """A known scope not granted to the app is consent_required."""
    reply = await sb.token_reply(scope="okta.riskProviders.read")
    assert reply.status == 400
    assert reply.json() == {
        "error": "consent_required",
        "error_description": "You are not allowed any of the requested scopes.",
    }


async def test_token_rejects_other_grant_type(sb: Sandbox) -> None:
    """Only client_credentials is supported."""
    reply = await sb.call("POST", TOKEN, data={"grant_type": "password", "scope": RISK})
    assert reply.status == 400
    assert reply.json()["error"] == "unsupported_grant_type"


async def test_token_requires_client_credentials(sb: Sandbox) -> None:
    """No client_assertion at all is 401 invalid_client "No client credentials found"."""
    reply = await sb.call("POST", TOKEN, data={"grant_type": "client_credentials", "scope": RISK})
    assert reply.status == 401
    assert reply.json() == {
        "error": "invalid_client",
        "error_description": "No client credentials found",
    }


async def test_token_rejects_wrong_assertion_type(sb: Sandbox) -> None:
    """A client_assertion_type other than jwt-bearer is invalid_request."""
    form = {
        "grant_type": "client_credentials",
        "scope": RISK,
        "client_assertion_type": "urn:example:saml",
        "client_assertion": sb.assertion(),
    }
    reply = await sb.call("POST", TOKEN, data=form)
    assert reply.status == 400
    assert reply.json()["error"] == "invalid_request"


async def test_token_expires_after_its_lifetime(sb: Sandbox) -> None:
    """A token stops working token_lifetime_s clock seconds after issue."""
    token = await sb.token()
    sb.clock.advance(3600)
    reply = await sb.send([event()], token=token)
    assert reply.status == 401
    assert reply.json()["errorCode"] == "E0000011"


async def test_issued_tokens_lists_every_token_ever_issued(sb: Sandbox) -> None:
    """issued_tokens() keeps revoked tokens too, in issue order."""
    first = await sb.token()
    sb.org.revoke_tokens()
    second = await sb.token()
    assert sb.org.issued_tokens() == [first, second]


def test_jti_cache_forgets_expired_entries() -> None:
    """Used jtis are remembered until their exp, then dropped."""
    cache = JtiCache()
    assert cache.use("c", "a", exp=100.0, now=0.0)
    assert not cache.use("c", "a", exp=100.0, now=50.0)
    assert cache.use("c", "b", exp=300.0, now=150.0)
    assert len(cache) == 1


# ---------------------------------------------------------------------- events: success


async def test_events_accepted_and_recorded(sb: Sandbox) -> None:
    """A valid call gets 202 with an empty body and is recorded with its IPs."""
    token = await sb.token()
    body = [event(subject("203.0.113.7"), subject("2001:db8::1", "MEDIUM", message="Stuffing"))]
    reply = await sb.send(body, token=token)
    assert reply.status == 202
    assert reply.text == ""
    [call] = sb.org.accepted
    assert (call.client_id, call.body, call.at) == (sb.client_id, body, sb.clock.time())
    assert sb.org.accepted_ips() == ["203.0.113.7", "2001:db8::1"]
    assert sb.org.accepted_ips(sb.client_id) == ["203.0.113.7", "2001:db8::1"]
    assert sb.org.event_calls[-1].status == 202


async def test_events_accepts_timestamps_in_okta_format(sb: Sandbox) -> None:
    """timestamp and a future expiresAt in yyyy-MM-ddTHH:mm:ss.SSSZ are accepted."""
    now = sb.clock.time()
    body = [event(timestamp=format_timestamp(now), expiresAt=format_timestamp(now + 3600))]
    assert (await sb.send(body, token=await sb.token())).status == 202


async def test_events_202_carries_rate_headers(sb: Sandbox) -> None:
    """A 202 carries Limit, Remaining and an absolute Reset."""
    reply = await sb.send([event()], token=await sb.token())
    assert reply.headers["X-Rate-Limit-Limit"] == "3"
    assert reply.headers["X-Rate-Limit-Remaining"] == "2"
    assert reply.headers["X-Rate-Limit-Reset"] == str(math.ceil(sb.clock.time() + 60))


async def test_date_header_follows_the_clock(sb: Sandbox) -> None:
    """The Date header is the org's clock, not the wall clock."""
    token = await sb.token()
    sb.clock.advance(1000.5)
    reply = await sb.send([event()], token=token)
    date = parsedate_to_datetime(reply.headers["Date"]).timestamp()
    assert date == int(sb.clock.time())


# ---------------------------------------------------------------------- events: validation


def _bad_subject(**fields: Any) -> Callable[[float], list[Any]]:
    """A body whose events[1].subjects[2] is replaced by ``fields``."""

    def build(now: float) -> list[Any]:
        return [event(), event(subject(), subject(), fields)]

    return build


def _bad_event(**fields: Any) -> Callable[[float], list[Any]]:
    """A body whose events[1] carries ``fields`` on top of a valid subject."""

    def build(now: float) -> list[Any]:
        return [event(), {"subjects": [subject()], **fields}]

    return build


def _stamp(now: float, delta: float) -> str:
    return format_timestamp(now + delta)


SCHEMA_CASES: list[tuple[str, Callable[[float], Any], str]] = [
    ("body-not-array", lambda now: event(), "events: "),
    ("no-events", lambda now: [], "events: must contain at least 1 event"),
    ("event-not-object", lambda now: [event(), "x"], "events[1]: "),
    ("unknown-event-key", _bad_event(score=5), "events[1].score: unknown property"),
    ("missing-subjects", lambda now: [event(), {}], "events[1].subjects: is required"),
    ("subjects-not-array", lambda now: [event(), {"subjects": {}}], "events[1].subjects: "),
    ("no-subjects", lambda now: [event(), {"subjects": []}], "events[1].subjects: must contain"),
    ("subject-not-object", lambda now: [event(), {"subjects": [1]}], "events[1].subjects[0]: "),
    (
        "unknown-subject-key",
        _bad_subject(ip="1.2.3.4", riskLevel="HIGH", score=9),
        "events[1].subjects[2].score: unknown property",
    ),
    ("missing-ip", _bad_subject(riskLevel="HIGH"), "events[1].subjects[2].ip: is required"),
    ("ip-not-string", _bad_subject(ip=123, riskLevel="HIGH"), "events[1].subjects[2].ip: "),
    ("ip-invalid", _bad_subject(ip="1.2.3.256", riskLevel="HIGH"), "events[1].subjects[2].ip: "),
    ("ip-zone-id", _bad_subject(ip="fe80::1%eth0", riskLevel="LOW"), "events[1].subjects[2].ip"),
    (
        "missing-risk-level",
        _bad_subject(ip="1.2.3.4"),
        "events[1].subjects[2].riskLevel: is required",
    ),
    (
        "lowercase-risk-level",
        _bad_subject(ip="1.2.3.4", riskLevel="high"),
        "events[1].subjects[2].riskLevel: must be one of HIGH, LOW, MEDIUM",
    ),
    (
        "risk-level-not-string",
        _bad_subject(ip="1.2.3.4", riskLevel=["HIGH"]),
        "events[1].subjects[2].riskLevel: must be one of HIGH, LOW, MEDIUM",
    ),
    (
        "message-not-string",
        _bad_subject(ip="1.2.3.4", riskLevel="HIGH", message=5),
        "events[1].subjects[2].message: must be a string",
    ),
    (
        "message-too-long",
        _bad_subject(ip="1.2.3.4", riskLevel="HIGH", message="a" * 513),
        "events[1].subjects[2].message: must be at most 512 characters",
    ),
    (
        "timestamp-without-millis",
        _bad_event(timestamp="2027-01-15T08:00:00Z"),
        "events[1].timestamp: must be in the format",
    ),
    (
        "timestamp-not-a-date",
        _bad_event(timestamp="2027-02-30T08:00:00.000Z"),
        "events[1].timestamp: is not a real date",
    ),
    ("timestamp-not-string", _bad_event(timestamp=1), "events[1].timestamp: must be a string"),
    (
        "expires-before-timestamp",
        lambda now: [event(timestamp=_stamp(now, 600), expiresAt=_stamp(now, 300))],
        "events[0].expiresAt: must be after timestamp",
    ),
    (
        "expires-in-the-past",
        lambda now: [event(expiresAt=_stamp(now, -1))],
        "events[0].expiresAt: must be in the future",
    ),
]


@pytest.mark.parametrize(
    ("build", "expected"),
    [(build, expected) for _, build, expected in SCHEMA_CASES],
    ids=[case_id for case_id, _, _ in SCHEMA_CASES],
)
async def test_schema_violation_is_400_naming_the_path(
    sb: Sandbox, build: Callable[[float], Any], expected: str
) -> None:
    """Each schema violation is 400 E0000001 with a cause naming where it is."""
    reply = await sb.send(build(sb.clock.time()), token=await sb.token())
    assert reply.status == 400, reply.text
    body = reply.json()
    assert body["errorCode"] == "E0000001"
    assert body["errorSummary"].startswith("Api validation failed: ")
    assert any(c.startswith(expected) for c in reply.causes()), reply.causes()
    assert not sb.org.accepted


async def test_21_events_rejected(sb: Sandbox) -> None:
    """More than 20 events in one call is 400."""
    reply = await sb.send([event()] * 21, token=await sb.token())
    assert reply.status == 400
    assert reply.causes() == ["events: must contain at most 20 events (got 21)"]


async def test_51_subjects_rejected(sb: Sandbox) -> None:
    """More than 50 subjects in one event is 400."""
    subjects = [subject(f"198.51.100.{i}") for i in range(51)]
    reply = await sb.send([event(*subjects)], token=await sb.token())
    assert reply.status == 400
    assert reply.causes() == ["events[0].subjects: must contain at most 50 subjects (got 51)"]


async def test_message_with_forbidden_character_rejected(sb: Sandbox) -> None:
    """A message outside ^[a-zA-Z0-9 .\\-_]*$ (here a comma) is 400."""
    reply = await sb.send([event(subject(message="stuffing, from tor"))], token=await sb.token())
    assert reply.status == 400
    assert reply.causes()[0].startswith("events[0].subjects[0].message: must match")


async def test_every_problem_is_listed(sb: Sandbox) -> None:
    """All problems of a body are reported, not just the first."""
    body = [event(subject(ip="nope", level="low")), event(subject(message="ü"))]
    reply = await sb.send(body, token=await sb.token())
    assert [c.split(":")[0] for c in reply.causes()] == [
        "events[0].subjects[0].ip",
        "events[0].subjects[0].riskLevel",
        "events[1].subjects[0].message",
    ]


async def test_malformed_json_is_e0000003(sb: Sandbox) -> None:
    """A body that is not JSON is 400 E0000003."""
    headers = {"Authorization": f"Bearer {await sb.token()}", "Content-Type": "application/json"}
    reply = await sb.call("POST", EVENTS, data=b'[{"subjects": [', headers=headers)
    assert reply.status == 400
    assert reply.json()["errorCode"] == "E0000003"
    assert reply.json()["errorSummary"] == "The request body was not well-formed."


async def test_wrong_content_type_is_415(sb: Sandbox) -> None:
    """A JSON body sent as text/plain is 415."""
    headers = {"Authorization": f"Bearer {await sb.token()}", "Content-Type": "text/plain"}
    reply = await sb.call("POST", EVENTS, data=json.dumps([event()]), headers=headers)
    assert reply.status == 415
    assert set(RATE_HEADERS) <= set(reply.headers)


# ---------------------------------------------------------------------- events: auth


async def test_missing_token_is_401(sb: Sandbox) -> None:
    """No Authorization header is 401 E0000011 with rate headers."""
    reply = await sb.call("POST", EVENTS, json_body=[event()])
    assert reply.status == 401
    body = reply.json()
    assert (body["errorCode"], body["errorSummary"]) == ("E0000011", "Invalid token provided")
    assert set(RATE_HEADERS) <= set(reply.headers)
    assert sb.org.event_calls[-1].client_id is None


async def test_unknown_token_is_401(sb: Sandbox) -> None:
    """A Bearer token the org never issued is 401."""
    assert (await sb.send([event()], token="forged")).status == 401


async def test_revoked_token_is_401(sb: Sandbox) -> None:
    """revoke_tokens() makes issued tokens fail with 401."""
    token = await sb.token()
    sb.org.revoke_tokens()
    reply = await sb.send([event()], token=token)
    assert reply.status == 401
    assert reply.json()["errorCode"] == "E0000011"


async def test_revoke_tokens_of_one_client_spares_others(sb: Sandbox) -> None:
    """revoke_tokens(client_id) revokes only that client's tokens."""
    other_id, other_key = sb.add_provider_client("other")
    sb.org.set_provider(other_id, "Risk-Partner-Y", provider_id=None)
    mine, theirs = await sb.token(), await sb.token(key=other_key, client_id=other_id)
    sb.org.revoke_tokens(other_id)
    assert (await sb.send([event()], token=mine)).status == 202
    assert (await sb.send([event()], token=theirs)).status == 401


async def test_token_without_scope_is_403_with_challenge(sb: Sandbox) -> None:
    """A token lacking okta.riskEvents.manage is 403, empty body, WWW-Authenticate."""
    sb.org.grant(sb.client_id, "okta.riskProviders.read")
    reply = await sb.send([event()], token=await sb.token(scope="okta.riskProviders.read"))
    assert reply.status == 403
    assert reply.text == ""
    assert reply.headers["WWW-Authenticate"] == (
        f'Bearer authorization_uri="{sb.base}/oauth2/v1/authorize", realm="{sb.base}", '
        'scope="okta.riskEvents.manage", error="insufficient_scope", '
        'error_description="The access token provided does not contain the required scopes.", '
        'resource="/api/v1/risk/events/ip"'
    )
    assert set(RATE_HEADERS) <= set(reply.headers)


async def test_unconfigured_client_is_403_e0000006(sb: Sandbox) -> None:
    """A client that no risk provider names is 403 E0000006."""
    other_id, other_key = sb.add_provider_client("not a provider")
    reply = await sb.send([event()], token=await sb.token(key=other_key, client_id=other_id))
    assert reply.status == 403
    body = reply.json()
    assert body["errorCode"] == "E0000006"
    assert body["errorSummary"] == "You do not have permission to perform the requested action"
    assert other_id in reply.causes()[0]


# ---------------------------------------------------------------------- events: rate window


async def test_fourth_call_in_window_is_429(sb: Sandbox) -> None:
    """Three calls pass; the fourth within 60 s is 429 E0000047 with the three headers."""
    token = await sb.token()
    first_at = sb.clock.time()
    for _ in range(3):
        assert (await sb.send([event()], token=token)).status == 202
        sb.clock.advance(5)
    reply = await sb.send([event()], token=token)
    assert reply.status == 429
    body = reply.json()
    assert set(body) == {"errorCode", "errorSummary", "errorLink", "errorId", "errorCauses"}
    assert body["errorCode"] == body["errorLink"] == "E0000047"
    assert body["errorSummary"] == "API call exceeded rate limit due to too many requests."
    assert body["errorCauses"] == []
    assert isinstance(body["errorId"], str)
    assert body["errorId"]
    assert reply.headers["X-Rate-Limit-Limit"] == "3"
    assert reply.headers["X-Rate-Limit-Remaining"] == "0"
    # The refused call occupies the window too: a slot frees when the second call leaves.
    assert reply.headers["X-Rate-Limit-Reset"] == str(math.ceil(first_at + 5 + 60))


async def test_calls_pass_again_after_the_window(sb: Sandbox) -> None:
    """Once the FakeClock moves past the window, calls are accepted again."""
    token = await sb.token()
    for _ in range(4):
        await sb.send([event()], token=token)
    sb.clock.advance(61)
    assert (await sb.send([event()], token=token)).status == 202


async def test_waiting_until_reset_is_enough(sb: Sandbox) -> None:
    """After 429s, a client that waits until X-Rate-Limit-Reset gets a 202."""
    token = await sb.token()
    for _ in range(3):
        await sb.send([event()], token=token)
        sb.clock.advance(1)
    for _ in range(3):
        reply = await sb.send([event()], token=token)
        assert reply.status == 429
    wait = (
        int(reply.headers["X-Rate-Limit-Reset"])
        - parsedate_to_datetime(reply.headers["Date"]).timestamp()
    )
    sb.clock.advance(wait + 1)
    assert (await sb.send([event()], token=token)).status == 202


async def test_rejected_calls_count_in_the_window(sb: Sandbox) -> None:
    """A call answered 400 still uses the provider's budget."""
    token = await sb.token()
    for _ in range(3):
        assert (await sb.send([], token=token)).status == 400
    assert (await sb.send([event()], token=token)).status == 429


async def test_unauthenticated_calls_use_no_provider_budget(sb: Sandbox) -> None:
    """401 answers do not count against any provider."""
    for _ in range(5):
        assert (await sb.call("POST", EVENTS, json_body=[event()])).status == 401
    token = await sb.token()
    for _ in range(3):
        assert (await sb.send([event()], token=token)).status == 202


async def test_each_provider_has_its_own_window(sb: Sandbox) -> None:
    """Two providers each get their three calls."""
    other_id, other_key = sb.add_provider_client("second")
    sb.org.set_provider(other_id, "Risk-Partner-Y")
    mine, theirs = await sb.token(), await sb.token(key=other_key, client_id=other_id)
    for _ in range(3):
        assert (await sb.send([event()], token=mine)).status == 202
    for _ in range(3):
        assert (await sb.send([event()], token=theirs)).status == 202
    assert sb.org.accepted[0].provider_id != sb.org.accepted[-1].provider_id


def test_window_reset_accounts_for_refused_calls() -> None:
    """Reset points at the moment one more call fits, even when 429s overfill the window."""
    window = SlidingWindow(limit=2, window_s=60)
    for t in (0.0, 10.0, 20.0, 30.0):
        window.hit(t)
    assert window.reset_at(30.0) == 80.0
    assert window.headers(30.0)["X-Rate-Limit-Remaining"] == "0"
    assert window.count(80.0) == 1


# ---------------------------------------------------------------------- faults


async def test_fail_events_answers_injected_statuses(sb: Sandbox) -> None:
    """fail_events(503, 500): the next two calls get those, with rate headers; then 202."""
    sb.org.fail_events(503, 500)
    token = await sb.token()
    first = await sb.send([event()], token=token)
    second = await sb.send([event()], token=token)
    third = await sb.send([event()], token=token)
    assert (first.status, second.status, third.status) == (503, 500, 202)
    assert first.headers["Content-Type"].startswith("text/plain")
    assert second.json()["errorCode"] == "E0000009"
    assert first.headers["X-Rate-Limit-Remaining"] == "2"
    assert len(sb.org.accepted) == 1


async def test_injected_faults_count_in_the_window(sb: Sandbox) -> None:
    """Faulted calls use the provider's budget."""
    sb.org.fail_events(500, 500, 500)
    token = await sb.token()
    for _ in range(3):
        await sb.send([event()], token=token)
    assert (await sb.send([event()], token=token)).status == 429


async def test_fail_tokens_answers_injected_statuses(sb: Sandbox) -> None:
    """fail_tokens(500, 503): the next two token requests fail; the third succeeds."""
    sb.org.fail_tokens(500, 503)
    first = await sb.token_reply()
    second = await sb.token_reply()
    third = await sb.token_reply()
    assert (first.status, second.status, third.status) == (500, 503, 200)
    assert [r.status for r in sb.org.token_requests] == [500, 503, 200]
    assert sb.org.token_requests[0].client_id == sb.client_id


async def test_events_delay_slows_answers(sb: Sandbox) -> None:
    """events_delay_s holds each events answer for that many real seconds."""
    token = await sb.token()
    sb.org.events_delay_s = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await sb.send([event()], token=token)
    assert reply.status == 202
    assert loop.time() - started >= 0.2


async def test_faults_endpoint_applies_faults(sb: Sandbox) -> None:
    """POST /_sandbox/faults queues faults and revokes tokens."""
    token = await sb.token()
    reply = await sb.admin(
        "POST", "/_sandbox/faults", {"events": [502], "tokens": [500], "revoke_tokens": True}
    )
    assert reply.status == 200
    assert reply.json() == {
        "events": [502],
        "tokens": [500],
        "events_delay_s": 0.0,
        "dpop_resource_nonce": False,
    }
    assert (await sb.send([event()], token=token)).status == 401
    assert (await sb.token_reply()).status == 500


async def test_faults_endpoint_rejects_bad_values(sb: Sandbox) -> None:
    """Invalid fault requests are 400 listing each problem, and nothing is applied."""
    reply = await sb.admin(
        "POST", "/_sandbox/faults", {"events": [200], "events_delay_s": -1, "x": 1}
    )
    assert reply.status == 400
    assert len(reply.causes()) == 3
    assert sb.org.faults()["events"] == []


# ---------------------------------------------------------------------- admin: clients


def _client_body(jwks: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return {
        "client_name": "Risk Provider Example",
        "application_type": "service",
        "grant_types": ["client_credentials"],
        "response_types": ["token"],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": jwks,
        **overrides,
    }


async def test_create_client_returns_201_with_client_id(sb: Sandbox) -> None:
    """POST /oauth2/v1/clients echoes the fields and adds client_id and client_id_issued_at."""
    body = _client_body({"keys": [public_jwk(sb.key)]})
    reply = await sb.admin("POST", "/oauth2/v1/clients", body)
    assert reply.status == 201
    created = reply.json()
    assert re.fullmatch(r"0oa[A-Za-z0-9]{17}", created["client_id"])
    assert created["client_id_issued_at"] == int(sb.clock.time())
    assert {k: created[k] for k in body} == body


async def _metadata_error(sb: Sandbox, body: Any) -> str:
    reply = await sb.admin("POST", "/oauth2/v1/clients", body)
    assert reply.status == 400, reply.text
    assert reply.json()["error"] == "invalid_client_metadata"
    return str(reply.json()["error_description"])


async def test_create_client_rejects_private_key(sb: Sandbox) -> None:
    """A JWK carrying its private part 'd' is refused."""
    private = json.loads(private_jwk_json(sb.key))
    assert "private key material" in await _metadata_error(sb, _client_body({"keys": [private]}))


async def test_create_client_rejects_duplicate_kid(sb: Sandbox) -> None:
    """Every key in the JWKS needs its own kid."""
    other = public_jwk(generate_signing_key("ES256")) | {"kid": sb.key.kid}
    jwks = {"keys": [public_jwk(sb.key), other]}
    assert "unique" in await _metadata_error(sb, _client_body(jwks))


async def test_create_client_rejects_short_rsa_key(sb: Sandbox) -> None:
    """An RSA key under 2048 bits is refused."""
    numbers = rsa.generate_private_key(65537, 1024).public_key().public_numbers()

    def b64(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    jwk = {"kty": "RSA", "kid": "short", "n": b64(numbers.n), "e": b64(numbers.e)}
    await _metadata_error(sb, _client_body({"keys": [jwk]}))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"client_name": ""}, "client_name"),
        ({"application_type": "web"}, "application_type"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "token_endpoint_auth_method"),
        ({"grant_types": ["authorization_code"]}, "grant_types"),
        ({"jwks": {"keys": []}}, "jwks.keys"),
    ],
)
async def test_create_client_rejects_non_risk_provider_shapes(
    sb: Sandbox, overrides: dict[str, Any], field: str
) -> None:
    """Anything but a private_key_jwt service app with keys is invalid_client_metadata."""
    body = _client_body({"keys": [public_jwk(sb.key)]}) | overrides
    assert (await _metadata_error(sb, body)).startswith(field)


@pytest.mark.parametrize(
    "jwks",
    [
        None,
        {"keys": "x"},
        {"keys": [None]},
        {"keys": [{"kty": "RSA", "kid": "a"}]},
        {"keys": [{"kty": "RSA", "kid": "a", "n": 5, "e": "AQAB"}]},
        {"keys": [{"kty": "EC", "kid": "a", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]},
        {"keys": [{"kty": "EC", "kid": "a", "crv": "secp256k1", "x": "AAAA", "y": "AAAA"}]},
        {"keys": [{"kty": "EC", "kid": "a", "crv": ["P-256"], "x": "AAAA", "y": "AAAA"}]},
        {"keys": [{"kty": "oct", "kid": "a", "k": "c2VjcmV0"}]},
        {"keys": [{"kty": "OKP", "kid": "a", "crv": "Ed25519", "x": "AAAA"}]},
        {"keys": [{"kty": "RSA", "kid": ["a"], "n": "AQAB", "e": "AQAB"}]},
    ],
)
async def test_create_client_rejects_unusable_keys(sb: Sandbox, jwks: Any) -> None:
    """Malformed, unsupported or mismatched JWKs are invalid_client_metadata, never a 500."""
    await _metadata_error(sb, _client_body(jwks))


@pytest.mark.parametrize(
    "change",
    [{"use": "enc"}, {"alg": "RS256"}, {"alg": "ES384"}],
    ids=["encryption-key", "rsa-alg-on-ec-key", "wrong-curve-alg"],
)
async def test_create_client_rejects_key_not_for_signing(
    sb: Sandbox, change: dict[str, str]
) -> None:
    """A key whose use or alg cannot sign ES256 assertions is refused."""
    await _metadata_error(sb, _client_body({"keys": [public_jwk(sb.key) | change]}))


# ---------------------------------------------------------------------- admin: grants


async def test_grant_returns_consent_grant_object(sb: Sandbox) -> None:
    """POST grants answers 201 with an OAuth2ScopeConsentGrant."""
    path = f"/api/v1/apps/{sb.client_id}/grants"
    reply = await sb.admin("POST", path, {"scopeId": "okta.riskProviders.read", "issuer": sb.base})
    assert reply.status == 201
    grant = reply.json()
    assert re.fullmatch(r"oag[A-Za-z0-9]{17}", grant["id"])
    assert grant["status"] == "ACTIVE"
    assert grant["source"] == "ADMIN"
    assert (grant["clientId"], grant["issuer"]) == (sb.client_id, sb.base)
    assert grant["_embedded"]["scope"]["id"] == grant["scopeId"] == "okta.riskProviders.read"
    assert grant["_links"]["self"]["href"] == f"{sb.base}{path}/{grant['id']}"


async def test_grants_are_listed(sb: Sandbox) -> None:
    """GET grants lists the app's grants."""
    reply = await sb.admin("GET", f"/api/v1/apps/{sb.client_id}/grants")
    assert reply.status == 200
    assert [g["scopeId"] for g in reply.json()] == [RISK]


async def test_duplicate_grant_is_400(sb: Sandbox) -> None:
    """Granting an already granted scope is 400 E0000001."""
    path = f"/api/v1/apps/{sb.client_id}/grants"
    reply = await sb.admin("POST", path, {"scopeId": RISK, "issuer": sb.base})
    assert reply.status == 400
    assert reply.json()["errorCode"] == "E0000001"
    assert reply.causes() == [f"scopeId: A consent for scope {RISK} already exists."]


async def test_grant_on_unknown_app_is_404(sb: Sandbox) -> None:
    """An unknown appId is 404 E0000007 naming the AppInstance."""
    reply = await sb.admin(
        "POST", "/api/v1/apps/0oaNope/grants", {"scopeId": RISK, "issuer": sb.base}
    )
    assert reply.status == 404
    body = reply.json()
    assert body["errorCode"] == "E0000007"
    assert body["errorSummary"] == "Not found: Resource not found: 0oaNope (AppInstance)"


@pytest.mark.parametrize(
    "body",
    [
        {"scopeId": RISK, "issuer": "https://other.okta.com"},
        {"scopeId": "okta.nothing.manage", "issuer": "{base}"},
        {"issuer": "{base}"},
        {"scopeId": "okta.riskProviders.read"},
    ],
    ids=["wrong-issuer", "unknown-scope", "no-scope", "no-issuer"],
)
async def test_invalid_grant_is_400(sb: Sandbox, body: dict[str, str]) -> None:
    """A grant with a wrong issuer or a missing/unknown field is 400 E0000001."""
    body = {k: v.replace("{base}", sb.base) for k, v in body.items()}
    reply = await sb.admin("POST", f"/api/v1/apps/{sb.client_id}/grants", body)
    assert reply.status == 400
    assert reply.json()["errorCode"] == "E0000001"


# ---------------------------------------------------------------------- admin: providers


async def test_fresh_org_has_one_default_provider(org: SandboxOrg) -> None:
    """A new org lists exactly Okta's default provider."""
    async with serve(org) as base, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"SSWS {org.api_token}"}
        async with http.get(f"{base}/api/v1/risk/providers", headers=headers) as resp:
            providers = await resp.json()
    [default] = providers
    assert (default["name"], default["clientId"], default["action"]) == (
        "Default ",
        "null",
        "log_only",
    )
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", default["created"])
    assert default["_links"]["self"]["href"] == f"{base}/api/v1/risk/providers/{default['id']}"


async def test_get_provider_by_id(sb: Sandbox) -> None:
    """GET /api/v1/risk/providers/{id} returns that provider."""
    [provider] = (await sb.admin("GET", "/api/v1/risk/providers")).json()
    reply = await sb.admin("GET", f"/api/v1/risk/providers/{provider['id']}")
    assert reply.status == 200
    assert reply.json() == provider


async def test_put_provider_replaces_it(sb: Sandbox) -> None:
    """PUT replaces name, clientId and action and bumps lastUpdated."""
    [provider] = (await sb.admin("GET", "/api/v1/risk/providers")).json()
    sb.clock.advance(3600)
    body = {"name": "Risk-Partner-Y", "clientId": sb.client_id, "action": "enforce_and_log"}
    reply = await sb.admin("PUT", f"/api/v1/risk/providers/{provider['id']}", body)
    assert reply.status == 200
    updated = reply.json()
    assert {k: updated[k] for k in body} == body
    assert updated["created"] == provider["created"] != updated["lastUpdated"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x" * 51, "clientId": "0oa1", "action": "log_only"}, "name"),
        ({"name": "n", "action": "log_only"}, "clientId"),
        ({"name": "n", "clientId": "0oa1", "action": "block"}, "action"),
        ({"name": "n", "clientId": "0oa1"}, "action"),
    ],
    ids=["long-name", "no-client-id", "bad-action", "no-action"],
)
async def test_put_provider_validates_body(sb: Sandbox, body: dict[str, str], field: str) -> None:
    """PUT requires name <= 50 chars, clientId and a known action."""
    [provider] = (await sb.admin("GET", "/api/v1/risk/providers")).json()
    reply = await sb.admin("PUT", f"/api/v1/risk/providers/{provider['id']}", body)
    assert reply.status == 400
    assert reply.causes()[0].startswith(f"{field}: ")


async def test_create_providers_up_to_three(sb: Sandbox) -> None:
    """POST creates providers (201) until the org has three, then 400."""
    for name in ("Second", "Third"):
        body = {"name": name, "clientId": "0oaOther", "action": "none"}
        reply = await sb.admin("POST", "/api/v1/risk/providers", body)
        assert reply.status == 201
        assert re.fullmatch(r"00rp[A-Za-z0-9]{13}", reply.json()["id"])
    body = {"name": "Fourth", "clientId": "0oaOther", "action": "none"}
    reply = await sb.admin("POST", "/api/v1/risk/providers", body)
    assert reply.status == 400
    assert "three" in reply.causes()[0]


async def test_delete_provider(sb: Sandbox) -> None:
    """DELETE answers 204 and the provider is gone (404 afterwards)."""
    [provider] = (await sb.admin("GET", "/api/v1/risk/providers")).json()
    path = f"/api/v1/risk/providers/{provider['id']}"
    reply = await sb.admin("DELETE", path)
    assert (reply.status, reply.text) == (204, "")
    assert (await sb.admin("GET", path)).status == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_unknown_provider_is_404(sb: Sandbox, method: str) -> None:
    """An unknown provider id is 404 E0000007."""
    body = {"name": "n", "clientId": "c", "action": "none"} if method == "PUT" else None
    reply = await sb.admin(method, "/api/v1/risk/providers/00rpNope", body)
    assert reply.status == 404
    assert reply.json()["errorCode"] == "E0000007"


# ---------------------------------------------------------------------- admin: auth, routing


ADMIN_ROUTES = [
    ("POST", "/oauth2/v1/clients"),
    ("GET", "/api/v1/apps/0oaX/grants"),
    ("POST", "/api/v1/apps/0oaX/grants"),
    ("GET", "/api/v1/risk/providers"),
    ("POST", "/api/v1/risk/providers"),
    ("GET", "/api/v1/risk/providers/00rpX"),
    ("PUT", "/api/v1/risk/providers/00rpX"),
    ("DELETE", "/api/v1/risk/providers/00rpX"),
    ("GET", "/_sandbox/accepted"),
    ("GET", "/_sandbox/calls"),
    ("GET", "/_sandbox/tokens"),
    ("POST", "/_sandbox/faults"),
    ("GET", "/_sandbox/state"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize("authorization", [None, "SSWS wrong-token", "Bearer nope"])
async def test_admin_endpoints_require_ssws(
    sb: Sandbox, method: str, path: str, authorization: str | None
) -> None:
    """Admin and inspection endpoints answer 401 E0000011 without the SSWS token."""
    headers = {"Authorization": authorization} if authorization else {}
    reply = await sb.call(method, path, json_body={}, headers=headers)
    assert reply.status == 401
    assert reply.json()["errorCode"] == "E0000011"


async def test_admin_accepts_token_with_the_scope(sb: Sandbox) -> None:
    """A Bearer token with okta.riskProviders.read may list providers."""
    sb.org.grant(sb.client_id, "okta.riskProviders.read")
    token = await sb.token(scope="okta.riskProviders.read")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await sb.call("GET", "/api/v1/risk/providers", headers=headers)).status == 200


async def test_admin_token_without_the_scope_is_403(sb: Sandbox) -> None:
    """A Bearer token lacking the admin scope is 403 with an insufficient_scope challenge."""
    headers = {"Authorization": f"Bearer {await sb.token()}"}
    reply = await sb.call("GET", "/api/v1/risk/providers", headers=headers)
    assert reply.status == 403
    assert 'scope="okta.riskProviders.read"' in reply.headers["WWW-Authenticate"]


async def test_unknown_route_is_404_json(sb: Sandbox) -> None:
    """Unknown paths answer Okta's E0000007 JSON."""
    reply = await sb.call("GET", "/api/v1/users")
    assert reply.status == 404
    assert reply.json()["errorCode"] == "E0000007"


async def test_wrong_method_is_405_json(sb: Sandbox) -> None:
    """A known path with the wrong method answers E0000022."""
    reply = await sb.call("GET", EVENTS)
    assert reply.status == 405
    assert reply.json()["errorCode"] == "E0000022"


# ---------------------------------------------------------------------- inspection


async def test_inspection_endpoints_report_calls(sb: Sandbox) -> None:
    """/_sandbox/accepted, /calls and /tokens serve the records."""
    token = await sb.token()
    await sb.send([event()], token=token)
    await sb.call("POST", EVENTS, json_body=[event()])
    accepted = (await sb.admin("GET", f"/_sandbox/accepted?client_id={sb.client_id}")).json()
    assert [a["body"] for a in accepted] == [[event()]]
    assert (await sb.admin("GET", "/_sandbox/accepted?client_id=0oaNobody")).json() == []
    calls = (await sb.admin("GET", "/_sandbox/calls")).json()
    assert [(c["client_id"], c["status"]) for c in calls] == [(sb.client_id, 202), (None, 401)]
    tokens = (await sb.admin("GET", "/_sandbox/tokens")).json()
    assert [(t["client_id"], t["status"], t["error"]) for t in tokens] == [
        (sb.client_id, 200, None)
    ]


async def test_state_endpoint_hides_keys(sb: Sandbox) -> None:
    """/_sandbox/state summarises providers, clients (kids only) and counts."""
    state = (await sb.admin("GET", "/_sandbox/state")).json()
    [client] = state["clients"]
    assert client["kids"] == [sb.key.kid]
    assert client["scopes"] == [RISK]
    assert "jwks" not in client
    assert state["providers"][0]["clientId"] == sb.client_id
    assert state["counts"]["accepted_calls"] == 0


# ---------------------------------------------------------------------- end to end


async def test_provisioning_over_http_then_sending(sb: Sandbox) -> None:
    """Register, grant and configure over the admin API, then get a token and send."""
    key = generate_signing_key("ES256")
    created = await sb.admin(
        "POST", "/oauth2/v1/clients", _client_body({"keys": [public_jwk(key)]})
    )
    client_id = created.json()["client_id"]
    grant = {"scopeId": RISK, "issuer": sb.base}
    assert (await sb.admin("POST", f"/api/v1/apps/{client_id}/grants", grant)).status == 201
    provider = {"name": "Second", "clientId": client_id, "action": "enforce_and_log"}
    assert (await sb.admin("POST", "/api/v1/risk/providers", provider)).status == 201
    reply = await sb.token_reply(assertion=sb.assertion(key=key, client_id=client_id))
    token = reply.json()["access_token"]
    assert (await sb.send([event(subject("192.0.2.1"))], token=token)).status == 202
    assert sb.org.accepted_ips(client_id) == ["192.0.2.1"]


# ---------------------------------------------------------------------- robustness

GARBAGE_BODIES: list[tuple[str, bytes]] = [
    ("application/json", b"{"),
    ("application/json", b"\xff\xfe\x00"),
    ("application/json", b"[" * 50_000),
    ("application/json", b"9" * 5_000),
    ("application/json", b"NaN"),
    ("application/json", b"1e999999"),
    ("application/json", b'{"keys": "x", "jwks": {"keys": [{"kty": "RSA", "n": 5}]}}'),
    ("application/json", b'[{"subjects": [{"ip": null, "riskLevel": {}}]}]'),
    ("application/json", b'{"name": ["x"], "clientId": {}, "action": 1, "scopeId": []}'),
    ("application/x-www-form-urlencoded", b"%ff%fe=%00&&=&grant_type=client_credentials"),
    ("application/x-www-form-urlencoded", b"a=1&" * 200),
    ("multipart/form-data; boundary=zz", b"--zz\r\nbroken"),
    ("text/plain", b"\x00\x01"),
]
GARBAGE_PATHS = [
    ("POST", TOKEN),
    ("POST", EVENTS),
    ("POST", "/oauth2/v1/clients"),
    ("POST", "/api/v1/apps/{client_id}/grants"),
    ("POST", "/api/v1/risk/providers"),
    ("PUT", "/api/v1/risk/providers/{provider_id}"),
    ("POST", "/_sandbox/faults"),
]


async def test_garbage_never_gets_a_500(clock: FakeClock) -> None:
    """Malformed bodies, headers and assertions on every endpoint get a 4xx."""
    # A large budget, so that every garbage body reaches validation instead of a 429.
    org = SandboxOrg(clock=clock, calls_per_minute=10_000)
    async with provisioned(org, clock) as sb:
        await _throw_garbage(sb)


async def _throw_garbage(sb: Sandbox) -> None:
    token = await sb.token()
    [provider] = sb.org.list_providers()
    statuses: list[tuple[str, int]] = []
    for method, template in GARBAGE_PATHS:
        path = template.format(client_id=sb.client_id, provider_id=provider["id"])
        auth = f"Bearer {token}" if path == EVENTS else f"SSWS {sb.org.api_token}"
        for content_type, body in GARBAGE_BODIES:
            headers = {"Content-Type": content_type, "Authorization": auth}
            reply = await sb.call(method, path, data=body, headers=headers)
            statuses.append((f"{method} {path} {body[:20]!r}", reply.status))
    for authorization in ("Bearer", "SSWS", "Basic Zm9vOmJhcg==", "Bearer " + "x" * 5000):
        reply = await sb.call(
            "POST", EVENTS, json_body=[event()], headers={"Authorization": authorization}
        )
        statuses.append((authorization[:20], reply.status))
    for assertion in ("a.b.c", "e30.e30.", "eyJhbGciOiJub25lIn0.e30.", "." * 3000):
        reply = await sb.token_reply(assertion=assertion)
        statuses.append((assertion[:20], reply.status))
    assert [s for s in statuses if not 400 <= s[1] < 500] == []


async def test_oversized_events_body_is_413_with_rate_headers(sb: Sandbox) -> None:
    """A body over the size limit is a 4xx that still carries the rate headers."""
    headers = {"Authorization": f"Bearer {await sb.token()}", "Content-Type": "application/json"}
    reply = await sb.call("POST", EVENTS, data=io.BytesIO(b" " * (2 << 20)), headers=headers)
    assert reply.status == 413
    assert set(RATE_HEADERS) <= set(reply.headers)
