"""Request bodies: content codings decoded with a bound, and JSON read one item at a time.

The HTTP servers run with aiohttp's own decoding off (see :mod:`forwarder.serving`):
its errors surface as tracebacks and text/plain answers, and its ``br``/``zstd`` support
depends on optional packages. Here a coding we cannot decode is
:class:`UnsupportedCoding` (the ingest API answers 415, RFC 7694), a body that does not
decode is :class:`CorruptBody` (400), and a body that decodes past the limit is
:class:`BodyTooLarge` (413): a 1 KiB gzip bomb never becomes a gigabyte in memory.

:func:`json_items` and :func:`ndjson_items` yield a body's items one by one, so the
caller can validate and drop them as it goes: ``json.loads`` of a 1 MiB ``[{},{},...]``
holds 350,000 dicts (25 MB) at once, an item stream holds one.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from typing import Any

from forwarder.signals import Problem

__all__ = [
    "SUPPORTED_CODINGS",
    "BodyError",
    "BodyTooLarge",
    "CorruptBody",
    "InvalidJson",
    "UnsupportedCoding",
    "decode_body",
    "json_items",
    "ndjson_items",
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


class InvalidJson(BodyError):
    """The body is not JSON (NDJSON: some lines are not); ``problems`` names the first
    ``max_problems``, ``total`` counts them all."""

    def __init__(self, problems: list[Problem], total: int) -> None:
        self.problems = problems
        self.total = total
        super().__init__(problems[0].message if problems else "invalid JSON")


_WS = re.compile(r"[ \t\n\r]*")
_SPACE = frozenset(" \t\n\r")


def _skip(text: str, pos: int) -> int:
    """The first position at or after ``pos`` that is not JSON whitespace."""
    match = _WS.match(text, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _text(raw: bytes) -> str:
    try:
        return raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError as exc:
        raise InvalidJson([Problem(-1, "", f"invalid JSON: {exc.reason}")], 1) from None


def _invalid(exc: Exception) -> InvalidJson:
    return InvalidJson([Problem(-1, "", f"invalid JSON: {exc}")], 1)


def json_items(raw: bytes) -> Iterator[Any]:
    """The items of a JSON array, one at a time; any other JSON value is one item.

    Raises :class:`InvalidJson` where the text stops being JSON (after yielding the
    items before it: the caller stores nothing of a body that fails).
    """
    text = _text(raw)
    pos = _skip(text, 0)
    if not text.startswith("[", pos):
        try:
            yield json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise _invalid(exc) from None
        return
    decode = json.JSONDecoder().raw_decode
    pos = _skip(text, pos + 1)
    if not text.startswith("]", pos):
        while True:
            try:
                item, pos = decode(text, pos)
            except (ValueError, RecursionError) as exc:
                raise _invalid(exc) from None
            yield item
            char = text[pos : pos + 1]
            if char in _SPACE:
                pos = _skip(text, pos)
                char = text[pos : pos + 1]
            if char == ",":
                pos = _skip(text, pos + 1)
                continue
            if char == "]":
                break
            raise _invalid(json.JSONDecodeError("Expecting ',' delimiter", text, pos))
    end = _skip(text, pos + 1)
    if end != len(text):
        raise _invalid(json.JSONDecodeError("Extra data", text, end))


def ndjson_items(raw: bytes, max_problems: int) -> Iterator[Any]:
    """The items of an NDJSON body, one per non-blank line (``\n`` or ``\r\n`` ended).

    A line that is not JSON yields ``None`` in its place; at the end,
    :class:`InvalidJson` names the first ``max_problems`` such lines and counts all.
    """
    problems: list[Problem] = []
    total = index = line_no = start = 0
    while start < len(raw):
        # One line at a time (not raw.splitlines(): a list of 500,000 tiny lines).
        end = raw.find(b"\n", start)
        end = len(raw) if end < 0 else end
        line = raw[start:end]
        start = end + 1
        line_no += 1
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as exc:
            total += 1
            if len(problems) < max_problems:
                problems.append(Problem(index, "", f"line {line_no} is not valid JSON: {exc}"))
            item = None
        yield item
        index += 1
    if total:
        raise InvalidJson(problems, total)
