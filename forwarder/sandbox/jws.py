"""Reading a compact JWS (a signed JWT) before its signature is checked.

The client assertion and the DPoP proof are both checked claim by claim, each failure
with its own Okta error; first their header and claims must decode at all. Nothing here
verifies anything.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from forwarder.sandbox.validation import parse_json

__all__ = ["segment_json", "unverified_jws"]


def segment_json(segment: str) -> dict[str, Any] | None:
    """One base64url segment as a JSON object, or None when it is not one."""
    try:
        value = parse_json(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        return None
    return value if isinstance(value, dict) else None


def unverified_jws(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The header and claims of a three-part compact JWS, or None when it is not one."""
    parts = token.split(".")
    header = segment_json(parts[0]) if len(parts) == 3 else None
    claims = segment_json(parts[1]) if header is not None else None
    if header is None or claims is None:
        return None
    return header, claims
