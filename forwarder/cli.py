"""The ``forwarder`` command line: argv -> settings -> logging -> the right coroutine.

Exit codes: 0 success, 1 the daemon or a remote said no, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from forwarder import __version__
from forwarder.errors import ConfigError, ForwarderError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _config_path(value: str | None) -> Path | None:
    raw = value or os.environ.get("FORWARDER_CONFIG")
    return Path(raw) if raw else None


def _cmd_run(args: argparse.Namespace) -> int:
    from forwarder.app import Daemon, run_until_signalled  # noqa: PLC0415
    from forwarder.config import load_settings  # noqa: PLC0415
    from forwarder.telemetry import configure_logging  # noqa: PLC0415

    path = _config_path(args.config)
    if path is None:
        print(
            "forwarder run needs a config: pass --config FILE or set FORWARDER_CONFIG "
            "(see config/forwarder.toml; `forwarder demo` runs without one)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    settings, base = load_settings(path)
    configure_logging(settings.log.level, settings.log.format)
    asyncio.run(run_until_signalled(Daemon(settings, base)))
    return EXIT_OK


def _cmd_config_check(args: argparse.Namespace) -> int:
    from forwarder.config import load_settings  # noqa: PLC0415

    path = _config_path(args.config)
    if path is None:
        print("config check needs --config FILE or FORWARDER_CONFIG", file=sys.stderr)
        return EXIT_USAGE
    settings, _ = load_settings(path)
    names = ", ".join(p.name for p in settings.providers)
    print(f"{path}: OK ({len(settings.providers)} provider(s): {names})")
    return EXIT_OK


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from forwarder.sandbox.cli import run_sandbox  # noqa: PLC0415

    return run_sandbox(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from forwarder.demo import run_demo  # noqa: PLC0415

    return asyncio.run(run_demo(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forwarder",
        description="Forward IP risk signals to Okta orgs, within their rate budget.",
    )
    parser.add_argument("--version", action="version", version=f"forwarder {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", help="config file (default: $FORWARDER_CONFIG)")
    run.set_defaults(func=_cmd_run)

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
    sandbox.set_defaults(func=_cmd_sandbox)

    demo = sub.add_parser(
        "demo", help="sandbox + daemon + synthetic detector in one process, end to end"
    )
    demo.add_argument(
        "--ips", type=int, default=2000, help="distinct IPs to send (default %(default)s)"
    )
    demo.add_argument("--duplicates", type=int, default=500, help="re-sent IPs, to show coalescing")
    demo.add_argument("--high", type=int, default=20, help="late HIGH signals (sent first)")
    demo.add_argument("--data-dir", help="keep the store and keys here (default: a temp dir)")
    demo.add_argument("--verbose", action="store_true", help="show the daemon's logs")
    demo.set_defaults(func=_cmd_demo)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    check = config_sub.add_parser("check", help="validate a config and its key files")
    check.add_argument("--config", help="config file (default: $FORWARDER_CONFIG)")
    check.set_defaults(func=_cmd_config_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``forwarder`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"forwarder: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ForwarderError as exc:
        print(f"forwarder: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
