"""The OpenAPI 3.1 document of the detector API, built from the constants ingest enforces.

Served by the ingest port at ``GET /v1/openapi.json``. Every rule a JSON Schema can say
comes from the same names the validator uses (``signals.FIELDS``, ``RiskLevel``, the
message, skew and expiry bounds, ``max_body_bytes``, ``max_age_s``), so the document
cannot drift from the code; ``tests/test_openapi.py`` checks it against the live routes
and against what ``parse_items`` accepts and refuses. Rules that depend on the time of
receipt or on the configuration (how old a ``timestamp`` may be, which provider names
exist) are stated in the descriptions and as ``x-`` extensions.

The side port (``metrics.listen``: ``/metrics``, ``/healthz``, ``/readyz``) is another
server for other clients and is described in ``docs/metrics.md``, not here.
"""

from __future__ import annotations

from typing import Any

from forwarder import __version__
from forwarder.bodies import SUPPORTED_CODINGS
from forwarder.signals import (
    MAX_EXPIRY_AHEAD_MS,
    MAX_FUTURE_SKEW_MS,
    MAX_MESSAGE_CHARS,
    RiskLevel,
)

__all__ = [
    "CONTENT_CODINGS",
    "JSON_MEDIA_TYPE",
    "NDJSON_MEDIA_TYPES",
    "OPENAPI_PATH",
    "SIGNALS_PATH",
    "content_encoding_pattern",
    "openapi_document",
    "risk_level_pattern",
]

OPENAPI_PATH = "/v1/openapi.json"
SIGNALS_PATH = "/v1/signals"
#: The request media types ingest reads (any other Content-Type gets 415).
JSON_MEDIA_TYPE = "application/json"
NDJSON_MEDIA_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


def risk_level_pattern() -> str:
    """``LOW``, ``MEDIUM`` or ``HIGH`` in any ASCII case, as an ECMA-262 regex."""
    return f"^(?:{'|'.join(_any_case(level.name) for level in RiskLevel)})$"


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


#: What Content-Encoding may say: the codings ingest decodes, plus the identity and the
#: x-gzip alias (RFC 9110 8.4.1.3), listed with commas in any ASCII case.
CONTENT_CODINGS = ("identity", *SUPPORTED_CODINGS, "x-gzip")


def content_encoding_pattern() -> str:
    """A comma-separated list of :data:`CONTENT_CODINGS`, empty items and surrounding
    whitespace allowed (``str.strip`` whitespace in Latin-1), as an ECMA-262 regex."""
    ws = "".join(f"\\u{i:04x}" for i in range(256) if chr(i).isspace())
    sep = f"[{ws},]"
    coding = f"(?:{'|'.join(_any_case(c) for c in CONTENT_CODINGS)})"
    return f"^{sep}*(?:{coding}[{ws}]*(?:,{sep}*{coding}[{ws}]*)*)?{sep}*$"


def _signal_schema(max_age_s: float) -> dict[str, Any]:
    time_rule = "an RFC 3339 date-time with an offset (Z or +hh:mm)"
    props: dict[str, Any] = {
        "ip": {
            "description": (
                "IPv4 or IPv6 address in ASCII; normalised (2001:DB8::1 -> 2001:db8::1, "
                "::ffff:192.0.2.1 -> 192.0.2.1); surrounding whitespace is ignored."
            ),
            "anyOf": [
                {"type": "string", "format": "ipv4"},
                {"type": "string", "format": "ipv6"},
            ],
        },
        "riskLevel": {
            "description": (
                "One of "
                + ", ".join(level.name for level in RiskLevel)
                + ", in any ASCII case; surrounding whitespace is ignored."
            ),
            "type": "string",
            "pattern": risk_level_pattern(),
            "examples": [level.name for level in RiskLevel],
        },
        "message": {
            "description": (
                "Free text; never refused for its characters: made to fit Okta's "
                f"^[a-zA-Z0-9 .\\-_]*$ and truncated to {MAX_MESSAGE_CHARS} characters."
            ),
            "type": ["string", "null"],
            "x-storedMaxLength": MAX_MESSAGE_CHARS,
        },
        "timestamp": {
            "description": (
                f"When it was observed: {time_rule}; default: the time of receipt. At most "
                f"{MAX_FUTURE_SKEW_MS // 1000} s in the future and no older than "
                f"dispatch.max_age_s ({max_age_s:g} s), so a 202 always means it will be sent."
            ),
            "type": ["string", "null"],
            "format": "date-time",
            "x-maxFutureSkewSeconds": MAX_FUTURE_SKEW_MS // 1000,
            "x-maxAgeSeconds": max_age_s,
        },
        "expiresAt": {
            "description": (
                f"{time_rule}: after timestamp, not already past, at most "
                f"{MAX_EXPIRY_AHEAD_MS // 86_400_000} days ahead; the IP is never sent after it."
            ),
            "type": ["string", "null"],
            "format": "date-time",
            "x-maxAheadSeconds": MAX_EXPIRY_AHEAD_MS // 1000,
        },
        "provider": {
            "description": "A configured provider name or a list of them; default: every provider.",
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
                {"type": "null"},
            ],
        },
    }
    return {
        "type": "object",
        "required": ["ip", "riskLevel"],
        "properties": props,
        "additionalProperties": False,
    }


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}


