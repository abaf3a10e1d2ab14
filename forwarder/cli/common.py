"""Shared bits of the command line: exit codes, config lookup, running a coroutine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from forwarder.config import Settings

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "config_path",
    "run_sync",
    "settings_without_keys",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

T = TypeVar("T")


def config_path(value: str | None) -> Path | None:
    """``--config`` or ``$FORWARDER_CONFIG``."""
    raw = value or os.environ.get("FORWARDER_CONFIG")
    return Path(raw) if raw else None


def settings_without_keys(command: str, value: str | None) -> tuple[Settings, Path] | None:
    """The config of ``--config`` or ``$FORWARDER_CONFIG`` and its base directory, its key
    files left unread (a command reading the store needs none, and they may be readable
    only by the daemon); None, once stderr says that ``command`` needs one, without a
    config."""
    from forwarder.config import load_settings  # noqa: PLC0415

    path = config_path(value)
    if path is None:
        print(f"{command} needs --config FILE or FORWARDER_CONFIG", file=sys.stderr)
        return None
    return load_settings(path, check_files=False)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a store call to completion from a command.

    A command may itself be called from inside an event loop (an embedding program, a
    test): the coroutine then runs on a loop of its own in a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
