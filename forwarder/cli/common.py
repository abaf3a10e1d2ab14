"""Shared bits of the command line: exit codes and config lookup."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "config_path"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def config_path(value: str | None) -> Path | None:
    """``--config`` or ``$FORWARDER_CONFIG``."""
    raw = value or os.environ.get("FORWARDER_CONFIG")
    return Path(raw) if raw else None
