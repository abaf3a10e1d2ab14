"""``forwarder okta setup``: Okta's whole Postman walkthrough as one repeatable command.

Steps, in order, stopping at the first failure with what to fix and how to continue:
org (the API token works and a risk provider can be chosen, before anything changes),
keys, app, grant, provider, check. On success it prints the ``[[providers]]`` block for
the config, or with ``--write-to DIR`` writes it as that org's file in the daemon's
drop-in directory (``provider_files``), ready for ``SIGHUP``.

``--name`` is Okta's display name (the service app and the risk provider; spaces are
fine, as in Okta's own "Risk Provider Example"); ``--provider-name`` is forwarder's name
for the provider (default: a slug of the display name). ``--key FILE`` registers the
vendor's existing key pair instead of generating one per org.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

from forwarder.cli.okta.check import result_lines
from forwarder.cli.okta.inputs import api_token, org_arg
from forwarder.cli.okta.output import Output
from forwarder.clock import SystemClock
from forwarder.errors import ForwarderError
from forwarder.okta.admin import AdminClient
from forwarder.okta.provision import (
    MAX_PROVIDERS,
    CheckFailed,
    ProvisionError,
    check_provider,
    check_provider_name,
    choose_provider,
    describe_provider,
    drop_in_path,
    ensure_scope_granted,
    is_unconfigured,
    list_providers,
    provider_slug,
    providers_block,
    reuse_key_pair,
    set_provider,
    write_drop_in,
    write_key_pair,
)
from forwarder.okta.provision.dropin import check_provider_name as check_config_name

__all__ = ["STEPS", "setup"]

STEPS = ("org", "keys", "app", "grant", "provider", "check")


def _names(args: argparse.Namespace) -> tuple[str, str]:
    """(Okta's display name, forwarder's provider name)."""
    display = check_provider_name(args.name)
    if args.provider_name:
        return display, check_config_name(args.provider_name)
    return display, provider_slug(display)


class _Progress:
    """Prints ``[n/6] step ok detail`` lines and records them for ``--json``."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.current = STEPS[0]
        self.steps: list[dict[str, Any]] = []
        out.data["steps"] = self.steps

    def start(self, step: str) -> None:
        self.current = step

    def ok(self, detail: str) -> None:
        self.steps.append({"step": self.current, "ok": True, "detail": detail})
        number = STEPS.index(self.current) + 1
        self.out.say(f"  [{number}/{len(STEPS)}] {self.current:<9} ok  {detail}")

    def failed(self) -> None:
        self.steps.append({"step": self.current, "ok": False})
        number = STEPS.index(self.current) + 1
        self.out.say(f"  [{number}/{len(STEPS)}] {self.current:<9} FAILED")
        self.out.data["stopped_at"] = self.current


async def setup(args: argparse.Namespace, out: Output) -> int:
    """Provision ``--org`` for ``--name`` end to end."""
    org_url, note = org_arg(args.org)
    if note:
        out.note(note)
    out.data["org_url"] = org_url
    display, name = _names(args)
    out.data["provider_name"] = name
    if args.key is None and args.keys_dir is None:
        raise ProvisionError("pass --keys-dir DIR (a new key pair) or --key FILE (reuse one)")
    if args.write_to:
        # Refused before anything changes in Okta.
        drop_in_path(Path(args.write_to), name, force=args.force)
    token = api_token(args.api_token_file)
    progress = _Progress(out)
    state: dict[str, str] = {"display": display}
    out.say(f"forwarder okta setup: provisioning {display!r} (provider {name!r}) in {org_url}")
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, org_url, token)
        try:
            return await _steps(args, out, progress, admin, session, name, state)
        except ForwarderError as exc:
            progress.failed()
            resume = _resume(args, progress.current, org_url, name, state)
            out.data["resume"] = resume
            code = out.fail(exc)
            if not out.as_json:
                print(f"setup stopped at {progress.current}: {resume}", file=sys.stderr, flush=True)
                if progress.current == "check":
                    out.say()
                    out.say(state["block"])
            return code


