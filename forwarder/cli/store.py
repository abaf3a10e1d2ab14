"""``forwarder store migrate``: create or upgrade the PostgreSQL schema as a separate step.

By default every replica migrates at start (one at a time, under an advisory lock).
Operators who apply schema changes as their own deployment step set
``store.migrate_at_start = false`` and run this first; start then refuses an outdated
schema with this command in the message.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from forwarder.cli.common import EXIT_OK, EXIT_USAGE, settings_without_keys

__all__ = ["register"]


def _cmd_migrate(args: argparse.Namespace) -> int:
    from forwarder.config import store_dsn  # noqa: PLC0415
    from forwarder.store.postgres.connect import open_pool  # noqa: PLC0415
    from forwarder.store.postgres.dsn import describe_dsn  # noqa: PLC0415

    loaded = settings_without_keys("store migrate", args.config)
    if loaded is None:
        return EXIT_USAGE
    settings, base = loaded
    if settings.store.backend != "postgres":
        print(
            f'store migrate is for store.backend = "postgres" (this config uses '
            f'"{settings.store.backend}", whose file is created and upgraded at start)',
            file=sys.stderr,
        )
        return EXIT_USAGE
    dsn = store_dsn(settings.store, base)

    async def migrate() -> str:
        async with open_pool(dsn, size=2, application_name="forwarder store migrate") as (
            _,
            result,
        ):
            assert result is not None
            if result.applied:
                steps = ", ".join(map(str, result.applied))
                return f"migrated from version {result.found} to {result.version} (applied {steps})"
            return f"already at version {result.version}; nothing to do"

    print(f"{describe_dsn(dsn)}: {asyncio.run(migrate())}")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add this module's commands to the ``forwarder`` parser."""
    store = sub.add_parser("store", help="store tools (PostgreSQL schema)")
    store_sub = store.add_subparsers(dest="store_command", required=True, metavar="SUBCOMMAND")
    migrate = store_sub.add_parser(
        "migrate", help="create or upgrade the PostgreSQL schema (start can require it)"
    )
    migrate.add_argument("--config", help="config file (default: $FORWARDER_CONFIG)")
    migrate.set_defaults(func=_cmd_migrate)
