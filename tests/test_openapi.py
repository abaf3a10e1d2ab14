"""The ingest API's OpenAPI document against the code: routes, limits, and the validator.

The document (``forwarder/ingest_openapi.py``) is built from the validator's constants;
these tests prove it says what the code does: the live app's routes are exactly the
documented operations, the limits are the configured ones, the document is served
without auth, and for any item the JSON Schema and ``parse_items`` give the same verdict.
"""

from __future__ import annotations

import ast
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from forwarder import ingest as ingest_module
from forwarder.bodies import SUPPORTED_CODINGS, UnsupportedCoding, decode_body
from forwarder.clock import FakeClock
from forwarder.ingest import MAX_DETAILS, IngestApi
from forwarder.ingest_openapi import (
    CONTENT_CODINGS,
    JSON_MEDIA_TYPE,
    NDJSON_MEDIA_TYPES,
    content_encoding_pattern,
    risk_level_pattern,
)
from forwarder.serving import serve
from forwarder.signals import (
    FIELDS,
    MAX_EXPIRY_AHEAD_MS,
    MAX_FUTURE_SKEW_MS,
    MAX_MESSAGE_CHARS,
    RiskLevel,
    parse_items,
)
from forwarder.store.sqlite import SqliteStore
from tests.strategies import NOW_MS, PROVIDERS, near_valid_items, valid_items


def _ingest(store: Any = None, *, tokens: tuple[str, ...] = ("t",)) -> IngestApi:
    return IngestApi(
        store=store,
        providers=PROVIDERS,
        clock=FakeClock(start=NOW_MS / 1000),
        tokens=tokens,
        max_body_bytes=12_345,
        max_age_s=3_600,
    )


def _signal_validator(doc: dict[str, Any]) -> Any:
    schema = {"$ref": "#/components/schemas/Signal", "components": doc["components"]}
    return jsonschema_rs.validator_for(schema, validate_formats=True)


def test_routes_of_the_app_are_the_documented_operations() -> None:
    """Every route the ingest app serves is documented, and every operation is served."""
    ingest = _ingest()
    served = {
        (route.method, route.resource.canonical)
        for route in ingest.app().router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method.upper(), path)
        for path, operations in ingest.openapi()["paths"].items()
        for method in operations
    }
    assert served == documented


def _statuses_answered_by_ingest() -> set[int]:
    """Every status forwarder/ingest.py answers with: ``_error(N, ...)`` and ``status=N``."""
    tree = ast.parse(Path(ingest_module.__file__).read_text())
    found: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", getattr(node.func, "attr", ""))
        values = [kw.value for kw in node.keywords if kw.arg == "status"]
        if name == "_error" and node.args:
            values.append(node.args[0])
        found |= {v.value for v in values if isinstance(v, ast.Constant) and type(v.value) is int}
    return found


def test_every_status_the_handler_answers_is_documented() -> None:
    """A new answer in ingest.py cannot go undocumented (401 is there when tokens are)."""
    statuses = _statuses_answered_by_ingest()
    assert {202, 400, 401, 408, 413, 415, 503} <= statuses  # the scan sees the handler
    documented = {int(c) for c in _ingest().openapi()["paths"]["/v1/signals"]["post"]["responses"]}
    assert statuses == documented


