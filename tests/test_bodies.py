"""Request bodies: the item stream agrees with json.loads; codings decode with a bound."""

from __future__ import annotations

import gzip
import json
import math
import random
import zlib
from typing import Any

import pytest

from forwarder.bodies import (
    BodyTooLarge,
    CorruptBody,
    InvalidJson,
    UnsupportedCoding,
    decode_body,
    json_items,
    ndjson_items,
)

SPACES = ["", " ", "\n", "\t ", "\r\n  "]


def _value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value: scalars of every kind, nested arrays and objects."""
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(10**20), 10**20)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind in (3, 4):
        return "".join(
            rng.choice('ab "\\\u00e9\u4e2d\U0001f600\n') for _ in range(rng.randrange(6))
        )
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(_value(rng, 3)): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _loads_as_items(raw: bytes) -> list[Any] | None:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, list) else [doc]


def _items(raw: bytes) -> list[Any] | None:
    try:
        return list(json_items(raw))
    except InvalidJson:
        return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def test_json_items_yields_what_json_loads_gives() -> None:
    """For 2000 random JSON documents and spacings, the items are json.loads' elements."""
    rng = random.Random(9)
    for _ in range(2000):
        value = _value(rng)
        if rng.random() < 0.7:
            value = [_value(rng) for _ in range(rng.randrange(5))]
        sep, pad = rng.choice(SPACES), rng.choice(SPACES)
        raw = (pad + json.dumps(value, separators=(sep + "," + sep, ":")) + pad).encode()
        assert _items(raw) == _loads_as_items(raw), raw


def test_json_items_fails_exactly_where_json_loads_fails() -> None:
    """2000 truncated or corrupted arrays: invalid for both, or equal items for both."""
    rng = random.Random(4)
    for _ in range(2000):
        raw = json.dumps([_value(rng) for _ in range(rng.randrange(5))]).encode()
        raw = raw[: rng.randrange(len(raw) + 1)] + bytes(rng.choices(b'[]{},: "0a\n', k=3))
        expected, got = _loads_as_items(raw), _items(raw)
        assert (expected is None) == (got is None), raw
        if expected is not None and got is not None:
            assert all(_same(a, b) for a, b in zip(expected, got, strict=True)), raw


def test_ndjson_names_bad_lines_up_to_the_limit_and_counts_all() -> None:
    """Bad NDJSON lines become None items; the error lists max_problems and counts all."""
    raw = b'{"a": 1}\nnope\n\n[2]\nnope again\n'
    stream = ndjson_items(raw, max_problems=1)
    assert [next(stream), next(stream), next(stream), next(stream)] == [{"a": 1}, None, [2], None]
    with pytest.raises(InvalidJson) as err:
        next(stream)
    assert err.value.total == 2
    assert [p.message.split(" is ")[0] for p in err.value.problems] == ["line 2"]


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b, wbits=-15)),
        ("gzip, gzip", lambda b: gzip.compress(gzip.compress(b))),
        ("identity", bytes),
        ("", bytes),
    ],
)
def test_supported_codings_decode(coding: str, encode: Any) -> None:
    """gzip (one or more members), zlib and raw deflate, stacked codings and identity."""
    assert decode_body(encode(b"[1, 2]"), coding, 1024) == b"[1, 2]"
    if coding == "gzip":
        assert decode_body(encode(b"[1,") + encode(b" 2]"), coding, 1024) == b"[1, 2]"


def test_coding_errors_are_typed() -> None:
    """Unknown codings, corrupt data and bombs each raise their own error."""
    with pytest.raises(UnsupportedCoding):
        decode_body(b"x", "br", 1024)
    with pytest.raises(CorruptBody):
        decode_body(gzip.compress(b"[1]") + b"junk", "gzip", 1024)
    with pytest.raises(CorruptBody):
        decode_body(zlib.compress(b"[1]")[:-3], "deflate", 1024)
    with pytest.raises(BodyTooLarge):
        decode_body(gzip.compress(b" " * 10_000), "gzip", 1024)
