"""Proof that a provider works: a token with its key, and optionally one test event.

A token proves the key, the client id, the scope grant and the org URL together; the test
event (a documentation-range IP, LOW) proves the app is the org's risk provider, at the
cost of one of the provider's calls for the minute. :class:`TokenSource` and
:class:`RiskEventsSender` do the work, so their hints are the ones the daemon gives.
Both use DPoP as the daemon would (the provider's ``dpop`` mode), and the result says
whether the app requires it. With ``confirm`` the System Log is polled for the test
event's ``security.risk.signal.consume`` (:mod:`.confirm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from forwarder.clock import Clock
from forwarder.errors import (
    AdminApiError,
    AuthError,
    ForwarderError,
    InvalidCredentials,
    PermanentSendError,
    RetryableSendError,
)
from forwarder.okta.admin import AdminClient
from forwarder.okta.dpop import DPoP, DPoPMode
from forwarder.okta.events import RiskEventsSender
from forwarder.okta.keys import KeyFileError, SigningKey, load_signing_key
from forwarder.okta.provision.confirm import CONSUME_EVENT, find_consume_event, why_missing
from forwarder.okta.tokens import RISK_EVENTS_SCOPE, TokenSource
from forwarder.signals import RiskLevel, Signal

__all__ = [
    "TEST_EVENT_IP",
    "TEST_EVENT_MESSAGE",
    "CheckFailed",
    "CheckResult",
    "Confirm",
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
    #: Whether the app requires DPoP (None: not known, e.g. the token step failed).
    dpop_required: bool | None = None
    #: The System Log event that confirmed the test event (``--confirm``).
    log_event: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "ok": self.ok,
            "step": self.step,
            "detail": self.detail,
            "hint": self.hint,
            "dpop_required": self.dpop_required,
            "log_event": self.log_event,
        }


@dataclass(frozen=True, slots=True)
class Confirm:
    """``--confirm``: read the System Log with this admin client for up to ``timeout_s``."""

    admin: AdminClient
    timeout_s: float = 120.0
    interval_s: float = 5.0


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


def _dpop_line(tokens: TokenSource, bound: bool) -> str:
    dpop = tokens.dpop
    if bound and dpop is not None:
        return f"; the app requires DPoP: token bound to DPoP key {dpop.thumbprint} (cnf.jkt)"
    if dpop is not None and dpop.mode == "auto":
        return "; the app does not require DPoP (Bearer token)"
    return "; Bearer token (DPoP not used)"


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
    dpop: DPoPMode = "auto",
    dpop_key_file: Path | None = None,
    confirm: Confirm | None = None,
) -> CheckResult:
    """Fetch a token with the provider's key (proves key, client id, grant and org URL
    together); with ``send_test``, send one test event too (it spends one rate slot);
    with ``confirm``, find that event in the System Log."""
    try:
        key = load_signing_key(key_file)
        dpop_key: SigningKey | None = None
        if dpop_key_file is not None:
            dpop_key = load_signing_key(dpop_key_file)
    except KeyFileError as exc:
        return CheckResult(
            name,
            False,
            "key",
            str(exc),
            "point private_key_file (and dpop_key_file) at the private keys that "
            "`forwarder keys generate` wrote",
        )
    tokens = TokenSource(
        session=session,
        org_url=org_url,
        client_id=client_id,
        key=key,
        clock=clock,
        timeout_s=timeout_s,
        dpop=None if dpop == "never" else DPoP(mode=dpop, clock=clock, key=dpop_key),
    )
    try:
        access = await tokens.token()
    except InvalidCredentials as exc:
        return CheckResult(name, False, "token", _bare(exc), exc.hint)
    except AuthError as exc:
        return CheckResult(
            name, False, "token", str(exc), "Okta or the network failed; retry in a minute"
        )
    bound = access.dpop_bound
    granted = f"token issued to {client_id} with {RISK_EVENTS_SCOPE} (kid {key.kid})"
    granted += _dpop_line(tokens, bound)
    if not send_test:
        return CheckResult(name, True, "token", granted, dpop_required=bound)
    sender = RiskEventsSender(session=session, org_url=org_url, tokens=tokens, clock=clock)
    spent = 0

    async def spend() -> None:
        nonlocal spent
        spent += 1

    sent_at = clock.time()
    signal = connectivity_signal(sent_at)
    try:
        try:
            delivery = await sender.send([signal], spend=spend)
        except RetryableSendError as exc:
            if not exc.retry_now:
                raise
            # A DPoP nonce challenge: the one retry it asks for (a second call).
            delivery = await sender.send([signal], spend=spend)
    except InvalidCredentials as exc:
        return CheckResult(name, False, "event", _bare(exc), exc.hint, dpop_required=bound)
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
        return CheckResult(name, False, "event", str(exc), hint, dpop_required=bound)
    except PermanentSendError as exc:
        return CheckResult(
            name,
            False,
            "event",
            f"{exc}: {'; '.join(exc.causes)}",
            "Okta refused the test event itself; report this with the causes above",
            dpop_required=bound,
        )
    left = ""
    if delivery.window is not None and delivery.window.remaining is not None:
        left = f", {delivery.window.remaining} left in this window"
    calls = "1 of the provider's calls" if spent == 1 else f"{spent} of the provider's calls"
    proof = " with a DPoP proof" if bound else ""
    detail = (
        f"{granted}; test event accepted{proof} ({TEST_EVENT_IP} LOW, {TEST_EVENT_MESSAGE!r}); "
        f"it spent {calls}{left}"
    )
    if confirm is None:
        return CheckResult(name, True, "event", detail, dpop_required=bound)
    return await _confirm(name, client_id, detail, bound, sent_at, clock, confirm)


async def _confirm(
    name: str,
    client_id: str,
    detail: str,
    bound: bool,
    sent_at: float,
    clock: Clock,
    confirm: Confirm,
) -> CheckResult:
    try:
        found = await find_consume_event(
            confirm.admin,
            client_id=client_id,
            test_ip=TEST_EVENT_IP,
            sent_at=sent_at,
            clock=clock,
            timeout_s=confirm.timeout_s,
            interval_s=confirm.interval_s,
        )
    except AdminApiError as exc:
        hint = exc.hint
        if exc.status == 403:
            hint = (
                "reading the System Log needs an API token of an admin with okta.logs.read "
                "(a read-only admin is enough)"
            )
        return CheckResult(
            name, False, "confirm", f"{detail}; System Log: {exc}", hint, dpop_required=bound
        )
    if found.event is not None:
        return CheckResult(
            name,
            True,
            "confirm",
            f"{detail}; {found.describe()}",
            dpop_required=bound,
            log_event=found.event,
        )
    causes = await why_missing(confirm.admin, client_id, confirm.timeout_s)
    others = f" ({found.others} other consume events seen)" if found.others else ""
    return CheckResult(
        name,
        False,
        "confirm",
        f"{detail}; but no {CONSUME_EVENT} event for {client_id} appeared in the System Log "
        f"within {confirm.timeout_s:g} s{others}",
        "usually: " + "; or ".join(causes),
        dpop_required=bound,
    )