def test_the_document_states_the_validators_rules_and_the_configured_limits() -> None:
    doc = _ingest().openapi()
    assert doc["openapi"].startswith("3.1")
    signal = doc["components"]["schemas"]["Signal"]
    assert tuple(signal["properties"]) == FIELDS
    assert signal["required"] == ["ip", "riskLevel"]
    assert signal["additionalProperties"] is False
    props = signal["properties"]
    assert props["riskLevel"]["pattern"] == risk_level_pattern()
    assert props["message"]["x-storedMaxLength"] == MAX_MESSAGE_CHARS
    assert props["timestamp"]["x-maxFutureSkewSeconds"] * 1000 == MAX_FUTURE_SKEW_MS
    assert props["timestamp"]["x-maxAgeSeconds"] == 3_600
    assert props["expiresAt"]["x-maxAheadSeconds"] * 1000 == MAX_EXPIRY_AHEAD_MS
    post = doc["paths"]["/v1/signals"]["post"]
    assert set(post["requestBody"]["content"]) == {JSON_MEDIA_TYPE, *NDJSON_MEDIA_TYPES}
    assert "12345" in post["responses"]["413"]["description"]
    assert all(coding in post["description"] for coding in SUPPORTED_CODINGS)
    assert set(post["responses"]) == {"202", "400", "401", "408", "413", "415", "503"}
    assert post["security"] == [{"bearer": []}]
    assert doc["paths"]["/v1/openapi.json"]["get"]["security"] == []
    error = doc["components"]["schemas"]["Error"]
    assert error["properties"]["details"]["maxItems"] == MAX_DETAILS


@pytest.mark.parametrize("tokens", [("t",), ()])
def test_the_document_is_valid_openapi_3_1(tokens: tuple[str, ...]) -> None:
    """Valid against the OpenAPI 3.1 meta-schema (the copy Schemathesis ships and uses)."""
    doc = _ingest(tokens=tokens).openapi()
    errors = [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    assert not errors
    assert not OPENAPI_31_VALIDATOR.is_valid({**doc, "paths": {"/x": {"get": {"responses": 1}}}})


def test_without_tokens_the_document_asks_for_no_auth() -> None:
    doc = _ingest(tokens=()).openapi()
    post = doc["paths"]["/v1/signals"]["post"]
    assert post["security"] == []
    assert "401" not in post["responses"]
    assert "securitySchemes" not in doc["components"]


def test_the_risk_level_pattern_is_any_ascii_case_of_the_levels() -> None:
    pattern = re.compile(risk_level_pattern())
    for level in RiskLevel:
        for spelling in (level.name, level.name.lower(), level.name.capitalize(), "hIgH"):
            if spelling.upper() == level.name or spelling == "hIgH":
                assert pattern.fullmatch(spelling), spelling
    for wrong in ("", "LOWEST", "CRITICAL", "ＨＩＧＨ", "HIGH "):
        assert not pattern.fullmatch(wrong), wrong


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, IngestApi]]:
    async with SqliteStore(tmp_path / "f.db") as store:
        ingest = _ingest(store)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        async with serve(ingest.app(), sock):
            yield f"http://127.0.0.1:{port}", ingest


async def test_the_document_is_served_without_auth(served: tuple[str, IngestApi]) -> None:
    url, ingest = served
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v1/openapi.json") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            assert await resp.json() == ingest.openapi()
        async with session.post(f"{url}/v1/signals", json=[]) as resp:
            assert resp.status == 401  # the signals themselves still need the token


def _tolerated(item: Any) -> Any:
    """The item as the document reads it: surrounding whitespace of ip and riskLevel is
    ignored (the descriptions say so; JSON Schema formats cannot)."""
    if not isinstance(item, dict):
        return item
    out = dict(item)
    for field in ("ip", "riskLevel"):
        if isinstance(out.get(field), str):
            out[field] = out[field].strip()
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(item=valid_items() | near_valid_items())
def test_the_document_and_the_validator_agree_on_every_item(item: Any) -> None:
    """For valid and mutated items, the JSON Schema accepts exactly what ingest accepts,
    but for the one rule it cannot express here: a provider name must be configured.
    (Generated times are inside ingest's bounds or not times at all; the bounds are in
    the descriptions and tested at their edges in test_signals.py.)"""
    doc = _ingest().openapi()
    schema_ok = _signal_validator(doc).is_valid(_tolerated(item))
    _, problems = parse_items([item], now_ms=NOW_MS, providers=PROVIDERS, max_age_ms=86_400_000)
    if schema_ok and problems and all("unknown provider" in p.message for p in problems):
        return  # a well-formed name that is not configured: the description's rule
    assert schema_ok == (not problems), (item, problems)


