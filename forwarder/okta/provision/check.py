"""Proof that a provider works: a token with its key, and optionally one test event.

A token proves the key, the client id, the scope grant and the org URL together; the test
event (a documentation-range IP, LOW) proves the app is the org's risk provider, at the
cost of one of the provider's calls for the minute. :class:`TokenSource` and
:class:`RiskEventsSender` do the work, so their hints are the ones the daemon gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from forwarder.clock import Clock
from forwarder.errors import (
    AuthError,
    ForwarderError,
    InvalidCredentials,
    PermanentSendError,
    RetryableSendError,
)
from forwarder.okta.events import RiskEventsSender
from forwarder.okta.keys import KeyFileError, load_signing_key
from forwarder.okta.tokens import RISK_EVENTS_SCOPE, TokenSource
from forwarder.signals import RiskLevel, Signal

__all__ = [
    "TEST_EVENT_IP",
    "TEST_EVENT_MESSAGE",
    "CheckFailed",
    "CheckResult",
    "check_provider",
    "connectivity_signal",
]

#: RFC 5737 TEST-NET-1: reserved for documentation, never a real client's address.
TEST_EVENT_IP = "192.0.2.1"
TEST_EVENT_MESSAGE = "forwarder connectivity test"
#: The test event expires soon, so Okta forgets it (without expiresAt it keeps it 24 h).
_TEST_EVENT_LIFETIME_MS = 10 * 60 * 1000


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One provider's check: OK, or what failed (``step``) and the most likely fix."""

    provider: str
    ok: bool
    step: str
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "ok": self.ok,
            "step": self.step,
            "detail": self.detail,
            "hint": self.hint,
        }


class CheckFailed(ForwarderError):
    """A provider's check failed; ``result`` says where and what to fix."""

    def __init__(self, result: CheckResult) -> None:
        self.result = result
        self.hint = result.hint
        super().__init__(f"{result.provider}: {result.detail}")


def connectivity_signal(now_s: float) -> Signal:
    """The harmless test event: a documentation-range IP, LOW, expiring in ten minutes."""
    now_ms = int(now_s * 1000)
    return Signal(
        ip=TEST_EVENT_IP,
        risk=RiskLevel.LOW,
        message=TEST_EVENT_MESSAGE,
        ts_ms=now_ms,
        expires_ms=now_ms + _TEST_EVENT_LIFETIME_MS,
        received_ms=now_ms,
    )


def _bare(exc: InvalidCredentials) -> str:
    return str(exc).removesuffix(f" (hint: {exc.hint})")


async def check_provider(
    *,
    session: aiohttp.ClientSession,
    name: str,
    org_url: str,
    client_id: str,
    key_file: Path,
    clock: Clock,
    timeout_s: float = 30.0,
    send_test: bool = False,
) -> CheckResult:
    """Fetch a token with the provider's key (proves key, client id, grant and org URL
    together); with ``send_test``, send one test event too (it spends one rate slot)."""
    try:
        key = load_signing_key(key_file)
    except KeyFileError as exc:
        return CheckResult(
            name,
            False,
            "key",
            str(exc),
            "point private_key_file at the private key that `forwarder keys generate` wrote",
        )
    tokens = TokenSource(
        session=session,
        org_url=org_url,
        client_id=client_id,
        key=key,
        clock=clock,
        timeout_s=timeout_s,
    )
    try:
        await tokens.get()
    except InvalidCredentials as exc:
        return CheckResult(name, False, "token", _bare(exc), exc.hint)
    except AuthError as exc:
        return CheckResult(
            name, False, "token", str(exc), "Okta or the network failed; retry in a minute"
        )
    granted = f"token issued to {client_id} with {RISK_EVENTS_SCOPE} (kid {key.kid})"
    if not send_test:
        return CheckResult(name, True, "token", granted)
    sender = RiskEventsSender(session=session, org_url=org_url, tokens=tokens, clock=clock)

    async def spend() -> None:
        return None

    try:
        delivery = await sender.send([connectivity_signal(clock.time())], spend=spend)
    except InvalidCredentials as exc:
        return CheckResult(name, False, "event", _bare(exc), exc.hint)
    except RetryableSendError as exc:
        hint = "Okta or the network failed; retry in a minute"
        if exc.outcome == "rate_limited":
            wait = (
                f" in {max(1, round(exc.retry_at - clock.time()))} s"
                if exc.retry_at is not None
                else " in a minute"
            )
            hint = (
                "this provider's calls for the minute are spent (is a daemon sending?); "
                f"retry{wait}"
            )
        return CheckResult(name, False, "event", str(exc), hint)
    except PermanentSendError as exc:
        return CheckResult(
            name,
            False,
            "event",
            f"{exc}: {'; '.join(exc.causes)}",
            "Okta refused the test event itself; report this with the causes above",
        )
    left = ""
    if delivery.window is not None and delivery.window.remaining is not None:
        left = f", {delivery.window.remaining} left in this window"
    return CheckResult(
        name,
        True,
        "event",
        f"{granted}; test event accepted ({TEST_EVENT_IP} LOW, {TEST_EVENT_MESSAGE!r}); "
        f"it spent 1 of the provider's calls{left}",
    )
