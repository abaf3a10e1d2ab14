"""One HTTP exchange with an Okta org, as every call of ours makes it.

Redirects are never followed: a redirect means ``org_url`` is not the org's own URL (a
custom domain alias, ``-admin``), which the caller reports to the operator rather than
sending credentials on to wherever it points. The answer is read whole and decoded
leniently: error pages from proxies need not be UTF-8, and no answer may fail on
decoding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

__all__ = ["Reply", "exchange"]


@dataclass(frozen=True, slots=True)
class Reply:
    """What the org answered: status, headers, and the body as text."""

    status: int
    headers: Mapping[str, str]
    text: str


async def exchange(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    client_timeout: aiohttp.ClientTimeout,
    data: str | Mapping[str, str] | None = None,
) -> Reply:
    """Send one request and read its answer.

    Raises ``TimeoutError`` and :class:`aiohttp.ClientError` as aiohttp does: each caller
    says in its own error type what failed and what to do.
    """
    async with session.request(
        method, url, data=data, headers=headers, timeout=client_timeout, allow_redirects=False
    ) as resp:
        text = (await resp.read()).decode("utf-8", "replace")
        return Reply(resp.status, resp.headers, text)
