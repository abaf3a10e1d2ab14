"""Hypothesis strategies for detector input: valid signals, near-valid ones, and junk."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from forwarder.signals import FIELDS, RiskLevel, format_ms

__all__ = [
    "NOW_MS",
    "PROVIDERS",
    "json_values",
    "near_valid_items",
    "valid_items",
]

#: The ingest clock's time in these tests (FakeClock's default start).
NOW_MS = 1_800_000_000_000
PROVIDERS = ("a", "b")
MAX_AGE_MS = 86_400_000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

_ip_v4 = st.ip_addresses(v=4).map(str)
_ip_v6 = st.ip_addresses(v=6).map(str)
valid_ips = st.one_of(
    _ip_v4,
    _ip_v6,
    _ip_v6.map(str.upper),
    _ip_v4.map(lambda a: f"::ffff:{a}"),
)
#: Strings that look like addresses and are not (or are not what Okta accepts).
bad_ips = st.one_of(
    st.sampled_from(
        [
            "",
            "1.2.3",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3.4.5",
            "１.2.3.4",
            "198.51.100.\u0664",
            "fe80::1%eth0",
            "1.2.3.4/32",
            "::ffff:999.1.1.1",
            "localhost",
            "2001:db8:::1",
        ]
    ),
    st.text(max_size=40),
)
_level_spellings = [
    spelling
    for level in RiskLevel
    for spelling in (level.name, level.name.lower(), level.name.capitalize())
]
bad_levels = st.one_of(
    st.sampled_from(["", "CRITICAL", "LOWEST", "hıgh", "ＨＩＧＨ", "NONE", "1"]),
    st.text(max_size=10),
)


def _rfc3339(offset_ms: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    """RFC 3339 times NOW_MS + offset, in the spellings RFC 3339 allows."""

    def spell(ms: int, style: int) -> str:
        text = format_ms(ms)
        if style == 1:
            return text[:19] + "Z"  # no fraction
        if style == 2:
            return text[:-1] + "+00:00"
        if style == 3:
            return text.lower()  # "t" and "z" are allowed
        return text

    return st.builds(spell, offset_ms.map(lambda o: NOW_MS + o), st.integers(0, 3))


#: Well inside the bounds ingest enforces (its edges have their own tests): not older than
#: max_age, not ahead of the clock.
valid_timestamps = _rfc3339(st.integers(-MAX_AGE_MS // 2, 0))
#: After any valid timestamp, not past, and well inside the year ahead.
valid_expiries = _rfc3339(st.integers(3_600_000, 300 * 86_400_000))
bad_times = st.one_of(
    st.sampled_from(["", "yesterday", "2026-13-01T00:00:00Z", "2026-01-31T12:00:00", "0"]),
    st.text(max_size=30),
)


@st.composite
def valid_items(draw: st.DrawFn) -> dict[str, Any]:
    """A signal ingest must accept (its times inside the bounds, its providers configured)."""
    item: dict[str, Any] = {
        "ip": draw(valid_ips),
        "riskLevel": draw(st.sampled_from(_level_spellings)),
    }
    if draw(st.booleans()):
        item["message"] = draw(st.none() | st.text(max_size=600))
    if draw(st.booleans()):
        item["timestamp"] = draw(st.none() | valid_timestamps)
    if draw(st.booleans()):
        item["expiresAt"] = draw(st.none() | valid_expiries)
    if draw(st.booleans()):
        item["provider"] = draw(
            st.none()
            | st.sampled_from(PROVIDERS)
            | st.lists(st.sampled_from(PROVIDERS), min_size=1, max_size=3)
        )
    return item


_bad_values: dict[str, st.SearchStrategy[Any]] = {
    "ip": bad_ips | json_values,
    "riskLevel": bad_levels | json_values,
    "message": json_values,
    "timestamp": bad_times | json_values,
    "expiresAt": bad_times | json_values,
    "provider": json_values | st.sampled_from(["c", "", []]),
}


@st.composite
def near_valid_items(draw: st.DrawFn) -> Any:
    """A valid item with one or two fields mutated, removed, or an unknown one added."""
    item = draw(valid_items())
    for _ in range(draw(st.integers(1, 2))):
        how = draw(st.sampled_from(["replace", "remove", "unknown", "whole"]))
        field = draw(st.sampled_from(FIELDS))
        if how == "replace":
            item[field] = draw(_bad_values[field])
        elif how == "remove":
            item.pop(field, None)
        elif how == "unknown":
            item[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in FIELDS))] = 1
        else:
            return draw(json_values)
    return item


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()
