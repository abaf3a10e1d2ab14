"""Risk providers and scope consent grants: their rules and their JSON, without HTTP.

Shapes follow the spec schemas ``RiskProvider`` and ``OAuth2ScopeConsentGrant`` and the
examples of the openapi subset; rules follow risk-api.md §7.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from forwarder.sandbox.errors import validation_failed
from forwarder.sandbox.validation import format_timestamp

__all__ = [
    "KNOWN_SCOPES",
    "MAX_PROVIDERS",
    "PROVIDER_ACTIONS",
    "PROVIDER_NAME_MAX",
    "RISK_EVENTS_SCOPE",
    "Grant",
    "Provider",
    "parse_grant_body",
    "parse_provider_body",
    "provider_timestamp",
]

#: The scope a token needs to send risk events.
RISK_EVENTS_SCOPE = "okta.riskEvents.manage"
#: Okta scopes the sandbox's org authorization server knows (a subset of Okta's list).
KNOWN_SCOPES = frozenset(
    {
        "okta.riskEvents.manage",
        "okta.riskProviders.read",
        "okta.riskProviders.manage",
        "okta.clients.register",
        "okta.clients.read",
        "okta.clients.manage",
        "okta.appGrants.read",
        "okta.appGrants.manage",
        "okta.apps.read",
        "okta.apps.manage",
        "okta.logs.read",
    }
)
#: ``RiskProviderAction``.
PROVIDER_ACTIONS = ("none", "log_only", "enforce_and_log")
#: ``createRiskProvider``: "You can create a maximum of three risk provider objects."
MAX_PROVIDERS = 3
#: ``RiskProvider.name``: ``maxLength: 50``.
PROVIDER_NAME_MAX = 50


def provider_timestamp(epoch_s: float) -> str:
    """Provider ``created``/``lastUpdated`` as in Okta's examples: ``2021-01-05 22:18:30``."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(slots=True)
class Provider:
    """A risk provider: which service app (``client_id``) sends events, and what Okta does."""

    id: str
    name: str
    client_id: str
    action: str
    created: float
    last_updated: float

    def to_json(self, origin: str) -> dict[str, Any]:
        """The ``RiskProvider`` object; links are relative when ``origin`` is empty."""
        return {
            "id": self.id,
            "action": self.action,
            "name": self.name,
            "clientId": self.client_id,
            "created": provider_timestamp(self.created),
            "lastUpdated": provider_timestamp(self.last_updated),
            "_links": {
                "self": {
                    "href": f"{origin}/api/v1/risk/providers/{self.id}",
                    "hints": {"allow": ["GET", "PUT"]},
                }
            },
        }


@dataclass(slots=True)
class Grant:
    """A scope consent grant on a service app. ``issuer`` None: granted programmatically."""

    id: str
    client_id: str
    scope_id: str
    issuer: str | None
    created: float
    created_by: str

    def to_json(self, origin: str, client_name: str) -> dict[str, Any]:
        """The ``OAuth2ScopeConsentGrant`` object, shaped like the spec's ``AppGrantsEx``."""
        stamp = format_timestamp(self.created)
        app_href = f"{origin}/api/v1/apps/{self.client_id}"
        return {
            "id": self.id,
            "status": "ACTIVE",
            "created": stamp,
            "createdBy": {"id": self.created_by, "type": "User"},
            "lastUpdated": stamp,
            "issuer": self.issuer if self.issuer is not None else origin,
            "clientId": self.client_id,
            "scopeId": self.scope_id,
            "source": "ADMIN",
            "_embedded": {"scope": {"id": self.scope_id}},
            "_links": {
                "app": {"href": app_href, "title": client_name},
                "self": {
                    "href": f"{app_href}/grants/{self.id}",
                    "hints": {"allow": ["GET", "DELETE"]},
                },
                "client": {
                    "href": f"{origin}/oauth2/v1/clients/{self.client_id}",
                    "title": client_name,
                },
            },
        }


def parse_provider_body(body: Any, *, others: Iterable[Provider]) -> tuple[str, str, str]:
    """``(name, clientId, action)`` of a create/replace body, or 400 E0000001 listing the causes.

    All three fields are required (schema ``RiskProvider``); read-only fields are ignored;
    ``name`` must be unique among ``others`` (risk-api.md §4).
    """
    if not isinstance(body, dict):
        raise validation_failed(["body: must be a RiskProvider object"])
    causes: list[str] = []
    name = body.get("name")
    if not isinstance(name, str) or not name:
        causes.append("name: is required (a string)")
    elif len(name) > PROVIDER_NAME_MAX:
        causes.append(f"name: must be at most {PROVIDER_NAME_MAX} characters (got {len(name)})")
    elif any(p.name == name for p in others):
        causes.append("name: a risk provider with this name already exists")
    client_id = body.get("clientId")
    if not isinstance(client_id, str) or not client_id:
        causes.append("clientId: is required (the client_id of the provider's service app)")
    action = body.get("action")
    if not isinstance(action, str) or action not in PROVIDER_ACTIONS:
        causes.append(f"action: must be one of {', '.join(PROVIDER_ACTIONS)}")
    if causes:
        raise validation_failed(causes)
    return str(name), str(client_id), str(action)


def parse_grant_body(body: Any, *, origin: str) -> str:
    """The ``scopeId`` of a grant body, or 400 E0000001 naming each problem.

    ``scopeId`` and ``issuer`` are both required (schema ``OAuth2ScopeConsentGrant``);
    the issuer is the org authorization server, i.e. the org's own URL.
    """
    if not isinstance(body, dict):
        raise validation_failed(["body: must be an OAuth2ScopeConsentGrant object"])
    causes: list[str] = []
    scope_id = body.get("scopeId")
    if not isinstance(scope_id, str) or not scope_id:
        causes.append("scopeId: is required")
    elif scope_id not in KNOWN_SCOPES:
        causes.append(f"scopeId: {scope_id[:100]!r} is not an Okta scope this org knows")
    issuer = body.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        causes.append("issuer: is required (the org URL)")
    elif issuer.rstrip("/") != origin:
        causes.append(f"issuer: must be the org authorization server {origin}")
    if causes:
        raise validation_failed(causes)
    return str(scope_id)
