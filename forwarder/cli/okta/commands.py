"""``forwarder okta create-app``, ``grant``, ``providers list`` and ``providers set``.

One admin call (or two) each, the steps of Okta's guide done one at a time; ``setup``
runs them all in order.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import aiohttp

from forwarder.cli.okta.inputs import api_token, client_id_arg, org_arg
from forwarder.cli.okta.output import Output
from forwarder.okta.admin import AdminClient
from forwarder.okta.provision import (
    MAX_PROVIDERS,
    ProvisionError,
    check_provider_name,
    describe_provider,
    ensure_scope_granted,
    list_providers,
    load_public_jwk,
    set_provider,
)

__all__ = ["create_app", "grant", "providers_list", "providers_set"]


def _org(args: argparse.Namespace, out: Output) -> str:
    url, note = org_arg(args.org)
    if note:
        out.note(note)
    out.data["org_url"] = url
    return url


async def create_app(args: argparse.Namespace, out: Output) -> int:
    """Register a service app that authenticates with the given public key."""
    org_url = _org(args, out)
    if not args.name.strip():
        raise ProvisionError("--name must not be empty (it becomes the app's name in Okta)")
    jwk, was_private = load_public_jwk(Path(args.public_key))
    if was_private:
        out.note(f"{args.public_key} is a private key; registering only its public half")
    token = api_token(args.api_token_file)
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, org_url, token)
        app = await admin.create_service_app(args.name, jwk, dpop=args.dpop)
    client_id = str(app.get("client_id"))
    dpop = app.get("dpop_bound_access_tokens") is True
    out.say(f"created service app {args.name!r} in {org_url}")
    out.say(f"  client_id  {client_id}")
    out.say(f"  key        kid {jwk['kid']} ({jwk['kty']}, private_key_jwt)")
    if dpop:
        out.say('  DPoP       required (tokens are DPoP-bound; keep dpop = "auto" or "always")')
    out.say(f"next: forwarder okta grant --org {org_url} --client-id {client_id}")
    return out.finish(client_id=client_id, client_name=args.name, kid=jwk["kid"], dpop=dpop)


async def grant(args: argparse.Namespace, out: Output) -> int:
    """Grant okta.riskEvents.manage to the app; an existing grant is success."""
    org_url = _org(args, out)
    client_id = client_id_arg(args.client_id)
    token = api_token(args.api_token_file)
    async with aiohttp.ClientSession() as session:
        result = await ensure_scope_granted(AdminClient(session, org_url, token), client_id)
    if result.already:
        out.say(f"{result.scope} was already granted to {client_id}: nothing to do")
    else:
        out.say(f"granted {result.scope} to {client_id}")
    return out.finish(
        client_id=client_id,
        scope=result.scope,
        already_granted=result.already,
        grant_id=result.grant_id,
    )


async def providers_list(args: argparse.Namespace, out: Output) -> int:
    """Show the org's risk providers (at most three)."""
    org_url = _org(args, out)
    token = api_token(args.api_token_file)
    async with aiohttp.ClientSession() as session:
        providers = await list_providers(AdminClient(session, org_url, token))
    out.say(
        f"risk providers of {org_url}: {len(providers)} "
        f"(Okta allows at most {MAX_PROVIDERS} per org)"
    )
    for provider in providers:
        out.say(f"  {describe_provider(provider)}")
    return out.finish(providers=providers, max_providers=MAX_PROVIDERS)


async def providers_set(args: argparse.Namespace, out: Output) -> int:
    """Point a risk provider (the default one unless ``--id``) at a service app."""
    org_url = _org(args, out)
    client_id = client_id_arg(args.client_id)
    check_provider_name(args.name)
    token = api_token(args.api_token_file)
    async with aiohttp.ClientSession() as session:
        change = await set_provider(
            AdminClient(session, org_url, token),
            name=args.name,
            client_id=client_id,
            action=args.action,
            provider_id=args.id,
            create=args.create,
        )
    verb = "created" if change.created else "updated"
    if change.replaced_client_id:
        out.note(f"the provider named app {change.replaced_client_id} before; it no longer does")
    out.say(f"{verb} risk provider {describe_provider(change.provider)}")
    return out.finish(provider=change.provider, created=change.created)
