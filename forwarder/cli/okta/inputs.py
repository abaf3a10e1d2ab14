"""What an operator types or pastes: the org URL, a client id and the Okta API token.

Each is checked the way the daemon's config checks it (Okta's troubleshooting list:
quotes or spaces in copied values, the ``-admin`` URL, a trailing ``/``), and a
mistake becomes a :class:`ProvisionError` naming the flag and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from forwarder.config import validate_client_id, validate_org_url
from forwarder.okta.provision import ProvisionError

__all__ = ["API_TOKEN_ENV", "api_token", "client_id_arg", "org_arg"]

#: Where the Okta API token comes from when ``--api-token-file`` is not given.
API_TOKEN_ENV = "FORWARDER_OKTA_API_TOKEN"  # noqa: S105 - a variable name, not a secret
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def org_arg(value: str, flag: str = "--org") -> tuple[str, str | None]:
    """The canonical org URL and, when it differs from ``value``, a note saying so."""
    try:
        url = validate_org_url(value, flag)
    except ValueError as exc:
        raise ProvisionError(str(exc)) from None
    if url == value:
        return url, None
    if url == value.rstrip("/"):
        return url, f"{flag}: dropped the trailing '/'; using {url}"
    return url, f"{flag}: using {url} (scheme and host lower-case, no default port)"


def client_id_arg(value: str, flag: str = "--client-id") -> str:
    """A client id with no quotes or whitespace."""
    try:
        return validate_client_id(value, flag)
    except ValueError as exc:
        raise ProvisionError(str(exc)) from None


def _clean_token(raw: str, where: str) -> str:
    token = raw.strip()
    if token[:5].lower() == "ssws ":
        # Copied with its scheme from an Authorization header: the scheme is ours to add.
        token = token[5:].strip()
    if not token:
        raise ProvisionError(f"{where} holds no API token")
    if token[0] in _QUOTES or token[-1] in _QUOTES:
        raise ProvisionError(f"the API token in {where} is wrapped in quotes; remove them")
    if any(c.isspace() for c in token):
        raise ProvisionError(f"the API token in {where} contains whitespace; paste it again")
    return token


def api_token(token_file: str | None) -> str:
    """The Okta API token, from ``--api-token-file`` or ``$FORWARDER_OKTA_API_TOKEN``.

    Never from a plain argument: it would land in shell history and process listings.
    """
    if token_file:
        try:
            raw = Path(token_file).read_text()
        except OSError as exc:
            raise ProvisionError(f"--api-token-file {token_file}: {exc.strerror}") from None
        return _clean_token(raw, token_file)
    from_env = os.environ.get(API_TOKEN_ENV)
    if from_env is not None:
        return _clean_token(from_env, f"${API_TOKEN_ENV}")
    raise ProvisionError(
        f"an Okta API token is needed: set {API_TOKEN_ENV} or pass --api-token-file FILE "
        "(create one in the Admin Console under Security > API > Tokens, as an admin with "
        "the Super Admin role for scope grants)"
    )
