"""Subprocess helpers: `python -m forwarder ...` as a real process, and a sandbox org in one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from forwarder.bench.org import sandbox_args

__all__ = ["REPO", "CliResult", "Proc", "cli", "free_port", "run_cli", "sandbox"]

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A `python -m forwarder ...` subprocess whose output goes to a file (never blocks)."""

    def __init__(self, log: Path, *args: str, cwd: Path = REPO) -> None:
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("a") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "forwarder", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=cwd,
            )

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_for_output(self, text: str, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.output:
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"never saw {text!r}: {self.output}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)


@contextlib.contextmanager
def sandbox(tmp: Path, window_s: float = 5.0) -> Iterator[tuple[str, str]]:
    """`forwarder sandbox` in a subprocess: yields its URL and its admin API token."""
    port = free_port()
    token_file = tmp / "api-token"
    proc = Proc(tmp / "sandbox.log", *sandbox_args(port, token_file, window_s=window_s))
    try:
        proc.wait_for_output("listening on")
        yield f"http://127.0.0.1:{port}", token_file.read_text().strip()
    finally:
        proc.stop()


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    drop = ("FORWARDER_CONFIG", "FORWARDER_OKTA_API_TOKEN")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **(extra or {})}


def cli(*args: str, cwd: Path = REPO, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `forwarder ARGS` to completion (blocking)."""
    return subprocess.run(
        [sys.executable, "-m", "forwarder", *args],
        capture_output=True,
        text=True,
        env=_env(None),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class CliResult:
    """What a user sees: the exit code and both streams."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


async def run_cli(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path = REPO, limit_s: float = 30
) -> CliResult:
    """Run `forwarder ARGS` without blocking the event loop (an in-process sandbox keeps
    answering meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forwarder",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(env),
        cwd=cwd,
    )
    try:
        async with asyncio.timeout(limit_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return CliResult(proc.returncode or 0, out.decode(), err.decode())
