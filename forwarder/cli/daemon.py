"""``forwarder run``, ``config check``, ``sandbox`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from forwarder.cli.common import EXIT_OK, EXIT_USAGE, config_path

__all__ = ["register"]


def _cmd_run(args: argparse.Namespace) -> int:
    from forwarder.app import Daemon, run_until_signalled  # noqa: PLC0415
    from forwarder.config import load_settings  # noqa: PLC0415
    from forwarder.okta.keys import KeyCache  # noqa: PLC0415
    from forwarder.telemetry import configure_logging  # noqa: PLC0415

    path = config_path(args.config)
    if path is None:
        print(
            "forwarder run needs a config: pass --config FILE or set FORWARDER_CONFIG "
            "(see config/forwarder.toml; `forwarder demo` runs without one)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    # One key cache for the check and the daemon: each key file is parsed once.
    keys = KeyCache()
    settings, base = load_settings(path, keys=keys)
    configure_logging(settings.log.level, settings.log.format)
    asyncio.run(run_until_signalled(Daemon(settings, base, config_path=path, keys=keys)))
    return EXIT_OK


def _cmd_config_check(args: argparse.Namespace) -> int:
    from forwarder.config import load_settings  # noqa: PLC0415

    path = config_path(args.config)
    if path is None:
        print("config check needs --config FILE or FORWARDER_CONFIG", file=sys.stderr)
        return EXIT_USAGE
    settings, _ = load_settings(path)
    names = [p.name for p in settings.providers]
    shown = ", ".join(names[:20]) + (f", and {len(names) - 20} more" if len(names) > 20 else "")
    print(f"{path}: OK ({len(names)} provider(s): {shown})")
    return EXIT_OK


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from forwarder.sandbox.cli import run_sandbox  # noqa: PLC0415

    return run_sandbox(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from forwarder.demo import run_demo  # noqa: PLC0415

    return asyncio.run(run_demo(args))


def register(sub: Any) -> None:
    """Add this module's commands to the ``forwarder`` parser."""
    run = sub.add_parser("run", help="run the daemon (SIGHUP re-reads the config)")
    run.add_argument("--config", help="config file (default: $FORWARDER_CONFIG)")
    run.set_defaults(func=_cmd_run)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    check = config_sub.add_parser(
        "check", help="validate a config, its drop-in provider files and its key files"
    )
    check.add_argument("--config", help="config file (default: $FORWARDER_CONFIG)")
    check.set_defaults(func=_cmd_config_check)

    sandbox = sub.add_parser("sandbox", help="run a local Okta-compatible org")
    sandbox.add_argument(
        "--listen", default="127.0.0.1:8900", help="HOST:PORT (default %(default)s)"
    )
    sandbox.add_argument(
        "--api-token-file",
        help="file holding the admin API token (SSWS); created with a random token if missing",
    )
    sandbox.add_argument("--calls-per-minute", type=int, default=3)
    sandbox.add_argument(
        "--window-seconds",
        type=float,
        default=60.0,
        help="rate window (Okta's is 60; shorten only for benchmarks)",
    )
    sandbox.add_argument("--token-lifetime", type=int, default=3600, help="access token seconds")
    sandbox.add_argument(
        "--orgs",
        type=int,
        default=0,
        metavar="N",
        help="stand in for N customer orgs: each service app is its own org "
        "(own risk provider, window and tokens)",
    )
    sandbox.add_argument(
        "--public-key",
        metavar="FILE",
        help="with --orgs: register N apps with this public JWK (and the scope) at start",
    )
    sandbox.add_argument(
        "--orgs-file", metavar="FILE", help="with --public-key: write the apps' client ids here"
    )
    sandbox.set_defaults(func=_cmd_sandbox)

    demo = sub.add_parser(
        "demo", help="sandbox + daemon + synthetic detector in one process, end to end"
    )
    demo.add_argument(
        "--ips", type=int, default=2000, help="distinct IPs to send (default %(default)s)"
    )
    demo.add_argument(
        "--duplicates", type=int, default=500, help="re-sightings, to show coalescing"
    )
    demo.add_argument("--high", type=int, default=20, help="late HIGH signals (sent first)")
    demo.add_argument("--data-dir", help="keep the store and keys here (default: a temp dir)")
    demo.add_argument("--verbose", action="store_true", help="show the daemon's logs")
    demo.set_defaults(func=_cmd_demo)
