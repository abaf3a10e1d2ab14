"""``forwarder okta ...``: provision an Okta org as a risk provider and check it works.

Replaces Okta's Postman walkthrough. Admin calls authenticate with an Okta API token read
from ``$FORWARDER_OKTA_API_TOKEN`` or ``--api-token-file``, never from an argument. Every
command has ``--json``; exit codes: 0 ok, 1 the org said no, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

from forwarder.okta.keys import ALGORITHMS

__all__ = ["PROVIDER_ACTIONS", "register"]

#: ``RiskProviderAction`` (the same tuple as ``forwarder.okta.provision``, which is
#: imported only when a command runs, so that building the parser stays cheap).
PROVIDER_ACTIONS = ("none", "log_only", "enforce_and_log")
_API_TOKEN_ENV = "FORWARDER_OKTA_API_TOKEN"  # noqa: S105 - a variable name, not a secret


def _runner(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The command ``name`` of ``forwarder.cli.okta.<module>``, imported when it runs."""

    def func(args: argparse.Namespace) -> int:
        from forwarder.cli.okta.output import run  # noqa: PLC0415

        command = getattr(importlib.import_module(f"forwarder.cli.okta.{module}"), name)
        return run(args.json, lambda out: command(args, out))

    return func


def _common(parser: argparse.ArgumentParser, *, org: bool = True) -> None:
    if org:
        parser.add_argument(
            "--org", required=True, metavar="URL", help="the org URL, e.g. https://acme.okta.com"
        )
        parser.add_argument(
            "--api-token-file",
            metavar="FILE",
            help=f"file holding the Okta API token (default: ${_API_TOKEN_ENV})",
        )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _action(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--action",
        choices=PROVIDER_ACTIONS,
        default="log_only",
        help="what Okta does with the signals (default %(default)s)",
    )


def register(sub: Any) -> None:
    """Add ``okta`` and its subcommands to the ``forwarder`` parser."""
    okta = sub.add_parser(
        "okta",
        help="provision an Okta org as a risk provider, and check it",
        description=(
            "Provision an Okta org as a third-party risk provider (replaces Okta's Postman "
            f"walkthrough). Admin calls use an Okta API token from ${_API_TOKEN_ENV} or "
            "--api-token-file. Exit codes: 0 ok, 1 the org said no, 2 usage or config error."
        ),
    )
    okta_sub = okta.add_subparsers(dest="okta_command", required=True, metavar="SUBCOMMAND")

    app = okta_sub.add_parser("create-app", help="register a service app with a public key")
    _common(app)
    app.add_argument("--name", required=True, help="the app's name in Okta")
    app.add_argument(
        "--public-key",
        required=True,
        metavar="FILE",
        help="public JWK (from `forwarder keys generate`), one-key JWKS or PEM public key",
    )
    app.add_argument(
        "--dpop",
        action="store_true",
        help="require DPoP-bound tokens (dpop_bound_access_tokens); forwarder's default "
        'dpop = "auto" follows',
    )
    app.set_defaults(func=_runner("commands", "create_app"))

    grant_cmd = okta_sub.add_parser("grant", help="grant okta.riskEvents.manage to the app")
    _common(grant_cmd)
    grant_cmd.add_argument("--client-id", required=True, metavar="ID")
    grant_cmd.set_defaults(func=_runner("commands", "grant"))

    providers = okta_sub.add_parser("providers", help="the org's risk providers (at most 3)")
    providers_sub = providers.add_subparsers(
        dest="providers_command", required=True, metavar="SUBCOMMAND"
    )
    plist = providers_sub.add_parser("list", help="show the org's risk providers")
    _common(plist)
    plist.set_defaults(func=_runner("commands", "providers_list"))
    pset = providers_sub.add_parser(
        "set", help="point a risk provider (the default one unless --id) at a service app"
    )
    _common(pset)
    which = pset.add_mutually_exclusive_group()
    which.add_argument("--id", metavar="ID", help="the provider to replace")
    which.add_argument(
        "--create", action="store_true", help="add a new provider (Okta allows three per org)"
    )
    pset.add_argument("--name", required=True, help="the provider's name (at most 50 chars)")
    pset.add_argument("--client-id", required=True, metavar="ID")
    _action(pset)
    pset.set_defaults(func=_runner("commands", "providers_set"))

    check_cmd = okta_sub.add_parser(
        "check", help="fetch a token for each configured provider (and send a test event)"
    )
    _common(check_cmd, org=False)
    check_cmd.add_argument("--config", help="config file (default: $FORWARDER_CONFIG)")
    check_cmd.add_argument("--provider", metavar="NAME", help="check only this provider")
    check_cmd.add_argument(
        "--send-test",
        action="store_true",
        help="also send one harmless test event (spends one of the provider's calls)",
    )
    check_cmd.add_argument(
        "--confirm",
        action="store_true",
        help="with --send-test: find the event's security.risk.signal.consume in the org's "
        "System Log (API token with okta.logs.read)",
    )
    check_cmd.add_argument(
        "--confirm-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long --confirm polls the System Log (default %(default)g)",
    )
    check_cmd.add_argument(
        "--api-token-file",
        metavar="FILE",
        help=f"for --confirm: file holding the Okta API token (default: ${_API_TOKEN_ENV})",
    )
    check_cmd.set_defaults(func=_runner("check", "check"))

    setup_cmd = okta_sub.add_parser(
        "setup", help="keys, app, grant, provider and check in one go; prints the config block"
    )
    _common(setup_cmd)
    setup_cmd.add_argument("--name", required=True, help="app, provider and config name")
    setup_cmd.add_argument("--keys-dir", required=True, metavar="DIR", help="where keys go")
    _action(setup_cmd)
    setup_cmd.add_argument("--alg", choices=ALGORITHMS, default="RS256")
    setup_cmd.add_argument(
        "--provider-id", metavar="ID", help="the provider to replace (when the org has several)"
    )
    setup_cmd.add_argument("--force", action="store_true", help="replace existing key files")
    setup_cmd.add_argument(
        "--send-test", action="store_true", help="end with a test event (spends one call)"
    )
    setup_cmd.set_defaults(func=_runner("setup", "setup"))
