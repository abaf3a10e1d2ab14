"""The Risk Events output: one ``POST /api/v1/risk/events/ip`` per batch, classified.

Outcomes (risk-api.md §5-§6): 202 accepted; 429 keep the batch and wait until
``X-Rate-Limit-Reset`` (measured against ``Date``); 401 the token is dropped and the
batch retried once with a new one; 5xx, timeouts and connection errors are retried with
backoff; 400 is Okta rejecting the payload: the subjects its ``errorCauses`` name
(``events[i].subjects[j]...``) are traced back to their signals and only those are
dead-lettered, or the whole batch when a cause names none; 403 and 404 mean this
provider cannot send at all until an operator acts.

With a DPoP-bound token (risk-api.md §9) each call carries ``Authorization: DPoP`` and a
new proof (``ath`` binds it to the token). A nonce challenge (401 ``WWW-Authenticate:
DPoP error="use_dpop_nonce"`` with ``DPoP-Nonce``) is answered with one retry, which the
dispatcher makes through its budget like any call (``retry_now``); a refused proof or a
token of the wrong kind stops the provider with a hint naming the cause.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime

import aiohttp

from forwarder.clock import Clock
from forwarder.delivery import Delivery, ServerWindow
from forwarder.errors import InvalidCredentials, PermanentSendError, RetryableSendError
from forwarder.okta.dpop import DPoP, dpop_error_hint, resource_challenge
from forwarder.okta.exchange import exchange
from forwarder.okta.payload import group_subjects, risk_events
from forwarder.okta.tokens import RISK_EVENTS_SCOPE, TokenSource
from forwarder.signals import Signal

__all__ = ["EVENTS_PATH", "RiskEventsSender", "parse_rate_headers", "rejected_subjects"]

EVENTS_PATH = "/api/v1/risk/events/ip"
#: Nonce challenges answered in a row before the provider is declared failing.
_MAX_CHALLENGES = 2
#: The longest wait any X-Rate-Limit-Reset may impose (Okta's windows are a minute).
MAX_RESET_WAIT_S = 3600.0


#: ASCII digits only: int() would also take "\uff13", "1_000" or "+5".
_HEADER_INT = re.compile(r"[0-9]{1,18}")
#: The path an errorCause starts with: ``events[i]`` or ``events[i].subjects[j]``.
_CAUSE_PATH = re.compile(r"events\[([0-9]{1,6})\](?:\.subjects\[([0-9]{1,6})\])?")


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip(" \t")
    return int(value) if _HEADER_INT.fullmatch(value) else None


def parse_rate_headers(headers: Mapping[str, str], *, local_now: float) -> ServerWindow | None:
    """``X-Rate-Limit-*`` as a :class:`ServerWindow`; Reset is made relative to ``Date``.

    The server's ``Date`` is used so local clock skew does not matter (okta-sdk-python's
    ``calculate_backoff`` does the same). Okta's docs suggest ``Reset - Date + 1``; the
    extra second is dropped because both headers are whole seconds rounded the safe way
    (Date down, Reset up), and it cost about 3 % of the budget at a 60 s window.
    """
    limit = _int_header(headers, "X-Rate-Limit-Limit")
    remaining = _int_header(headers, "X-Rate-Limit-Remaining")
    reset = _int_header(headers, "X-Rate-Limit-Reset")
    if limit is None and remaining is None and reset is None:
        return None
    reset_in: float | None = None
    if reset is not None:
        server_now = local_now
        date = headers.get("Date")
        if date:
            try:
                server_now = parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                server_now = local_now
        # Date is rounded down and Reset up to whole seconds, so Reset - Date never
        # undershoots; waiting "until Reset" (issue 2) needs no extra second. A value
        # beyond an hour is not a rate window (a proxy's, or milliseconds): capped.
        reset_in = min(MAX_RESET_WAIT_S, max(0.0, reset - server_now))
    return ServerWindow(limit=limit, remaining=remaining, reset_in_s=reset_in)


def _cause_texts(body: object) -> list[str]:
    if not isinstance(body, dict):
        return []
    return [
        str(c.get("errorSummary"))
        for c in body.get("errorCauses") or []
        if isinstance(c, dict) and c.get("errorSummary")
    ]


def rejected_subjects(
    body: object, groups: Sequence[Sequence[Signal]]
) -> list[tuple[Signal, list[str]]]:
    """The signals a 400's ``errorCauses`` blame, each with its causes (risk-api.md §6).

    A cause starting ``events[i].subjects[j]`` blames that subject; one starting
    ``events[i]`` alone (its timestamp, say) blames every subject of event ``i``. When
    any cause names nothing we can trace (the body, a count, an index out of range), the
    answer is empty: the whole batch is then dead-lettered, as nothing tells it apart.
    """
    causes = _cause_texts(body)
    blamed: dict[tuple[int, int], list[str]] = {}
    for cause in causes:
        match = _CAUSE_PATH.match(cause)
        if match is None:
            return []
        i = int(match.group(1))
        if i >= len(groups):
            return []
        if match.group(2) is None:
            subjects = range(len(groups[i]))
        else:
            j = int(match.group(2))
            if j >= len(groups[i]):
                return []
            subjects = range(j, j + 1)
        for j in subjects:
            blamed.setdefault((i, j), []).append(cause)
    return [(groups[i][j], texts) for (i, j), texts in sorted(blamed.items())]


def _error_causes(body: object) -> list[str]:
    if not isinstance(body, dict):
        return []
    causes = _cause_texts(body)
    summary = body.get("errorSummary")
    code = body.get("errorCode")
    head = f"{code}: {summary}" if code and summary else str(summary or code or "")
    return [head, *causes] if head else causes


class RiskEventsSender:
    """Sends batches of signals to one Okta org as RiskEvent arrays."""

    kind = "okta-risk-events"

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        org_url: str,
        tokens: TokenSource,
        clock: Clock,
        max_events: int = 20,
        max_subjects: int = 50,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = f"{org_url}{EVENTS_PATH}"
        self.max_signals_per_call = max_events * max_subjects
        self._session = session
        self._tokens = tokens
        self._clock = clock
        self._max_events = max_events
        self._max_subjects = max_subjects
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        #: Nonce challenges in a row (a retry answered with yet another challenge).
        self._challenges = 0

    async def prepare(self) -> None:
        """Have a valid access token before a batch is leased (so the token request's
        time cannot push a subject past its expiry)."""
        await self._tokens.get()

    async def send(
        self, signals: Sequence[Signal], *, spend: Callable[[], Awaitable[None]]
    ) -> Delivery:
        """POST one batch. ``spend`` is awaited right before the request (the budget)."""
        groups = group_subjects(
            signals, max_events=self._max_events, max_subjects=self._max_subjects
        )
        body = json.dumps(risk_events(groups), separators=(",", ":"))
        # May raise AuthError before any call is spent.
        access = await self._tokens.token()
        token = access.value
        dpop = self._tokens.dpop if access.dpop_bound else None
        request_headers = {
            "Authorization": f"{access.token_type} {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        if dpop is not None:
            # A new proof per request, bound to this token (ath) and URL (risk-api.md §9).
            request_headers["DPoP"] = dpop.proof(
                method="POST", url=self.url, server="resource", access_token=token
            )
        await spend()
        try:
            reply = await exchange(
                self._session,
                "POST",
                self.url,
                data=body,
                headers=request_headers,
                client_timeout=self._timeout,
            )
        except TimeoutError:
            raise RetryableSendError(
                f"no answer from {self.url} within {self._timeout.total}s", outcome="timeout"
            ) from None
        except aiohttp.ClientError as exc:
            raise RetryableSendError(f"{self.url}: {exc}", outcome="server_error") from None
        status, headers, text = reply.status, reply.headers, reply.text
        window = parse_rate_headers(headers, local_now=self._clock.time())
        challenges, self._challenges = self._challenges, 0
        new_nonce = dpop is not None and dpop.remember_nonce("resource", headers)
        if status == 202:
            return Delivery(subjects=len(signals), window=window)
        try:
            payload: object = json.loads(text) if text else None
        except ValueError:
            payload = None
        if status in (400, 401):
            self._dpop_refusal(
                status, headers, payload, token, dpop, new_nonce=new_nonce, challenges=challenges
            )
        if status == 429:
            retry_at = (
                self._clock.time() + window.reset_in_s
                if window is not None and window.reset_in_s is not None
                else None
            )
            raise _with_window(
                RetryableSendError(
                    "Okta answered 429 (E0000047): the provider's rate window is spent",
                    outcome="rate_limited",
                    retry_at=retry_at,
                ),
                window,
            )
        if status == 401:
            self._tokens.invalidate(token)
            raise _with_window(
                RetryableSendError(
                    "Okta refused the access token (401); fetching a new one",
                    outcome="auth_error",
                    drop_token=True,
                ),
                window,
            )
        if status in (400, 422):
            # Okta rejected the payload itself: resending it unchanged cannot help. When
            # its causes name subjects, only those are blamed; the rest can go again.
            causes = _error_causes(payload) or [f"{status} with body {text[:200]!r}"]
            rejected = rejected_subjects(payload, groups)
            what = f"{len(rejected)} of {len(signals)} subjects" if rejected else "the batch"
            raise _with_window(
                PermanentSendError(
                    f"Okta rejected {what} ({status})", causes=causes, rejected=rejected
                ),
                window,
            )
        if status == 413:
            raise _with_window(
                RetryableSendError(
                    "Okta refused the request body as too large (413); splitting the batch",
                    outcome="client_error",
                    shrink=True,
                ),
                window,
            )
        if status == 403:
            challenge = headers.get("WWW-Authenticate", "")
            if "insufficient_scope" in challenge:
                hint = (
                    f"the token lacks {RISK_EVENTS_SCOPE}: grant the scope to the service app "
                    "(`forwarder okta grant`)"
                )
            else:
                hint = (
                    "the service app is not this org's risk provider (`forwarder okta providers "
                    "set`), or the org is not enabled for third-party risk (ask Okta support)"
                )
            raise InvalidCredentials(
                f"Okta refused the events call (403 {'; '.join(_error_causes(payload))})",
                error="forbidden",
                hint=hint,
            )
        if status == 404:
            raise InvalidCredentials(
                f"{self.url} does not exist (404)",
                error="not_found",
                hint=(
                    "check org_url; Okta removed the Risk Events API from newer releases, so "
                    "this org may only accept SSF security events"
                ),
            )
        if status == 407:
            raise InvalidCredentials(
                "a proxy between forwarder and Okta asks for authentication (407)",
                error="proxy_auth",
                hint="set credentials in HTTPS_PROXY (http://user:pass@proxy:port) or bypass it",
            )
        if 300 <= status < 400:
            where = headers.get("Location", "elsewhere")
            raise InvalidCredentials(
                f"{self.url} redirects ({status}) to {where}",
                error="redirect",
                hint="org_url must be the org's own URL (not a custom domain alias or -admin)",
            )
        if status in (408, 425) or status >= 500:
            raise _with_window(
                RetryableSendError(
                    f"Okta answered {status}",
                    outcome="timeout" if status == 408 else "server_error",
                ),
                window,
            )
        # Any other answer says nothing about the payload: keep the batch and back off.
        raise _with_window(
            RetryableSendError(
                f"Okta answered {status}: {'; '.join(_error_causes(payload)) or text[:200]!r}",
                outcome="client_error",
            ),
            window,
        )

    def _dpop_refusal(
        self,
        status: int,
        headers: Mapping[str, str],
        payload: object,
        token: str,
        dpop: DPoP | None,
        *,
        new_nonce: bool,
        challenges: int,
    ) -> None:
        """Raise for an answer about DPoP (a nonce challenge, a refused proof, a token of
        the wrong kind); return for any other 400/401."""
        challenge = resource_challenge(headers)
        body = payload if isinstance(payload, dict) else {}
        error = challenge.get("error") or str(body.get("error", ""))
        description = challenge.get("error_description") or str(body.get("error_description", ""))
        if dpop is not None and error == "use_dpop_nonce":
            # One retry per new nonce; a nonce we already sent, or challenges without end
            # (a proxy dropping the header), stop the provider instead of spending calls.
            if new_nonce and challenges < _MAX_CHALLENGES:
                self._challenges = challenges + 1
                raise RetryableSendError(
                    "Okta asked for a DPoP nonce (401 use_dpop_nonce); sending again with it",
                    outcome="auth_error",
                    retry_now=True,
                )
            raise InvalidCredentials(
                "Okta keeps asking for a new DPoP nonce on the events call",
                error="use_dpop_nonce",
                hint="a proxy may be stripping the DPoP-Nonce header or the DPoP header",
            )
        if dpop is not None and error == "invalid_dpop_proof":
            raise InvalidCredentials(
                f"Okta refused the DPoP proof of the events call ({description})",
                error="invalid_dpop_proof",
                hint=dpop_error_hint(description, where=self.url),
            )
        text = description.lower()
        if "dpop" not in text:
            return
        self._tokens.invalidate(token)
        if "not dpop bound" in text or "not dpop-bound" in text:
            raise InvalidCredentials(
                f"Okta refused the events call ({status} {error}: {description})",
                error="not_dpop_bound",
                hint=(
                    "the token is not DPoP-bound though it was sent as DPoP: the app may have "
                    'stopped requiring DPoP; set dpop = "auto" for this provider'
                ),
            )
        raise InvalidCredentials(
            f"Okta refused the events call ({status} {error}: {description})",
            error="dpop_required",
            hint=(
                'the events API wants a DPoP-bound token and proof: set dpop = "auto" or '
                '"always" for this provider'
            ),
        )


def _with_window(
    error: RetryableSendError | PermanentSendError, window: ServerWindow | None
) -> RetryableSendError | PermanentSendError:
    error.window = window
    return error
