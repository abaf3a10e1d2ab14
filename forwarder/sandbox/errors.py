"""Okta's two error shapes, as exceptions the sandbox raises and the server renders.

* The management API (``/api/v1/...``) answers the Okta error object
  ``{errorCode, errorSummary, errorLink, errorId, errorCauses: [{errorSummary}]}``
  (spec schemas ``Error``/``ErrorCause``, risk-api.md §6): :class:`ApiError`.
* The OAuth endpoints (``/oauth2/v1/token``, ``/oauth2/v1/clients``) answer
  ``{error, error_description}`` (spec schema ``OAuthError``, risk-api.md §8): :class:`OAuthError`.

Codes and summaries come from Okta's error catalogue (okta-developer-docs
``data/error-codes.json``).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ApiError",
    "InsufficientScopeError",
    "OAuthError",
    "access_denied",
    "error_id",
    "invalid_token",
    "malformed_body",
    "method_not_allowed",
    "not_found",
    "okta_error_body",
    "random_id",
    "rate_limited",
    "unsupported_media_type",
    "validation_failed",
]

_ALPHANUMERIC = string.ascii_letters + string.digits


def random_id(prefix: str, length: int) -> str:
    """``prefix`` followed by ``length`` random letters and digits (Okta id style)."""
    return prefix + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


def error_id() -> str:
    """A fresh ``errorId``: unique per answer, like Okta's ``oae...`` ids."""
    return random_id("oae", 22)


def okta_error_body(code: str, summary: str, causes: Sequence[str] = ()) -> dict[str, Any]:
    """The Okta error object; ``errorLink`` repeats the code, as Okta does."""
    return {
        "errorCode": code,
        "errorSummary": summary,
        "errorLink": code,
        "errorId": error_id(),
        "errorCauses": [{"errorSummary": cause} for cause in causes],
    }


class ApiError(Exception):
    """A management-API failure rendered as the Okta error object."""

    def __init__(
        self,
        status: int,
        code: str,
        summary: str,
        causes: Sequence[str] = (),
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.summary = summary
        self.causes = list(causes)
        self.headers = dict(headers or {})
        super().__init__(f"{status} {code}: {summary}")

    def body(self) -> dict[str, Any]:
        """The JSON body, with a fresh ``errorId``."""
        return okta_error_body(self.code, self.summary, self.causes)


class OAuthError(Exception):
    """An OAuth endpoint failure rendered as ``{"error", "error_description"}``."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.error = error
        self.description = description
        self.headers = dict(headers or {})
        super().__init__(f"{status} {error}: {description}")

    def body(self) -> dict[str, str]:
        """The JSON body."""
        return {"error": self.error, "error_description": self.description}


class InsufficientScopeError(Exception):
    """403 with an empty body: an OAuth access token lacks the scope the endpoint needs.

    Observed Okta behaviour (risk-api.md §6: okta-sdk-golang#145, terraform-provider-okta#2375):
    the reason is only in the ``WWW-Authenticate`` header.
    """

    status = 403

    def __init__(self, *, origin: str, scope: str, resource: str) -> None:
        self.origin = origin
        self.scope = scope
        self.resource = resource
        super().__init__(f"403 insufficient_scope: {scope} needed for {resource}")

    @property
    def headers(self) -> dict[str, str]:
        """The ``WWW-Authenticate`` challenge naming the missing scope."""
        return {
            "WWW-Authenticate": (
                f'Bearer authorization_uri="{self.origin}/oauth2/v1/authorize", '
                f'realm="{self.origin}", scope="{self.scope}", error="insufficient_scope", '
                'error_description="The access token provided does not contain the required '
                f'scopes.", resource="{self.resource}"'
            )
        }


def validation_failed(causes: Sequence[str]) -> ApiError:
    """400 E0000001; the summary names the first offending path, the causes list them all."""
    first = causes[0].split(":", 1)[0] if causes else "request"
    return ApiError(400, "E0000001", f"Api validation failed: {first}", causes)


def malformed_body() -> ApiError:
    """400 E0000003: the body is not parseable JSON."""
    return ApiError(400, "E0000003", "The request body was not well-formed.")


def invalid_token() -> ApiError:
    """401 E0000011: missing, unknown, expired or revoked credentials."""
    return ApiError(401, "E0000011", "Invalid token provided")


def access_denied(causes: Sequence[str] = ()) -> ApiError:
    """403 E0000006."""
    return ApiError(
        403, "E0000006", "You do not have permission to perform the requested action", causes
    )


def not_found(what: str) -> ApiError:
    """404 E0000007 ``Not found: {what}``."""
    return ApiError(404, "E0000007", f"Not found: {what}")


def method_not_allowed() -> ApiError:
    """405 E0000022."""
    return ApiError(405, "E0000022", "The endpoint does not support the provided HTTP method")


def rate_limited() -> ApiError:
    """429 E0000047, the exact body of Okta's ``ErrorTooManyRequests`` example."""
    return ApiError(429, "E0000047", "API call exceeded rate limit due to too many requests.")


def unsupported_media_type() -> ApiError:
    """415 with Okta's "HTTP media type not supported" code E0000021.

    Okta's catalogue lists E0000021 with status 400; the sandbox answers the HTTP-correct 415
    (a sender must treat either as a permanent error of its own making).
    """
    return ApiError(
        415,
        "E0000021",
        "Bad request.  Accept and/or Content-Type headers likely do not match supported values.",
    )