_OK = {"ip": "192.0.2.1", "riskLevel": "HIGH"}
_TABLE: list[tuple[dict[str, Any], bool]] = [
    (_OK, True),
    ({**_OK, "riskLevel": "low"}, True),
    ({**_OK, "riskLevel": "Medium"}, True),
    ({**_OK, "riskLevel": "CRITICAL"}, False),
    ({**_OK, "riskLevel": "hıgh"}, False),  # str.upper() would fold the dotless i
    ({**_OK, "riskLevel": 3}, False),
    ({"riskLevel": "LOW"}, False),
    ({"ip": "192.0.2.1"}, False),
    ({**_OK, "ip": "2001:DB8::1"}, True),
    ({**_OK, "ip": "::ffff:192.0.2.1"}, True),
    ({**_OK, "ip": "1.2.3"}, False),
    ({**_OK, "ip": "01.2.3.4"}, False),
    ({**_OK, "ip": "256.1.1.1"}, False),
    ({**_OK, "ip": "１.2.3.4"}, False),  # fullwidth digit: finding 1
    ({**_OK, "ip": "198.51.100.\u0664"}, False),  # Arabic-Indic digit: finding 1
    ({**_OK, "ip": "fe80::1%eth0"}, False),
    ({**_OK, "ip": 3232235777}, False),
    ({**_OK, "message": None}, True),
    ({**_OK, "message": "é ✓ " * 300}, True),  # never refused for its text or length
    ({**_OK, "message": 5}, False),
    ({**_OK, "timestamp": None, "expiresAt": None, "provider": None}, True),
    ({**_OK, "timestamp": "2027-01-15T08:00:00Z"}, True),
    ({**_OK, "timestamp": "2027-01-15T08:00:00.123+01:00"}, True),
    ({**_OK, "timestamp": "2027-01-15T08:00:00"}, False),  # no offset
    ({**_OK, "timestamp": "yesterday"}, False),
    ({**_OK, "timestamp": 1_800_000_000}, False),
    ({**_OK, "expiresAt": "2027-01-16T08:00:00Z"}, True),
    ({**_OK, "provider": "a"}, True),
    ({**_OK, "provider": ["a", "b", "a"]}, True),
    ({**_OK, "provider": []}, False),
    ({**_OK, "provider": [1]}, False),
    ({**_OK, "extra": 1}, False),
]


@pytest.mark.parametrize(("item", "accepted"), _TABLE, ids=[repr(i) for i, _ in _TABLE])
def test_the_document_and_the_validator_agree_on_the_edge_cases(
    item: dict[str, Any], accepted: bool
) -> None:
    """Known edges (issue 9's Unicode digits among them): both say the same, and it is right."""
    now_ms = 1_800_000_000_000  # 2027-01-15T08:00:00Z
    schema_ok = _signal_validator(_ingest().openapi()).is_valid(item)
    _, problems = parse_items([item], now_ms=now_ms, providers=PROVIDERS, max_age_ms=86_400_000)
    assert (schema_ok, not problems) == (accepted, accepted), problems


_CODING_PIECES = [*CONTENT_CODINGS, "GZIP", "Deflate", "br", "zstd", "gzip;q=1", "", " ", "\t"]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    value=st.one_of(
        st.from_regex(content_encoding_pattern(), fullmatch=True),
        st.lists(st.sampled_from(_CODING_PIECES), max_size=4).map(",".join),
        st.text(alphabet=st.characters(max_codepoint=255), max_size=12),
    )
)
def test_the_content_encoding_pattern_is_what_ingest_decodes(value: str) -> None:
    """The documented Content-Encoding pattern matches exactly the values ingest decodes."""
    try:
        decode_body(b"", value, 100)
        decoded = True
    except UnsupportedCoding:
        decoded = False
    assert bool(re.fullmatch(content_encoding_pattern(), value)) == decoded, repr(value)
