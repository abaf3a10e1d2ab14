"""Shared test configuration."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.pg import pg_cluster, pg_dsn

__all__ = ["pg_cluster", "pg_dsn", "require_tool"]


def require_tool(name: str) -> str:
    """Path of an external tool (prometheus, promtool, podman, pg_ctl, ...).

    Skips the test when missing on a developer machine; fails it in CI, where
    ``.ci/run`` sets ``FORWARDER_REQUIRE_SERVICES=1`` after installing everything.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("FORWARDER_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path
