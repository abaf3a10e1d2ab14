"""The ``forwarder`` command line: argv -> settings -> logging -> the right coroutine.

Each command group lives in its own module with a ``register(subparsers)`` function;
``COMMAND_MODULES`` lists them in help order. Exit codes: 0 success, 1 the daemon or a
remote said no, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from forwarder import __version__
from forwarder.cli.common import EXIT_FAILED, EXIT_USAGE
from forwarder.errors import ConfigError, ForwarderError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES = (
    "forwarder.cli.daemon",
    "forwarder.cli.keys",
    "forwarder.cli.okta",
    "forwarder.cli.status",
    "forwarder.cli.deadletters",
    "forwarder.cli.store",
    "forwarder.cli.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forwarder",
        description="Forward IP risk signals to Okta orgs, within their rate budget.",
    )
    parser.add_argument("--version", action="version", version=f"forwarder {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
