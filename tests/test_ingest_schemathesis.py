"""Schemathesis against a live daemon: every answer matches the served OpenAPI document.

A real ``forwarder run`` subprocess (bearer tokens on, a sandbox org as its Okta, real
SQLite) is fuzzed over loopback from the document it serves at ``/v1/openapi.json``,
with every Schemathesis check enabled: no 5xx, status codes, content types, headers and
bodies as documented, schema-valid data accepted, invalid data refused, auth enforced,
unsupported methods answered 405, and a response-time bound (no request hangs).

Two rules of the API cannot be written in JSON Schema and are stated in the document's
descriptions instead: a ``timestamp`` must lie in [now - max_age_s, now + 5 min], and
``provider`` must name a configured provider. For cases Schemathesis generates as
*valid*, the test puts those two fields inside the rules (keeping their presence and
null-ness); invalid cases are sent exactly as generated. Bodies are compressed as the
case's ``Content-Encoding`` header (a documented parameter) says, so the codings are
fuzzed too: a valid case really is gzip when it says gzip.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from forwarder.ingest import MAX_DETAILS
from forwarder.ingest_openapi import CONTENT_CODINGS, openapi_document
from forwarder.okta.admin import AdminClient
from forwarder.okta.keys import generate_signing_key, write_private_key
from forwarder.signals import format_ms
from tests.procs import Proc, free_port, sandbox

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TOKEN = "schemathesis-ingest-token-0123456789"
PROVIDER = "acme"
#: The response-time bound: any answer slower than this is a failure (nothing may hang).
MAX_RESPONSE_S = 5.0
MAX_BODY = 65_536
#: Cases per operation; FORWARDER_FUZZ_EXAMPLES=5000 fuzzes longer by hand.
EXAMPLES = int(os.environ.get("FORWARDER_FUZZ_EXAMPLES", "200"))


def _compressed(ctx: schemathesis.SerializationContext, body: bytes) -> bytes:
    """The body compressed as the case's Content-Encoding header lists, in order, when it
    names only documented codings; otherwise (a negative case) the plain body."""
    headers = ctx.case.headers
    header = str(headers.get("Content-Encoding", "")) if headers else ""
    codings = [c.strip().lower() for c in header.split(",") if c.strip()]
    if not set(codings) <= set(CONTENT_CODINGS):
        return body
    for coding in codings:
        if coding in ("gzip", "x-gzip"):
            body = gzip.compress(body)
        elif coding == "deflate":
            body = zlib.compress(body)
    return body


def _json_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


@schemathesis.serializer("application/json")
def _json(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    return _compressed(ctx, _json_bytes(value))


@schemathesis.serializer("application/x-ndjson", "application/ndjson", "application/jsonl")
def _ndjson(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """The document describes an NDJSON body as the array of its lines' objects."""
    items = value if isinstance(value, list) else [value]
    return _compressed(ctx, b"".join(_json_bytes(item) + b"\n" for item in items))


async def _provision(org: str, api_token: str, tmp: Path) -> str:
    key = generate_signing_key("ES256")
    write_private_key(tmp / f"{PROVIDER}.jwk.json", key, force=True)
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, org, api_token)
        client_id = str((await admin.create_service_app(PROVIDER, key.public_jwk()))["client_id"])
        await admin.grant_scope(client_id)
        default = (await admin.list_providers())[0]
        await admin.update_provider(
            default["id"], name=PROVIDER, client_id=client_id, action="log_only"
        )
    return client_id


@pytest.fixture(scope="module")
def live_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `forwarder run` subprocess with bearer tokens, against a sandbox org; its ingest URL."""
    tmp = tmp_path_factory.mktemp("schemathesis")
    with sandbox(tmp, window_s=60) as (org, api_token):
        client_id = asyncio.run(_provision(org, api_token, tmp))
        (tmp / "ingest-tokens").write_text(f"{TOKEN}\n")
        ingest, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        config = tmp / "forwarder.toml"
        config.write_text(
            f"""
[ingest]
listen = "{ingest}"
tokens_file = "ingest-tokens"
max_body_bytes = {MAX_BODY}
[metrics]
listen = "{metrics}"
[store]
path = "data/forwarder.db"
[log]
format = "json"
[dispatch]
shutdown_grace_s = 2
[[providers]]
name = "{PROVIDER}"
org_url = "{org}"
client_id = "{client_id}"
private_key_file = "{PROVIDER}.jwk.json"
"""
        )
        proc = Proc(tmp / "daemon.log", "run", "--config", str(config))
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.popen.poll() is None, f"daemon exited: {proc.output}"
                assert time.monotonic() < deadline, f"daemon never ready: {proc.output}"
                try:
                    if requests.get(f"http://{metrics}/readyz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                time.sleep(0.05)
            yield f"http://{ingest}"
            assert proc.popen.poll() is None, f"the daemon died under fuzzing: {proc.output}"
            assert "Traceback" not in proc.output, proc.output
        finally:
            proc.stop()


#: What the live daemon below must serve (its config: tokens on, 64 KiB bodies, default age).
DOCUMENT = openapi_document(
    max_body_bytes=MAX_BODY, max_age_s=86_400.0, auth=True, max_details=MAX_DETAILS
)

# Schemathesis's lazy ``from_fixture`` loader does not work with pytest 9.2 (it sets
# ``Node._nodeid``, which pytest renamed); so the schema is built from the same function
# the daemon uses, and the test proves the live daemon serves exactly this document.
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {
            "request-timeout": MAX_RESPONSE_S * 5,
            "checks": {"enabled": True, "max_response_time": MAX_RESPONSE_S},
            "generation": {"mode": "all", "max-examples": EXAMPLES, "database": "none"},
            "auth": {"openapi": {"bearer": {"bearer": TOKEN}}},
        }
    ),
)


def test_live_daemon_serves_the_document_without_auth(live_daemon: str) -> None:
    """``GET /v1/openapi.json`` needs no token and is the document the fuzzing uses."""
    resp = requests.get(f"{live_daemon}/v1/openapi.json", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == DOCUMENT


def _within_rules(item: Any, now_ms: int, rnd: random.Random) -> Any:
    """A valid item with its time and provider put inside the rules JSON Schema can't say."""
    if not isinstance(item, dict):
        return item
    item = dict(item)
    if item.get("timestamp") is not None:
        item["timestamp"] = format_ms(now_ms - rnd.randrange(0, 3_600_000))
    if item.get("expiresAt") is not None:
        item["expiresAt"] = format_ms(now_ms + rnd.randrange(3_600_000, 86_400_000))
    provider = item.get("provider")
    if isinstance(provider, str):
        item["provider"] = PROVIDER
    elif isinstance(provider, list):
        item["provider"] = [PROVIDER] * len(provider)
    return item


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),  # generation speed is not what is tested
)
def test_live_daemon_conforms_to_its_openapi_document(
    case: schemathesis.Case[Any], live_daemon: str
) -> None:
    """Every answer of the live daemon is documented; no 5xx; nothing hangs."""
    if case.meta is not None and case.meta.generation.mode.is_positive and case.body:
        rnd = random.Random(repr(case.body))
        now_ms = int(time.time() * 1000)
        if isinstance(case.body, list):
            case.body = [_within_rules(item, now_ms, rnd) for item in case.body]
        else:
            case.body = _within_rules(case.body, now_ms, rnd)
    case.call_and_validate(base_url=live_daemon)
