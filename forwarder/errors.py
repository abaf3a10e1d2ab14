"""The error tree. Every message says what the operator should do next.

::

    ForwarderError
     ├── ConfigError              the config or a key file is wrong; fix it and restart
     ├── StoreError               the store cannot be read or written
     │    └── StoreFull           max_pending reached; ingest answers 503 until it drains
     ├── AuthError                a token could not be had right now (retryable)
     │    └── InvalidCredentials  Okta refused the key, client id, scope or org (operator acts)
     ├── SendError                an events call did not get a 202
     │    ├── RetryableSendError  keep the batch, try again at ``retry_at``
     │    └── PermanentSendError  Okta rejected the payload; what it names (or the batch) is
     │                            dead-lettered
     └── AdminApiError            an Okta admin call (provisioning) was refused

Retryability is a type: the dispatcher catches ``SendError`` in one place and
branches on the subclass.
"""

from __future__ import annotations

from collections.abc import Sequence

from forwarder.delivery import ServerWindow
from forwarder.signals import Signal

__all__ = [
    "AdminApiError",
    "AuthError",
    "ConfigError",
    "ForwarderError",
    "InvalidCredentials",
    "PermanentSendError",
    "RetryableSendError",
    "SendError",
    "StoreError",
    "StoreFull",
]


class ForwarderError(Exception):
    """Base of every error forwarder raises on purpose."""


class ConfigError(ForwarderError):
    """The configuration is invalid. ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class StoreError(ForwarderError):
    """The store failed; the message names the file or server involved."""


class StoreFull(StoreError):
    """``max_pending`` entries are stored (after ageing out what is past ``max_age_s``)."""


class AuthError(ForwarderError):
    """No access token could be obtained now; retrying later may work."""


class InvalidCredentials(AuthError):
    """Okta refused our identity; an operator must fix key, client id, scope grant or org URL."""

    def __init__(self, message: str, *, error: str = "", hint: str = "") -> None:
        self.message = message
        self.error = error
        self.hint = hint
        super().__init__(f"{message} (hint: {hint})" if hint else message)


class SendError(ForwarderError):
    """An events call did not end in 202."""

    def __init__(self, message: str, *, outcome: str) -> None:
        self.outcome = outcome
        #: The server's rate headers on the failed answer, when it sent any.
        self.window: ServerWindow | None = None
        super().__init__(message)


class RetryableSendError(SendError):
    """Keep the batch and try again no earlier than ``retry_at`` (epoch seconds, or None)."""

    def __init__(
        self,
        message: str,
        *,
        outcome: str,
        retry_at: float | None = None,
        drop_token: bool = False,
        shrink: bool = False,
        retry_now: bool = False,
    ) -> None:
        self.retry_at = retry_at
        #: The receiver asked for the same call again with something it just sent (a
        #: fresh nonce): retry at once, within the budget, without backing off.
        self.retry_now = retry_now
        self.drop_token = drop_token
        #: The receiver refused the size of the request: send fewer signals per call.
        self.shrink = shrink
        super().__init__(message, outcome=outcome)


class PermanentSendError(SendError):
    """The receiver rejected the payload itself (400); resending it unchanged cannot help.

    ``rejected`` names the signals the receiver blamed, each with its causes: only those
    are dead-lettered and the rest of the batch goes again. Empty when the causes name no
    signal: then the whole batch is dead-lettered.
    """

    def __init__(
        self,
        message: str,
        *,
        causes: Sequence[str],
        outcome: str = "client_error",
        rejected: Sequence[tuple[Signal, Sequence[str]]] = (),
    ) -> None:
        self.causes = list(causes)
        self.rejected = list(rejected)
        super().__init__(message, outcome=outcome)


class AdminApiError(ForwarderError):
    """An Okta admin API call failed; carries Okta's error body and a hint."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: object = None,
        hint: str = "",
    ) -> None:
        self.status = status
        self.body = body
        self.hint = hint
        super().__init__(message)