async def _steps(
    args: argparse.Namespace,
    out: Output,
    progress: _Progress,
    admin: AdminClient,
    session: aiohttp.ClientSession,
    name: str,
    state: dict[str, str],
) -> int:
    org_url = admin.org_url
    providers = await list_providers(admin)
    if args.provider_id:
        target = next((p for p in providers if p.get("id") == args.provider_id), None)
        if target is None:
            raise ProvisionError(
                f"no risk provider has id {args.provider_id!r} in {org_url}; it has:",
                [describe_provider(p) for p in providers],
            )
    else:
        target = choose_provider(providers, id_flag="--provider-id")
    plan = f"will update {target.get('id')}" if target else "will create one"
    if target and not is_unconfigured(target):
        plan += f" (it names app {target.get('clientId')} now)"
    progress.ok(
        f"API token accepted; {len(providers)} of at most {MAX_PROVIDERS} risk providers, {plan}"
    )

    progress.start("keys")
    if args.key:
        pair = reuse_key_pair(Path(args.key))
        progress.ok(f"reusing {pair.private_file}; kid {pair.key.kid}")
    else:
        pair = write_key_pair(Path(args.keys_dir), name, alg=args.alg, force=args.force)
        progress.ok(
            f"{pair.private_file} (private, 0600) and {pair.public_file}; kid {pair.key.kid}"
        )
    state["public_key"] = str(pair.public_file)
    display = state["display"]

    progress.start("app")
    app = await admin.create_service_app(display, pair.public_jwk())
    client_id = str(app.get("client_id"))
    state["client_id"] = client_id
    out.data["client_id"] = client_id
    progress.ok(f"service app {display!r}: client_id {client_id}")

    progress.start("grant")
    granted = await ensure_scope_granted(admin, client_id)
    progress.ok(f"{granted.scope} {'was already granted' if granted.already else 'granted'}")

    progress.start("provider")
    change = await set_provider(
        admin,
        name=display,
        client_id=client_id,
        action=args.action,
        provider_id=str(target.get("id")) if target else None,
        create=target is None,
    )
    state["provider_id"] = str(change.provider.get("id"))
    out.data["provider"] = change.provider
    verb = "created" if change.created else "updated"
    progress.ok(f"{verb} {describe_provider(change.provider)}")

    block = providers_block(
        name=name,
        org_url=org_url,
        client_id=client_id,
        private_key_file=pair.private_file.resolve(),
    )
    state["block"] = block
    out.data["config_block"] = block
    progress.start("check")
    result = await check_provider(
        session=session,
        name=name,
        org_url=org_url,
        client_id=client_id,
        key_file=pair.private_file,
        clock=SystemClock(),
        send_test=args.send_test,
    )
    if not result.ok:
        raise CheckFailed(result)
    progress.ok(result_lines(result)[0].removeprefix(f"{name}: OK  "))
    out.say()
    if args.write_to:
        path = drop_in_path(Path(args.write_to), name, force=args.force)
        write_drop_in(path, block, force=args.force)
        out.data["written_to"] = str(path)
        out.say(f"done. Wrote {path}: with it in the config's provider_files, send the")
        out.say("running daemon SIGHUP (e.g. `kill -HUP PID`) and it starts sending to this org.")
        return out.finish()
    out.say("done. Add this to forwarder's config, then check it with")
    out.say("`forwarder okta check --config FILE` and start `forwarder run --config FILE`:")
    out.say()
    out.say(block)
    return out.finish()


def _resume(
    args: argparse.Namespace, step: str, org_url: str, name: str, state: dict[str, str]
) -> str:
    """What was left behind by the failed setup and how to continue after fixing it."""
    cid = state.get("client_id", "")
    shown = json.dumps(state.get("display", name))
    set_cmd = (
        f"forwarder okta providers set --org {org_url}"
        + (f" --id {args.provider_id}" if args.provider_id else "")
        + f" --name {shown} --client-id {cid} --action {args.action}"
    )
    if step in ("org", "keys"):
        return f"nothing was changed in {org_url}; fix the above and run setup again"
    if step == "app":
        return (
            f"nothing was registered in {org_url}; the key files are written: run setup again "
            f"with --force, or register them with `forwarder okta create-app --org {org_url} "
            f"--name {shown} --public-key {state.get('public_key')}`"
        )
    if step == "grant":
        return (
            f"service app {cid} is registered; after fixing, continue with "
            f"`forwarder okta grant --org {org_url} --client-id {cid}`, then `{set_cmd}`"
        )
    if step == "provider":
        return f"service app {cid} is registered and granted; after fixing, run `{set_cmd}`"
    return (
        "everything is registered; after fixing, add the block below to the config and "
        "run `forwarder okta check --config FILE`"
    )
