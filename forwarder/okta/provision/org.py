"""The org side: the scope grant and the risk providers (risk-api.md §7, steps 2 and 3).

Each call is safe to repeat: an existing grant is success, and a provider is replaced
(``PUT``) rather than duplicated. Okta's 404s get hints naming what is really wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forwarder.errors import AdminApiError
from forwarder.okta.admin import AdminClient
from forwarder.okta.provision.errors import ProvisionError
from forwarder.okta.tokens import RISK_EVENTS_SCOPE

__all__ = [
    "MAX_PROVIDERS",
    "PROVIDER_ACTIONS",
    "GrantResult",
    "ProviderChange",
    "check_provider_name",
    "choose_provider",
    "describe_provider",
    "ensure_scope_granted",
    "is_unconfigured",
    "list_providers",
    "providers_block",
    "set_provider",
]

#: ``createRiskProvider``: "You can create a maximum of three risk provider objects."
MAX_PROVIDERS = 3
#: ``RiskProviderAction``.
PROVIDER_ACTIONS = ("none", "log_only", "enforce_and_log")
#: ``RiskProvider.name``: ``maxLength: 50``.
_PROVIDER_NAME_MAX = 50


def _rehint(exc: AdminApiError, hint: str) -> AdminApiError:
    return AdminApiError(str(exc), status=exc.status, body=exc.body, hint=hint)


@dataclass(frozen=True, slots=True)
class GrantResult:
    """The app holds ``scope``; ``already`` says it did before this call."""

    client_id: str
    scope: str
    already: bool
    grant_id: str | None


def _active_grant(grants: object, scope: str) -> dict[str, Any] | None:
    for grant in grants if isinstance(grants, list) else []:
        if (
            isinstance(grant, dict)
            and grant.get("scopeId") == scope
            and grant.get("status", "ACTIVE") == "ACTIVE"
        ):
            return grant
    return None


def _grant_id(grant: dict[str, Any] | None) -> str | None:
    value = grant.get("id") if grant else None
    return value if isinstance(value, str) else None


async def ensure_scope_granted(
    admin: AdminClient, client_id: str, scope: str = RISK_EVENTS_SCOPE
) -> GrantResult:
    """Grant ``scope`` to the service app unless it already holds it.

    The app's grant list is read first (the robust check). Okta does not document its
    answer to a repeated grant (terraform-provider-okta#2379 reports an "already
    assigned" error); a 400/409 that the list then confirms, or that says "already", is
    taken as success.
    """
    not_found = (
        f"no service app has client id {client_id!r} in {admin.org_url}: check --client-id "
        "(the app's Client ID, 0oa...) and --org; Okta's 'Resource not found' means one of "
        "them is wrong"
    )
    try:
        existing = _active_grant(await admin.list_grants(client_id), scope)
    except AdminApiError as exc:
        raise (_rehint(exc, not_found) if exc.status == 404 else exc) from None
    if existing is not None:
        return GrantResult(client_id, scope, already=True, grant_id=_grant_id(existing))
    try:
        grant = await admin.grant_scope(client_id, scope)
    except AdminApiError as exc:
        if exc.status not in (400, 409):
            raise (_rehint(exc, not_found) if exc.status == 404 else exc) from None
        again = _active_grant(await admin.list_grants(client_id), scope)
        if again is None and "already" not in json.dumps(exc.body).lower():
            raise
        return GrantResult(client_id, scope, already=True, grant_id=_grant_id(again))
    return GrantResult(client_id, scope, already=False, grant_id=_grant_id(grant))


def is_unconfigured(provider: dict[str, Any]) -> bool:
    """The default provider of a fresh org names no app (``clientId: "null"``)."""
    return provider.get("clientId") in (None, "", "null")


def describe_provider(provider: dict[str, Any]) -> str:
    """One line: id, name, app and action."""
    app = "no app yet" if is_unconfigured(provider) else f"clientId {provider.get('clientId')}"
    return (
        f"{provider.get('id')}  name {str(provider.get('name', ''))!r}  {app}  "
        f"action {provider.get('action')}"
    )


def check_provider_name(name: str) -> str:
    """A risk provider name Okta accepts (1 to 50 characters)."""
    if not name.strip():
        raise ProvisionError("--name must not be empty")
    if len(name) > _PROVIDER_NAME_MAX:
        raise ProvisionError(
            f"--name has {len(name)} characters; Okta allows at most {_PROVIDER_NAME_MAX} "
            "for a risk provider"
        )
    return name


async def list_providers(admin: AdminClient) -> list[dict[str, Any]]:
    """The org's risk providers; a 404 means the org has no Risk Providers API."""
    try:
        providers = await admin.list_providers()
    except AdminApiError as exc:
        if exc.status != 404:
            raise
        raise _rehint(
            exc,
            f"{admin.org_url} has no risk providers API: check --org, and ask Okta support "
            "to enable third-party risk providers for this org (Okta deprecated this API)",
        ) from None
    return [p for p in providers if isinstance(p, dict)] if isinstance(providers, list) else []


def choose_provider(
    providers: list[dict[str, Any]], *, create: bool = False, id_flag: str = "--id"
) -> dict[str, Any] | None:
    """The provider to update when no id was given, or None to create one.

    With exactly one provider (a fresh org's default), that one; with none, or with
    ``create``, a new one (refused at Okta's limit of three); otherwise the operator
    must choose with ``id_flag``.
    """
    listing = [describe_provider(p) for p in providers]
    if create:
        if len(providers) >= MAX_PROVIDERS:
            raise ProvisionError(
                f"this org already has {len(providers)} risk providers, Okta's maximum; "
                f"update one of them with {id_flag} instead",
                listing,
            )
        return None
    if not providers:
        return None
    if len(providers) == 1:
        return providers[0]
    raise ProvisionError(
        f"this org has {len(providers)} risk providers; say which one to update with {id_flag}",
        listing,
    )


@dataclass(frozen=True, slots=True)
class ProviderChange:
    """The provider as Okta returned it after the change.

    ``replaced_client_id``: the other app the chosen provider named before (so the
    operator hears that another integration was displaced), when known.
    """

    provider: dict[str, Any]
    created: bool
    replaced_client_id: str | None = None


async def set_provider(
    admin: AdminClient,
    *,
    name: str,
    client_id: str,
    action: str,
    provider_id: str | None = None,
    create: bool = False,
) -> ProviderChange:
    """Point a risk provider at ``client_id`` (``PUT``, or ``POST`` for a new one)."""
    check_provider_name(name)
    if action not in PROVIDER_ACTIONS:
        raise ProvisionError(f"--action must be one of {', '.join(PROVIDER_ACTIONS)}")
    replaced: str | None = None
    if provider_id is None:
        target = choose_provider(await list_providers(admin), create=create)
        if target is None:
            created = await admin.create_provider(name=name, client_id=client_id, action=action)
            return ProviderChange(created, created=True)
        provider_id = str(target.get("id"))
        if not is_unconfigured(target) and target.get("clientId") != client_id:
            replaced = str(target.get("clientId"))
    try:
        updated = await admin.update_provider(
            provider_id, name=name, client_id=client_id, action=action
        )
    except AdminApiError as exc:
        if exc.status != 404:
            raise
        known = await list_providers(admin)
        lines = "\n".join(f"  {describe_provider(p)}" for p in known) or "  (none)"
        raise _rehint(
            exc, f"no risk provider has id {provider_id!r} in {admin.org_url}; it has:\n{lines}"
        ) from None
    return ProviderChange(updated, created=False, replaced_client_id=replaced)


def providers_block(*, name: str, org_url: str, client_id: str, private_key_file: Path) -> str:
    """The ``[[providers]]`` entry to paste into the config (TOML)."""
    # JSON string escapes are valid TOML basic strings.
    return "\n".join(
        [
            "[[providers]]",
            f"name = {json.dumps(name)}",
            f"org_url = {json.dumps(org_url)}",
            f"client_id = {json.dumps(client_id)}",
            f"private_key_file = {json.dumps(str(private_key_file))}",
        ]
    )