def openapi_document(
    *,
    max_body_bytes: int,
    max_age_s: float,
    auth: bool,
    max_details: int,
) -> dict[str, Any]:
    """The document for one ingest server, as configured (limits, whether tokens are set)."""
    many = {"type": "array", "items": {"$ref": "#/components/schemas/Signal"}, "minItems": 1}
    media_types = (JSON_MEDIA_TYPE, *NDJSON_MEDIA_TYPES)
    content: dict[str, Any] = {
        JSON_MEDIA_TYPE: {"schema": {"anyOf": [{"$ref": "#/components/schemas/Signal"}, many]}}
    }
    for media_type in NDJSON_MEDIA_TYPES:
        content[media_type] = {
            "schema": {**many, "description": "One Signal object per line (NDJSON)."}
        }
    responses: dict[str, Any] = {
        "202": {
            "description": "Every signal of the request is committed and will be sent.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
        },
        "400": _error(
            "The body could not be read or decoded, holds no signals, or some signals are "
            "invalid; nothing of the request was stored. details names each problem."
        ),
        "408": _error("The body did not arrive within ingest.body_timeout_s; send it promptly."),
        "413": _error(f"The body is larger than max_body_bytes ({max_body_bytes}); split it."),
        "415": _error(
            f"Content-Type is not one of {', '.join(media_types)}, or Content-Encoding is "
            f"not one of {', '.join(SUPPORTED_CODINGS)} (then Accept-Encoding lists those).",
            {
                "Accept-Encoding": {
                    "description": "The content codings this server decodes (RFC 7694).",
                    "schema": {"type": "string"},
                }
            },
        ),
        "503": _error(
            "The store is full (max_pending) or unavailable, the server is at "
            "max_connections, or the daemon is shutting down.",
            _RETRY_AFTER,
        ),
    }
    post: dict[str, Any] = {
        "operationId": "postSignals",
        "summary": "Submit IP risk signals",
        "description": (
            "A 202 is sent only after every signal of the request is committed. The body may "
            f"be compressed (Content-Encoding: {' or '.join(SUPPORTED_CODINGS)}); its size "
            f"after decoding is limited to max_body_bytes ({max_body_bytes})."
        ),
        "parameters": [
            {
                "name": "Content-Encoding",
                "in": "header",
                "required": False,
                "description": (
                    f"How the body is compressed: {', '.join(SUPPORTED_CODINGS)} "
                    "(x-gzip is gzip); none or identity: not at all. Several codings may "
                    "be listed, applied in order; any case."
                ),
                "schema": {"type": "string", "pattern": content_encoding_pattern()},
            }
        ],
        "requestBody": {"required": True, "content": content},
        "responses": responses,
    }
    if auth:
        post["security"] = [{"bearer": []}]
        responses["401"] = _error(
            "Missing or wrong bearer token.",
            {
                "WWW-Authenticate": {
                    "description": "The scheme to use.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^Bearer "},
                }
            },
        )
    else:
        post["security"] = []
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "forwarder ingest API",
            "version": __version__,
            "description": (
                "Detectors push IP risk signals; forwarder stores them durably and delivers "
                "them to every configured Okta org within its rate budget."
            ),
        },
        "paths": {
            SIGNALS_PATH: {"post": post},
            OPENAPI_PATH: {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document of this server.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Signal": _signal_schema(max_age_s),
                "Accepted": {
                    "type": "object",
                    "required": ["accepted"],
                    "properties": {
                        "accepted": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "How many signals of the request were committed.",
                        }
                    },
                    "additionalProperties": False,
                },
                "Problem": {
                    "type": "object",
                    "required": ["index", "field", "message"],
                    "properties": {
                        "index": {
                            "type": "integer",
                            "minimum": -1,
                            "description": "The item's position (0-based); -1: the whole body.",
                        },
                        "field": {
                            "type": "string",
                            "description": "The field at fault; empty for the whole item.",
                        },
                        "message": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "details"],
                    "properties": {
                        "error": {"type": "string", "minLength": 1},
                        "details": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Problem"},
                            "maxItems": max_details,
                            "description": f"The first {max_details} problems, in order.",
                        },
                        "details_total": {
                            "type": "integer",
                            "minimum": max_details + 1,
                            "description": "How many problems there are, when more than listed.",
                        },
                    },
                    "additionalProperties": False,
                },
            },
        },
    }
    if auth:
        doc["components"]["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token from ingest.tokens_file.",
            }
        }
    return doc
