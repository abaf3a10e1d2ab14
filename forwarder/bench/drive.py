"""Driving load: the load generator processes, and backlogs loaded through ingest."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forwarder.bench.procs import Daemon, Proc, ProviderSpec

__all__ = ["Prefill", "prefill", "run_load"]


async def run_load(
    url: str,
    *,
    size: int,
    connections: int,
    processes: int,
    duration_s: float = 0.0,
    warmup_s: float = 0.0,
    total: int = 0,
    first: int = 0,
    modulo: int = 0,
    extra: Sequence[str] = (),
    watch: Proc | None = None,
) -> list[dict[str, Any]]:
    """Run ``processes`` load generators at once; their JSON results.

    Each process gets an equal share of ``connections`` (and of ``total``) and a
    disjoint IP range unless ``modulo`` makes them share one. With ``watch`` (the
    server under test) its CPU use inside the window is stored in ``watch.cpu_cores``.
    """
    start_at = time.time() + 0.6 + warmup_s if duration_s else 0.0
    watcher = (
        asyncio.create_task(_watch_cpu(watch, start_at, duration_s))
        if watch is not None and duration_s
        else None
    )
    span = (1 << 24) // processes
    procs = []
    for i in range(processes):
        args = [
            "--url", url,
            "--size", str(size),
            "--connections", str(max(1, connections // processes)),
            "--first", str(first if modulo else first + i * span),
        ]  # fmt: skip
        if modulo:
            args += ["--modulo", str(modulo)]
        if duration_s:
            args += ["--start-at", repr(start_at), "--duration", str(duration_s)]
        else:
            share = total // processes // size * size
            args += ["--total", str(share)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "forwarder.bench.load",
            *args,
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _pin_to_last_cpus(proc.pid, i)
        procs.append(proc)
    results = []
    for proc in procs:
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed: {err.decode(errors='replace')[-2000:]}")
        results.append(json.loads(out))
    if watcher is not None:
        await watcher
    return results


def _pin_to_last_cpus(pid: int, index: int) -> None:
    """Keep load generator ``index`` on one CPU, counting from the last.

    Left to the scheduler, a load generator sometimes shares a core with the server
    under test and the floor drops by a quarter; pinned, runs repeat within a few
    percent. The server itself is never pinned: it may use every CPU.
    """
    if not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, {cpus[-1 - index % len(cpus)]})


async def _watch_cpu(proc: Proc, start_at: float, duration_s: float) -> None:
    await asyncio.sleep(max(0.0, start_at - time.time()))
    before = proc.cpu_seconds()
    await asyncio.sleep(duration_s)
    after = proc.cpu_seconds()
    if before is not None and after is not None:
        proc.cpu_cores = round((after - before) / duration_s, 2)


@dataclass(frozen=True)
class Prefill:
    """A backlog loaded through ingest while the org was unreachable."""

    accepted: int
    seconds: float
    peak_rss_mib: float | None


async def prefill(
    directory: Path,
    specs: Sequence[ProviderSpec],
    *,
    per_provider: int,
    size: int = 1000,
    connections: int = 8,
) -> Prefill:
    """Ingest ``per_provider`` distinct IPs for each provider with nothing sent.

    The daemon runs with every org unreachable, so the signals wait in
    ``directory``'s store exactly as a backlog does; a later :class:`Daemon` on the
    same directory starts with it. Provider ``i`` gets IP numbers from
    ``i * per_provider``.
    """
    daemon = Daemon(directory, [s.unreachable() for s in specs])
    await daemon.start()
    started = time.monotonic()
    accepted = 0
    try:
        for index, spec in enumerate(specs):
            results = await run_load(
                daemon.signals_url,
                size=size,
                connections=connections,
                processes=1,
                total=per_provider,
                first=index * per_provider,
                extra=["--provider", spec.name] if len(specs) > 1 else (),
            )
            accepted += sum(r["accepted_signals"] for r in results)
        peak = daemon.peak_rss_mib()
    finally:
        await daemon.stop()
    return Prefill(accepted, time.monotonic() - started, peak)
