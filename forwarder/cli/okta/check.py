"""``forwarder okta check``: prove each configured provider can get a token (and send).

A token proves the key, the client id, the scope grant and the org URL together (with
DPoP when the app requires it, and the output says so); with ``--send-test`` one
harmless event proves the provider is configured too (it spends one of the provider's
calls for the minute, and says so); ``--confirm`` then finds that event in the org's
System Log, the last step of Okta's guide.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp

from forwarder.cli.common import config_path
from forwarder.cli.okta.inputs import api_token
from forwarder.cli.okta.output import Output
from forwarder.clock import SystemClock
from forwarder.config import load_settings, resolve_path
from forwarder.okta.admin import AdminClient
from forwarder.okta.provision import (
    TEST_EVENT_IP,
    TEST_EVENT_MESSAGE,
    CheckResult,
    Confirm,
    ProvisionError,
    check_provider,
)

__all__ = ["check", "result_lines"]


def result_lines(result: CheckResult) -> list[str]:
    """One line per provider, plus the fix when it failed."""
    if result.ok:
        return [f"{result.provider}: OK  {result.detail}"]
    lines = [f"{result.provider}: FAILED ({result.step}) {result.detail}"]
    if result.hint:
        lines.append(f"  fix: {result.hint}")
    return lines


async def check(args: argparse.Namespace, out: Output) -> int:
    """Check every provider of the config (or ``--provider NAME``)."""
    path = config_path(args.config)
    if path is None:
        raise ProvisionError("okta check needs --config FILE (or $FORWARDER_CONFIG)")
    # Key files are checked per provider below, so one bad file fails only its line.
    settings, base = load_settings(path, check_files=False)
    providers = list(settings.providers)
    if args.provider:
        providers = [p for p in providers if p.name == args.provider]
        if not providers:
            names = ", ".join(p.name for p in settings.providers)
            raise ProvisionError(
                f"{path} has no provider named {args.provider!r} (it has: {names})"
            )
    token = None
    if args.confirm:
        if not args.send_test:
            raise ProvisionError("--confirm needs --send-test (it looks for the test event)")
        if not 0 < args.confirm_timeout <= 3600:
            raise ProvisionError("--confirm-timeout must be between 0 and 3600 seconds")
        orgs = sorted({p.org_url for p in providers})
        if len(orgs) > 1:
            raise ProvisionError(
                "--confirm reads one org's System Log with one API token; choose a provider "
                f"with --provider (these are in {len(orgs)} orgs)",
                orgs,
            )
        token = api_token(args.api_token_file)
    if args.send_test:
        out.say(
            f"sending one test event per provider ({TEST_EVENT_IP} LOW "
            f"{TEST_EVENT_MESSAGE!r}): each spends one of the provider's calls this minute"
        )
    if args.confirm:
        out.say(
            f"then polling the System Log for security.risk.signal.consume for up to "
            f"{args.confirm_timeout:g} s"
        )
    clock = SystemClock()
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(
                check_provider(
                    session=session,
                    name=p.name,
                    org_url=p.org_url,
                    client_id=p.client_id,
                    key_file=resolve_path(base, p.private_key_file),
                    clock=clock,
                    timeout_s=p.timeout_s,
                    send_test=args.send_test,
                    dpop=p.dpop,
                    dpop_key_file=resolve_path(base, p.dpop_key_file) if p.dpop_key_file else None,
                    confirm=(
                        None
                        if token is None
                        else Confirm(
                            AdminClient(session, p.org_url, token),
                            timeout_s=args.confirm_timeout,
                        )
                    ),
                )
                for p in providers
            )
        )
    for result in results:
        for line in result_lines(result):
            out.say(line)
    return out.finish(
        ok=all(r.ok for r in results),
        config=str(path),
        test_event=args.send_test,
        confirm=args.confirm,
        providers=[r.as_dict() for r in results],
    )
