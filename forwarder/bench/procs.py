"""The processes a scenario runs: the daemon, the floors, helper modules.

Every process is ``python -m ...`` of this interpreter with its output in a log file
under the run directory, so nothing ever blocks on a pipe and a failed run leaves its
logs behind. Peak memory and CPU time are read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from forwarder.store.sqlite.reader import read_summaries

__all__ = [
    "UNREACHABLE",
    "Daemon",
    "Proc",
    "ProviderSpec",
    "free_port",
    "pending_rows",
    "run_json",
    "store_bytes",
]

#: Where the bench sends when the org must be unreachable (nothing listens on port 9).
UNREACHABLE = "http://127.0.0.1:9"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status_kib(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


class Proc:
    """A ``python -m MODULE ...`` subprocess whose output goes to a log file."""

    def __init__(self, log: Path, module: str, *args: str, cwd: Path | None = None) -> None:
        self.log = log
        self.started = time.time()
        # A log may be shared by successive processes: this one's output starts here.
        self._offset = log.stat().st_size if log.exists() else 0
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("FORWARDER_CONFIG", None)
        with log.open("a") as out:
            self.popen = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", module, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=cwd,
            )
        self._peak_kib: int | None = None
        #: CPU cores used during the last watched load window (see :func:`run_load`).
        self.cpu_cores: float | None = None

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds used so far (all threads), from ``/proc``."""
        try:
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # Fields 14 and 15 of proc(5) (utime, stime), counted after the ")" of comm.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def output(self) -> str:
        """What this process has written to its log so far."""
        with self.log.open("rb") as fh:
            fh.seek(self._offset)
            return fh.read().decode(errors="replace")

    async def wait_for_output(self, text: str, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.output:
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.log.name}: never saw {text!r}:\n{self.output[-2000:]}")
            await asyncio.sleep(0.05)

    def peak_rss_mib(self) -> float | None:
        """Peak resident memory so far (``VmHWM``), MiB; kept after the process exits."""
        kib = _status_kib(self.popen.pid, "VmHWM") if self.popen.poll() is None else None
        if kib is not None:
            self._peak_kib = kib
        return None if self._peak_kib is None else self._peak_kib / 1024

    async def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; the exit code."""
        self.peak_rss_mib()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return await asyncio.to_thread(self.popen.wait, grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return await asyncio.to_thread(self.popen.wait, 10)


@dataclass(frozen=True)
class ProviderSpec:
    """One ``[[providers]]`` entry of a bench daemon."""

    name: str
    org_url: str
    client_id: str
    key_file: Path

    def unreachable(self) -> ProviderSpec:
        """The same provider pointed at a port where nothing listens (nothing is sent)."""
        return ProviderSpec(self.name, UNREACHABLE, self.client_id, self.key_file)


class Daemon:
    """A ``forwarder run`` process on its own config and store under ``directory``."""

    def __init__(
        self,
        directory: Path,
        providers: Sequence[ProviderSpec],
        *,
        window_s: float = 60.0,
        calls: int = 3,
        linger_s: float = 2.0,
        store_toml: str = "",
    ) -> None:
        """``store_toml``: the ``[store]`` section's lines instead of a SQLite file here."""
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.store = directory / "forwarder.db"
        self.ingest_url = f"http://127.0.0.1:{free_port()}"
        self.metrics_url = f"http://127.0.0.1:{free_port()}"
        self.config = directory / "forwarder.toml"
        store = store_toml or f'path = "{self.store}"\nmax_pending = 100000000'
        blocks = "".join(
            f"""
[[providers]]
name = "{p.name}"
org_url = "{p.org_url}"
client_id = "{p.client_id}"
private_key_file = "{p.key_file}"
calls_per_minute = {calls}
window_s = {window_s}
"""
            for p in providers
        )
        self.config.write_text(
            f"""
[ingest]
listen = "{self.ingest_url.removeprefix("http://")}"
max_body_bytes = 8388608
[store]
{store}
[metrics]
listen = "{self.metrics_url.removeprefix("http://")}"
[log]
level = "info"
format = "json"
[dispatch]
linger_s = {linger_s}
shutdown_grace_s = 5
{blocks}"""
        )
        self.proc: Proc | None = None

    @property
    def signals_url(self) -> str:
        return f"{self.ingest_url}/v1/signals"

    async def start(self) -> float:
        """Start ``forwarder run``; seconds from spawn to ``/readyz`` answering 200."""
        self.proc = Proc(
            self.directory / "daemon.log", "forwarder", "run", "--config", str(self.config)
        )
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.popen.poll() is not None:
                    raise RuntimeError(
                        f"daemon exited {self.proc.popen.returncode}:\n{self.proc.output[-3000:]}"
                    )
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.metrics_url}/readyz") as resp:
                        if resp.status == 200:
                            return time.monotonic() - started
                if time.monotonic() - started > 120:
                    raise RuntimeError("daemon never became ready")
                await asyncio.sleep(0.01)

    def peak_rss_mib(self) -> float | None:
        return None if self.proc is None else self.proc.peak_rss_mib()

    async def stop(self) -> None:
        if self.proc is not None:
            code = await self.proc.stop()
            if code not in (0, -signal.SIGTERM):
                raise RuntimeError(f"daemon exited {code} on SIGTERM:\n{self.proc.output[-3000:]}")


def pending_rows(store: Path, provider: str | None = None) -> int:
    """(provider, ip) pairs still to send in a store file (every provider, or one).

    Read on a read-only connection (safe while the daemon runs). A broadcast entry
    waiting for three providers counts three times: the unit is what must reach an org.
    """
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, isolation_level=None)
    try:
        summaries = read_summaries(db, [provider] if provider else [])
    finally:
        db.close()
    return sum(
        sum(s.pending.values()) for s in summaries if provider is None or s.provider == provider
    )


def store_bytes(store: Path) -> int:
    """Bytes of the store file and its WAL and shared-memory files."""
    return sum(
        p.stat().st_size for p in (store, Path(f"{store}-wal"), Path(f"{store}-shm")) if p.exists()
    )


async def run_json(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module args`` to completion; the JSON object it prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed: {err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result
