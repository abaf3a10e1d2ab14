"""The container image, built and run by a real engine (podman), through deploy/smoke.py.

CI prepares podman's base image first (.ci/setup.d/50-container-base.sh); the smoke script
builds the Dockerfile unchanged, runs the image read-only with a store volume against a
sandbox org, and checks delivery, health, the UID and a clean SIGTERM stop.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_image_builds_runs_read_only_delivers_and_stops_cleanly() -> None:
    """deploy/smoke.py passes: build, read-only run as UID 10001, delivery, health, SIGTERM."""
    podman = require_tool("podman")
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy/smoke.py"), "--engine", podman],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
        cwd=REPO,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke: OK" in result.stdout
