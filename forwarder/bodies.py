"""Request body content codings: ``identity``, ``gzip`` and ``deflate``, decoded with a bound.

The HTTP servers run with aiohttp's own decoding off (see :mod:`forwarder.serving`):
its errors surface as tracebacks and text/plain answers, and its ``br``/``zstd`` support
depends on optional packages. Here a coding we cannot decode is
:class:`UnsupportedCoding` (the ingest API answers 415, RFC 7694), a body that does not
decode is :class:`CorruptBody` (400), and a body that decodes past the limit is
:class:`BodyTooLarge` (413): a 1 KiB gzip bomb never becomes a gigabyte in memory.
"""

from __future__ import annotations

import zlib

__all__ = [
    "SUPPORTED_CODINGS",
    "BodyError",
    "BodyTooLarge",
    "CorruptBody",
    "UnsupportedCoding",
    "decode_body",
]

#: What ``Accept-Encoding`` advertises on a 415.
SUPPORTED_CODINGS = ("gzip", "deflate")
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyError(ValueError):
    """The body cannot be used; the message says why."""


class UnsupportedCoding(BodyError):
    """A ``Content-Encoding`` this server does not decode."""


class CorruptBody(BodyError):
    """The body does not decode with the coding it claims."""


class BodyTooLarge(BodyError):
    """The decoded body is larger than the limit."""


def _inflate(data: bytes, wbits: int, coding: str, limit: int) -> bytes:
    out: list[bytes] = []
    size = 0
    rest = data
    while rest:
        d = zlib.decompressobj(wbits)
        try:
            chunk = d.decompress(rest, limit + 1 - size)
        except zlib.error:
            if coding == "deflate" and wbits > 0 and not out:
                # Some clients send raw deflate (no zlib header), as aiohttp accepts.
                return _inflate(data, -zlib.MAX_WBITS, coding, limit)
            raise CorruptBody(f"the body is not valid {coding} data") from None
        size += len(chunk)
        if size > limit or d.unconsumed_tail:
            raise BodyTooLarge(f"the decoded body exceeds max_body_bytes ({limit})")
        if not d.eof:
            raise CorruptBody(f"the {coding} body is truncated")
        out.append(chunk)
        # gzip allows several members one after another; trailing garbage is an error.
        rest = d.unused_data if wbits == _WBITS["gzip"] else b""
        if d.unused_data and wbits != _WBITS["gzip"]:
            raise CorruptBody(f"the {coding} body has data after its end")
    return b"".join(out)


def decode_body(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """``raw`` decoded per ``Content-Encoding`` (codings applied in order, so undone in
    reverse); raises a :class:`BodyError` subclass."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    unknown = [c for c in codings if c != "identity" and c not in _WBITS]
    if unknown:
        shown = ", ".join(repr(c[:32]) for c in unknown[:3])
        raise UnsupportedCoding(
            f"Content-Encoding {shown} is not supported; send "
            f"{', '.join(SUPPORTED_CODINGS)} or no Content-Encoding"
        )
    body = raw
    for coding in reversed(codings):
        if coding != "identity":
            body = _inflate(body, _WBITS[coding], coding, limit)
    return body
