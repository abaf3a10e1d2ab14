"""Shared bits of the command line: exit codes, config lookup, running a coroutine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "config_path", "run_sync"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

T = TypeVar("T")


def config_path(value: str | None) -> Path | None:
    """``--config`` or ``$FORWARDER_CONFIG``."""
    raw = value or os.environ.get("FORWARDER_CONFIG")
    return Path(raw) if raw else None


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
